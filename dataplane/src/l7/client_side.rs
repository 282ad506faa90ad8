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
//!
//! A connection whose route names a route table (routes.rs) has each
//! request decided by the table's first matching rule: its fault, redirect,
//! rewrite and header filters (fault.rs, filters.rs), a backend picked by
//! weight, then its timeouts, mirrors and retries within the service's
//! retry budget (retry.rs). Every request, routed or not, takes one path:
//! `forward` runs `attempts`, which runs one `attempt` per try.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
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
use crate::l7::deadline::{BoxError, Deadline};
use crate::l7::fault::{self, Abort};
use crate::l7::filters;
use crate::l7::outcome::{Peer, Protocol, RequestOutcome, Side};
use crate::l7::request_body::{self, Buffered, Read, RequestBody};
use crate::l7::retry::{self, Count, Retries};
use crate::l7::routes::{self, RequestView, Routes};
use crate::l7::server_limits;
use crate::l7::upstream::{ConnectError, Connector};
use crate::outbound::Outbound;
use crate::relay::Counts;

pub type ResponseBody = BoxBody<Bytes, BoxError>;
type UpstreamBody = Counted<RequestBody>;

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
/// The longest a mirrored copy is waited for before it is given up.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// The response header naming the flags of a response the data plane made
/// itself (503 UO, UF, UH, UC; 403 DENY; 404 NR; 504 UT; FI), so an app can tell them from its peer's.
pub const FLAGS_HEADER: &str = "x-ambit-response-flags";

pub struct L7 {
    core: Arc<Core>,
    pub services: Arc<Services>,
    pub routes: Arc<Routes>,
    /// Retry budgets, and the counts of retries and mirrors for the agent.
    pub retries: Arc<Retries>,
    /// Pooled clients by (service table, source, CONNECT headers).
    clients: Mutex<HashMap<String, Client<Connector, UpstreamBody>>>,
}

impl L7 {
    pub fn new(core: Arc<Core>) -> Arc<Self> {
        Arc::new(L7 { core, services: Arc::new(Services::default()), routes: Arc::new(Routes::default()), retries: Arc::new(Retries::default()), clients: Mutex::new(HashMap::new()) })
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
        let conn = Arc::new(AppConnection { l7: self.clone(), key: route.service, route_table: route.route_table, source, connector });
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
    /// The route table deciding each request; "": each goes to `key` as it is.
    route_table: String,
    source: Peer,
    connector: Connector,
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE)
}

/// Applies a URL rewrite to a request: the path (its query kept) and the
/// authority (the URI's, and Host when the app sent one).
fn rewrite(req: &mut Request<Incoming>, rw: &pb::Rewrite, prefix: Option<&str>) -> Result<(), String> {
    let path = filters::modify_path(req.uri().path(), rw.path.as_ref(), prefix);
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(target.parse().map_err(|_| format!("the rewritten path {target:?} is no valid request target"))?);
    if !rw.hostname.is_empty() {
        let old = parts.authority.as_ref().map(|a| a.to_string())
            .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
            .unwrap_or_default();
        let new = filters::rewrite_authority(&old, &rw.hostname);
        if parts.authority.is_some() {
            parts.authority = Some(new.parse().map_err(|_| format!("the rewritten authority {new:?} is not valid"))?);
        }
        let host = HeaderValue::from_str(&new).map_err(|_| format!("the rewritten authority {new:?} is not valid"))?;
        req.headers_mut().insert(header::HOST, host);
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| format!("the rewritten request target is not valid: {e}"))?;
    Ok(())
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

/// Where a request goes once its rule (if any) decided: the backend's
/// service table, and the rule's retry, timeouts and mirrors.
#[derive(Default)]
struct Target<'a> {
    key: &'a str,
    retry: Option<&'a pb::Retry>,
    request_timeout: Option<Duration>,
    backend_timeout: Option<Duration>,
    mirrors: &'a [pb::Mirror],
}

/// A request's head as each attempt sends it.
struct Head {
    method: Method,
    version: Version,
    headers: HeaderMap,
    /// The app's authority (or the rewritten one); "" when the app gave none.
    authority: String,
    target: String,
}

