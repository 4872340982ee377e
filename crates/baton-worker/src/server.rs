//! Accepting and serving connections, and draining them without failing a
//! request.
//!
//! Each connection runs on its own task under the `connection` module, which
//! bounds every phase of it in time. The drain has two phases, because
//! closing an idle keep-alive connection races its client's next request
//! (hyper's graceful shutdown alone closes them all at once):
//!
//! 1. Stop accepting (drop this worker's copy of each listener: the master
//!    and the other workers keep the socket and its queue; leave the
//!    accept-balance table, so nobody defers to this worker) and answer every
//!    HTTP/1 request with `Connection: close`; HTTP/2 connections get GOAWAY
//!    (see the `http2` module for which).
//!    Idle keep-alive connections stay open, so that each client's next
//!    request is answered and its connection closes after it. This lasts
//!    until no connection is open, the grace ends, or the master hurries the
//!    drain (a reload storm).
//! 2. Idle connections close (never while a request is waiting in them),
//!    connections still sending their headers are dropped, requests in
//!    flight finish; all bounded by the drain deadline.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, info, warn};

use crate::accept::{Accepted, Acceptor, Stream};
use crate::app::{Handler, ResponseBody};
use crate::body::{Body, InFlightBody};
use crate::connection::{
    self, Destination, DrainPhase, Ended, Leaving, Limits, Resume, Tracked, Tracker,
};
use crate::deadline;
use crate::drain::Drain;
use crate::http2;
use crate::sniff::{sniff, Protocol};
use baton_protocol::balance::{AcceptShare, OpenConnection};

pub use crate::connection::LINGER_FOR;
pub use crate::http2::IDLE_MOMENT_WAIT;
pub use crate::sniff::HTTP2_PREFACE;

/// How long a worker that ran out of descriptors stops accepting (nginx
/// waits 500 ms too): its pending connections wait for other workers, and
/// its own connections get the chance to close.
const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_millis(500);

/// A server's client limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerOptions {
    pub limits: Limits,
    /// HTTP/2: ping after this long without a frame, close when the ping
    /// is not answered within as long.
    pub http2_ping: Duration,
    /// How HTTP/2 connections are sent GOAWAY.
    pub http2_drain: http2::Drain,
    /// Closes linger (but for a fault injected on purpose).
    pub linger: bool,
    /// The longest pause between two chunks of a request body.
    pub body_timeout: Duration,
}

/// What a server counts, for the master's `status` and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted (or given to [`Server::serve_connection`]).
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Requests that reached the application.
    pub requests: AtomicU64,
    /// Idle connections handed to a newer worker while draining.
    pub handed_over: AtomicU64,
    /// Connections a draining worker handed to this one.
    pub received: AtomicU64,
    /// Connections meant to move that nobody took: served on here.
    pub fell_back: AtomicU64,
    /// Times an idle connection left hyper to wait parked (see
    /// [`connection::PARK_AFTER`]).
    pub parked: AtomicU64,
}

/// A connection that left hyper at its idle moment to move to a newer
/// worker, on its way to the master. Its socket is open and unread; this
/// worker keeps it (and keeps draining) until [`Moved::settle`] says
/// whether another worker took it.
pub struct Moved {
    /// The connection's socket.
    pub fd: OwnedFd,
    /// Where its idle limit stands.
    pub resume: Resume,
    shared: Arc<Shared>,
}

impl Moved {
    /// Another worker serves it now (`taken`): close this copy, which
    /// leaves the connection open. Or nobody could take it: serve it on
    /// here, to be closed by the drain as any other.
    pub fn settle(self, taken: bool) {
        let Moved { fd, resume, shared } = self;
        if taken {
            shared.counters.handed_over.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shared.counters.fell_back.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = shared.serve_fd(fd, Some(resume), false) {
            debug!(cause = %e, "a returned connection could not be served");
        }
    }
}

impl std::fmt::Debug for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moved")
            .field("fd", &self.fd)
            .field("resume", &self.resume)
            .finish()
    }
}

