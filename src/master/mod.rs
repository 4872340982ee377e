//! The master: binds the listeners, keeps one worker in each slot, replaces
//! crashed workers, rolls new generations in on reload, drains on shutdown.
//!
//! - [`supervisor`]: the state machine (slots, reloads, rollbacks,
//!   shutdown), acting only through [`effects::Effects`].
//! - [`effects`]: what it does to the world, and the real implementation.
//! - [`rollout`]: one rolling restart, slot by slot.
//! - [`release`]: what a generation was started from, for a rollback.
//! - [`worker`]: one worker process and the task that watches it.
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
mod metrics;
mod release;
mod rollout;
mod status;
mod supervisor;
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
use crate::event::Event;
use crate::keeper::Keeper;
use crate::listeners::{BindOptions, ListenerSet};
use crate::signals::SignalIntents;
use crate::systemd::Notifier;
pub use effects::ConfigLoader;
use effects::Processes;
use supervisor::Supervisor;
pub use worker::{WorkerEvent, WorkerHandle, WorkerId, WorkerStats};

/// How often workers' memory is compared with `--max-memory`.
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs the master until it is told to stop. Returns an error for a failed
/// start (listeners cannot be bound, the first workers cannot start).
///
/// `inherited` are the listeners systemd passed (see
/// [`crate::systemd::take_listen_fds`]); `loader` reads the configuration
/// again on reload when it came from a `--config` file.
pub async fn run(
    config: MasterConfig,
    inherited: Vec<(String, OwnedFd)>,
    loader: ConfigLoader,
) -> Result<(), MasterError> {
    info!(
        event = %Event::MasterStarted,
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        "baton started"
    );
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
    let notifier = Notifier::from_env();
    let watchdog = notifier.watchdog_interval();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (output_alive, mut output_closed) = mpsc::channel::<()>(1);
    let processes = Processes {
        listeners,
        events: events_tx,
        handles: BTreeMap::new(),
        notifier,
        runtime_dir,
        balance: ShareTable::create()
            .inspect_err(|e| warn!(cause = %e, "no accept balance: workers accept unpaced"))
            .ok(),
        keeper,
        loader,
        output: output_alive,
    };
    // The socket file is removed when `_control_file` drops, as run returns.
    let (control_listener, _control_file) = control_socket;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    if let Some(admin) = admin {
        tokio::spawn(admin::serve(admin, control_tx.clone()));
    }
    if let Some(agent) = agent {
        tokio::spawn(agent::serve(agent, control_tx.clone()));
    }
    let clients = control::Clients::default();
    tokio::spawn(control::serve(
        control_listener,
        control_tx,
        clients.clone(),
    ));
    let supervisor = Supervisor::new(config, processes);
    let outcome = drive(supervisor, &mut signals, events_rx, control_rx, watchdog).await;
    // The supervisor is gone: what is still open are answers being written
    // and workers' last output lines being forwarded; both at once, for
    // EXIT_FLUSH at the most.
    let output_forwarded = tokio::time::timeout(EXIT_FLUSH, async {
        while output_closed.recv().await.is_some() {}
    });
    let _ = tokio::join!(clients.answered(EXIT_FLUSH), output_forwarded);
    outcome
}

/// How long an exiting master waits for its last control answers to be
/// written, and for its workers' last output lines.
const EXIT_FLUSH: Duration = Duration::from_secs(1);

/// Binds the `--admin` or `--agent` listener (`option`), which serves
/// `what`.
fn open_tcp(
    option: &'static str,
    addr: std::net::SocketAddr,
    what: &str,
) -> Result<tokio::net::TcpListener, MasterError> {
    let bound = std::net::TcpListener::bind(addr).and_then(|listener| {
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    });
    match bound {
        Ok(listener) => {
            let addr = listener.local_addr().unwrap_or(addr);
            info!(%addr, option, what, "listening for operators");
            Ok(listener)
        }
        Err(e) => Err(MasterError::Admin {
            option,
            addr,
            reason: e.to_string(),
        }),
    }
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

/// Feeds the supervisor its inputs until every worker is gone.
async fn drive(
    mut supervisor: Supervisor<Processes>,
    signals: &mut SignalIntents,
    mut events: mpsc::UnboundedReceiver<WorkerEvent>,
    mut control: mpsc::UnboundedReceiver<control::Request>,
    watchdog: Option<Duration>,
) -> Result<(), MasterError> {
    // WATCHDOG=1 comes from this loop, so it stops if the loop stalls.
    let mut watchdog = watchdog.map(tokio::time::interval);
    let mut memory_check = supervisor
        .config
        .max_memory
        .map(|_| tokio::time::interval(MEMORY_CHECK_EVERY));
    supervisor.start();
    while !supervisor.is_done() {
        let next_restart = supervisor.next_restart();
        let probation_end = supervisor.probation_end();
        let shutdown_at = supervisor.shutdown_at;
        tokio::select! {
            _ = sleep_until(shutdown_at.unwrap_or_else(Instant::now)), if shutdown_at.is_some() => {
                supervisor.shutdown_delay_over();
            }
            _ = sleep_until(probation_end.unwrap_or_else(Instant::now)), if probation_end.is_some() => {
                supervisor.pass_probation("stayed up through its probation");
            }
            _ = tick(&mut watchdog) => supervisor.watchdog(),
            _ = tick(&mut memory_check) => supervisor.check_memory(),
            Some((intent, signal)) = signals.next() => supervisor.on_signal(intent, signal),
            Some(event) = events.recv() => supervisor.on_event(event),
            Some(request) = control.recv() => supervisor.on_control(request),
            _ = sleep_until(next_restart.unwrap_or_else(Instant::now)), if next_restart.is_some() => {
                supervisor.restart_due_slots(Instant::now());
            }
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
