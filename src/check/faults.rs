//! What the check does to the server while the load runs: reloads (SIGHUP
//! to its own server, or the `--reload-command`) and worker kills on their
//! schedules, and what came of each, as the server's events tell.
//!
//! Kills wait while a reload runs: a new worker killed before it is ready
//! rightly fails the reload, which is not what a kill tests.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio::time::{interval, sleep_until, timeout};

use super::report::{millis, seconds_since, KillRecord, ReloadRecord};
use super::server::{ManagedServer, ServerEvent};
use super::{CheckError, CheckOptions, Target};
use crate::load::{self, LoadReport};

/// How long a reload may take to finish before the check records it failed.
const RELOAD_OUTCOME_TIMEOUT: Duration = Duration::from_secs(120);

/// The reloads and kills of one check: when the next are due, the one in
/// progress, and the record of each.
pub struct Faults<'a> {
    options: &'a CheckOptions,
    start: Instant,
    end: Instant,
    next_reload: Option<Instant>,
    next_kill: Option<Instant>,
    pending: Option<PendingReload>,
    pub reloads: Vec<ReloadRecord>,
    pub kills: Vec<KillRecord>,
}

/// A reload in progress.
struct PendingReload {
    at: Instant,
    /// For an external target: the reload command.
    command: Option<tokio::process::Child>,
}

impl<'a> Faults<'a> {
    pub fn new(options: &'a CheckOptions) -> Self {
        let start = Instant::now();
        Faults {
            options,
            start,
            end: start + options.duration,
            next_reload: options.reload_every.map(|every| start + every),
            next_kill: options.kill_every.map(|every| start + every),
            pending: None,
            reloads: Vec::new(),
            kills: Vec::new(),
        }
    }

    /// Reloads and kills on schedule until the load is over and the last
    /// reload has its outcome: the load's report.
    pub async fn run_beside(
        &mut self,
        mut load_task: JoinHandle<LoadReport>,
        mut server: Option<&mut ManagedServer>,
        progress: &load::Progress,
    ) -> Result<LoadReport, CheckError> {
        let mut ticker = interval(Duration::from_millis(500));
        let show_progress =
            self.options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut load_report = None;
        while load_report.is_none() || self.pending.is_some() {
            let reload_due = self.reload_due();
            let kill_due = self.kill_due().filter(|_| server.is_some());
            let reload_deadline = self.pending.as_ref().map(|p| p.at + RELOAD_OUTCOME_TIMEOUT);
            let reloading = self.pending.is_some();
            tokio::select! {
                report = &mut load_task, if load_report.is_none() => {
                    load_report = Some(report.expect("the load task does not panic"));
                }
                _ = sleep_until_std(reload_deadline), if reload_deadline.is_some() => {
                    let detail = format!("no outcome within {}", humantime::format_duration(RELOAD_OUTCOME_TIMEOUT));
                    self.finish_reload(false, Some(detail));
                }
                _ = sleep_until_std(reload_due), if reload_due.is_some() => {
                    self.start_reload(server.as_deref())?;
                }
                _ = sleep_until_std(kill_due), if kill_due.is_some() => {
                    self.kill(server.as_deref());
                }
                event = next_server_event(server.as_deref_mut()) => {
                    self.on_server_event(event, server.as_deref())?;
                }
                status = wait_command(&mut self.pending) => self.on_command_exit(status),
                _ = ticker.tick(), if show_progress => self.print_progress(progress),
            }
            if !reloading && self.pending.is_some() {
                progress.reload_started.notify_waiters();
            }
            if self
                .options
                .reloads
                .is_some_and(|wanted| self.reloads.len() >= wanted)
            {
                // Each client stops after the request in hand.
                progress.stop();
                self.next_reload = None;
            }
        }
        if show_progress {
            eprintln!();
        }
        Ok(load_report.expect("the loop ends after the load"))
    }

    fn reload_due(&self) -> Option<Instant> {
        self.next_reload
            .filter(|&at| self.pending.is_none() && at < self.end)
    }

    fn kill_due(&self) -> Option<Instant> {
        self.next_kill
            .filter(|&at| self.pending.is_none() && at < self.end)
    }

