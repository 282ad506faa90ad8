//! Outbound on the agent's upstream listeners: accept a local workload's
//! connection, ask the agent where it goes, open a CONNECT stream on a pooled
//! HBONE connection to the destination's agent (or dial a destination outside
//! the mesh directly) and relay both ways. One readable path per connection:
//! serve() → connection() → tunnel() (attempt() per endpoint, until one
//! opens) | direct() → relay.
//!
//! The pool keeps HTTP/2 connections per (source identity and certificate,
//! destination identity, destination agent), at most MAX_STREAMS_PER_SESSION
//! streams each.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{client, Reason};
use http::{Method, Request, Response};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsConnector;

use crate::admission::{self, Admission, Pending, Refusal};
use crate::control::pb::{self, Attempt, Route as RouteIn, RouteVerdict};
use crate::control::{endpoint, Out};
use crate::core::Core;
use crate::l7::client_side::L7;
use crate::inbound::{errno_name, CONNECTION_WINDOW, MAX_FRAME, MAX_HEADER_LIST, MAX_LOCAL_ERROR_RESETS, MAX_PENDING_ACCEPT_RESETS, MAX_SEND_BUFFER, STREAM_WINDOW};
use crate::linger;
use crate::original_dst::original_dst;
use crate::socket_owner;
use crate::socks5;
use crate::tls::Tls;

/// CONNECT streams per pooled connection before another one to the same peer is dialled.
const MAX_STREAMS_PER_SESSION: usize = 100;
/// A pooled connection that carried no stream for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Endpoints one connection tries at most, whatever the agent sends. Three
/// is Envoy's and Linkerd's usual budget: with one endpoint in three down
/// (and picks spread over the others), a connection fails only when all
/// three picks are dead, while a service whose endpoints are all dead costs
/// at most three dials per connection, not a storm.
pub const MAX_ATTEMPTS: usize = 3;

/// The end of a connection that never opened (its client was reset): the
/// status the peer agent answered (0: none), the reason and the detail.
fn failed_end(id: u64, status: u32, reason: String, error: String) -> Out {
    Out::End(pb::End { id, failed: true, status, reason, error, ..Default::default() })
}

/// One pooled HBONE connection. Dropping it (with every clone of `send`)
/// lets h2 close the connection once its streams are over.
struct Pooled {
    n: u64,
    send: client::SendRequest<Bytes>,
    streams: AtomicUsize,
    retired: AtomicBool,
    idle_since: Mutex<Option<Instant>>,
}

type DialResult = Option<Result<Arc<Pooled>, String>>;
type Pool = Arc<Mutex<HashMap<String, Vec<Arc<Pooled>>>>>;

pub struct Outbound {
    core: Arc<Core>,
    /// The per-request path of connections routed `http` (l7/client_side.rs).
    pub l7: Arc<L7>,
    tls: Arc<RwLock<Option<Arc<Tls>>>>,
    routes: Mutex<HashMap<u64, oneshot::Sender<RouteIn>>>,
    peers: Mutex<HashMap<u64, oneshot::Sender<bool>>>,
    pool: Pool,
    /// One dial at a time per key; those who wait share its result.
    dialing: Mutex<HashMap<String, watch::Receiver<DialResult>>>,
}

/// A refused or failed tunnel: the status the peer agent answered (0: none) and why.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The peer agent's HBONE answer when it answered (401: policy denied), else 0.
    pub(crate) status: u16,
    pub(crate) reason: String,
    pub(crate) message: String,
}

impl Failure {
    fn new(reason: &str, message: String) -> Self {
        Failure { status: 0, reason: reason.to_string(), message }
    }
}

impl Outbound {
    pub fn new(core: Arc<Core>, tls: Arc<RwLock<Option<Arc<Tls>>>>) -> Arc<Self> {
        Arc::new(Outbound { l7: L7::new(core.clone()), core, tls, routes: Mutex::new(HashMap::new()), peers: Mutex::new(HashMap::new()), pool: Arc::new(Mutex::new(HashMap::new())), dialing: Mutex::new(HashMap::new()) })
    }

