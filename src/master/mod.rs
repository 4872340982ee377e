//! The master: binds the listeners, keeps one worker in each slot, replaces
//! crashed workers, rolls new generations in on reload, drains on shutdown.
//!
//! - [`supervisor`]: the state machine (slots, reloads, rollbacks,
//!   shutdown), acting only through [`effects::Effects`].
//! - [`effects`]: what it does to the world, and the real implementation.
//! - [`rollout`]: one rolling restart, slot by slot.
//! - [`release`]: what a generation was started from, for a rollback.
//! - [`worker`]: one worker process and the task that watches it.
//! - [`listening`]: the listeners kept listening, whatever a worker does
//!   to them.
//! - [`status`]: `baton status`.
//! - [`metrics`], [`admin`]: `/metrics`, `/healthz`, `/readyz` on the
//!   `--admin` listener; [`agent`]: HAProxy's agent check on `--agent`.
//!
//! This module sets the master up and runs its one loop over the inputs:
//! signals, events from the per-worker watchers, control-socket requests,
//! restart and probation timers, the memory check and the systemd watchdog
//! tick. The master never touches a client connection: it only starts,
//! tells and reaps processes.

mod admin;
mod agent;
mod effects;
pub mod handover;
mod health;
mod listening;
mod metrics;
mod release;
mod rollout;
mod state;
mod supervisor;
mod upgrade;
mod worker;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{info, warn};

use crate::balance::ShareTable;
use crate::config::MasterConfig;
use crate::control;
use crate::error::MasterError;
use crate::event::Lifecycle;
use crate::keeper::Keeper;
use crate::listeners::{BindOptions, ListenerSet};
use crate::signals::{Intent, SignalIntents};
use crate::systemd::Notifier;
pub use effects::ConfigLoader;
use effects::{OwnSockets, Processes};
use supervisor::Supervisor;
pub use worker::{WorkerEvent, WorkerHandle, WorkerId};

/// How often workers' memory is compared with `--max-memory`.
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs the master until it is told to stop. Returns an error for a failed
/// start (listeners cannot be bound, the first workers cannot start).
///
/// `inherited` are the listeners systemd passed (see
/// [`crate::systemd::take_listen_fds`]); `loader` reads the configuration
/// again on reload when it came from a `--config` file. A master started by
/// an upgrade (see [`handover::incoming`]) takes everything over from the
/// previous image instead.
pub async fn run(
    config: MasterConfig,
    inherited: Vec<(String, OwnedFd)>,
    loader: ConfigLoader,
) -> Result<(), MasterError> {
    raise_open_files();
    if let Some(incoming) = handover::incoming() {
        return take_over(config, incoming, loader).await;
    }
    Lifecycle::MasterStarted {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION"),
    }
    .log();
    let options = BindOptions {
        backlog: config.backlog,
        unix_mode: config.unix_mode,
    };
    let listeners = ListenerSet::open(inherited, &config.listen, options)?;
    for listener in listeners.iter() {
        Lifecycle::Listening {
            name: listener.name.to_string(),
            addr: listener.local_addr.to_string(),
            inherited: listener.inherited,
        }
        .log();
    }
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
    warn_if_blind_to_workers(&config);
    let (control, control_file) = open_control_socket(&config)?;
    let admin = match config.admin {
        Some(addr) => Some(open_tcp("admin", addr, "GET /metrics, /healthz, /readyz")?),
        None => None,
    };
    let agent = match config.agent {
        Some(addr) => Some(open_tcp("agent", addr, "HAProxy agent-check")?),
        None => None,
    };
    let keeper = Keeper::start(&config.program)
        .await
        .inspect_err(|e| warn!(cause = %e, "no keeper: if the master is killed, processes its workers forked may outlive it"))
        .ok();
    if let Some((keeper, dir)) = keeper.as_ref().zip(runtime_dir.as_ref()) {
        keeper.remove_when_gone(dir.path());
    }
    let balance = ShareTable::create()
        .inspect_err(|e| warn!(cause = %e, "no accept balance: workers accept unpaced"))
        .ok();
    let parts = Parts {
        listeners,
        runtime_dir,
        control,
        control_file: Some(control_file),
        admin,
        agent,
        keeper,
        balance,
    };
    serve(config, parts, loader, Start::Fresh).await
}

/// Raises the open-file limit as far as it goes, for the workers.
fn raise_open_files() {
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
}

/// What the master owns besides its workers, opened by this image or taken
/// over from the previous one.
struct Parts {
    listeners: ListenerSet,
    runtime_dir: Option<RuntimeDir>,
    control: tokio::net::UnixListener,
    /// The control socket's file, removed when the master exits.
    control_file: Option<crate::listeners::SocketFile>,
    admin: Option<tokio::net::TcpListener>,
    agent: Option<tokio::net::TcpListener>,
    keeper: Option<Keeper>,
    balance: Option<ShareTable>,
}