/// Counts a connection as open until dropped (with its place in the
/// balance table).
struct OpenGuard {
    counters: Arc<Counters>,
    _balance: Option<OpenConnection>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running HTTP server over one or more listeners.
pub struct Server {
    counters: Arc<Counters>,
    /// Tells the accept loops to stop and every connection the drain phase.
    drain_tx: Arc<watch::Sender<DrainPhase>>,
    accept_loops: Vec<JoinHandle<()>>,
    /// What connections given to [`Server::serve_connection`] share with
    /// the accept loops' connections.
    shared: Arc<Shared>,
    /// Resolves to `None` once every holder of [`Shared`] is gone: the
    /// server, the accept loops and every connection task.
    closed: mpsc::Receiver<()>,
    /// Connections leaving to move, for whoever hands them over.
    moves: Option<mpsc::UnboundedReceiver<Moved>>,
}

/// Serves connections handed to this worker, for as long as the server
/// has anything open.
#[derive(Clone)]
pub struct ServerHandle {
    shared: std::sync::Weak<Shared>,
}

impl ServerHandle {
    /// The server, while it has anything open.
    fn shared(&self) -> std::io::Result<Arc<Shared>> {
        self.shared
            .upgrade()
            .ok_or_else(|| std::io::Error::other("the server has drained"))
    }

    /// Serves `fd`, a connected TCP or Unix stream socket another worker
    /// served, as its own, its idle limit going on from `resume`.
    pub fn adopt(&self, fd: OwnedFd, resume: Resume) -> std::io::Result<()> {
        let shared = self.shared()?;
        shared.serve_fd(fd, Some(resume), true)?;
        shared.counters.received.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Serves `fd`, one end of a stream socketpair, as a connection just
    /// accepted: the master's health probe.
    pub fn probe(&self, fd: OwnedFd) -> std::io::Result<()> {
        let shared = self.shared()?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        serve(
            tokio::net::UnixStream::from_std(stream)?,
            None,
            &shared,
            None,
            None,
        );
        Ok(())
    }
}

/// What every accept loop shares.
struct Shared {
    http1: http1::Builder,
    handler: Handler,
    counters: Arc<Counters>,
    limits: Limits,
    /// HTTP/2's keep-alive PING interval and timeout.
    http2_ping: Duration,
    http2_drain: http2::Drain,
    linger: bool,
    body_timeout: Duration,
    drain_rx: watch::Receiver<DrainPhase>,
    /// Never sent on: each accept loop and connection task holds `Shared`,
    /// and each lingering socket a clone of this sender, so the drain knows
    /// every connection closed when the last of them drops it.
    alive: mpsc::Sender<()>,
    /// Set when a drain hands idle connections over rather than closing
    /// them.
    handover: Arc<AtomicBool>,
    /// Where connections leaving to move go.
    moves: mpsc::UnboundedSender<Moved>,
    /// This worker's place in the balance table, for connections it did
    /// not accept itself.
    balance: std::sync::OnceLock<Arc<AcceptShare>>,
}

impl Shared {
    /// Serves a connection given as a descriptor (handed over from
    /// another worker, or back to this one), `idle` for so long.
    fn serve_fd(
        self: &Arc<Self>,
        fd: OwnedFd,
        resumed: Option<Resume>,
        movable: bool,
    ) -> std::io::Result<()> {
        let open = self.balance.get().map(|share| share.opened());
        match Socket::new(fd)? {
            Socket::Unix(stream) => {
                serve(stream, open, self, resumed, movable.then_some(unix_into_fd))
            }
            Socket::Tcp(stream) => {
                serve(stream, open, self, resumed, movable.then_some(tcp_into_fd))
            }
        }
        Ok(())
    }
}

fn tcp_into_fd(stream: tokio::net::TcpStream) -> std::io::Result<OwnedFd> {
    Ok(stream.into_std()?.into())
}

fn unix_into_fd(stream: tokio::net::UnixStream) -> std::io::Result<OwnedFd> {
    Ok(stream.into_std()?.into())
}

impl Server {
    /// Starts accepting on every listener, answering with `handler`; `drain`
    /// is the sender behind every [`Drain`] the application holds. Returns
    /// once each listener is registered, so the caller may report ready.
    pub(crate) fn start(
        acceptors: Vec<Acceptor>,
        handler: Handler,
        options: ServerOptions,
        drain: Arc<watch::Sender<DrainPhase>>,
    ) -> Self {
        let drain_rx = drain.subscribe();
        let mut http1 = http1::Builder::new();
        // Header and idle time limits are the connection task's, which
        // tells them apart (hyper's header timer also runs while idle).
        http1.timer(TokioTimer::new()).header_read_timeout(None);
        let (alive, closed) = mpsc::channel(1);
        let (moves, moved) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            http1,
            handler,
            counters: counters.clone(),
            limits: options.limits,
            http2_ping: options.http2_ping,
            http2_drain: options.http2_drain,
            linger: options.linger,
            body_timeout: options.body_timeout,
            drain_rx,
            alive,
            handover: Arc::default(),
            moves,
            balance: std::sync::OnceLock::new(),
        });
        let mut server = Server {
            counters,
            drain_tx: drain,
            accept_loops: Vec::new(),
            shared,
            closed,
            moves: Some(moved),
        };
        server.accept(acceptors);
        tokio::spawn(crate::memory::give_back_after_parks(Arc::downgrade(
            &server.counters,
        )));
        server
    }

