//! The supervisor's state machine: worker slots, crash replacement with a
//! crash-loop backoff, rolling reloads (queued, failed, rolled back, on
//! probation), memory rolls and shutdown.
//!
//! It takes inputs (worker events, signals' intents, control requests,
//! timers) and acts only through [`Effects`], never on a process or a
//! socket itself: the master's loop feeds it real events and real
//! [`super::effects::Processes`]; its unit tests feed it events by hand and
//! read back what it asked for. A worker's crash is an input to handle,
//! never an error that ends the loop.

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, info, info_span, warn};

use super::effects::{Effects, Systemd};
use super::health::{Healthy, Unhealthy};
use super::listening::{Listening, Look, Suspects};
use super::release::Release;
use super::rollout::Rollout;
pub(crate) use super::state::{Cause, Phase, Slot, Worker, WorkerState};
use super::worker::{WorkerEvent, WorkerId};
use crate::config::{self, MasterConfig};
use crate::control;
use crate::control::reply::{Problem, ReloadOutcome, Reply};
use crate::control::status::Counters;
use crate::error::MasterError;
use crate::event::{Exit, Lifecycle, WorkerRef};
use crate::protocol::Settlement;
use crate::signals::Intent;

/// A worker that lived at least this long before crashing is restarted at
/// once; one that dies sooner counts towards the crash-loop backoff.
const STABLE_LIFETIME: Duration = Duration::from_secs(1);
/// Generations whose workers may drain at their own pace at once. Draining
/// workers keep idle keep-alive connections for the whole grace; in a reload
/// storm the workers of older generations are hurried (their grace ends at
/// once), so that processes and memory stay bounded.
const MAX_DRAINING_GENERATIONS: usize = 2;
/// Memory checks in a row a worker must be above `--max-memory` to be
/// rolled: a short peak is not a leak.
const MEMORY_CHECKS_OVER: u32 = 3;

/// A moment the supervisor waits for; the master's loop sleeps until the
/// next one ([`Supervisor::next_timer`]) and says when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// SIGTERM's `--shutdown-delay` is over: drain and exit.
    ShutdownDelay,
    /// The newest generation stayed up through its probation.
    Probation,
    /// A backed-off restart is due.
    Restart,
    /// The watchers took too long to go quiet for an upgrade's exec.
    Departure,
}

/// A generation rolled in and not yet trusted: a crash of one of its
/// workers before `until` rolls back to `previous`.
#[derive(Debug)]
pub(super) struct Probation<P> {
    pub generation: u64,
    pub until: Instant,
    /// How long the rollout took, for the answer.
    rollout_ms: u64,
    pub previous: Release<P>,
}

/// Everything about reloads: the one rolling, the one queued behind it, who
/// waits for which, what each generation was started from, the last
/// outcome.
#[derive(Debug)]
pub(super) struct Reloads<P> {
    pub rollout: Option<Rollout>,
    /// The rollout in progress rolls back to an older release.
    rolling_back: bool,
    /// A reload asked for while another ran (or before the first workers
    /// were ready): one more reload runs after it, however many were asked.
    queued: bool,
    /// `baton reload --wait` clients waiting for the reload in progress...
    waiters: Vec<oneshot::Sender<Reply>>,
    /// ...and for the one queued behind it.
    queued_waiters: Vec<oneshot::Sender<Reply>>,
    /// The last reload's outcome, for STATUS= lines and `baton status`.
    pub last: Option<ReloadOutcome>,
    /// The newest generation, rolled in, before its probation ends.
    pub probation: Option<Probation<P>>,
    /// The configuration before the reload in progress read a new one,
    /// restored if the reload is abandoned.
    previous_config: Option<MasterConfig>,
    /// What the newest generation was started from...
    release: Option<Release<P>>,
    /// ...and, while a reload rolls, what the generation it replaces was.
    previous_release: Option<Release<P>>,
    /// A reload refused by its health probe, answered once the worker it
    /// refused has drained: a COMMAND worker serves from the shared queue
    /// until it exits, and "failed" must mean the old release serves alone.
    pub refused: Option<(WorkerId, ReloadOutcome)>,
}

impl<P> Default for Reloads<P> {
    fn default() -> Self {
        Reloads {
            rollout: None,
            rolling_back: false,
            refused: None,
            queued: false,
            waiters: Vec::new(),
            queued_waiters: Vec::new(),
            last: None,
            probation: None,
            previous_config: None,
            release: None,
            previous_release: None,
        }
    }
}

impl<P> Reloads<P> {
    pub fn is_queued(&self) -> bool {
        self.queued
    }

    fn queue(&mut self, waiter: Option<oneshot::Sender<Reply>>) {
        self.queued = true;
        self.queued_waiters.extend(waiter);
    }

    /// Waiters for the next reload to start, or the one queued.
    fn wait_for_next(&mut self, waiters: Vec<oneshot::Sender<Reply>>) {
        self.queued_waiters.extend(waiters);
    }

    fn is_rolling_back(&self) -> bool {
        self.rolling_back
    }

    /// Whether a reload was queued; it is not any more.
    fn take_queued(&mut self) -> bool {
        std::mem::take(&mut self.queued)
    }

    /// A reload rolls in a release started from `kept`; the one it
    /// replaces is kept for a rollback while it rolls and on probation.
    fn roll_in(&mut self, kept: Option<Release<P>>) {
        self.previous_release = std::mem::replace(&mut self.release, kept);
    }

    /// The configuration before the reload read a new one, `previous`, is
    /// kept until the reload completes.
    fn keep_config(&mut self, previous: MasterConfig) {
        self.previous_config = Some(previous);
    }

    /// Every slot runs the new generation: whether it was a rollback, and
    /// the release it replaced (to roll back to during its probation).
    fn rolled_in(&mut self) -> (bool, Option<Release<P>>) {
        self.rollout = None;
        self.previous_config = None;
        let rollback = std::mem::take(&mut self.rolling_back);
        (rollback, self.previous_release.take())
    }

    /// The reload in progress is given up: the configuration to go back to,
    /// if it read a new one. The release in force stays the old one.
    fn abandon(&mut self) -> Option<MasterConfig> {
        if let Some(previous) = self.previous_release.take() {
            self.release = Some(previous);
        }
        self.rolling_back = false;
        self.previous_config.take()
    }

