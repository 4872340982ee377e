//! The bodies that cross between the server and the application: the
//! request's [`Body`], whichever protocol carried it, bounded in how long it
//! may pause; and the response's, which counts its request in flight until
//! the last byte is handed to the connection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{sleep, Sleep};

use crate::connection::InFlight;
use crate::http2::RequestBody;

/// A request's body, as the application receives it.
///
/// HTTP/1 bodies come from hyper, HTTP/2 bodies from h2 (the server speaks
/// HTTP/2 with h2 itself, so that a drain chooses its GOAWAY frames); both
/// arrive as this one type. A body that pauses longer than
/// [`Builder::body_timeout`](crate::Builder::body_timeout) between two
/// chunks ends in an error for which [`BodyError::is_timeout`] is true.
///
/// It implements [`http_body::Body`], so axum's extractors and
/// `http_body_util::BodyExt` read it as any other body.
pub struct Body {
    inner: Inner,
    pause: Duration,
    /// Armed while the application waits for a chunk.
    waiting: Option<Pin<Box<Sleep>>>,
}

enum Inner {
    Http1(hyper::body::Incoming),
    Http2(RequestBody),
}

impl Body {
    pub(crate) fn http1(body: hyper::body::Incoming, pause: Duration) -> Self {
        Body {
            inner: Inner::Http1(body),
            pause,
            waiting: None,
        }
    }

    pub(crate) fn http2(body: RequestBody, pause: Duration) -> Self {
        Body {
            inner: Inner::Http2(body),
            pause,
            waiting: None,
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.inner {
            Inner::Http1(_) => "HTTP/1",
            Inner::Http2(_) => "HTTP/2",
        };
        f.debug_struct("Body").field("protocol", &protocol).finish()
    }
}

/// Why a request body could not be read to its end.
#[derive(Debug)]
pub struct BodyError {
    kind: BodyErrorKind,
}

#[derive(Debug)]
enum BodyErrorKind {
    TimedOut(Duration),
    Http1(hyper::Error),
    Http2(h2::Error),
}

impl BodyError {
    /// The client paused longer than the body timeout between two chunks.
    /// A server usually answers 408 and closes the connection.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, BodyErrorKind::TimedOut(_))
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyErrorKind::TimedOut(pause) => write!(
                f,
                "the request body paused longer than {} ms",
                pause.as_millis()
            ),
            BodyErrorKind::Http1(e) => e.fmt(f),
            BodyErrorKind::Http2(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            BodyErrorKind::TimedOut(_) => None,
            BodyErrorKind::Http1(e) => Some(e),
            BodyErrorKind::Http2(e) => Some(e),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Http1(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|f| {
                    f.map_err(|e| BodyError {
                        kind: BodyErrorKind::Http1(e),
                    })
                })
            }),
            Inner::Http2(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|f| {
                    f.map_err(|e| BodyError {
                        kind: BodyErrorKind::Http2(e),
                    })
                })
            }),
        };
        if polled.is_ready() {
            this.waiting = None;
            return polled;
        }
        let pause = this.pause;
        let waiting = this.waiting.get_or_insert_with(|| Box::pin(sleep(pause)));
        ready!(waiting.as_mut().poll(cx));
        this.waiting = None;
        Poll::Ready(Some(Err(BodyError {
            kind: BodyErrorKind::TimedOut(pause),
        })))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Http1(body) => body.is_end_stream(),
            Inner::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1(body) => body.size_hint(),
            Inner::Http2(body) => body.size_hint(),
        }
    }
}

/// A response body that keeps its request counted in flight until its end
/// (or until the connection drops it): a drain waits for it, and the
/// connection does not read as idle while it is being written.
pub struct InFlightBody<B> {
    body: B,
    in_flight: Option<InFlight>,
}

impl<B> InFlightBody<B> {
    pub(crate) fn new(body: B, in_flight: Option<InFlight>) -> Self {
        InFlightBody { body, in_flight }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.in_flight = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