/// The body, buffered (it can be sent again) or to be sent once.
enum Payload {
    Buffered(Buffered),
    Once(RequestBody),
}

/// How one attempt, or the attempts together, ended.
enum Answer {
    Upstream { resp: Response<Incoming>, in_flight: InFlight, request_bytes: Arc<AtomicU64> },
    /// An answer made here: status, response flags, text; whether a retry
    /// may follow (a failed connect, a reset, an attempt's timeout).
    Local { status: u16, flags: &'static str, text: String, retriable: bool },
}

impl Answer {
    fn local(status: u16, flags: &'static str, text: impl Into<String>) -> Self {
        Answer::Local { status, flags, text: text.into(), retriable: false }
    }

    fn retriable(&self, retry: &pb::Retry) -> bool {
        match self {
            Answer::Upstream { resp, .. } => {
                retry.codes.contains(&u32::from(resp.status().as_u16())) || grpc_status(resp.headers()).is_some_and(|g| retry.grpc_codes.contains(&g))
            }
            Answer::Local { retriable, .. } => *retriable,
        }
    }
}

/// Adds a response flag to those a request has (Envoy joins them with ",").
fn add_flag(o: &mut RequestOutcome, flag: &str) {
    if flag.is_empty() {
        return;
    }
    if !o.response_flags.is_empty() {
        o.response_flags.push(',');
    }
    o.response_flags.push_str(flag);
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
            trace: None, route: String::new(), attempts: 0,
        };
        // This request's hop of its trace (spans.rs): the child of the app's
        // span (or a new trace's root), and the parent of the destination's.
        let hop = self.l7.core.spans.hop(o.traceparent.as_deref());
        o.trace = Some(hop);
        if let Ok(v) = HeaderValue::from_str(&hop.traceparent()) {
            req.headers_mut().insert("traceparent", v);
        }
        if self.route_table.is_empty() {
            return self.forward(req, o, start, &Target { key: &self.key, ..Target::default() }).await;
        }
        let Some(table) = self.l7.routes.get(&self.route_table) else { return self.local(o, start, 503, "NR", "no route table for this service") };
        let decided = table.decide(&RequestView { method: req.method().as_str(), path: req.uri().path(), query: req.uri().query(), headers: req.headers() });
        let Some((rule, matched)) = decided else { return self.local(o, start, 404, "NR", "no route matched the request") };
        o.route = rule.rule.route.clone();
        self.routed(req, o, start, &rule.rule, rule.matched_prefix(matched)).await
    }

    /// A request its rule decides: fault, redirect, rewrite, header
    /// modifiers, the backend picked by weight, then forwarded with the
    /// rule's timeouts, retries and mirrors.
    async fn routed(&self, mut req: Request<Incoming>, mut o: RequestOutcome, start: Instant, r: &pb::HttpRouteRule, prefix: Option<&str>) -> Response<ResponseBody> {
        let l7 = &self.l7;
        if let Some(f) = &r.fault {
            let (delay, abort) = fault::decide(f, l7.services.random(), l7.services.random());
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
                add_flag(&mut o, "DI");
            }
            match abort {
                Some(Abort::Http(status)) => return self.local(o, start, status, "FI", "fault filter abort"),
                Some(Abort::Grpc(code)) => return self.grpc_local(o, start, code, "FI", "fault filter abort"),
                None => {}
            }
        }
        if let Some(rd) = &r.redirect {
            let location = filters::redirect_location(rd, &o.authority, req.uri().path(), req.uri().query(), prefix);
            let status = if rd.status == 0 { 302 } else { u16::try_from(rd.status).unwrap_or(302) };
            let mut resp = self.local(o, start, status, "", "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            filters::modify_headers(resp.headers_mut(), r.response_headers.as_ref());
            return resp;
        }
        if let Some(rw) = &r.rewrite {
            if let Err(text) = rewrite(&mut req, rw, prefix) {
                return self.local(o, start, 400, "", &text);
            }
        }
        filters::modify_headers(req.headers_mut(), r.request_headers.as_ref());
        let Some(backend) = routes::weighted(&r.backends, |b| b.weight, l7.services.random()) else {
            return self.local(o, start, 500, "", "the route has no backend");
        };
        if backend.table.is_empty() {
            return self.local(o, start, 500, "", "the route's backend does not resolve");
        }
        filters::modify_headers(req.headers_mut(), backend.request_headers.as_ref());
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        let target = Target { key: &backend.table, retry: r.retry.as_ref(), request_timeout: ms(r.request_timeout_ms), backend_timeout: ms(r.backend_timeout_ms), mirrors: &r.mirrors };
        let mut resp = self.forward(req, o, start, &target).await;
        filters::modify_headers(resp.headers_mut(), r.response_headers.as_ref());
        filters::modify_headers(resp.headers_mut(), backend.response_headers.as_ref());
        resp
    }

    /// The connector of this connection's source towards the service table `key`.
    fn connector_for(&self, key: &str) -> Connector {
        Connector { key: key.to_string(), endpoint: String::new(), ..self.connector.clone() }
    }

    /// Sends a request to an endpoint of `target`'s service table, retrying
    /// as its rule says, within its request timeout (until the response's
    /// headers: the body streams on after it), and answers.
    async fn forward(&self, req: Request<Incoming>, mut o: RequestOutcome, start: Instant, target: &Target<'_>) -> Response<ResponseBody> {
        let l7 = &self.l7;
        let Some(table) = l7.services.get(target.key) else { return self.local(o, start, 503, "UH", "no healthy upstream") };
        o.service = table.service.clone();
        if table.grpc {
            o.protocol = Protocol::Grpc;
        }
        let settings = l7.services.settings();
        let Some(pending) = table.circuit.request(settings.max_pending_requests) else {
            return self.local(o, start, 503, "UO", "upstream overflow: too many pending requests");
        };
        let connector = self.connector_for(target.key);
        if is_upgrade(&req) {
            o.attempts = 1;
            let (picked, events) = l7.services.pick(&table, Instant::now());
            l7.tell(events);
            let Some((idx, in_flight)) = picked else { return self.local(o, start, 503, "UH", "no healthy upstream") };
            let ep = &table.endpoints[idx].info;
            o.upstream = ep.authority.clone();
            o.destination = Peer { identity: ep.expect.clone(), workload: ep.workload.clone(), namespace: ep.namespace.clone() };
            return self.upgrade(req, o, start, table, idx, in_flight, pending, connector).await;
        }
        let (parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.to_string())
            .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
            .unwrap_or_default();
        let head = Head {
            method: parts.method,
            version: if table.http2 { Version::HTTP_2 } else { Version::HTTP_11 },
            headers: parts.headers,
            authority,
            target: parts.uri.path_and_query().map_or_else(|| "/".to_string(), |p| p.to_string()),
        };
        let sent = async {
            let payload = if target.retry.is_some() || !target.mirrors.is_empty() {
                match request_body::read(body, settings.max_buffered_body_bytes, request_body::STREAMING_GRACE).await {
                    Ok(Read::Buffered(b)) => Payload::Buffered(b),
                    Ok(Read::Stream(s)) => Payload::Once(s),
                    Err(_) => return Answer::local(400, "DC", "the request body failed"),
                }
            } else {
                Payload::Once(RequestBody::stream(body))
            };
            if let Payload::Buffered(b) = &payload {
                self.mirror(target.mirrors, &head, b);
            }
            self.attempts(&table, &connector, &head, payload, target, &mut o).await
        };
        let deadline = target.request_timeout.map(|t| tokio::time::Instant::now() + t);
        let answer = match deadline {
            Some(at) => tokio::time::timeout_at(at, sent).await.unwrap_or_else(|_| Answer::local(504, "UT", "upstream request timeout")),
            None => sent.await,
        };
        drop(pending);
        match answer {
            Answer::Upstream { resp, in_flight, request_bytes } => self.respond(o, start, resp, request_bytes, in_flight, deadline),
            Answer::Local { status, flags, text, .. } => self.local(o, start, status, flags, &text),
        }
    }

    /// The attempts of one request: the first, then retries while its rule's
    /// retry allows, the body was buffered and the service's budget has room.
    async fn attempts(&self, table: &Arc<Table>, connector: &Connector, head: &Head, payload: Payload, target: &Target<'_>, o: &mut RequestOutcome) -> Answer {
        let l7 = &self.l7;
        let budget = l7.retries.budget(&table.service);
        let _in_flight = budget.request();
        let (buffered, mut once) = match payload {
            Payload::Buffered(b) => (Some(b), None),
            Payload::Once(s) => (None, Some(s)),
        };
        let mut tried = Vec::new();
        let mut retry_hold = None;
        let mut retries = 0u32;
        loop {
            let body = match (&buffered, once.take()) {
                (Some(b), _) => b.body(),
                (None, Some(s)) => s,
                (None, None) => unreachable!("a body sent once is never retried"),
            };
            o.attempts += 1;
            let answer = self.attempt(table, connector, head, body, &tried, target.backend_timeout, o).await;
            drop(retry_hold.take());
            let Some(retry) = target.retry else { return answer };
            if buffered.is_none() || !answer.retriable(retry) {
                return answer;
            }
            if retries >= retry.attempts {
                if retries > 0 {
                    add_flag(o, "URX");
                }
                return answer;
            }
            let settings = l7.services.settings();
            let Some(hold) = budget.retry(settings.retry_budget_percent, settings.min_retry_concurrency) else {
                l7.retries.count(&table.service, Count::BudgetExhausted);
                return answer;
            };
            l7.retries.count(&table.service, Count::Retried);
            retry_hold = Some(hold);
            retries += 1;
            if let Some(idx) = table.endpoints.iter().position(|e| e.info.authority == o.upstream) {
                tried.push(idx);
            }
            drop(answer);
            let unit = (l7.services.random() >> 11) as f64 / (1u64 << 53) as f64;
            tokio::time::sleep(retry::backoff(Duration::from_millis(retry.backoff_ms), retries, unit)).await;
        }
    }

    /// One attempt: an endpoint of `table` (one not yet `tried`, when the
    /// service has one), the request sent, and its answer, within `timeout`.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(&self, table: &Arc<Table>, connector: &Connector, head: &Head, body: RequestBody, tried: &[usize], timeout: Option<Duration>, o: &mut RequestOutcome) -> Answer {
        let l7 = &self.l7;
        let (picked, events) = l7.services.pick_excluding(table, Instant::now(), tried);
        l7.tell(events);
        let Some((idx, in_flight)) = picked else { return Answer::local(503, "UH", "no healthy upstream") };
        let ep = &table.endpoints[idx].info;
        o.upstream = ep.authority.clone();
        o.destination = Peer { identity: ep.expect.clone(), workload: ep.workload.clone(), namespace: ep.namespace.clone() };
        // The app's authority stays the request's (Host, :authority); the client is the endpoint's.
        let authority = if head.authority.is_empty() { ep.authority.as_str() } else { head.authority.as_str() };
        let Ok(uri) = Uri::builder().scheme("http").authority(authority).path_and_query(head.target.as_str()).build() else {
            return Answer::local(400, "", "bad request authority or target");
        };
        let request_bytes = Arc::new(AtomicU64::new(0));
        let mut req = Request::new(Counted::new(body, request_bytes.clone(), None, None));
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers.clone();
        let sent = l7.client(connector, &ep.authority, table.http2).request(req);
        let answered = match timeout {
            None => sent.await,
            Some(t) => match tokio::time::timeout(t, sent).await {
                Ok(a) => a,
                Err(_) => {
                    // Envoy's outlier detection counts a timeout as a 504 from the endpoint.
                    if let Some(ev) = l7.services.report(table, idx, Some("timeout"), Instant::now()) {
                        l7.tell(vec![ev]);
                    }
                    return Answer::Local { status: 504, flags: "UT", text: "upstream request timeout".into(), retriable: true };
                }
            },
        };
        let resp = match answered {
            Ok(r) => r,
            Err(e) => return self.failed(table, idx, &e),
        };
        let status = resp.status().as_u16();
        let failure = (status >= 500).then(|| format!("status_{status}"));
        if let Some(ev) = l7.services.report(table, idx, failure.as_deref(), Instant::now()) {
            l7.tell(vec![ev]);
        }
        Answer::Upstream { resp, in_flight, request_bytes }
    }

    /// Copies a buffered request to each mirror that draws it: sent on its
    /// own task, its answer read and discarded, bounded by MIRROR_TIMEOUT
    /// and by the mirror service's cap on pending requests (a mirror beyond
    /// it is not made): it never delays or fails the request itself.
    fn mirror(&self, mirrors: &[pb::Mirror], head: &Head, body: &Buffered) {
        let l7 = &self.l7;
        for m in mirrors {
            if !fault::chance(m.millionths, l7.services.random()) {
                continue;
            }
            let Some(table) = l7.services.get(&m.table) else { continue };
            let Some(slot) = table.circuit.request(l7.services.settings().max_pending_requests) else { continue };
            let (picked, events) = l7.services.pick(&table, Instant::now());
            l7.tell(events);
            let Some((idx, in_flight)) = picked else { continue };
            let ep = &table.endpoints[idx].info;
            let authority = if head.authority.is_empty() { ep.authority.as_str() } else { head.authority.as_str() };
            let Ok(uri) = Uri::builder().scheme("http").authority(authority).path_and_query(head.target.as_str()).build() else { continue };
            let mut req = Request::new(Counted::new(body.body(), Arc::new(AtomicU64::new(0)), None, None));
            *req.method_mut() = head.method.clone();
            *req.uri_mut() = uri;
            *req.version_mut() = if table.http2 { Version::HTTP_2 } else { Version::HTTP_11 };
            *req.headers_mut() = head.headers.clone();
            let client = l7.client(&self.connector_for(&m.table), &ep.authority, table.http2);
            l7.retries.count(&table.service, Count::Mirrored);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(MIRROR_TIMEOUT, async {
                    if let Ok(resp) = client.request(req).await {
                        let _ = resp.into_body().collect().await;
                    }
                }).await;
                drop((slot, in_flight));
            });
        }
    }

    /// The upstream's response, passed on (its body cut at the request's
    /// `deadline`, if any: flag UT); the outcome is observed when its body is over.
    fn respond(&self, mut o: RequestOutcome, start: Instant, resp: Response<Incoming>, request_bytes: Arc<AtomicU64>, in_flight: InFlight, deadline: Option<tokio::time::Instant>) -> Response<ResponseBody> {
        o.status = resp.status().as_u16();
        let grpc = Arc::new(Mutex::new(grpc_status(resp.headers())));
        let (mut parts, body) = resp.into_parts();
        parts.version = Version::default();
        let response_bytes = Arc::new(AtomicU64::new(0));
        let (core, rb, g) = (self.l7.core.clone(), response_bytes.clone(), grpc.clone());
        let expired = Arc::new(AtomicBool::new(false));
        let cut = expired.clone();
        let done: Done = Box::new(move |complete| {
            drop(in_flight);
            o.duration = start.elapsed();
            o.request_bytes = request_bytes.load(Ordering::Relaxed);
            o.response_bytes = rb.load(Ordering::Relaxed);
            o.grpc_status = *g.lock().unwrap();
            if !complete {
                add_flag(&mut o, if cut.load(Ordering::SeqCst) { "UT" } else { "DC" });
            }
            core.observers.observe(&o);
        });
        let counted = Counted::new(body, response_bytes, Some(grpc), Some(done));
        let body = match deadline {
            Some(at) => Deadline::new(counted, at, expired).boxed(),
            None => counted.map_err(BoxError::from).boxed(),
        };
        Response::from_parts(parts, body)
    }

    /// No answer from the upstream: a full circuit (UO), the destination
    /// agent's policy refusing this source (403 DENY, never counted against
    /// the endpoint: another client's denial must not eject it), a failed
    /// connect (UF, counted against the endpoint's health) or a connection
    /// lost before the answer (UC). The last two may be retried.
    fn failed(&self, table: &Table, idx: usize, e: &hyper_util::client::legacy::Error) -> Answer {
        match connect_error(e) {
            Some(ConnectError::Overflow) => Answer::local(503, "UO", "upstream overflow: too many connections"),
            Some(ConnectError::Denied { message }) => Answer::local(403, "DENY", format!("RBAC: access denied: {message}")),
            Some(ConnectError::Failed { reason, message }) => {
                if let Some(ev) = self.l7.services.report(table, idx, Some(reason), Instant::now()) {
                    self.l7.tell(vec![ev]);
                }
                Answer::Local { status: 503, flags: "UF", text: format!("upstream connect error: {message}"), retriable: true }
            }
            None => {
                if let Some(ev) = self.l7.services.report(table, idx, Some("reset"), Instant::now()) {
                    self.l7.tell(vec![ev]);
                }
                Answer::Local { status: 503, flags: "UC", text: "upstream reset before the response".into(), retriable: true }
            }
        }
    }

    /// A response the data plane makes itself.
    fn local(&self, mut o: RequestOutcome, start: Instant, status: u16, flags: &str, text: &str) -> Response<ResponseBody> {
        o.status = status;
        add_flag(&mut o, flags);
        o.duration = start.elapsed();
        o.response_bytes = text.len() as u64;
        let all = o.response_flags.clone();
        self.l7.core.observers.observe(&o);
        let mut r = Response::new(Full::new(Bytes::from(text.to_string())).map_err(|never| match never {}).boxed());
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        if !text.is_empty() {
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        if let Ok(v) = HeaderValue::from_str(&all) {
            if !all.is_empty() {
                r.headers_mut().insert(FLAGS_HEADER, v);
            }
        }
        r
    }

    /// A gRPC answer made here: trailers-only (HTTP 200, grpc-status in the headers).
    fn grpc_local(&self, mut o: RequestOutcome, start: Instant, code: u32, flags: &str, message: &str) -> Response<ResponseBody> {
        o.status = 200;
        o.grpc_status = Some(code);
        o.protocol = Protocol::Grpc;
        add_flag(&mut o, flags);
        o.duration = start.elapsed();
        let all = o.response_flags.clone();
        self.l7.core.observers.observe(&o);
        let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(code));
        if let Ok(v) = HeaderValue::from_str(message) {
            h.insert("grpc-message", v);
        }
        if let Ok(v) = HeaderValue::from_str(&all) {
            h.insert(FLAGS_HEADER, v);
        }
        r
    }

    /// An Upgrade or CONNECT request: sent on an HTTP/1.1 upstream
    /// connection of its own; once the upstream switches (101, or 2xx to
    /// CONNECT), both upgraded connections are joined as a byte stream.
    #[allow(clippy::too_many_arguments)]
    async fn upgrade(&self, mut req: Request<Incoming>, mut o: RequestOutcome, start: Instant, table: Arc<Table>, idx: usize, in_flight: InFlight, pending: Slot, connector: Connector) -> Response<ResponseBody> {
        let authority = table.endpoints[idx].info.authority.clone();
        let down = hyper::upgrade::on(&mut req);
        let io = match connector.connect(&authority).await {
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
        let answered = sender.send_request(Request::from_parts(parts, Counted::new(RequestBody::stream(body), request_bytes.clone(), None, None))).await;
        drop(pending);
        let Ok(mut resp) = answered else { return self.local(o, start, 503, "UC", "upstream reset before the response") };
        let status = resp.status();
        let failure = status.is_server_error().then(|| format!("status_{}", status.as_u16()));
        if let Some(ev) = self.l7.services.report(&table, idx, failure.as_deref(), Instant::now()) {
            self.l7.tell(vec![ev]);
        }
        let switched = status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success());
        if !switched {
            return self.respond(o, start, resp, request_bytes, in_flight, None);
        }
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(u), Ok(d)) = tokio::join!(up, down) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(u), &mut TokioIo::new(d)).await;
            }
            drop(in_flight);
        });
        o.status = status.as_u16();
        o.duration = start.elapsed();
        self.l7.core.observers.observe(&o);
        let (mut parts, _) = resp.into_parts();
        parts.version = Version::default();
        Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
    }
}
