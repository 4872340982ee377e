//! HTTP load that counts every request's outcome by kind: ok, refused,
//! reset, timeout, early EOF, bad status. The zero-downtime tests (and the
//! check) drive a server with it while workers crash and reload.
//!
//! Clients are of three kinds: one that opens a new connection per request,
//! one that keeps its connection alive (optionally idling between requests,
//! as browsers and pools do) and honours `Connection: close`, and one that
//! uploads a body on a keep-alive connection, all HTTP/1 through hyper's
//! client connection API; and [`h2c`]'s, many HTTP/2 streams on one
//! connection, through h2.

pub mod h2c;
pub mod pipeline;
pub mod websocket;

use std::collections::BTreeMap;
use std::error::Error as _;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONNECTION, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout};

/// How one client behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// A new connection per request (`Connection: close`).
    NewConnection,
    /// One connection reused until the server closes it; thinks a random
    /// time from `min_idle` to `max_idle` before each request (the first
    /// one too, so that many thinking clients do not all arrive at once).
    KeepAlive {
        min_idle: Duration,
        max_idle: Duration,
    },
    /// POSTs of `body_bytes` on a reused connection.
    Upload { body_bytes: usize },
    /// GETs of `/stream?seconds=N` (baton's server-sent event stream) on a
    /// reused connection, each read to its end: a stream the server ends
    /// cleanly (as a draining baton does) is answered, one cut is not.
    Stream { seconds: u64 },
    /// GETs of `/download?bytes=N&seconds=S` (baton's chunked download) on
    /// a reused connection: all `bytes` must come.
    Download { bytes: u64, seconds: u64 },
    /// 2 to 8 GETs at a time on a keep-alive connection, pipelined (see
    /// [`pipeline`]).
    Pipeline,
    /// POSTs of `body_bytes` sent in 64 KiB chunks paced evenly `over` a
    /// while, so that each spans reloads.
    SlowUpload { body_bytes: usize, over: Duration },
    /// HTTP/2 with prior knowledge: `streams` concurrent streams on one
    /// connection (see [`h2c`]).
    H2c { streams: u16 },
    /// One connection reused at the moments a drain is likeliest to race:
    /// within 50 ms of a reload's start (as its workers are told to drain),
    /// at a random point of the drain's `grace` from a reload's start, or,
    /// when `keepalive` is known, 100 to 300 ms before the server's
    /// keep-alive timeout: the last moments a server must still answer.
    /// After the grace or at the timeout itself, the server's close races
    /// the request on any server (clients retry idempotent requests there,
    /// RFC 9112 §9.3.1). Each idle pause picks one of them at random.
    IdleReuse {
        grace: Duration,
        keepalive: Option<Duration>,
    },
    /// A WebSocket echoing a message every 10 to 50 ms (see [`websocket`]).
    Websocket,
}

impl ClientMode {
    /// What reports call it.
    pub fn name(&self) -> &'static str {
        match self {
            ClientMode::NewConnection => "new-connection",
            ClientMode::KeepAlive { .. } => "keep-alive",
            ClientMode::Upload { .. } => "upload",
            ClientMode::H2c { .. } => "h2c",
            ClientMode::IdleReuse { .. } => "idle-reuse",
            ClientMode::SlowUpload { .. } => "slow-upload",
            ClientMode::Pipeline => "pipeline",
            ClientMode::Stream { .. } => "stream",
            ClientMode::Download { .. } => "download",
            ClientMode::Websocket => "websocket",
        }
    }
}

/// The requests of one kind of client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeCounts {
    pub attempted: u64,
    pub ok: u64,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub target: SocketAddr,
    /// The `Host` header sent.
    pub host: String,
    pub path: String,
    pub clients: Vec<ClientMode>,
    /// Each client stops after this long.
    pub duration: Duration,
    /// Each client stops after this many requests, if set.
    pub requests_per_client: Option<u64>,
    /// Connect, send and read the whole response within this, or it is a timeout.
    pub request_timeout: Duration,
    /// Live counts, for a progress line.
    pub progress: Arc<Progress>,
}

impl ClientMode {
    /// A keep-alive client that sends its next request as soon as it has
    /// the answer to the last.
    pub const BUSY: ClientMode = ClientMode::KeepAlive {
        min_idle: Duration::ZERO,
        max_idle: Duration::ZERO,
    };

