//! The built-in worker's long response: `GET /stream?seconds=N` answers a
//! server-sent event stream, one event every 100 ms for N seconds (60 by
//! default, at most 600). It is what `baton check --scenario stream` reads
//! through reloads.
//!
//! A stream outlives any drain grace, so a draining worker does not keep it
//! going: it ends the stream cleanly, after the event in hand, the moment
//! the drain starts. An SSE client reconnects to an ended stream by itself
//! (and a chunked download ends with its last chunk), so a clean end is
//! not a failure; a stream cut without its end is.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use tokio::sync::watch;
use tokio::time::{interval, Interval};

use super::connection::{DrainPhase, InFlight};

/// The time between two events.
const EVERY: Duration = Duration::from_millis(100);
const DEFAULT_SECONDS: u64 = 60;
const MAX_SECONDS: u64 = 600;

/// The stream's length asked by `query` (`seconds=N`), within bounds.
pub fn seconds(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("seconds="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_SECONDS)
        .min(MAX_SECONDS)
}

/// The answer: events for `seconds`, ended when `drain` leaves serving.
/// `in_flight` is held until the stream ends, so the connection counts as
/// busy all along.
pub fn respond(
    seconds: u64,
    drain: watch::Receiver<DrainPhase>,
    in_flight: InFlight,
) -> Response<Events> {
    let events = Events {
        left: seconds * 1000 / EVERY.as_millis() as u64,
        sent: 0,
        ticks: interval(EVERY),
        drain,
        _in_flight: in_flight,
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
    drain: watch::Receiver<DrainPhase>,
    _in_flight: InFlight,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 || *self.drain.borrow() != DrainPhase::Serving {
            return Poll::Ready(None);
        }
        ready!(self.ticks.poll_tick(cx));
        self.left -= 1;
        self.sent += 1;
        let event = format!("id: {}\ndata: {}\n\n", self.sent, self.sent);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
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
    }
}
