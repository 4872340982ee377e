//! One client connection of the built-in server, from accept to close, with
//! every phase bounded in time and a close that never races a request.
//!
//! A connection is always in one of these phases, derived from what its
//! parts record in a shared [`Tracker`]:
//!
//! - **idle**: no request in flight and no byte of the next one yet. It may
//!   last `keepalive_timeout` after a response, or `header_timeout` on a new
//!   connection (a client that connects and says nothing).
//! - **header**: bytes of a request have come, its head is not complete. It
//!   may last `header_timeout` from the first byte: slow-header clients
//!   (slowloris) are dropped.
//! - **request**: a request is in the handler, which bounds the gaps in its
//!   body itself (`body_timeout`).
//!
//! Closing an idle HTTP/1 connection races a client that sends its next
//! request at that moment: the request arrives at a closed socket and the
//! client sees a reset or an early EOF (hyper's own graceful shutdown does
//! exactly this to every idle connection). So an idle connection is closed
//! from inside its read: the next time hyper polls for a request, the read
//! looks at the socket first; if a request is already there it is served
//! (with `Connection: close`), and only an empty socket reads as the end of
//! the stream, which hyper answers by closing cleanly. After the close, the
//! socket lingers, reading and discarding, until the client closes its end
//! (or [`LINGER_FOR`] passes), so that a late byte from the client cannot
//! turn the close into a reset that destroys the last response. A client
//! that said it closes (`Connection: close` on a request without a body)
//! sends no late byte, and its connection closes at once: the lingering
//! read, its task and its wake-up cost such a connection about a tenth of
//! the worker's CPU in user space.
//!
//! HTTP/2 has its own way: GOAWAY, which tells the client which streams
//! were served (see [`super::http2`]); the connection's task asks for it and
//! bounds how long the client may take to let the connection end.
//!
//! While the worker drains ([`DrainPhase`]), idle connections stay open so
//! that their clients' next requests are answered (with `Connection: close`);
//! when the grace ends, idle connections close as above, connections still
//! in the header phase are dropped, and requests in flight finish.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};

use crate::deadline;

/// How long a closed connection keeps reading what its client still sends.
pub const LINGER_FOR: Duration = Duration::from_secs(2);

/// How long an HTTP/1 connection stays idle in hyper before it parks (see
/// [`Tracker::park_at`]): long enough that a client sending request after
/// request never does, so that only clients that pause between requests
/// pay for a new hyper connection when they come back.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long an idle connection asked to close may take to do so before it
/// is dropped (its client reads nothing, so hyper cannot finish writing).
const CLOSE_ALLOWANCE: Duration = Duration::from_secs(2);

/// Where the worker is in its drain; every connection watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainPhase {
    Serving,
    /// Not accepting; responses close their connections; idle HTTP/1
    /// connections wait for their clients' next requests; HTTP/2 ones are
    /// sent GOAWAY.
    Draining,
    /// The grace is over: idle connections close, slow ones are dropped.
    Closing,
}

/// The time limits of a connection's phases.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub keepalive: Duration,
}

/// No value recorded.
const NEVER: u64 = u64::MAX;