    /// A keep-alive client that thinks up to `max_idle` between requests.
    pub const fn thinking(max_idle: Duration) -> ClientMode {
        ClientMode::KeepAlive {
            min_idle: Duration::ZERO,
            max_idle,
        }
    }
}

impl LoadPlan {
    pub fn new(target: SocketAddr, clients: Vec<ClientMode>, duration: Duration) -> Self {
        LoadPlan {
            target,
            host: target.to_string(),
            path: "/".to_owned(),
            clients,
            duration,
            requests_per_client: None,
            request_timeout: Duration::from_secs(10),
            progress: Arc::default(),
        }
    }
}

/// Counters that a progress display can read while the load runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub attempted: AtomicU64,
    pub failed: AtomicU64,
    /// Set to end the load before its duration: each client stops after
    /// its request in hand.
    pub stopped: std::sync::atomic::AtomicBool,
    /// Told each time a reload starts.
    pub reload_started: tokio::sync::Notify,
}

impl Progress {
    /// Requests answered so far.
    pub fn succeeded(&self) -> u64 {
        self.attempted
            .load(Ordering::Relaxed)
            .saturating_sub(self.failed.load(Ordering::Relaxed))
    }

    /// Ends the load early (see [`Progress::stopped`]).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// One successful request: when it started and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Microseconds from the start of the load.
    pub start_us: u32,
    pub latency_us: u32,
}

/// The most samples a run keeps (8 bytes each); past that, latency is still
/// counted in the overall histogram but not in the timeline.
pub const MAX_SAMPLES: usize = 32 << 20;

/// Kinds of failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// The connection was refused: nothing listened.
    Refused,
    /// The connection was reset.
    Reset,
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection closed before a complete response.
    Eof,
    /// A response other than 200.
    BadStatus,
    /// Anything else (a malformed response, say).
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FailureKind::Refused => "refused",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::Eof => "eof",
            FailureKind::BadStatus => "bad_status",
            FailureKind::Other => "other",
        };
        f.write_str(name)
    }
}

/// One failed request.
#[derive(Debug, Clone)]
pub struct FailedRequest {
    pub kind: FailureKind,
    /// The client that sent it.
    pub mode: ClientMode,
    pub started: Instant,
    pub ended: Instant,
    /// The worker that served the connection before, when it was reused.
    pub worker_pid: Option<u32>,
    pub detail: String,
}

impl FailedRequest {
    /// Whether the death of worker `pid`, sent SIGKILL at `sent` and seen
    /// dead at `dead`, explains this failure: a reset or early EOF on a
    /// connection that worker had served, or on one in flight while it died
    /// (a worker may still accept between the signal and its death). A
    /// refused connection or a timeout is never explained by a kill.
    pub fn explained_by_kill(&self, pid: u32, sent: Instant, dead: Instant) -> bool {
        matches!(self.kind, FailureKind::Reset | FailureKind::Eof)
            && (self.worker_pid == Some(pid) || (self.started <= dead && sent <= self.ended))
    }
}

/// Everything a load run observed.
#[derive(Debug)]
pub struct LoadReport {
    pub attempted: u64,
    pub ok: u64,
    pub failures: Vec<FailedRequest>,
    /// Requests answered, by the worker pid named in the response.
    pub by_pid: BTreeMap<u32, u64>,
    /// Latency of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Every successful request, up to [`MAX_SAMPLES`], for timelines and
    /// for latency inside and outside reload windows.
    pub samples: Vec<Sample>,
    /// Successful requests beyond [`MAX_SAMPLES`].
    pub samples_dropped: u64,
    /// When the load started: `Sample::start_us` counts from here.
    pub started: Instant,
    pub elapsed: Duration,
    /// Concurrent clients that ran.
    pub clients: usize,
    /// Requests by the kind of client that sent them ([`ClientMode::name`]).
    pub by_mode: BTreeMap<&'static str, ModeCounts>,
    /// HTTP/2 streams the server did not process, sent again (not failures).
    pub refused_retried: u64,
    /// GETs sent again after their reused HTTP/1 connection closed before
    /// answering (not failures: RFC 9112 §9.3.1, and clients do).
    pub resent_after_close: u64,
    /// Connections the HTTP/1 clients that keep theirs (all but
    /// [`ClientMode::NewConnection`]) opened beyond their first: each a
    /// handshake the server's closes cost a client.
    pub reconnects: u64,
    /// How the server ended the HTTP/2 connections it closed.
    pub goaways: h2c::GoawaySequences,
    /// How the server ended the WebSockets it closed.
    pub websocket_closes: websocket::Closes,
}

