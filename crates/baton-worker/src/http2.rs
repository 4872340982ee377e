//! The built-in server's HTTP/2 connections, served with h2 itself rather
//! than through hyper, because the drain must choose its GOAWAY frames.
//!
//! A drain has two ways to end an HTTP/2 connection:
//!
//! - **One GOAWAY naming the last stream**, sent at a moment no stream is
//!   open, then the close. A client that opened a stream at that very moment
//!   learns from the id that it was not served and retries it elsewhere.
//! - **The two-step GOAWAY** (RFC 9113 §6.8): GOAWAY(2^31−1), a PING, and
//!   on its answer GOAWAY naming the last stream, while open streams finish.
//!   It never interrupts a stream, but real clients fail on it: httpx (h2
//!   4.4.1) moves its connection to a closed state on the first GOAWAY and
//!   then rejects the PING, failing every request still open on it (80 of
//!   1,849 requests through 10 reloads), and hyper offers nothing else.
//!
//! So a draining connection waits for a moment with no stream open (up to
//! [`IDLE_MOMENT_WAIT`]; a client thinking between requests gives one at
//! once) and is sent the single GOAWAY; a connection that stays busy that
//! long gets the two-step one. A connection that has not carried a stream
//! yet waits as long for its first: its client opened it to send one, and
//! GOAWAY(0) would refuse it (httpx, whose h2 pool sends a refused stream
//! again, does not when the last stream is 0, and fails the request). Either way the connection's task bounds what
//! follows: a client that never answers the PING, or never reads the GOAWAY,
//! is dropped (see [`super::connection`]).

use std::fmt::Display;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderName, CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
use hyper::{HeaderMap, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Instant, Sleep};
use tracing::debug;

use super::connection::Tracker;
use crate::deadline;

/// How long a draining connection waits for a moment with no stream open
/// before it is sent the two-step GOAWAY instead of the single one.
pub const IDLE_MOMENT_WAIT: Duration = Duration::from_secs(1);

/// How a drain ends an HTTP/2 connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// As the module docs say.
    AtAnIdleMoment,
    /// Always the two-step GOAWAY, at once (a fault, to prove the tests
    /// notice what it costs).
    TwoStep,
    /// One GOAWAY at once, cutting the streams in flight (a fault too).
    Immediate,
}

/// Which GOAWAY a drained connection was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goaway {
    NotYet,
    /// One GOAWAY naming the last stream, with no stream open.
    Single,
    /// GOAWAY(2^31−1), then the last stream after a PING's answer.
    TwoStep,
}

/// Serves one HTTP/2 connection (its preface not yet read) until it ends:
/// each stream is answered by `handler` on a task of its own; the drain,
/// asked through `tracker`, ends it as the module docs say. `ping` is the
/// keep-alive: after that long without a byte from the client it is sent a
/// PING, and the connection ends if the answer takes as long.
pub async fn serve<S, H, F, B>(
    io: S,
    tracker: Arc<Tracker>,
    ping: Duration,
    drain: Drain,
    handler: H,
) -> Result<(), h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RequestBody>) -> F,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    let mut connection = h2::server::Builder::new()
        .max_concurrent_streams(200)
        .initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(400 * 1024)
        .handshake::<_, Bytes>(io)
        .await?;
    let mut keepalive = connection
        .ping_pong()
        .map(|pong| Keepalive::new(pong, ping, tracker.clone()));
    let mut goaway = Goaway::NotYet;
    let mut busy_until: Option<Pin<Box<Sleep>>> = None;
    let mut served_any = false;
    poll_fn(|cx| loop {
        match connection.poll_accept(cx) {
            Poll::Ready(Some(Ok((request, respond)))) => {
                served_any = true;
                let in_flight = tracker.request();
                let head_only = request.method() == hyper::Method::HEAD;
                let answer = handler(request.map(RequestBody::new));
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    if let Err(cause) = send(respond, answer.await, head_only).await {
                        debug!(%cause, "HTTP/2 stream ended early");
                    }
                });
                continue;
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => {}
        }
        // Every frame that came has been read: no stream the client opened
        // so far is unknown to h2.
        if goaway == Goaway::NotYet && tracker.closing() {
            let waited = busy_until
                .get_or_insert_with(|| Box::pin(sleep(IDLE_MOMENT_WAIT)))
                .as_mut()
                .poll(cx)
                .is_ready();
            let idle = !connection.has_streams();
            if drain == Drain::TwoStep {
                connection.graceful_shutdown();
                goaway = Goaway::TwoStep;
            } else if drain == Drain::Immediate || (idle && (served_any || waited)) {
                connection.abrupt_shutdown(Reason::NO_ERROR);
                goaway = Goaway::Single;
            } else if waited {
                connection.graceful_shutdown();
                goaway = Goaway::TwoStep;
            }
            if goaway != Goaway::NotYet {
                debug!(?goaway, "HTTP/2 connection sent GOAWAY");
                tracker.goaway_sent();
                continue;
            }
        }
        if goaway == Goaway::NotYet {
            if let Some(Poll::Ready(())) = keepalive.as_mut().map(|k| k.poll_unanswered(cx)) {
                debug!("HTTP/2 keep-alive PING unanswered; dropping the connection");
                return Poll::Ready(Ok(()));
            }
        }
        return Poll::Pending;
    })
    .await
}

