//! The bodies of the fuzz targets (fuzz_targets/), over the data plane's own
//! source files: each module is compiled here from dataplane/src, unchanged,
//! so the targets drive exactly the code the executable runs. Each body
//! panics only when the code under test breaks a property it promises; a
//! panic is the crash libFuzzer reports.
//!
//! Not fuzzed: original_dst.rs. Its only input is a sockaddr the kernel
//! writes in answer to getsockopt, read by family; no peer's bytes reach it.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[path = "../../src/socks5.rs"]
pub mod socks5;

#[path = "../../src/control.rs"]
#[allow(dead_code)] // the writing side is not fuzzed
pub mod control;

#[path = "../../src/hbone_head.rs"]
pub mod hbone_head;

/// A SOCKS5 client that says `input` and then closes its end: reads are
/// served at most `chunk` bytes at a time, and every other read is
/// Pending first (waking itself), so the negotiation's reads are cut at
/// every place a real socket may cut them. What the server writes is kept.
struct Client<'a> {
    input: &'a [u8],
    read: usize,
    chunk: usize,
    stall: bool,
    said: Vec<u8>,
}

impl AsyncRead for Client<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.stall = !self.stall;
        if self.stall {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = (self.input.len() - self.read).min(self.chunk).min(buf.remaining());
        let from = self.read;
        buf.put_slice(&self.input[from..from + n]);
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        self.said.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Negotiates `input` (cut into reads of `chunk` bytes): the result, the
/// bytes the server read and what it said.
fn negotiate(input: &[u8], chunk: usize) -> (Result<socks5::Request, socks5::Refusal>, usize, Vec<u8>) {
    // Paused time: a negotiation that waited for more than the input would
    // end at the deadline at once, which the checks below count as a hang.
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
    let mut client = Client { input, read: 0, chunk, stall: false, said: Vec::new() };
    let result = rt.block_on(socks5::accept(&mut client, Duration::from_secs(10)));
    (result, client.read, client.said)
}

/// SOCKS5 negotiation with arbitrary client bytes (the first byte sets the
/// read size): it ends without a panic and without waiting for the deadline
/// (the client's input ends, so it must be refused or served, never stall);
/// it reads exactly what it serves, no byte beyond the request; and what it
/// says is one of the answers RFC 1928/1929 allow.
pub fn socks5(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else { return };
    let chunk = 1 + first as usize % 64;
    let (result, read, said) = negotiate(input, chunk);
    match &result {
        Ok(req) => {
            assert_eq!(said, [5, 2, 1, 0], "a served client is told: username/password, then success");
            assert!(!req.host.is_empty());
            // Exactly the request's bytes were read: the same bytes alone are
            // served alike (nothing after them was needed), and one fewer is
            // a client gone mid-request (nothing in them was skipped).
            let (again, again_read, _) = negotiate(&input[..read], chunk);
            assert_eq!(again.as_ref().ok(), Some(req), "the bytes read alone give the same request");
            assert_eq!(again_read, read);
            let (short, _, _) = negotiate(&input[..read - 1], chunk);
            assert!(short.unwrap_err().message.contains("went away"), "one byte fewer is a truncated request");
        }
        Err(refusal) => {
            assert!(!refusal.message.contains("timed out"), "a client whose input ended hit the deadline: {}", refusal.message);
            match &refusal.response {
                Some(response) => assert!(said.ends_with(response), "the refusal's answer was written"),
                None => assert!(said.is_empty() || said == [5, 2] || said == [5, 2, 1, 0], "only the steps before were answered: {said:?}"),
            }
        }
    }
    assert!(read <= input.len());
}

/// Bytes on the agent's control socket, read as the data plane reads them:
/// cut into frames by `control::read_frame`, each decoded by
/// `control::decode`, the one entry point after framing (and the whole
/// input as one frame, to reach the decoder with every byte). Any bytes end
/// in messages and named errors, never a panic; no frame is longer than
/// MAX_FRAME; a clean end is only at the end of the input. A change of codec
/// changes these two functions and this target only.
pub fn control_decode(data: &[u8]) {
    let _ = control::decode(data);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        // Small reads, so frames are assembled across buffer refills.
        let mut r = tokio::io::BufReader::with_capacity(7, data);
        let mut frame = Vec::new();
        loop {
            match control::read_frame(&mut r, &mut frame).await {
                Ok(true) => {
                    assert!(frame.len() <= control::MAX_FRAME);
                    if let Ok(message) = control::decode(&frame) {
                        // Every decoded message is a whole value (Debug walks all of it).
                        let _ = format!("{message:?}");
                    }
                }
                Ok(false) => {
                    let rest = tokio::io::AsyncBufReadExt::fill_buf(&mut r).await.expect("in memory");
                    assert!(rest.is_empty(), "a clean end before the input's end");
                    break;
                }
                Err(e) => {
                    let _ = e.to_string();
                    break;
                }
            }
        }
    });
}