/// What the reading side, the request handler and the connection's task
/// record about one connection. Times are milliseconds since `opened`.
#[derive(Debug)]
pub struct Tracker {
    opened: Instant,
    /// When the first byte after the last idle moment came.
    head_started_ms: AtomicU64,
    /// When the last request in flight was answered, or the connection
    /// opened.
    idle_since_ms: AtomicU64,
    /// When the connection was asked to close.
    close_asked_ms: AtomicU64,
    in_flight: AtomicU32,
    answered: AtomicU64,
    /// When the last bytes came from the client.
    last_read_ms: AtomicU64,
    /// The client speaks HTTP/2 (its first bytes were the HTTP/2 preface).
    http2: AtomicBool,
    /// The connection was upgraded (101): it is the application's now, and
    /// never idles between HTTP/1 requests again.
    upgraded: AtomicBool,
    /// The task that last read, to wake it when a close is asked.
    reader: AtomicWaker,
    /// The connection can move to another worker (see [`Tracker::ask_move`]).
    movable: AtomicBool,
    /// Asked to move at its next idle moment rather than close.
    move_asked: AtomicBool,
    /// Asked to leave hyper at its next idle moment and wait, parked, for
    /// its client's next request (see [`Tracker::park_at`]).
    park_asked: AtomicBool,
    /// No park before this (ms since `opened`): a connection served again
    /// (from a park, or from another worker) has its request waiting, and
    /// its first read finds nothing until the runtime has seen its socket
    /// readable; a park asked meanwhile would send it straight back.
    parkable_from_ms: u64,
    /// The connection will not move after all, and closes the drain's
    /// usual way: bytes came while a request without a body was in flight
    /// (perhaps the start of a pipelined request hyper holds, which a move
    /// would lose), or its client filled the idle moment a response made
    /// after the move was asked (it sends without pause, so the connection
    /// may never be idle to move, and would stay on this worker to its
    /// drain deadline). A request that comes while the move is asked of an
    /// idle connection is served and the connection moves after it.
    stays: AtomicBool,
    /// The last request said the client closes after its response
    /// (`Connection: close`, or HTTP/1.0 without keep-alive) and had no
    /// body: nothing more is coming, so the close need not linger.
    client_closes: AtomicBool,
    /// A response ended after the move was asked: the connection had its
    /// idle moment.
    answered_since_move_asked: AtomicBool,
    /// The request in flight has a body still to come.
    body_open: AtomicBool,
}

impl Tracker {
    fn new() -> Self {
        Tracker {
            opened: Instant::now(),
            head_started_ms: AtomicU64::new(NEVER),
            idle_since_ms: AtomicU64::new(0),
            close_asked_ms: AtomicU64::new(NEVER),
            in_flight: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            movable: AtomicBool::new(false),
            move_asked: AtomicBool::new(false),
            park_asked: AtomicBool::new(false),
            parkable_from_ms: 0,
            stays: AtomicBool::new(false),
            client_closes: AtomicBool::new(false),
            answered_since_move_asked: AtomicBool::new(false),
            body_open: AtomicBool::new(false),
        }
    }

    /// A connection moved here from another worker: its idle limit goes
    /// on from where it was there.
    fn resumed(resume: Resume) -> Self {
        let tracker = Tracker::new();
        let opened = Instant::now()
            .checked_sub(resume.idle)
            .unwrap_or_else(Instant::now);
        Tracker {
            opened,
            parkable_from_ms: resume.idle.as_millis() as u64,
            idle_since_ms: AtomicU64::new(0),
            answered: AtomicU64::new(u64::from(!resume.fresh)),
            ..tracker
        }
    }

    /// Where the connection's idle limit stands, for a move.
    fn resume(&self) -> Resume {
        let idle_ms = self
            .now_ms()
            .saturating_sub(self.idle_since_ms.load(Ordering::Acquire));
        Resume {
            idle: Duration::from_millis(idle_ms),
            fresh: self.answered.load(Ordering::Relaxed) == 0,
        }
    }

    /// The connection may be handed to another worker when this one
    /// drains.
    pub fn set_movable(&self) {
        self.movable.store(true, Ordering::Relaxed);
    }

    /// Asks a movable HTTP/1 connection to leave at its next idle moment:
    /// its read ends there as for a close, but hyper's shutdown of it is
    /// skipped, and the socket goes to the master unclosed (see
    /// [`Tracked`]). Its responses meanwhile keep it alive. Returns whether
    /// it will move; one that will not stays open for the drain's usual
    /// close.
    pub fn ask_move(&self) -> bool {
        if !self.movable.load(Ordering::Relaxed)
            || self.http2.load(Ordering::Relaxed)
            || self.upgraded.load(Ordering::Relaxed)
        {
            return false;
        }
        self.move_asked.store(true, Ordering::Release);
        self.reader.wake();
        self.moving()
    }

    /// Asked to move or to park, and nothing makes leaving unsafe.
    pub fn moving(&self) -> bool {
        (self.move_asked.load(Ordering::Acquire) || self.park_asked.load(Ordering::Acquire))
            && !self.stays.load(Ordering::Acquire)
    }

