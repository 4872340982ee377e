//! `baton upgrade` (and SIGUSR2): the master replaces its own program in
//! place, keeping its pid, its sockets and its workers.
//!
//! 1. Refused while the master starts or stops, or a reload rolls or is on
//!    probation; joined by a second upgrade asked for meanwhile. Reloads
//!    asked for during an upgrade are refused (`reload`) or folded into
//!    the upgrade's roll (SIGHUP), never raced.
//! 2. The new program is checked first (`baton upgrade-check`, run from the
//!    same path): it must read this state format and accept the
//!    configuration, within [`CHECK_WITHIN`]. A program that does not is
//!    refused with what it said; nothing else happened.
//! 3. The master writes its state and `execve`s the new program in the
//!    same pid (see [`super::handover`]); the new image adopts the state,
//!    answers systemd, and rolls the workers to the new program like a
//!    reload (unless asked to keep them). If it cannot adopt the state, the
//!    previous image comes back and adopts it instead. Either way the
//!    `upgrade --wait` clients are answered by the image that serves.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::effects::{Effects, Systemd};
use super::handover::{self, SlotState, SupervisorState, UpgradeFault, WorkerState};
use super::supervisor::{Phase, Slot, Supervisor, Worker};
use crate::control::reply::{Problem, Reply, UpgradeOutcome, Workers};
use crate::event::Event;

/// How long the new program's check may take.
pub const CHECK_WITHIN: Duration = Duration::from_secs(10);

/// An upgrade being prepared: its program is being checked.
#[derive(Debug)]
pub(crate) struct Upgrade {
    waiters: Vec<Waiter>,
    /// Roll the workers to the new program once it serves.
    roll: bool,
    fault: Option<UpgradeFault>,
    asked_at_ms: u64,
}

/// Someone who asked for the upgrade and waits for its outcome: answered
/// on `reply` by this image if the upgrade ends here, or on its
/// `connection` by the next image.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub reply: oneshot::Sender<Reply>,
    pub connection: Option<OwnedFd>,
}

/// What an upgrade asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Roll the workers to the new program (else they keep running).
    pub roll: bool,
    pub fault: Option<UpgradeFault>,
}

/// What the master hands to the effects to exec the new program.
#[derive(Debug)]
pub(crate) struct Departure {
    pub supervisor: SupervisorState,
    pub waiters: Vec<OwnedFd>,
    pub roll: bool,
    pub fault: Option<UpgradeFault>,
    pub asked_at_ms: u64,
}

impl<E: Effects> Supervisor<E> {
    /// `baton upgrade` or SIGUSR2 (`waiter` is `None`).
    pub fn request_upgrade(&mut self, request: UpgradeRequest, waiter: Option<Waiter>) {
        let refusal = match self.phase {
            Phase::Starting => Some("the first workers are still starting"),
            Phase::Stopping => Some("baton is shutting down"),
            Phase::Running if self.reloads.rollout.is_some() || self.reloads.is_queued() => {
                Some("a reload is in progress; upgrade once it has ended")
            }
            Phase::Running if self.reloads.probation.is_some() => Some(
                "the last reload is on probation; upgrade once it has passed (see baton status)",
            ),
            Phase::Running => None,
        };
        if let Some(reason) = refusal {
            warn!(event = %Event::UpgradeFailed, reason, "upgrade refused");
            self.counters.upgrades_refused += 1;
            if let Some(waiter) = waiter {
                let _ = waiter.reply.send(Reply::Upgrade(UpgradeOutcome::Refused {
                    reason: reason.to_owned(),
                }));
            }
            return;
        }
        if let Some(upgrade) = &mut self.upgrade {
            info!("an upgrade is already being prepared; this request waits for it");
            upgrade.roll |= request.roll;
            upgrade.waiters.extend(waiter);
            return;
        }
        info!(event = %Event::UpgradeStarted, program = %self.program_path.display(), "upgrade: checking the new program");
        self.upgrade = Some(Upgrade {
            waiters: waiter.into_iter().collect(),
            roll: request.roll,
            fault: request.fault,
            asked_at_ms: handover::now_ms(),
        });
        self.effects.check_upgrade();
    }

