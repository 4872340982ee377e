//! The supervisor's side of `baton upgrade` (see [`crate::master`]'s
//! upgrade module for the steps): refused or joined, the new program's
//! check, the departure, and the adoption of the state by the image that
//! serves next.

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Supervisor;
use crate::control::reply::{Problem, Reply, UpgradeOutcome, Workers};
use crate::event::{Lifecycle, UpgradeStage};
use crate::master::effects::{Effects, Systemd};
use crate::master::handover::{Numbered, SupervisorState};
use crate::master::state::{wall_clock, Phase};
use crate::master::upgrade::{Departing, Departure, Upgrade, UpgradeRequest, Waiter, QUIET_WITHIN};
use crate::master::worker::{Quiet, WorkerId};

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
            Lifecycle::UpgradeFailed {
                reason: reason.to_owned(),
                stage: UpgradeStage::Refused,
            }
            .log();
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
        Lifecycle::UpgradeStarted {
            program: self.program_path.display().to_string(),
        }
        .log();
        self.upgrade = Some(Upgrade {
            waiters: waiter.into_iter().collect(),
            roll: request.roll,
            fault: request.fault,
            asked_at_ms: wall_clock::now_ms(),
            departing: None,
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
    /// cannot be used. A program that passed is executed once the watchers
    /// are quiet.
    pub fn on_upgrade_checked(&mut self, checked: Result<String, String>) {
        let Some(upgrade) = &mut self.upgrade else {
            return;
        };
        if upgrade.departing.is_some() {
            return;
        }
        if self.phase != Phase::Running {
            self.cancel_upgrade();
            return;
        }
        let version = match checked {
            Ok(version) => version,
            Err(reason) => {
                Lifecycle::UpgradeFailed {
                    reason: reason.clone(),
                    stage: UpgradeStage::Check,
                }
                .log();
                self.counters.upgrades_refused += 1;
                let refused = UpgradeOutcome::CheckFailed {
                    reason,
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                };
                if let Some(upgrade) = self.upgrade.take() {
                    answer(upgrade.waiters, refused);
                }
                return;
            }
        };
        info!(to_version = %version, workers = self.workers.len(), "upgrade: handing over to the new program");
        self.effects
            .systemd(Systemd::Reloading(format!("upgrading to baton {version}")));
        let waiting = self.effects.quiet(Quiet::Settled);
        upgrade.departing = Some(Departing {
            version,
            step: Quiet::Settled,
            waiting,
            until: Instant::now() + QUIET_WITHIN,
        });
        self.depart_when_quiet();
    }

    /// Worker `id`'s watcher reached `step` of going quiet (or, with
    /// `None`, the worker is gone).
    pub fn on_quiet(&mut self, id: WorkerId, step: Option<Quiet>) {
        let Some(departing) = self.departing_mut() else {
            return;
        };
        if step.is_none_or(|step| step == departing.step) {
            departing.waiting.remove(&id);
            self.depart_when_quiet();
        }
    }

    /// The watchers took longer than [`QUIET_WITHIN`] to go quiet: the
    /// exec goes ahead.
    pub fn quiet_timed_out(&mut self) {
        let Some(departing) = self.departing_mut() else {
            return;
        };
        warn!(
            step = ?departing.step,
            workers = departing.waiting.len(),
            "upgrade: workers' watchers not quiet in time; handing over anyway"
        );
        departing.waiting.clear();
        departing.step = Quiet::Hushed;
        self.depart_when_quiet();
    }

    /// When the exec goes ahead, quiet or not.
    pub(super) fn departure_deadline(&self) -> Option<Instant> {
        self.upgrade.as_ref()?.departing.as_ref().map(|d| d.until)
    }

    fn departing_mut(&mut self) -> Option<&mut Departing> {
        self.upgrade.as_mut()?.departing.as_mut()
    }

    /// The next step of going quiet once every watcher reached this one;
    /// the exec after the last.
    fn depart_when_quiet(&mut self) {
        let Some(departing) = self.departing_mut() else {
            return;
        };
        if !departing.waiting.is_empty() {
            return;
        }
        if departing.step == Quiet::Hushed {
            self.depart();
            return;
        }
        departing.step = Quiet::Hushed;
        let waiting = self.effects.quiet(Quiet::Hushed);
        if let Some(departing) = self.departing_mut() {
            departing.waiting = waiting;
        }
        self.depart_when_quiet();
    }

    /// Execs the new program; returns only if that failed.
    fn depart(&mut self) {
        let Some(upgrade) = self.upgrade.take() else {
            return;
        };
        if let Some(departing) = &upgrade.departing {
            let quiet_for = QUIET_WITHIN
                .saturating_sub(departing.until.saturating_duration_since(Instant::now()));
            info!(
                to_version = %departing.version,
                quiet_ms = quiet_for.as_millis() as u64,
                "upgrade: watchers quiet; running the new program"
            );
        }
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
        self.effects.speak();
        Lifecycle::UpgradeFailed {
            reason: reason.clone(),
            stage: UpgradeStage::Exec,
        }
        .log();
        self.counters.upgrades_failed += 1;
        self.effects.systemd(Systemd::Ready(self.status_line()));
        for reply in replies {
            let _ = reply.send(Reply::Upgrade(UpgradeOutcome::ExecFailed {
                reason: reason.clone(),
            }));
        }
    }

    /// Stop during an upgrade: its waiters are told, and watchers gone
    /// quiet for it speak again.
    pub fn cancel_upgrade(&mut self) {
        if let Some(upgrade) = self.upgrade.take() {
            if upgrade.departing.is_some() {
                self.effects.speak();
            }
            answer(upgrade.waiters, UpgradeOutcome::Cancelled);
        }
    }

    /// The supervisor's state for the next image.
    fn handover_state(&self) -> SupervisorState {
        SupervisorState {
            next_id: self.next_id,
            generation: self.generation,
            slots: self.slots.clone(),
            workers: self
                .workers
                .iter()
                .map(|(&id, worker)| Numbered {
                    id,
                    worker: worker.clone(),
                })
                .collect(),
            counters: self.counters.clone(),
            last_reload: self.reloads.last.clone(),
            lame_duck: self.lame_duck,
            started_at_ms: wall_clock::to_ms(self.started),
        }
    }

    /// The supervisor of an image that adopted `state` from the previous
    /// one: its workers (those still known to the effects), slots and
    /// history, running.
    pub fn adopt(config: crate::config::MasterConfig, effects: E, state: SupervisorState) -> Self {
        let mut supervisor = Supervisor::new(config, effects);
        supervisor.phase = Phase::Running;
        supervisor.next_id = state.next_id;
        supervisor.generation = state.generation;
        supervisor.counters = state.counters;
        supervisor.reloads.last = state.last_reload;
        supervisor.lame_duck = state.lame_duck;
        supervisor.started = wall_clock::from_ms(state.started_at_ms);
        supervisor.slots = state.slots;
        supervisor.workers = state
            .workers
            .into_iter()
            .map(|numbered| (numbered.id, numbered.worker))
            .collect();
        supervisor.config.workers = supervisor.slots.len();
        supervisor.reloads.release = supervisor.keep_release();
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
            Lifecycle::UpgradeFailed {
                reason: reason.to_owned(),
                stage: UpgradeStage::TakeOver,
            }
            .log();
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
        Lifecycle::Upgraded {
            version: version.to_owned(),
            pid: std::process::id(),
            took_ms,
            workers: self.workers.len(),
        }
        .log();
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