    /// What this server counted so far.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Serves connections handed over to this worker.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// The connections that leave to move when a drain hands them over
    /// (once: the caller owns their way to the master).
    pub fn take_moves(&mut self) -> Option<mpsc::UnboundedReceiver<Moved>> {
        self.moves.take()
    }

    /// Starts accepting on more listeners (on those of a worker that held
    /// its accepts until its health probes passed).
    pub(crate) fn accept(&mut self, acceptors: Vec<Acceptor>) {
        if let Some(share) = acceptors.iter().find_map(Acceptor::share) {
            let _ = self.shared.balance.set(share);
        }
        self.accept_loops.extend(
            acceptors
                .into_iter()
                .map(|acceptor| tokio::spawn(accept_loop(acceptor, self.shared.clone()))),
        );
    }

    /// Serves a connection that did not come from this server's listeners,
    /// as if it had just been accepted: its phases, limits and drain are
    /// those of every other connection.
    pub fn serve_connection<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve(stream, None, &self.shared, None, None);
    }

    /// Drains: see the module docs. `hurry` resolves if the master asks to
    /// end the grace early, with the time left for requests in flight.
    /// With `handover`, each idle HTTP/1 connection leaves at its next idle
    /// moment through [`Server::take_moves`] instead of waiting to close.
    /// Returns when every connection closed or moved, or at the deadline
    /// with some still open.
    pub async fn drain(
        self,
        grace: Duration,
        deadline_at: Instant,
        hurry: impl std::future::Future<Output = Duration>,
        handover: bool,
    ) {
        let mut closed = self.closed;
        self.shared.handover.store(handover, Ordering::Release);
        drop(self.shared);
        self.drain_tx.send_replace(DrainPhase::Draining);
        for accept_loop in self.accept_loops {
            let _ = accept_loop.await;
        }
        let open = || self.counters.open.load(Ordering::Relaxed);
        info!(open = open(), "draining: stopped accepting");

        let mut deadline_at = deadline_at;
        let grace_end = deadline(Instant::now(), grace).min(deadline_at);
        tokio::select! {
            _ = all_closed(&mut closed) => {}
            _ = sleep_until(grace_end) => {}
            left = hurry => {
                deadline_at = deadline_at.min(deadline(Instant::now(), left));
                info!(open = open(), "drain hurried: closing idle connections now");
            }
        }
        let after_grace = open();
        self.drain_tx.send_replace(DrainPhase::Closing);
        tokio::select! {
            _ = all_closed(&mut closed) => {}
            _ = sleep_until(deadline_at) => {
                warn!(open = open(), "drain deadline passed with connections still open");
            }
        }
        info!(
            open_after_grace = after_grace,
            accepted = self.counters.accepted.load(Ordering::Relaxed),
            requests = self.counters.requests.load(Ordering::Relaxed),
            handed_over = self.counters.handed_over.load(Ordering::Relaxed),
            fell_back = self.counters.fell_back.load(Ordering::Relaxed),
            "drained"
        );
    }
}