/// How the supervisor begins.
enum Start {
    /// Starts the first generation.
    Fresh,
    /// Adopts the workers and state a previous image handed over.
    Adopted {
        state: Box<handover::State>,
        incoming: &'static handover::Incoming,
    },
}

/// Serves with `parts` until the master is told to stop.
async fn serve(
    config: MasterConfig,
    parts: Parts,
    loader: ConfigLoader,
    start: Start,
) -> Result<(), MasterError> {
    let mut signals = SignalIntents::install().map_err(MasterError::Signals)?;
    if let Err(e) = crate::process::become_subreaper() {
        warn!(cause = %e, "cannot become a child subreaper: processes a worker leaves behind go to init");
    }
    let notifier = Notifier::from_env();
    let watchdog = notifier.watchdog_interval();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (output_alive, mut output_closed) = mpsc::channel::<()>(1);
    let (upgrade_checked_tx, upgrade_checked_rx) = mpsc::unbounded_channel();
    let own_sockets = OwnSockets::copied_from(&parts)?;
    let processes = Processes {
        listeners: parts.listeners,
        events: events_tx.clone(),
        handles: BTreeMap::new(),
        notifier,
        runtime_dir: parts.runtime_dir,
        balance: parts.balance,
        keeper: parts.keeper,
        rescuer: crate::rescue::handle::Rescuer::new(
            config.program.clone(),
            config.worker_identity,
            events_tx.clone(),
        ),
        loader,
        output: output_alive,
        upgrade_checked: upgrade_checked_tx,
        own_sockets,
    };
    // The socket file is removed when `_control_file` drops, as this
    // returns (an upgrade's exec drops nothing).
    let _control_file = parts.control_file;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    if let Some(admin) = parts.admin {
        tokio::spawn(admin::serve(admin, control_tx.clone()));
    }
    if let Some(agent) = parts.agent {
        tokio::spawn(agent::serve(agent, control_tx.clone()));
    }
    let clients = control::Clients::default();
    tokio::spawn(control::serve(parts.control, control_tx, clients.clone()));
    let supervisor = start_supervisor(start, config, processes);
    let inputs = Inputs {
        events: events_rx,
        control: control_rx,
        upgrade_checked: upgrade_checked_rx,
    };
    let outcome = drive(supervisor, &mut signals, inputs, watchdog).await;
    // The supervisor is gone: what is still open are answers being written
    // and workers' last output lines being forwarded; both at once, for
    // EXIT_FLUSH at the most.
    let output_forwarded = tokio::time::timeout(EXIT_FLUSH, async {
        while output_closed.recv().await.is_some() {}
    });
    let _ = tokio::join!(clients.answered(EXIT_FLUSH), output_forwarded);
    outcome
}

/// Takes over from the previous image of this process (`baton upgrade`):
/// its sockets, its workers and its state. What cannot be taken over sends
/// this process back to the previous image, which takes the same state.
async fn take_over(
    config: MasterConfig,
    incoming: &'static handover::Incoming,
    loader: ConfigLoader,
) -> Result<(), MasterError> {
    let give_up = |reason: String| {
        handover::go_back(&reason);
        // Still here: this is the previous image, which has nowhere to go.
        MasterError::TakeOver(reason)
    };
    let state = handover::State::read(incoming.state_fd).map_err(give_up)?;
    let fault = state.fault.filter(|_| incoming.failed.is_none());
    if fault == Some(handover::UpgradeFault::Refuse) {
        return Err(give_up(
            "the new program found the state unusable (an injected fault)".to_owned(),
        ));
    }
    if fault == Some(handover::UpgradeFault::Hang) {
        warn!("hanging instead of taking over (an injected fault)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let parts = take_parts(&state).map_err(give_up)?;
    if fault == Some(handover::UpgradeFault::CrashHalfway) {
        warn!("crashing halfway through taking over (an injected fault)");
        std::process::abort();
    }
    let start = Start::Adopted {
        state: Box::new(state),
        incoming,
    };
    serve(config, parts, loader, start).await
}

/// The sockets, keeper and tables the previous image handed over.
fn take_parts(state: &handover::State) -> Result<Parts, String> {
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
        move |e| format!("cannot take over the {what}: {e}")
    }
    let mut listeners = Vec::new();
    for listener in &state.listeners {
        listeners.push((listener.clone(), handover::take(listener.fd)?));
    }
    let listeners = ListenerSet::adopt_handed(listeners).map_err(|e| e.to_string())?;
    let control = std::os::unix::net::UnixListener::from(handover::take(state.control.fd)?);
    control
        .set_nonblocking(true)
        .map_err(io("control socket"))?;
    let control = tokio::net::UnixListener::from_std(control).map_err(io("control socket"))?;
    let tcp = |fd: Option<std::os::fd::RawFd>, what: &'static str| -> Result<_, String> {
        let Some(fd) = fd else { return Ok(None) };
        let listener = std::net::TcpListener::from(handover::take(fd)?);
        listener.set_nonblocking(true).map_err(io(what))?;
        Ok(Some(
            tokio::net::TcpListener::from_std(listener).map_err(io(what))?,
        ))
    };
    let admin = tcp(state.admin, "admin listener")?;
    let agent = tcp(state.agent, "agent listener")?;
    let keeper = match state.keeper {
        Some(fd) => Some(Keeper::adopt(handover::take(fd)?).map_err(io("keeper"))?),
        None => None,
    };
    let balance = match state.balance {
        Some(fd) => {
            Some(ShareTable::adopt(handover::take(fd)?).map_err(io("accept-balance table"))?)
        }
        None => None,
    };
    Ok(Parts {
        listeners,
        runtime_dir: state.runtime_dir.clone().map(RuntimeDir),
        control,
        control_file: state
            .control
            .file
            .clone()
            .map(crate::listeners::SocketFile::from_id),
        admin,
        agent,
        keeper,
        balance,
    })
}