    /// Binds an outbound listener for the agent and serves it until the drain.
    /// `lid` is the agent's name for it (a later agent may rename it);
    /// `bound` is set once it listens.
    pub async fn listen(self: Arc<Self>, lid: Arc<AtomicU64>, addr: String, entry: Entry, bound_at: Arc<Mutex<Option<String>>>) {
        let Some(listener) = self.core.bind(&lid, &addr, &bound_at).await else { return };
        let bound = listener.local_addr().ok();
        // A listener on one address: every connection's local address is that
        // one, so no getsockname per connection (only a wildcard asks).
        let local = bound.filter(|a| !a.ip().is_unspecified());
        // SOCKS5 clients negotiate before they are known: capped per source
        // and in all until then (admission.rs). Upstream and capture
        // connections are a workload's own and may idle as long as it likes.
        let admission = (entry == Entry::Socks5).then(|| Admission::new(admission::PER_SOURCE, admission::pending_cap(self.core.nofile)));
        let mut draining = self.core.drain_signal();
        while let Some((tcp, remote)) = self.core.accept(&listener, &mut draining, &addr, pb::Direction::Outbound).await {
            let pending = match admission.as_ref().map(|a| a.admit(remote.ip())) {
                None => None,
                Some(Ok((pending, _))) => Some(pending),
                Some(Err(Refusal::PerSource)) => {
                    let _ = tcp.set_zero_linger();
                    self.core.outbox.send(Out::Refused(pb::Refused { direction: pb::Direction::Outbound as i32, reason: "too_many_handshakes".into(), error: format!("{} SOCKS5 negotiations from {}", admission::PER_SOURCE, remote.ip()) }));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let local = local.map_or_else(|| tcp.local_addr(), Ok);
            tokio::spawn(self.clone().connection(lid.load(Ordering::SeqCst), entry, tcp, remote, local, pending));
        }
    }

    pub fn route(&self, r: RouteIn) {
        if let Some(tx) = self.routes.lock().unwrap().remove(&r.id) {
            let _ = tx.send(r);
        }
    }

    pub fn peer_verdict(&self, pid: u64, ok: bool) {
        if let Some(tx) = self.peers.lock().unwrap().remove(&pid) {
            let _ = tx.send(ok);
        }
    }

    /// Draining: no new streams on pooled connections; each closes once its streams are over.
    pub fn drain(&self) {
        self.pool.lock().unwrap().clear();
    }

    /// Closes pooled connections that carried nothing for IDLE, and retired
    /// ones (the peer refused a stream) once their streams are over.
    pub fn sweep(&self) {
        let mut pool = self.pool.lock().unwrap();
        for list in pool.values_mut() {
            list.retain(|p| match *p.idle_since.lock().unwrap() {
                Some(since) => !p.retired.load(Ordering::SeqCst) && since.elapsed() < IDLE,
                None => true,
            });
        }
        pool.retain(|_, l| !l.is_empty());
    }

    /// One client connection: read what its entry point says of it (SOCKS5
    /// request, original destination), let the agent check its source and
    /// route it, then open the tunnel (or dial directly) and relay. The
    /// client's bytes wait in the socket until the tunnel is open.
    async fn connection(self: Arc<Self>, lid: u64, entry: Entry, mut tcp: TcpStream, remote: SocketAddr, local: std::io::Result<SocketAddr>, pending: Option<Pending>) {
        let mut out = pb::Out { lid, remote: Some(endpoint(remote)), local: local.as_ref().ok().map(|a| endpoint(*a)), ..Default::default() };
        match entry {
            Entry::Upstream => {}
            Entry::Socks5 => match negotiate(&mut tcp, pending).await {
                Ok(req) => {
                    out.user = req.user;
                    out.dst = Some(pb::Endpoint { address: req.host, port: u32::from(req.port) });
                }
                Err(Some(refusal)) => {
                    self.core.outbox.send(Out::Refused(pb::Refused { direction: pb::Direction::Outbound as i32, reason: "socks_protocol".into(), error: refusal.message }));
                    return;
                }
                Err(None) => {
                    self.core.outbox.send(Out::Refused(pb::Refused { direction: pb::Direction::Outbound as i32, reason: "handshake_evicted".into(), error: "too many SOCKS5 negotiations at once".into() }));
                    return;
                }
            },
            Entry::Capture => match local.as_ref().map_err(errno_name).and_then(|l| original_dst(&tcp, *l).map_err(|e| errno_name(&e))) {
                Ok(dst) => {
                    // REDIRECT kept the client's socket connected to the original destination.
                    out.uid = socket_owner::owner_uid(remote, dst);
                    out.dst = Some(endpoint(dst));
                }
                Err(e) => out.dst_error = e,
            },
        }
        // Who owns the client's socket, when the client is on this host (the
        // agent's source proof for a workload with a uid).
        if let (Entry::Upstream | Entry::Socks5, Ok(l)) = (entry, local.as_ref()) {
            out.uid = socket_owner::owner_uid(remote, *l);
        }
        let id = self.core.id();
        out.id = id;
        let (tx, rx) = oneshot::channel();
        self.routes.lock().unwrap().insert(id, tx);
        let front = Front { tcp, socks: entry == Entry::Socks5 };
        let Some(route) = self.core.ask(id, "out", Out::Out(out), rx).await else {
            // No agent answered in time (away, restarting): refused, and counted for the next agent.
            self.routes.lock().unwrap().remove(&id);
            return front.refuse(socks5::reply::GENERAL_FAILURE).await;
        };
        match route.verdict() {
            RouteVerdict::Tunnel => self.tunnel(id, front, route).await,
            RouteVerdict::Direct => self.direct(id, front, route).await,
            RouteVerdict::Http => {
                let Some(tcp) = front.opened().await else {
                    return self.core.outbox.send(failed_end(id, 0, "client_gone".into(), "client went away before its connection opened".into()));
                };
                self.l7.clone().serve(self.clone(), id, route, tcp).await;
            }
            // The agent counted and logged it. A reply beyond a byte is no SOCKS5 reply: general failure.
            RouteVerdict::Refuse => front.refuse(u8::try_from(route.reply).unwrap_or(socks5::reply::GENERAL_FAILURE)).await,
        }
    }

    async fn direct(&self, id: u64, front: Front, route: RouteIn) {
        let dialled = tokio::time::timeout(Duration::from_millis(route.timeout_ms.max(1)), TcpStream::connect(route.dial.as_str())).await;
        let upstream = match dialled {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => return self.failed(id, front, Failure::new("unreachable", errno_name(&e))).await,
            Err(_) => return self.failed(id, front, Failure::new("unreachable", "ETIMEDOUT".into())).await,
        };
        let _ = upstream.set_nodelay(true);
        let Some(tcp) = front.opened().await else {
            return self.core.outbox.send(failed_end(id, 0, "client_gone".into(), "client went away before the connection opened".into()));
        };
        self.core.pipe(id, route.tag, tcp, upstream).await;
    }

    /// Opens the tunnel to the first of the route's attempts that answers
    /// 200, then relays. An attempt that fails for a reason another endpoint
    /// may not share (see `retryable`) passes the connection to the next one;
    /// every attempt happens before the client's first byte is read (its
    /// bytes wait in its socket), so a retry repeats nothing. Each attempt is
    /// reported (`attempt`) so the agent can count endpoint health.
    async fn tunnel(&self, id: u64, front: Front, route: RouteIn) {
        // One deadline for the whole opening (the client waits no longer than
        // with one attempt); each attempt gets its share of what is left, so
        // an endpoint that swallows SYNs cannot use up the others' time, and
        // one that refuses at once leaves its share to the next.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(route.timeout_ms.max(1));
        let attempts = &route.attempts[..route.attempts.len().min(MAX_ATTEMPTS)];
        if attempts.is_empty() {
            return self.failed(id, front, Failure::new("bad_request", "a tunnel route without an endpoint".into())).await;
        }
        for (n, attempt) in attempts.iter().enumerate() {
            let now = tokio::time::Instant::now();
            let share = deadline.saturating_duration_since(now) / (attempts.len() - n) as u32;
            let outcome = self.attempt(&route.source, attempt, now + share).await;
            let status = outcome.as_ref().map_or_else(|f| f.status, |_| 200);
            let (reason, error) = outcome.as_ref().err().map_or((String::new(), String::new()), |f| (f.reason.clone(), f.message.clone()));
            self.core.outbox.send(Out::Attempt(pb::AttemptResult { id, n: n as u32, endpoint: attempt.authority.clone(), hbone: attempt.hbone.clone(), ok: outcome.is_ok(), status: u32::from(status), reason, error }));
            match outcome {
                Ok((release, response, send)) => return self.relay(id, route.tag.clone(), front, release, response, send).await,
                Err(f) if retryable(&f) && n + 1 < attempts.len() => continue,
                Err(f) => return self.failed(id, front, f).await,
            }
        }
    }

    /// One attempt: the CONNECT on a pooled connection to the attempt's agent,
    /// and its answer, by `deadline`. Ok only with a 200.
    pub(crate) async fn attempt(&self, source: &str, a: &Attempt, deadline: tokio::time::Instant) -> Result<(Release, Response<h2::RecvStream>, h2::SendStream<Bytes>), Failure> {
        let late = || Failure::new("timeout", format!("no answer from {} for {} in time", a.hbone, a.authority));
        let (pooled, response, mut send) = tokio::time::timeout_at(deadline, self.open(source, a)).await.map_err(|_| late())??;
        // Gives the stream slot back however this attempt ends; an open tunnel keeps it until its relay is over.
        let release = Release(pooled);
        let response = match tokio::time::timeout_at(deadline, response).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if e.reason() == Some(Reason::REFUSED_STREAM) {
                    // A draining peer refuses new streams: open no more on this connection.
                    release.0.retired.store(true, Ordering::SeqCst);
                }
                return Err(Failure::new("stream_error", format!("tunnel to {} failed: {e}", a.hbone)));
            }
            Err(_) => {
                send.send_reset(Reason::CANCEL);
                return Err(late());
            }
        };
        let status = response.status().as_u16();
        if status != 200 {
            let reason = response.headers().get("x-ambit-reason").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let message = format!("peer agent {} answered {status} for {}{}", a.hbone, a.authority, if reason.is_empty() { String::new() } else { format!(" ({reason})") });
            return Err(Failure { status, reason: if reason.is_empty() { format!("status_{status}") } else { reason }, message });
        }
        Ok((release, response, send))
    }

