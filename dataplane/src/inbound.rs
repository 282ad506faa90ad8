//! Inbound HBONE on the agent's :15008: accept TLS, let the agent verify the
//! peer, accept HTTP/2 CONNECT streams, ask the agent for each one's verdict,
//! dial the local workload and relay both ways. One readable path per
//! connection: session() → stream() → relay::run().
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::{server, Reason, RecvStream};
use http::{Request, Response};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, Admission, Pending, Refusal};
use crate::control::{endpoint, pb, Out};
use crate::core::{until_true, Core};
use crate::hbone_head::{status_response, stream_message};
use crate::l7::server_side::ServerSide;
use crate::l7::stream_io::StreamIo;
use crate::linger::{self, Lingering};
use crate::original_dst::original_dst;
use crate::tls::Tls;

/// The agents' HBONE_SETTINGS (agent/proxy/hbone-server.ts).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
pub const MAX_FRAME: u32 = 1024 * 1024;
/// Concurrent CONNECT streams a peer may open on one connection: each is a
/// tunnel, and the Node.js path admits as many (hbone-server.ts).
const MAX_STREAMS: u32 = 1000;
/// Streams a peer opened and reset before we accepted them, at most, before
/// h2 ends the connection with ENHANCE_YOUR_CALM: the HTTP/2 rapid-reset
/// attack (CVE-2023-44487) costs us work per stream and the peer none. h2's
/// default, the value hyper ships.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams we reset because the peer broke the protocol on them, at most,
/// before h2 ends the connection: the "MadeYouReset" variant
/// (CVE-2025-8671), where the peer provokes the resets. h2's default; a
/// well-behaved agent provokes none.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// One header block's decoded size, at most: a CONNECT's head is an
/// authority, a `forwarded`, `traceparent` and a W3C `baggage` (itself
/// capped at 8 KiB), and an answer a status and a reason; h2's default
/// (16 MiB) would let a peer make us buffer that much per block.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Bytes buffered per stream waiting for the socket, at most (h2's default):
/// six of the relay's 64 KiB reads, enough to keep a bulk tunnel's socket
/// busy, while 1,000 streams cannot hold more than 400 MiB per connection.
pub const MAX_SEND_BUFFER: usize = 400 * 1024;
/// A slow or silent client must not hold a socket (the Node.js server's handshakeTimeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Decision {
    pub status: u16,
    pub reason: String,
    pub dial: String,
    pub timeout_ms: u64,
    pub tag: String,
    /// Set for an HTTP port: served as HTTP, each request authorized (l7/server_side.rs).
    pub http: Option<pb::HttpInbound>,
}

pub struct Inbound {
    core: Arc<Core>,
    tls: Arc<RwLock<Option<Arc<Tls>>>>,
    sessions: Mutex<HashMap<u64, oneshot::Sender<bool>>>,
    decisions: Mutex<HashMap<u64, oneshot::Sender<Decision>>>,
    /// Connections on :15008 that have not finished TLS and the agent's peer check.
    admission: Arc<Admission>,
    /// Connections to HTTP ports.
    pub http: Arc<ServerSide>,
}

impl Inbound {
    pub fn new(core: Arc<Core>, tls: Arc<RwLock<Option<Arc<Tls>>>>) -> Arc<Self> {
        let admission = Admission::new(admission::PER_SOURCE, admission::pending_cap(core.nofile));
        Arc::new(Inbound { core, tls, sessions: Mutex::new(HashMap::new()), decisions: Mutex::new(HashMap::new()), admission, http: ServerSide::new() })
    }

    pub fn session_verdict(&self, sid: u64, ok: bool) {
        if let Some(tx) = self.sessions.lock().unwrap().remove(&sid) {
            let _ = tx.send(ok);
        }
    }

    pub fn decide(&self, id: u64, d: Decision) {
        if let Some(tx) = self.decisions.lock().unwrap().remove(&id) {
            let _ = tx.send(d);
        }
    }