    fn start_reload(&mut self, server: Option<&ManagedServer>) -> Result<(), CheckError> {
        let every = self
            .options
            .reload_every
            .expect("scheduled reloads have a period");
        self.next_reload = self.next_reload.map(|at| at + every);
        let at = Instant::now();
        let command = match (&self.options.target, server) {
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
                    .map_err(|e| {
                        CheckError::Server(format!("cannot run the reload command: {e}"))
                    })?,
            ),
            _ => None,
        };
        self.pending = Some(PendingReload { at, command });
        Ok(())
    }

    fn finish_reload(&mut self, ok: bool, detail: Option<String>) {
        let Some(reload) = self.pending.take() else {
            return;
        };
        let now = Instant::now();
        let record = ReloadRecord {
            at_s: seconds_since(self.start, reload.at),
            duration_ms: millis(now - reload.at),
            ok,
            detail,
            window: (reload.at, now),
        };
        if let Some(wanted) = self.options.reloads {
            // Printed as it ends, for a long run to show its progress.
            println!(
                "reload {}/{wanted} at {:.1} s: {} in {:.0} ms{}",
                self.reloads.len() + 1,
                record.at_s,
                if record.ok { "ok" } else { "failed" },
                record.duration_ms,
                record
                    .detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
        }
        self.reloads.push(record);
    }

    fn kill(&mut self, server: Option<&ManagedServer>) {
        let every = self
            .options
            .kill_every
            .expect("scheduled kills have a period");
        self.next_kill = self.next_kill.map(|at| at + every);
        // The time before the signal: the worker may serve until it dies.
        let at = Instant::now();
        if let Some(pid) = server.and_then(ManagedServer::kill_random_worker) {
            self.kills.push(KillRecord::new(pid, at));
        }
    }

    fn on_server_event(
        &mut self,
        event: Option<ServerEvent>,
        server: Option<&ManagedServer>,
    ) -> Result<(), CheckError> {
        match event {
            Some(ServerEvent::ReloadComplete) => self.finish_reload(true, None),
            Some(ServerEvent::ReloadFailed(reason)) => self.finish_reload(false, Some(reason)),
            Some(ServerEvent::WorkerExited { pid, slot, crashed }) => {
                let mut killed = self.kills.iter_mut().rev();
                if let Some(kill) = killed.find(|k| k.pid == pid && k.dead.is_none()) {
                    kill.dead = Some(Instant::now());
                    kill.slot = crashed.then_some(slot);
                }
            }
            Some(ServerEvent::ReplacementReady { slot }) => {
                let mut killed = self.kills.iter_mut();
                if let Some(kill) =
                    killed.find(|k| k.slot == Some(slot) && k.replaced_in_ms.is_none())
                {
                    kill.replaced_in_ms = Some(millis(kill.at.elapsed()));
                }
            }
            Some(_) => {}
            None => {
                let tail = server.map(ManagedServer::tail).unwrap_or_default();
                return Err(CheckError::Server(format!(
                    "baton serve exited during the check\n{}",
                    tail.join("\n")
                )));
            }
        }
        Ok(())
    }

    fn on_command_exit(&mut self, status: std::io::Result<std::process::ExitStatus>) {
        let detail = match status {
            Ok(status) if status.success() => None,
            Ok(status) => Some(format!("reload command {status}")),
            Err(e) => Some(format!("reload command: {e}")),
        };
        self.finish_reload(detail.is_none(), detail);
    }

    /// The records, timed from when the load started.
    pub fn timed_from(self, load_started: Instant) -> (Vec<ReloadRecord>, Vec<KillRecord>) {
        let mut reloads = self.reloads;
        for reload in &mut reloads {
            reload.at_s = seconds_since(load_started, reload.window.0);
        }
        let mut kills = self.kills;
        for kill in &mut kills {
            kill.at_s = seconds_since(load_started, kill.at);
        }
        (reloads, kills)
    }

    fn print_progress(&self, progress: &load::Progress) {
        use std::sync::atomic::Ordering::Relaxed;
        let elapsed = self.start.elapsed().as_secs_f64();
        let attempted = progress.attempted.load(Relaxed);
        let failed = progress.failed.load(Relaxed);
        let (reloads, kills) = (self.reloads.len(), self.kills.len());
        eprint!(
            "\r  {elapsed:>6.1} s  {attempted:>9} requests ({:>7.0}/s)  {failed} failed  {reloads} reloads  {kills} kills ",
            attempted as f64 / elapsed.max(0.001)
        );
        let _ = std::io::stderr().flush();
    }
}

/// Sleeps until `at`; forever if `None` (its `select!` arm is off then).
async fn sleep_until_std(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
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
