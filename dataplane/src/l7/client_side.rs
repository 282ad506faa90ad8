//! The source agent's per-request path: HTTP served on an app's connection
//! to a service port that declares an HTTP protocol (the agent routes such a
//! connection `http`, naming the service's endpoint table). hyper-util's
//! auto server reads HTTP/1.1 or HTTP/2 with prior knowledge; each request
//! is balanced on its own (balancer.rs), checked against its service's
//! circuit breaker (circuit.rs), sent on a pooled upstream connection
//! (upstream.rs), and its answer counts towards its endpoint's health
//! (health.rs). Upgrade (WebSocket) and CONNECT requests get an upstream
//! connection of their own and, once answered 101 (or 2xx to CONNECT),
//! become a byte stream both ways. Each finished request is one
//! RequestOutcome to the core's observers; nothing per request goes to the
//! agent (ejections, a few per endpoint, do).
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::control::{pb, Out};
use crate::core::Core;
use crate::l7::balancer::{Event, InFlight, Services, Table};
use crate::l7::body::{grpc_status, Counted, Done};
use crate::l7::circuit::Slot;
use crate::l7::counted::Counted as CountedIo;
use crate::l7::outcome::{Peer, Protocol, RequestOutcome, Side};
use crate::l7::server_limits;
use crate::l7::upstream::{ConnectError, Connector};
use crate::outbound::Outbound;
use crate::relay::Counts;

pub type ResponseBody = BoxBody<Bytes, hyper::Error>;
type UpstreamBody = Counted<Incoming>;

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// The response header naming the flags of a response the data plane made
/// itself (503 UO, UF, UH, UC; 403 DENY), so an app can tell them from its peer's.
pub const FLAGS_HEADER: &str = "x-ambit-response-flags";

pub struct L7 {
    core: Arc<Core>,
    pub services: Arc<Services>,
    /// Pooled clients by (service table, source, CONNECT headers).
    clients: Mutex<HashMap<String, Client<Connector, UpstreamBody>>>,
}

impl L7 {
    pub fn new(core: Arc<Core>) -> Arc<Self> {
        Arc::new(L7 { core, services: Arc::new(Services::default()), clients: Mutex::new(HashMap::new()) })
    }

    /// The pooled client of a connection's source and service towards `endpoint`.
    fn client(&self, c: &Connector, endpoint: &str, http2: bool) -> Client<Connector, UpstreamBody> {
        let headers: Vec<String> = c.headers.iter().map(|h| format!("{}={}", h.name, h.value)).collect();
        let key = format!("{}|{}|{}|{}|{}", c.key, c.source, headers.join("&"), endpoint, http2);
        let mut clients = self.clients.lock().unwrap();
        clients.entry(key).or_insert_with(|| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(UPSTREAM_IDLE)
                .http2_only(http2)
                .build(Connector { endpoint: endpoint.to_string(), ..c.clone() })
        }).clone()
    }

    /// Tells the agent of ejections and returns.
    fn tell(&self, events: Vec<Event>) {
        for (service, e, ej) in events {
            self.core.outbox.send(Out::Ejection(pb::Ejection {
                service, endpoint: e.authority, workload: format!("{}/{}", e.namespace, e.workload),
                reason: ej.reason, since_ms: ej.since_ms, until_ms: ej.until_ms, ejections: ej.ejections,
            }));
        }
    }

    /// Serves HTTP on an app's connection until it ends or the agent closes it.
    pub async fn serve(self: Arc<Self>, outbound: Arc<Outbound>, id: u64, route: pb::Route, tcp: TcpStream) {
        let counts = Counts::default();
        let closed = self.core.live(id, &counts, route.tag.clone());
        let headers = route.attempts.first().map(|a| a.headers.clone()).unwrap_or_default();
        let connector = Connector {
            endpoint: String::new(), outbound, services: self.services.clone(), key: route.service.clone(), source: route.source.clone(), headers,
            timeout: Duration::from_millis(route.timeout_ms.max(1)),
        };
        let source = Peer { identity: route.source, workload: route.source_workload, namespace: route.source_namespace };
        let conn = Arc::new(AppConnection { l7: self.clone(), key: route.service, source, connector });
        let io = TokioIo::new(CountedIo::new(tcp, counts.from_source.clone(), counts.to_source.clone()));
        let service = hyper::service::service_fn(move |req| {
            let c = conn.clone();
            async move { Ok::<_, Infallible>(c.request(req).await) }
        });
        // The same limits as every HTTP server of the data plane: an app's bad input ends only its own connection.
        let builder = server_limits::builder(false);
        let served = builder.serve_connection_with_upgrades(io, service);
        let error = tokio::select! {
            r = served => r.err().map(|e| e.to_string()),
            _ = closed => Some("closed by the agent".to_string()),
        };
        self.core.ended(id, &counts, error);
    }
}

