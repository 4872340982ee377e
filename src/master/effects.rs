//! Everything the supervisor does to the world, behind one trait: start,
//! tell and kill worker processes, tell systemd, read a worker's memory,
//! read the configuration again, keep and restore program files, check
//! an upgrade's program and hand the master over to it.
//!
//! The supervisor's state machine ([`super::supervisor`]) acts only through
//! [`Effects`], so its unit tests drive it with a fake that records what it
//! asked for, and the master drives it with [`Processes`], the real thing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use std::os::fd::{AsFd, OwnedFd};

use super::handover::{self, HandedSocketFile, HandedWorker, Keep, State};
use super::health;
use super::release::ProgramFile;
use super::upgrade::{self, Departure};
use super::worker::{self, WorkerEvent, WorkerHandle, WorkerId};
use crate::balance::ShareTable;
use crate::config::{ConfigSource, HealthCheck, MasterConfig};
use crate::fd::{self, Exec};
use crate::keeper::Keeper;
use crate::listeners::ListenerSet;
use crate::listeners::SocketFileId;
use crate::procfs;
use crate::protocol::Settlement;
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
    /// its pid, or why it could not start. A worker that will be
    /// `probed` is told, if it can be, to accept nothing before its
    /// probes pass (see [`Effects::probe`]).
    fn spawn(
        &mut self,
        id: WorkerId,
        slot: usize,
        generation: u64,
        config: &MasterConfig,
        probed: bool,
    ) -> Result<u32, String>;
    /// Tells a worker to drain within `timeout`, keeping idle keep-alive
    /// connections for `grace` (built-in workers), or with `handover`
    /// handing them over as they idle.
    fn drain(&mut self, id: WorkerId, timeout: Duration, grace: Option<Duration>, handover: bool);
    /// Gives worker `to` the connections another worker handed over.
    fn adopt(&mut self, to: WorkerId, handed: worker::Handed);
    /// Tells worker `from` which of its handed-over `batch` were taken.
    fn settle(&mut self, from: WorkerId, batch: u64, settlement: Settlement);
    /// Tells a draining built-in worker to end its grace now.
    fn hurry(&mut self, id: WorkerId);
    /// Tells every worker's watcher to go quiet up to `step` before an
    /// exec; each answers [`WorkerEvent::Quiet`]. The workers told.
    fn quiet(&mut self, step: worker::Quiet) -> BTreeSet<WorkerId>;
    /// After a failed exec: the watchers read and pass connections on again.
    fn speak(&mut self);
    fn kill(&mut self, id: WorkerId);
    /// Worker `id` (process `pid`) is gone and reaped: forget it.
    fn gone(&mut self, id: WorkerId, pid: u32);
    /// Reads the listeners back from the kernel and puts right what a
    /// worker changed (a `shutdown()`, another backlog); what it found.
    fn keep_listening(&mut self) -> Vec<crate::listeners::Repair>;
    /// The memory and CPU of a worker's process group.
    fn usage(&self, pid: u32) -> procfs::Usage;
    fn systemd(&mut self, message: Systemd);
    fn load_config(&self, source: &ConfigSource) -> Result<MasterConfig, String>;
    /// A program file kept as it is now, whatever later happens to its
    /// path, for a rollback.
    type Program: std::fmt::Debug;
    /// Keeps the program file at `path` as it is now.
    fn keep_program(&mut self, path: &Path) -> std::io::Result<Self::Program>;
    /// Writes a kept program of `generation` back out as an executable
    /// file: its path, or why it cannot.
    fn restore_program(
        &mut self,
        program: &Self::Program,
        generation: u64,
    ) -> Result<PathBuf, String>;
    /// Probes worker `id` (process `pid`) as `check` says, once it
    /// listens (within `start_allowance`); the outcome comes back as its
    /// [`WorkerEvent::Probed`].
    fn probe(&mut self, id: WorkerId, pid: u32, check: &HealthCheck, start_allowance: Duration);
    /// Checks the program an upgrade would run (`baton upgrade-check`);
    /// the outcome comes back as an input of the master's loop.
    fn check_upgrade(&mut self);
    /// Replaces this process image with the new program, handing it the
    /// master's state. Returns only if that failed: why.
    fn hand_over(&mut self, departure: Departure) -> String;
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
    /// Takes the idle connections of draining COMMAND workers
    /// (`--rescue-connections`); its process starts on first use.
    pub rescuer: crate::rescue::handle::Rescuer,
    pub loader: ConfigLoader,
    /// Cloned into each task that forwards a worker's output.
    pub output: mpsc::Sender<()>,
    /// Where the outcome of an upgrade's program check goes.
    pub upgrade_checked: mpsc::UnboundedSender<Result<String, String>>,
    /// The master's own sockets, to hand over on upgrade.
    pub own_sockets: OwnSockets,
}

