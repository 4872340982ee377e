//! One worker process as the master sees it: how it is started, and the task
//! that watches it for its whole life (readiness, protocol errors, drain
//! deadline, exit) and reports each of those to the supervisor as an event.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn, Instrument};

use crate::error::SpawnError;
use crate::fd;
use crate::listeners::ListenerSet;
use crate::protocol::{self, Channel, ToMaster, ToWorker};

/// Identifies a worker process for the master's whole life (pids get reused).
pub type WorkerId = u64;

/// How long after its drain deadline a worker is killed: the worker itself
/// gives up at the deadline; this is for one that does not.
const KILL_MARGIN: Duration = Duration::from_millis(500);

/// What a worker's watcher tells the supervisor.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The worker accepts on all its listeners.
    Ready { id: WorkerId },
    /// The worker broke the protocol or missed its ready deadline; it is
    /// being killed, and `Exited` follows.
    Failed { id: WorkerId, reason: String },
    /// The process is gone and reaped.
    Exited { id: WorkerId, status: ExitStatus },
}

/// What the supervisor asks of a worker.
#[derive(Debug)]
enum Order {
    Drain(Duration),
    Kill,
}

/// The supervisor's handle on a running worker process.
#[derive(Debug)]
pub struct WorkerHandle {
    pub id: WorkerId,
    pub pid: u32,
    orders: mpsc::UnboundedSender<Order>,
}

impl WorkerHandle {
    /// Tells the worker to drain within `timeout`; it is killed after that.
    pub fn drain(&self, timeout: Duration) {
        let _ = self.orders.send(Order::Drain(timeout));
    }

    /// Kills the worker at once.
    pub fn kill(&self) {
        let _ = self.orders.send(Order::Kill);
    }
}

/// Everything needed to start a worker.
pub struct Launch<'a> {
    pub id: WorkerId,
    pub slot: usize,
    pub generation: u64,
    pub program: &'a Path,
    pub args: &'a [OsString],
    pub listeners: &'a ListenerSet,
    pub ready_timeout: Duration,
}

/// Starts a worker process and the task that watches it.
pub fn spawn(
    launch: Launch<'_>,
    events: mpsc::UnboundedSender<WorkerEvent>,
) -> Result<WorkerHandle, SpawnError> {
    let (master_end, worker_end) = fd::seqpacket_pair().map_err(SpawnError::Socketpair)?;
    let master_end = UnixDatagram::from(master_end);
    // The hello waits in the socket until the worker reads it: no round trip.
    let hello = ToWorker::Hello {
        worker_id: launch.id,
        generation: launch.generation,
        listeners: launch.listeners.names(),
    };
    protocol::send_now(&master_end, &hello, &launch.listeners.fds()).map_err(SpawnError::Hello)?;

    let mut cmd = tokio::process::Command::new(launch.program);
    cmd.args(launch.args)
        .stdin(Stdio::null())
        // Only the master speaks to systemd and reads its sockets.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        // Its own process group: a Ctrl-C on the terminal reaches the master
        // only, which then drains the workers instead of losing them.
        .process_group(0)
        .kill_on_drop(true);
    fd::prepare_child(&mut cmd, std::os::fd::AsFd::as_fd(&worker_end));
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        program: launch.program.to_owned(),
        source,
    })?;
    drop(worker_end);
    let pid = child.id().expect("a just-spawned child has a pid");
    let channel = Channel::new(master_end).map_err(SpawnError::Socketpair)?;

    let (orders_tx, orders_rx) = mpsc::unbounded_channel();
    let span = tracing::info_span!(
        "worker",
        id = launch.id,
        slot = launch.slot,
        generation = launch.generation,
        pid
    );
    let watcher = Watcher {
        id: launch.id,
        child,
        channel,
        orders: orders_rx,
        events,
        ready_deadline: Instant::now() + launch.ready_timeout,
        ready_timeout: launch.ready_timeout,
    };
    tokio::spawn(watcher.run().instrument(span));
    Ok(WorkerHandle {
        id: launch.id,
        pid,
        orders: orders_tx,
    })
}

/// Watches one worker until it exits.
struct Watcher {
    id: WorkerId,
    child: Child,
    channel: Channel,
    orders: mpsc::UnboundedReceiver<Order>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    ready_deadline: Instant,
    ready_timeout: Duration,
}

impl Watcher {
    async fn run(mut self) {
        let id = self.id;
        let mut ready = false;
        let mut channel_open = true;
        let mut orders_open = true;
        let mut killed = false;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let ready_timer = !ready && !killed && drain_deadline.is_none();
            let drain_timer = drain_deadline.filter(|_| !killed);
            tokio::select! {
                status = self.child.wait() => {
                    let status = match status {
                        Ok(status) => status,
                        Err(e) => {
                            // Cannot happen for a child we spawned; report it as a crash.
                            warn!(cause = %e, "cannot wait for worker");
                            std::os::unix::process::ExitStatusExt::from_raw(0xff00)
                        }
                    };
                    let _ = self.events.send(WorkerEvent::Exited { id, status });
                    return;
                }
                message = self.channel.recv_plain::<ToMaster>(), if channel_open => match message {
                    Ok(Some(ToMaster::Ready)) if !ready => {
                        ready = true;
                        let _ = self.events.send(WorkerEvent::Ready { id });
                    }
                    Ok(Some(ToMaster::Ready)) => debug!("duplicate ready ignored"),
                    // The worker closed its end: it is exiting.
                    Ok(None) => channel_open = false,
                    Err(e) => {
                        channel_open = false;
                        self.fail(&mut killed, format!("broke the handoff protocol: {e}"));
                    }
                },
                order = self.orders.recv(), if orders_open => match order {
                    Some(Order::Drain(timeout)) => {
                        drain_deadline = Some(Instant::now() + timeout + KILL_MARGIN);
                        if channel_open {
                            if let Err(e) = self.channel.send(&ToWorker::drain(timeout), &[]).await {
                                self.fail(&mut killed, format!("cannot send drain: {e}"));
                            }
                        }
                    }
                    Some(Order::Kill) | None => {
                        orders_open = order.is_some();
                        self.kill(&mut killed);
                    }
                },
                _ = sleep_until(self.ready_deadline), if ready_timer => {
                    let reason = format!(
                        "not ready within {}",
                        humantime::format_duration(self.ready_timeout)
                    );
                    self.fail(&mut killed, reason);
                }
                _ = sleep_until(drain_timer.unwrap_or_else(Instant::now)), if drain_timer.is_some() => {
                    warn!("drain deadline passed; killing the worker");
                    self.kill(&mut killed);
                }
            }
        }
    }

    fn fail(&mut self, killed: &mut bool, reason: String) {
        let _ = self.events.send(WorkerEvent::Failed {
            id: self.id,
            reason,
        });
        self.kill(killed);
    }

    fn kill(&mut self, killed: &mut bool) {
        if !*killed {
            *killed = true;
            // Fails only if the process is already gone, which `wait` reports.
            let _ = self.child.start_kill();
        }
    }
}
