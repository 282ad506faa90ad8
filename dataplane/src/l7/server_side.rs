//! The destination side of an HTTP port: a connection the agent admitted
//! (an HBONE CONNECT stream, or captured plaintext) to a workload port a
//! Service declares http, http2 or grpc is served as HTTP here rather than
//! relayed as bytes. Each request is authorized against the connection's
//! RequestPolicy (authz.rs); a denied one is answered here (403 naming the
//! policy; gRPC: PERMISSION_DENIED) and counted, an allowed one is forwarded
//! to the workload over a pooled connection. The connection-level decision
//! stays the agent's, made once when the connection opened: request rules
//! only narrow it.
//!
//! The HTTP limits (server_limits.rs) hold for whatever a peer sends
//! (docs/l7.md, "Bad input"): hyper answers malformed HTTP/1.1 with 400 and a head over
//! MAX_HEAD_BYTES with 431 and closes that connection; h2 ends an HTTP/2
//! connection that floods resets (rapid reset, provoked resets) with GOAWAY
//! ENHANCE_YOUR_CALM, refuses streams beyond MAX_STREAMS, and resets a
//! header block over MAX_HEADER_LIST. Each connection is its own task; one
//! ending never touches another.
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, TE, UPGRADE};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::control::{pb, Out};
use crate::core::Core;
use crate::relay::Counts;

use super::authz::{normalize_path, Request as AuthzRequest, RequestPolicy, Verdict};
use super::body::{self, Counted as CountedBody};
use super::counted::Counted;
use super::server_limits;
use super::outcome::{Peer, Protocol, RequestOutcome, Side};

/// Idle pooled connections kept per workload port.
const POOL_IDLE_PER_HOST: usize = 32;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Answer = Either<Incoming, Full<Bytes>>;
/// What the client receives: the answer, counted, reporting the request's outcome when it ends.
type Body = CountedBody<Answer>;

/// What the appProtocol says of the workload's side: HTTP/1.1 for `http`
/// (whatever the client spoke), HTTP/2 for `http2` and `grpc`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Upstream {
    Http1,
    Http2,
}

/// One admitted HTTP connection: where its requests go, its request policy
/// (replaced on a policy change), and who its requests are between.
struct Conn {
    dial: Arc<str>,
    upstream: Upstream,
    connect_timeout: Duration,
    policy: Arc<RwLock<Arc<RequestPolicy>>>,
    core: Arc<Core>,
    source: Peer,
    destination: Peer,
    service: String,
}

/// A pooled client to one local app address, per upstream HTTP version.
type AppClients = HashMap<(Arc<str>, Upstream), Client<Dial, CountedBody<Incoming>>>;
/// A served connection: the HTTP/1.1 (with upgrades) or HTTP/2 server future.
type Served<'a> = Pin<Box<dyn Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send + 'a>>;

/// The HTTP side of the inbound half: servers' limits, the pooled clients
/// to local workloads, request policies of live connections, and denials
/// counted since the last report.
pub struct ServerSide {
    client_only: auto::Builder<TokioExecutor>,
    h2_only: auto::Builder<TokioExecutor>,
    clients: Mutex<AppClients>,
    policies: Mutex<HashMap<u64, Arc<RwLock<Arc<RequestPolicy>>>>>,
    denials: Mutex<HashMap<(String, &'static str), u64>>,
}

impl ServerSide {
    pub fn new() -> Arc<Self> {
        Arc::new(ServerSide {
            client_only: server_limits::builder(false),
            h2_only: server_limits::builder(true),
            clients: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
            denials: Mutex::new(HashMap::new()),
        })
    }

    /// A policy change: connection `id` is authorized by `policy` from its next request on.
    pub fn update(&self, id: u64, policy: &pb::RequestPolicy) {
        if let Some(cell) = self.policies.lock().unwrap().get(&id) {
            *cell.write().unwrap() = Arc::new(RequestPolicy::from_pb(policy));
        }
    }

    /// Denials since the last report, if any (sent every second with the byte counts).
    pub fn report(&self) -> Option<Out> {
        let taken = std::mem::take(&mut *self.denials.lock().unwrap());
        if taken.is_empty() {
            return None;
        }
        let denials = taken.into_iter().map(|((policy, reason), count)| pb::RequestDenial { policy, reason: reason.to_string(), count }).collect();
        Some(Out::Denials(pb::RequestDenials { denials }))
    }