    /// Where a connection that leaves hyper goes: a move asked by a drain
    /// wins over a park.
    fn destination(&self) -> Destination {
        if self.move_asked.load(Ordering::Acquire) {
            Destination::AnotherWorker
        } else {
            Destination::Park
        }
    }

    /// When this connection should leave hyper to wait parked, if it may:
    /// an HTTP/1 connection that could move (so its socket can be taken
    /// out), has answered a request, is idle, is asked nothing else, and
    /// stays so for [`PARK_AFTER`]. A parked connection holds only its
    /// socket; hyper's read and write buffers and state, most of what an
    /// idle connection costs, are freed.
    fn park_at(&self, drain: DrainPhase) -> Option<Instant> {
        let parkable = drain == DrainPhase::Serving
            && self.may_park()
            && self.answered.load(Ordering::Relaxed) > 0
            && self.is_idle_http1()
            && !self.closing();
        parkable.then(|| {
            let idle_since = self.idle_since_ms.load(Ordering::Acquire);
            deadline(self.at(idle_since.max(self.parkable_from_ms)), PARK_AFTER)
        })
    }

    /// Whether this connection may park some day: HTTP/1, not upgraded,
    /// its socket can be taken out, not asked to leave already, and nothing
    /// makes leaving unsafe.
    fn may_park(&self) -> bool {
        self.movable.load(Ordering::Relaxed)
            && !self.http2.load(Ordering::Relaxed)
            && !self.upgraded.load(Ordering::Relaxed)
            && !self.move_asked.load(Ordering::Acquire)
            && !self.park_asked.load(Ordering::Acquire)
            && !self.stays.load(Ordering::Acquire)
    }

    /// Asks an idle connection to leave hyper and wait parked (see
    /// [`Tracker::park_at`]): its read ends at its idle moment as for a
    /// move. A request that comes first is served, and the connection
    /// parks after it.
    fn ask_park(&self) {
        self.park_asked.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// Whether the request now starting has a body to come.
    pub fn body_expected(&self, expected: bool) {
        self.body_open.store(expected, Ordering::Release);
    }

    /// Whether the request now starting, which has no body, said its
    /// client closes the connection after the response.
    pub fn client_closes(&self, closes: bool) {
        self.client_closes.store(closes, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        deadline(self.opened, Duration::from_millis(ms))
    }

    /// Whether the connection has been asked to close: its HTTP/1
    /// responses carry `Connection: close`.
    pub fn closing(&self) -> bool {
        self.close_asked_ms.load(Ordering::Acquire) != NEVER
    }

    /// An HTTP/1 connection between requests. (HTTP/2 is closed with
    /// GOAWAY instead: its client may open a stream at any time.)
    fn is_idle_http1(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Acquire) == NEVER
            && !self.http2.load(Ordering::Relaxed)
            && !self.upgraded.load(Ordering::Relaxed)
    }

    /// The connection was upgraded to another protocol (a WebSocket): a
    /// drain no longer reads it as ended between requests.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// The client sent the HTTP/2 preface: its connection idles between
    /// streams, not between request heads, and ends with GOAWAY.
    pub fn speaks_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// When bytes last came from the client.
    pub fn last_read(&self) -> Instant {
        self.at(self.last_read_ms.load(Ordering::Relaxed))
    }

    /// An HTTP/2 connection asked to close was sent its GOAWAY: the time it
    /// has to close counts from now, not from the ask (it may have waited
    /// for its streams).
    pub fn goaway_sent(&self) {
        self.close_asked_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Bytes came from the client.
    fn read(&self) {
        let now = self.now_ms();
        self.last_read_ms.store(now, Ordering::Relaxed);
        let in_flight = self.in_flight.load(Ordering::Acquire);
        if in_flight > 0 && !self.body_open.load(Ordering::Acquire) {
            self.stays.store(true, Ordering::Release);
        }
        let head_started = in_flight == 0
            && self
                .head_started_ms
                .compare_exchange(NEVER, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if head_started && self.answered_since_move_asked.load(Ordering::Acquire) {
            self.stays.store(true, Ordering::Release);
        }
    }

    /// A request reached the handler; the guard marks it answered on drop.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(NEVER, Ordering::Release);
        InFlight(self.clone())
    }

    /// Asks the connection to close at its next idle read, and wakes the
    /// read that waits.
    fn ask_close(&self) {
        let now = self.now_ms();
        let _ =
            self.close_asked_ms
                .compare_exchange(NEVER, now, Ordering::AcqRel, Ordering::Relaxed);
        self.reader.wake();
    }

    /// What the connection's task should do next, and when.
    fn next_step(&self, drain: DrainPhase, limits: &Limits) -> Step {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Step::Wait;
        }
        let http2 = self.http2.load(Ordering::Relaxed);
        let now_if_closing = |at: Instant| match drain {
            DrainPhase::Closing => Instant::now(),
            _ => at,
        };
        let head = self.head_started_ms.load(Ordering::Acquire);
        if head != NEVER && !http2 {
            return Step::Drop(now_if_closing(deadline(self.at(head), limits.header)));
        }
        let asked = self.close_asked_ms.load(Ordering::Acquire);
        if asked != NEVER {
            return Step::Drop(deadline(self.at(asked), CLOSE_ALLOWANCE));
        }
        let idle_limit = if self.answered.load(Ordering::Relaxed) == 0 && !http2 {
            limits.header
        } else {
            limits.keepalive
        };
        let idle_since = self.at(self.idle_since_ms.load(Ordering::Acquire));
        Step::Close(now_if_closing(deadline(idle_since, idle_limit)))
    }
}

/// What a connection's task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A request is in flight: nothing to time here.
    Wait,
    /// Idle: ask it to close at this instant.
    Close(Instant),
    /// Too slow (headers, or closing): drop it at this instant.
    Drop(Instant),
}