/// The keep-alive: a PING after `interval` without a byte from the client.
struct Keepalive {
    pong: PingPong,
    interval: Duration,
    tracker: Arc<Tracker>,
    timer: Pin<Box<Sleep>>,
    /// A PING was sent and its answer has not come.
    awaiting: bool,
}

impl Keepalive {
    fn new(pong: PingPong, interval: Duration, tracker: Arc<Tracker>) -> Self {
        Keepalive {
            pong,
            interval,
            tracker,
            timer: Box::pin(sleep(interval)),
            awaiting: false,
        }
    }

    /// Ready when a PING went unanswered for `interval`.
    fn poll_unanswered(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.awaiting {
                match self.pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => self.awaiting = false,
                    // The connection is ending; h2 reports why.
                    Poll::Ready(Err(_)) => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.awaiting {
                return Poll::Ready(());
            }
            let next = deadline(self.tracker.last_read(), self.interval);
            if next > Instant::now() {
                self.timer.as_mut().reset(next);
                continue;
            }
            if self.pong.send_ping(Ping::opaque()).is_err() {
                return Poll::Pending;
            }
            self.awaiting = true;
            self.timer
                .as_mut()
                .reset(deadline(Instant::now(), self.interval));
        }
    }
}

/// A request's body, as h2 receives it: each chunk read is given back to
/// the client's flow-control window.
#[derive(Debug)]
pub struct RequestBody {
    stream: RecvStream,
    data_ended: bool,
}

impl RequestBody {
    fn new(stream: RecvStream) -> Self {
        RequestBody {
            stream,
            data_ended: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_ended {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_ended = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

/// Sends `response` on its stream, its body within the client's
/// flow-control window (no body at all for a HEAD request's, `head_only`).
/// A body of known length is announced with `content-length`, as hyper
/// does.
async fn send<B>(
    mut respond: SendResponse<Bytes>,
    response: Response<B>,
    head_only: bool,
) -> Result<(), String>
where
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let (mut head, body) = response.into_parts();
    strip_connection_headers(&mut head.headers);
    if let Some(length) = body.size_hint().exact() {
        head.headers
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| length.into());
    }
    let ended = head_only || body.is_end_stream();
    let mut stream = respond
        .send_response(Response::from_parts(head, ()), ended)
        .map_err(|e| e.to_string())?;
    if ended {
        return Ok(());
    }
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let last = body.is_end_stream();
                while data.has_remaining() {
                    stream.reserve_capacity(data.len());
                    let granted = poll_fn(|cx| stream.poll_capacity(cx))
                        .await
                        .ok_or_else(|| "the stream closed".to_owned())?
                        .map_err(|e| e.to_string())?;
                    if granted == 0 {
                        continue;
                    }
                    let chunk = data.split_to(granted.min(data.len()));
                    stream
                        .send_data(chunk, last && !data.has_remaining())
                        .map_err(|e| e.to_string())?;
                }
                if last {
                    return Ok(());
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            return stream.send_trailers(trailers).map_err(|e| e.to_string());
        }
    }
    stream
        .send_data(Bytes::new(), true)
        .map_err(|e| e.to_string())
}

/// HTTP/2 has no connection-specific headers (RFC 9113 §8.2.2); h2 refuses
/// a response that has one, so they are dropped (`TE: trailers` may stay).
fn strip_connection_headers(headers: &mut HeaderMap) {
    for name in [
        CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}
