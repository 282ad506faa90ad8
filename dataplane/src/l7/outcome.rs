//! What one finished HTTP request was, on either side of the mesh, and who
//! hears of it. The L7 paths (client_side.rs on the source, the destination's
//! server side) produce one `RequestOutcome` per request, once, when its
//! response is over (or it failed); every `RequestObserver` the core holds is
//! given it. Observers aggregate (metrics), log (access log) or export
//! (spans) in this process: nothing per request crosses to the agent.
// Fields and variants are read by the observers (metrics, access log, spans)
// and filled by the destination side; not all are in every build yet.
#![allow(dead_code)]
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Which side of the mesh saw the request: the source agent (the app's
/// outbound request; Istio's `reporter="source"`) or the destination agent
/// (`reporter="destination"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// The HTTP version the app spoke, and whether the request is gRPC (Istio's
/// `request_protocol` is `http` or `grpc`; the version is for the access log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Grpc,
}

impl Protocol {
    /// Istio's `request_protocol` label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http1 | Protocol::Http2 => "http",
        }
    }
}

/// One end of a request: a workload of the mesh, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// SPIFFE URI; "" when unknown.
    pub identity: String,
    /// The workload's name and namespace; "" when unknown.
    pub workload: String,
    pub namespace: String,
}

#[derive(Clone, Debug)]
pub struct RequestOutcome {
    pub side: Side,
    pub protocol: Protocol,
    pub method: String,
    /// The `Host` / `:authority` the app asked for.
    pub authority: String,
    /// The request target's path and query.
    pub path: String,
    /// The response status sent to the client; 0 when none was (the client
    /// went away, or the stream was reset).
    pub status: u16,
    /// gRPC only: `grpc-status` of the response's trailers (or of its
    /// headers, for a trailers-only response); None when absent.
    pub grpc_status: Option<u32>,
    /// Envoy's response flags ("-" is never stored: empty means none), e.g.
    /// "UO" (circuit breaker), "UF" (upstream connection failure), "UH" (no
    /// healthy upstream), "DC" (downstream closed), "UC" (upstream closed).
    pub response_flags: String,
    pub start: SystemTime,
    /// From the request's first byte to its response's last.
    pub duration: Duration,
    /// Body bytes (not headers) of the request and of the response.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The endpoint that served it ("ip:port" of the workload); "" when none was reached.
    pub upstream: String,
    /// The destination service, "name.namespace.svc.cluster.local"; "" when
    /// the request went to a workload address.
    pub service: String,
    pub source: Peer,
    pub destination: Peer,
    /// The request's `traceparent` header as it reached this side, if any.
    pub traceparent: Option<String>,
    /// This side's hop of the request's trace (spans.rs: `Spans::hop` of
    /// the incoming traceparent, whose `traceparent()` the request was
    /// forwarded with); None when the path made none.
    pub trace: Option<crate::spans::TraceHop>,
    /// The route rule that decided it ("HTTPRoute/<namespace>/<name>#<rule>"); "" when none did.
    pub route: String,
    /// Attempts made upstream: 1, plus its retries; 0 when none was made.
    pub attempts: u32,
}

/// Hears of every finished request. Called on the request's task: it must
/// not block (aggregate, queue, or hand off).
pub trait RequestObserver: Send + Sync {
    fn observe(&self, outcome: &RequestOutcome);
}

/// The observers the core holds: none at first (hearing of requests is then
/// free), each added once at start.
#[derive(Default)]
pub struct Observers {
    list: RwLock<Vec<Arc<dyn RequestObserver>>>,
}

impl Observers {
    pub fn add(&self, observer: Arc<dyn RequestObserver>) {
        self.list.write().unwrap().push(observer);
    }

    pub fn observe(&self, outcome: &RequestOutcome) {
        for o in self.list.read().unwrap().iter() {
            o.observe(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Seen(Mutex<Vec<u16>>);
    impl RequestObserver for Seen {
        fn observe(&self, o: &RequestOutcome) {
            self.0.lock().unwrap().push(o.status);
        }
    }

    fn outcome(status: u16) -> RequestOutcome {
        RequestOutcome {
            side: Side::Source, protocol: Protocol::Grpc, method: "POST".into(), authority: "a".into(), path: "/x".into(), status,
            grpc_status: Some(0), response_flags: String::new(), start: SystemTime::now(), duration: Duration::ZERO,
            request_bytes: 0, response_bytes: 0, upstream: String::new(), service: String::new(), source: Peer::default(),
            destination: Peer::default(), traceparent: None, trace: None, route: String::new(), attempts: 0,
        }
    }

    #[test]
    fn every_observer_hears_each_outcome_once() {
        let obs = Observers::default();
        obs.observe(&outcome(200)); // none yet: nothing to do
        let (a, b) = (Arc::new(Seen(Mutex::new(Vec::new()))), Arc::new(Seen(Mutex::new(Vec::new()))));
        obs.add(a.clone());
        obs.add(b.clone());
        obs.observe(&outcome(503));
        assert_eq!(*a.0.lock().unwrap(), vec![503]);
        assert_eq!(*b.0.lock().unwrap(), vec![503]);
        assert_eq!(Protocol::Grpc.label(), "grpc");
        assert_eq!(Protocol::Http2.label(), "http");
    }
}