    /// Accepts connections until the agent drains this data plane.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut draining = self.core.drain_signal();
        while let Some((tcp, remote)) = self.core.accept(&listener, &mut draining, "the HBONE port", pb::Direction::Inbound).await {
            let Some(tls) = self.tls.read().unwrap().as_ref().map(|t| t.server.clone()) else {
                // No identities yet: the agent has not sent its first config.
                self.core.outbox.send(refused("tls"));
                continue;
            };
            let pending = match self.admission.admit(remote.ip()) {
                Ok((pending, _)) => pending,
                Err(Refusal::PerSource) => {
                    // Closed at once, with a reset: no TIME_WAIT kept for a flood.
                    let _ = tcp.set_zero_linger();
                    self.core.outbox.send(refused("too_many_handshakes"));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(self.clone().session(tcp, remote.ip().to_string(), tls, pending));
        }
    }

    async fn session(self: Arc<Self>, tcp: TcpStream, remote: String, config: Arc<ServerConfig>, mut pending: Pending) {
        let (tcp, socket_back) = linger::wrap(tcp);
        // Only the TLS handshake can be evicted: a connection past it holds a
        // certificate that chains to the bundle, and the agent's answer is
        // bounded (core.rs); it keeps its place in the count until then.
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp));
        let tls = tokio::select! {
            h = handshake => match h {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    self.core.outbox.send(refused(handshake_failure(&e)));
                    return;
                }
                Err(_) => {
                    self.core.outbox.send(refused("tls"));
                    return;
                }
            },
            _ = &mut pending.evicted => {
                self.core.outbox.send(refused("handshake_evicted"));
                return;
            }
        };
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(b"h2".as_slice()) {
            self.core.outbox.send(refused("not_h2"));
            return;
        }
        let chain: Vec<Vec<u8>> = conn.peer_certificates().unwrap_or_default().iter().map(|c| c.to_vec()).collect();
        let sni = conn.server_name().unwrap_or("").to_string();
        let sid = self.core.id();
        let (tx, rx) = oneshot::channel();
        self.sessions.lock().unwrap().insert(sid, tx);
        let question = Out::Session(pb::SessionQuestion { sid, remote, sni, chain });
        match self.core.ask(sid, "session", question, rx).await {
            Some(true) => {}
            Some(false) => return, // the agent rejected the peer and counted it
            None => {
                self.sessions.lock().unwrap().remove(&sid);
                return;
            }
        }
        // Authenticated: no longer counted against its source or the total.
        drop(pending);
        self.core.session_opened();
        self.clone().streams(sid, tls).await;
        // Not over until the peer has read everything: a drain that ended
        // here would let the agent exit and the kernel reset the socket.
        linger::close(socket_back).await;
        self.core.outbox.send(Out::SessionEnd(pb::SessionEnd { sid }));
        self.core.session_closed();
    }

    async fn streams(self: Arc<Self>, sid: u64, tls: tokio_rustls::server::TlsStream<Lingering>) {
        let tls = crate::tls::record_writer(tls);
        let Ok(mut conn) = h2_server().handshake::<_, Bytes>(tls).await else {
            return;
        };
        let mut draining = self.core.drain_signal();
        // Draining: waiting for h2 to have written every stream's last frame.
        let mut flushing = false;
        let mut shut = false;
        loop {
            let next = tokio::select! {
                n = next_event(&mut conn, flushing) => n,
                _ = until_true(&mut draining), if !flushing && !shut => {
                    flushing = true;
                    continue;
                }
            };
            match next {
                // Draining, and every stream's last frame is written: now GOAWAY.
                // Not sooner: h2 writes a pending GOAWAY (and the PING whose
                // answer ends the connection) ahead of streams' queued DATA,
                // so the answer would not prove the peer read the tails. (A
                // Node.js client answers a GOAWAY with its own; h2 0.3.13
                // failed every open stream on it, 0.4 only streams it opened.)
                // Until then new streams are refused (REFUSED_STREAM), which also
                // makes the client's pool stop using this connection.
                Event::Flushed => {
                    conn.graceful_shutdown();
                    flushing = false;
                    shut = true;
                }
                Event::Stream(Some(Ok((req, respond)))) => {
                    tokio::spawn(self.clone().stream(sid, req, respond));
                }
                Event::Stream(Some(Err(_)) | None) => return,
            }
        }
    }

    async fn stream(self: Arc<Self>, sid: u64, req: Request<RecvStream>, mut respond: server::SendResponse<Bytes>) {
        if self.core.draining() {
            self.core.outbox.send(refused("draining"));
            respond.send_reset(Reason::REFUSED_STREAM);
            return;
        }
        let id = self.core.id();
        let (tx, rx) = oneshot::channel();
        self.decisions.lock().unwrap().insert(id, tx);
        let Some(d) = self.core.ask(id, "stream", Out::Stream(stream_message(id, sid, &req)), rx).await else {
            self.decisions.lock().unwrap().remove(&id);
            let _ = respond.send_response(status_response(503, "agent_unavailable"), true);
            return;
        };
        if d.status != 200 {
            let _ = respond.send_response(status_response(d.status, &d.reason), true);
            return;
        }
        if let Some(http) = d.http {
            // Requests go to the workload over pooled connections, each dialled when needed.
            let Ok(send) = respond.send_response(Response::builder().status(200).body(()).unwrap(), false) else {
                self.core.outbox.send(Out::End(pb::End { id, error: "client went away before the tunnel opened".into(), flags: "DC".into(), ..Default::default() }));
                return;
            };
            let io = StreamIo::new(send, req.into_body());
            return self.http.clone().serve(self.core.clone(), id, d.tag, http, d.dial, Duration::from_millis(d.timeout_ms.max(1)), io).await;
        }
        let dialled = tokio::time::timeout(Duration::from_millis(d.timeout_ms.max(1)), TcpStream::connect(d.dial.as_str())).await;
        let tcp = match dialled {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return self.unreachable(id, respond, errno_name(&e)),
            Err(_) => return self.unreachable(id, respond, "ETIMEDOUT".into()),
        };
        let _ = tcp.set_nodelay(true);
        let send = match respond.send_response(Response::builder().status(200).body(()).unwrap(), false) {
            Ok(s) => s,
            Err(_) => {
                self.core.outbox.send(Out::End(pb::End { id, error: "client went away before the tunnel opened".into(), flags: "DC".into(), ..Default::default() }));
                return;
            }
        };
        self.core.tunnel(id, d.tag, tcp, send, req.into_body(), false).await;
    }

    /// Binds the inbound plaintext capture listener (:15006) and serves it
    /// until the drain: iptables redirected a connection for a local
    /// workload here; the agent decides from its original destination
    /// (strict mode refuses, permissive asks policy), then it is relayed.
    pub async fn listen_plaintext(self: Arc<Self>, lid: Arc<AtomicU64>, addr: String, bound_at: Arc<Mutex<Option<String>>>) {
        let Some(listener) = self.core.bind(&lid, &addr, &bound_at).await else { return };
        let mut draining = self.core.drain_signal();
        while let Some((tcp, remote)) = self.core.accept(&listener, &mut draining, &addr, pb::Direction::Inbound).await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(self.clone().plaintext(lid.load(Ordering::SeqCst), tcp, remote));
        }
    }

    /// One redirected plaintext connection: its original destination → the
    /// agent's decision → dial the workload → relay → report its end.
    async fn plaintext(self: Arc<Self>, lid: u64, tcp: TcpStream, remote: SocketAddr) {
        // Bound to all addresses: the address iptables picked is this socket's own.
        let local = tcp.local_addr();
        let id = self.core.id();
        let mut plain = pb::Plain { id, lid, remote: Some(endpoint(remote)), local: local.as_ref().ok().map(|a| endpoint(*a)), ..Default::default() };
        match local.as_ref().map_err(errno_name).and_then(|l| original_dst(&tcp, *l).map_err(|e| errno_name(&e))) {
            Ok(dst) => plain.dst = Some(endpoint(dst)),
            Err(e) => plain.dst_error = e,
        }
        let (tx, rx) = oneshot::channel();
        self.decisions.lock().unwrap().insert(id, tx);
        let Some(d) = self.core.ask(id, "plain", Out::Plain(plain), rx).await else {
            self.decisions.lock().unwrap().remove(&id);
            return reset(tcp);
        };
        if d.status != 200 {
            return reset(tcp);
        }
        if let Some(http) = d.http {
            return self.http.clone().serve(self.core.clone(), id, d.tag, http, d.dial, Duration::from_millis(d.timeout_ms.max(1)), tcp).await;
        }
        let dialled = tokio::time::timeout(Duration::from_millis(d.timeout_ms.max(1)), TcpStream::connect(d.dial.as_str())).await;
        let upstream = match dialled {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                reset(tcp);
                return self.core.outbox.send(unreachable_end(id, format!("workload_unreachable: {}", errno_name(&e))));
            }
            Err(_) => {
                reset(tcp);
                return self.core.outbox.send(unreachable_end(id, "workload_unreachable: ETIMEDOUT".into()));
            }
        };
        let _ = upstream.set_nodelay(true);
        self.core.pipe(id, d.tag, tcp, upstream).await;
    }

    fn unreachable(&self, id: u64, mut respond: server::SendResponse<Bytes>, code: String) {
        let reason = format!("workload_unreachable: {code}");
        let _ = respond.send_response(status_response(503, &reason), true);
        self.core.outbox.send(unreachable_end(id, reason));
    }
}

