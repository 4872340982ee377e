//! The check's findings: built from the load's outcomes and the reload and
//! kill schedule, written for a person (Display) and for machines (JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::scenario::Scenario;
use crate::load::h2c::GoawaySequences;
use crate::load::websocket;
use crate::load::{FailedRequest, FailureKind, LoadReport};

/// Failed requests by kind.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct FailureCounts {
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub eof: u64,
    pub bad_status: u64,
    pub other: u64,
}

impl FailureCounts {
    fn add(&mut self, kind: FailureKind) {
        let count = match kind {
            FailureKind::Refused => &mut self.refused,
            FailureKind::Reset => &mut self.reset,
            FailureKind::Timeout => &mut self.timeout,
            FailureKind::Eof => &mut self.eof,
            FailureKind::BadStatus => &mut self.bad_status,
            FailureKind::Other => &mut self.other,
        };
        *count += 1;
    }

    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.eof + self.bad_status + self.other
    }
}

impl fmt::Display for FailureCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (refused {}, reset {}, timeout {}, eof {}, bad status {}, other {})",
            self.total(),
            self.refused,
            self.reset,
            self.timeout,
            self.eof,
            self.bad_status,
            self.other
        )
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} requests)",
            self.p50, self.p90, self.p99, self.max, self.count
        )
    }
}

/// One reload as the check saw it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// Seconds from the start of the load.
    pub at_s: f64,
    /// From the request (signal or command) to every worker replaced.
    pub duration_ms: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip)]
    pub window: (Instant, Instant),
}

/// One worker killed by the check.
#[derive(Debug, Clone, Serialize)]
pub struct KillRecord {
    pub at_s: f64,
    pub pid: u32,
    /// From the SIGKILL to its replacement being ready.
    pub replaced_in_ms: Option<f64>,
    /// Requests in flight on the killed worker that failed (allowed).
    pub failed_in_flight: u64,
    /// The slot the master said the worker served, once it saw it die.
    #[serde(skip)]
    pub slot: Option<usize>,
    /// When the signal was sent.
    #[serde(skip)]
    pub at: Instant,
    /// When the master reported the worker dead.
    #[serde(skip)]
    pub dead: Option<Instant>,
}

/// How long after its SIGKILL a worker whose death the master did not report
/// may still have failed requests.
const UNSEEN_DEATH_MARGIN: Duration = Duration::from_millis(100);

impl KillRecord {
    pub fn new(pid: u32, at: Instant) -> Self {
        KillRecord {
            at_s: 0.0,
            pid,
            replaced_in_ms: None,
            failed_in_flight: 0,
            slot: None,
            at,
            dead: None,
        }
    }

    fn explains(&self, failure: &FailedRequest) -> bool {
        let dead = self.dead.unwrap_or(self.at + UNSEEN_DEATH_MARGIN);
        failure.explained_by_kill(self.pid, self.at, dead)
    }
}

