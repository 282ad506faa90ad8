//! One TLS record per small HTTP/2 frame. h2 hands a DATA frame to its
//! transport as two pieces, the 9-byte frame head and the payload, and
//! tokio-rustls 0.23 (no vectored write) turns every write into its own TLS
//! record and its own `sendmsg`. For a 1 KiB echo that is two records and
//! two segments per hop: the sender pays a second syscall, and the receiver
//! wakes for the head, finds no payload yet and sleeps again until it comes
//! (seen with tcpdump: a 31-byte segment before every 1,046-byte one).
//! This wrapper offers h2 a vectored write and, when the pieces together fit
//! in one record, copies them into one write. Larger writes (bulk frames)
//! pass through as before: there the copy would cost more than the record.
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// TLS's largest record plaintext: what fits in one record is sent as one.
pub const ONE_RECORD: usize = 16 * 1024;

pub struct Coalesce<T> {
    inner: T,
    scratch: Vec<u8>,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Coalesce { inner, scratch: Vec::new() }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    /// Writes the pieces as one when they fit in one record; otherwise the
    /// first piece alone, as h2 would without a vectored transport. Either
    /// way the count returned is what the inner stream took, so a partial
    /// write is resumed by h2 from the right byte.
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut pieces = bufs.iter().filter(|b| !b.is_empty());
        let Some(first) = pieces.next() else {
            return Poll::Ready(Ok(0));
        };
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == first.len() || total > ONE_RECORD {
            return Pin::new(&mut this.inner).poll_write(cx, first);
        }
        this.scratch.clear();
        for b in bufs {
            this.scratch.extend_from_slice(b);
        }
        Pin::new(&mut this.inner).poll_write(cx, &this.scratch)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records each write the wrapper makes, taking at most `limit` bytes.
    struct Writes {
        calls: Vec<Vec<u8>>,
        limit: usize,
    }

    impl AsyncWrite for Writes {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.limit);
            this.calls.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn a_small_frame_is_one_write() {
        let mut w = Coalesce::new(Writes { calls: vec![], limit: usize::MAX });
        let (head, payload) = ([1u8; 9], [2u8; 1024]);
        let n = block_on(w.write_vectored(&[IoSlice::new(&head), IoSlice::new(&payload)])).unwrap();
        assert_eq!(n, 1033);
        assert_eq!(w.inner.calls.len(), 1);
        assert_eq!(&w.inner.calls[0][..9], &head);
        assert_eq!(&w.inner.calls[0][9..], &payload);
    }

    #[test]
    fn a_frame_larger_than_a_record_passes_its_first_piece() {
        let mut w = Coalesce::new(Writes { calls: vec![], limit: usize::MAX });
        let (head, payload) = ([1u8; 9], vec![2u8; ONE_RECORD]);
        let n = block_on(w.write_vectored(&[IoSlice::new(&head), IoSlice::new(&payload)])).unwrap();
        assert_eq!(n, 9);
        assert_eq!(w.inner.calls, vec![head.to_vec()]);
    }

    #[test]
    fn a_partial_write_reports_what_was_taken() {
        let mut w = Coalesce::new(Writes { calls: vec![], limit: 100 });
        let (head, payload) = ([1u8; 9], [2u8; 1024]);
        let n = block_on(w.write_vectored(&[IoSlice::new(&[]), IoSlice::new(&head), IoSlice::new(&payload)])).unwrap();
        assert_eq!(n, 100);
        assert_eq!(w.inner.calls[0][..9], head);
        assert_eq!(w.inner.calls[0][9..], payload[..91]);
    }
}