    /// The tunnel is open: the client hears so, and bytes flow until either side ends.
    async fn relay(&self, id: u64, tag: String, front: Front, _release: Release, response: Response<h2::RecvStream>, mut send: h2::SendStream<Bytes>) {
        let Some(tcp) = front.opened().await else {
            send.send_reset(Reason::CANCEL);
            return self.core.outbox.send(failed_end(id, 0, "client_gone".into(), "client went away before the tunnel opened".into()));
        };
        self.core.tunnel(id, tag, tcp, send, response.into_body(), true).await;
    }

    /// The tunnel did not open: the client hears it (a SOCKS5 reply, or a
    /// reset) and the agent is told why.
    async fn failed(&self, id: u64, front: Front, f: Failure) {
        front.refuse(socks_reply_for(&f)).await;
        self.core.outbox.send(failed_end(id, u32::from(f.status), f.reason, f.message));
    }

    /// Sends the CONNECT on a pooled connection with a free stream slot (the
    /// slot is taken; Release gives it back). A connection that turns out to
    /// be closing (the peer's GOAWAY) is retired and another one used: no
    /// stream was sent on it, so nothing is repeated.
    async fn open(&self, source: &str, route: &Attempt) -> Result<(Arc<Pooled>, client::ResponseFuture, h2::SendStream<Bytes>), Failure> {
        let tls = self.tls.read().unwrap().clone().ok_or_else(|| Failure::new("no_source_certificate", "no TLS configuration yet".into()))?;
        let client = tls.clients.get(source).ok_or_else(|| Failure::new("no_source_certificate", format!("no valid certificate for {source} yet")))?;
        // Different certificates of one identity do not share connections (the
        // chain's fingerprint tells them apart): after a renewal new
        // connections present the new one while older ones finish on theirs.
        let key = format!("{}|{:x}|{}|{}", source, client.fingerprint, route.expect, route.hbone);
        let request = || {
            let mut r = Request::builder().method(Method::CONNECT).uri(route.authority.as_str());
            for h in &route.headers {
                r = r.header(h.name.as_str(), h.value.as_str());
            }
            r.body(()).map_err(|e| Failure::new("bad_request", format!("CONNECT {}: {e}", route.authority)))
        };
        for _ in 0..3 {
            let request = request()?;
            let pooled = self.session(&key, route, client.config.clone()).await?;
            let ready = pooled.send.clone().ready().await;
            match ready.and_then(|mut s| s.send_request(request, false)) {
                Ok((response, send)) => return Ok((pooled, response, send)),
                Err(_) => {
                    pooled.retired.store(true, Ordering::SeqCst);
                    drop(Release(pooled));
                }
            }
        }
        Err(Failure::new("stream_failed", format!("cannot open a stream to {}: its connections keep closing", route.hbone)))
    }