/// Everything the check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub target: String,
    pub duration_s: f64,
    pub connections: usize,
    pub keepalive_connections: usize,
    /// Connections of the `post` scenario.
    pub post_connections: usize,
    /// Connections of the `h2c` scenario (each with many streams).
    pub http2_connections: usize,
    /// Connections of the `websocket` scenario.
    pub websocket_connections: usize,
    /// Requests attempted (a WebSocket message and its echo count as one).
    pub requests: u64,
    pub ok: u64,
    pub rate: f64,
    /// Failed requests that fail the check.
    pub failures: FailureCounts,
    /// Failed requests that were in flight on a worker the check killed.
    pub killed_in_flight: FailureCounts,
    pub latency_ms: Percentiles,
    pub latency_steady_ms: Percentiles,
    pub latency_reload_ms: Percentiles,
    pub reloads: Vec<ReloadRecord>,
    pub kills: Vec<KillRecord>,
    /// Requests answered by each worker pid.
    pub workers: BTreeMap<u32, u64>,
    /// Busiest worker's requests over the idlest's.
    pub worker_spread: Option<f64>,
    pub master_rss_bytes: Option<u64>,
    /// The first failures that fail the check, to show what went wrong.
    pub failure_samples: Vec<FailureSample>,
    /// Each scenario's requests and the failures that fail the check.
    pub scenarios: Vec<ScenarioRecord>,
    /// Requests sent again after their connection closed before answering
    /// them: GETs on a reused connection the server closed as the request
    /// crossed (RFC 9112 §9.3.1), pipelined requests after an answer that
    /// said `Connection: close` (§9.3.2), WebSocket messages sent as the
    /// server's close frame crossed them. Clients do this, so it is not a
    /// failure; it counts the races a server's closes caused.
    pub resent_after_close: u64,
    /// Connections the HTTP/1 clients that keep theirs opened beyond their
    /// first, because the server closed the one they had: what the
    /// reloads cost them in handshakes (0 when idle connections are
    /// handed over and nothing else closes them).
    pub reconnects: u64,
    /// What the HTTP/2 clients saw of the drains, when `h2c` ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2Record>,
    /// How the server ended the WebSockets it closed, when `websocket` ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<websocket::Closes>,
    pub passed: bool,
    pub verdict: String,
}

/// One scenario's part of the check.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioRecord {
    pub name: String,
    pub requests: u64,
    pub ok: u64,
    pub failures: FailureCounts,
}

/// What the `h2c` clients saw of the server's drains.
#[derive(Debug, Clone, Serialize)]
pub struct Http2Record {
    /// Streams the server did not process (above a GOAWAY's last stream,
    /// or refused), sent again on a new connection: not failures.
    pub refused_retried: u64,
    /// How the server ended each HTTP/2 connection it closed.
    pub goaways: GoawaySequences,
}

/// One failed request, as shown in the report.
#[derive(Debug, Clone, Serialize)]
pub struct FailureSample {
    pub at_s: f64,
    pub kind: String,
    /// The scenario that sent it.
    pub scenario: String,
    pub after_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_pid: Option<u32>,
    pub detail: String,
}

/// How many failures the report shows one by one.
const FAILURE_SAMPLES: usize = 10;

/// What the check knew besides the load.
pub struct Context {
    pub scenarios: Vec<super::scenario::Scenario>,
    pub target: String,
    pub keepalive_connections: usize,
    pub post_connections: usize,
    pub http2_connections: usize,
    pub websocket_connections: usize,
    pub reloads: Vec<ReloadRecord>,
    pub kills: Vec<KillRecord>,
    pub master_rss_bytes: Option<u64>,
}

