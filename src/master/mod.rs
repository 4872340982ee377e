//! The master: binds the listeners, keeps one worker in each slot, replaces
//! crashed workers, rolls new generations in on reload, drains on shutdown.
//!
//! All state lives in one [`Supervisor`] driven by one loop over its inputs:
//! signals, events from the per-worker watchers, control-socket requests,
//! restart timers and the systemd watchdog tick. A worker's crash is an
//! event to handle, never an error that ends the loop.
//! The master never touches a client connection: it only starts, tells and
//! reaps processes.

mod release;
mod rollout;
mod status;
mod worker;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, info_span, warn};

use crate::balance::ShareTable;
use crate::config::{self, MasterConfig};
use crate::control;
use crate::error::MasterError;
use crate::event::Event;
use crate::keeper::Keeper;
use crate::listeners::{BindOptions, ListenerSet};
use crate::procfs;
use crate::signals::{Intent, SignalIntents};
use crate::systemd::Notifier;
use release::Release;
use rollout::Rollout;
pub use worker::{WorkerEvent, WorkerHandle, WorkerId, WorkerStats};

/// A worker that lived at least this long before crashing is restarted at
/// once; one that dies sooner counts towards the crash-loop backoff.
const STABLE_LIFETIME: Duration = Duration::from_secs(1);
/// Quick deaths in a row that are restarted at once; from the next one on,
/// restarts back off. More than one, so that two unlucky kills in a row are
/// not taken for a crash loop.
const QUICK_FAILURES_BEFORE_BACKOFF: u32 = 2;
/// The first delay of the crash-loop backoff, doubled per quick failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest crash-loop backoff.
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Generations whose workers may drain at their own pace at once. Draining
/// workers keep idle keep-alive connections for the whole grace; in a reload
/// storm the workers of older generations are hurried (their grace ends at
/// once), so that processes and memory stay bounded.
const MAX_DRAINING_GENERATIONS: usize = 2;

/// How often workers' memory is compared with `--max-memory`...
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(1);
/// ...and how many checks in a row a worker must be above it to be rolled:
/// a short peak is not a leak.
const MEMORY_CHECKS_OVER: u32 = 3;

/// Runs the master until it is told to stop. Returns an error for a failed
/// start (listeners cannot be bound, the first workers cannot start).
///
/// `inherited` are the listeners systemd passed (see
/// [`crate::systemd::take_listen_fds`]).
pub async fn run(
    config: MasterConfig,
    inherited: Vec<(String, OwnedFd)>,
) -> Result<(), MasterError> {
    let options = BindOptions {
        backlog: config.backlog,
        unix_mode: config.unix_mode,
    };
    match crate::rlimit::raise_open_files() {
        Ok(limit) => info!(
            soft = limit.soft,
            hard = limit.hard,
            was = limit.was,
            "open-file limit"
        ),
        Err(e) => {
            warn!(cause = %e, "cannot raise the open-file limit; workers keep the one baton started with")
        }
    }
    let listeners = ListenerSet::open(inherited, &config.listen, options)?;
    for listener in listeners.iter() {
        info!(
            event = %Event::Listening,
            name = %listener.name,
            addr = %listener.local_addr,
            inherited = listener.inherited,
            "listening"
        );
    }
    let mut signals = SignalIntents::install().map_err(MasterError::Signals)?;
    // COMMAND workers' notify sockets (they cannot start without one) and
    // rolled-back program files (a rollback then restores the configuration
    // only).
    let runtime_dir = match RuntimeDir::create(config.worker_identity) {
        Ok(dir) => Some(dir),
        Err(e) if config.foreign.is_some() => return Err(MasterError::RuntimeDir(e)),
        Err(e) => {
            warn!(cause = %e, "no private directory: a rollback restores the configuration, not the program file");
            None
        }
    };
    let control_socket = open_control_socket(&config)?;
    let keeper = Keeper::start(&config.program)
        .await
        .inspect_err(|e| warn!(cause = %e, "no keeper: if the master is killed, processes its workers forked may outlive it"))
        .ok();
    let mut supervisor = Supervisor::new(config, listeners, Notifier::from_env());
    supervisor.runtime_dir = runtime_dir;
    supervisor.keeper = keeper;
    // The socket file is removed when `_control_file` drops, as run returns.
    let (control_listener, _control_file) = control_socket;
    tokio::spawn(control::serve(
        control_listener,
        supervisor.control_tx.clone(),
    ));
    supervisor.start();
    supervisor.run(&mut signals).await
}