impl Default for LoadReport {
    fn default() -> Self {
        LoadReport {
            attempted: 0,
            ok: 0,
            failures: Vec::new(),
            by_pid: BTreeMap::new(),
            latency_us: Histogram::new(3).expect("3 significant figures is valid"),
            samples: Vec::new(),
            samples_dropped: 0,
            started: Instant::now(),
            elapsed: Duration::ZERO,
            clients: 0,
            by_mode: BTreeMap::new(),
            refused_retried: 0,
            resent_after_close: 0,
            reconnects: 0,
            goaways: h2c::GoawaySequences::default(),
            websocket_closes: websocket::Closes::default(),
        }
    }
}

impl LoadReport {
    pub fn count(&self, kind: FailureKind) -> usize {
        self.failures.iter().filter(|f| f.kind == kind).count()
    }

    pub fn requests_per_second(&self) -> f64 {
        self.attempted as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// This report, as one client of `mode` made it: its requests counted
    /// under the mode's name too.
    fn of_mode(mut self, mode: ClientMode) -> Self {
        let counts = ModeCounts {
            attempted: self.attempted,
            ok: self.ok,
        };
        self.by_mode.insert(mode.name(), counts);
        self
    }

    /// Counts one request's outcome.
    fn record(&mut self, attempt: Attempt, outcome: Outcome, progress: &Progress) {
        self.attempted += 1;
        match outcome {
            Ok(pid) => {
                self.ok += 1;
                if let Some(pid) = pid {
                    *self.by_pid.entry(pid).or_default() += 1;
                }
                // A paced upload or a stream lasts as long as it is meant
                // to: its time says nothing of the server's latency.
                if matches!(
                    attempt.mode,
                    ClientMode::SlowUpload { .. }
                        | ClientMode::Stream { .. }
                        | ClientMode::Download { .. }
                ) {
                    return;
                }
                let latency_us = attempt.started.elapsed().as_micros() as u64;
                let _ = self.latency_us.record(latency_us);
                if self.samples.len() < attempt.sample_cap {
                    self.samples.push(Sample {
                        start_us: attempt.started.duration_since(attempt.epoch).as_micros() as u32,
                        latency_us: latency_us.min(u64::from(u32::MAX)) as u32,
                    });
                } else {
                    self.samples_dropped += 1;
                }
            }
            Err((kind, detail)) => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                self.failures.push(FailedRequest {
                    kind,
                    mode: attempt.mode,
                    started: attempt.started,
                    ended: Instant::now(),
                    worker_pid: attempt.worker_pid,
                    detail,
                });
            }
        }
    }

    fn merge(&mut self, other: LoadReport) {
        self.attempted += other.attempted;
        self.ok += other.ok;
        self.failures.extend(other.failures);
        for (pid, n) in other.by_pid {
            *self.by_pid.entry(pid).or_default() += n;
        }
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of one configuration merge");
        self.samples.extend(other.samples);
        self.samples_dropped += other.samples_dropped;
        for (mode, counts) in other.by_mode {
            let ours = self.by_mode.entry(mode).or_default();
            ours.attempted += counts.attempted;
            ours.ok += counts.ok;
        }
        self.refused_retried += other.refused_retried;
        self.resent_after_close += other.resent_after_close;
        self.reconnects += other.reconnects;
        self.goaways.merge(other.goaways);
        self.websocket_closes.merge(other.websocket_closes);
    }