impl CheckReport {
    pub fn build(load: &LoadReport, context: Context) -> Self {
        let Context {
            target,
            scenarios,
            keepalive_connections,
            post_connections,
            http2_connections,
            websocket_connections,
            reloads,
            mut kills,
            master_rss_bytes,
        } = context;
        let mut failures = FailureCounts::default();
        let mut killed_in_flight = FailureCounts::default();
        let mut failure_samples = Vec::new();
        let mut records: Vec<ScenarioRecord> = scenarios
            .iter()
            .map(|scenario| {
                let (requests, ok) = load
                    .by_mode
                    .iter()
                    .filter(|(mode, _)| scenario.drives_named(mode))
                    .fold((0, 0), |(requests, ok), (_, counts)| {
                        (requests + counts.attempted, ok + counts.ok)
                    });
                ScenarioRecord {
                    name: scenario.name().to_owned(),
                    requests,
                    ok,
                    failures: FailureCounts::default(),
                }
            })
            .collect();
        for failure in &load.failures {
            match kills.iter_mut().find(|kill| kill.explains(failure)) {
                Some(kill) => {
                    kill.failed_in_flight += 1;
                    killed_in_flight.add(failure.kind);
                }
                None => {
                    failures.add(failure.kind);
                    if let Some(i) = scenarios.iter().position(|s| s.drives(&failure.mode)) {
                        records[i].failures.add(failure.kind);
                    }
                    if failure_samples.len() < FAILURE_SAMPLES {
                        failure_samples.push(FailureSample {
                            at_s: seconds_since(load.started, failure.started),
                            kind: failure.kind.to_string(),
                            scenario: scenarios
                                .iter()
                                .find(|s| s.drives(&failure.mode))
                                .map_or("", |s| s.name())
                                .to_owned(),
                            after_ms: millis(failure.ended - failure.started),
                            worker_pid: failure.worker_pid,
                            detail: failure.detail.clone(),
                        });
                    }
                }
            }
        }
        let windows: Vec<(Instant, Instant)> = reloads.iter().map(|r| r.window).collect();
        let (during_reloads, steady) = load.latency_split(&windows);
        let failed_reloads = reloads.iter().filter(|r| !r.ok).count();
        let passed = failures.total() == 0 && failed_reloads == 0 && load.ok > 0;
        let verdict = if passed {
            "PASS: no connection refused, no request failed".to_owned()
        } else if load.ok == 0 {
            "FAIL: no request succeeded".to_owned()
        } else if failures.total() > 0 {
            format!("FAIL: {failures} requests failed")
        } else {
            format!("FAIL: {failed_reloads} reloads failed")
        };
        // Only comparable when every worker lived through the whole run.
        let worker_spread = if !reloads.is_empty() || !kills.is_empty() {
            None
        } else {
            let max = load.by_pid.values().max().copied();
            let min = load.by_pid.values().min().copied();
            match (max, min) {
                (Some(max), Some(min)) if load.by_pid.len() > 1 && min > 0 => {
                    Some(max as f64 / min as f64)
                }
                _ => None,
            }
        };
        let http2 = scenarios.contains(&Scenario::H2c).then_some(Http2Record {
            refused_retried: load.refused_retried,
            goaways: load.goaways,
        });
        let websocket = scenarios
            .contains(&Scenario::Websocket)
            .then_some(load.websocket_closes);
        CheckReport {
            target,
            duration_s: load.elapsed.as_secs_f64(),
            connections: load.clients,
            keepalive_connections,
            post_connections,
            http2_connections,
            websocket_connections,
            requests: load.attempted,
            ok: load.ok,
            rate: load.requests_per_second(),
            failures,
            killed_in_flight,
            latency_ms: Percentiles::of(&load.latency_us),
            latency_steady_ms: Percentiles::of(&steady),
            latency_reload_ms: Percentiles::of(&during_reloads),
            reloads,
            kills,
            workers: load.by_pid.clone(),
            worker_spread,
            master_rss_bytes,
            failure_samples,
            scenarios: records,
            resent_after_close: load.resent_after_close,
            reconnects: load.reconnects,
            http2,
            websocket,
            passed,
            verdict,
        }
    }
}