/// Copies of the sockets the master serves besides the listeners: the
/// control socket (with its file), `--admin` and `--agent`.
#[derive(Debug)]
pub(super) struct OwnSockets {
    pub control: OwnedFd,
    pub control_file: Option<SocketFileId>,
    pub admin: Option<OwnedFd>,
    pub agent: Option<OwnedFd>,
}

impl Processes {
    /// What the watcher of a worker started with `config` is given.
    fn watch_context<'a>(&'a self, config: &'a MasterConfig) -> worker::WatchContext<'a> {
        worker::WatchContext {
            foreign: config.foreign.as_ref(),
            prefix_output: config.prefix_output,
            listeners: &self.listeners,
            ready_timeout: config.ready_timeout,
            drain_timeout: config.drain_timeout,
            keeper: self.keeper.as_ref(),
            rescuer: config
                .foreign
                .as_ref()
                .filter(|f| f.rescue)
                .map(|_| &self.rescuer),
            output: &self.output,
            health: config.health.as_ref().filter(|h| h.interval.is_some()),
        }
    }
}

impl OwnSockets {
    /// Copies of the master's own sockets in `parts`.
    pub fn copied_from(parts: &super::Parts) -> Result<OwnSockets, super::MasterError> {
        let copy = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(super::MasterError::OwnSockets)
        };
        Ok(OwnSockets {
            control: copy(parts.control.as_fd())?,
            control_file: parts
                .control_file
                .as_ref()
                .map(crate::listeners::SocketFile::id),
            admin: parts.admin.as_ref().map(|l| copy(l.as_fd())).transpose()?,
            agent: parts.agent.as_ref().map(|l| copy(l.as_fd())).transpose()?,
        })
    }
}

impl Effects for Processes {
    fn spawn(
        &mut self,
        id: WorkerId,
        slot: usize,
        generation: u64,
        config: &MasterConfig,
        probed: bool,
    ) -> Result<u32, String> {
        let runtime_dir = self.runtime_dir.as_ref().map(super::RuntimeDir::path);
        let launch = worker::Launch {
            id,
            slot,
            generation,
            program: &config.program,
            args: &config.worker_args,
            http: config.http.as_ref(),
            limits: config.native_limits,
            threads: config.native_threads,
            // A built-in worker is probed over its handoff socket before
            // it accepts.
            hold: probed && config.speaks_protocol(),
            identity: config.worker_identity,
            balance: self.balance.as_ref().map(ShareTable::fd),
            notify_dir: runtime_dir,
            watch: self.watch_context(config),
        };
        let handle = worker::spawn(launch, self.events.clone()).map_err(|e| e.to_string())?;
        let pid = handle.pid;
        self.handles.insert(id, handle);
        Ok(pid)
    }

    fn drain(&mut self, id: WorkerId, timeout: Duration, grace: Option<Duration>, handover: bool) {
        if let Some(handle) = self.handles.get(&id) {
            handle.drain(timeout, grace, handover);
        }
    }

    fn adopt(&mut self, to: WorkerId, handed: worker::Handed) {
        let refused = match self.handles.get(&to) {
            Some(handle) => handle.adopt(handed).err(),
            None => Some(handed),
        };
        if let Some(handed) = refused {
            // Back through the supervisor, which may have given the rest of
            // the batch to other workers.
            let _ = self.events.send(handed.settled(false));
        }
    }

    fn settle(&mut self, from: WorkerId, batch: u64, settlement: Settlement) {
        if let Some(handle) = self.handles.get(&from) {
            handle.settle(batch, settlement);
        }
    }

    fn hurry(&mut self, id: WorkerId) {
        if let Some(handle) = self.handles.get(&id) {
            handle.hurry();
        }
    }

    fn quiet(&mut self, step: worker::Quiet) -> BTreeSet<WorkerId> {
        self.handles
            .iter()
            .filter(|(_, handle)| handle.quiet(step))
            .map(|(&id, _)| id)
            .collect()
    }