    /// Latency histograms (µs) of the requests that started inside one of
    /// `windows`, and of the others. Started, not overlapped: a request
    /// overlaps a window for the window's length plus its own, so counting
    /// overlaps would favour slow requests (one of 30 ms overlaps a 15 ms
    /// reload three times as often as one of 0.3 ms), and a stall nothing
    /// to do with the reload would count for it.
    pub fn latency_split(
        &self,
        windows: &[(Instant, Instant)],
    ) -> (Histogram<u64>, Histogram<u64>) {
        let to_us = |t: Instant| t.saturating_duration_since(self.started).as_micros() as u64;
        let windows: Vec<(u64, u64)> = windows.iter().map(|&(a, b)| (to_us(a), to_us(b))).collect();
        let mut inside = Histogram::new(3).expect("valid");
        let mut outside = Histogram::new(3).expect("valid");
        for sample in &self.samples {
            let start = u64::from(sample.start_us);
            let started_inside = windows.iter().any(|&(a, b)| a <= start && start <= b);
            let histogram = if started_inside {
                &mut inside
            } else {
                &mut outside
            };
            let _ = histogram.record(u64::from(sample.latency_us));
        }
        (inside, outside)
    }

    /// Requests per bucket of `bucket` length: (ok, failed, p99 latency µs).
    pub fn timeline(&self, bucket: Duration) -> Vec<TimelineBucket> {
        let bucket_us = bucket.as_micros().max(1) as u64;
        // Whole buckets only: a last, partial one would look like a drop.
        let count = ((self.elapsed.as_micros() as u64) / bucket_us).max(1) as usize;
        let mut histograms: Vec<Histogram<u64>> = (0..count)
            .map(|_| Histogram::new(2).expect("valid"))
            .collect();
        let mut failed = vec![0u64; count];
        for sample in &self.samples {
            let index = (u64::from(sample.start_us) / bucket_us) as usize;
            if let Some(histogram) = histograms.get_mut(index) {
                let _ = histogram.record(u64::from(sample.latency_us));
            }
        }
        for failure in &self.failures {
            let at = failure
                .started
                .saturating_duration_since(self.started)
                .as_micros() as u64;
            if let Some(count) = failed.get_mut((at / bucket_us) as usize) {
                *count += 1;
            }
        }
        histograms
            .iter()
            .zip(failed)
            .enumerate()
            .map(|(i, (h, failed))| TimelineBucket {
                start: bucket.mul_f64(i as f64),
                ok: h.len(),
                failed,
                p99_us: h.value_at_quantile(0.99),
            })
            .collect()
    }
}

/// One bucket of [`LoadReport::timeline`].
#[derive(Debug, Clone, Copy)]
pub struct TimelineBucket {
    /// From the start of the load.
    pub start: Duration,
    pub ok: u64,
    pub failed: u64,
    pub p99_us: u64,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        write!(
            f,
            "{} requests in {:.1}s ({:.0}/s), {} ok, {} failed (refused {}, reset {}, timeout {}, eof {}, bad status {}, other {}); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} worker pids",
            self.attempted,
            self.elapsed.as_secs_f64(),
            self.requests_per_second(),
            self.ok,
            self.failures.len(),
            self.count(FailureKind::Refused),
            self.count(FailureKind::Reset),
            self.count(FailureKind::Timeout),
            self.count(FailureKind::Eof),
            self.count(FailureKind::BadStatus),
            self.count(FailureKind::Other),
            ms(0.5),
            ms(0.99),
            self.latency_us.max() as f64 / 1000.0,
            self.by_pid.len(),
        )
    }
}

/// Runs the plan's clients concurrently until each is done.
pub async fn run(plan: LoadPlan) -> LoadReport {
    let plan = Arc::new(plan);
    let started = Instant::now();
    let deadline = started + plan.duration;
    let sample_cap = MAX_SAMPLES / plan.clients.len().max(1);
    let clients: Vec<_> = plan
        .clients
        .iter()
        .map(|&mode| match mode {
            ClientMode::H2c { streams } => tokio::spawn(h2c::run_client(
                plan.clone(),
                streams,
                started,
                deadline,
                sample_cap,
            )),
            ClientMode::Pipeline => tokio::spawn(pipeline::run_client(
                plan.clone(),
                started,
                deadline,
                sample_cap,
            )),
            ClientMode::Websocket => tokio::spawn(websocket::run_client(
                plan.clone(),
                started,
                deadline,
                sample_cap,
            )),
            _ => tokio::spawn(run_client(
                plan.clone(),
                mode,
                started,
                deadline,
                sample_cap,
            )),
        })
        .collect();
    let mut report = LoadReport {
        started,
        clients: plan.clients.len(),
        ..LoadReport::default()
    };
    for client in clients {
        report.merge(client.await.expect("load clients do not panic"));
    }
    report.elapsed = started.elapsed();
    report
}