    fn client(&self, dial: &Arc<str>, upstream: Upstream, connect_timeout: Duration) -> Client<Dial, CountedBody<Incoming>> {
        let mut clients = self.clients.lock().unwrap();
        clients.entry((dial.clone(), upstream)).or_insert_with(|| {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_timer(TokioTimer::new()).pool_idle_timeout(POOL_IDLE_TIMEOUT).pool_max_idle_per_host(POOL_IDLE_PER_HOST);
            if upstream == Upstream::Http2 {
                b.http2_only(true);
            }
            b.build(Dial { addr: dial.clone(), timeout: connect_timeout })
        }).clone()
    }

    /// Serves HTTP on an admitted connection (`io`: from the source) until
    /// it ends or the agent closes it; registered with the core like any
    /// tunnel (byte counts, tag, end).
    // One call per admitted connection, from inbound.rs's two entry points; the
    // arguments are that connection's facts, not options worth a struct.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve<IO>(self: Arc<Self>, core: Arc<Core>, id: u64, tag: String, http: pb::HttpInbound, dial: String, connect_timeout: Duration, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let counts = Counts::default();
        let io = Counted::new(io, counts.from_source.clone(), counts.to_source.clone());
        let closed = core.live(id, &counts, tag);
        let policy = Arc::new(RwLock::new(Arc::new(RequestPolicy::from_pb(&http.policy.clone().unwrap_or_default()))));
        self.policies.lock().unwrap().insert(id, policy.clone());
        let upstream = if http.protocol == "http" { Upstream::Http1 } else { Upstream::Http2 };
        let conn = Arc::new(Conn {
            dial: dial.into(), upstream, connect_timeout, policy, core: core.clone(),
            source: Peer { identity: http.source_identity.clone(), workload: http.source_workload.clone(), namespace: http.source_namespace.clone() },
            destination: Peer { identity: http.destination_identity.clone(), workload: http.destination_workload.clone(), namespace: http.destination_namespace.clone() },
            service: http.service.clone(),
        });
        let side = self.clone();
        let svc = service_fn(move |req| {
            let (side, conn) = (side.clone(), conn.clone());
            async move { Ok::<_, Infallible>(side.handle(&conn, req).await) }
        });
        // HTTP/1.1 clients may upgrade (WebSocket): the bytes after a 101 are relayed as they are.
        let served: Served<'_> = if upstream == Upstream::Http2 {
            Box::pin(self.h2_only.serve_connection(TokioIo::new(io), svc))
        } else {
            Box::pin(self.client_only.serve_connection_with_upgrades(TokioIo::new(io), svc))
        };
        let error = tokio::select! {
            r = served => r.err().map(|e| e.to_string()),
            _ = closed => Some("closed by the agent".to_string()),
        };
        self.policies.lock().unwrap().remove(&id);
        core.ended(id, &counts, error);
    }

    /// One request: authorize, then answer the denial or forward; its
    /// outcome goes to the core's observers once the answer is over.
    async fn handle(&self, conn: &Conn, mut req: Request<Incoming>) -> Response<Body> {
        let started = (SystemTime::now(), Instant::now());
        let grpc = req.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("").to_string();
        let host = authority_of(&req);
        let mut outcome = RequestOutcome {
            side: Side::Destination,
            protocol: if grpc { Protocol::Grpc } else if req.version() == Version::HTTP_2 { Protocol::Http2 } else { Protocol::Http1 },
            method: req.method().as_str().to_string(),
            authority: host.clone().unwrap_or_default(),
            path: target.clone(),
            status: 0, grpc_status: None, response_flags: String::new(),
            start: started.0, duration: Duration::ZERO, request_bytes: 0, response_bytes: 0,
            upstream: String::new(), service: conn.service.clone(), source: conn.source.clone(), destination: conn.destination.clone(),
            traceparent: req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string),
            trace: None,
            route: String::new(),
            attempts: 0,
        };
        // This request's hop of its trace (spans.rs): the child of the
        // client's span, and the parent of what the app is sent.
        let hop = conn.core.spans.hop(outcome.traceparent.as_deref());
        outcome.trace = Some(hop);
        if let Ok(v) = HeaderValue::from_str(&hop.traceparent()) {
            req.headers_mut().insert("traceparent", v);
        }
        let request_bytes = Arc::new(AtomicU64::new(0));
        let Some((path, query)) = normalize_path(&target) else {
            return conn.report(outcome, started.1, request_bytes, plain(StatusCode::BAD_REQUEST, "bad request: the target is not a path\n".into()));
        };
        let lower_host = host.map(|h| h.to_ascii_lowercase());
        let policy = conn.policy.read().unwrap().clone();
        if policy.decides() {
            let verdict = policy.evaluate(&AuthzRequest { method: req.method().as_str(), path: &path, host: lower_host.as_deref() });
            if let Verdict::Denied { policy, reason } = verdict {
                *self.denials.lock().unwrap().entry((policy.unwrap_or("").to_string(), reason)).or_default() += 1;
                return conn.report(outcome, started.1, request_bytes, denied(grpc, policy));
            }
        }
        let query = query.to_string();
        outcome.upstream = conn.dial.to_string();
        // An HTTP/1.1 Upgrade (WebSocket) goes to the app as asked; once it answers 101 both sides are relayed as bytes.
        let upgrade = (req.version() == Version::HTTP_11 && conn.upstream == Upstream::Http1 && req.headers().contains_key(UPGRADE))
            .then(|| (hyper::upgrade::on(&mut req), req.headers().get(UPGRADE).cloned()));
        let req = req.map(|b| CountedBody::new(b, request_bytes.clone(), None, None));
        let upgrade_to = upgrade.as_ref().and_then(|(_, to)| to.clone());
        match self.forward(conn, req, &path, &query, upgrade_to).await {
            Ok(mut res) => {
                if let (Some((client, _)), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, res.status()) {
                    let app = hyper::upgrade::on(&mut res);
                    tokio::spawn(async move {
                        if let (Ok(client), Ok(app)) = (client.await, app.await) {
                            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(app)).await;
                        }
                    });
                }
                conn.report(outcome, started.1, request_bytes, res.map(Either::Left))
            }
            Err(why) => {
                outcome.response_flags = "UF".into();
                conn.report(outcome, started.1, request_bytes, plain(StatusCode::SERVICE_UNAVAILABLE, format!("upstream connect error or disconnect: {why}\n")))
            }
        }
    }

    async fn forward(&self, conn: &Conn, req: Request<CountedBody<Incoming>>, path: &str, query: &str, upgrade: Option<HeaderValue>) -> Result<Response<Incoming>, String> {
        let (mut parts, body) = req.into_parts();
        let authority = authority_of_parts(&parts).unwrap_or_else(|| conn.dial.to_string());
        // The normalised path goes to the workload: the one that was authorized.
        parts.uri = Uri::builder().scheme("http").authority(authority.as_str()).path_and_query(format!("{path}{query}")).build().map_err(|e| format!("bad authority {authority:?}: {e}"))?;
        strip_hop_by_hop(&mut parts.headers);
        if let Some(to) = upgrade {
            parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, to);
        }
        parts.version = match conn.upstream {
            Upstream::Http1 => Version::HTTP_11,
            Upstream::Http2 => Version::HTTP_2,
        };
        if conn.upstream == Upstream::Http2 {
            // :authority carries it.
            parts.headers.remove(HOST);
        }
        let client = self.client(&conn.dial, conn.upstream, conn.connect_timeout);
        client.request(Request::from_parts(parts, body)).await.map_err(|e| {
            use std::error::Error;
            let mut why = e.to_string();
            if let Some(source) = e.source() {
                why = format!("{why}: {source}");
            }
            why
        })
    }
}

