//! `baton check`: the zero-downtime check as a product feature.
//!
//! It drives concurrent HTTP load at a server (one it starts, `baton serve`,
//! or any server at `--url`), triggers reloads (SIGHUP, or a command) and
//! optionally worker kills on a schedule, and reports every request's outcome.
//! It passes only when no connection was refused and no request failed;
//! requests in flight on a worker it killed are reported apart and allowed.
//!
//! - [`server`]: the `baton serve` child a self-hosted check drives.
//! - [`report`]: the findings, for people and for machines.
//! - [`plot`]: the timeline picture.

pub mod plot;
pub mod report;
pub mod server;

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper::Uri;
use tokio::time::{interval, sleep_until, timeout};

use crate::load::{self, ClientMode, LoadPlan, LoadReport};
use report::{millis, seconds_since, CheckReport, Context, KillRecord, ReloadRecord};
use server::{ManagedServer, ServerEvent};

/// How long a self-hosted server may take to start, and a reload to finish,
/// before the check gives up on it.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
const RELOAD_OUTCOME_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the check could not run (as opposed to a check that ran and failed).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("server: {0}")]
    Server(String),
    #[error("cannot write {path}: {reason}")]
    Output { path: PathBuf, reason: String },
}

/// What to check.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start `program serve --config FILE` (a free loopback port unless
    /// the file says otherwise), reload it with SIGHUP; the file is removed
    /// once the server has stopped.
    SelfHosted { program: PathBuf, config: PathBuf },
    /// Load the server at `url`; run `reload_command` through `sh -c` to reload.
    External {
        url: Uri,
        addr: SocketAddr,
        reload_command: Option<String>,
    },
}

/// A validated check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub target: Target,
    pub duration: Duration,
    pub connections: usize,
    /// Share of connections kept alive; the rest open one per request.
    pub keepalive_ratio: f64,
    pub reload_every: Option<Duration>,
    pub kill_every: Option<Duration>,
    pub request_timeout: Duration,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    /// Print a live progress line (on a terminal).
    pub progress: bool,
}

impl CheckOptions {
    fn keepalive_connections(&self) -> usize {
        (self.connections as f64 * self.keepalive_ratio).round() as usize
    }
}

/// Parses `--url`: `http://HOST:PORT/PATH`.
pub fn parse_url(url: &str) -> Result<(Uri, SocketAddr), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); write it like http://127.0.0.1:8080/"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// URLs can be checked"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} names no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", authority.host()))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", authority.host()))?;
    Ok((uri, addr))
}

/// A reload in progress.
struct PendingReload {
    at: Instant,
    /// For an external target: the reload command.
    command: Option<tokio::process::Child>,
}

