//! The "rust-h2" path of bench/dataplane.ts: the tunnel transport of the
//! agents (HTTP/2 CONNECT streams over one pooled mutual-TLS 1.3 connection,
//! the same windows and frame size as HBONE_SETTINGS) in tokio + h2 + rustls,
//! the stack Istio's ztunnel is built on. Like bench/dataplane-nodeh2.ts it
//! has no identities, policy or telemetry: it measures what a native data path
//! costs on this machine, to set against node:http2 (node-h2) and the agents.
//!
//!   ambit-bench-native-h2 server LISTEN UPSTREAM CERT KEY CA
//!   ambit-bench-native-h2 client LISTEN SERVER CERT KEY CA SERVER_NAME
//!
//! One thread per process (tokio current_thread), like a Node.js process and
//! the peers (nginx with one worker, stunnel).
use std::{fs, io, sync::Arc};

use bytes::{Bytes, BytesMut};
use h2::{client, server, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use rustls::server::AllowAnyAuthenticatedClient;
use rustls::{Certificate, ClientConfig, PrivateKey, RootCertStore, ServerConfig, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The agents' HBONE_SETTINGS (agent/proxy/hbone-server.ts).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;
const MAX_STREAMS: u32 = 1000;
const READ_CHUNK: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn certs(path: &str) -> Vec<Certificate> {
    let mut r = io::BufReader::new(fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}")));
    rustls_pemfile::certs(&mut r).expect("PEM certificates").into_iter().map(Certificate).collect()
}

fn key(path: &str) -> PrivateKey {
    let mut r = io::BufReader::new(fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}")));
    loop {
        match rustls_pemfile::read_one(&mut r).expect("PEM key") {
            Some(rustls_pemfile::Item::PKCS8Key(k)) | Some(rustls_pemfile::Item::ECKey(k)) | Some(rustls_pemfile::Item::RSAKey(k)) => return PrivateKey(k),
            Some(_) => continue,
            None => panic!("no private key in {path}"),
        }
    }
}

fn roots(path: &str) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for c in certs(path) {
        store.add(&c).expect("CA certificate");
    }
    store
}

/// Copies the TCP side into the stream, honouring HTTP/2 flow control: a
/// chunk is sent as the peer's window allows. TCP end of file ends the stream.
async fn tcp_to_h2<R: AsyncRead + Unpin>(mut from: R, mut to: SendStream<Bytes>) -> Result<(), BoxError> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        if from.read_buf(&mut buf).await? == 0 {
            to.send_data(Bytes::new(), true)?;
            return Ok(());
        }
        let mut data = buf.split().freeze();
        while !data.is_empty() {
            to.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| to.poll_capacity(cx)).await.ok_or("stream closed")??;
            // Capacity can come back as 0 (what is still buffered is deducted): wait for more.
            if granted == 0 {
                continue;
            }
            let n = granted.min(data.len());
            to.send_data(data.split_to(n), false)?;
        }
    }
}

/// Copies the stream to the TCP side; its window is given back as bytes are
/// written (back-pressure). END_STREAM half-closes the TCP side.
async fn h2_to_tcp<W: AsyncWrite + Unpin>(mut from: RecvStream, mut to: W) -> Result<(), BoxError> {
    while let Some(chunk) = from.data().await {
        let chunk = chunk?;
        to.write_all(&chunk).await?;
        let _ = from.flow_control().release_capacity(chunk.len());
    }
    to.shutdown().await?;
    Ok(())
}

/// Both directions of one tunnel in one task, each finishing on its own
/// (half-close). An error on either side ends both: returning drops the
/// SendStream and RecvStream (h2 then resets the stream, RST_STREAM) and both
/// TCP halves (the socket is closed), so no stream is left waiting for a side
/// that is gone.
async fn relay(tcp: TcpStream, send: SendStream<Bytes>, recv: RecvStream) {
    let (r, w) = tcp.into_split();
    let up = tcp_to_h2(r, send);
    let down = h2_to_tcp(recv, w);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            res = &mut up, if !up_done => {
                if res.is_err() { return; }
                up_done = true;
            }
            res = &mut down, if !down_done => {
                if res.is_err() { return; }
                down_done = true;
            }
        }
    }
}

/// The next connection; a failed accept (a peer that already reset, EMFILE)
/// ends that attempt, not the process, after a pause so it cannot spin.
async fn accept(listener: &TcpListener) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((tcp, _)) => Some(tcp),
        Err(_) => {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            None
        }
    }
}