impl Conn {
    /// The answer as it goes to the client: counted, and reporting the
    /// request's outcome to the observers once its last byte is out (or the
    /// client went away first: flag DC).
    fn report(&self, mut outcome: RequestOutcome, started: Instant, request_bytes: Arc<AtomicU64>, res: Response<Answer>) -> Response<Body> {
        outcome.status = res.status().as_u16();
        let grpc_status = Arc::new(Mutex::new(body::grpc_status(res.headers())));
        let response_bytes = Arc::new(AtomicU64::new(0));
        let (core, slot, sent) = (self.core.clone(), grpc_status.clone(), response_bytes.clone());
        let watch = (outcome.protocol == Protocol::Grpc).then(|| grpc_status.clone());
        let done: body::Done = Box::new(move |complete| {
            outcome.duration = started.elapsed();
            outcome.request_bytes = request_bytes.load(Ordering::Relaxed);
            outcome.response_bytes = sent.load(Ordering::Relaxed);
            outcome.grpc_status = *slot.lock().unwrap();
            if !complete && outcome.response_flags.is_empty() {
                outcome.response_flags = "DC".into();
            }
            core.observers.observe(&outcome);
        });
        res.map(|b| CountedBody::new(b, response_bytes, watch, Some(done)))
    }
}

/// The request's authority: the URI's (HTTP/2 :authority, or an absolute-form target), else the Host header.
fn authority_of<B>(req: &Request<B>) -> Option<String> {
    req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
}

