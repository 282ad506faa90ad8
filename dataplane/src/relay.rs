//! The byte relay of one tunnel: TCP ⇄ HTTP/2 stream, both directions in
//! one task, each half-closing on its own, with HTTP/2 flow control as the
//! back-pressure in both (a chunk is read only once the previous one was
//! taken). Counts bytes as they move, for the agent's live counters.
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;

const READ_CHUNK: usize = 64 * 1024;

#[derive(Default)]
pub struct Counts {
    /// From the source (the HTTP/2 stream) to the workload.
    pub from_source: Arc<AtomicU64>,
    /// From the workload back to the source.
    pub to_source: Arc<AtomicU64>,
}

/// Waits until the socket has bytes (or its end), then reads them into a
/// buffer taken for this read only: a tunnel waiting for its peer holds no
/// buffer. (Each tunnel kept a 64 KiB one before: in the soak test, 5,000
/// open tunnels took each agent with its data plane from about 150 MiB to
/// 400 MiB, against 230 MiB now.) An empty chunk is the end of the stream.
async fn read_chunk(from: &ReadHalf<'_>) -> std::io::Result<BytesMut> {
    loop {
        from.readable().await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match from.try_read_buf(&mut buf) {
            Ok(_) => return Ok(buf),
            // Readiness can be spurious: wait again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn tcp_to_h2(from: ReadHalf<'_>, to: &mut SendStream<Bytes>, count: &AtomicU64) -> Result<(), String> {
    loop {
        let chunk = read_chunk(&from).await.map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return to.send_data(Bytes::new(), true).map_err(|e| e.to_string());
        }
        let mut data = chunk.freeze();
        count.fetch_add(data.len() as u64, Ordering::Relaxed);
        while !data.is_empty() {
            to.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| to.poll_capacity(cx)).await.ok_or("stream closed")?.map_err(|e| e.to_string())?;
            // Capacity can come back as 0 (what is still buffered is deducted): wait for more.
            if granted == 0 {
                continue;
            }
            let n = granted.min(data.len());
            to.send_data(data.split_to(n), false).map_err(|e| e.to_string())?;
        }
    }
}

async fn h2_to_tcp<W: AsyncWrite + Unpin>(mut from: RecvStream, mut to: W, count: &AtomicU64) -> Result<(), String> {
    while let Some(chunk) = from.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        to.write_all(&chunk).await.map_err(|e| e.to_string())?;
        count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let _ = from.flow_control().release_capacity(chunk.len());
    }
    to.shutdown().await.map_err(|e| e.to_string())
}

impl Counts {
    /// Which count each direction of the relay adds to, seen from the socket
    /// end: (socket → stream, stream → socket). Inbound, the socket is the
    /// workload's (it sends to the source); outbound, the source's own.
    pub fn directions(&self, socket_is_source: bool) -> (&AtomicU64, &AtomicU64) {
        if socket_is_source {
            (&self.from_source, &self.to_source)
        } else {
            (&self.to_source, &self.from_source)
        }
    }
}

/// Relays until both directions are over; the first error ends both and is
/// returned (the caller's drops then reset the stream and close the socket).
/// `up` counts socket → stream bytes, `down` stream → socket.
pub async fn run(tcp: &mut TcpStream, send: &mut SendStream<Bytes>, recv: RecvStream, (up_count, down_count): (&AtomicU64, &AtomicU64)) -> Option<String> {
    let (r, w) = tcp.split();
    both(tcp_to_h2(r, send, up_count), h2_to_tcp(recv, w, down_count)).await
}

/// Runs both directions until both are over, each finishing on its own
/// (half-close); the first error ends both and is returned.
async fn both(up: impl Future<Output = Result<(), String>>, down: impl Future<Output = Result<(), String>>) -> Option<String> {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            res = &mut up, if !up_done => {
                if let Err(e) = res { return Some(e); }
                up_done = true;
            }
            res = &mut down, if !down_done => {
                if let Err(e) = res { return Some(e); }
                down_done = true;
            }
        }
    }
    None
}

async fn tcp_to_tcp<W: AsyncWrite + Unpin>(from: ReadHalf<'_>, mut to: W, count: &AtomicU64) -> Result<(), String> {
    loop {
        let chunk = read_chunk(&from).await.map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return to.shutdown().await.map_err(|e| e.to_string());
        }
        to.write_all(&chunk).await.map_err(|e| e.to_string())?;
        count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// Relays between two sockets (a destination outside the mesh) until both
/// directions are over, each half-closing on its own; the first error ends
/// both. `a_to_b` and `b_to_a` count what moved.
pub async fn tcp_pair(a: &mut TcpStream, b: &mut TcpStream, (a_to_b, b_to_a): (&AtomicU64, &AtomicU64)) -> Option<String> {
    let (ar, aw) = a.split();
    let (br, bw) = b.split();
    both(tcp_to_tcp(ar, bw, a_to_b), tcp_to_tcp(br, aw, b_to_a)).await
}