/// Watches the workers the previous image handed over; returns those now
/// watched. One that cannot be watched is killed.
fn adopt_workers(
    processes: &mut Processes,
    config: &MasterConfig,
    state: &handover::State,
) -> std::collections::BTreeSet<WorkerId> {
    let mut watched = std::collections::BTreeSet::new();
    for handed in &state.workers {
        let known = state.supervisor.workers.iter().find(|w| w.id == handed.id);
        let adopted = known
            .ok_or_else(|| "not in the state".to_owned())
            .and_then(|known| {
                let fds = worker::WorkerFds {
                    channel: handover::take(handed.channel)?,
                    notify: match &handed.notify {
                        Some((fd, path)) => Some((handover::take(*fd)?, path.clone())),
                        None => None,
                    },
                    stdout: handed.stdout.map(handover::take).transpose()?,
                    stderr: handed.stderr.map(handover::take).transpose()?,
                };
                let adopted = worker::Adopted {
                    id: handed.id,
                    slot: known.worker.slot,
                    generation: known.worker.generation,
                    pid: handed.pid,
                    draining: known.worker.state.is_draining(),
                    ready: known.worker.state == state::WorkerState::Ready,
                    fds,
                };
                processes.adopt(adopted, config).map_err(|e| e.to_string())
            });
        match adopted {
            Ok(()) => {
                watched.insert(handed.id);
            }
            Err(reason) => {
                warn!(pid = handed.pid, %reason, "cannot watch a worker handed over; killing it");
                // Reaped as an orphan (see `crate::process::reap_orphans`).
                let pid = nix::unistd::Pid::from_raw(handed.pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    watched
}

/// Answers the `upgrade --wait` clients handed over on their connections:
/// one sender each, for the supervisor to answer on.
fn answer_on(
    connections: &[std::os::fd::RawFd],
) -> Vec<tokio::sync::oneshot::Sender<crate::control::Reply>> {
    let mut waiters = Vec::new();
    for &raw in connections {
        let Ok(fd) = handover::take(raw) else {
            continue;
        };
        let stream = std::os::unix::net::UnixStream::from(fd);
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let Ok(mut stream) = tokio::net::UnixStream::from_std(stream) else {
            continue;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        waiters.push(reply);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            if let Ok(reply) = answer.await {
                let line = crate::control::encode_reply(&reply);
                let _ = stream.write_all(&line).await;
                let _ = stream.shutdown().await;
            }
        });
    }
    waiters
}

/// How long an exiting master waits for its last control answers to be
/// written, and for its workers' last output lines.
const EXIT_FLUSH: Duration = Duration::from_secs(1);

/// Binds the `--admin` or `--agent` listener (`option`), which serves
/// `what`.
fn open_tcp(
    option: &'static str,
    addr: std::net::SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpListener, MasterError> {
    let bound = std::net::TcpListener::bind(addr).and_then(|listener| {
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    });
    match bound {
        Ok(listener) => {
            let addr = listener.local_addr().unwrap_or(addr);
            Lifecycle::OperatorsListening { option, addr, what }.log();
            Ok(listener)
        }
        Err(e) => Err(MasterError::Admin {
            option,
            addr,
            reason: e.to_string(),
        }),
    }
}

/// COMMAND workers of another user are hidden from a master without
/// `CAP_SYS_PTRACE` (a container drops it by default): /proc does not show
/// their descriptors and `pidfd_getfd` is refused. Said once at start,
/// rather than only as each worker fails to become ready.
fn warn_if_blind_to_workers(config: &MasterConfig) {
    let (Some((uid, _)), Some(foreign)) = (config.worker_identity, &config.foreign) else {
        return;
    };
    if uid == nix::unistd::geteuid().as_raw() || crate::procfs::may_trace_other_users() {
        return;
    }
    let looks = matches!(
        foreign.ready,
        crate::config::ReadyMode::Auto | crate::config::ReadyMode::Listening
    );
    warn!(
        user = uid,
        ready_looks = looks,
        rescue = foreign.rescue,
        "workers run as another user and baton lacks CAP_SYS_PTRACE: it cannot see their sockets, \
         so --ready auto or listening waits for READY=1 only, and idle connections are not rescued; \
         give baton CAP_SYS_PTRACE (a container: --cap-add SYS_PTRACE) or use --ready notify, fd:N or delay:DUR"
    );
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

/// What the master's loop hears besides signals and timers.
struct Inputs {
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    control: mpsc::UnboundedReceiver<control::Request>,
    upgrade_checked: mpsc::UnboundedReceiver<Result<String, String>>,
}

/// The supervisor of a fresh start, with its first workers starting, or
/// of an upgrade, with the workers it adopted.
fn start_supervisor(
    start: Start,
    config: MasterConfig,
    mut processes: Processes,
) -> Supervisor<Processes> {
    match start {
        Start::Fresh => {
            store_bound_listeners(&processes);
            let mut supervisor = Supervisor::new(config, processes);
            supervisor.start();
            supervisor
        }
        Start::Adopted { state, incoming } => {
            let state = *state;
            let handed = state.descriptors();
            let watched = adopt_workers(&mut processes, &config, &state);
            let waiters = answer_on(&state.waiters);
            let took_ms = state::wall_clock::now_ms().saturating_sub(state.asked_at_ms);
            let mut supervisor = Supervisor::adopt(config, processes, state.supervisor);
            // Workers whose descriptors did not come over cannot be
            // watched: they were killed, and their slots are filled again.
            supervisor.keep_only(&watched);
            handover::adopted(&handed, state.previous_program, incoming.state_fd);
            supervisor.after_adoption(incoming.failed.as_deref(), state.roll, took_ms, waiters);
            supervisor
        }
    }
}

/// Hands the listeners baton bound to systemd's descriptor store, which
/// keeps them across a restart (what systemd passed is already its own).
fn store_bound_listeners(processes: &Processes) {
    let bound: Vec<_> = processes
        .listeners
        .iter()
        .filter(|l| !l.inherited)
        .map(|l| (l.name.as_str(), l.as_fd()))
        .collect();
    let stored = processes.notifier.store_fds(&bound);
    if stored > 0 {
        info!(
            listeners = stored,
            "listeners handed to systemd's descriptor store"
        );
    }
}

/// Feeds the supervisor its inputs until every worker is gone.
async fn drive(
    mut supervisor: Supervisor<Processes>,
    signals: &mut SignalIntents,
    mut inputs: Inputs,
    watchdog: Option<Duration>,
) -> Result<(), MasterError> {
    // WATCHDOG=1 comes from this loop, so it stops if the loop stalls.
    let mut watchdog = watchdog.map(tokio::time::interval);
    let mut memory_check = supervisor
        .config
        .max_memory
        .map(|_| tokio::time::interval(MEMORY_CHECK_EVERY));
    let mut listeners = listening::Watch::new(&supervisor.effects.listeners);
    while !supervisor.is_done() {
        let timer = supervisor.next_timer();
        let due = timer.map_or_else(Instant::now, |(at, _)| at);
        tokio::select! {
            _ = sleep_until(due), if timer.is_some() => {
                if let Some((_, timer)) = timer {
                    supervisor.on_timer(timer);
                }
            }
            _ = tick(&mut watchdog) => supervisor.watchdog(),
            _ = tick(&mut memory_check) => supervisor.check_memory(),
            look = listeners.next() => {
                supervisor.keep_listening(look);
                listeners.rearm(&supervisor.effects.listeners);
            }
            Some((intent, signal)) = signals.next() => {
                if intent == Intent::ChildExited {
                    for pid in crate::process::reap_orphans() {
                        info!(pid, "reaped an orphaned process");
                    }
                } else {
                    supervisor.on_signal(intent, signal);
                }
            }
            Some(event) = inputs.events.recv() => supervisor.on_event(event),
            Some(request) = inputs.control.recv() => supervisor.on_control(request),
            Some(checked) = inputs.upgrade_checked.recv() => supervisor.on_upgrade_checked(checked),
        }
    }
    supervisor.finish()
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