/// A request in flight; marks it answered when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Tracker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let tracker = &self.0;
        tracker.answered.fetch_add(1, Ordering::Relaxed);
        if tracker.move_asked.load(Ordering::Acquire) || tracker.park_asked.load(Ordering::Acquire)
        {
            tracker
                .answered_since_move_asked
                .store(true, Ordering::Release);
        }
        tracker
            .idle_since_ms
            .store(tracker.now_ms(), Ordering::Release);
        tracker.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client stream whose reads are recorded in a [`Tracker`], and which
/// reads as ended when the connection is asked to close while idle and
/// nothing waits in the socket.
pub struct Tracked<S: AsyncRead + Unpin + Send + 'static> {
    /// `None` only once drop has handed the stream to the linger task.
    stream: Option<S>,
    tracker: Arc<Tracker>,
    /// Set when hyper shut down the writing side: a clean close, after which
    /// the socket lingers.
    shut_down: bool,
    /// Held until the socket is closed, lingering included, so that the
    /// drain waits for it: a worker that exited with a lingering socket
    /// would reset it, and the client's kernel would discard the last
    /// response (or an HTTP/2 GOAWAY) unread.
    alive: Option<mpsc::Sender<()>>,
    /// Whether a clean close lingers (always, but for a fault injected on
    /// purpose).
    lingers: bool,
    /// Dropped when the connection closes (before any linger): it counts
    /// the connection as open, in the worker's counters and the balance
    /// table, for as long as anything holds the socket, an upgraded
    /// connection included.
    open: Option<Box<dyn Send + Sync>>,
    /// Where the socket goes, unclosed, when it moves to another worker.
    on_move: Option<OnMove<S>>,
    /// hyper ended a moving connection at its idle moment: its shutdown
    /// was skipped, and drop hands the socket over.
    moved: bool,
    /// The last write found the socket full: hyper still holds bytes of a
    /// response, so the connection is not between requests whatever the
    /// tracker says (it counts a request answered once its body ended).
    write_blocked: bool,
}

/// Where a moving connection's idle limit stands: how long it has been
/// idle, and whether it has sent a request yet (a connection that has not
/// has the header limit, counted from when it opened; one that has, the
/// keep-alive limit, counted from its last response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub idle: Duration,
    pub fresh: bool,
}

/// Where a connection that left hyper at its idle moment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To a newer worker, through the master: its worker drains.
    AnotherWorker,
    /// To wait in this worker, parked, for its client's next request.
    Park,
}

