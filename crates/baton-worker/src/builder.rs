//! [`Builder`]: the server's limits, and where it runs.

use std::sync::Arc;
use std::time::Duration;

use baton_protocol::ClientLimits;
use tokio::sync::watch;

use crate::app::{self, App};
use crate::connection::{DrainPhase, Limits};
use crate::drain::Drain;
use crate::error::Error;
use crate::handoff::{NamedListener, ReceivedListener, Welcome};
use crate::http2;
use crate::server::{Server, ServerOptions};
use crate::worker;

const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HTTP2_PING: Duration = Duration::from_secs(20);

/// The environment variable that tells a program it runs under baton as a
/// native worker, naming the descriptor of its handoff socket.
pub const HANDOFF_ENV: &str = "BATON_HANDOFF_FD";

/// Configures and starts a server. Every limit has the default of baton's
/// built-in worker. Under `baton serve --native`, a client limit the
/// application does not set here is the master's (`--header-timeout`,
/// `--keepalive-timeout`, `--body-timeout`, `--http2-ping`); one it sets is
/// its own.
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// use http::{Request, Response};
///
/// # async fn example() -> Result<(), baton_worker::Error> {
/// let app = tower::service_fn(|_: Request<baton_worker::Body>| async {
///     Ok::<_, Infallible>(Response::new(String::from("hello\n")))
/// });
/// baton_worker::Builder::new()
///     .keepalive_timeout(Duration::from_secs(30))
///     .header_timeout(Duration::from_secs(5))
///     .serve(app)
///     .await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    /// The client limits; `None` where the application left the default.
    pub(crate) header_timeout: Option<Duration>,
    pub(crate) keepalive_timeout: Option<Duration>,
    pub(crate) body_timeout: Option<Duration>,
    pub(crate) http2_ping: Option<Duration>,
    pub(crate) drain_grace: Duration,
    pub(crate) drain_timeout: Duration,
    /// `None` where the application left the default.
    pub(crate) threads: Option<usize>,
    pub(crate) address: String,
    pub(crate) balanced: bool,
    pub(crate) fault: Option<Fault>,
    pub(crate) drain: Arc<watch::Sender<DrainPhase>>,
}