async fn run_server(listen: String, upstream: String, cert: String, key_path: String, ca: String) -> Result<(), BoxError> {
    let verifier = AllowAnyAuthenticatedClient::new(roots(&ca));
    let config = ServerConfig::builder()
        .with_safe_default_cipher_suites()
        .with_safe_default_kx_groups()
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&cert), key(&key_path))?;
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(&listen).await?;
    let upstream = Arc::new(upstream);
    loop {
        let Some(tcp) = accept(&listener).await else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let Ok(mut conn) = server::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .max_concurrent_streams(MAX_STREAMS)
                .handshake::<_, Bytes>(tls)
                .await
            else {
                return;
            };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if req.method() != Method::CONNECT {
                        let _ = respond.send_response(Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).body(()).unwrap(), true);
                        return;
                    }
                    let tcp = match TcpStream::connect(upstream.as_str()).await {
                        Ok(t) => t,
                        Err(_) => {
                            let _ = respond.send_response(Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(()).unwrap(), true);
                            return;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let Ok(send) = respond.send_response(Response::builder().status(StatusCode::OK).body(()).unwrap(), false) else { return };
                    relay(tcp, send, req.into_body()).await;
                });
            }
        });
    }
}

/// One pooled HTTP/2 connection to the server side, dialled on first use and
/// again once it has failed.
struct Pool {
    connector: TlsConnector,
    server: String,
    name: ServerName,
    current: Mutex<Option<client::SendRequest<Bytes>>>,
}

impl Pool {
    async fn sender(&self) -> Result<client::SendRequest<Bytes>, BoxError> {
        let mut current = self.current.lock().await;
        if let Some(s) = current.as_ref() {
            if let Ok(ready) = s.clone().ready().await {
                return Ok(ready);
            }
        }
        let tcp = TcpStream::connect(&self.server).await?;
        tcp.set_nodelay(true)?;
        let tls = self.connector.connect(self.name.clone(), tcp).await?;
        let (send, conn) = client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Bytes>(tls)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *current = Some(send.clone());
        Ok(send.ready().await?)
    }
}

async fn tunnel(pool: Arc<Pool>, tcp: TcpStream) -> Result<(), BoxError> {
    let mut sender = pool.sender().await?;
    let req = Request::builder().method(Method::CONNECT).uri("upstream:0").body(())?;
    let (response, send) = sender.send_request(req, false)?;
    let response = response.await?;
    if response.status() != StatusCode::OK {
        return Err(format!("CONNECT answered {}", response.status()).into());
    }
    relay(tcp, send, response.into_body()).await;
    Ok(())
}

async fn run_client(listen: String, server_at: String, cert: String, key_path: String, ca: String, server_name: String) -> Result<(), BoxError> {
    let mut config = ClientConfig::builder()
        .with_safe_default_cipher_suites()
        .with_safe_default_kx_groups()
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&ca))
        .with_single_cert(certs(&cert), key(&key_path))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let pool = Arc::new(Pool {
        connector: TlsConnector::from(Arc::new(config)),
        server: server_at,
        name: ServerName::try_from(server_name.as_str())?,
        current: Mutex::new(None),
    });
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let Some(tcp) = accept(&listener).await else { continue };
        let _ = tcp.set_nodelay(true);
        let pool = pool.clone();
        tokio::spawn(async move {
            // A failed tunnel drops the client's socket: it is closed (FIN,
            // where the agents send a reset; the bench counts either as a failure).
            let _ = tunnel(pool, tcp).await;
        });
    }
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // SIGTERM ends the process at once (the default action): nothing to flush.
    match args.as_slice() {
        [role, listen, upstream, cert, key, ca] if role == "server" => rt.block_on(run_server(listen.clone(), upstream.clone(), cert.clone(), key.clone(), ca.clone())),
        [role, listen, server, cert, key, ca, name] if role == "client" => rt.block_on(run_client(listen.clone(), server.clone(), cert.clone(), key.clone(), ca.clone(), name.clone())),
        _ => {
            eprintln!("usage: ambit-bench-native-h2 server LISTEN UPSTREAM CERT KEY CA | client LISTEN SERVER CERT KEY CA SERVER_NAME");
            std::process::exit(2);
        }
    }
}