/// A connection refused before the agent was asked, and why.
fn refused(reason: &str) -> Out {
    Out::Refused(pb::Refused { direction: pb::Direction::Inbound as i32, reason: reason.to_string(), error: String::new() })
}

/// The end of an admitted connection whose workload could not be dialled.
fn unreachable_end(id: u64, error: String) -> Out {
    Out::End(pb::End { id, status: 503, error, flags: "UF".into(), ..Default::default() })
}

/// The HTTP/2 server of every inbound HBONE connection, its limits on.
pub fn h2_server() -> server::Builder {
    let mut b = server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        // A stream we reset is forgotten once its RST_STREAM is written
        // (late frames for it get STREAM_CLOSED), so that a drain can
        // tell from the streams h2 still holds when everything is written.
        .max_concurrent_reset_streams(0);
    b
}

/// Resets a client's connection (RST, not FIN): the application sees a refused connection.
fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}

/// The refusal reason of a failed handshake, as the Node.js path counts it:
/// a client certificate that is missing or does not chain to the bundle is
/// `peer_certificate`; a client offering no h2 is `not_h2`; anything else `tls`.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::Error::*;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(NoCertificatesPresented | InvalidCertificate(_) | UnsupportedNameType) => "peer_certificate",
        Some(NoApplicationProtocol) => "not_h2",
        _ => "tls",
    }
}