    /// A reload asked for while an upgrade is prepared: a SIGHUP is folded
    /// into the upgrade's roll; `baton reload` is told to come back.
    pub fn reload_during_upgrade(&mut self, waiter: Option<oneshot::Sender<Reply>>) -> bool {
        let Some(upgrade) = &mut self.upgrade else {
            return false;
        };
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(Reply::Error(Problem::UpgradeInProgress));
            }
            None => {
                info!("reload folded into the upgrade in progress: the workers will be rolled");
                upgrade.roll = true;
            }
        }
        true
    }

    /// The new program's check ended: `Ok` with its version, or why it
    /// cannot be used.
    pub fn on_upgrade_checked(&mut self, checked: Result<String, String>) {
        let Some(upgrade) = self.upgrade.take() else {
            return;
        };
        if self.phase != Phase::Running {
            answer(upgrade.waiters, UpgradeOutcome::Cancelled);
            return;
        }
        let version = match checked {
            Ok(version) => version,
            Err(reason) => {
                error!(event = %Event::UpgradeFailed, %reason, "upgrade refused: the new program failed its check");
                self.counters.upgrades_refused += 1;
                let refused = UpgradeOutcome::CheckFailed {
                    reason,
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                };
                answer(upgrade.waiters, refused);
                return;
            }
        };
        info!(to_version = %version, workers = self.workers.len(), "upgrade: handing over to the new program");
        self.effects
            .systemd(Systemd::Reloading(format!("upgrading to baton {version}")));
        let mut replies = Vec::new();
        let mut connections = Vec::new();
        for waiter in upgrade.waiters {
            replies.push(waiter.reply);
            connections.extend(waiter.connection);
        }
        let departure = Departure {
            supervisor: self.handover_state(),
            waiters: connections,
            roll: upgrade.roll,
            fault: upgrade.fault,
            asked_at_ms: upgrade.asked_at_ms,
        };
        // Returns only if the exec failed.
        let reason = self.effects.hand_over(departure);
        error!(event = %Event::UpgradeFailed, %reason, "upgrade failed; this program goes on");
        self.counters.upgrades_failed += 1;
        self.effects.systemd(Systemd::Ready(self.status_line()));
        for reply in replies {
            let _ = reply.send(Reply::Upgrade(UpgradeOutcome::ExecFailed {
                reason: reason.clone(),
            }));
        }
    }

    /// Stop during an upgrade's check: its waiters are told.
    pub fn cancel_upgrade(&mut self) {
        if let Some(upgrade) = self.upgrade.take() {
            answer(upgrade.waiters, UpgradeOutcome::Cancelled);
        }
    }

    /// The supervisor's state for the next image.
    fn handover_state(&self) -> SupervisorState {
        let now = Instant::now();
        let now_ms = handover::now_ms();
        // Instants do not cross processes; the wall clock does.
        let at_ms = |at: Instant| -> u64 {
            if at >= now {
                now_ms + at.duration_since(now).as_millis() as u64
            } else {
                now_ms.saturating_sub(now.duration_since(at).as_millis() as u64)
            }
        };
        SupervisorState {
            next_id: self.next_id,
            generation: self.generation,
            slots: self
                .slots
                .iter()
                .map(|slot| SlotState {
                    current: slot.current,
                    generation: slot.generation,
                    quick_failures: slot.quick_failures,
                    restart_at_ms: slot.restart_at.map(at_ms),
                    restarts: slot.restarts,
                    successor: slot.successor,
                })
                .collect(),
            workers: self
                .workers
                .iter()
                .map(|(&id, worker)| WorkerState {
                    id,
                    pid: worker.pid,
                    slot: worker.slot,
                    generation: worker.generation,
                    cause: worker.cause,
                    state: worker.state,
                    started_at_ms: at_ms(worker.started),
                    stats: worker.stats,
                })
                .collect(),
            counters: self.counters.clone(),
            last_reload: self.reloads.last.clone(),
            lame_duck: self.lame_duck,
            started_at_ms: at_ms(self.started),
        }
    }

    /// The supervisor of an image that adopted `state` from the previous
    /// one: its workers (those still known to the effects), slots and
    /// history, running.
    pub fn adopt(config: crate::config::MasterConfig, effects: E, state: SupervisorState) -> Self {
        let mut supervisor = Supervisor::new(config, effects);
        let now = Instant::now();
        let now_ms = handover::now_ms();
        let instant = |at_ms: u64| -> Instant {
            if at_ms >= now_ms {
                crate::config::deadline(now, Duration::from_millis(at_ms - now_ms))
            } else {
                now.checked_sub(Duration::from_millis(now_ms - at_ms))
                    .unwrap_or(now)
            }
        };
        supervisor.phase = Phase::Running;
        supervisor.next_id = state.next_id;
        supervisor.generation = state.generation;
        supervisor.counters = state.counters;
        supervisor.reloads.last = state.last_reload;
        supervisor.lame_duck = state.lame_duck;
        supervisor.started = instant(state.started_at_ms);
        supervisor.slots = state
            .slots
            .into_iter()
            .map(|slot| Slot {
                current: slot.current,
                generation: slot.generation,
                quick_failures: slot.quick_failures,
                restart_at: slot.restart_at_ms.map(instant),
                restarts: slot.restarts,
                successor: slot.successor,
            })
            .collect();
        for worker in state.workers {
            supervisor.workers.insert(
                worker.id,
                Worker {
                    pid: worker.pid,
                    slot: worker.slot,
                    generation: worker.generation,
                    cause: worker.cause,
                    state: worker.state,
                    started: instant(worker.started_at_ms),
                    stats: worker.stats,
                    over_memory: 0,
                },
            );
        }
        supervisor.config.workers = supervisor.slots.len();
        supervisor
            .reloads
            .capture_release(supervisor.generation, &supervisor.config);
        supervisor
    }

    /// Forgets the adopted workers that are not `watched` (their
    /// descriptors did not come over); their slots are filled again.
    pub fn keep_only(&mut self, watched: &std::collections::BTreeSet<u64>) {
        self.workers.retain(|id, _| watched.contains(id));
        for slot in 0..self.slots.len() {
            let entry = &mut self.slots[slot];
            entry.successor = entry.successor.filter(|id| watched.contains(id));
            if entry.current.is_some_and(|id| !watched.contains(&id)) {
                entry.current = None;
                self.schedule_restart(slot, false);
            }
        }
    }

    /// After an adoption: the upgrade's outcome for its waiters (the
    /// previous image's `failed` reason if this is the previous image
    /// coming back), and the roll to the new program if asked for.
    pub fn after_adoption(
        &mut self,
        failed: Option<&str>,
        roll: bool,
        took_ms: u64,
        waiters: Vec<oneshot::Sender<Reply>>,
    ) {
        let version = env!("CARGO_PKG_VERSION");
        if let Some(reason) = failed {
            error!(event = %Event::UpgradeFailed, %reason, "upgrade failed; the previous program took its state back");
            self.counters.upgrades_failed += 1;
            self.effects.systemd(Systemd::Ready(self.status_line()));
            for waiter in waiters {
                let _ = waiter.send(Reply::Upgrade(UpgradeOutcome::FellBack {
                    reason: reason.to_owned(),
                    version: version.to_owned(),
                }));
            }
            return;
        }
        self.counters.upgrades_ok += 1;
        info!(
            event = %Event::Upgraded,
            version,
            pid = std::process::id(),
            took_ms,
            workers = self.workers.len(),
            "upgraded: this program took over"
        );
        let took_over = move |workers| {
            Reply::Upgrade(UpgradeOutcome::TookOver {
                version: version.to_owned(),
                took_ms,
                workers,
            })
        };
        if !roll {
            self.effects.systemd(Systemd::Ready(self.status_line()));
            for waiter in waiters {
                let _ = waiter.send(took_over(Workers::Kept));
            }
            return;
        }
        // systemd hears READY=1 when the roll ends, like after a reload;
        // the waiters hear the roll's outcome, after what the upgrade took.
        let mut rolled = Vec::new();
        for waiter in waiters {
            let (reply, answer) = oneshot::channel::<Reply>();
            rolled.push(reply);
            tokio::spawn(async move {
                let workers = match answer.await {
                    Ok(Reply::Reload(roll)) => Workers::Rolled { roll },
                    _ => Workers::Unknown,
                };
                let _ = waiter.send(took_over(workers));
            });
        }
        self.request_reload_for(rolled);
    }
}