    /// A pooled connection with a stream slot reserved for the caller.
    async fn session(&self, key: &str, route: &Attempt, config: Arc<rustls::ClientConfig>) -> Result<Arc<Pooled>, Failure> {
        loop {
            if let Some(p) = self.pick(key) {
                return Ok(p);
            }
            let waiting = self.dialing.lock().unwrap().get(key).cloned();
            if let Some(mut rx) = waiting {
                // Its failure is ours too: no retry storm against a dead peer.
                while rx.borrow().is_none() {
                    if rx.changed().await.is_err() {
                        // The dialler gave up (its connection's deadline passed).
                        return Err(Failure::new("connect_failed", format!("cannot open HBONE to {}: the dial this connection waited for was abandoned", route.hbone)));
                    }
                }
                let result = rx.borrow().clone();
                if let Some(Err(message)) = result {
                    return Err(Failure::new("connect_failed", message));
                }
                continue;
            }
            let (tx, rx) = watch::channel(None);
            self.dialing.lock().unwrap().insert(key.to_string(), rx);
            // Removes the entry however the dial ends, even when the caller's
            // deadline drops this future half-way.
            let _dialing = Dialing(&self.dialing, key);
            let dialled = self.dial(key, route, config.clone()).await;
            let _ = tx.send(Some(dialled.clone()));
            // The new connection comes with the dialler's slot already taken.
            return dialled.map_err(|m| Failure::new("connect_failed", m));
        }
    }