/// One app connection's requests: where they go and who sends them.
struct AppConnection {
    l7: Arc<L7>,
    key: String,
    source: Peer,
    connector: Connector,
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE)
}

/// The connect failure hyper-util's client wraps, if that is what failed.
fn connect_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut at: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        at = err.source();
    }
    None
}

impl AppConnection {
    async fn request(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let authority = req.uri().authority().map(|a| a.to_string())
            .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
            .unwrap_or_default();
        let mut o = RequestOutcome {
            side: Side::Source,
            protocol: if is_grpc(&req) { Protocol::Grpc } else if req.version() == Version::HTTP_2 { Protocol::Http2 } else { Protocol::Http1 },
            method: req.method().to_string(),
            authority,
            path: req.uri().path_and_query().map_or_else(|| "/".to_string(), |p| p.to_string()),
            status: 0, grpc_status: None, response_flags: String::new(), start: SystemTime::now(), duration: Duration::ZERO,
            request_bytes: 0, response_bytes: 0, upstream: String::new(), service: String::new(),
            source: self.source.clone(), destination: Peer::default(),
            traceparent: req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string),
            trace: None,
        };
        // This request's hop of its trace (spans.rs): the child of the app's
        // span (or a new trace's root), and the parent of the destination's.
        let hop = self.l7.core.spans.hop(o.traceparent.as_deref());
        o.trace = Some(hop);
        if let Ok(v) = HeaderValue::from_str(&hop.traceparent()) {
            req.headers_mut().insert("traceparent", v);
        }
        let l7 = &self.l7;
        let Some(table) = l7.services.get(&self.key) else { return self.local(o, start, 503, "UH", "no healthy upstream") };
        o.service = table.service.clone();
        if table.grpc {
            o.protocol = Protocol::Grpc;
        }
        let settings = l7.services.settings();
        let Some(pending) = table.circuit.request(settings.max_pending_requests) else {
            return self.local(o, start, 503, "UO", "upstream overflow: too many pending requests");
        };
        let (picked, events) = l7.services.pick(&table, Instant::now());
        l7.tell(events);
        let Some((idx, in_flight)) = picked else { return self.local(o, start, 503, "UH", "no healthy upstream") };
        let ep = &table.endpoints[idx].info;
        o.upstream = ep.authority.clone();
        o.destination = Peer { identity: ep.expect.clone(), workload: ep.workload.clone(), namespace: ep.namespace.clone() };
        if is_upgrade(&req) {
            return self.upgrade(req, o, start, table, idx, in_flight, pending).await;
        }