/// What the HTTP/1 clients send as a request body.
type RequestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A reusable connection and the worker that last answered on it.
struct Connection {
    sender: SendRequest<RequestBody>,
    worker_pid: Option<u32>,
}

async fn run_client(
    plan: Arc<LoadPlan>,
    mode: ClientMode,
    epoch: Instant,
    deadline: Instant,
    sample_cap: usize,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut connection: Option<Connection> = None;
    let mut connects = 0;
    let mut rng = fastrand::Rng::new();
    while Instant::now() < deadline
        && !plan.progress.stopped.load(Ordering::Relaxed)
        && plan
            .requests_per_client
            .is_none_or(|limit| report.attempted < limit)
    {
        let wake = match mode {
            ClientMode::KeepAlive { min_idle, max_idle } if !max_idle.is_zero() => {
                let think = if report.attempted == 0 {
                    max_idle.mul_f64(rng.f64())
                } else {
                    min_idle + max_idle.saturating_sub(min_idle).mul_f64(rng.f64())
                };
                Some(Instant::now() + think)
            }
            ClientMode::IdleReuse { grace, keepalive } if report.attempted > 0 => {
                let moment = idle_reuse_moment(&plan.progress, grace, keepalive, &mut rng);
                tokio::select! {
                    wake = moment => Some(wake),
                    _ = sleep_until(deadline.into()) => break,
                }
            }
            _ => None,
        };
        if let Some(wake) = wake {
            // A think that outlasts the run ends it.
            sleep_until(wake.min(deadline).into()).await;
            if wake >= deadline {
                break;
            }
        }
        let worker_pid = connection.as_ref().and_then(|c| c.worker_pid);
        let started = Instant::now();
        plan.progress.attempted.fetch_add(1, Ordering::Relaxed);
        let resent = &mut report.resent_after_close;
        let limit = match mode {
            ClientMode::Stream { seconds } | ClientMode::Download { seconds, .. } => {
                plan.request_timeout + Duration::from_secs(seconds)
            }
            // The answer comes once the paced body is sent.
            ClientMode::SlowUpload { over, .. } => plan.request_timeout + over,
            _ => plan.request_timeout,
        };
        let answered = timeout(
            limit,
            request(&plan, mode, &mut connection, resent, &mut connects),
        );
        let outcome = match mode {
            // A stream still going when the run ends was answered so far.
            ClientMode::Stream { .. } => tokio::select! {
                outcome = answered => outcome.unwrap_or_else(|_| Err(timed_out())),
                _ = run_over(&plan.progress, deadline) => {
                    connection = None;
                    Ok(None)
                }
            },
            _ => answered.await.unwrap_or_else(|_| Err(timed_out())),
        };
        if outcome.is_err() {
            connection = None;
        }
        let attempt = Attempt {
            mode,
            epoch,
            started,
            worker_pid,
            sample_cap,
        };
        report.record(attempt, outcome, &plan.progress);
    }
    if mode != ClientMode::NewConnection {
        report.reconnects = connects.saturating_sub(1);
    }
    report.of_mode(mode)
}

/// Resolves when the run is over: its deadline passed, or it was stopped.
async fn run_over(progress: &Progress, deadline: Instant) {
    let stopped = async {
        while !progress.stopped.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = sleep_until(deadline.into()) => {}
        _ = stopped => {}
    }
}

/// `body` as chunks of 64 KiB, spread evenly over `over`. Each chunk is
/// due at its place on one schedule that starts with the first, so that a
/// late wake-up of the client (a busy machine) does not push back every
/// chunk after it: the upload takes `over`, not `over` and the sum of its
/// delays.
fn paced(body: Bytes, over: Duration) -> RequestBody {
    const CHUNK: usize = 64 * 1024;
    let chunks = body.len().div_ceil(CHUNK).max(1);
    let pause = over / chunks as u32;
    let stream = futures::stream::unfold((body, None), move |(mut rest, due)| async move {
        if rest.is_empty() {
            return None;
        }
        let due = due.unwrap_or_else(Instant::now) + pause;
        sleep_until(due.into()).await;
        let chunk = rest.split_to(CHUNK.min(rest.len()));
        Some((Ok(hyper::body::Frame::data(chunk)), (rest, Some(due))))
    });
    http_body_util::StreamBody::new(stream).boxed()
}

