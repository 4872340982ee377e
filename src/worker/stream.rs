//! The built-in worker's long responses, what `baton check --scenario
//! stream` reads through reloads:
//!
//! - `GET /stream?seconds=N`: a server-sent event stream, one event every
//!   100 ms for N seconds (60 by default, at most 600).
//! - `GET /download?bytes=N&seconds=S`: a chunked download of N bytes (4 MiB
//!   by default, at most 256 MiB) sent in pieces every 100 ms over S seconds
//!   (5 by default, at most 600).
//!
//! An event stream outlives any drain grace, so a draining worker does not
//! keep it going: it ends the stream cleanly, after the event in hand, the
//! moment the drain starts. An SSE client reconnects to an ended stream by
//! itself, so a clean end is not a failure; a stream cut without its end
//! is. A download is different: one ended early is a truncated file, so a
//! draining worker finishes it (within the drain's timeout, as any request
//! in flight).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use tokio::time::{interval, Interval};

use baton_worker::Drain;

/// The time between two events.
const EVERY: Duration = Duration::from_millis(100);
const DEFAULT_SECONDS: u64 = 60;
const MAX_SECONDS: u64 = 600;

const DEFAULT_DOWNLOAD_BYTES: u64 = 4 << 20;
const MAX_DOWNLOAD_BYTES: u64 = 256 << 20;
const DEFAULT_DOWNLOAD_SECONDS: u64 = 5;

/// The value of `name` in `query`, or `default`, at most `max`.
fn parameter(query: Option<&str>, name: &str, default: u64, max: u64) -> u64 {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then(|| value.parse().ok()).flatten())
        .unwrap_or(default)
        .min(max)
}

/// The stream's length asked by `query` (`seconds=N`), within bounds.
pub fn seconds(query: Option<&str>) -> u64 {
    parameter(query, "seconds", DEFAULT_SECONDS, MAX_SECONDS)
}

/// The answer: events for `seconds`, ended when the drain starts. (The
/// server counts the request in flight until its body ends.)
pub fn respond(seconds: u64, drain: Drain) -> Response<Events> {
    let events = Events {
        left: seconds * 1000 / EVERY.as_millis() as u64,
        sent: 0,
        ticks: interval(EVERY),
        drain,
    };
    let mut response = Response::new(events);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The event stream's body.
pub struct Events {
    left: u64,
    sent: u64,
    ticks: Interval,
    drain: Drain,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 || self.drain.is_started() {
            return Poll::Ready(None);
        }
        ready!(self.ticks.poll_tick(cx));
        self.left -= 1;
        self.sent += 1;
        let event = format!("id: {}\ndata: {}\n\n", self.sent, self.sent);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

/// The answer to `GET /download` with `query`: its bytes, sent over its
/// seconds whatever the drain does.
pub fn download(query: Option<&str>) -> Response<Download> {
    let bytes = parameter(query, "bytes", DEFAULT_DOWNLOAD_BYTES, MAX_DOWNLOAD_BYTES);
    let seconds = parameter(query, "seconds", DEFAULT_DOWNLOAD_SECONDS, MAX_SECONDS);
    let pieces = (seconds * 1000 / EVERY.as_millis() as u64).max(1);
    let download = Download {
        left: bytes,
        piece: bytes.div_ceil(pieces).max(1),
        ticks: interval(EVERY),
    };
    let mut response = Response::new(download);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// A download's body: no length announced, so HTTP/1 sends it chunked.
pub struct Download {
    left: u64,
    piece: u64,
    ticks: Interval,
}

impl Body for Download {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        ready!(self.ticks.poll_tick(cx));
        let piece = self.piece.min(self.left);
        self.left -= piece;
        let bytes = Bytes::from(vec![b'.'; piece as usize]);
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_comes_from_the_query_within_bounds() {
        assert_eq!(seconds(None), DEFAULT_SECONDS);
        assert_eq!(seconds(Some("seconds=5")), 5);
        assert_eq!(seconds(Some("a=1&seconds=7")), 7);
        assert_eq!(seconds(Some("seconds=100000")), MAX_SECONDS);
        assert_eq!(seconds(Some("seconds=x")), DEFAULT_SECONDS);
        assert_eq!(seconds(Some("milliseconds=3&seconds=4")), 4);
        let bytes = |q| parameter(Some(q), "bytes", 1, 100);
        assert_eq!(bytes("seconds=2&bytes=50"), 50);
        assert_eq!(bytes("bytes=5000"), 100);
    }
}
