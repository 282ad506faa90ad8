//! A request's body on its way upstream: buffered, so that it can be sent
//! again (a retry) or copied (a mirror), or streamed once. A body is
//! buffered only when its rule retries or mirrors, and only up to the
//! agent's max_buffered_body_bytes: a longer body, or one whose next part
//! does not come within STREAMING_GRACE (a client streaming as it goes, such
//! as a gRPC bidirectional call), goes on as a stream of what was read and
//! the rest, sent once.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// How long a body of unknown length may pause between parts and still be
/// buffered. A unary call's body follows its headers at once; a client that
/// waits for the answer before it sends more is streaming.
pub const STREAMING_GRACE: Duration = Duration::from_millis(100);

/// A whole body read into memory, which can be sent any number of times.
#[derive(Clone, Default)]
pub struct Buffered {
    pub data: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Buffered {
    pub fn body(&self) -> RequestBody {
        RequestBody::Buffered { data: Some(self.data.clone()).filter(|d| !d.is_empty()), trailers: self.trailers.clone() }
    }
}

pub enum RequestBody {
    Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
    Stream { prefix: Option<Bytes>, rest: Incoming },
}

impl RequestBody {
    /// The app's body passed on as it comes.
    pub fn stream(rest: Incoming) -> Self {
        RequestBody::Stream { prefix: None, rest }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Buffered { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            RequestBody::Stream { prefix, rest } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Buffered { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            RequestBody::Stream { prefix, rest } => {
                let n = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let h = rest.size_hint();
                let mut s = SizeHint::new();
                s.set_lower(h.lower() + n);
                if let Some(u) = h.upper() {
                    s.set_upper(u + n);
                }
                s
            }
        }
    }
}

/// What reading a body for buffering gave.
pub enum Read {
    Buffered(Buffered),
    /// Too long, or streaming: what was read and the rest, to send once.
    Stream(RequestBody),
}

/// Reads `body` whole if it is at most `max` bytes and keeps coming (see
/// STREAMING_GRACE; a body of known length is waited for). Err: the app's
/// body failed (its connection broke).
pub async fn read(mut body: Incoming, max: u64, grace: Duration) -> Result<Read, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Read::Buffered(Buffered::default()));
    }
    let hint = body.size_hint();
    if hint.lower() > max {
        return Ok(Read::Stream(RequestBody::stream(body)));
    }
    let known = hint.upper().is_some();
    let mut buf = BytesMut::new();
    let mut trailers = None;
    loop {
        let next = if known {
            body.frame().await
        } else {
            // frame() takes nothing until a frame is there: dropping it on expiry loses nothing.
            match tokio::time::timeout(grace, body.frame()).await {
                Ok(next) => next,
                Err(_) => return Ok(Read::Stream(RequestBody::Stream { prefix: Some(buf.freeze()).filter(|b| !b.is_empty()), rest: body })),
            }
        };
        match next {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    if buf.len() as u64 > max {
                        return Ok(Read::Stream(RequestBody::Stream { prefix: Some(buf.freeze()), rest: body }));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                        break;
                    }
                }
            },
        }
    }
    Ok(Read::Buffered(Buffered { data: buf.freeze(), trailers }))
}