        let (mut parts, body) = req.into_parts();
        parts.version = if table.http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        // The app's authority stays the request's (Host, :authority); the client is the endpoint's.
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = if o.authority.is_empty() { ep.authority.as_str() } else { o.authority.as_str() };
        parts.uri = match Uri::builder().scheme("http").authority(authority).path_and_query(target).build() {
            Ok(u) => u,
            Err(_) => return self.local(o, start, 400, "", "bad request authority or target"),
        };
        let request_bytes = Arc::new(AtomicU64::new(0));
        let upstream = Request::from_parts(parts, Counted::new(body, request_bytes.clone(), None, None));
        let answered = l7.client(&self.connector, &ep.authority, table.http2).request(upstream).await;
        drop(pending);
        let resp = match answered {
            Ok(r) => r,
            Err(e) => return self.failed(o, start, &table, idx, &e),
        };
        let status = resp.status().as_u16();
        let failure = (status >= 500).then(|| format!("status_{status}"));
        if let Some(ev) = l7.services.report(&table, idx, failure.as_deref(), Instant::now()) {
            l7.tell(vec![ev]);
        }
        o.status = status;
        self.respond(o, start, resp, request_bytes, in_flight)
    }

    /// The upstream's response, passed on; the outcome is observed when its body is over.
    fn respond(&self, mut o: RequestOutcome, start: Instant, resp: Response<Incoming>, request_bytes: Arc<AtomicU64>, in_flight: InFlight) -> Response<ResponseBody> {
        let grpc = Arc::new(Mutex::new(grpc_status(resp.headers())));
        let (mut parts, body) = resp.into_parts();
        parts.version = Version::default();
        let response_bytes = Arc::new(AtomicU64::new(0));
        let (core, rb, g) = (self.l7.core.clone(), response_bytes.clone(), grpc.clone());
        let done: Done = Box::new(move |complete| {
            drop(in_flight);
            o.duration = start.elapsed();
            o.request_bytes = request_bytes.load(Ordering::Relaxed);
            o.response_bytes = rb.load(Ordering::Relaxed);
            o.grpc_status = *g.lock().unwrap();
            if !complete {
                o.response_flags = "DC".into();
            }
            core.observers.observe(&o);
        });
        Response::from_parts(parts, Counted::new(body, response_bytes, Some(grpc), Some(done)).boxed())
    }

    /// No answer from the upstream: a full circuit (UO), the destination
    /// agent's policy refusing this source (403 DENY, never counted against
    /// the endpoint: another client's denial must not eject it), a failed
    /// connect (UF, counted against the endpoint's health) or a connection
    /// lost before the answer (UC).
    fn failed(&self, o: RequestOutcome, start: Instant, table: &Table, idx: usize, e: &hyper_util::client::legacy::Error) -> Response<ResponseBody> {
        match connect_error(e) {
            Some(ConnectError::Overflow) => self.local(o, start, 503, "UO", "upstream overflow: too many connections"),
            Some(ConnectError::Denied { message }) => self.local(o, start, 403, "DENY", &format!("RBAC: access denied: {message}")),
            Some(ConnectError::Failed { reason, message }) => {
                if let Some(ev) = self.l7.services.report(table, idx, Some(reason), Instant::now()) {
                    self.l7.tell(vec![ev]);
                }
                self.local(o, start, 503, "UF", &format!("upstream connect error: {message}"))
            }
            None => {
                if let Some(ev) = self.l7.services.report(table, idx, Some("reset"), Instant::now()) {
                    self.l7.tell(vec![ev]);
                }
                self.local(o, start, 503, "UC", "upstream reset before the response")
            }
        }
    }

    /// A response the data plane makes itself.
    fn local(&self, mut o: RequestOutcome, start: Instant, status: u16, flags: &str, text: &str) -> Response<ResponseBody> {
        o.status = status;
        o.response_flags = flags.to_string();
        o.duration = start.elapsed();
        o.response_bytes = text.len() as u64;
        self.l7.core.observers.observe(&o);
        let mut r = Response::new(Full::new(Bytes::from(text.to_string())).map_err(|never| match never {}).boxed());
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if let Ok(v) = HeaderValue::from_str(flags) {
            if !flags.is_empty() {
                r.headers_mut().insert(FLAGS_HEADER, v);
            }
        }
        r
    }

    /// An Upgrade or CONNECT request: sent on an HTTP/1.1 upstream
    /// connection of its own; once the upstream switches (101, or 2xx to
    /// CONNECT), both upgraded connections are joined as a byte stream.
    #[allow(clippy::too_many_arguments)]
    async fn upgrade(&self, mut req: Request<Incoming>, mut o: RequestOutcome, start: Instant, table: Arc<Table>, idx: usize, in_flight: InFlight, pending: Slot) -> Response<ResponseBody> {
        let authority = table.endpoints[idx].info.authority.clone();
        let down = hyper::upgrade::on(&mut req);
        let io = match self.connector.connect(&authority).await {
            Ok(io) => io,
            Err(ConnectError::Overflow) => return self.local(o, start, 503, "UO", "upstream overflow: too many connections"),
            Err(ConnectError::Denied { message }) => return self.local(o, start, 403, "DENY", &format!("RBAC: access denied: {message}")),
            Err(ConnectError::Failed { reason, message }) => {
                if let Some(ev) = self.l7.services.report(&table, idx, Some(&reason), Instant::now()) {
                    self.l7.tell(vec![ev]);
                }
                return self.local(o, start, 503, "UF", &format!("upstream connect error: {message}"));
            }
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::Builder::new().handshake::<_, UpstreamBody>(io).await else {
            return self.local(o, start, 503, "UC", "upstream reset before the response");
        };
        tokio::spawn(conn.with_upgrades());
        let connect = req.method() == Method::CONNECT;
        let (mut parts, body) = req.into_parts();
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(h) = HeaderValue::from_str(&o.authority) {
                parts.headers.insert(header::HOST, h);
            }
        }
        if !connect {
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
            parts.uri = target.parse().unwrap_or_else(|_| Uri::from_static("/"));
        }
        let request_bytes = Arc::new(AtomicU64::new(0));
        let answered = sender.send_request(Request::from_parts(parts, Counted::new(body, request_bytes.clone(), None, None))).await;
        drop(pending);
        let Ok(mut resp) = answered else { return self.local(o, start, 503, "UC", "upstream reset before the response") };
        let status = resp.status();
        let failure = status.is_server_error().then(|| format!("status_{}", status.as_u16()));
        if let Some(ev) = self.l7.services.report(&table, idx, failure.as_deref(), Instant::now()) {
            self.l7.tell(vec![ev]);
        }
        o.status = status.as_u16();
        let switched = status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success());
        if !switched {
            return self.respond(o, start, resp, request_bytes, in_flight);
        }
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(u), Ok(d)) = tokio::join!(up, down) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(u), &mut TokioIo::new(d)).await;
            }
            drop(in_flight);
        });
        o.duration = start.elapsed();
        self.l7.core.observers.observe(&o);
        let (mut parts, _) = resp.into_parts();
        parts.version = Version::default();
        Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
    }
}