/// A connection that left hyper at its idle moment, its socket unclosed.
pub struct Leaving {
    pub destination: Destination,
    /// Where its idle limit stands.
    pub resume: Resume,
    /// What counts it as open (see [`Tracked::counted_by`]): a parked
    /// connection is still open and keeps it until it is served again.
    pub open: Option<Box<dyn Send + Sync>>,
}

/// Takes the socket of a connection that leaves hyper.
pub type OnMove<S> = Box<dyn FnOnce(S, Leaving) + Send + Sync>;

impl<S: AsyncRead + Unpin + Send + 'static> Tracked<S> {
    /// Tracks `stream`, holding `alive` until it is closed.
    pub fn new(stream: S, alive: Option<mpsc::Sender<()>>) -> (Self, Arc<Tracker>) {
        Self::tracked_by(stream, alive, Tracker::new())
    }

    /// Tracks `stream`, a connection another worker served, its idle
    /// limit going on from `resume`.
    pub fn resumed(
        stream: S,
        alive: Option<mpsc::Sender<()>>,
        resume: Resume,
    ) -> (Self, Arc<Tracker>) {
        Self::tracked_by(stream, alive, Tracker::resumed(resume))
    }

    fn tracked_by(
        stream: S,
        alive: Option<mpsc::Sender<()>>,
        tracker: Tracker,
    ) -> (Self, Arc<Tracker>) {
        let tracker = Arc::new(tracker);
        let tracked = Tracked {
            stream: Some(stream),
            tracker: tracker.clone(),
            shut_down: false,
            alive,
            lingers: true,
            open: None,
            on_move: None,
            moved: false,
            write_blocked: false,
        };
        (tracked, tracker)
    }

    /// Lets the connection move to another worker when its worker drains:
    /// `on_move` takes its socket then.
    pub fn movable(mut self, on_move: OnMove<S>) -> Self {
        self.tracker.set_movable();
        self.on_move = Some(on_move);
        self
    }

    /// Holds `open` until the connection closes.
    pub fn counted_by(mut self, open: impl Send + Sync + 'static) -> Self {
        self.open = Some(Box::new(open));
        self
    }

    /// Closes at once, without the lingering read (a fault, to prove the
    /// tests notice what the linger is for).
    pub fn without_linger(mut self) -> Self {
        self.lingers = false;
        self
    }

    fn stream(&mut self) -> Pin<&mut S> {
        Pin::new(self.stream.as_mut().expect("present until drop"))
    }

    /// Records whether a write found the socket full. Once one goes
    /// through again, a read that waits to end the connection (a close or
    /// a move asked meanwhile) is woken to look again.
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        let blocked = written.is_pending();
        if self.write_blocked && !blocked {
            self.tracker.reader.wake();
        }
        self.write_blocked = blocked;
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Registered before the close is looked at, so that a close asked
        // from now on wakes this read.
        self.tracker.reader.register(cx.waker());
        let closing = self.tracker.closing();
        let before = buf.filled().len();
        match self.stream().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.tracker.read();
                }
                Poll::Ready(Ok(()))
            }
            // Nothing waiting, and asked to close (or to move) while idle,
            // the last response all written: end of stream.
            Poll::Pending
                if (closing || self.tracker.moving())
                    && self.tracker.is_idle_http1()
                    && !self.write_blocked =>
            {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = self.stream().poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = self.stream().poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.on_move.is_some() && self.tracker.moving() && self.tracker.is_idle_http1() {
            // Ended at its idle moment to move: the client must see nothing.
            self.moved = true;
            return Poll::Ready(Ok(()));
        }
        let result = self.stream().poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = result {
            self.shut_down = true;
        }
        result
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> Drop for Tracked<S> {
    fn drop(&mut self) {
        if self.moved {
            if let (Some(stream), Some(on_move)) = (self.stream.take(), self.on_move.take()) {
                on_move(
                    stream,
                    Leaving {
                        destination: self.tracker.destination(),
                        resume: self.tracker.resume(),
                        open: self.open.take(),
                    },
                );
            }
            return;
        }
        drop(self.open.take());
        if !self.shut_down || !self.lingers || self.tracker.client_closes.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        {
            let alive = self.alive.take();
            runtime.spawn(async move {
                linger(stream).await;
                drop(alive);
            });
        }
    }
}

/// Reads and discards until the client closes, or [`LINGER_FOR`] passes.
async fn linger<S: AsyncRead + Unpin>(mut stream: S) {
    let mut sink = [0u8; 1024];
    let _ = timeout(LINGER_FOR, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Closed by either side without an error.
    Closed,
    /// Dropped because a phase took too long.
    TimedOut,
    /// hyper reported an error (a malformed request, a reset).
    Failed(String),
}

/// Drives `connection` to its end, closing it when a phase runs out of time
/// or the drain says so (an HTTP/2 connection is asked to close at once when
/// the drain starts: it sends GOAWAY itself). With `handover` set when the
/// drain starts, a movable HTTP/1 connection is asked to move instead.
pub async fn run<C, E>(
    connection: C,
    tracker: Arc<Tracker>,
    limits: Limits,
    mut drain: watch::Receiver<DrainPhase>,
    handover: Arc<AtomicBool>,
) -> Ended
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let mut drain_open = true;
    loop {
        let phase = *drain.borrow_and_update();
        let http2 = tracker.http2.load(Ordering::Relaxed);
        if http2 && phase >= DrainPhase::Draining && !tracker.closing() {
            tracker.ask_close();
        }
        if phase >= DrainPhase::Draining && handover.load(Ordering::Acquire) {
            tracker.ask_move();
        }
        // The deadline is derived from what the tracker recorded; the
        // connection may have moved on when it passes, so it is looked at
        // again then, and acted on only if it still holds. What happens
        // from now on can only set a deadline at least the shortest limit
        // away, so waking that often misses none.
        let mut shortest = limits.header.min(limits.keepalive);
        if tracker.may_park() {
            // Nothing wakes this task when a response ends: it looks every
            // PARK_AFTER whether the connection has idled that long, so it
            // parks between one and two PARK_AFTER into its idleness.
            shortest = shortest.min(PARK_AFTER);
        }
        let recheck = deadline(Instant::now(), shortest);
        let mut wake_at = match tracker.next_step(phase, &limits) {
            Step::Wait => recheck,
            Step::Close(at) | Step::Drop(at) => at.min(recheck),
        };
        if let Some(at) = tracker.park_at(phase) {
            wake_at = wake_at.min(at);
        }
        tokio::select! {
            ended = &mut connection => {
                return match ended {
                    Ok(()) => Ended::Closed,
                    Err(e) => Ended::Failed(e.to_string()),
                };
            }
            changed = drain.changed(), if drain_open => drain_open = changed.is_ok(),
            _ = sleep_until(wake_at) => {
                match tracker.next_step(phase, &limits) {
                    Step::Drop(at) if at <= Instant::now() => return Ended::TimedOut,
                    Step::Close(at) if at <= Instant::now() => tracker.ask_close(),
                    _ => {
                        if tracker.park_at(phase).is_some_and(|at| at <= Instant::now()) {
                            tracker.ask_park();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;

    fn tracked() -> (DuplexStream, Tracked<DuplexStream>, Arc<Tracker>) {
        let (client, ours) = tokio::io::duplex(1024);
        let (tracked, tracker) = Tracked::new(ours, None);
        (client, tracked, tracker)
    }

    /// One read of `stream` as hyper makes it: the bytes it gave, or
    /// `None` if it has nothing yet.
    async fn read_now(stream: &mut Tracked<DuplexStream>) -> Option<Vec<u8>> {
        poll_fn(|cx| {
            let mut bytes = [0u8; 256];
            let mut buf = ReadBuf::new(&mut bytes);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Ready(result) => {
                    result.expect("read");
                    Poll::Ready(Some(buf.filled().to_vec()))
                }
                Poll::Pending => Poll::Ready(None),
            }
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_parks_after_park_after_and_reads_as_ended() {
        let (_client, mut stream, tracker) = tracked();
        tracker.set_movable();
        assert_eq!(tracker.park_at(DrainPhase::Serving), None, "no request yet");
        drop(tracker.request());
        let at = tracker.park_at(DrainPhase::Serving).expect("parkable");
        assert_eq!(at, Instant::now() + PARK_AFTER);
        assert_eq!(
            tracker.park_at(DrainPhase::Draining),
            None,
            "a drain moves it"
        );
        tokio::time::advance(PARK_AFTER).await;
        tracker.ask_park();
        assert_eq!(tracker.destination(), Destination::Park);
        assert_eq!(
            read_now(&mut stream).await,
            Some(Vec::new()),
            "leaves hyper"
        );
        tracker.ask_move();
        assert_eq!(
            tracker.destination(),
            Destination::AnotherWorker,
            "a move wins"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_served_again_does_not_park_before_its_request_is_read() {
        let idle = Duration::from_secs(5);
        let tracker = Tracker::resumed(Resume { idle, fresh: false });
        tracker.set_movable();
        let at = tracker.park_at(DrainPhase::Serving).expect("parkable");
        assert_eq!(at, Instant::now() + PARK_AFTER, "not at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_asked_while_idle_reads_as_the_end_of_the_stream() {
        let (_client, mut stream, tracker) = tracked();
        assert_eq!(read_now(&mut stream).await, None, "waiting for a request");
        tracker.ask_close();
        assert_eq!(read_now(&mut stream).await, Some(Vec::new()), "the end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_asked_with_a_request_waiting_reads_the_request_first() {
        let (mut client, mut stream, tracker) = tracked();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tracker.ask_close();
        let read = read_now(&mut stream).await.expect("the request is there");
        assert_eq!(read, b"GET / HTTP/1.1\r\n\r\n");
        assert!(tracker.closing(), "its response will close the connection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_asked_while_a_request_is_in_flight_waits_for_its_body() {
        let (_client, mut stream, tracker) = tracked();
        let in_flight = tracker.request();
        tracker.ask_close();
        assert_eq!(read_now(&mut stream).await, None, "still reading the body");
        drop(in_flight);
        assert_eq!(read_now(&mut stream).await, Some(Vec::new()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_connection_keeps_the_limit_it_had() {
        let limits = Limits {
            header: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
        };
        let idle = Duration::from_secs(4);
        let served = Tracker::resumed(Resume { idle, fresh: false });
        assert_eq!(
            served.next_step(DrainPhase::Serving, &limits),
            Step::Close(Instant::now() - idle + limits.keepalive),
            "the keep-alive limit goes on from its last response"
        );
        let fresh = Arc::new(Tracker::resumed(Resume { idle, fresh: true }));
        assert_eq!(
            fresh.next_step(DrainPhase::Serving, &limits),
            Step::Close(Instant::now() - idle + limits.header),
            "a connection that sent nothing yet has the header limit from its start"
        );
        assert_eq!(fresh.resume(), Resume { idle, fresh: true });
        drop(fresh.request());
        assert!(!fresh.resume().fresh, "it has sent a request now");
    }

    #[tokio::test(start_paused = true)]
    async fn the_phases_deadlines_follow_what_the_connection_did() {
        let limits = Limits {
            header: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
        };
        let (mut client, mut stream, tracker) = tracked();
        let opened = Instant::now();
        let step = |phase| tracker.next_step(phase, &limits);
        assert_eq!(
            step(DrainPhase::Serving),
            Step::Close(opened + limits.header),
            "a new connection has the header limit to start"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        client.write_all(b"GET").await.unwrap();
        read_now(&mut stream).await.expect("a first byte");
        let first_byte = Instant::now();
        assert_eq!(
            step(DrainPhase::Serving),
            Step::Drop(first_byte + limits.header)
        );
        assert_eq!(
            step(DrainPhase::Closing),
            Step::Drop(Instant::now()),
            "a head still coming when the grace ends is dropped now"
        );
        let in_flight = tracker.request();
        assert_eq!(
            step(DrainPhase::Closing),
            Step::Wait,
            "never during a request"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(in_flight);
        let answered = Instant::now();
        assert_eq!(
            step(DrainPhase::Serving),
            Step::Close(answered + limits.keepalive)
        );
        assert_eq!(
            step(DrainPhase::Draining),
            Step::Close(answered + limits.keepalive)
        );
        assert_eq!(
            step(DrainPhase::Closing),
            Step::Close(Instant::now()),
            "an idle one closes now"
        );
    }
}