    fn pick(&self, key: &str) -> Option<Arc<Pooled>> {
        let pool = self.pool.lock().unwrap();
        let p = pool.get(key)?.iter().find(|p| !p.retired.load(Ordering::SeqCst) && p.streams.load(Ordering::SeqCst) < MAX_STREAMS_PER_SESSION)?.clone();
        p.streams.fetch_add(1, Ordering::SeqCst);
        *p.idle_since.lock().unwrap() = None;
        Some(p)
    }

    /// Dials the destination's agent: TCP, TLS with the source's certificate,
    /// the agent's check that the server is exactly the destination, HTTP/2.
    /// The connection is returned with one stream slot taken, the caller's.
    async fn dial(&self, key: &str, route: &Attempt, config: Arc<rustls::ClientConfig>) -> Result<Arc<Pooled>, String> {
        let what = format!("cannot open HBONE to {} for {}", route.hbone, route.expect);
        let dialled = self.handshake(route, config).await;
        self.core.outbox.send(Out::Dial(pb::Dial { ok: dialled.is_ok() }));
        let (send, conn, back) = dialled.map_err(|e| format!("{what}: {e}"))?;
        // Draining: used by the tunnel that dialled it, not pooled, so h2 closes it once that stream is over.
        let draining = self.core.draining();
        let pooled = Arc::new(Pooled { n: self.core.id(), send, streams: AtomicUsize::new(1), retired: AtomicBool::new(draining), idle_since: Mutex::new(None) });
        if !draining {
            self.pool.lock().unwrap().entry(key.to_string()).or_default().push(pooled.clone());
        }
        self.core.session_opened();
        let (core, pool, n, key) = (self.core.clone(), self.pool.clone(), pooled.n, key.to_string());
        tokio::spawn(async move {
            // Ends when the peer closes, on an error, or once the pool has let
            // go of it and its streams are over (h2 then sends GOAWAY).
            let _ = conn.await;
            forget(&pool, &key, n);
            linger::close(back).await;
            core.outbox.send(Out::DialEnd(pb::DialEnd {}));
            core.session_closed();
        });
        Ok(pooled)
    }