/// Answers every waiter with `outcome`.
fn answer(waiters: Vec<Waiter>, outcome: UpgradeOutcome) {
    for waiter in waiters {
        let _ = waiter.reply.send(Reply::Upgrade(outcome.clone()));
    }
}

/// Runs `program upgrade-check` with the master's serve arguments: `Ok`
/// with the version it reports, or why the program cannot take over.
pub async fn check_program(
    program: PathBuf,
    serve_args: Vec<std::ffi::OsString>,
) -> Result<String, String> {
    let cannot_run = |e: std::io::Error| format!("cannot run {}: {e}", program.display());
    let mut child = std::process::Command::new(&program)
        .arg("upgrade-check")
        .arg("--format")
        .arg(handover::FORMAT.to_string())
        .arg("--")
        .args(&serve_args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove("NOTIFY_SOCKET")
        .env_remove(handover::ENV_STATE)
        .spawn()
        .map_err(cannot_run)?;
    // Killed if the check times out (dropped with the future below).
    let mut process = crate::process::Process::watch(child.id()).map_err(cannot_run)?;
    let pipe = |fd: Option<OwnedFd>| {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd.expect("piped")).map_err(cannot_run)
    };
    let mut stdout = pipe(child.stdout.take().map(OwnedFd::from))?;
    let mut stderr = pipe(child.stderr.take().map(OwnedFd::from))?;
    let run = async {
        use tokio::io::AsyncReadExt;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (_, _, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            process.wait()
        );
        status.map(|status| (status, out, err))
    };
    let (status, stdout, stderr) = match tokio::time::timeout(CHECK_WITHIN, run).await {
        Err(_) => {
            return Err(format!(
                "{} did not finish its check within {}",
                program.display(),
                humantime::format_duration(CHECK_WITHIN)
            ))
        }
        Ok(Err(e)) => return Err(cannot_run(e)),
        Ok(Ok(done)) => done,
    };
    let output = std::process::Output {
        status,
        stdout,
        stderr,
    };
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().replace('\n', "; ");
    if !output.status.success() {
        let mut reason = format!("{} failed its check ({})", program.display(), output.status);
        let stderr = said(&output.stderr);
        if !stderr.is_empty() {
            reason += &format!(": {stderr}");
        }
        return Err(reason);
    }
    let stdout = said(&output.stdout);
    match stdout.strip_prefix("baton ") {
        Some(version) if !version.is_empty() => Ok(version.to_owned()),
        _ => Err(format!(
            "{} passed its check but did not say its version (it said {stdout:?}); is it baton?",
            program.display()
        )),
    }
}
