//! The heads of an inbound HBONE CONNECT: what this process reads from a
//! peer's request (its method, authority and the headers passed on to the
//! agent) and the answer head it writes from the agent's verdict. h2 has
//! already parsed the frames and HPACK; these are the parts Ambit's own
//! code reads, kept free of I/O so the fuzz targets (dataplane/fuzz/) run
//! them on arbitrary heads.
use http::{HeaderMap, Request, Response};
use crate::control::pb;

/// The `stream` message that asks the agent for a CONNECT's verdict.
pub fn stream_message<B>(id: u64, sid: u64, req: &Request<B>) -> pb::Stream {
    let h = req.headers();
    pb::Stream {
        id,
        sid,
        method: req.method().as_str().to_string(),
        authority: req.uri().authority().map(|a| a.as_str()).unwrap_or("").to_string(),
        forwarded: joined(h, "forwarded"),
        baggage: joined(h, "baggage"),
        traceparent: joined(h, "traceparent"),
    }
}

/// A refusal's answer head: `status` with the agent's reason, when the reason
/// is a valid header value; a status HTTP cannot carry becomes 500.
pub fn status_response(status: u16, reason: &str) -> Response<()> {
    let mut r = Response::builder().status(status);
    if let Ok(v) = http::HeaderValue::from_str(reason) {
        r = r.header("x-ambit-reason", v);
    }
    r.body(()).unwrap_or_else(|_| Response::builder().status(500).body(()).unwrap())
}

/// A header's values joined as Node.js joins repeated headers. A value that
/// is not visible ASCII (h2 lets obs-text bytes through) is left out.
pub fn joined(h: &HeaderMap, name: &str) -> String {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_message_joins_repeated_headers_and_leaves_out_non_ascii_values() {
        let req = Request::builder()
            .method("CONNECT")
            .uri("10.0.0.7:8080")
            .header("baggage", "a=1")
            .header("baggage", http::HeaderValue::from_bytes(b"b=\xff").unwrap())
            .header("baggage", "c=3")
            .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .body(())
            .unwrap();
        let m = stream_message(7, 3, &req);
        assert_eq!((m.id, m.sid), (7, 3));
        assert_eq!(m.method, "CONNECT");
        assert_eq!(m.authority, "10.0.0.7:8080");
        assert_eq!(m.baggage, "a=1, c=3");
        assert_eq!(m.forwarded, "");
        assert_eq!(m.traceparent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    }

    #[test]
    fn a_status_http_cannot_carry_is_500_and_an_unsendable_reason_is_left_out() {
        let r = status_response(403, "policy_denied");
        assert_eq!((r.status().as_u16(), r.headers()["x-ambit-reason"].to_str().unwrap()), (403, "policy_denied"));
        let r = status_response(1000, "x");
        assert_eq!(r.status().as_u16(), 500);
        assert!(r.headers().is_empty(), "the fallback carries no reason");
        let r = status_response(503, "line\r\nx-injected: 1");
        assert_eq!(r.status().as_u16(), 503);
        assert!(r.headers().is_empty());
    }
}