    fn speak(&mut self) {
        for handle in self.handles.values() {
            handle.speak();
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

    fn keep_listening(&mut self) -> Vec<crate::listeners::Repair> {
        self.listeners.keep_listening()
    }

    fn usage(&self, pid: u32) -> procfs::Usage {
        procfs::group_usage(pid)
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

    type Program = ProgramFile;

    fn keep_program(&mut self, path: &Path) -> std::io::Result<ProgramFile> {
        ProgramFile::open(path)
    }

    fn restore_program(
        &mut self,
        program: &ProgramFile,
        generation: u64,
    ) -> Result<PathBuf, String> {
        let dir = self
            .runtime_dir
            .as_ref()
            .ok_or("the master has no private directory to write it to")?;
        program
            .write_out(dir.path(), generation)
            .map_err(|e| e.to_string())
    }

    fn probe(&mut self, id: WorkerId, pid: u32, check: &HealthCheck, start_allowance: Duration) {
        if let Some(handle) = self.handles.get(&id).filter(|handle| handle.held) {
            return handle.probe(check.clone());
        }
        let events = self.events.clone();
        let target = health::target(pid, &self.listeners.ids());
        let check = check.clone();
        tokio::spawn(async move {
            let outcome = match target {
                Ok(target) => health::probe(&check, target, Some(start_allowance)).await,
                Err(unhealthy) => Err(unhealthy),
            };
            let _ = events.send(WorkerEvent::Probed { id, outcome });
        });
    }

    fn check_upgrade(&mut self) {
        let checked = self.upgrade_checked.clone();
        tokio::spawn(async move {
            let outcome = match crate::config::own_program_path() {
                Ok(program) => {
                    upgrade::check_program(program, crate::settings::own_serve_args()).await
                }
                Err(e) => Err(format!("cannot find baton's own program: {e}")),
            };
            let _ = checked.send(outcome);
        });
    }

    fn hand_over(&mut self, departure: Departure) -> String {
        match self.exec_next_image(departure) {
            Ok(never) => match never {},
            Err(reason) => reason,
        }
    }
}

impl Processes {
    /// Watches a worker a previous image of the master started.
    pub fn adopt(
        &mut self,
        adopted: worker::Adopted,
        config: &MasterConfig,
    ) -> std::io::Result<()> {
        let context = self.watch_context(config);
        let id = adopted.id;
        let handle = worker::adopt(adopted, &context, self.events.clone())?;
        self.handles.insert(id, handle);
        Ok(())
    }

    /// Writes the state and execs baton's program; returns only on failure.
    fn exec_next_image(&self, departure: Departure) -> Result<std::convert::Infallible, String> {
        let program = crate::config::own_program_path()
            .map_err(|e| format!("cannot find baton's own program: {e}"))?;
        let mut keep = Keep::default();
        let state = self
            .departing_state(&mut keep, departure)
            .map_err(|e| format!("cannot keep a descriptor open for the new program: {e}"))?;
        let sealed = state
            .seal()
            .map_err(|e| format!("cannot write the state for the new program: {e}"))?;
        let state_fd = keep
            .own(sealed)
            .map_err(|e| format!("cannot keep the state open for the new program: {e}"))?;
        let exec = Exec::path(
            &program,
            &handover::own_argv(),
            &handover::env_forward(state_fd),
        )
        .map_err(|e| format!("cannot prepare to run {}: {e}", program.display()))?;
        // Survives the exec: the new image must take over before it rings.
        fd::alarm(Some(handover::TAKE_OVER_WITHIN));
        let error = exec.run();
        fd::alarm(None);
        Err(format!("cannot run {}: {error}", program.display()))
    }

    /// The state the next image starts from, every descriptor in it kept
    /// open across the exec by `keep`.
    fn departing_state(&self, keep: &mut Keep, departure: Departure) -> std::io::Result<State> {
        let previous = std::fs::File::open("/proc/self/exe")?;
        let previous_program = keep.own(previous.into())?;
        let listeners = self.listeners.hand_over(|fd| keep.copy(fd))?;
        let sockets = &self.own_sockets;
        let control = HandedSocketFile {
            fd: keep.copy(sockets.control.as_fd())?,
            file: sockets.control_file.clone(),
        };
        let admin = keep.copy_some(sockets.admin.as_ref().map(AsFd::as_fd))?;
        let agent = keep.copy_some(sockets.agent.as_ref().map(AsFd::as_fd))?;
        let keeper = keep.copy_some(self.keeper.as_ref().map(Keeper::fd))?;
        let balance = keep.copy_some(self.balance.as_ref().map(ShareTable::fd))?;
        let mut workers = Vec::new();
        for (&id, handle) in &self.handles {
            let fds = &handle.fds;
            workers.push(HandedWorker {
                id,
                pid: handle.pid,
                channel: keep.copy(fds.channel.as_fd())?,
                notify: match &fds.notify {
                    Some((fd, path)) => Some((keep.copy(fd.as_fd())?, path.clone())),
                    None => None,
                },
                stdout: keep.copy_some(fds.stdout.as_ref().map(AsFd::as_fd))?,
                stderr: keep.copy_some(fds.stderr.as_ref().map(AsFd::as_fd))?,
            });
        }
        let waiters = departure
            .waiters
            .into_iter()
            .map(|fd| keep.own(fd))
            .collect::<std::io::Result<_>>()?;
        Ok(State {
            format: handover::FORMAT,
            from_version: env!("CARGO_PKG_VERSION").to_owned(),
            previous_program,
            asked_at_ms: departure.asked_at_ms,
            listeners,
            control,
            admin,
            agent,
            keeper,
            balance,
            runtime_dir: self.runtime_dir.as_ref().map(|d| d.path().to_owned()),
            supervisor: departure.supervisor,
            workers,
            waiters,
            roll: departure.roll,
            fault: departure.fault,
        })
    }
}
