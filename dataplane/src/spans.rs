//! Request spans (docs/observability.md, "Traces"): the W3C trace context of
//! each HTTP request the L7 paths carry, and, when the agent turned tracing
//! on, a span per request sent to the agent in batches (`SpanBatch`), which
//! exports them through its OpenTelemetry SDK with these ids.
//!
//! Each side of a request is one hop: `Spans::hop` reads the request's
//! `traceparent` (the app's, or the source agent's), continues its trace
//! with a new span id (or starts a trace when there is none, or it is
//! invalid), and the L7 path forwards the request with `TraceHop::traceparent`
//! so that the next hop (the destination agent, then the server app) is this
//! span's child. The finished request's `RequestOutcome` carries its hop;
//! `Spans`, a `RequestObserver`, turns it into a span record.
//!
//! Off (the default), observing a request costs one atomic load: nothing is
//! recorded, queued or sent.
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::control::{pb, Out, Outbox};
use crate::l7::outcome::{RequestObserver, RequestOutcome, Side};

/// Spans waiting for the next batch at most; more are dropped (and counted)
/// rather than held for an agent that does not read.
const MAX_QUEUED: usize = 2048;
/// A batch goes as soon as this many wait, else on the next tick.
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One side's place in a request's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceHop {
    pub trace_id: [u8; 16],
    /// This hop's span: the parent of whatever the request is forwarded to.
    pub span_id: [u8; 8],
    /// The span the request came from (the app's, or the source agent's); None: this hop starts the trace.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

impl TraceHop {
    /// The trace id as W3C writes it (the access log's `trace_id`).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` to forward: this hop's span as the next one's parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", hex(&self.trace_id), hex(&self.span_id), if self.sampled { "01" } else { "00" })
    }
}