/// Resolves once no connection is open (and the accept loops ended).
async fn all_closed(closed: &mut mpsc::Receiver<()>) {
    while closed.recv().await.is_some() {}
}

async fn accept_loop(acceptor: Acceptor, shared: Arc<Shared>) {
    let mut drain = shared.drain_rx.clone();
    let draining = |drain: &watch::Receiver<DrainPhase>| *drain.borrow() != DrainPhase::Serving;
    while !draining(&drain) {
        let accepted = tokio::select! {
            biased;
            _ = drain.changed() => continue,
            accepted = acceptor.accept() => accepted,
        };
        match accepted {
            Ok(Accepted {
                stream: Stream::Tcp(stream),
                open,
            }) => serve(stream, open, &shared, None, Some(tcp_into_fd)),
            Ok(Accepted {
                stream: Stream::Unix(stream),
                open,
            }) => serve(stream, open, &shared, None, Some(unix_into_fd)),
            Err(e) if out_of_descriptors(&e) => {
                // One line per pause, not one per attempt. The pending
                // connection stays queued for the other workers.
                warn!(
                    cause = %e,
                    pause_ms = OUT_OF_DESCRIPTORS_PAUSE.as_millis() as u64,
                    open = shared.counters.open.load(Ordering::Relaxed),
                    "out of descriptors: not accepting for a while"
                );
                acceptor.stop();
                tokio::select! {
                    _ = drain.changed() => {}
                    _ = sleep(OUT_OF_DESCRIPTORS_PAUSE) => {}
                }
                acceptor.resume();
            }
            Err(e) => {
                warn!(cause = %e, "accept failed");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
    acceptor.stop();
    // Dropping `acceptor` closes this worker's descriptor only.
}

/// EMFILE, ENFILE, and the memory errors accept(2) lists with them.
fn out_of_descriptors(error: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        Errno::from_raw(error.raw_os_error().unwrap_or(0)),
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
    )
}

/// Serves one connection on its own task: one just accepted, or one that
/// another worker served, its idle limit going on from `resumed`. With `into_fd`, it can
/// move to another worker when this one drains.
fn serve<S>(
    stream: S,
    open: Option<OpenConnection>,
    shared: &Arc<Shared>,
    resumed: Option<Resume>,
    into_fd: Option<fn(S) -> std::io::Result<OwnedFd>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counters = &shared.counters;
    if resumed.is_none() {
        counters.accepted.fetch_add(1, Ordering::Relaxed);
    }
    counters.open.fetch_add(1, Ordering::Relaxed);
    let open = OpenGuard {
        counters: counters.clone(),
        _balance: open,
    };
    let alive = Some(shared.alive.clone());
    let (mut stream, tracker) = match resumed {
        Some(resume) => Tracked::resumed(stream, alive, resume),
        None => Tracked::new(stream, alive),
    };
    stream = stream.counted_by(open);
    if !shared.linger {
        stream = stream.without_linger();
    }
    if let Some(into_fd) = into_fd {
        let mover = shared.clone();
        stream = stream.movable(Box::new(move |stream, leaving: Leaving| {
            let fd = match into_fd(stream) {
                Ok(fd) => fd,
                Err(e) => return debug!(cause = %e, "a leaving connection could not be taken out"),
            };
            match leaving.destination {
                Destination::AnotherWorker => {
                    drop(leaving.open);
                    let moves = mover.moves.clone();
                    let _ = moves.send(Moved {
                        fd,
                        resume: leaving.resume,
                        shared: mover,
                    });
                }
                Destination::Park => {
                    tokio::spawn(park(fd, leaving, mover));
                }
            }
        }));
    }
    let connection = speak(stream, tracker.clone(), shared.clone());
    let shared = shared.clone();
    tokio::spawn(async move {
        let ended = connection::run(
            connection,
            tracker,
            shared.limits,
            shared.drain_rx.clone(),
            shared.handover.clone(),
        )
        .await;
        match ended {
            Ended::Closed => {}
            Ended::TimedOut => debug!("connection too slow; dropped"),
            Ended::Failed(cause) => debug!(%cause, "connection ended with an error"),
        }
    });
}

/// Holds an idle HTTP/1 connection that left hyper (see
/// [`connection::PARK_AFTER`]): only its socket, registered for reading,
/// and what counts it open. When its client sends (or closes), its idle
/// limit passes, or the worker drains, it is served again as a connection
/// moved here, its idle time going on: a request is answered, an ended
/// idle limit closes it the usual way, and a drain hands it over or closes
/// it as any other.
async fn park(fd: OwnedFd, leaving: Leaving, shared: Arc<Shared>) {
    let parked = Instant::now();
    shared.counters.parked.fetch_add(1, Ordering::Relaxed);
    let Leaving { resume, open, .. } = leaving;
    let limit = if resume.fresh {
        shared.limits.header
    } else {
        shared.limits.keepalive
    };
    let waiting = match Socket::new(fd) {
        Ok(waiting) => waiting,
        Err(e) => return debug!(cause = %e, "a parked connection could not wait"),
    };
    let mut drain = shared.drain_rx.clone();
    tokio::select! {
        _ = waiting.readable() => {}
        _ = tokio::time::sleep(limit.saturating_sub(resume.idle)) => {}
        _ = drain.wait_for(|phase| *phase != DrainPhase::Serving) => {}
    }
    let resume = Resume {
        idle: resume.idle + parked.elapsed(),
        ..resume
    };
    let served = waiting
        .into_fd()
        .and_then(|fd| shared.serve_fd(fd, Some(resume), true));
    if let Err(e) = served {
        debug!(cause = %e, "a parked connection could not be served again");
    }
    // Counted open until served again.
    drop(open);
}

/// A connection's socket given as a descriptor, TCP or Unix, registered
/// with the runtime.
enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Socket {
    fn new(fd: OwnedFd) -> std::io::Result<Self> {
        if socket2::SockRef::from(&fd).domain()? == socket2::Domain::UNIX {
            let stream = std::os::unix::net::UnixStream::from(fd);
            stream.set_nonblocking(true)?;
            Ok(Socket::Unix(tokio::net::UnixStream::from_std(stream)?))
        } else {
            let stream = std::net::TcpStream::from(fd);
            stream.set_nonblocking(true)?;
            Ok(Socket::Tcp(tokio::net::TcpStream::from_std(stream)?))
        }
    }

    /// Resolves when the socket has bytes to read, or its client closed.
    async fn readable(&self) -> std::io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.readable().await,
            Socket::Unix(stream) => stream.readable().await,
        }
    }

    fn into_fd(self) -> std::io::Result<OwnedFd> {
        match self {
            Socket::Tcp(stream) => tcp_into_fd(stream),
            Socket::Unix(stream) => unix_into_fd(stream),
        }
    }
}