    async fn handshake(&self, route: &Attempt, config: Arc<rustls::ClientConfig>) -> Result<(client::SendRequest<Bytes>, client::Connection<tokio::io::BufWriter<tokio_rustls::client::TlsStream<linger::Lingering>>, Bytes>, oneshot::Receiver<TcpStream>), String> {
        let tcp = TcpStream::connect(route.hbone.as_str()).await.map_err(|e| errno_name(&e))?;
        let _ = tcp.set_nodelay(true);
        let (tcp, back) = linger::wrap(tcp);
        let name = ServerName::try_from(route.sni.clone()).map_err(|e| format!("server name {}: {e}", route.sni))?;
        let tls = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(b"h2".as_slice()) {
            return Err("peer did not negotiate h2".into());
        }
        let chain: Vec<Vec<u8>> = conn.peer_certificates().unwrap_or_default().iter().map(|c| c.to_vec()).collect();
        let pid = self.core.id();
        let (tx, rx) = oneshot::channel();
        self.peers.lock().unwrap().insert(pid, tx);
        let question = Out::Peer(pb::PeerQuestion { pid, hbone: route.hbone.clone(), expect: route.expect.clone(), chain });
        match self.core.ask(pid, "peer", question, rx).await {
            Some(true) => {}
            Some(false) => return Err(format!("peer is not {}", route.expect)),
            None => {
                self.peers.lock().unwrap().remove(&pid);
                return Err(format!("no agent answered whether the peer is {}", route.expect));
            }
        }
        let (send, conn) = h2_client().handshake::<_, Bytes>(crate::tls::record_writer(tls)).await.map_err(|e| e.to_string())?;
        Ok((send, conn, back))
    }
}

/// The HTTP/2 client of every pooled HBONE connection, its limits on.
pub fn h2_client() -> client::Builder {
    let mut b = client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .enable_push(false)
        // The agent opens every stream; the peer may open none (no push).
        .max_concurrent_streams(0)
        // The same limits as the server's (inbound.rs says why each): a
        // peer agent that resets or provokes resets without end, or answers
        // with huge headers, loses the connection.
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER);
    b
}

/// Removes a closed connection from the pool, from its driver task.
fn forget(pool: &Pool, key: &str, n: u64) {
    let mut pool = pool.lock().unwrap();
    if let Some(list) = pool.get_mut(key) {
        list.retain(|p| p.n != n);
        if list.is_empty() {
            pool.remove(key);
        }
    }
}

/// A dial in progress for a pool key, until dropped.
struct Dialing<'a>(&'a Mutex<HashMap<String, watch::Receiver<DialResult>>>, &'a str);

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(self.1);
    }
}

/// Gives a stream slot back to its connection when the tunnel (or the upstream HTTP connection it carries) is over.
pub(crate) struct Release(Arc<Pooled>);

impl Drop for Release {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap() = Some(Instant::now());
        }
    }
}

/// Resets the client's connection (RST, not FIN): the application sees a
/// failed connection.
fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}

/// How long a SOCKS5 client has to say what it wants.
const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SOCKS5 negotiation, unless the connection is evicted first (the
/// listener's cap of unauthenticated connections, admission.rs); the
/// connection stops counting against the cap once it is over.
/// Err(None): evicted.
async fn negotiate(tcp: &mut TcpStream, pending: Option<Pending>) -> Result<socks5::Request, Option<socks5::Refusal>> {
    let Some(mut pending) = pending else { return socks5::accept(tcp, SOCKS_HANDSHAKE_TIMEOUT).await.map_err(Some) };
    tokio::select! {
        r = socks5::accept(tcp, SOCKS_HANDSHAKE_TIMEOUT) => r.map_err(Some),
        _ = &mut pending.evicted => Err(None),
    }
}

/// The outbound entry point a listener serves (control.rs `listen`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry {
    /// An upstream listener: the agent knows source and destination from the listener.
    Upstream,
    /// SOCKS5 (:15080): the negotiation names the source workload and the destination.
    Socks5,
    /// Transparent capture (:15001): the original destination from SO_ORIGINAL_DST.
    Capture,
}

/// The client's side of an outbound connection, and how it is answered.
struct Front {
    tcp: TcpStream,
    /// A SOCKS5 client waits for a reply before it sends; others are reset on failure.
    socks: bool,
}

impl Front {
    /// Refuses the client: a SOCKS5 reply `code` then a clean close, or a reset.
    async fn refuse(mut self, code: u8) {
        if self.socks {
            let code = if code == 0 { socks5::reply::GENERAL_FAILURE } else { code };
            let _ = self.tcp.write_all(&socks5::reply_bytes(code)).await;
            let _ = self.tcp.shutdown().await;
        } else {
            reset(self.tcp);
        }
    }

    /// The far end is open: a SOCKS5 client hears success. None: the client is gone.
    async fn opened(mut self) -> Option<TcpStream> {
        if self.socks && self.tcp.write_all(&socks5::reply_bytes(socks5::reply::SUCCEEDED)).await.is_err() {
            reset(self.tcp);
            return None;
        }
        Some(self.tcp)
    }
}