/// Deliberate faults, for baton's own tests to prove that they notice what
/// each property is for. Not part of the API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// On drain, drop everything and return at once, like a naive server.
    ExitOnDrain,
    /// Drain every HTTP/2 connection with the two-step GOAWAY at once.
    TwoStepGoaway,
    /// Drain every HTTP/2 connection with one GOAWAY at once.
    ImmediateGoaway,
    /// Close connections without the lingering read.
    NoLinger,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A server with the built-in worker's limits.
    pub fn new() -> Self {
        Builder {
            header_timeout: None,
            keepalive_timeout: None,
            body_timeout: None,
            http2_ping: None,
            drain_grace: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(30),
            threads: None,
            address: "127.0.0.1:8080".into(),
            balanced: true,
            fault: None,
            drain: Arc::new(watch::channel(DrainPhase::Serving).0),
        }
    }

    /// How long a client may take to send a request's headers: from the
    /// connection's start, or from its first byte after an idle keep-alive
    /// pause. Default 10 s.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = Some(timeout);
        self
    }

    /// How long a keep-alive connection (HTTP/1 or HTTP/2) may sit idle
    /// between requests. Default 75 s.
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive_timeout = Some(timeout);
        self
    }

    /// How long a request body may pause between two chunks; reading it
    /// then fails with an error for which
    /// [`BodyError::is_timeout`](crate::BodyError::is_timeout) is true.
    /// Default 60 s.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = Some(timeout);
        self
    }

    /// HTTP/2: ping the client after this long without a frame from it, and
    /// close the connection if the ping is not answered within as long.
    /// Default 20 s.
    pub fn http2_ping(mut self, interval: Duration) -> Self {
        self.http2_ping = Some(interval);
        self
    }

    /// While draining, how long an idle keep-alive connection stays open
    /// for its client's next request (answered with `Connection: close`).
    /// Under baton the master's `--drain-grace` wins. Default 20 s.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// Run on its own, how long a drain started by SIGTERM or SIGINT may
    /// take before [`serve`](Builder::serve) returns with connections still
    /// open. Under baton the master's `--drain-timeout` applies. Default
    /// 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The threads of the runtime [`run`](Builder::run) builds. Default:
    /// under baton, the master's `--threads` (one unless told: baton runs
    /// one worker process per core); on its own, one.
    /// [`serve`](Builder::serve) runs on the caller's runtime instead.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// Run on its own, where to listen when no socket was passed
    /// (`LISTEN_FDS`) and `BATON_LISTEN` is not set. Default
    /// `127.0.0.1:8080`.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Under baton, whether new connections are spread evenly over the
    /// workers through the master's accept-balance table (the default), or
    /// taken by whichever worker wakes first.
    pub fn balanced_accept(mut self, balanced: bool) -> Self {
        self.balanced = balanced;
        self
    }

    /// Breaks a property on purpose (baton's tests).
    #[doc(hidden)]
    pub fn fault(mut self, fault: Option<Fault>) -> Self {
        self.fault = fault;
        self
    }

    /// A handle that tells when this server starts to drain, for the
    /// application's own tasks.
    ///
    /// ```no_run
    /// let server = baton_worker::Builder::new();
    /// let drain = server.drain();
    /// tokio::spawn(async move {
    ///     drain.started().await;
    ///     // stop the background jobs
    /// });
    /// ```
    pub fn drain(&self) -> Drain {
        Drain::new(self.drain.subscribe())
    }

    /// Serves `app` until it has drained, on the caller's tokio runtime.
    ///
    /// Under `baton serve --native -- PROGRAM` (the environment names the
    /// handoff socket, [`HANDOFF_ENV`]) it takes its listeners from the
    /// master, accepts its balanced share, reports to the master every
    /// second, and drains when told. Run on its own, it serves `LISTEN_FDS`,
    /// else `BATON_LISTEN`, else [`address`](Builder::address), and drains
    /// on SIGTERM or SIGINT (a second one ends the grace at once).
    ///
    /// Returns once every connection closed (or the drain timed out): code
    /// after it is the application's graceful-stop hook.
    pub async fn serve<S: App>(self, app: S) -> Result<(), Error> {
        let handler = app::handler(app);
        match std::env::var(HANDOFF_ENV) {
            Ok(fd) => {
                let welcome = Welcome::receive_named(&fd)?;
                worker::under_master(self, welcome, handler).await
            }
            Err(_) => worker::alone(self, handler).await,
        }
    }

    /// Serves `app` on a listener bound by the caller (a test's port 0, a
    /// socket set up by hand), on its own: it drains on SIGTERM or SIGINT,
    /// as [`serve`](Builder::serve) does without baton.
    ///
    /// ```no_run
    /// # use std::convert::Infallible;
    /// # use http::{Request, Response};
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let app = tower::service_fn(|_: Request<baton_worker::Body>| async {
    ///     Ok::<_, Infallible>(Response::new(String::from("hello\n")))
    /// });
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// println!("listening on {}", listener.local_addr()?);
    /// baton_worker::Builder::new().serve_listener(listener, app).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve_listener<S: App>(
        self,
        listener: std::net::TcpListener,
        app: S,
    ) -> Result<(), Error> {
        let name = listener
            .local_addr()
            .map_or_else(|_| "listener".to_owned(), |a| a.to_string());
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::BadListener {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        let listener = NamedListener {
            name,
            listener: ReceivedListener::Tcp(listener),
        };
        worker::alone_on(self, vec![listener], app::handler(app)).await
    }

    /// Serves `app` under the master that sent `welcome` (baton's built-in
    /// worker, which reads the hello before it builds its runtime).
    #[doc(hidden)]
    pub async fn serve_welcome<S: App>(self, welcome: Welcome, app: S) -> Result<(), Error> {
        worker::under_master(self, welcome, app::handler(app)).await
    }

    /// Builds a tokio runtime of [`threads`](Builder::threads) and
    /// [`serve`](Builder::serve)s `app` on it, for a `main` without
    /// `#[tokio::main]`. Under baton the master's hello is read first, so
    /// that its `--threads` sizes the runtime.
    ///
    /// ```no_run
    /// # use std::convert::Infallible;
    /// # use http::{Request, Response};
    /// fn main() -> Result<(), baton_worker::Error> {
    ///     let app = tower::service_fn(|_: Request<baton_worker::Body>| async {
    ///         Ok::<_, Infallible>(Response::new(String::from("hello\n")))
    ///     });
    ///     baton_worker::Builder::new().run(app)
    /// }
    /// ```
    pub fn run<S: App>(self, app: S) -> Result<(), Error> {
        match std::env::var(HANDOFF_ENV) {
            Ok(fd) => {
                let welcome = Welcome::receive_named(&fd)?;
                let threads = self
                    .threads
                    .or_else(|| welcome.threads().map(usize::from))
                    .unwrap_or(1);
                runtime(threads)?.block_on(self.serve_welcome(welcome, app))
            }
            Err(_) => runtime(self.threads.unwrap_or(1))?.block_on(self.serve(app)),
        }
    }

    /// Starts a server on no listener, for connections given to
    /// [`Server::serve_connection`] (baton's tests of its built-in worker).
    #[doc(hidden)]
    pub fn start<S: App>(&self, app: S) -> Server {
        Server::start(
            Vec::new(),
            app::handler(app),
            self.options(),
            self.drain.clone(),
        )
    }

    /// The master's client limits, for those the application left unset.
    pub(crate) fn under_limits(mut self, limits: Option<ClientLimits>) -> Self {
        if let Some(limits) = limits {
            let ms = Duration::from_millis;
            self.header_timeout
                .get_or_insert(ms(limits.header_timeout_ms));
            self.keepalive_timeout
                .get_or_insert(ms(limits.keepalive_timeout_ms));
            self.body_timeout.get_or_insert(ms(limits.body_timeout_ms));
            self.http2_ping.get_or_insert(ms(limits.http2_ping_ms));
        }
        self
    }

    pub(crate) fn options(&self) -> ServerOptions {
        ServerOptions {
            limits: Limits {
                header: self.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT),
                keepalive: self.keepalive_timeout.unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT),
            },
            http2_ping: self.http2_ping.unwrap_or(DEFAULT_HTTP2_PING),
            http2_drain: match self.fault {
                Some(Fault::TwoStepGoaway) => http2::Drain::TwoStep,
                Some(Fault::ImmediateGoaway) => http2::Drain::Immediate,
                _ => http2::Drain::AtAnIdleMoment,
            },
            linger: self.fault != Some(Fault::NoLinger),
            body_timeout: self.body_timeout.unwrap_or(DEFAULT_BODY_TIMEOUT),
        }
    }
}

/// A runtime of `threads` threads (the current thread alone for one).
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, Error> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(Error::Runtime)
}