/// Tells HTTP/1 from HTTP/2 and serves the connection in that protocol.
async fn speak<S>(stream: S, tracker: Arc<Tracker>, shared: Arc<Shared>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (protocol, stream) = sniff(stream).await.map_err(|e| e.to_string())?;
    match protocol {
        Protocol::Http2 => {
            tracker.speaks_http2();
            let (ping, drain) = (shared.http2_ping, shared.http2_drain);
            let answer = {
                let tracker = tracker.clone();
                move |req: Request<http2::RequestBody>| {
                    let req = req.map(|body| Body::http2(body, shared.body_timeout));
                    answer(req, shared.clone(), tracker.clone())
                }
            };
            // Boxed: HTTP/2's connection state is three times the size of
            // the rest of a connection's task, which every HTTP/1
            // connection would otherwise carry and copy as it is spawned.
            Box::pin(http2::serve(stream, tracker, ping, drain, answer))
                .await
                .map_err(|e| e.to_string())
        }
        Protocol::Http1 => {
            let service = {
                let (shared, tracker) = (shared.clone(), tracker.clone());
                service_fn(move |req: Request<hyper::body::Incoming>| {
                    let req = req.map(|body| Body::http1(body, shared.body_timeout));
                    let answered = answer(req, shared.clone(), tracker.clone());
                    async move { Ok::<_, std::convert::Infallible>(answered.await) }
                })
            };
            // An upgraded connection (a WebSocket) leaves with the
            // application's handler, its socket still counted open.
            shared
                .http1
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// Whether an HTTP/1 request says its client closes the connection after
/// the response: `Connection: close`, or HTTP/1.0 without `keep-alive`.
fn client_closes<B>(req: &Request<B>) -> bool {
    let has = |token: &str| {
        req.headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if req.version() <= hyper::Version::HTTP_10 {
        !has("keep-alive")
    } else {
        has("close")
    }
}

/// Answers one request, HTTP/1 or HTTP/2, with the application. The
/// request counts as in flight from the call, when hyper hands it over, not
/// from the answer's first poll: in between, hyper looks at the socket
/// again, and a connection whose next request was already read (pipelined)
/// must not look idle then, or a drain would end it under that request.
fn answer(
    mut req: Request<Body>,
    shared: Arc<Shared>,
    tracker: Arc<Tracker>,
) -> impl std::future::Future<Output = Response<InFlightBody<ResponseBody>>> {
    let in_flight = tracker.request();
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let http1 = req.version() < hyper::Version::HTTP_2;
    let no_body = http_body::Body::is_end_stream(req.body());
    tracker.body_expected(!no_body);
    tracker.client_closes(http1 && no_body && client_closes(&req));
    req.extensions_mut()
        .insert(Drain::new(shared.drain_rx.clone()));
    async move {
        let mut response = (shared.handler)(req).await;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection is the application's from now on; its headers
            // are the handshake's own.
            tracker.upgraded();
            return response.map(|body| InFlightBody::new(body, None));
        }
        // Draining, or this connection is closing: the client must not send
        // another request on it (HTTP/2 has GOAWAY for that), unless it moves
        // to a newer worker after this response, unseen by the client.
        let draining = *shared.drain_rx.borrow() != DrainPhase::Serving;
        let moving = draining && shared.handover.load(Ordering::Acquire) && tracker.ask_move();
        if http1 && ((draining && !moving) || tracker.closing()) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response.map(|body| InFlightBody::new(body, Some(in_flight)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: hyper::Version, connection: &[&str]) -> Request<()> {
        let mut builder = Request::builder().version(version);
        for value in connection {
            builder = builder.header(CONNECTION, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_client_closes_when_it_says_so_or_speaks_http_1_0_without_keep_alive() {
        const HTTP_10: hyper::Version = hyper::Version::HTTP_10;
        const HTTP_11: hyper::Version = hyper::Version::HTTP_11;
        assert!(client_closes(&request(HTTP_11, &["close"])));
        assert!(client_closes(&request(HTTP_11, &["Upgrade, Close"])));
        assert!(client_closes(&request(HTTP_11, &["foo", "close"])));
        assert!(!client_closes(&request(HTTP_11, &[])));
        assert!(!client_closes(&request(HTTP_11, &["keep-alive"])));
        assert!(!client_closes(&request(HTTP_11, &["closed"])));
        assert!(client_closes(&request(HTTP_10, &[])));
        assert!(!client_closes(&request(HTTP_10, &["Keep-Alive"])));
    }
}