fn authority_of_parts(parts: &http::request::Parts) -> Option<String> {
    parts.uri.authority().map(|a| a.as_str().to_string()).or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
}

/// Headers of one hop (RFC 9110 section 7.6.1), and those the Connection header names.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = headers.get_all(CONNECTION).iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [CONNECTION, UPGRADE, HeaderName::from_static("keep-alive"), HeaderName::from_static("proxy-connection")] {
        headers.remove(n);
    }
    // TE: only "trailers" may cross (gRPC sends it).
    if headers.get(TE).is_some_and(|v| v.as_bytes() != b"trailers") {
        headers.remove(TE);
    }
}

fn plain(status: StatusCode, body: String) -> Response<Answer> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The answer to a denied request: 403 naming the deciding policy, or for
/// gRPC a trailers-only PERMISSION_DENIED (grpc-status 7) saying the same.
fn denied(grpc: bool, policy: Option<&str>) -> Response<Answer> {
    let text = match policy {
        Some(p) => format!("RBAC: access denied by policy {p}"),
        None => "RBAC: access denied: no ALLOW policy matched".to_string(),
    };
    if !grpc {
        return plain(StatusCode::FORBIDDEN, format!("{text}\n"));
    }
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("7"));
    // grpc-message is percent-encoded (gRPC over HTTP/2): a policy name has no byte that needs it but the spaces.
    if let Ok(v) = HeaderValue::from_str(&text.replace('%', "%25").replace(' ', "%20")) {
        h.insert("grpc-message", v);
    }
    r
}

/// The pooled client's connector: every connection of one client goes to
/// its workload's address, whatever the request's authority says (which is
/// forwarded as it came).
#[derive(Clone)]
pub struct Dial {
    addr: Arc<str>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, timeout) = (self.addr.clone(), self.timeout);
        Box::pin(async move {
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(&*addr)).await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr} timed out")))??;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        })
    }
}

#[cfg(test)]
mod tests {
    //! One connection served in memory (tokio's duplex) against a real
    //! upstream: authorized, forwarded with the normalised path, denied with
    //! the policy named, and each request's outcome observed once.
    use super::*;
    use crate::l7::outcome::RequestObserver;
    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    struct Seen(Mutex<Vec<RequestOutcome>>);
    impl RequestObserver for Seen {
        fn observe(&self, o: &RequestOutcome) {
            self.0.lock().unwrap().push(o.clone());
        }
    }

    fn prefix(v: &str) -> pb::StringMatch {
        pb::StringMatch { kind: pb::MatchKind::Prefix as i32, value: v.into() }
    }