/// Whether another endpoint may succeed where this attempt failed: the
/// peer agent or the workload could not be reached (no connection, no
/// answer in time, the peer's 503 workload unreachable, a stream the peer
/// refused or reset). Never a policy denial (401), an authority the peer
/// does not serve (400) or anything else it answered, nor what would fail
/// the same way for every endpoint (no source certificate, a bad request).
fn retryable(f: &Failure) -> bool {
    match f.status {
        503 => true,
        0 => matches!(f.reason.as_str(), "connect_failed" | "timeout" | "stream_error" | "stream_failed"),
        _ => false,
    }
}

/// The SOCKS5 reply for a tunnel or dial that failed: policy (401) is "not
/// allowed", a destination that is no local workload there (400) "host
/// unreachable", a workload that refused (503) or a refused dial "connection
/// refused", no answer in time "TTL expired", anything else "host unreachable".
fn socks_reply_for(f: &Failure) -> u8 {
    match f.status {
        401 => socks5::reply::NOT_ALLOWED,
        400 => socks5::reply::HOST_UNREACHABLE,
        503 => socks5::reply::CONNECTION_REFUSED,
        _ if f.message == "ECONNREFUSED" => socks5::reply::CONNECTION_REFUSED,
        _ if f.reason == "timeout" => socks5::reply::TTL_EXPIRED,
        _ => socks5::reply::HOST_UNREACHABLE,
    }
}

#[cfg(test)]
mod tests {
    //! The client's HTTP/2 limits, against the server's own builder (or a
    //! plain h2 server, to break them), in memory.
    use super::*;
    use crate::inbound::{h2_server, MAX_HEADER_LIST, MAX_SEND_BUFFER};
    use http::Response;

    /// A client connection to `server`, with its driver spawned.
    async fn client_to(server: h2::server::Builder, answer_header: usize) -> client::SendRequest<Bytes> {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let mut conn = server.handshake::<_, Bytes>(server_io).await.unwrap();
            let mut held = Vec::new();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let mut answer = Response::builder().status(200);
                if answer_header > 0 {
                    answer = answer.header("x-ambit-reason", "r".repeat(answer_header));
                }
                // Kept, unread: the client's capacity is the send buffer's, not the window's.
                held.push((req, respond.send_response(answer.body(()).unwrap(), false)));
            }
        });
        let (send, conn) = h2_client().handshake::<_, Bytes>(client_io).await.unwrap();
        tokio::spawn(conn);
        send
    }

    fn connect() -> Request<()> {
        Request::builder().method(Method::CONNECT).uri("10.0.0.1:80").body(()).unwrap()
    }

    #[tokio::test]
    async fn a_stream_buffers_at_most_the_send_buffer() {
        let send = client_to(h2_server(), 0).await;
        let (response, mut stream) = send.ready().await.unwrap().send_request(connect(), false).unwrap();
        response.await.unwrap();
        // The peer's windows (4 MiB the stream, 32 MiB the connection) would
        // allow more: h2 grants what the send buffer holds.
        stream.reserve_capacity(2 * 1024 * 1024);
        let mut granted = 0;
        while granted < MAX_SEND_BUFFER {
            let more = tokio::time::timeout(Duration::from_secs(5), std::future::poll_fn(|cx| stream.poll_capacity(cx))).await.expect("capacity grows").unwrap().unwrap();
            granted = granted.max(more);
        }
        assert_eq!(granted, MAX_SEND_BUFFER);
        stream.send_data(Bytes::from(vec![0u8; granted]), false).unwrap();
        assert_eq!(stream.capacity(), 0, "no more while the buffer is full");
    }

    #[tokio::test]
    async fn an_oversized_answer_head_fails_the_stream() {
        let ok = client_to(h2::server::Builder::new(), 8 * 1024).await;
        let (response, _stream) = ok.ready().await.unwrap().send_request(connect(), false).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        let big = client_to(h2::server::Builder::new(), 2 * MAX_HEADER_LIST as usize).await;
        let (response, _stream) = big.ready().await.unwrap().send_request(connect(), false).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), response).await.expect("an answer or an error");
        assert!(answer.is_err(), "an answer head over the limit was taken: {:?}", answer.map(|r| r.status()));
    }
}
