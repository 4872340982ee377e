//! Everything the supervisor does to the world, behind one trait: start,
//! tell and kill worker processes, tell systemd, read a worker's memory,
//! read the configuration again.
//!
//! The supervisor's state machine ([`super::supervisor`]) acts only through
//! [`Effects`], so its unit tests drive it with a fake that records what it
//! asked for, and the master drives it with [`Processes`], the real thing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::worker::{self, WorkerEvent, WorkerHandle, WorkerId};
use crate::balance::ShareTable;
use crate::config::{ConfigSource, MasterConfig};
use crate::keeper::Keeper;
use crate::listeners::ListenerSet;
use crate::procfs;
use crate::systemd::Notifier;

/// Reads a configuration again from its file and command line; given by
/// the caller of [`super::run`], so that the master needs no command-line
/// parser of its own.
pub type ConfigLoader = fn(&ConfigSource) -> Result<MasterConfig, String>;

/// What the supervisor tells systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Systemd {
    /// READY=1: started, or a reload ended (whatever its outcome).
    Ready(String),
    /// RELOADING=1: a reload started.
    Reloading(String),
    /// STATUS= alone.
    Status(String),
    /// STOPPING=1, asking for `drain` more time to stop.
    Stopping { status: String, drain: Duration },
    /// WATCHDOG=1.
    Watchdog,
}

/// What the supervisor asks of the world.
pub(super) trait Effects {
    /// Starts worker `id` for `slot` of `generation` as `config` says:
    /// its pid, or why it could not start.
    fn spawn(
        &mut self,
        id: WorkerId,
        slot: usize,
        generation: u64,
        config: &MasterConfig,
    ) -> Result<u32, String>;
    /// Tells a worker to drain within `timeout`, keeping idle keep-alive
    /// connections for `grace` (built-in workers).
    fn drain(&mut self, id: WorkerId, timeout: Duration, grace: Option<Duration>);
    /// Tells a draining built-in worker to end its grace now.
    fn hurry(&mut self, id: WorkerId);
    fn kill(&mut self, id: WorkerId);
    /// Worker `id` (process `pid`) is gone and reaped: forget it.
    fn gone(&mut self, id: WorkerId, pid: u32);
    /// Worker `pid` became ready; it may have called `listen()` again on a
    /// shared socket.
    fn became_ready(&mut self, pid: u32);
    /// The resident size of a worker's process group, in bytes.
    fn rss_bytes(&self, pid: u32) -> u64;
    fn systemd(&mut self, message: Systemd);
    fn load_config(&self, source: &ConfigSource) -> Result<MasterConfig, String>;
    /// Where rolled-back program files are written, if anywhere.
    fn runtime_dir(&self) -> Option<&Path>;
}

/// The real effects: worker processes, their watchers and systemd.
pub(super) struct Processes {
    /// Held for the master's whole life: the accept queues outlive workers.
    pub listeners: ListenerSet,
    /// Given to each worker's watcher; the master's loop owns the
    /// receiving end.
    pub events: mpsc::UnboundedSender<WorkerEvent>,
    pub handles: BTreeMap<WorkerId, WorkerHandle>,
    pub notifier: Notifier,
    /// COMMAND workers' notify sockets and rolled-back program files.
    pub runtime_dir: Option<super::RuntimeDir>,
    /// Where workers publish their open connections to split new ones
    /// evenly; `None` if it could not be created (workers then accept
    /// unpaced).
    pub balance: Option<ShareTable>,
    /// Stops the workers' process groups if this master dies; `None` if it
    /// could not be started.
    pub keeper: Option<Keeper>,
    pub loader: ConfigLoader,
    /// Cloned into each task that forwards a worker's output.
    pub output: mpsc::Sender<()>,
}

impl Effects for Processes {
    fn spawn(
        &mut self,
        id: WorkerId,
        slot: usize,
        generation: u64,
        config: &MasterConfig,
    ) -> Result<u32, String> {
        let launch = worker::Launch {
            id,
            slot,
            generation,
            program: &config.program,
            args: &config.worker_args,
            listeners: &self.listeners,
            ready_timeout: config.ready_timeout,
            foreign: config
                .foreign
                .as_ref()
                .zip(self.runtime_dir.as_ref())
                .map(|(foreign, dir)| (foreign, dir.path())),
            identity: config.worker_identity,
            balance: self.balance.as_ref().map(ShareTable::fd),
            drain_timeout: config.drain_timeout,
            keeper: self.keeper.as_ref(),
            output: &self.output,
        };
        let handle = worker::spawn(launch, self.events.clone()).map_err(|e| e.to_string())?;
        let pid = handle.pid;
        self.handles.insert(id, handle);
        Ok(pid)
    }

    fn drain(&mut self, id: WorkerId, timeout: Duration, grace: Option<Duration>) {
        if let Some(handle) = self.handles.get(&id) {
            handle.drain(timeout, grace);
        }
    }

    fn hurry(&mut self, id: WorkerId) {
        if let Some(handle) = self.handles.get(&id) {
            handle.hurry();
        }
    }

    fn kill(&mut self, id: WorkerId) {
        if let Some(handle) = self.handles.get(&id) {
            handle.kill();
        }
    }

    fn gone(&mut self, id: WorkerId, pid: u32) {
        self.handles.remove(&id);
        if let Some(table) = &self.balance {
            table.forget(pid);
        }
    }

    /// Sets the listen backlog back where a worker changed it.
    fn became_ready(&mut self, pid: u32) {
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

    fn rss_bytes(&self, pid: u32) -> u64 {
        procfs::group_usage(pid).rss_bytes
    }

    fn systemd(&mut self, message: Systemd) {
        match message {
            Systemd::Ready(status) => self.notifier.ready(&status),
            Systemd::Reloading(status) => self.notifier.reloading(&status),
            Systemd::Status(status) => self.notifier.status(&status),
            Systemd::Stopping { status, drain } => self.notifier.stopping(&status, drain),
            Systemd::Watchdog => self.notifier.watchdog(),
        }
    }

    fn load_config(&self, source: &ConfigSource) -> Result<MasterConfig, String> {
        (self.loader)(source)
    }

    fn runtime_dir(&self) -> Option<&Path> {
        self.runtime_dir.as_ref().map(super::RuntimeDir::path)
    }
}
