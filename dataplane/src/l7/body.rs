//! A body passed through as it is, counting its data bytes, reading a gRPC
//! status from its trailers, and telling once how it ended: at its end of
//! stream (true), or when it fails or is dropped before that (false).
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

pub type Done = Box<dyn FnOnce(bool) + Send + Sync>;

pub struct Counted<B: Body<Data = Bytes> + Unpin> {
    inner: B,
    pub bytes: Arc<AtomicU64>,
    /// Where a `grpc-status` trailer goes, when it is watched for.
    grpc_status: Option<Arc<Mutex<Option<u32>>>>,
    done: Option<Done>,
}

impl<B: Body<Data = Bytes> + Unpin> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>, grpc_status: Option<Arc<Mutex<Option<u32>>>>, done: Option<Done>) -> Self {
        Counted { inner, bytes, grpc_status, done }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            done(complete);
        }
    }
}

/// `grpc-status` of a header map, if any.
pub fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                } else if let (Some(t), Some(slot)) = (frame.trailers_ref(), self.grpc_status.as_ref()) {
                    if let Some(s) = grpc_status(t) {
                        *slot.lock().unwrap() = Some(s);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Some(Err(_)) => self.finish(false),
            None => self.finish(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Drop for Counted<B> {
    /// A body dropped unread counts as complete only when it had nothing to
    /// read (hyper does not poll an empty body).
    fn drop(&mut self) {
        let empty = self.inner.is_end_stream();
        self.finish(empty);
    }
}