    /// Whether a crash of a worker of `generation` fails a release: it is
    /// on probation, or being rolled in (and not a rollback) with an older
    /// release to go back to.
    fn on_trial(&self, generation: u64) -> bool {
        let probation = self
            .probation
            .as_ref()
            .is_some_and(|p| p.generation == generation);
        let rolling_in = self
            .rollout
            .as_ref()
            .is_some_and(|r| r.generation == generation && !self.rolling_back)
            && self.previous_release.is_some();
        probation || rolling_in
    }

    /// The release on trial failed: the release to roll back to, if any,
    /// with the rollout in progress (stopped).
    fn fail_trial(&mut self) -> Option<(Release<P>, Option<Rollout>)> {
        let previous = match self.probation.take() {
            Some(probation) => probation.previous,
            None => self.previous_release.take()?,
        };
        self.previous_config = None;
        Some((previous, self.rollout.take()))
    }

    /// A rollback to `release` starts.
    fn roll_back_to(&mut self, release: Release<P>) {
        self.release = Some(release);
        self.rolling_back = true;
    }

    /// The reload starting now covers every request queued so far.
    fn begin(&mut self, waiter: Option<oneshot::Sender<Reply>>) {
        let queued = std::mem::take(&mut self.queued_waiters);
        self.waiters.extend(queued);
        self.waiters.extend(waiter);
    }

    fn answer(&mut self, reply: &Reply) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(reply.clone());
        }
    }

    /// Forgets the queued reload and the probation, and answers everyone
    /// waiting: shutdown.
    fn cancel(&mut self, reply: &Reply) {
        self.queued = false;
        self.probation = None;
        let queued = std::mem::take(&mut self.queued_waiters);
        self.waiters.extend(queued);
        self.answer(reply);
    }
}

pub(super) struct Supervisor<E: Effects> {
    pub config: MasterConfig,
    pub effects: E,
    pub slots: Vec<Slot>,
    /// Every live worker process: serving, starting or draining.
    pub workers: BTreeMap<WorkerId, Worker>,
    pub next_id: WorkerId,
    /// The newest generation started.
    pub generation: u64,
    pub phase: Phase,
    pub reloads: Reloads<E::Program>,
    /// Set when the first start failed: the master exits with it.
    pub failure: Option<MasterError>,
    /// The program path workers start from (a rollback starts them from a
    /// copy of an older file until the next reload).
    pub program_path: std::path::PathBuf,
    /// When the master started, for `baton status`.
    pub started: Instant,
    /// What happened over its life, for `/metrics` and `baton status`.
    pub counters: Counters,
    /// Lame duck: health checks fail, the workers go on serving.
    pub lame_duck: bool,
    /// When a SIGTERM's `--shutdown-delay` ends and the drain begins.
    pub shutdown_at: Option<Instant>,
    /// `baton upgrade` in progress (its program being checked).
    pub upgrade: Option<super::upgrade::Upgrade>,
    /// What the workers did to the listeners, and which are down.
    pub listening: Listening,
    /// Handed-over batches given to several workers, not all settled.
    pub settling: placing::Settling,
}

impl<E: Effects> Supervisor<E> {
    pub fn new(config: MasterConfig, effects: E) -> Self {
        let slots = (0..config.workers).map(|_| Slot::default()).collect();
        Supervisor {
            program_path: config.program.clone(),
            config,
            effects,
            slots,
            workers: BTreeMap::new(),
            next_id: 1,
            generation: 1,
            phase: Phase::Starting,
            reloads: Reloads::default(),
            failure: None,
            started: Instant::now(),
            counters: Counters::default(),
            lame_duck: false,
            shutdown_at: None,
            upgrade: None,
            listening: Listening::default(),
            settling: placing::Settling::default(),
        }
    }

    /// Starts the first generation.
    pub fn start(&mut self) {
        info!(workers = self.slots.len(), program = %self.config.program.display(), "starting workers");
        self.reloads.release = self.keep_release();
        for slot in 0..self.slots.len() {
            self.slots[slot].generation = 1;
            match self.spawn(slot, 1, Cause::Start) {
                Ok(id) => self.slots[slot].current = Some(id),
                Err(reason) => {
                    self.fail_start(reason);
                    return;
                }
            }
        }
    }