/// What `poll_accept` gives: the next stream, an error, or the connection's end.
type Accepted = Option<Result<(Request<RecvStream>, server::SendResponse<Bytes>), h2::Error>>;

// A stream comes with its request: the size difference is one value on the
// stack, moved once per stream, which boxing would turn into an allocation.
#[allow(clippy::large_enum_variant)]
enum Event {
    Stream(Accepted),
    Flushed,
}

/// The connection's next stream; or, when flushing, `Flushed` as soon as h2
/// holds no stream any more: each one closed, its last frame written out
/// (released streams leave h2's store only once their queue is empty).
/// Checked after every poll of the connection, which is what writes frames.
fn next_event<'a, T>(conn: &'a mut server::Connection<T, Bytes>, flushing: bool) -> impl std::future::Future<Output = Event> + 'a
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(n) = conn.poll_accept(cx) {
            return Poll::Ready(Event::Stream(n));
        }
        if flushing && conn.num_wired_streams() == 0 {
            return Poll::Ready(Event::Flushed);
        }
        Poll::Pending
    })
}

/// The Node.js name of a connect error, so access logs read the same on both data paths.
pub fn errno_name(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "ECONNREFUSED".into(),
        ConnectionReset => "ECONNRESET".into(),
        TimedOut => "ETIMEDOUT".into(),
        AddrNotAvailable => "EADDRNOTAVAIL".into(),
        PermissionDenied => "EACCES".into(),
        _ => match e.raw_os_error() {
            Some(113) => "EHOSTUNREACH".into(),
            Some(101) => "ENETUNREACH".into(),
            // SO_ORIGINAL_DST of a connection no rule redirected (or with no conntrack).
            Some(2) => "ENOENT".into(),
            Some(92) => "ENOPROTOOPT".into(),
            _ => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    //! The server's HTTP/2 limits, against a peer that breaks them: in
    //! memory (tokio's duplex), the same builder the listener uses.
    use super::*;
    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;

    /// Drives a server connection without accepting anything: resets a peer
    /// makes stay pending in the accept queue. Its end (error or not).
    async fn serve_unaccepted(io: tokio::io::DuplexStream) -> Result<(), h2::Error> {
        let mut conn = h2_server().handshake::<_, Bytes>(io).await?;
        std::future::poll_fn(|cx| conn.poll_closed(cx)).await
    }

    #[tokio::test]
    async fn rapid_reset_ends_the_connection() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(serve_unaccepted(server_io));
        let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        // Open and reset streams as fast as the attack does; the server
        // never accepts them. Bounded: a server without the limit stays up.
        for _ in 0..(MAX_PENDING_ACCEPT_RESETS * 5) {
            let Ok(ready) = client.clone().ready().await else { break };
            client = ready;
            let request = Request::builder().method("GET").uri("http://ambit.test/").body(()).unwrap();
            let Ok((_, mut send)) = client.send_request(request, false) else { break };
            send.send_reset(Reason::CANCEL);
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server ended the connection").unwrap();
        assert_eq!(ended.expect_err("an error, not a clean close").reason(), Some(Reason::ENHANCE_YOUR_CALM));
    }

    /// One raw HTTP/2 frame.
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.put_uint(payload.len() as u64, 3);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(stream);
        out.put_slice(payload);
    }

    #[tokio::test]
    async fn provoked_resets_end_the_connection() {
        // "MadeYouReset": each stream is valid until the peer's
        // WINDOW_UPDATE overflows its window, which the server answers with
        // a reset of its own (FLOW_CONTROL_ERROR) for that stream only.
        let (mut client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(serve_unaccepted(server_io));
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
        for i in 0..(MAX_LOCAL_ERROR_RESETS as u32 + 100) {
            let id = 2 * i + 1;
            // HEADERS, END_HEADERS: :method GET, :scheme http, :path / (HPACK static table).
            frame(&mut out, 0x1, 0x4, id, &[0x82, 0x86, 0x84]);
            frame(&mut out, 0x8, 0, id, &0x7fff_ffffu32.to_be_bytes()); // WINDOW_UPDATE past 2^31-1
        }
        // The server may end the connection before it has read all of it.
        let writer = tokio::spawn(async move {
            let _ = client_io.write_all(&out).await;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client_io, &mut sink).await;
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server ended the connection").unwrap();
        assert_eq!(ended.expect_err("an error, not a clean close").reason(), Some(Reason::ENHANCE_YOUR_CALM));
        writer.abort();
    }

    #[tokio::test]
    async fn an_oversized_header_list_is_refused() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let accepted = tokio::spawn(async move {
            let mut conn = h2_server().handshake::<_, Bytes>(server_io).await.unwrap();
            let mut n = 0;
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                n += 1;
                let _ = respond.send_response(Response::builder().status(200).body(()).unwrap(), true);
            }
            n
        });
        let (client, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let ask = |baggage: usize| {
            let client = client.clone();
            async move {
                let mut client = client.ready().await.unwrap();
                let request = Request::builder().method("GET").uri("http://ambit.test/").header("baggage", "k=".to_string() + &"v".repeat(baggage)).body(()).unwrap();
                let (response, _) = client.send_request(request, true).unwrap();
                response.await.map(|r| r.status().as_u16())
            }
        };
        // W3C baggage at its 8 KiB limit passes; twice the limit does not.
        assert_eq!(ask(8 * 1024).await.unwrap(), 200);
        let refused = ask(2 * MAX_HEADER_LIST as usize).await;
        assert!(!matches!(refused, Ok(200)), "an oversized header list reached the server: {refused:?}");
        drop(client);
        assert_eq!(accepted.await.unwrap(), 1, "only the request within the limit was accepted");
    }
}
