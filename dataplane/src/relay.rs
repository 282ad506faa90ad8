//! The byte relay of one tunnel: TCP ⇄ HTTP/2 stream, both directions in
//! one task, each half-closing on its own, with HTTP/2 flow control as the
//! back-pressure in both (a chunk is read only once the previous one was
//! taken). Counts bytes as they move, for the agent's live counters.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_CHUNK: usize = 64 * 1024;

#[derive(Default)]
pub struct Counts {
    /// From the source (the HTTP/2 stream) to the workload.
    pub from_source: Arc<AtomicU64>,
    /// From the workload back to the source.
    pub to_source: Arc<AtomicU64>,
}

async fn tcp_to_h2<R: AsyncRead + Unpin>(mut from: R, to: &mut SendStream<Bytes>, count: &AtomicU64) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        if from.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return to.send_data(Bytes::new(), true).map_err(|e| e.to_string());
        }
        let mut data = buf.split().freeze();
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

/// Relays until both directions are over; the first error ends both and is
/// returned (the caller's drops then reset the stream and close the socket).
pub async fn run(tcp: &mut TcpStream, send: &mut SendStream<Bytes>, recv: RecvStream, counts: &Counts) -> Option<String> {
    let (r, w) = tcp.split();
    let up = tcp_to_h2(r, send, &counts.to_source);
    let down = h2_to_tcp(recv, w, &counts.from_source);
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