    /// Where this host stands for a load balancer: `serving`, `lame_duck`
    /// (health checks fail, the workers still serve), `listener_down` (a
    /// listener is not listening and could not be put right) or `draining`
    /// (shutting down).
    pub fn host_state(&self) -> &'static str {
        match self.phase {
            Phase::Stopping => "draining",
            _ if self.lame_duck => "lame_duck",
            _ if self.listening.broken().next().is_some() => "listener_down",
            _ => "serving",
        }
    }

    /// Reads the listeners back from the kernel and puts right what a
    /// worker changed (see [`super::listening`]).
    pub fn keep_listening(&mut self, look: Look) {
        let repairs = self.effects.keep_listening();
        let suspects = if repairs.is_empty() {
            Suspects::default()
        } else {
            Suspects {
                draining: self
                    .workers
                    .values()
                    .filter(|w| w.state.is_draining())
                    .map(|w| w.pid)
                    .collect(),
                all: self.workers.values().map(|w| w.pid).collect(),
            }
        };
        self.listening
            .record(look, repairs, suspects, &mut self.counters);
    }

    /// Health checks fail from now on; the workers go on serving.
    fn enter_lame_duck(&mut self, reason: &str) {
        if !self.lame_duck && self.phase != Phase::Stopping {
            self.lame_duck = true;
            Lifecycle::LameDuck {
                reason: reason.to_owned(),
            }
            .log();
        }
    }

    /// SIGTERM: with `--shutdown-delay`, first lame duck for that long (so
    /// that load balancers stop sending traffic while it is still served),
    /// then the drain; a second SIGTERM drains at once.
    fn shutdown_after_delay(&mut self) {
        let delay = self.config.shutdown_delay;
        if delay.is_zero() || self.shutdown_at.is_some() || self.phase == Phase::Stopping {
            self.stop(false);
            return;
        }
        self.enter_lame_duck("shutting down after --shutdown-delay");
        self.shutdown_at = Some(config::deadline(Instant::now(), delay));
        info!(
            delay_ms = delay.as_millis() as u64,
            "shutdown delayed: serving as a lame duck first"
        );
    }

    /// The next moment the supervisor waits for, and what falls due then.
    pub fn next_timer(&self) -> Option<(Instant, Timer)> {
        let probation_end = self.reloads.probation.as_ref().map(|p| p.until);
        let next_restart = self.slots.iter().filter_map(|s| s.restart_at).min();
        [
            (self.shutdown_at, Timer::ShutdownDelay),
            (probation_end, Timer::Probation),
            (next_restart, Timer::Restart),
            (self.departure_deadline(), Timer::Departure),
        ]
        .into_iter()
        .filter_map(|(at, timer)| Some((at?, timer)))
        .min_by_key(|&(at, _)| at)
    }

    /// `timer` fell due.
    pub fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::ShutdownDelay => {
                self.shutdown_at = None;
                self.stop(false);
            }
            Timer::Probation => self.pass_probation("stayed up through its probation"),
            Timer::Restart => {
                let now = Instant::now();
                for slot in 0..self.slots.len() {
                    if self.slots[slot].restart_at.is_some_and(|at| at <= now) {
                        self.restart(slot);
                    }
                }
            }
            Timer::Departure => self.quiet_timed_out(),
        }
    }

    /// Whether the master is done: stopping, and every worker gone.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Stopping && self.workers.is_empty()
    }

    /// How the master's run ends, once [`Supervisor::is_done`].
    pub fn finish(self) -> Result<(), MasterError> {
        match self.failure {
            Some(failure) => Err(failure),
            None => {
                info!("all workers exited; master exits");
                Ok(())
            }
        }
    }

    pub fn watchdog(&mut self) {
        self.effects.systemd(Systemd::Watchdog);
    }

    pub fn on_signal(&mut self, intent: Intent, signal: &'static str) {
        info!(signal, "signal received");
        match intent {
            // Workers' exits come from their watchers; the master's loop
            // reaps orphans.
            Intent::ChildExited => {}
            Intent::Reload => self.request_reload(None),
            Intent::Shutdown => self.shutdown_after_delay(),
            Intent::Quit => self.stop(true),
            Intent::Upgrade => self.request_upgrade(
                super::upgrade::UpgradeRequest {
                    roll: true,
                    fault: None,
                },
                None,
            ),
        }
    }

    pub fn on_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Ready { id } => self.on_ready(id),
            WorkerEvent::Failed { id, reason } => self.on_failed(id, reason),
            WorkerEvent::Exited { id, status } => {
                self.on_exit(id, status);
                // A gone worker's watcher has nothing to go quiet about.
                self.on_quiet(id, None);
            }
            WorkerEvent::Stats { id, stats } => {
                if let Some(worker) = self.workers.get_mut(&id) {
                    worker.stats = Some(stats);
                }
            }
            WorkerEvent::Probed { id, outcome } => self.on_probed(id, outcome),
            WorkerEvent::Handover(handed) => self.on_handover(handed),
            WorkerEvent::Settled {
                from,
                batch,
                positions,
                taken,
            } => {
                let count = positions.len() as u64;
                if taken {
                    self.counters.connections_handed_over += count;
                } else {
                    self.counters.connections_fell_back += count;
                }
                if let Some(settlement) = self.settling.part(from, batch, positions, taken) {
                    self.effects.settle(from, batch, settlement);
                }
            }
            WorkerEvent::FellBack { count } => {
                self.counters.connections_fell_back += count as u64;
            }
            WorkerEvent::Rescued {
                connections,
                requests,
            } => {
                self.counters.connections_rescued += connections;
                self.counters.requests_rescued += requests;
            }
            WorkerEvent::Quiet { id, step } => self.on_quiet(id, Some(step)),
        }
    }

    pub fn on_control(&mut self, request: control::Request) {
        let control::Request {
            command,
            reply,
            connection,
        } = request;
        match command {
            control::Command::Upgrade {
                wait,
                keep_workers,
                fault,
            } => {
                let request = super::upgrade::UpgradeRequest {
                    roll: !keep_workers,
                    fault,
                };
                if wait {
                    let waiter = super::upgrade::Waiter { reply, connection };
                    self.request_upgrade(request, Some(waiter));
                } else {
                    self.request_upgrade(request, None);
                    let _ = reply.send(Reply::UpgradeRequested);
                }
            }
            control::Command::Reload { wait: true } => self.request_reload(Some(reply)),
            control::Command::Reload { wait: false } => {
                self.request_reload(None);
                let _ = reply.send(Reply::ReloadRequested);
            }
            control::Command::Status => {
                let mut status = self.status();
                for row in &mut status.workers {
                    row.usage = self.effects.usage(row.pid);
                }
                let _ = reply.send(Reply::Status(Box::new(status)));
            }
            control::Command::Stop => {
                self.stop(false);
                let _ = reply.send(Reply::Stopping);
            }
            control::Command::Metrics => {
                let _ = reply.send(Reply::Metrics {
                    text: super::metrics::render(&self.status()),
                });
            }
            control::Command::Drain => {
                self.enter_lame_duck("asked for");
                let _ = reply.send(Reply::LameDuck);
            }
            control::Command::Undrain => {
                let answer = if self.phase == Phase::Stopping || self.shutdown_at.is_some() {
                    Reply::Error(Problem::ShuttingDown)
                } else {
                    if std::mem::take(&mut self.lame_duck) {
                        Lifecycle::Undrained.log();
                    }
                    Reply::Serving
                };
                let _ = reply.send(answer);
            }
            control::Command::Health => {
                let state = self.host_state().to_owned();
                let _ = reply.send(Reply::Health { state });
            }
            control::Command::Ready => {
                let phase = match self.phase {
                    Phase::Starting => "starting",
                    Phase::Running => "running",
                    Phase::Stopping => "stopping",
                };
                let _ = reply.send(Reply::Readiness {
                    phase: phase.to_owned(),
                });
            }
        }
    }

    /// A STATUS= line a person can read.
    pub(super) fn status_line(&self) -> String {
        let ready = self.ready_slots();
        let mut line = format!(
            "{ready}/{} workers ready, generation {}",
            self.slots.len(),
            self.generation
        );
        if let Some(reload) = &self.reloads.last {
            line += "; last reload ";
            line += &reload.summary();
        }
        line
    }

    /// Starts a worker for `slot`. The caller decides whether it fills the
    /// slot now (start, crash) or later (rollout).
    fn spawn(&mut self, slot: usize, generation: u64, cause: Cause) -> Result<WorkerId, String> {
        let id = self.next_id;
        self.next_id += 1;
        // A new worker of a reload is probed (see `on_probe`).
        let probed = self.probes_new_workers() && cause == Cause::Reload;
        let pid = self
            .effects
            .spawn(id, slot, generation, &self.config, probed)?;
        let worker = WorkerRef {
            pid,
            slot,
            generation,
        };
        Lifecycle::WorkerStarted {
            worker,
            cause: cause.to_string(),
        }
        .log();
        self.workers.insert(
            id,
            Worker {
                pid,
                slot,
                generation,
                cause,
                state: WorkerState::Starting,
                started: Instant::now(),
                stats: None,
                over_memory: 0,
                passed_probe: false,
                failure: None,
                handed_to: 0,
                speaks_protocol: self.config.foreign.is_none(),
            },
        );
        Ok(id)
    }

    fn on_ready(&mut self, id: WorkerId) {
        let on_probe = self.on_probe(id);
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.state != WorkerState::Starting {
            return;
        }
        // A new worker on probe takes its slot once it also passed.
        if on_probe && !worker.passed_probe {
            worker.state = WorkerState::Probing;
            return;
        }
        self.take_place(id);
    }

    /// Whether worker `id` is probed (`--health`) before it takes its
    /// slot: a new worker of a reload, not of a rollback to a release that
    /// served.
    fn on_probe(&self, id: WorkerId) -> bool {
        self.probes_new_workers() && self.is_pending_new_worker(id)
    }

    /// Whether the new workers of the rollout in progress, or about to
    /// start, are probed: with `--health`, unless it rolls back.
    fn probes_new_workers(&self) -> bool {
        self.config.health.is_some() && !self.reloads.is_rolling_back()
    }

    /// Starts the probes of worker `id`, just started, if it is on probe:
    /// they begin as soon as it listens.
    fn start_probes(&mut self, id: WorkerId) {
        let (Some(check), Some(worker)) = (&self.config.health, self.workers.get(&id)) else {
            return;
        };
        if self.on_probe(id) {
            let allowance = self.config.ready_timeout;
            self.effects.probe(id, worker.pid, check, allowance);
        }
    }

    /// How the probes of worker `id` went: it takes its place, or the
    /// reload that started it fails.
    fn on_probed(&mut self, id: WorkerId, outcome: Result<Healthy, Unhealthy>) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if !matches!(worker.state, WorkerState::Starting | WorkerState::Probing) {
            return;
        }
        let named = worker.named();
        match outcome {
            Ok(healthy) => {
                Lifecycle::WorkerHealthy {
                    worker: named,
                    probes: healthy.probes,
                    connections: healthy.connections,
                    window_ms: healthy.window_ms,
                    clients_held: healthy.clients_held,
                }
                .log();
                worker.passed_probe = true;
                if worker.state == WorkerState::Probing {
                    self.take_place(id);
                }
            }
            Err(unhealthy) => {
                Lifecycle::WorkerUnhealthy {
                    worker: named,
                    status: unhealthy.status,
                    reason: unhealthy.reason.clone(),
                    window_ms: unhealthy.window_ms,
                    clients_held: unhealthy.clients_held,
                    connections: unhealthy.connections,
                }
                .log();
                self.give_up_rollout(unhealthy.reason.clone(), Some((id, named.pid, unhealthy)));
            }
        }
    }

    /// Worker `id` is ready (and healthy, if probed): it serves, in its
    /// slot or in the slot a rollout or a successor hands it.
    fn take_place(&mut self, id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.state = WorkerState::Ready;
        Lifecycle::WorkerReady {
            worker: worker.named(),
            cause: worker.cause.to_string(),
        }
        .log();
        let (pid, slot) = (worker.pid, worker.slot);
        self.keep_listening(Look::WorkerReady(pid));

        if self.phase == Phase::Starting && self.all_slots_ready() {
            self.phase = Phase::Running;
            Lifecycle::AllWorkersReady {
                workers: self.slots.len(),
                generation: self.generation,
            }
            .log();
            self.effects.systemd(Systemd::Ready(self.status_line()));
            self.start_queued_reload();
            return;
        }
        if self.slots.get(slot).and_then(|s| s.successor) == Some(id) {
            self.take_over(slot, id);
            return;
        }
        let handed_over = self.reloads.rollout.as_mut().and_then(|r| r.ready(id));
        if let Some(slot) = handed_over {
            let generation = self
                .reloads
                .rollout
                .as_ref()
                .map_or(self.generation, |r| r.generation);
            let old = self.slots[slot].current.replace(id);
            self.slots[slot].generation = generation;
            self.slots[slot].quick_failures = 0;
            self.slots[slot].restart_at = None;
            if let Some(old) = old {
                self.drain(old);
            }
            self.advance_rollout();
        }
    }

    fn on_failed(&mut self, id: WorkerId, reason: String) {
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.failure = Some(reason.clone());
            let (worker, reason) = (worker.named(), reason.clone());
            Lifecycle::WorkerFailed { worker, reason }.log();
        }
        if self.is_pending_new_worker(id) {
            self.abandon_rollout(format!("the new worker failed: {reason}"));
        }
    }

    /// The first new worker the rollout waits for, if any.
    #[cfg(test)]
    fn pending_new_worker(&self) -> Option<WorkerId> {
        self.reloads.rollout.as_ref()?.pending().next()
    }

    fn is_pending_new_worker(&self, id: WorkerId) -> bool {
        self.reloads
            .rollout
            .as_ref()
            .is_some_and(|rollout| rollout.is_pending(id))
    }

    fn on_exit(&mut self, id: WorkerId, status: ExitStatus) {
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        let (pid, slot) = (worker.pid, worker.slot);
        let named = worker.named();
        self.effects.gone(id, pid);
        self.keep_listening(Look::WorkerExited(pid));
        let status = describe(status);

        let exited = |when| {
            let status = status.clone();
            let worker = named;
            Lifecycle::WorkerExited {
                worker,
                status,
                when,
            }
            .log();
        };
        if worker.state.is_draining() {
            let status = status.clone();
            Lifecycle::WorkerDrained {
                worker: named,
                status,
            }
            .log();
            if let Some((_, outcome)) = self.reloads.refused.take_if(|(refused, _)| *refused == id)
            {
                self.conclude(outcome);
            }
            return;
        }
        if self.is_pending_new_worker(id) {
            exited(Exit::Rollout);
            self.abandon_rollout(format!(
                "the new worker exited before it was ready ({status})"
            ));
            return;
        }
        if self.phase == Phase::Stopping {
            exited(Exit::Stopping);
            return;
        }
        if self.phase == Phase::Starting && worker.state == WorkerState::Starting {
            exited(Exit::FirstStart);
            self.fail_start(format!(
                "worker {pid} exited before it was ready ({status})"
            ));
            return;
        }
        if self.slots.get(slot).and_then(|s| s.successor) == Some(id) {
            exited(Exit::Successor);
            self.slots[slot].successor = None;
            return;
        }
        if self.slots.get(slot).and_then(|s| s.current) != Some(id) {
            return;
        }
        self.on_crash(worker, status);
    }

    /// The ready worker of its slot died on its own: it is replaced, or its
    /// release rolled back if it was on trial.
    fn on_crash(&mut self, worker: Worker, status: String) {
        let (pid, slot, generation) = (worker.pid, worker.slot, worker.generation);
        Lifecycle::WorkerCrashed {
            worker: worker.named(),
            status: status.clone(),
        }
        .log();
        self.counters.crashes += 1;
        self.slots[slot].current = None;
        if self.reloads.on_trial(generation) {
            let lived = humantime::format_duration(Duration::from_millis(
                worker.started.elapsed().as_millis() as u64,
            ));
            let what = match &worker.failure {
                Some(failure) => format!("was killed ({failure})"),
                None => format!("crashed ({status})"),
            };
            self.roll_back(
                slot,
                format!("worker {pid} of generation {generation} {what} {lived} after it started"),
            );
            return;
        }
        self.effects.systemd(Systemd::Status(format!(
            "{}; worker {pid} crashed ({status})",
            self.status_line()
        )));
        if let Some(successor) = self.slots[slot].successor.take() {
            // Already starting: it is the replacement.
            self.slots[slot].current = Some(successor);
            return;
        }
        let lived = worker.started.elapsed();
        let quick = worker.state == WorkerState::Starting || lived < STABLE_LIFETIME;
        self.schedule_restart(slot, quick);
    }

    /// Restarts `slot` now, or after a backoff when its workers keep dying
    /// young: the first quick deaths restart at once, later ones wait
    /// 100 ms, 200 ms, … up to [`BACKOFF_CAP`].
    pub(super) fn schedule_restart(&mut self, slot: usize, quick: bool) {
        let state = &mut self.slots[slot];
        let Some(delay) = state.backoff(quick) else {
            self.restart(slot);
            return;
        };
        Lifecycle::Backoff {
            slot,
            delay_ms: delay.as_millis() as u64,
            failures: state.quick_failures,
        }
        .log();
        state.restart_at = Some(Instant::now() + delay);
    }

    fn restart(&mut self, slot: usize) {
        self.slots[slot].restart_at = None;
        self.slots[slot].restarts += 1;
        self.counters.restarts += 1;
        let generation = self.slots[slot].generation;
        match self.spawn(slot, generation, Cause::Replacement) {
            Ok(id) => self.slots[slot].current = Some(id),
            Err(reason) => {
                error!(slot, %reason, "cannot start a replacement worker");
                self.schedule_restart(slot, true);
            }
        }
    }

    /// The newest generation with a ready worker in a slot: what serves,
    /// whatever is being rolled in or failed to. With no worker ready (a
    /// crash loop), the generation the slots restart in.
    pub fn serving_generation(&self) -> u64 {
        let ready = self
            .slots
            .iter()
            .filter_map(|slot| self.workers.get(&slot.current?))
            .filter(|w| w.state == WorkerState::Ready)
            .map(|w| w.generation)
            .max();
        ready
            .or_else(|| self.slots.iter().map(|slot| slot.generation).max())
            .unwrap_or(self.generation)
    }

    /// Slots whose current worker is ready.
    pub fn ready_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| {
                slot.current
                    .and_then(|id| self.workers.get(&id))
                    .is_some_and(|w| w.state == WorkerState::Ready)
            })
            .count()
    }

    fn all_slots_ready(&self) -> bool {
        self.ready_slots() == self.slots.len()
    }

    /// Starts a reload, or queues one behind the reload in progress (however
    /// many are asked for, one more runs). `waiter` hears the outcome of the
    /// reload that covers the request.
    /// A reload that answers every one of `waiters`.
    pub(super) fn request_reload_for(&mut self, waiters: Vec<oneshot::Sender<Reply>>) {
        // The reload that starts (or the one queued) covers queued waiters.
        self.reloads.wait_for_next(waiters);
        self.request_reload(None);
    }

    fn request_reload(&mut self, waiter: Option<oneshot::Sender<Reply>>) {
        if self.upgrade.is_some() {
            self.reload_during_upgrade(waiter);
            return;
        }
        match self.phase {
            Phase::Stopping => {
                info!("reload ignored: shutting down");
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Reply::Error(Problem::ShuttingDown));
                }
            }
            Phase::Starting => {
                info!("reload queued until the first workers are ready");
                self.reloads.queue(waiter);
            }
            Phase::Running if self.reloads.rollout.is_some() => {
                info!("reload queued behind the one in progress");
                self.reloads.queue(waiter);
            }
            Phase::Running => {
                // A new reload ends the probation of the last one: the
                // operator has moved on.
                self.pass_probation("probation cut short by a new reload");
                self.reloads.begin(waiter);
                if let Err(reason) = self.reread_config() {
                    let rejected = reason.clone();
                    Lifecycle::ReloadRejected { reason: rejected }.log();
                    self.conclude(ReloadOutcome::Rejected { reason });
                    return;
                }
                self.generation += 1;
                let _span = info_span!("reload", generation = self.generation).entered();
                Lifecycle::ReloadStarted {
                    generation: self.generation,
                }
                .log();
                // Workers start from the program path again, even after a
                // rollback started them from a copy.
                self.config.program = self.program_path.clone();
                let kept = self.keep_release();
                self.reloads.roll_in(kept);
                self.effects.systemd(Systemd::Reloading(format!(
                    "reloading to generation {}",
                    self.generation
                )));
                self.begin_rollout(self.generation);
            }
        }
    }

    /// Rolls `generation` in over every slot; a changed worker count takes
    /// effect with it: new slots are filled by the rollout, surplus ones
    /// drained when it completes.
    fn begin_rollout(&mut self, generation: u64) {
        let wanted = self.config.workers;
        while self.slots.len() < wanted {
            self.slots.push(Slot {
                generation,
                ..Slot::default()
            });
        }
        self.reloads.rollout = Some(Rollout::new(generation, wanted, self.config.reload_batch));
        self.advance_rollout();
    }

    /// Starts the next slots' new workers (as many as `--reload-batch` lets
    /// start at once), or finishes the rollout.
    fn advance_rollout(&mut self) {
        loop {
            let Some(rollout) = &self.reloads.rollout else {
                return;
            };
            let generation = rollout.generation;
            if rollout.is_complete() {
                let elapsed_ms = rollout.started.elapsed().as_millis() as u64;
                self.complete_rollout(generation, elapsed_ms);
                return;
            }
            let Some(slot) = rollout.slot_to_start() else {
                return;
            };
            // A rollback restarts a crashed slot at once, in its own
            // generation: that slot is done.
            let restarted = &self.slots[slot];
            if restarted.generation == generation
                && (restarted.current.is_some() || restarted.restart_at.is_some())
            {
                if let Some(rollout) = self.reloads.rollout.as_mut() {
                    rollout.skip();
                }
                continue;
            }
            match self.spawn(slot, generation, Cause::Reload) {
                Ok(id) => {
                    if let Some(rollout) = self.reloads.rollout.as_mut() {
                        rollout.started(id);
                    }
                    self.start_probes(id);
                }
                Err(reason) => {
                    return self.abandon_rollout(format!("cannot start a new worker: {reason}"))
                }
            }
        }
    }

    /// Every slot runs `generation`: the reload succeeded, or its release
    /// goes on probation; a rollback is complete.
    fn complete_rollout(&mut self, generation: u64, elapsed_ms: u64) {
        Lifecycle::ReloadComplete {
            generation,
            elapsed_ms,
        }
        .log();
        let (rollback, previous) = self.reloads.rolled_in();
        self.shrink_slots(self.config.workers);
        if rollback {
            Lifecycle::RollbackComplete {
                generation,
                elapsed_ms,
            }
            .log();
            self.effects.systemd(Systemd::Status(self.status_line()));
        } else {
            match previous {
                Some(previous) if !self.config.probation.is_zero() => {
                    let probation_ms = self.config.probation.as_millis() as u64;
                    Lifecycle::ProbationStarted {
                        generation,
                        probation_ms,
                    }
                    .log();
                    self.reloads.probation = Some(Probation {
                        generation,
                        until: config::deadline(Instant::now(), self.config.probation),
                        rollout_ms: elapsed_ms,
                        previous,
                    });
                }
                _ => self.conclude(ReloadOutcome::Ok {
                    generation,
                    duration_ms: elapsed_ms,
                    probation: None,
                }),
            }
        }
        self.start_queued_reload();
    }

    /// Gives up on the reload in progress: slots not yet replaced keep their
    /// old workers, which never stopped serving.
    fn abandon_rollout(&mut self, reason: String) {
        self.give_up_rollout(reason, None);
    }

    /// [`Supervisor::abandon_rollout`], with the new worker whose probe
    /// failed, if that is why.
    fn give_up_rollout(&mut self, reason: String, probed: Option<(WorkerId, u32, Unhealthy)>) {
        let Some(rollout) = self.reloads.rollout.take() else {
            return;
        };
        Lifecycle::ReloadFailed {
            generation: rollout.generation,
            replaced: rollout.replaced(),
            slots: self.slots.len(),
            reason: reason.clone(),
        }
        .log();
        let generation = rollout.generation;
        // New workers still starting may serve clients from the shared
        // queue already: they drain. One that failed is killed.
        for pending in rollout.pending() {
            if self
                .workers
                .get(&pending)
                .is_none_or(|w| w.failure.is_some())
            {
                self.effects.kill(pending);
            } else {
                self.drain(pending);
            }
        }
        match probed {
            // The reload is answered once the unhealthy worker is gone.
            Some((id, pid, unhealthy)) => {
                let outcome = ReloadOutcome::Unhealthy {
                    generation,
                    pid,
                    status: unhealthy.status,
                    body: unhealthy.body,
                    reason,
                };
                self.reloads.refused = Some((id, outcome));
            }
            None => self.conclude(ReloadOutcome::Failed { generation, reason }),
        }
        // The old configuration stays in force, worker count included.
        if let Some(previous) = self.reloads.abandon() {
            self.config = previous;
        }
        self.shrink_slots(self.config.workers);
        self.start_queued_reload();
    }

    /// Records a reload's outcome, tells systemd the reload is over and
    /// answers everyone waiting for it.
    fn conclude(&mut self, outcome: ReloadOutcome) {
        let answer = Reply::Reload(outcome.clone());
        let rejected = matches!(outcome, ReloadOutcome::Rejected { .. });
        let counters = &mut self.counters;
        *match outcome {
            ReloadOutcome::Ok { .. } => &mut counters.reloads_ok,
            ReloadOutcome::Failed { .. } => &mut counters.reloads_failed,
            ReloadOutcome::Rejected { .. } => &mut counters.reloads_rejected,
            ReloadOutcome::RolledBack { .. } => &mut counters.reloads_rolled_back,
            ReloadOutcome::Unhealthy { .. } => &mut counters.reloads_unhealthy,
        } += 1;
        self.reloads.last = Some(outcome);
        let status = self.status_line();
        self.effects.systemd(if rejected {
            // RELOADING=1 was never sent.
            Systemd::Status(status)
        } else {
            // READY=1 ends a reload for systemd whatever its outcome.
            Systemd::Ready(status)
        });
        self.reloads.answer(&answer);
    }

    /// Runs the reload asked for while another one ran, if any.
    fn start_queued_reload(&mut self) {
        if self.reloads.take_queued() {
            self.request_reload(None);
        }
    }

    /// Ends the probation in progress, if any, as passed.
    pub fn pass_probation(&mut self, how: &str) {
        let Some(probation) = self.reloads.probation.take() else {
            return;
        };
        let generation = probation.generation;
        Lifecycle::ProbationOver {
            generation,
            how: how.to_owned(),
        }
        .log();
        self.conclude(ReloadOutcome::Ok {
            generation: probation.generation,
            duration_ms: probation.rollout_ms,
            probation: Some(how.to_owned()),
        });
        self.start_queued_reload();
    }

    /// A worker of the release on trial crashed in `crashed_slot`: the reload
    /// fails, and a new generation rolls back to the previous release's
    /// program file and configuration; the crashed slot restarts with it at
    /// once (through the crash-loop backoff), the others roll.
    fn roll_back(&mut self, crashed_slot: usize, reason: String) {
        let Some((previous, rollout)) = self.reloads.fail_trial() else {
            self.schedule_restart(crashed_slot, true);
            return;
        };
        // The failed release's workers still starting may serve clients
        // from the shared queue already (they accept before the master
        // hears they are ready): they drain, as a worker that failed its
        // probes does, rather than losing them with a kill.
        let pending: Vec<WorkerId> = rollout.iter().flat_map(|r| r.pending()).collect();
        for pending in pending {
            if let Some(slot) = self.workers.get(&pending).map(|w| w.slot) {
                self.slots[slot].successor = None;
            }
            self.drain(pending);
        }
        let failed = self.generation;
        let target = previous.generation;
        Lifecycle::ReleaseFailed {
            generation: failed,
            rollback_to: target,
            reason: reason.clone(),
        }
        .log();
        self.conclude(ReloadOutcome::RolledBack {
            generation: failed,
            rollback_to: target,
            reason,
        });
        let mut config = previous.config.clone();
        config.program = self
            .effects
            .restore_program(&previous.program, previous.generation)
            .unwrap_or_else(|cause| {
                error!(%cause, "cannot write the previous program file back; rolling back the configuration only");
                self.program_path.clone()
            });
        self.config = config;
        self.reloads.roll_back_to(previous);
        self.generation += 1;
        let generation = self.generation;
        let _span = info_span!("reload", generation).entered();
        Lifecycle::RollbackStarted {
            generation,
            rollback_to: target,
        }
        .log();
        self.slots[crashed_slot].generation = generation;
        self.schedule_restart(crashed_slot, true);
        self.begin_rollout(generation);
    }

    /// Keeps what the current generation is started from, for a later
    /// rollback; `None` (said in the log) if its program cannot be kept.
    pub(super) fn keep_release(&mut self) -> Option<Release<E::Program>> {
        match self.effects.keep_program(&self.config.program) {
            Ok(program) => Some(Release {
                generation: self.generation,
                config: self.config.clone(),
                program,
            }),
            Err(cause) => {
                warn!(%cause, generation = self.generation, "cannot keep the program file open: a later release that fails cannot be rolled back to this one");
                None
            }
        }
    }

    /// Reads the `--config` file again, keeping the configuration in force
    /// (and its copy for an abandoned reload) or saying why it cannot.
    fn reread_config(&mut self) -> Result<(), String> {
        let Some(source) = self.config.source.clone() else {
            return Ok(());
        };
        let new = self.effects.load_config(&source)?;
        if let Some(reason) = self.config.fixed_changes(&new) {
            return Err(reason);
        }
        if new.workers != self.config.workers {
            info!(
                from = self.config.workers,
                to = new.workers,
                "worker count changes"
            );
        }
        let previous = std::mem::replace(&mut self.config, new);
        self.reloads.keep_config(previous);
        Ok(())
    }

    /// Drains the workers of slots beyond `count` and drops those slots.
    fn shrink_slots(&mut self, count: usize) {
        while self.slots.len() > count.max(1) {
            let slot = self.slots.pop().expect("more slots than count");
            for id in slot.current.into_iter().chain(slot.successor) {
                self.drain(id);
            }
        }
    }

    /// Rolls each slot whose worker stayed above `--max-memory` for
    /// [`MEMORY_CHECKS_OVER`] checks in a row.
    pub fn check_memory(&mut self) {
        let Some(limit) = self.config.max_memory else {
            return;
        };
        if self.phase != Phase::Running {
            return;
        }
        for slot in 0..self.slots.len() {
            let Some(id) = self.slots[slot].current else {
                continue;
            };
            let Some(worker) = self.workers.get_mut(&id) else {
                continue;
            };
            if worker.state != WorkerState::Ready {
                continue;
            }
            let rss = self.effects.usage(worker.pid).rss_bytes;
            worker.over_memory = if rss > limit {
                worker.over_memory + 1
            } else {
                0
            };
            // A reload replaces it anyway; a successor is on its way.
            if worker.over_memory < MEMORY_CHECKS_OVER
                || self.reloads.rollout.is_some()
                || self.slots[slot].successor.is_some()
            {
                continue;
            }
            let generation = worker.generation;
            Lifecycle::MemoryRoll {
                worker: worker.named(),
                rss_bytes: rss,
                limit_bytes: limit,
            }
            .log();
            self.counters.memory_rolls += 1;
            match self.spawn(slot, generation, Cause::Memory) {
                Ok(successor) => self.slots[slot].successor = Some(successor),
                Err(reason) => {
                    error!(slot, %reason, "cannot start a worker to take over from one over its memory limit")
                }
            }
        }
    }

    /// `successor` is ready: it takes `slot` over and the worker it
    /// replaces drains; unless a reload moved the slot to a newer
    /// generation meanwhile, in which case the successor itself drains.
    fn take_over(&mut self, slot: usize, successor: WorkerId) {
        self.slots[slot].successor = None;
        let current_generation = self.slots[slot].generation;
        if self.workers.get(&successor).map(|w| w.generation) != Some(current_generation) {
            self.drain(successor);
            return;
        }
        if let Some(old) = self.slots[slot].current.replace(successor) {
            self.drain(old);
        }
    }

    fn drain(&mut self, id: WorkerId) {
        let handover = self.may_hand_over() && !self.takers(id).is_empty();
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.state.is_draining() {
            return;
        }
        worker.state = WorkerState::Draining;
        Lifecycle::WorkerDraining {
            worker: worker.named(),
        }
        .log();
        let config = &self.config;
        self.effects
            .drain(id, config.drain_timeout, config.drain_grace(), handover);
        self.hurry_old_generations();
    }

    /// Whether draining workers may hand connections over now: asked for,
    /// and the master neither stopping nor about to exec a new image.
    fn may_hand_over(&self) -> bool {
        self.config.handoff_connections
            && !matches!(self.phase, Phase::Stopping)
            && self.upgrade.as_ref().is_none_or(|u| u.departing.is_none())
    }

    /// The workers that may take connections handed over by `from`: ready,
    /// speaking the protocol, other than `from` and of no older generation
    /// (see [`placing`]), each with its open connections.
    fn takers(&self, from: WorkerId) -> Vec<placing::Taker> {
        let Some(from_generation) = self.workers.get(&from).map(|w| w.generation) else {
            return Vec::new();
        };
        self.workers
            .iter()
            .filter(|&(&id, w)| {
                id != from
                    && w.state == WorkerState::Ready
                    && w.generation >= from_generation
                    && (w.speaks_protocol || w.stats.is_some())
            })
            .map(|(&id, w)| {
                // A report may have left the worker before connections
                // handed to it arrived: what it has not received yet is
                // counted from what the master sent, not from the report.
                let (open, received) = w.stats.map_or((0, 0), |s| (s.open_connections, s.received));
                placing::Taker {
                    id,
                    generation: w.generation,
                    open: open + w.handed_to.saturating_sub(received),
                }
            })
            .collect()
    }

    /// A draining worker handed idle connections over: each goes to the
    /// least loaded worker that may take it, or they all go back to their
    /// worker if none may.
    fn on_handover(&mut self, handed: super::worker::Handed) {
        let draining = self
            .workers
            .get(&handed.from)
            .is_some_and(|w| w.state.is_draining());
        let takers = if draining && self.may_hand_over() {
            self.takers(handed.from)
        } else {
            Vec::new()
        };
        let placement = placing::place(&takers, handed.fds.len());
        if placement.is_empty() {
            self.counters.connections_fell_back += handed.fds.len() as u64;
            self.effects
                .settle(handed.from, handed.batch, Settlement::Returned);
            return;
        }
        let (from, batch, count) = (handed.from, handed.batch, handed.fds.len());
        let parts = handed.split(&placement);
        if parts.len() > 1 {
            self.settling.expect(from, batch, count, parts.len());
        }
        for (to, part) in parts {
            if let Some(worker) = self.workers.get_mut(&to) {
                worker.handed_to += part.fds.len() as u64;
            }
            self.effects.adopt(to, part);
        }
    }

    /// Hurries the workers of the oldest generations draining while more
    /// than [`MAX_DRAINING_GENERATIONS`] drain at their own pace. (A COMMAND
    /// worker has no order for it: its drain signal was sent already.)
    fn hurry_old_generations(&mut self) {
        if self.config.foreign.is_some() {
            return;
        }
        let draining: std::collections::BTreeSet<u64> = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Draining)
            .map(|w| w.generation)
            .collect();
        let excess = draining.len().saturating_sub(MAX_DRAINING_GENERATIONS);
        let oldest: Vec<u64> = draining.into_iter().take(excess).collect();
        for (&id, worker) in self.workers.iter_mut() {
            if worker.state == WorkerState::Draining && oldest.contains(&worker.generation) {
                worker.state = WorkerState::Hurried;
                Lifecycle::WorkerHurried {
                    worker: worker.named(),
                }
                .log();
                self.effects.hurry(id);
            }
        }
    }

    /// Stops every worker: drained, or killed when `now`.
    fn stop(&mut self, now: bool) {
        if self.phase == Phase::Stopping && !now {
            info!("already shutting down");
            return;
        }
        self.phase = Phase::Stopping;
        self.shutdown_at = None;
        self.cancel_upgrade();
        self.effects.systemd(Systemd::Stopping {
            status: format!("stopping: {} workers to drain", self.workers.len()),
            drain: self
                .config
                .drain_timeout
                .saturating_add(Duration::from_secs(5)),
        });
        if let Some(rollout) = self.reloads.rollout.take() {
            info!(
                generation = rollout.generation,
                "reload cancelled by shutdown"
            );
        }
        self.reloads.cancel(&Reply::Error(Problem::ShuttingDown));
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        if now {
            Lifecycle::ShuttingDown {
                workers: ids.len(),
                at_once: true,
            }
            .log();
            for id in ids {
                self.effects.kill(id);
            }
        } else {
            Lifecycle::ShuttingDown {
                workers: ids.len(),
                at_once: false,
            }
            .log();
            for id in ids {
                self.drain(id);
            }
        }
    }

    fn fail_start(&mut self, reason: String) {
        Lifecycle::StartFailed {
            reason: reason.clone(),
        }
        .log();
        if self.failure.is_none() {
            self.failure = Some(MasterError::FirstStart { reason });
        }
        self.stop(true);
    }
}

/// "exit code 3", "signal 9 (SIGKILL)".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(name) => format!("signal {signal} ({name})"),
            Err(_) => format!("signal {signal}"),
        },
        _ => status.to_string(),
    }
}

mod placing;
mod snapshot;
#[cfg(test)]
mod tests;
mod upgrade;