/// Runs the check and returns its report (also written to `--json` and
/// `--plot` when asked).
pub async fn run(options: CheckOptions) -> Result<CheckReport, CheckError> {
    let mut server = match &options.target {
        Target::SelfHosted { program, config } => {
            Some(ManagedServer::start(program, config, SERVER_START_TIMEOUT).await?)
        }
        Target::External { .. } => None,
    };
    let (addr, host, path, target_name) = match (&options.target, &server) {
        (Target::External { url, addr, .. }, _) => (
            *addr,
            url.authority().map_or(addr.to_string(), |a| a.to_string()),
            url.path_and_query()
                .map_or("/".to_owned(), |p| p.to_string()),
            url.to_string(),
        ),
        (Target::SelfHosted { .. }, Some(server)) => (
            server.addr,
            server.addr.to_string(),
            "/".to_owned(),
            format!("baton serve (pid {}) on {}", server.pid(), server.addr),
        ),
        (Target::SelfHosted { .. }, None) => unreachable!("a self-hosted check starts its server"),
    };

    let keepalive = options.keepalive_connections();
    let mut clients = vec![ClientMode::BUSY; keepalive];
    clients.extend(vec![
        ClientMode::NewConnection;
        options.connections - keepalive
    ]);
    let mut plan = LoadPlan::new(addr, clients, options.duration);
    plan.host = host;
    plan.path = path;
    plan.request_timeout = options.request_timeout;
    let progress = plan.progress.clone();
    let mut load_task = tokio::spawn(load::run(plan));

    let start = Instant::now();
    let end = start + options.duration;
    let mut next_reload = options.reload_every.map(|every| start + every);
    let mut next_kill = options.kill_every.map(|every| start + every);
    let mut pending: Option<PendingReload> = None;
    let mut reloads: Vec<ReloadRecord> = Vec::new();
    let mut kills: Vec<KillRecord> = Vec::new();
    let mut ticker = interval(Duration::from_millis(500));
    let show_progress = options.progress && std::io::stderr().is_terminal();
    let mut load_report: Option<LoadReport> = None;

    loop {
        let reload_due = next_reload
            .filter(|&at| pending.is_none() && at < end)
            .map(tokio::time::Instant::from_std);
        // Kills wait while a reload runs: a new worker killed before it is
        // ready rightly fails the reload, which is not what a kill tests.
        let kill_due = next_kill
            .filter(|&at| at < end && server.is_some() && pending.is_none())
            .map(tokio::time::Instant::from_std);
        let reload_deadline = pending
            .as_ref()
            .map(|p| tokio::time::Instant::from_std(p.at + RELOAD_OUTCOME_TIMEOUT));
        let load_done = load_report.is_some();
        if load_done && pending.is_none() {
            break;
        }
        tokio::select! {
            report = &mut load_task, if !load_done => {
                load_report = Some(report.expect("the load task does not panic"));
            }
            _ = sleep_until(reload_deadline.unwrap_or_else(tokio::time::Instant::now)), if reload_deadline.is_some() => {
                let detail = format!("no outcome within {}", humantime::format_duration(RELOAD_OUTCOME_TIMEOUT));
                finish_reload(&mut pending, &mut reloads, false, Some(detail));
            }
            _ = sleep_until(reload_due.unwrap_or_else(tokio::time::Instant::now)), if reload_due.is_some() => {
                let every = options.reload_every.expect("scheduled reloads have a period");
                next_reload = next_reload.map(|at| at + every);
                pending = Some(start_reload(&options.target, server.as_ref())?);
            }
            _ = sleep_until(kill_due.unwrap_or_else(tokio::time::Instant::now)), if kill_due.is_some() => {
                let every = options.kill_every.expect("scheduled kills have a period");
                next_kill = next_kill.map(|at| at + every);
                // The time before the signal: the worker may serve until it dies.
                let at = Instant::now();
                if let Some(pid) = server.as_ref().and_then(ManagedServer::kill_random_worker) {
                    kills.push(KillRecord::new(pid, at));
                }
            }
            event = next_server_event(server.as_mut()) => match event {
                Some(ServerEvent::ReloadComplete) => finish_reload(&mut pending, &mut reloads, true, None),
                Some(ServerEvent::ReloadFailed(reason)) => finish_reload(&mut pending, &mut reloads, false, Some(reason)),
                Some(ServerEvent::WorkerExited { pid, slot, crashed }) => {
                    if let Some(kill) = kills.iter_mut().rev().find(|k| k.pid == pid && k.dead.is_none()) {
                        kill.dead = Some(Instant::now());
                        kill.slot = crashed.then_some(slot);
                    }
                }
                Some(ServerEvent::ReplacementReady { slot }) => {
                    if let Some(kill) = kills.iter_mut().find(|k| k.slot == Some(slot) && k.replaced_in_ms.is_none()) {
                        kill.replaced_in_ms = Some(millis(kill.at.elapsed()));
                    }
                }
                Some(_) => {}
                None => {
                    let tail = server.as_ref().map(ManagedServer::tail).unwrap_or_default();
                    return Err(CheckError::Server(format!("baton serve exited during the check\n{}", tail.join("\n"))));
                }
            },
            status = wait_command(&mut pending) => {
                let ok = status.as_ref().is_ok_and(|s| s.success());
                let detail = match status {
                    Ok(status) if status.success() => None,
                    Ok(status) => Some(format!("reload command {status}")),
                    Err(e) => Some(format!("reload command: {e}")),
                };
                finish_reload(&mut pending, &mut reloads, ok, detail);
            }
            _ = ticker.tick(), if show_progress => {
                print_progress(start, &progress, reloads.len(), kills.len());
            }
        }
    }
    if show_progress {
        eprintln!();
    }

    let load_report = load_report.expect("the loop ends after the load");
    let master_rss_bytes = server.as_ref().and_then(ManagedServer::rss_bytes);
    if let Some(server) = server.take() {
        server.stop(Duration::from_secs(60)).await;
    }
    let context = Context {
        target: target_name,
        keepalive_connections: keepalive,
        reloads: reloads
            .into_iter()
            .map(|mut r| {
                r.at_s = seconds_since(load_report.started, r.window.0);
                r
            })
            .collect(),
        kills: kills
            .into_iter()
            .map(|mut k| {
                k.at_s = seconds_since(load_report.started, k.at);
                k
            })
            .collect(),
        master_rss_bytes,
    };
    let report = CheckReport::build(&load_report, context);
    if let Some(path) = &options.json {
        let json = serde_json::to_string_pretty(&report).expect("the report serializes");
        std::fs::write(path, json + "\n").map_err(|e| CheckError::Output {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    if let Some(path) = &options.plot {
        plot::write_svg(path, &load_report, &report).map_err(|reason| CheckError::Output {
            path: path.clone(),
            reason,
        })?;
    }
    Ok(report)
}

fn start_reload(
    target: &Target,
    server: Option<&ManagedServer>,
) -> Result<PendingReload, CheckError> {
    let at = Instant::now();
    let command = match (target, server) {
        (Target::SelfHosted { .. }, Some(server)) => {
            server.reload()?;
            None
        }
        (
            Target::External {
                reload_command: Some(command),
                ..
            },
            _,
        ) => Some(
            tokio::process::Command::new("sh")
                .args(["-c", command])
                .stdin(Stdio::null())
                // Its output is log, not report: it goes to stderr.
                .stdout(stderr_copy()?)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| CheckError::Server(format!("cannot run the reload command: {e}")))?,
        ),
        _ => None,
    };
    Ok(PendingReload { at, command })
}

/// A copy of this process's stderr, for a child's stdout.
fn stderr_copy() -> Result<Stdio, CheckError> {
    use std::os::fd::AsFd;
    let copy = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| CheckError::Server(format!("cannot run the reload command: {e}")))?;
    Ok(Stdio::from(copy))
}

fn finish_reload(
    pending: &mut Option<PendingReload>,
    reloads: &mut Vec<ReloadRecord>,
    ok: bool,
    detail: Option<String>,
) {
    let Some(reload) = pending.take() else {
        return;
    };
    let now = Instant::now();
    reloads.push(ReloadRecord {
        at_s: 0.0,
        duration_ms: millis(now - reload.at),
        ok,
        detail,
        window: (reload.at, now),
    });
}

async fn next_server_event(server: Option<&mut ManagedServer>) -> Option<ServerEvent> {
    match server {
        Some(server) => server.next_event().await,
        None => std::future::pending().await,
    }
}

async fn wait_command(
    pending: &mut Option<PendingReload>,
) -> std::io::Result<std::process::ExitStatus> {
    match pending.as_mut().and_then(|p| p.command.as_mut()) {
        Some(child) => match timeout(RELOAD_OUTCOME_TIMEOUT, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                let _ = child.start_kill();
                Err(std::io::Error::other("did not finish in time"))
            }
        },
        None => std::future::pending().await,
    }
}

fn print_progress(start: Instant, progress: &load::Progress, reloads: usize, kills: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let elapsed = start.elapsed().as_secs_f64();
    let attempted = progress.attempted.load(Relaxed);
    let failed = progress.failed.load(Relaxed);
    eprint!(
        "\r  {elapsed:>6.1} s  {attempted:>9} requests ({:>7.0}/s)  {failed} failed  {reloads} reloads  {kills} kills ",
        attempted as f64 / elapsed.max(0.001)
    );
    let _ = std::io::stderr().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (uri, addr) = parse_url("http://127.0.0.1:9000/health?x=1").unwrap();
        assert_eq!(addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/health?x=1");
        assert!(parse_url("https://127.0.0.1/").is_err());
        assert!(parse_url("not a url").is_err());
        assert_eq!(
            parse_url("http://[::1]/").unwrap().1,
            "[::1]:80".parse().unwrap()
        );
    }
}