    #[tokio::test]
    async fn requests_are_authorized_forwarded_and_reported() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = upstream.accept().await {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("ok {} {}", req.uri(), req.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or(""))))))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc));
            }
        });
        let (outbox, _queue) = crate::control::outbox();
        let core = Core::new(outbox, 1024);
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        core.observers.add(seen.clone());
        let deny = pb::HttpPolicy { name: "ns/no-admin".into(), operations: vec![pb::HttpOperation { paths: vec![prefix("/admin/")], ..Default::default() }] };
        let http = pb::HttpInbound {
            protocol: "http".into(),
            policy: Some(pb::RequestPolicy { deny: vec![deny], ..Default::default() }),
            source_identity: "spiffe://td/ns/a/sa/client".into(),
            destination_workload: "web".into(),
            service: "web.ns.svc.cluster.local".into(),
            ..Default::default()
        };
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        tokio::spawn(ServerSide::new().serve(core.clone(), 1, String::new(), http, addr.to_string(), Duration::from_secs(1), server_io));
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(client_io)).await.unwrap();
        tokio::spawn(conn);
        let mut ask = async |path: &str| {
            let req = Request::builder().uri(path).header(HOST, "Web.Example").body(Full::new(Bytes::new())).unwrap();
            let res = send.send_request(req).await.unwrap();
            let status = res.status().as_u16();
            (status, String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
        };
        assert_eq!(ask("/hello?x=1").await, (200, "ok /hello?x=1 Web.Example".to_string()));
        let (status, body) = ask("/admin/users").await;
        assert_eq!((status, body.as_str()), (403, "RBAC: access denied by policy ns/no-admin\n"));
        assert_eq!(ask("/public/../%61dmin/users").await.0, 403, "normalised before it is matched");
        assert_eq!(ask("/a/./b/../c").await, (200, "ok /a/c Web.Example".to_string()), "the app gets the normalised path");
        let seen = seen.0.lock().unwrap();
        let statuses: Vec<u16> = seen.iter().map(|o| o.status).collect();
        assert_eq!(statuses, vec![200, 403, 403, 200], "one outcome per request, in order");
        let first = &seen[0];
        assert_eq!((first.side, first.protocol, first.method.as_str(), first.path.as_str(), first.authority.as_str()), (Side::Destination, Protocol::Http1, "GET", "/hello?x=1", "Web.Example"));
        assert_eq!((first.service.as_str(), first.source.identity.as_str(), first.destination.workload.as_str()), ("web.ns.svc.cluster.local", "spiffe://td/ns/a/sa/client", "web"));
        assert_eq!(first.upstream, addr.to_string());
        assert_eq!(first.response_bytes, "ok /hello?x=1 Web.Example".len() as u64);
        assert_eq!(seen[1].upstream, "", "a denied request reached no upstream");
        assert_eq!(seen[1].response_flags, "");
    }

    #[tokio::test]
    async fn an_upgrade_is_relayed_as_bytes_once_the_app_answers_101() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = upstream.accept().await {
                let svc = service_fn(|mut req: Request<Incoming>| async move {
                    assert_eq!(req.headers()[UPGRADE], "echo");
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(on.await.unwrap());
                        let mut buf = [0u8; 4];
                        io.read_exact(&mut buf).await.unwrap();
                        io.write_all(&buf).await.unwrap();
                    });
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    res.headers_mut().insert(UPGRADE, HeaderValue::from_static("echo"));
                    res.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
                    Ok::<_, Infallible>(res)
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).with_upgrades());
            }
        });
        let (outbox, _queue) = crate::control::outbox();
        let core = Core::new(outbox, 1024);
        let http = pb::HttpInbound { protocol: "http".into(), policy: Some(pb::RequestPolicy::default()), ..Default::default() };
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        tokio::spawn(ServerSide::new().serve(core, 1, String::new(), http, addr.to_string(), Duration::from_secs(1), server_io));
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(client_io)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        let req = Request::builder().uri("/ws").header(HOST, "web").header(CONNECTION, "upgrade").header(UPGRADE, "echo").body(Full::new(Bytes::new())).unwrap();
        let mut res = send.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut io = TokioIo::new(hyper::upgrade::on(&mut res).await.unwrap());
        io.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn a_grpc_denial_is_a_trailers_only_permission_denied() {
        let res = denied(true, Some("ns/p"));
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "7");
        assert_eq!(res.headers()["grpc-message"], "RBAC:%20access%20denied%20by%20policy%20ns/p");
        assert!(hyper::body::Body::is_end_stream(res.body()), "no body: the status travels in the headers");
    }
}
