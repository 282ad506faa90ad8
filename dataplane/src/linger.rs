//! Lingering close for HBONE connections. Closing a socket that still has
//! unread input makes the kernel send RST and throw away whatever it has not
//! delivered yet, which can be the tail of the last tunnel: a peer keeps
//! sending WINDOW_UPDATEs, PING acks or its own GOAWAY while it reads what we
//! wrote. So once h2 is done with a connection (it has sent close_notify and
//! shut down its write side), the socket is kept and read until the peer
//! closes its side, for at most LINGER, as web servers do (nginx's
//! lingering_close).
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How long a closed connection is read for its peer's last frames.
const LINGER: Duration = Duration::from_secs(5);

/// The connection's socket, handed back through `back` when TLS and h2 drop it.
pub struct Lingering {
    tcp: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

/// Wraps a socket; the receiver gets it back once whatever owns the wrapper drops it.
pub fn wrap(tcp: TcpStream) -> (Lingering, oneshot::Receiver<TcpStream>) {
    let (back, rx) = oneshot::channel();
    (Lingering { tcp: Some(tcp), back: Some(back) }, rx)
}

/// Shuts the write side (if h2 has not), then reads and discards until the
/// peer closes, errs or LINGER passes; the socket closes when this returns.
pub async fn close(rx: oneshot::Receiver<TcpStream>) {
    let Ok(mut tcp) = rx.await else { return };
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

impl Lingering {
    fn tcp(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.tcp.as_mut().expect("socket present until drop"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let (Some(tcp), Some(back)) = (self.tcp.take(), self.back.take()) {
            let _ = back.send(tcp);
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.tcp().poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.tcp().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().map(|t| t.is_write_vectored()).unwrap_or(false)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_shutdown(cx)
    }
}