/// When an `idle-reuse` client sends its next request (see
/// [`ClientMode::IdleReuse`]), its last answer having just come.
async fn idle_reuse_moment(
    progress: &Progress,
    grace: Duration,
    keepalive: Option<Duration>,
    rng: &mut fastrand::Rng,
) -> Instant {
    let answered = Instant::now();
    if let (Some(timeout), 2) = (keepalive, rng.usize(0..3)) {
        return answered + timeout.saturating_sub(Duration::from_millis(rng.u64(100..300)));
    }
    // The old workers are told to drain after the reload starts, so a
    // moment within the grace from its start is within every drain's grace.
    let within = if rng.bool() {
        Duration::from_millis(50)
    } else {
        grace.saturating_sub(Duration::from_millis(200))
    };
    // Without reloads, the grace is as long as a client waits.
    tokio::select! {
        _ = progress.reload_started.notified() => {}
        _ = tokio::time::sleep(grace) => {}
        _ = run_over(progress, answered + crate::values::DAY) => return Instant::now(),
    }
    Instant::now() + within.mul_f64(rng.f64())
}

/// A request's outcome: the pid that answered, if the body names one, or
/// why it failed.
type Outcome = Result<Option<u32>, (FailureKind, String)>;

/// What a request's outcome is counted with.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    mode: ClientMode,
    /// When the load started.
    epoch: Instant,
    started: Instant,
    /// The worker that last answered on the connection, if it was reused.
    worker_pid: Option<u32>,
    /// The most latency samples this client keeps.
    sample_cap: usize,
}

fn timed_out() -> (FailureKind, String) {
    (
        FailureKind::Timeout,
        "no complete response in time".to_owned(),
    )
}

/// One request, on the client's connection or a new one. Returns the pid that
/// answered, if the body names one.
/// `resent` counts the GETs sent again after their reused connection closed
/// before answering, `connects` the connections opened.
async fn request(
    plan: &LoadPlan,
    mode: ClientMode,
    slot: &mut Option<Connection>,
    resent: &mut u64,
    connects: &mut u64,
) -> Outcome {
    // A connection the server closed while idle is not a failure: every
    // client (and pool) notices that before reusing it.
    if let Some(connection) = slot.as_mut() {
        if connection.sender.ready().await.is_err() {
            *slot = None;
        }
    }
    let reused = slot.is_some();
    let connection = match slot {
        Some(connection) => connection,
        None => {
            *connects += 1;
            slot.insert(connect(plan.target).await?)
        }
    };
    let (method, body_bytes) = match mode {
        ClientMode::Upload { body_bytes } => (Method::POST, body_bytes),
        ClientMode::SlowUpload { body_bytes, .. } => (Method::POST, body_bytes),
        _ => (Method::GET, 0),
    };
    let body = Bytes::from(vec![b'x'; body_bytes]);
    let idempotent = method == Method::GET;
    let build = || {
        let path = match mode {
            ClientMode::Stream { seconds } => format!("/stream?seconds={seconds}"),
            ClientMode::Download { bytes, seconds } => {
                format!("/download?bytes={bytes}&seconds={seconds}")
            }
            _ => plan.path.clone(),
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .body(match mode {
                ClientMode::SlowUpload { over, .. } => paced(body.clone(), over),
                _ => Full::new(body.clone()).boxed(),
            })
            .expect("a request of valid parts");
        // The URL's authority (`check --url`'s virtual host), else the address.
        let host = HeaderValue::from_str(&plan.host)
            .or_else(|_| HeaderValue::from_str(&plan.target.to_string()))
            .expect("an address is a valid header");
        req.headers_mut().insert(HOST, host);
        if mode == ClientMode::NewConnection {
            req.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        req
    };
    let response = match connection.sender.try_send_request(build()).await {
        Ok(response) => response,
        Err(mut failed) => {
            // Sent again on a new connection, as client pools do (RFC 9112
            // §9.3.1): a request the connection closed before it was
            // written (the client had not yet noticed the server's close),
            // and a GET it closed before any answer (the server closed the
            // idle connection as the request crossed). Anything else, a
            // POST above all, fails.
            let unsent = failed.take_message().is_some();
            let error = failed.into_error();
            let closed = matches!(
                classify_hyper(&error),
                FailureKind::Eof | FailureKind::Reset
            );
            if !(reused && (unsent || (idempotent && closed))) {
                return Err((classify_hyper(&error), error.to_string()));
            }
            if !unsent {
                *resent += 1;
            }
            *connects += 1;
            let connection = slot.insert(connect(plan.target).await?);
            connection
                .sender
                .send_request(build())
                .await
                .map_err(|e| (classify_hyper(&e), e.to_string()))?
        }
    };
    let status = response.status();
    let closes = mode == ClientMode::NewConnection
        || response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| (classify_hyper(&e), e.to_string()))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err((FailureKind::BadStatus, format!("status {status}")));
    }
    // A server that says how much it received (baton's worker does) must
    // have received it all.
    let says = |text: &str| body.windows(text.len()).any(|w| w == text.as_bytes());
    if method == Method::POST && says("received ") && !says(&format!("received {body_bytes} bytes"))
    {
        let answer = String::from_utf8_lossy(&body);
        return Err((
            FailureKind::Other,
            format!("sent {body_bytes} bytes, the answer was {answer:?}"),
        ));
    }
    if let ClientMode::Download { bytes, .. } = mode {
        if body.len() as u64 != bytes {
            return Err((
                FailureKind::Eof,
                format!("a download of {bytes} bytes ended after {}", body.len()),
            ));
        }
    }
    let pid = worker_pid(&body);
    match slot {
        Some(_) if closes => *slot = None,
        Some(connection) => connection.worker_pid = pid,
        None => {}
    }
    Ok(pid)
}