/// A W3C `traceparent` (version 00): trace id, parent span id, flags; None
/// when it is not a valid one (all-zero ids, wrong lengths, upper case,
/// version ff), which the specification says to treat as absent.
pub fn parse_traceparent(s: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() != 55 || &b[0..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace: [u8; 16] = unhex(&b[3..35])?;
    let span: [u8; 8] = unhex(&b[36..52])?;
    let flags: [u8; 1] = unhex(&b[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags[0]))
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Trace and span ids: SipHash (keyed at random by the OS, once per
/// process) of a counter. Unique and unpredictable enough for ids, which are
/// no secret, at the cost of a hash rather than a system call per request.
struct Ids {
    keys: RandomState,
    next: AtomicU64,
}

impl Ids {
    fn u64(&self) -> u64 {
        loop {
            let mut h = self.keys.build_hasher();
            h.write_u64(self.next.fetch_add(1, Ordering::Relaxed));
            let v = h.finish();
            if v != 0 {
                return v;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sampling {
    ratio: f64,
    parent_based: bool,
}

#[derive(Default)]
struct Queue {
    spans: Vec<pb::Span>,
    dropped: u64,
}

/// The data plane's request tracing: trace context for every request, span
/// records when the agent turned tracing on.
pub struct Spans {
    enabled: AtomicBool,
    sampling: RwLock<Sampling>,
    ids: Ids,
    queue: Mutex<Queue>,
    full: Notify,
}

impl Default for Spans {
    fn default() -> Self {
        Spans {
            enabled: AtomicBool::new(false),
            sampling: RwLock::new(Sampling { ratio: 1.0, parent_based: true }),
            ids: Ids { keys: RandomState::new(), next: AtomicU64::new(0) },
            queue: Mutex::new(Queue::default()),
            full: Notify::new(),
        }
    }
}

impl Spans {
    /// What the agent said (`tracing`, on every attach). Turning it off drops what waits.
    pub fn configure(&self, t: &pb::Tracing) {
        *self.sampling.write().unwrap() = Sampling { ratio: t.ratio.clamp(0.0, 1.0), parent_based: t.parent_based };
        self.enabled.store(t.enabled, Ordering::Relaxed);
        if !t.enabled {
            *self.queue.lock().unwrap() = Queue::default();
        }
    }

    /// This side's hop of a request whose `traceparent` header is `incoming`.
    pub fn hop(&self, incoming: Option<&str>) -> TraceHop {
        let parent = incoming.and_then(parse_traceparent);
        let span_id = self.ids.u64().to_be_bytes();
        let on = self.enabled.load(Ordering::Relaxed);
        match parent {
            Some((trace_id, parent_span, flags)) => {
                let sampled = if !on {
                    flags & 1 == 1
                } else {
                    let s = *self.sampling.read().unwrap();
                    if s.parent_based { flags & 1 == 1 } else { self.sample(&trace_id, s.ratio) }
                };
                TraceHop { trace_id, span_id, parent: Some(parent_span), sampled }
            }
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&self.ids.u64().to_be_bytes());
                trace_id[8..].copy_from_slice(&self.ids.u64().to_be_bytes());
                // Off, a new trace is marked sampled: the apps (and the
                // agents' connection spans) decide for themselves.
                let sampled = !on || self.sample(&trace_id, self.sampling.read().unwrap().ratio);
                TraceHop { trace_id, span_id, parent: None, sampled }
            }
        }
    }

    /// OpenTelemetry's TraceIdRatioBased: the trace id's low 8 bytes against the ratio, so every hop of a trace decides alike.
    fn sample(&self, trace_id: &[u8; 16], ratio: f64) -> bool {
        if ratio >= 1.0 {
            return true;
        }
        let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap()) >> 1;
        (low as f64) < ratio * (u64::MAX >> 1) as f64
    }

    fn record(&self, span: pb::Span) {
        let mut q = self.queue.lock().unwrap();
        if q.spans.len() >= MAX_QUEUED {
            q.dropped += 1;
            return;
        }
        q.spans.push(span);
        if q.spans.len() == BATCH {
            self.full.notify_one();
        }
    }

    /// What waits, as one batch; None when nothing does.
    fn take(&self) -> Option<pb::SpanBatch> {
        let mut q = self.queue.lock().unwrap();
        if q.spans.is_empty() && q.dropped == 0 {
            return None;
        }
        let q = std::mem::take(&mut *q);
        Some(pb::SpanBatch { spans: q.spans, dropped: q.dropped })
    }

    /// Sends batches to the agent for the life of the process: every second, or as soon as a batch is full.
    pub async fn run(self: Arc<Self>, outbox: Outbox) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = self.full.notified() => {}
            }
            self.flush(&outbox);
        }
    }

    /// Sends what waits now.
    pub fn flush(&self, outbox: &Outbox) {
        if let Some(batch) = self.take() {
            outbox.send(Out::Spans(batch));
        }
    }
}

fn attr(key: &str, v: pb::attribute::Value) -> pb::Attribute {
    pb::Attribute { key: key.into(), value: Some(v) }
}

fn text(key: &str, v: &str) -> pb::Attribute {
    attr(key, pb::attribute::Value::StringValue(v.into()))
}

fn unix_micros(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The span of one finished request: named and attributed as OpenTelemetry's
/// HTTP conventions and the connection spans (ambit.*) name things.
pub fn span_of(o: &RequestOutcome, hop: &TraceHop) -> pb::Span {
    let (name, kind) = match o.side {
        Side::Source => ("ambit.request.outbound", 2),
        Side::Destination => ("ambit.request.inbound", 1),
    };
    let mut attributes = vec![
        text("http.request.method", &o.method),
        text("url.path", &o.path),
        text("server.address", &o.authority),
        attr("http.response.status_code", pb::attribute::Value::IntValue(o.status.into())),
        text("network.protocol.name", o.protocol.label()),
        text("ambit.source.workload", &o.source.workload),
        text("ambit.source.namespace", &o.source.namespace),
        text("ambit.source.principal", &o.source.identity),
        text("ambit.destination.workload", &o.destination.workload),
        text("ambit.destination.namespace", &o.destination.namespace),
        text("ambit.destination.principal", &o.destination.identity),
        text("ambit.destination.service", &o.service),
        text("ambit.upstream", &o.upstream),
        text("ambit.response_flags", if o.response_flags.is_empty() { "-" } else { &o.response_flags }),
        attr("ambit.bytes_recv", pb::attribute::Value::IntValue(o.request_bytes as i64)),
        attr("ambit.bytes_sent", pb::attribute::Value::IntValue(o.response_bytes as i64)),
    ];
    if let Some(g) = o.grpc_status {
        attributes.push(attr("rpc.grpc.status_code", pb::attribute::Value::IntValue(g.into())));
    }
    // A routed request: the rule that decided it, and its attempts (1 + retries).
    if !o.route.is_empty() {
        attributes.push(text("ambit.route", &o.route));
        attributes.push(attr("ambit.attempts", pb::attribute::Value::IntValue(o.attempts.into())));
    }
    let error = o.status == 0 || o.status >= 500;
    let start = unix_micros(o.start);
    pb::Span {
        trace_id: hop.trace_id.to_vec(),
        span_id: hop.span_id.to_vec(),
        parent_span_id: hop.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: name.into(),
        kind,
        start_unix_micros: start,
        end_unix_micros: start + o.duration.as_micros() as u64,
        attributes,
        error,
        status_message: if !error {
            String::new()
        } else if o.status == 0 {
            format!("no response ({})", if o.response_flags.is_empty() { "-" } else { &o.response_flags })
        } else {
            format!("HTTP {}", o.status)
        },
    }
}

impl RequestObserver for Spans {
    fn observe(&self, o: &RequestOutcome) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if let Some(hop) = o.trace.as_ref().filter(|h| h.sampled) {
            self.record(span_of(o, hop));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::outcome::{Peer, Protocol};
    use std::time::SystemTime;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn on(ratio: f64, parent_based: bool) -> Spans {
        let s = Spans::default();
        s.configure(&pb::Tracing { enabled: true, ratio, parent_based });
        s
    }

    fn outcome(side: Side, status: u16, trace: Option<TraceHop>) -> RequestOutcome {
        RequestOutcome {
            side, protocol: Protocol::Http1, method: "GET".into(), authority: "web.default:80".into(), path: "/a?b".into(), status,
            grpc_status: None, response_flags: String::new(), start: SystemTime::now(), duration: Duration::from_millis(3),
            request_bytes: 10, response_bytes: 20, upstream: "10.0.0.7:8080".into(), service: "web.default.svc.cluster.local".into(),
            source: Peer { identity: "spiffe://td/ns/default/sa/client".into(), workload: "client".into(), namespace: "default".into() },
            destination: Peer { identity: "spiffe://td/ns/default/sa/web".into(), workload: "web".into(), namespace: "default".into() },
            traceparent: None, trace, route: String::new(), attempts: 0,
        }
    }

    #[test]
    fn traceparent_parsing_follows_w3c() {
        let (t, s, f) = parse_traceparent(TP).unwrap();
        assert_eq!(hex(&t), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&s), "b7ad6b7169203331");
        assert_eq!(f, 1);
        for bad in [
            "", "garbage", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01", "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_hop_continues_the_incoming_trace_as_its_child() {
        for spans in [Spans::default(), on(1.0, true)] {
            let h = spans.hop(Some(TP));
            assert_eq!(hex(&h.trace_id), "0af7651916cd43dd8448eb211c80319c", "same trace");
            assert_eq!(h.parent.map(|p| hex(&p)).as_deref(), Some("b7ad6b7169203331"), "the incoming span is the parent");
            assert_ne!(hex(&h.span_id), "b7ad6b7169203331", "a span of its own");
            assert!(h.sampled);
            let fwd = h.traceparent();
            assert_eq!(fwd, format!("00-0af7651916cd43dd8448eb211c80319c-{}-01", hex(&h.span_id)), "forwarded: this hop as the parent");
            let next = spans.hop(Some(&fwd));
            assert_eq!(next.parent, Some(h.span_id), "the next hop is this one's child");
        }
    }

    #[test]
    fn a_request_without_a_valid_traceparent_starts_a_trace() {
        let spans = Spans::default();
        let (a, b) = (spans.hop(None), spans.hop(Some("junk")));
        for h in [a, b] {
            assert_eq!(h.parent, None);
            assert_ne!(h.trace_id, [0; 16]);
            assert!(parse_traceparent(&h.traceparent()).is_some(), "forwards a valid traceparent");
            assert!(h.sampled, "off: marked sampled, the app decides");
        }
        assert_ne!(a.trace_id, b.trace_id, "a new trace each");
        assert_ne!(a.span_id, b.span_id);
    }

    #[test]
    fn sampling_when_on() {
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        assert!(!on(1.0, true).hop(Some(unsampled)).sampled, "parent based: the parent's decision");
        assert!(on(0.0, true).hop(Some(TP)).sampled, "parent based: a sampled parent is followed at ratio 0");
        assert!(!on(0.0, true).hop(None).sampled, "ratio 0: a new trace is not sampled");
        assert!(!on(0.0, false).hop(Some(TP)).sampled, "not parent based: the ratio decides");
        assert!(on(1.0, false).hop(Some(unsampled)).sampled);
        let half = on(0.5, false);
        let n = (0..2000).filter(|_| half.hop(None).sampled).count();
        assert!((800..1200).contains(&n), "ratio 0.5: about half ({n} of 2000)");
    }

    #[test]
    fn off_records_nothing() {
        let spans = Spans::default();
        spans.observe(&outcome(Side::Source, 200, Some(spans.hop(None))));
        assert!(spans.take().is_none());
        let on = on(1.0, true);
        on.observe(&outcome(Side::Source, 200, Some(on.hop(None))));
        on.configure(&pb::Tracing { enabled: false, ratio: 1.0, parent_based: true });
        assert!(on.take().is_none(), "turning off drops what waits");
    }

    #[test]
    fn a_sampled_request_becomes_a_span_with_its_ids() {
        let spans = on(1.0, true);
        let hop = spans.hop(Some(TP));
        spans.observe(&outcome(Side::Destination, 503, Some(hop)));
        spans.observe(&outcome(Side::Source, 200, Some(spans.hop(Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")))));
        spans.observe(&outcome(Side::Source, 200, None));
        let batch = spans.take().unwrap();
        assert_eq!(batch.spans.len(), 1, "the unsampled and the untraced one are not recorded");
        let s = &batch.spans[0];
        assert_eq!(s.trace_id, hop.trace_id.to_vec());
        assert_eq!(s.span_id, hop.span_id.to_vec());
        assert_eq!(hex(&s.parent_span_id), "b7ad6b7169203331");
        assert_eq!((s.name.as_str(), s.kind), ("ambit.request.inbound", 1));
        assert_eq!(s.end_unix_micros - s.start_unix_micros, 3_000);
        assert!(s.error);
        assert_eq!(s.status_message, "HTTP 503");
        let get = |k: &str| s.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.clone());
        assert_eq!(get("http.response.status_code"), Some(pb::attribute::Value::IntValue(503)));
        assert_eq!(get("ambit.source.workload"), Some(pb::attribute::Value::StringValue("client".into())));
        assert_eq!(get("ambit.destination.principal"), Some(pb::attribute::Value::StringValue("spiffe://td/ns/default/sa/web".into())));
        assert_eq!(get("ambit.bytes_sent"), Some(pb::attribute::Value::IntValue(20)));
        assert_eq!(get("ambit.route"), None, "no route decided it");
        assert!(spans.take().is_none(), "taken once");
        let mut routed = outcome(Side::Source, 200, Some(spans.hop(Some(TP))));
        (routed.route, routed.attempts) = ("HTTPRoute/default/web#0".into(), 2);
        spans.observe(&routed);
        let s = &spans.take().unwrap().spans[0];
        let get = |k: &str| s.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.clone());
        assert_eq!(get("ambit.route"), Some(pb::attribute::Value::StringValue("HTTPRoute/default/web#0".into())));
        assert_eq!(get("ambit.attempts"), Some(pb::attribute::Value::IntValue(2)));
    }

    #[tokio::test]
    async fn batches_go_to_the_agent_every_second_or_when_full() {
        let (outbox, mut rx) = crate::control::outbox();
        let spans = Arc::new(on(1.0, true));
        tokio::spawn(spans.clone().run(outbox));
        let sent = |q: crate::control::Queued| match q {
            crate::control::Queued::Line(Out::Spans(b)) => b.spans.len(),
            _ => panic!("not a span batch"),
        };
        spans.observe(&outcome(Side::Source, 200, Some(spans.hop(None))));
        assert!(rx.try_recv().is_err(), "not at once");
        tokio::time::sleep(FLUSH_EVERY + Duration::from_millis(10)).await;
        assert_eq!(sent(rx.recv().await.unwrap()), 1, "on the tick");
        for _ in 0..BATCH {
            spans.observe(&outcome(Side::Source, 200, Some(spans.hop(None))));
        }
        tokio::task::yield_now().await;
        assert_eq!(sent(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.expect("before the tick").unwrap()), BATCH, "a full batch goes at once");
        tokio::time::sleep(FLUSH_EVERY + Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "nothing waits: nothing is sent");
    }

    #[test]
    fn the_queue_is_bounded() {
        let spans = on(1.0, true);
        for _ in 0..MAX_QUEUED + 5 {
            spans.observe(&outcome(Side::Source, 200, Some(spans.hop(None))));
        }
        let batch = spans.take().unwrap();
        assert_eq!(batch.spans.len(), MAX_QUEUED);
        assert_eq!(batch.dropped, 5);
    }
}
