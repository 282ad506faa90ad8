//! A response body cut off at its request's deadline. A route's
//! `timeouts.request` covers the whole exchange, as the Gateway API and
//! Envoy's route timeout mean it: once the response headers are out, a
//! body still streaming when the deadline passes ends in an error, which
//! resets the app's stream (HTTP/2) or closes its connection (HTTP/1.1).
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Set when the deadline cut the body (the outcome's flag is then UT).
    pub expired: Arc<AtomicBool>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, at: tokio::time::Instant, expired: Arc<AtomicBool>) -> Self {
        Deadline { inner, sleep: Box::pin(tokio::time::sleep_until(at)), expired }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // What is there already is passed on: the deadline cuts only a wait.
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err("the request timeout passed while the response body was streaming".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    /// A body whose frames come from a channel.
    struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn a_body_still_streaming_at_the_deadline_fails_and_says_so() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let expired = Arc::new(AtomicBool::new(false));
        let mut body = Deadline::new(Chan(rx), tokio::time::Instant::now() + Duration::from_millis(100), expired.clone());
        tx.send(Bytes::from_static(b"early")).await.unwrap();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "early");
        assert!(!expired.load(Ordering::SeqCst));
        assert!(body.frame().await.unwrap().is_err(), "nothing more before the deadline: cut");
        assert!(expired.load(Ordering::SeqCst));

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut done = Deadline::new(Chan(rx), tokio::time::Instant::now() + Duration::from_millis(50), Arc::new(AtomicBool::new(false)));
        tx.send(Bytes::from_static(b"all")).await.unwrap();
        drop(tx);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(done.frame().await.unwrap().is_ok(), "what arrived in time is passed on even after the deadline");
        assert!(done.frame().await.is_none());
    }
}