async fn connect(target: SocketAddr) -> Result<Connection, (FailureKind, String)> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| (classify_io(&e), format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (classify_hyper(&e), e.to_string()))?;
    tokio::spawn(async move {
        // Errors surface on the request that was in flight.
        let _ = conn.await;
    });
    Ok(Connection {
        sender,
        worker_pid: None,
    })
}

/// Reads the pid out of `Process handled by pid: <pid>...`.
pub fn worker_pid(body: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = text.split_once("pid: ")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn classify_io(e: &io::Error) -> FailureKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => FailureKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => FailureKind::Reset,
        io::ErrorKind::UnexpectedEof => FailureKind::Eof,
        io::ErrorKind::TimedOut => FailureKind::Timeout,
        _ => FailureKind::Other,
    }
}

fn classify_hyper(e: &hyper::Error) -> FailureKind {
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return classify_io(io);
        }
        source = cause.source();
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        FailureKind::Eof
    } else if e.is_timeout() {
        FailureKind::Timeout
    } else {
        FailureKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_for_the_reload_window_it_started_in() {
        let mut report = LoadReport::default();
        let sample = |start_us, latency_us| Sample {
            start_us,
            latency_us,
        };
        // A window from 10 ms to 25 ms: a slow request started before it,
        // two fast ones inside it, a slow one started inside it.
        report.samples = vec![
            sample(0, 30_000),
            sample(12_000, 300),
            sample(20_000, 300),
            sample(24_000, 40_000),
            sample(40_000, 300),
        ];
        let window = (
            report.started + Duration::from_millis(10),
            report.started + Duration::from_millis(25),
        );
        let (inside, outside) = report.latency_split(&[window]);
        assert_eq!((inside.len(), outside.len()), (3, 2));
        let near = |got: u64, want: u64| got.abs_diff(want) < want / 100;
        assert!(near(inside.max(), 40_000), "the slow one started inside");
        assert!(
            near(outside.max(), 30_000),
            "the slow one that overlapped it started before"
        );
    }

    #[test]
    fn reads_the_pid_from_both_answers() {
        assert_eq!(worker_pid(b"Process handled by pid: 4242"), Some(4242));
        assert_eq!(
            worker_pid(b"Process handled by pid: 17, received 5 bytes"),
            Some(17)
        );
        assert_eq!(worker_pid(b"ok"), None);
    }

    #[tokio::test]
    async fn a_closed_port_counts_as_refused() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut plan = LoadPlan::new(
            port,
            vec![ClientMode::NewConnection],
            Duration::from_secs(5),
        );
        plan.requests_per_client = Some(3);
        let report = run(plan).await;
        assert_eq!(report.attempted, 3);
        assert_eq!(report.count(FailureKind::Refused), 3, "{report}");
    }
}