/// A CONNECT head as h2 hands it over, built from fuzzer bytes.
#[derive(arbitrary::Arbitrary, Debug)]
struct Head<'a> {
    method: &'a [u8],
    uri: &'a [u8],
    headers: Vec<(Name<'a>, &'a [u8])>,
    status: u16,
    reason: &'a str,
}

#[derive(arbitrary::Arbitrary, Debug)]
enum Name<'a> {
    Forwarded,
    Baggage,
    Traceparent,
    Other(&'a [u8]),
}

/// The CONNECT head Ambit reads (the `stream` message to the agent) and the
/// refusal head it writes: for any head h2 would hand over, the message is
/// the request's authority and each passed-on header's text values in
/// order; it survives the control socket's encoding; and a refusal carries the agent's
/// status (500 when HTTP cannot carry it) and its reason exactly when the
/// reason is a valid header value.
pub fn hbone_head(data: &[u8]) {
    let Ok(head) = arbitrary::Unstructured::new(data).arbitrary::<Head>() else { return };
    // What h2 refuses never becomes a Request: only valid parts are built.
    let (Ok(method), Ok(uri)) = (http::Method::from_bytes(head.method), http::Uri::try_from(head.uri)) else { return };
    let mut req = http::Request::builder().method(method).uri(uri.clone());
    let mut passed = [("forwarded", Vec::new()), ("baggage", Vec::new()), ("traceparent", Vec::new())];
    for (name, value) in &head.headers {
        let name = match name {
            Name::Forwarded => http::HeaderName::from_static("forwarded"),
            Name::Baggage => http::HeaderName::from_static("baggage"),
            Name::Traceparent => http::HeaderName::from_static("traceparent"),
            Name::Other(bytes) => match http::HeaderName::from_bytes(bytes) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let Ok(value) = http::HeaderValue::from_bytes(value) else { continue };
        if let Some((_, values)) = passed.iter_mut().find(|(n, _)| *n == name.as_str()) {
            if let Ok(text) = value.to_str() {
                values.push(text.to_string());
            }
        }
        req = req.header(name, value);
    }
    let req = req.body(()).expect("a request of valid parts");
    let message = hbone_head::stream_message(1, 2, &req);
    assert_eq!(message.authority, uri.authority().map(|a| a.as_str()).unwrap_or(""));
    assert_eq!(message.method, req.method().as_str());
    let got = [&message.forwarded, &message.baggage, &message.traceparent];
    for ((name, values), got) in passed.iter().zip(got) {
        assert_eq!(*got, values.join(", "), "{name}");
    }
    // It reaches the agent as it was built.
    let bytes = prost::Message::encode_to_vec(&message);
    assert_eq!(<control::pb::Stream as prost::Message>::decode(bytes.as_slice()).expect("decodes"), message);

    let response = hbone_head::status_response(head.status, head.reason);
    let carried = (100..=999).contains(&head.status);
    assert_eq!(response.status().as_u16(), if carried { head.status } else { 500 });
    let reason = response.headers().get("x-ambit-reason").map(|v| v.as_bytes());
    let sendable = carried && http::HeaderValue::from_str(head.reason).is_ok();
    assert_eq!(reason, sendable.then_some(head.reason.as_bytes()));
}