/// Seconds from `origin` to `at`, for the report.
pub fn seconds_since(origin: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(origin).as_secs_f64()
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl CheckReport {
    fn write_failure_samples(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for sample in &self.failure_samples {
            write!(
                f,
                "    at {:>6.2} s  {:<10} after {:.1} ms",
                sample.at_s, sample.kind, sample.after_ms
            )?;
            if let Some(pid) = sample.worker_pid {
                write!(f, " on pid {pid}")?;
            }
            writeln!(f, ": {}", sample.detail)?;
        }
        Ok(())
    }

    fn write_reloads(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for reload in &self.reloads {
            write!(
                f,
                "    at {:>6.2} s  {:>8.1} ms  {}",
                reload.at_s,
                reload.duration_ms,
                if reload.ok { "ok" } else { "FAILED" }
            )?;
            match &reload.detail {
                Some(detail) => writeln!(f, ": {detail}")?,
                None => writeln!(f)?,
            }
        }
        Ok(())
    }

    fn write_kills(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.kills.is_empty() {
            writeln!(f, "  kills       {}", self.kills.len())?;
            for kill in &self.kills {
                let replaced = kill
                    .replaced_in_ms
                    .map_or("not replaced (it was draining)".to_owned(), |ms| {
                        format!("replaced in {ms:.1} ms")
                    });
                writeln!(
                    f,
                    "    at {:>6.2} s  pid {:<8} {replaced}, {} requests in flight failed",
                    kill.at_s, kill.pid, kill.failed_in_flight
                )?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "baton check of {}", self.target)?;
        write!(
            f,
            "  load        {:.1} s, {} connections ({} keep-alive, {} new per request",
            self.duration_s,
            self.connections,
            self.keepalive_connections,
            self.connections
                - self.keepalive_connections
                - self.post_connections
                - self.http2_connections
                - self.websocket_connections
        )?;
        if self.post_connections > 0 {
            write!(f, ", {} posting", self.post_connections)?;
        }
        if self.http2_connections > 0 {
            write!(f, ", {} HTTP/2", self.http2_connections)?;
        }
        if self.websocket_connections > 0 {
            write!(f, ", {} WebSocket", self.websocket_connections)?;
        }
        writeln!(f, ")")?;
        writeln!(
            f,
            "  requests    {} ({:.0}/s), {} ok",
            self.requests, self.rate, self.ok
        )?;
        writeln!(f, "  failures    {}", self.failures)?;
        self.write_failure_samples(f)?;
        if self.scenarios.len() > 1 {
            for scenario in &self.scenarios {
                writeln!(
                    f,
                    "    {:<11}{} requests, {} ok, failed {}",
                    scenario.name, scenario.requests, scenario.ok, scenario.failures
                )?;
            }
        }
        if self.resent_after_close > 0 {
            writeln!(
                f,
                "  resent      {} sent again after their connection closed before \
                 answering them: GETs (RFC 9112 §9.3) and WebSocket messages a close \
                 frame crossed; clients do, so not failures",
                self.resent_after_close
            )?;
        }
        writeln!(
            f,
            "  reconnects  {} by HTTP/1 clients that keep their connection (the server closed theirs)",
            self.reconnects
        )?;
        if let Some(http2) = &self.http2 {
            let g = &http2.goaways;
            writeln!(
                f,
                "  http/2      {} streams refused unprocessed and sent again; connections \
                 closed by the server: {} with one GOAWAY, {} with the two-step GOAWAY, \
                 {} otherwise, {} without GOAWAY",
                http2.refused_retried, g.single, g.two_step, g.other, g.without_goaway
            )?;
        }
        if let Some(closes) = &self.websocket {
            writeln!(
                f,
                "  websocket   closed by the server: {} with a close frame (the client \
                 opened another), {} cut without one",
                closes.clean, closes.cut
            )?;
        }
        if !self.kills.is_empty() {
            writeln!(
                f,
                "  in flight on killed workers (allowed)  {}",
                self.killed_in_flight
            )?;
        }
        writeln!(f, "  latency     {}", self.latency_ms)?;
        writeln!(f, "    steady    {}", self.latency_steady_ms)?;
        if !self.reloads.is_empty() {
            writeln!(f, "    reloading {}", self.latency_reload_ms)?;
        }
        let ok_reloads = self.reloads.iter().filter(|r| r.ok).count();
        writeln!(
            f,
            "  reloads     {} ({} ok)",
            self.reloads.len(),
            ok_reloads
        )?;
        self.write_reloads(f)?;
        self.write_kills(f)?;
        write!(f, "  workers     {} pids answered", self.workers.len())?;
        if let Some(spread) = self.worker_spread {
            write!(f, ", busiest/idlest {spread:.2}")?;
        }
        writeln!(f)?;
        for (pid, requests) in &self.workers {
            writeln!(f, "    pid {pid:<8} {requests}")?;
        }
        if let Some(rss) = self.master_rss_bytes {
            writeln!(f, "  master RSS  {:.1} MiB", rss as f64 / (1024.0 * 1024.0))?;
        }
        write!(f, "{}", self.verdict)
    }
}