/// Binds the control socket at `--control`, or at the default path in a
/// directory only this user can write (created if missing). A path in use,
/// or a default directory someone else could write in, is an error: a
/// master without its control socket could not be reloaded or stopped by
/// `baton`, and a socket someone else put there could answer in its name.
fn open_control_socket(
    config: &MasterConfig,
) -> Result<(tokio::net::UnixListener, crate::listeners::SocketFile), MasterError> {
    let path = match &config.control {
        Some(path) => path.clone(),
        None => {
            let dir = control::default_dir();
            control::ensure_private_dir(&dir).map_err(|reason| MasterError::Control {
                path: control::default_path(),
                reason,
            })?;
            control::default_path()
        }
    };
    let bound = crate::listeners::bind_private_socket(&path)
        .and_then(|(listener, file)| Ok((tokio::net::UnixListener::from_std(listener)?, file)));
    match bound {
        Ok((listener, file)) => {
            info!(path = %path.display(), "control socket");
            Ok((listener, file))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(MasterError::Control {
            path,
            reason: "a running program listens there (another baton?)".to_owned(),
        }),
        Err(e) => Err(MasterError::Control {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Where the master is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first generation is starting; a worker failing now fails the start.
    Starting,
    /// Serving: crashed workers are replaced, reloads roll.
    Running,
    /// Draining or killing every worker; exits when none is left.
    Stopping,
}

/// A worker process the master is responsible for.
#[derive(Debug)]
struct Worker {
    handle: WorkerHandle,
    /// The slot it serves, or will serve once a rollout hands it over.
    slot: usize,
    generation: u64,
    cause: Cause,
    state: WorkerState,
    started: Instant,
    /// The last counters it reported (built-in workers only).
    stats: Option<WorkerStats>,
    /// Consecutive memory checks that found it above `--max-memory`.
    over_memory: u32,
}

/// Why a worker was started; logged, so that operators (and `baton check`)
/// can tell a crash replacement from a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Start,
    Replacement,
    Reload,
    /// Its slot's worker stayed above `--max-memory`.
    Memory,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Start => "start",
            Cause::Replacement => "replacement",
            Cause::Reload => "reload",
            Cause::Memory => "memory",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Starting,
    Ready,
    Draining,
    /// Draining, and told to end its grace early: a reload storm left more
    /// than [`MAX_DRAINING_GENERATIONS`] generations draining.
    Hurried,
}

impl WorkerState {
    fn is_draining(self) -> bool {
        matches!(self, WorkerState::Draining | WorkerState::Hurried)
    }
}

/// One of the `--workers` positions the master keeps filled.
#[derive(Debug, Default)]
struct Slot {
    /// The worker serving this slot, if one is alive.
    current: Option<WorkerId>,
    /// The generation a replacement for a crashed worker belongs to.
    generation: u64,
    /// Consecutive workers that died within [`STABLE_LIFETIME`]: the
    /// crash-loop backoff's exponent.
    quick_failures: u32,
    /// When a backed-off restart is due.
    restart_at: Option<Instant>,
    /// Crashed workers replaced in this slot.
    restarts: u64,
    /// A worker starting to take this slot over outside a reload (its
    /// worker used too much memory); the current one drains once it is
    /// ready.
    successor: Option<WorkerId>,
}

struct Supervisor {
    config: MasterConfig,
    /// Held for the master's whole life: the accept queues outlive workers.
    listeners: ListenerSet,
    /// Given to each worker's watcher; the loop owns the receiving end.
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events_rx: mpsc::UnboundedReceiver<WorkerEvent>,
    slots: Vec<Slot>,
    /// Every live worker process: serving, starting or draining.
    workers: BTreeMap<WorkerId, Worker>,
    next_id: WorkerId,
    /// The newest generation started.
    generation: u64,
    phase: Phase,
    rollout: Option<Rollout>,
    /// A reload asked for while another ran: one more reload runs after it,
    /// however many were asked for.
    reload_queued: bool,
    /// Set when the first start failed: the master exits with it.
    failure: Option<MasterError>,
    /// systemd, when baton runs under it.
    notifier: Notifier,
    /// The last reload's outcome, for STATUS= lines.
    last_reload: Option<String>,
    /// Where COMMAND workers' notify sockets and rolled-back program files
    /// live.
    runtime_dir: Option<RuntimeDir>,
    /// The program path workers start from (a rollback starts them from a
    /// copy of an older file until the next reload).
    program_path: std::path::PathBuf,
    /// What the newest generation was started from...
    release: Option<Release>,
    /// ...and, while a reload rolls, what the generation it replaces was.
    previous_release: Option<Release>,
    /// The newest generation, rolled in, before its probation ends.
    probation: Option<Probation>,
    /// The rollout in progress rolls back to an older release.
    rolling_back: bool,
    /// `baton reload --wait` clients waiting for the reload in progress...
    reload_waiters: Vec<oneshot::Sender<String>>,
    /// ...and for the one queued behind it.
    queued_waiters: Vec<oneshot::Sender<String>>,
    /// Requests from the control socket.
    control_rx: mpsc::UnboundedReceiver<control::Request>,
    /// Given to the control socket's server.
    control_tx: mpsc::UnboundedSender<control::Request>,
    /// When the master started, for `baton status`.
    started: Instant,
    /// The configuration before the reload in progress read a new one,
    /// restored if the reload is abandoned.
    previous_config: Option<MasterConfig>,
    /// Where workers publish their open connections to split new ones
    /// evenly; `None` if it could not be created (workers then accept
    /// unpaced).
    balance: Option<ShareTable>,
    /// Stops the workers' process groups if this master dies; `None` if it
    /// could not be started (then a killed master can leave a worker's
    /// children behind).
    keeper: Option<Keeper>,
}

/// A generation rolled in and not yet trusted: a crash of one of its
/// workers before `until` rolls back to `previous`.
#[derive(Debug)]
struct Probation {
    generation: u64,
    until: Instant,
    /// How long the rollout took, for the answer.
    rollout_ms: u64,
    previous: Release,
}

/// A private directory for the master's sockets, removed when it exits.
#[derive(Debug)]
struct RuntimeDir(std::path::PathBuf);

impl RuntimeDir {
    /// `$XDG_RUNTIME_DIR/baton-PID`, or the same under the temporary
    /// directory; readable by this user only.
    /// With `owner`, the workers' user may reach its notify socket in it.
    fn create(owner: Option<(u32, u32)>) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let path = base.join(format!("baton-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let dir = RuntimeDir(path);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir.0, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Supervisor {
    fn new(config: MasterConfig, listeners: ListenerSet, notifier: Notifier) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let slots = (0..config.workers).map(|_| Slot::default()).collect();
        Supervisor {
            program_path: config.program.clone(),
            config,
            listeners,
            events_tx,
            events_rx,
            slots,
            workers: BTreeMap::new(),
            next_id: 1,
            generation: 1,
            phase: Phase::Starting,
            rollout: None,
            reload_queued: false,
            failure: None,
            notifier,
            last_reload: None,
            runtime_dir: None,
            release: None,
            previous_release: None,
            probation: None,
            rolling_back: false,
            reload_waiters: Vec::new(),
            queued_waiters: Vec::new(),
            control_rx,
            control_tx,
            started: Instant::now(),
            previous_config: None,
            balance: ShareTable::create()
                .inspect_err(|e| warn!(cause = %e, "no accept balance: workers accept unpaced"))
                .ok(),
            keeper: None,
        }
    }

    /// A STATUS= line a person can read.
    fn status_line(&self) -> String {
        let ready = self.ready_slots();
        let mut line = format!(
            "{ready}/{} workers ready, generation {}",
            self.slots.len(),
            self.generation
        );
        if let Some(reload) = &self.last_reload {
            line += "; last reload ";
            line += reload;
        }
        line
    }

    fn start(&mut self) {
        info!(workers = self.slots.len(), program = %self.config.program.display(), "starting workers");
        self.release = Release::capture(1, &self.config)
            .inspect_err(|e| warn!(cause = %e, "cannot keep the program file open: a failed release cannot be rolled back to this one"))
            .ok();
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

    async fn run(mut self, signals: &mut SignalIntents) -> Result<(), MasterError> {
        // WATCHDOG=1 comes from this loop, so it stops if the loop stalls.
        let mut watchdog = self.notifier.watchdog_interval().map(tokio::time::interval);
        let mut memory_check = self
            .config
            .max_memory
            .map(|_| tokio::time::interval(MEMORY_CHECK_EVERY));
        loop {
            if self.phase == Phase::Stopping && self.workers.is_empty() {
                break;
            }
            let next_restart = self.next_restart();
            let probation_end = self.probation.as_ref().map(|p| p.until);
            tokio::select! {
                _ = sleep_until(probation_end.unwrap_or_else(Instant::now)), if probation_end.is_some() => {
                    self.pass_probation("stayed up through its probation");
                }
                _ = tick(&mut watchdog) => self.notifier.watchdog(),
                _ = tick(&mut memory_check) => self.check_memory(),
                Some((intent, signal)) = signals.next() => self.on_signal(intent, signal),
                Some(event) = self.events_rx.recv() => self.on_event(event),
                Some(request) = self.control_rx.recv() => self.on_control(request),
                _ = sleep_until(next_restart.unwrap_or_else(Instant::now)), if next_restart.is_some() => {
                    self.restart_due_slots();
                }
            }
        }
        match self.failure {
            Some(failure) => Err(failure),
            None => {
                info!("all workers exited; master exits");
                Ok(())
            }
        }
    }

    /// Starts a worker for `slot`. The caller decides whether it fills the
    /// slot now (start, crash) or later (rollout).
    fn spawn(&mut self, slot: usize, generation: u64, cause: Cause) -> Result<WorkerId, String> {
        let id = self.next_id;
        self.next_id += 1;
        let launch = worker::Launch {
            id,
            slot,
            generation,
            program: &self.config.program,
            args: &self.config.worker_args,
            listeners: &self.listeners,
            ready_timeout: self.config.ready_timeout,
            foreign: self
                .config
                .foreign
                .as_ref()
                .zip(self.runtime_dir.as_ref())
                .map(|(foreign, dir)| (foreign, dir.path())),
            identity: self.config.worker_identity,
            balance: self.balance.as_ref().map(ShareTable::fd),
            drain_timeout: self.config.drain_timeout,
            keeper: self.keeper.as_ref(),
        };
        let handle = worker::spawn(launch, self.events_tx.clone()).map_err(|e| e.to_string())?;
        info!(event = %Event::WorkerStarted, pid = handle.pid, slot, generation, cause = %cause, "worker started");
        self.workers.insert(
            id,
            Worker {
                handle,
                slot,
                generation,
                cause,
                state: WorkerState::Starting,
                started: Instant::now(),
                stats: None,
                over_memory: 0,
            },
        );
        Ok(id)
    }

    fn on_signal(&mut self, intent: Intent, signal: &'static str) {
        info!(signal, "signal received");
        match intent {
            Intent::Reload => self.request_reload(None),
            Intent::Shutdown => self.stop(false),
            Intent::Quit => self.stop(true),
        }
    }

    fn on_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Ready { id } => self.on_ready(id),
            WorkerEvent::Failed { id, reason } => self.on_failed(id, reason),
            WorkerEvent::Exited { id, status } => self.on_exit(id, status),
            WorkerEvent::Stats { id, stats } => {
                if let Some(worker) = self.workers.get_mut(&id) {
                    worker.stats = Some(stats);
                }
            }
        }
    }

    fn on_ready(&mut self, id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.state != WorkerState::Starting {
            return;
        }
        worker.state = WorkerState::Ready;
        info!(
            event = %Event::WorkerReady,
            pid = worker.handle.pid,
            slot = worker.slot,
            generation = worker.generation,
            cause = %worker.cause,
            "worker ready"
        );
        let (pid, slot) = (worker.handle.pid, worker.slot);
        self.keep_backlogs(pid);

        if self.phase == Phase::Starting && self.all_slots_ready() {
            self.phase = Phase::Running;
            info!(
                event = %Event::AllWorkersReady,
                workers = self.slots.len(),
                generation = self.generation,
                "all workers ready"
            );
            self.notifier.ready(&self.status_line());
            if std::mem::take(&mut self.reload_queued) {
                self.request_reload(None);
            }
            return;
        }
        if self.slots.get(slot).and_then(|s| s.successor) == Some(id) {
            self.take_over(slot, id);
            return;
        }
        let handed_over = self.rollout.as_mut().and_then(|r| r.ready(id));
        if let Some(slot) = handed_over {
            let generation = self
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
        if let Some(worker) = self.workers.get(&id) {
            warn!(event = %Event::WorkerFailed, pid = worker.handle.pid, slot = worker.slot, generation = worker.generation, %reason, "worker failed");
        }
        if self.rollout.as_ref().and_then(Rollout::pending) == Some(id) {
            self.abandon_rollout(format!("the new worker failed: {reason}"));
        }
    }

    fn on_exit(&mut self, id: WorkerId, status: ExitStatus) {
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        let pid = worker.handle.pid;
        if let Some(table) = &self.balance {
            table.forget(pid);
        }
        let (slot, generation) = (worker.slot, worker.generation);
        let status = describe(status);

        if worker.state.is_draining() {
            info!(event = %Event::WorkerDrained, pid, slot, generation, %status, "worker exited after draining");
            return;
        }
        if self.rollout.as_ref().and_then(Rollout::pending) == Some(id) {
            warn!(event = %Event::WorkerExited, pid, slot, generation, %status, "new worker exited before it was ready");
            self.abandon_rollout(format!(
                "the new worker exited before it was ready ({status})"
            ));
            return;
        }
        if self.phase == Phase::Stopping {
            info!(event = %Event::WorkerExited, pid, slot, generation, %status, "worker exited");
            return;
        }
        if self.phase == Phase::Starting && worker.state == WorkerState::Starting {
            error!(event = %Event::WorkerExited, pid, slot, generation, %status, "worker exited before it was ready");
            self.fail_start(format!(
                "worker {pid} exited before it was ready ({status})"
            ));
            return;
        }
        if self.slots.get(slot).and_then(|s| s.successor) == Some(id) {
            warn!(event = %Event::WorkerExited, pid, slot, generation, %status, "the worker taking over the slot exited before it was ready; the old one goes on");
            self.slots[slot].successor = None;
            return;
        }
        if self.slots.get(slot).and_then(|s| s.current) != Some(id) {
            return;
        }
        warn!(event = %Event::WorkerCrashed, pid, slot, generation, %status, "worker crashed; replacing it");
        self.slots[slot].current = None;
        if self.on_trial(generation) {
            let lived = humantime::format_duration(Duration::from_millis(
                worker.started.elapsed().as_millis() as u64,
            ));
            self.roll_back(
                slot,
                format!("worker {pid} of generation {generation} crashed ({status}) {lived} after it started"),
            );
            return;
        }
        self.notifier.status(&format!(
            "{}; worker {pid} crashed ({status})",
            self.status_line()
        ));
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
    fn schedule_restart(&mut self, slot: usize, quick: bool) {
        let state = &mut self.slots[slot];
        state.quick_failures = if quick { state.quick_failures + 1 } else { 0 };
        if state.quick_failures <= QUICK_FAILURES_BEFORE_BACKOFF {
            self.restart(slot);
            return;
        }
        let exponent = (state.quick_failures - QUICK_FAILURES_BEFORE_BACKOFF - 1).min(16);
        let delay = BACKOFF_FIRST.saturating_mul(1 << exponent).min(BACKOFF_CAP);
        warn!(
            event = %Event::Backoff,
            slot,
            delay_ms = delay.as_millis() as u64,
            failures = state.quick_failures,
            "worker keeps dying; backing off"
        );
        state.restart_at = Some(Instant::now() + delay);
    }

    fn restart(&mut self, slot: usize) {
        self.slots[slot].restart_at = None;
        self.slots[slot].restarts += 1;
        let generation = self.slots[slot].generation;
        match self.spawn(slot, generation, Cause::Replacement) {
            Ok(id) => self.slots[slot].current = Some(id),
            Err(reason) => {
                error!(slot, %reason, "cannot start a replacement worker");
                self.schedule_restart(slot, true);
            }
        }
    }

    fn next_restart(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.restart_at).min()
    }

    fn restart_due_slots(&mut self) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].restart_at.is_some_and(|at| at <= now) {
                self.restart(slot);
            }
        }
    }

    /// Slots whose current worker is ready.
    fn ready_slots(&self) -> usize {
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
    fn request_reload(&mut self, waiter: Option<oneshot::Sender<String>>) {
        match self.phase {
            Phase::Stopping => {
                info!("reload ignored: shutting down");
                if let Some(waiter) = waiter {
                    let _ = waiter.send("error: baton is shutting down\n".to_owned());
                }
            }
            Phase::Starting => {
                info!("reload queued until the first workers are ready");
                self.reload_queued = true;
                self.queued_waiters.extend(waiter);
            }
            Phase::Running if self.rollout.is_some() => {
                info!("reload queued behind the one in progress");
                self.reload_queued = true;
                self.queued_waiters.extend(waiter);
            }
            Phase::Running => {
                // A new reload ends the probation of the last one: the
                // operator has moved on.
                self.pass_probation("probation cut short by a new reload");
                let queued = std::mem::take(&mut self.queued_waiters);
                self.reload_waiters.extend(queued);
                self.reload_waiters.extend(waiter);
                if let Err(reason) = self.reread_config() {
                    error!(event = %Event::ReloadRejected, %reason, "reload rejected; the workers go on untouched");
                    self.last_reload = Some(format!("rejected: {reason}"));
                    self.notifier.status(&self.status_line());
                    self.answer_reload_waiters(format!("error: reload rejected: {reason}\n"));
                    return;
                }
                self.generation += 1;
                let _span = info_span!("reload", generation = self.generation).entered();
                info!(event = %Event::ReloadStarted, generation = self.generation, "reload started");
                // Workers start from the program path again, even after a
                // rollback started them from a copy.
                self.config.program = self.program_path.clone();
                match Release::capture(self.generation, &self.config) {
                    Ok(release) => self.previous_release = self.release.replace(release),
                    Err(e) => {
                        warn!(cause = %e, "cannot keep the program file open: this release cannot be rolled back to");
                        self.previous_release = self.release.take();
                    }
                }
                self.notifier
                    .reloading(&format!("reloading to generation {}", self.generation));
                // A changed worker count takes effect with this generation:
                // new slots are filled by the rollout, surplus ones drained
                // when it completes.
                let wanted = self.config.workers;
                while self.slots.len() < wanted {
                    self.slots.push(Slot {
                        generation: self.generation,
                        ..Slot::default()
                    });
                }
                self.rollout = Some(Rollout::new(self.generation, wanted));
                self.advance_rollout();
            }
        }
    }

    /// Starts the next slot's new worker, or finishes the rollout.
    fn advance_rollout(&mut self) {
        let Some(rollout) = &self.rollout else {
            return;
        };
        let generation = rollout.generation;
        if rollout.is_complete() {
            let elapsed_ms = rollout.started.elapsed().as_millis() as u64;
            info!(event = %Event::ReloadComplete, generation, elapsed_ms, "reload complete");
            self.rollout = None;
            self.previous_config = None;
            self.shrink_slots(self.config.workers);
            if std::mem::take(&mut self.rolling_back) {
                info!(event = %Event::RollbackComplete, generation, elapsed_ms, "rollback complete");
                self.notifier.status(&self.status_line());
            } else {
                match self.previous_release.take() {
                    Some(previous) if !self.config.probation.is_zero() => {
                        info!(
                            event = %Event::ProbationStarted,
                            generation,
                            probation_ms = self.config.probation.as_millis() as u64,
                            "new generation on probation"
                        );
                        self.probation = Some(Probation {
                            generation,
                            until: config::deadline(Instant::now(), self.config.probation),
                            rollout_ms: elapsed_ms,
                            previous,
                        });
                    }
                    _ => self.finish_reload(generation, elapsed_ms, ""),
                }
            }
            if std::mem::take(&mut self.reload_queued) {
                self.request_reload(None);
            }
            return;
        }
        let Some(slot) = rollout.slot_to_start() else {
            return;
        };
        // A rollback restarts a crashed slot at once, in its own generation:
        // that slot is done.
        let restarted = &self.slots[slot];
        if restarted.generation == generation
            && (restarted.current.is_some() || restarted.restart_at.is_some())
        {
            if let Some(rollout) = self.rollout.as_mut() {
                rollout.skip();
            }
            return self.advance_rollout();
        }
        match self.spawn(slot, generation, Cause::Reload) {
            Ok(id) => {
                if let Some(rollout) = self.rollout.as_mut() {
                    rollout.started(id);
                }
            }
            Err(reason) => self.abandon_rollout(format!("cannot start a new worker: {reason}")),
        }
    }

    /// Gives up on the reload in progress: slots not yet replaced keep their
    /// old workers, which never stopped serving.
    fn abandon_rollout(&mut self, reason: String) {
        let Some(rollout) = self.rollout.take() else {
            return;
        };
        error!(
            event = %Event::ReloadFailed,
            generation = rollout.generation,
            replaced = rollout.replaced(),
            slots = self.slots.len(),
            %reason,
            "reload failed; the old workers keep serving"
        );
        self.last_reload = Some(format!(
            "of generation {} FAILED: {reason}",
            rollout.generation
        ));
        // READY=1 ends the reload for systemd whatever its outcome.
        self.notifier.ready(&self.status_line());
        self.answer_reload_waiters(format!(
            "error: reload of generation {} failed: {reason}; the old workers keep serving\n",
            rollout.generation
        ));
        if let Some(worker) = rollout.pending().and_then(|id| self.workers.get(&id)) {
            worker.handle.kill();
        }
        // The old configuration stays in force, worker count included.
        if let Some(previous) = self.previous_config.take() {
            self.config = previous;
        }
        if let Some(previous) = self.previous_release.take() {
            self.release = Some(previous);
        }
        self.rolling_back = false;
        self.shrink_slots(self.config.workers);
        if std::mem::take(&mut self.reload_queued) {
            self.request_reload(None);
        }
    }

    /// Ends a reload that succeeded: records and reports its outcome.
    fn finish_reload(&mut self, generation: u64, elapsed_ms: u64, note: &str) {
        self.last_reload = Some(format!("ok in {elapsed_ms} ms{note}"));
        self.notifier.ready(&self.status_line());
        self.answer_reload_waiters(format!(
            "ok: generation {generation} is in ({elapsed_ms} ms){note}\n"
        ));
    }

    /// Ends the probation in progress, if any, as passed.
    fn pass_probation(&mut self, how: &str) {
        let Some(probation) = self.probation.take() else {
            return;
        };
        info!(event = %Event::ProbationOver, generation = probation.generation, how, "probation over");
        self.finish_reload(
            probation.generation,
            probation.rollout_ms,
            &format!("; {how}"),
        );
        if std::mem::take(&mut self.reload_queued) {
            self.request_reload(None);
        }
    }

    /// Whether a crash of a worker of `generation` fails a release: it is
    /// on probation, or being rolled in (and not a rollback).
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

    /// A worker of the release on trial crashed in `crashed_slot`: the reload
    /// fails, and a new generation rolls back to the previous release's
    /// program file and configuration; the crashed slot restarts with it at
    /// once (through the crash-loop backoff), the others roll.
    fn roll_back(&mut self, crashed_slot: usize, reason: String) {
        let previous = match self.probation.take() {
            Some(probation) => Some(probation.previous),
            None => self.previous_release.take(),
        };
        let Some(previous) = previous else {
            self.schedule_restart(crashed_slot, true);
            return;
        };
        if let Some(rollout) = self.rollout.take() {
            if let Some(worker) = rollout.pending().and_then(|id| self.workers.get(&id)) {
                worker.handle.kill();
            }
        }
        self.previous_config = None;
        let failed = self.generation;
        let target = previous.generation;
        error!(event = %Event::ReleaseFailed, generation = failed, rollback_to = target, %reason, "release failed; rolling back");
        self.last_reload = Some(format!(
            "of generation {failed} FAILED: {reason}; rolled back to generation {target}'s release"
        ));
        // READY=1 ends the reload for systemd whatever its outcome.
        self.notifier.ready(&self.status_line());
        self.answer_reload_waiters(format!(
            "error: reload of generation {failed} failed: {reason}; rolling back to generation {target}'s release\n"
        ));
        let restored = self
            .runtime_dir
            .as_ref()
            .ok_or_else(|| "no private directory".to_owned())
            .and_then(|dir| previous.restore(dir.path()).map_err(|e| e.to_string()));
        self.config = match restored {
            Ok(config) => config,
            Err(cause) => {
                error!(%cause, "cannot write the previous program file back; rolling back the configuration only");
                let mut config = previous.config.clone();
                config.program = self.program_path.clone();
                config
            }
        };
        self.release = Some(previous);
        self.generation += 1;
        let generation = self.generation;
        let _span = info_span!("reload", generation).entered();
        info!(event = %Event::RollbackStarted, generation, rollback_to = target, "rollback started");
        let wanted = self.config.workers;
        while self.slots.len() < wanted {
            self.slots.push(Slot {
                generation,
                ..Slot::default()
            });
        }
        self.rolling_back = true;
        self.rollout = Some(Rollout::new(generation, wanted));
        self.slots[crashed_slot].generation = generation;
        self.schedule_restart(crashed_slot, true);
        self.advance_rollout();
    }

    /// Reads the `--config` file again, keeping the configuration in force
    /// (and its copy for an abandoned reload) or saying why it cannot.
    fn reread_config(&mut self) -> Result<(), String> {
        let Some(source) = self.config.source.clone() else {
            return Ok(());
        };
        let new = crate::cli::load_config(&source)?;
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
        self.previous_config = Some(std::mem::replace(&mut self.config, new));
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

    fn answer_reload_waiters(&mut self, answer: String) {
        for waiter in self.reload_waiters.drain(..) {
            let _ = waiter.send(answer.clone());
        }
    }

    fn on_control(&mut self, request: control::Request) {
        let control::Request { command, reply } = request;
        match command {
            control::Command::Reload { wait: true } => self.request_reload(Some(reply)),
            control::Command::Reload { wait: false } => {
                self.request_reload(None);
                let _ = reply.send("ok: reload requested\n".to_owned());
            }
            control::Command::Status { json } => {
                let _ = reply.send(status::render(self, json));
            }
            control::Command::Stop => {
                self.stop(false);
                let _ = reply.send("ok: draining every worker, then exiting\n".to_owned());
            }
        }
    }

    /// Rolls each slot whose worker stayed above `--max-memory` for
    /// [`MEMORY_CHECKS_OVER`] checks in a row.
    fn check_memory(&mut self) {
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
            let rss = procfs::group_usage(worker.handle.pid).rss_bytes;
            worker.over_memory = if rss > limit {
                worker.over_memory + 1
            } else {
                0
            };
            // A reload replaces it anyway; a successor is on its way.
            if worker.over_memory < MEMORY_CHECKS_OVER
                || self.rollout.is_some()
                || self.slots[slot].successor.is_some()
            {
                continue;
            }
            let (pid, generation) = (worker.handle.pid, worker.generation);
            warn!(
                event = %Event::MemoryRoll,
                pid,
                slot,
                generation,
                rss_bytes = rss,
                limit_bytes = limit,
                "worker over its memory limit; rolling it"
            );
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
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.state.is_draining() {
            return;
        }
        worker.state = WorkerState::Draining;
        info!(
            event = %Event::WorkerDraining,
            pid = worker.handle.pid,
            slot = worker.slot,
            generation = worker.generation,
            "draining worker"
        );
        worker.handle.drain(self.config.drain_timeout);
        self.hurry_old_generations();
    }

    /// Sets the listen backlog back where a worker (`pid`, just ready)
    /// changed it by calling `listen()` again on the shared socket.
    fn keep_backlogs(&self, pid: u32) {
        for restored in self.listeners.keep_backlogs() {
            match restored.result {
                Ok(()) => warn!(
                    listener = %restored.listener,
                    found = restored.found,
                    backlog = restored.wanted,
                    pid,
                    "a worker changed the listen backlog; set back"
                ),
                Err(e) => warn!(
                    listener = %restored.listener,
                    found = restored.found,
                    backlog = restored.wanted,
                    pid,
                    cause = %e,
                    "a worker changed the listen backlog; cannot set it back"
                ),
            }
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
        for worker in self.workers.values_mut() {
            if worker.state == WorkerState::Draining && oldest.contains(&worker.generation) {
                worker.state = WorkerState::Hurried;
                info!(
                    event = %Event::WorkerHurried,
                    pid = worker.handle.pid,
                    slot = worker.slot,
                    generation = worker.generation,
                    "hurrying a draining worker"
                );
                worker.handle.hurry();
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
        self.notifier.stopping(
            &format!("stopping: {} workers to drain", self.workers.len()),
            self.config
                .drain_timeout
                .saturating_add(Duration::from_secs(5)),
        );
        if let Some(rollout) = self.rollout.take() {
            info!(
                generation = rollout.generation,
                "reload cancelled by shutdown"
            );
        }
        self.reload_queued = false;
        self.probation = None;
        let waiters: Vec<_> = self
            .reload_waiters
            .drain(..)
            .chain(self.queued_waiters.drain(..))
            .collect();
        for waiter in waiters {
            let _ = waiter.send("error: baton is shutting down\n".to_owned());
        }
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        if now {
            info!(
                event = %Event::ShuttingDown,
                workers = ids.len(),
                "stopping at once: killing every worker"
            );
            for worker in self.workers.values() {
                worker.handle.kill();
            }
        } else {
            info!(event = %Event::ShuttingDown, workers = ids.len(), "shutting down: draining every worker");
            for id in ids {
                self.drain(id);
            }
        }
    }

    fn fail_start(&mut self, reason: String) {
        error!(event = %Event::StartFailed, %reason, "start failed; stopping");
        if self.failure.is_none() {
            self.failure = Some(MasterError::FirstStart { reason });
        }
        self.stop(true);
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
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
