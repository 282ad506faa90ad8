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
//! The HTTP limits below hold for whatever a peer sends (docs/l7.md, "Bad
//! input"): hyper answers malformed HTTP/1.1 with 400 and a head over
//! MAX_HEAD_BYTES with 431 and closes that connection; h2 ends an HTTP/2
//! connection that floods resets (rapid reset, provoked resets) with GOAWAY
//! ENHANCE_YOUR_CALM, refuses streams beyond MAX_STREAMS, and resets a
//! header block over MAX_HEADER_LIST. Each connection is its own task; one
//! ending never touches another.
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

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
use super::counted::Counted;

/// Concurrent requests a client may have on one HTTP/2 connection: more are
/// refused (REFUSED_STREAM) until some finish. Envoy's default is larger
/// (2^31), but each stream here holds an upstream request; 256 is what a
/// gRPC client multiplexes at most by default (grpc-go: 100, grpc-js: no cap
/// but one connection per channel).
pub const MAX_STREAMS: u32 = 256;
/// One request head's decoded header list (HTTP/2), at most: Envoy's default
/// max_request_headers_kb is 60 KiB. Beyond it the stream is refused.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// An HTTP/1.1 request head (request line and headers), at most: beyond it
/// the answer is 431. hyper's buffer limit, the same bound as HTTP/2's.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers in one HTTP/1.1 request, at most (hyper's default; Envoy's is 100 too): beyond it, 431.
pub const MAX_HEADERS: usize = 100;
/// How long an HTTP/1.1 client has to send a whole request head once it
/// started one (or, on an idle keep-alive connection, the next one): a
/// slowloris holds no connection longer (hyper's default is 30 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a client opened and reset before they were served, at most,
/// before the connection ends with GOAWAY ENHANCE_YOUR_CALM: the rapid
/// reset attack (CVE-2023-44487). h2's default.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams we reset because the client broke the protocol on them, at most,
/// before the connection ends (the "MadeYouReset" variant, CVE-2025-8671). h2's default.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Bytes buffered per stream toward a slow client, at most (h2's default).
const MAX_SEND_BUF: usize = 400 * 1024;
/// Idle pooled connections kept per workload port.
const POOL_IDLE_PER_HOST: usize = 32;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Body = Either<Incoming, Full<Bytes>>;

/// What the appProtocol says of the workload's side: HTTP/1.1 for `http`
/// (whatever the client spoke), HTTP/2 for `http2` and `grpc`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Upstream {
    Http1,
    Http2,
}

/// One admitted HTTP connection: where its requests go, and its request policy (replaced on a policy change).
struct Conn {
    dial: Arc<str>,
    upstream: Upstream,
    connect_timeout: Duration,
    policy: Arc<RwLock<Arc<RequestPolicy>>>,
}

/// The HTTP side of the inbound half: servers' limits, the pooled clients
/// to local workloads, request policies of live connections, and denials
/// counted since the last report.
pub struct ServerSide {
    client_only: auto::Builder<TokioExecutor>,
    h2_only: auto::Builder<TokioExecutor>,
    clients: Mutex<HashMap<(Arc<str>, Upstream), Client<Dial, Incoming>>>,
    policies: Mutex<HashMap<u64, Arc<RwLock<Arc<RequestPolicy>>>>>,
    denials: Mutex<HashMap<(String, &'static str), u64>>,
}

fn server(h2_only: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .max_send_buf_size(MAX_SEND_BUF);
    if h2_only {
        b = b.http2_only();
    }
    b
}

impl ServerSide {
    pub fn new() -> Arc<Self> {
        Arc::new(ServerSide {
            client_only: server(false),
            h2_only: server(true),
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

    fn client(&self, dial: &Arc<str>, upstream: Upstream, connect_timeout: Duration) -> Client<Dial, Incoming> {
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
    pub async fn serve<IO>(self: Arc<Self>, core: &Core, id: u64, tag: String, http: &pb::HttpInbound, dial: String, connect_timeout: Duration, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let counts = Counts::default();
        let io = Counted::new(io, counts.from_source.clone(), counts.to_source.clone());
        let closed = core.live(id, &counts, tag);
        let policy = Arc::new(RwLock::new(Arc::new(RequestPolicy::from_pb(&http.policy.clone().unwrap_or_default()))));
        self.policies.lock().unwrap().insert(id, policy.clone());
        let upstream = if http.protocol == "http" { Upstream::Http1 } else { Upstream::Http2 };
        let conn = Arc::new(Conn { dial: dial.into(), upstream, connect_timeout, policy });
        let side = self.clone();
        let svc = service_fn(move |req| {
            let (side, conn) = (side.clone(), conn.clone());
            async move { Ok::<_, Infallible>(side.handle(&conn, req).await) }
        });
        let builder = if upstream == Upstream::Http2 { &self.h2_only } else { &self.client_only };
        let error = tokio::select! {
            r = builder.serve_connection(TokioIo::new(io), svc) => r.err().map(|e| e.to_string()),
            _ = closed => Some("closed by the agent".to_string()),
        };
        self.policies.lock().unwrap().remove(&id);
        core.ended(id, &counts, error);
    }

    /// One request: authorize, then answer the denial or forward.
    async fn handle(&self, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
        let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
        let Some((path, query)) = normalize_path(target) else {
            return plain(StatusCode::BAD_REQUEST, "bad request: the target is not a path\n".into());
        };
        let host = authority_of(&req).map(|h| h.to_ascii_lowercase());
        let policy = conn.policy.read().unwrap().clone();
        if policy.decides() {
            let verdict = policy.evaluate(&AuthzRequest { method: req.method().as_str(), path: &path, host: host.as_deref() });
            if let Verdict::Denied { policy, reason } = verdict {
                *self.denials.lock().unwrap().entry((policy.unwrap_or("").to_string(), reason)).or_default() += 1;
                return denied(&req, policy);
            }
        }
        let query = query.to_string();
        match self.forward(conn, req, &path, &query).await {
            Ok(res) => res.map(Either::Left),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("upstream connect error or disconnect: {why}\n")),
        }
    }

    async fn forward(&self, conn: &Conn, req: Request<Incoming>, path: &str, query: &str) -> Result<Response<Incoming>, String> {
        let (mut parts, body) = req.into_parts();
        let authority = authority_of_parts(&parts).unwrap_or_else(|| conn.dial.to_string());
        // The normalised path goes to the workload: the one that was authorized.
        parts.uri = Uri::builder().scheme("http").authority(authority.as_str()).path_and_query(format!("{path}{query}")).build().map_err(|e| format!("bad authority {authority:?}: {e}"))?;
        strip_hop_by_hop(&mut parts.headers);
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

fn plain(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The answer to a denied request: 403 naming the deciding policy, or for
/// gRPC a trailers-only PERMISSION_DENIED (grpc-status 7) saying the same.
fn denied<B>(req: &Request<B>, policy: Option<&str>) -> Response<Body> {
    let text = match policy {
        Some(p) => format!("RBAC: access denied by policy {p}"),
        None => "RBAC: access denied: no ALLOW policy matched".to_string(),
    };
    let grpc = req.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
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
