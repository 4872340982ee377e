//! One worker process as the master sees it: how it is started, and the task
//! that watches it for its whole life (readiness, protocol errors, drain
//! deadline, exit) and reports each of those to the supervisor as an event.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, info, warn, Instrument};

use super::health::{self, Healthy, Unhealthy};
use crate::config::{deadline, ForeignWorker, HealthCheck, ReadyMode};
use crate::error::{HandoffError, SpawnError};
use crate::fd;
use crate::keeper::Keeper;
use crate::listeners::ListenerSet;
use crate::process::Process;
use crate::procfs;
use crate::protocol::{self, Channel, Settlement, ToMaster, ToWorker, WorkerStats};

/// Identifies a worker process for the master's whole life (pids get reused).
pub type WorkerId = u64;

/// How long after its drain deadline a worker is killed: the worker itself
/// gives up at the deadline; this is for one that does not.
const KILL_MARGIN: Duration = Duration::from_millis(500);

/// How long passing handed-over connections to a worker may wait for room
/// in its handoff socket. A worker that reads nothing (stopped, hung) gets
/// none: they go back to the worker that holds them, and the watcher stays
/// free to notice the worker's state.
const ADOPT_SEND_LIMIT: Duration = Duration::from_millis(500);

/// A ready built-in worker that has sent no report (it sends one every
/// second) for this long is stuck: stopped, deadlocked or spinning. It is
/// killed and replaced like a crash, so that the connections it holds fail
/// rather than hang forever.
pub const BUILTIN_LIVENESS: Duration = Duration::from_secs(3);

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
    /// The worker's counters.
    Stats { id: WorkerId, stats: WorkerStats },
    /// How the worker's health probes went (`--health`).
    Probed {
        id: WorkerId,
        outcome: Result<super::health::Healthy, super::health::Unhealthy>,
    },
    /// A draining worker handed idle connections over, for a newer worker.
    Handover(Handed),
    /// The connections at `positions` of worker `from`'s handed-over
    /// batch were taken by the worker they were given to (`taken`), or
    /// could not be. Once every part of the batch is settled, `from` is
    /// told.
    Settled {
        from: WorkerId,
        batch: u64,
        positions: Vec<u32>,
        taken: bool,
    },
    /// Connections a worker handed over while the master was leaving went
    /// back to it, answered by its watcher.
    FellBack { count: usize },
    /// The rescuer served (or closed) connections programs let go, and
    /// forwarded `requests` of them (see [`crate::rescue`]).
    Rescued { connections: u64, requests: u64 },
    /// The watcher reached `step` of the master's departure (see
    /// [`WorkerHandle::quiet`]).
    Quiet { id: WorkerId, step: Quiet },
}

/// The steps by which the master's watchers go quiet before it execs a new
/// image (`baton upgrade`), so that no handed-over connection is in the
/// master's hands, or in an answer it has not written, at the exec: a
/// batch lost there would leave its old worker waiting for an answer, and
/// its clients unanswered, until the drain's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// Pass no connection on any more (those handed over from now are
    /// returned by the watcher itself); reached once no batch passed to
    /// this worker awaits its answer.
    Settled,
    /// Write every order given so far, then read nothing more from the
    /// worker: what it says next stays in its socket for the next image.
    Hushed,
}

/// Idle connections a draining worker handed over: worker `from`'s batch,
/// or part of it, one descriptor per connection. The master only moves
/// them.
#[derive(Debug)]
pub struct Handed {
    pub from: WorkerId,
    pub batch: u64,
    pub connections: Vec<protocol::MovedConnection>,
    pub fds: Vec<OwnedFd>,
    /// Where each connection stands in the batch its worker sent, which
    /// is how its worker is told which came back.
    pub positions: Vec<u32>,
}

impl Handed {
    /// A whole batch as worker `from` sent it.
    pub fn whole(
        from: WorkerId,
        batch: u64,
        connections: Vec<protocol::MovedConnection>,
        fds: Vec<OwnedFd>,
    ) -> Self {
        let positions = (0..fds.len() as u32).collect();
        Handed {
            from,
            batch,
            connections,
            fds,
            positions,
        }
    }

    /// Splits the batch into one part for each worker of `placement`
    /// (one worker for each connection, in order): each worker's
    /// connections, in their order.
    pub fn split(self, placement: &[WorkerId]) -> Vec<(WorkerId, Handed)> {
        let mut parts: Vec<(WorkerId, Handed)> = Vec::new();
        let connections = self
            .connections
            .into_iter()
            .zip(self.fds)
            .zip(self.positions);
        for (&to, ((connection, fd), position)) in placement.iter().zip(connections) {
            let part = match parts.iter().position(|(id, _)| *id == to) {
                Some(found) => &mut parts[found].1,
                None => {
                    parts.push((
                        to,
                        Handed {
                            from: self.from,
                            batch: self.batch,
                            connections: Vec::new(),
                            fds: Vec::new(),
                            positions: Vec::new(),
                        },
                    ));
                    &mut parts.last_mut().expect("just pushed").1
                }
            };
            part.connections.push(connection);
            part.fds.push(fd);
            part.positions.push(position);
        }
        parts
    }

    /// The event that says this batch, or this part of one, was taken by
    /// the worker it was given to, or came back.
    pub fn settled(&self, taken: bool) -> WorkerEvent {
        WorkerEvent::Settled {
            from: self.from,
            batch: self.batch,
            positions: self.positions.clone(),
            taken,
        }
    }
}

/// What the supervisor asks of a worker.
#[derive(Debug)]
enum Order {
    Drain {
        timeout: Duration,
        grace: Option<Duration>,
        handover: bool,
    },
    /// Serve these connections handed over by another worker.
    Adopt(Handed),
    /// Tell the worker which of the batch it handed over were taken.
    Settle {
        batch: u64,
        settlement: Settlement,
    },
    /// End the grace of the drain in progress at once.
    Hurry,
    /// Probe the held worker once it is ready.
    Probe(HealthCheck),
    /// Go quiet up to this step before the master execs.
    Quiet(Quiet),
    /// The exec failed: read and pass connections on again.
    Speak,
    Kill,
}

/// The supervisor's handle on a running worker process.
#[derive(Debug)]
pub struct WorkerHandle {
    pub id: WorkerId,
    pub pid: u32,
    orders: mpsc::UnboundedSender<Order>,
    /// Copies of the descriptors its watcher uses, for `baton upgrade` to
    /// hand over to the next image of the master.
    pub fds: WorkerFds,
    /// A built-in worker that accepts nothing until its probes pass: it is
    /// probed over its handoff socket (see [`WorkerHandle::probe`]).
    pub held: bool,
}

/// The master's descriptors for one worker: its handoff socket, and a
/// COMMAND worker's notify socket (with its path) and output pipes.
#[derive(Debug)]
pub struct WorkerFds {
    pub channel: OwnedFd,
    pub notify: Option<(OwnedFd, PathBuf)>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl WorkerHandle {
    /// Tells the worker to drain within `timeout`, keeping idle keep-alive
    /// connections for `grace` (built-in workers); it is killed after that.
    /// With `handover`, a built-in or native worker hands its idle
    /// connections over ([`WorkerEvent::Handover`]) rather than closing them.
    pub fn drain(&self, timeout: Duration, grace: Option<Duration>, handover: bool) {
        let _ = self.orders.send(Order::Drain {
            timeout,
            grace,
            handover,
        });
    }

    /// Gives the worker connections another worker handed over; if it
    /// cannot take them, the batch comes back as not taken.
    pub fn adopt(&self, handed: Handed) -> Result<(), Handed> {
        self.orders
            .send(Order::Adopt(handed))
            .map_err(|e| match e.0 {
                Order::Adopt(handed) => handed,
                _ => unreachable!("the order sent"),
            })
    }

    /// Tells the worker which of the batch it handed over were taken.
    pub fn settle(&self, batch: u64, settlement: Settlement) {
        let _ = self.orders.send(Order::Settle { batch, settlement });
    }

    /// Tells a draining built-in worker to end its grace at once: its idle
    /// connections close, its requests in flight keep the drain deadline.
    pub fn hurry(&self) {
        let _ = self.orders.send(Order::Hurry);
    }

    /// Probes a worker that holds its accepts, once it is ready: `check`'s
    /// requests go to it over connections handed over its handoff socket;
    /// if they pass, it is told to accept. The outcome comes back as
    /// [`WorkerEvent::Probed`].
    pub fn probe(&self, check: HealthCheck) {
        let _ = self.orders.send(Order::Probe(check));
    }

    /// Starts `step` of going quiet (see [`Quiet`]); the watcher answers
    /// [`WorkerEvent::Quiet`] once it is reached. False if the watcher is
    /// gone.
    pub fn quiet(&self, step: Quiet) -> bool {
        self.orders.send(Order::Quiet(step)).is_ok()
    }

    /// After a failed exec: the watcher reads and passes connections on
    /// again.
    pub fn speak(&self) {
        let _ = self.orders.send(Order::Speak);
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
    /// A built-in worker's options, for its hello.
    pub http: Option<&'a crate::http_options::HttpArgs>,
    /// A native worker's client limits, for its hello.
    pub limits: Option<crate::protocol::ClientLimits>,
    /// A native worker's threads per process, for its hello.
    pub threads: Option<u16>,
    /// The worker accepts nothing until its probes pass.
    pub hold: bool,
    /// The uid and gid the worker runs as, if not the master's.
    pub identity: Option<(u32, u32)>,
    /// The accept-balance table, sent after the listeners.
    pub balance: Option<BorrowedFd<'a>>,
    /// Where a COMMAND worker's notify socket goes (the master has one
    /// whenever its workers are COMMAND workers).
    pub notify_dir: Option<&'a Path>,
    /// What the worker's watcher is given; `foreign` is set for a COMMAND
    /// worker.
    pub watch: WatchContext<'a>,
}

/// How often a worker's process group is looked at while what it left
/// behind stops.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How long a worker whose readiness pipe ended may take to exit before
/// the closed pipe is what fails its start.
const READY_PIPE_CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How often a `--ready listening` worker is looked at: often while most
/// programs get ready, then less, so that a slow start on a busy host does
/// not also cost the master a probe every few milliseconds.
const LISTENING_PROBE: Duration = Duration::from_millis(5);
const LISTENING_PROBE_LATER: Duration = Duration::from_millis(25);
const LISTENING_PROBE_FAST_FOR: Duration = Duration::from_secs(1);

/// A COMMAND worker's own NOTIFY_SOCKET, removed with the worker.
struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl NotifySocket {
    /// The socket a previous image of the master bound at `path`.
    fn adopt(fd: OwnedFd, path: PathBuf) -> std::io::Result<Self> {
        let socket = UnixDatagram::from(fd);
        socket.set_nonblocking(true)?;
        Ok(NotifySocket {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            path,
        })
    }

    fn bind(path: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        // The kernel attaches each sender's pid, checked on receipt.
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)?;
        socket.set_nonblocking(true)?;
        Ok(NotifySocket {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            path,
        })
    }

    /// The next datagram and its sender's pid.
    async fn recv(&self) -> std::io::Result<(String, Option<u32>)> {
        let mut buf = vec![0u8; 4096];
        let (len, pid) = self
            .socket
            .async_io(Interest::READABLE, || {
                fd::recv_with_pid(self.socket.as_fd(), &mut buf)
            })
            .await?;
        Ok((String::from_utf8_lossy(&buf[..len]).into_owned(), pid))
    }
}

/// What the watcher of a COMMAND worker needs.
struct Foreign {
    ready: ReadyMode,
    drain_signal: nix::sys::signal::Signal,
    /// `--watchdog`: the longest it may go without sending WATCHDOG=1 once
    /// ready.
    watchdog: Option<Duration>,
    notify: NotifySocket,
    listeners: Vec<procfs::ListenerId>,
}

/// Starts a worker process and the task that watches it.
pub fn spawn(
    launch: Launch<'_>,
    events: mpsc::UnboundedSender<WorkerEvent>,
) -> Result<WorkerHandle, SpawnError> {
    let (master_end, worker_end) = fd::seqpacket_pair().map_err(SpawnError::Socketpair)?;
    let master_end = UnixDatagram::from(master_end);
    // The hello waits in the socket until the worker reads it: no round trip.
    let listeners = launch.watch.listeners;
    let ready_fd = match launch.watch.foreign.map(|f| f.ready) {
        Some(ReadyMode::Fd(at)) => Some(at),
        _ => None,
    };
    let ready_pipe = ready_fd
        .map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))
        .transpose()
        .map_err(|e| SpawnError::Socketpair(e.into()))?;
    let hello = ToWorker::Hello {
        worker_id: launch.id,
        slot: launch.slot,
        generation: launch.generation,
        listeners: listeners.names(),
        balance: launch.balance.is_some(),
        http: launch
            .http
            .map(|args| serde_json::to_value(args).expect("the options always serialize")),
        limits: launch.limits,
        threads: launch.threads,
        hold: launch.hold,
        ready_fd,
    };
    let mut fds = listeners.fds();
    fds.extend(launch.balance);
    fds.extend(ready_pipe.as_ref().map(|(_, write)| write.as_fd()));
    protocol::send_now(&master_end, &hello, &fds).map_err(SpawnError::Hello)?;
    drop(fds);
    // Only the worker holds the write end now: its end of file means the
    // worker closed it (or exited).
    let ready_pipe = ready_pipe.map(|(read, _)| read);

    let (mut cmd, notify) = command(&launch)?;
    fd::prepare_child(&mut cmd, worker_end.as_fd(), launch.identity);
    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        program: launch.program.to_owned(),
        source,
    })?;
    drop(worker_end);
    let pid = child.id();
    let process = match Process::watch(pid) {
        Ok(process) => process,
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::Watch(source));
        }
    };
    let watched = Watched {
        id: launch.id,
        slot: launch.slot,
        generation: launch.generation,
        process,
        channel: master_end.into(),
        notify,
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        stage: Stage::Starting,
        ready_pipe,
    };
    if let Some(keeper) = launch.watch.keeper {
        // The worker leads its own process group (`process_group(0)`).
        keeper.watch(pid);
    }
    let mut handle = watch(watched, &launch.watch, events).map_err(SpawnError::Socketpair)?;
    handle.held = launch.hold;
    Ok(handle)
}

/// The worker's command line and environment, and a COMMAND worker's
/// notify socket.
fn command(
    launch: &Launch<'_>,
) -> Result<(std::process::Command, Option<NotifySocket>), SpawnError> {
    let mut cmd = std::process::Command::new(launch.program);
    // Only the master speaks to systemd and reads its sockets.
    crate::systemd::scrub_env(&mut cmd)
        .args(launch.args)
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C on the terminal reaches the master
        // only, which then drains the workers instead of losing them.
        .process_group(0);
    if launch.watch.prefix_output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let Some(foreign) = launch.watch.foreign else {
        return Ok((cmd, None));
    };
    let dir = launch.notify_dir.ok_or_else(|| {
        SpawnError::Notify(std::io::Error::other(
            "the master has no private directory for its notify socket",
        ))
    })?;
    let socket = NotifySocket::bind(dir.join(format!("notify-{}.sock", launch.id)))
        .map_err(SpawnError::Notify)?;
    if let Some((uid, gid)) = launch.identity {
        // The worker must be able to send to its socket after it drops
        // privileges.
        std::os::unix::fs::chown(&socket.path, Some(uid), Some(gid)).map_err(SpawnError::Notify)?;
    }
    cmd.env("NOTIFY_SOCKET", &socket.path);
    if let Some(watchdog) = foreign.watchdog {
        // The exec stage adds WATCHDOG_PID, the program's pid.
        cmd.env("WATCHDOG_USEC", watchdog.as_micros().to_string());
    }
    Ok((cmd, Some(socket)))
}

/// A worker the previous image of this master started (`baton upgrade`),
/// with the descriptors it handed over.
pub struct Adopted {
    pub id: WorkerId,
    pub slot: usize,
    pub generation: u64,
    pub pid: u32,
    pub draining: bool,
    pub ready: bool,
    pub fds: WorkerFds,
}

/// Watches a worker the previous image of this master started. It is still
/// this process's child, so its exit is seen and reaped as any other's; a
/// draining one is killed if it is not gone within the drain timeout from
/// now.
pub fn adopt(
    adopted: Adopted,
    context: &WatchContext<'_>,
    events: mpsc::UnboundedSender<WorkerEvent>,
) -> std::io::Result<WorkerHandle> {
    let process = Process::watch(adopted.pid)?;
    let notify = match adopted.fds.notify {
        Some((fd, path)) => Some(NotifySocket::adopt(fd, path)?),
        None => None,
    };
    let now = Instant::now();
    let stage = if adopted.draining {
        Stage::Draining {
            deadline: deadline(now, context.drain_timeout.saturating_add(KILL_MARGIN)),
        }
    } else if adopted.ready {
        Stage::Ready { alive_at: now }
    } else {
        Stage::Starting
    };
    let watched = Watched {
        id: adopted.id,
        slot: adopted.slot,
        generation: adopted.generation,
        process,
        channel: adopted.fds.channel,
        notify,
        stdout: adopted.fds.stdout,
        stderr: adopted.fds.stderr,
        stage,
        // Not handed over: a `--ready fd:N` worker still starting across an
        // upgrade is judged by its ready deadline.
        ready_pipe: None,
    };
    watch(watched, context, events)
}

/// What [`spawn`] and [`adopt`] share: where the worker's watcher learns
/// what kind of worker it watches.
pub struct WatchContext<'a> {
    /// Set for COMMAND workers.
    pub foreign: Option<&'a ForeignWorker>,
    /// `--output prefixed` for a program's worker: its output is read
    /// through pipes and each line prefixed.
    pub prefix_output: bool,
    pub listeners: &'a ListenerSet,
    pub ready_timeout: Duration,
    /// How long processes the worker leaves behind get to finish when it
    /// crashes (see [`Watcher::stop_group`]).
    pub drain_timeout: Duration,
    /// Stops the worker's process group if the master goes away.
    pub keeper: Option<&'a Keeper>,
    /// Set for a COMMAND worker whose connections are rescued.
    pub rescuer: Option<&'a crate::rescue::handle::Rescuer>,
    /// Held by the tasks that forward the worker's output (never sent on):
    /// the master waits for them before it exits, so that a worker's last
    /// words (why it failed to start) are printed.
    pub output: &'a mpsc::Sender<()>,
    /// `--health` with `--health-interval`: every ready worker is probed
    /// this often.
    pub health: Option<&'a HealthCheck>,
}

/// One worker process and the master's descriptors for it.
struct Watched {
    /// `--ready fd:N`: the read end of the worker's readiness pipe.
    ready_pipe: Option<OwnedFd>,
    id: WorkerId,
    slot: usize,
    generation: u64,
    process: Process,
    channel: OwnedFd,
    notify: Option<NotifySocket>,
    /// A program's output pipes (read ends), with `--output prefixed`.
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stage: Stage,
}

/// Starts the task that watches `watched`, and returns its handle (with
/// copies of its descriptors, for an upgrade).
fn watch(
    watched: Watched,
    context: &WatchContext<'_>,
    events: mpsc::UnboundedSender<WorkerEvent>,
) -> std::io::Result<WorkerHandle> {
    let pid = watched.process.pid();
    let copy = |pipe: &Option<OwnedFd>| pipe.as_ref().map(OwnedFd::try_clone).transpose();
    let fds = WorkerFds {
        channel: watched.channel.try_clone()?,
        notify: match &watched.notify {
            Some(notify) => Some((
                notify.socket.as_fd().try_clone_to_owned()?,
                notify.path.clone(),
            )),
            None => None,
        },
        stdout: copy(&watched.stdout)?,
        stderr: copy(&watched.stderr)?,
    };
    let prefix = format!("[slot {} pid {pid}]", watched.slot);
    for (pipe, to) in [
        (watched.stdout, Output::Stdout),
        (watched.stderr, Output::Stderr),
    ] {
        if let Some(pipe) = pipe {
            forward_output(pipe, prefix.clone(), to, context.output);
        }
    }
    let foreign = context
        .foreign
        .zip(watched.notify)
        .map(|(foreign, notify)| Foreign {
            ready: foreign.ready,
            drain_signal: foreign.drain_signal,
            watchdog: foreign.watchdog,
            notify,
            listeners: context.listeners.ids(),
        });
    let channel = Channel::new(std::os::unix::net::UnixDatagram::from(watched.channel))?;
    let (orders_tx, orders_rx) = mpsc::unbounded_channel();
    let span = tracing::info_span!(
        "worker",
        slot = watched.slot,
        generation = watched.generation,
        pid
    );
    let liveness = match &foreign {
        Some(foreign) => foreign.watchdog,
        None => Some(BUILTIN_LIVENESS),
    };
    let now = Instant::now();
    let watcher = Watcher {
        id: watched.id,
        pid,
        foreign,
        started: now,
        process: watched.process,
        channel,
        orders: orders_rx,
        events,
        ready_deadline: deadline(now, context.ready_timeout),
        ready_timeout: context.ready_timeout,
        drain_timeout: context.drain_timeout,
        keeper: context.keeper.cloned(),
        rescue: context
            .rescuer
            .map(|rescuer| (rescuer.clone(), context.listeners.ids())),
        stage: watched.stage,
        killed: false,
        channel_open: true,
        orders_open: true,
        probes: 0,
        liveness,
        health: HealthStage::None,
        ready_pipe_closed: None,
        handover: false,
        quiet: None,
        adopting: Default::default(),
        next_adopt: 1,
        ready_pipe: watched
            .ready_pipe
            .map(tokio::net::unix::pipe::Receiver::from_owned_fd)
            .transpose()?,
        watch_health: context.health.map(|check| HealthWatch {
            check: check.clone(),
            listeners: context.listeners.ids(),
            failed: 0,
            next: None,
            running: None,
        }),
    };
    tokio::spawn(watcher.run().instrument(span));
    Ok(WorkerHandle {
        id: watched.id,
        pid,
        orders: orders_tx,
        fds,
        held: false,
    })
}

/// Which of the master's outputs a worker's output goes to.
#[derive(Debug, Clone, Copy)]
enum Output {
    Stdout,
    Stderr,
}

/// Starts copying a worker's output (the read end of its pipe) to the
/// master's, each line behind `prefix`.
fn forward_output(pipe: OwnedFd, prefix: String, to: Output, alive: &mpsc::Sender<()>) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(pipe) => pipe,
        Err(e) => {
            warn!(cause = %e, "cannot read the worker's output");
            return;
        }
    };
    let alive = alive.clone();
    match to {
        Output::Stdout => tokio::spawn(forward_lines(pipe, prefix, tokio::io::stdout(), alive)),
        Output::Stderr => tokio::spawn(forward_lines(pipe, prefix, tokio::io::stderr(), alive)),
    };
}

/// Copies a worker's output to the master's, a line at a time, each behind
/// `prefix`. Whole lines are written at once, so workers' lines never mix.
async fn forward_lines(
    from: impl tokio::io::AsyncRead + Unpin,
    prefix: String,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    _alive: mpsc::Sender<()>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut lines = tokio::io::BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let text = format!("{prefix} {line}\n");
        if to.write_all(text.as_bytes()).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
}

/// Where a watched worker is in its life.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Started, not ready yet: the ready deadline runs.
    Starting,
    /// Ready; `alive_at` is when it last showed it is alive (a report from
    /// a built-in worker, WATCHDOG=1 from a COMMAND).
    Ready { alive_at: Instant },
    /// Told to drain; killed at `deadline`.
    Draining { deadline: Instant },
}

/// What the watcher waits for besides the worker's own words: the timers
/// its stage runs.
struct Timers {
    /// The worker fails if it is not ready by then.
    ready: Option<Instant>,
    /// A `--ready delay:DUR` worker is ready then.
    delay: Option<Instant>,
    /// Look at /proc whether the worker's tree listens.
    probe: bool,
    /// A ready worker silent until then is stuck.
    silent: Option<Instant>,
    /// A draining worker is killed then.
    drain: Option<Instant>,
    /// The next periodic health probe of a ready worker starts then.
    health: Option<Instant>,
    /// A worker that closed its readiness pipe fails then.
    pipe_closed: Option<Instant>,
}

/// Watches one worker until it exits.
struct Watcher {
    id: WorkerId,
    pid: u32,
    /// Set for a COMMAND worker, which says nothing on the handoff socket
    /// after it execs: readiness comes from its notify socket, from /proc,
    /// or from time, and drain is a signal.
    foreign: Option<Foreign>,
    started: Instant,
    process: Process,
    channel: Channel,
    orders: mpsc::UnboundedReceiver<Order>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    ready_deadline: Instant,
    ready_timeout: Duration,
    drain_timeout: Duration,
    keeper: Option<Keeper>,
    /// A COMMAND worker's connections go to the rescuer before its drain
    /// signal; the listeners tell which connections are clients'.
    rescue: Option<(
        crate::rescue::handle::Rescuer,
        Vec<crate::procfs::ListenerId>,
    )>,
    stage: Stage,
    /// Killed: no timer matters any more, only its exit.
    killed: bool,
    /// The worker's end of the handoff socket is open (a COMMAND worker
    /// closes it when it execs its program).
    channel_open: bool,
    /// The supervisor still holds the worker's handle.
    orders_open: bool,
    /// Readiness probes so far.
    probes: u32,
    /// How long a ready worker may stay silent, if it is watched.
    liveness: Option<Duration>,
    /// The probes of a worker that holds its accepts.
    health: HealthStage,
    /// The periodic probes of a ready worker (`--health-interval`).
    watch_health: Option<HealthWatch>,
    /// `--ready fd:N`: read until the worker writes a newline.
    ready_pipe: Option<tokio::net::unix::pipe::Receiver>,
    /// `--ready fd:N`: the pipe ended without a newline; the start fails
    /// then, unless the worker exits first (a process that exits closes
    /// the pipe too, and its exit says more).
    ready_pipe_closed: Option<Instant>,
    /// Told to hand its idle connections over while it drains.
    handover: bool,
    /// How quiet the master's departure asked this watcher to be.
    quiet: Option<QuietStage>,
    /// Connections given to this worker that it has not said it took, by
    /// the batch number it was given them under.
    adopting: std::collections::HashMap<u64, Handed>,
    next_adopt: u64,
}

/// How far a watcher went quiet, and whether the supervisor heard it.
#[derive(Debug, Clone, Copy)]
struct QuietStage {
    step: Quiet,
    told: bool,
}

/// A ready worker's periodic health probes.
struct HealthWatch {
    check: HealthCheck,
    listeners: Vec<procfs::ListenerId>,
    /// Probes failed in a row.
    failed: u32,
    /// When the next probe starts (from the time the worker is ready).
    next: Option<Instant>,
    running: Option<oneshot::Receiver<Result<Healthy, Unhealthy>>>,
}

/// Where the probes of a held worker are.
enum HealthStage {
    None,
    /// To run once the worker is ready.
    Due(HealthCheck),
    /// Running; their outcome comes on this channel.
    Running(oneshot::Receiver<Result<Healthy, Unhealthy>>),
}

impl HealthStage {
    fn running(&mut self) -> Option<&mut oneshot::Receiver<Result<Healthy, Unhealthy>>> {
        match self {
            HealthStage::Running(outcome) => Some(outcome),
            _ => None,
        }
    }
}

impl Watcher {
    async fn run(mut self) {
        loop {
            let timers = self.timers();
            tokio::select! {
                note = recv_notify(self.foreign.as_ref()), if !self.hushed() => self.on_notification(note),
                _ = sleep(self.probe_interval()), if timers.probe => self.probe(),
                _ = at(timers.delay), if timers.delay.is_some() => self.became_ready(),
                status = self.process.wait() => return self.exited(status).await,
                message = self.channel.recv::<ToMaster>(), if self.channel_open && !self.hushed() => {
                    self.on_message(message).await;
                    self.probe_if_ready().await;
                    self.tell_quiet();
                }
                order = self.orders.recv(), if self.orders_open => {
                    self.on_order(order).await;
                    self.tell_quiet();
                }
                outcome = verdict(self.health.running()), if matches!(self.health, HealthStage::Running(_)) => {
                    self.on_probed(outcome).await;
                }
                _ = at(timers.health), if timers.health.is_some() => self.start_health_probe(),
                said = newline(&mut self.ready_pipe), if self.ready_pipe.is_some() => {
                    self.on_ready_pipe(said);
                }
                _ = at(timers.pipe_closed), if timers.pipe_closed.is_some() => {
                    self.ready_pipe_closed = None;
                    let at = match self.foreign.as_ref().map(|f| f.ready) {
                        Some(ReadyMode::Fd(at)) => at,
                        _ => -1,
                    };
                    self.fail(format!(
                        "closed its readiness descriptor {at} without writing a newline (--ready fd:{at})"
                    ));
                }
                outcome = verdict(self.watch_health.as_mut().and_then(|w| w.running.as_mut())),
                    if self.health_probe_running() => {
                    self.on_health_probe(outcome);
                }
                _ = at(timers.ready), if timers.ready.is_some() => self.not_ready_in_time(),
                _ = at(timers.silent), if timers.silent.is_some() => self.stuck(),
                _ = at(timers.drain), if timers.drain.is_some() => {
                    warn!("drain deadline passed; killing the worker");
                    self.kill();
                }
            }
        }
    }

    fn timers(&self) -> Timers {
        let mut timers = Timers {
            ready: None,
            delay: None,
            probe: false,
            silent: None,
            drain: None,
            health: None,
            pipe_closed: None,
        };
        if self.killed {
            return timers;
        }
        match self.stage {
            Stage::Starting => {
                timers.ready = Some(self.ready_deadline);
                timers.pipe_closed = self.ready_pipe_closed;
                match self.foreign.as_ref().map(|f| f.ready) {
                    Some(ReadyMode::Listening | ReadyMode::Auto) => timers.probe = true,
                    Some(ReadyMode::Delay(delay)) => {
                        timers.delay = Some(deadline(self.started, delay));
                    }
                    Some(ReadyMode::Notify | ReadyMode::Fd(_)) | None => {}
                }
            }
            Stage::Ready { alive_at } => {
                timers.silent = self.liveness.map(|limit| deadline(alive_at, limit));
                timers.health = self
                    .watch_health
                    .as_ref()
                    .filter(|watch| watch.running.is_none())
                    .and_then(|watch| watch.next);
            }
            Stage::Draining { deadline } => timers.drain = Some(deadline),
        }
        timers
    }

    /// Often while most programs get ready, then less.
    fn probe_interval(&self) -> Duration {
        if self.started.elapsed() < LISTENING_PROBE_FAST_FOR {
            LISTENING_PROBE
        } else {
            LISTENING_PROBE_LATER
        }
    }

    /// Looks whether the worker's process tree listens on every listener.
    /// The connection tables can be large: whether it has accepted a
    /// connection is read on one probe in twenty.
    fn probe(&mut self) {
        self.probes = self.probes.wrapping_add(1);
        self.look(self.probes % 20 == 0);
    }

    /// Whether the worker's process tree listens on every listener (or,
    /// with `connections`, has accepted a connection): then it is ready.
    fn look(&mut self, connections: bool) {
        let listeners = self.foreign.as_ref().map_or(&[][..], |f| &f.listeners[..]);
        if procfs::tree_serves(self.pid, listeners, connections) {
            self.became_ready();
        }
    }

    /// The worker is ready: the supervisor hears it, and its liveness is
    /// watched from now on.
    fn became_ready(&mut self) {
        if !matches!(self.stage, Stage::Starting) {
            debug!("ready again; ignored");
            return;
        }
        self.stage = Stage::Ready {
            alive_at: Instant::now(),
        };
        if let Some(watch) = &mut self.watch_health {
            watch.next = watch.check.interval.map(|every| Instant::now() + every);
        }
        let _ = self.events.send(WorkerEvent::Ready { id: self.id });
    }

    /// The worker showed it is alive.
    fn alive(&mut self) {
        if let Stage::Ready { alive_at } = &mut self.stage {
            *alive_at = Instant::now();
        }
    }

    fn on_notification(&mut self, note: std::io::Result<(String, Option<u32>)>) {
        let note = self.read_notification(note);
        if note.watchdog {
            self.alive();
        }
        if note.ready {
            self.became_ready();
        }
    }

    /// Whether the watcher reads nothing from its worker (see [`Quiet::Hushed`]).
    fn hushed(&self) -> bool {
        self.quiet.is_some_and(|q| q.step == Quiet::Hushed)
    }

    /// Tells the supervisor the quiet step asked for is reached, once.
    fn tell_quiet(&mut self) {
        let Some(stage) = &mut self.quiet else {
            return;
        };
        if stage.told || (stage.step == Quiet::Settled && !self.adopting.is_empty()) {
            return;
        }
        stage.told = true;
        let _ = self.events.send(WorkerEvent::Quiet {
            id: self.id,
            step: stage.step,
        });
    }

    async fn on_message(
        &mut self,
        message: Result<Option<(ToMaster, Vec<OwnedFd>)>, HandoffError>,
    ) {
        let message = message.and_then(|received| match received {
            Some((message, fds)) if fds.len() != message.descriptors() => {
                Err(crate::error::ProtocolError::DescriptorCount {
                    got: fds.len(),
                    expected: message.descriptors(),
                }
                .into())
            }
            other => Ok(other),
        });
        match message {
            Ok(Some((ToMaster::Ready, _))) => self.became_ready(),
            Ok(Some((ToMaster::Stats(stats), _))) => {
                self.alive();
                let _ = self.events.send(WorkerEvent::Stats { id: self.id, stats });
            }
            Ok(Some((ToMaster::Handover { batch, connections }, fds))) => {
                let handed = Handed::whole(self.id, batch, connections, fds);
                if self.quiet.is_none() {
                    let _ = self.events.send(WorkerEvent::Handover(handed));
                    return;
                }
                // The master is leaving: the worker serves them on, told
                // here, since an order from the supervisor might come after
                // the exec.
                if let Err(e) = self.channel.send(&ToWorker::Returned { batch }, &[]).await {
                    debug!(cause = %e, "cannot return a handed-over batch");
                }
                let _ = self.events.send(WorkerEvent::FellBack {
                    count: handed.fds.len(),
                });
            }
            Ok(Some((ToMaster::Adopted { batch }, _))) => match self.adopting.remove(&batch) {
                Some(handed) => {
                    let _ = self.events.send(handed.settled(true));
                }
                None => debug!(batch, "adopted a batch not given; ignored"),
            },
            // The worker closed its end: it is exiting, or (a COMMAND
            // worker) it has exec'ed its program.
            Ok(None) => self.channel_open = false,
            Err(e) => {
                self.channel_open = false;
                self.fail(format!("broke the handoff protocol: {e}"));
            }
        }
    }

    async fn on_order(&mut self, order: Option<Order>) {
        match order {
            Some(Order::Drain {
                timeout,
                grace,
                handover,
            }) => {
                self.handover = handover && self.foreign.is_none();
                self.stage = Stage::Draining {
                    deadline: deadline(Instant::now(), timeout.saturating_add(KILL_MARGIN)),
                };
                if let Some(foreign) = &self.foreign {
                    // Watched until after the kill at the deadline, so that
                    // what the kill lets go is rescued, not dropped.
                    let watch_for = timeout.saturating_add(KILL_MARGIN * 2);
                    let copied = self.copy_for_rescue(watch_for).await;
                    let pid = nix::unistd::Pid::from_raw(self.pid as i32);
                    let _ = nix::sys::signal::kill(pid, foreign.drain_signal);
                    if let (Some(copied), Some((rescuer, listeners))) = (copied, &self.rescue) {
                        // Connections accepted while the first copies were
                        // taken, and until the program stops accepting.
                        rescuer.follow(self.pid, listeners.clone(), copied, watch_for);
                    }
                } else if self.channel_open {
                    self.send_drain(timeout, grace).await;
                }
            }
            Some(Order::Hurry) => {
                let Stage::Draining { deadline } = self.stage else {
                    return;
                };
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(KILL_MARGIN);
                if self.foreign.is_none() && self.channel_open {
                    self.send_drain(left, Some(Duration::ZERO)).await;
                }
            }
            Some(Order::Probe(check)) => {
                self.health = HealthStage::Due(check);
                self.probe_if_ready().await;
            }
            Some(Order::Adopt(handed)) => self.adopt(handed).await,
            Some(Order::Quiet(step)) => self.quiet = Some(QuietStage { step, told: false }),
            Some(Order::Speak) => self.quiet = None,
            Some(Order::Settle { batch, settlement }) => {
                let answer = settlement.message(batch);
                if self.channel_open {
                    if let Err(e) = self.channel.send(&answer, &[]).await {
                        debug!(cause = %e, "cannot settle a handed-over batch");
                    }
                }
            }
            Some(Order::Kill) | None => {
                self.orders_open = order.is_some();
                self.kill();
            }
        }
    }

    /// Starts the probes that are due, once the worker is ready: each is a
    /// stream socketpair whose one end the worker serves as a connection.
    async fn probe_if_ready(&mut self) {
        if !matches!(self.stage, Stage::Ready { .. }) || !matches!(self.health, HealthStage::Due(_))
        {
            return;
        }
        let HealthStage::Due(check) = std::mem::replace(&mut self.health, HealthStage::None) else {
            return;
        };
        let mut connections = Vec::new();
        for _ in 0..check.count {
            match self.hand_probe_connection().await {
                Ok(mine) => connections.push(mine),
                Err(e) => {
                    let reason = format!("cannot hand the worker a probe connection: {e}");
                    let _ = self.events.send(WorkerEvent::Probed {
                        id: self.id,
                        outcome: Err(Unhealthy::said(reason)),
                    });
                    return;
                }
            }
        }
        let (answer, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let _ = answer.send(health::probe_held(&check, connections).await);
        });
        self.health = HealthStage::Running(outcome);
    }

    /// The readiness pipe (`--ready fd:N`) gave a newline, or ended.
    fn on_ready_pipe(&mut self, newline: std::io::Result<bool>) {
        self.ready_pipe = None;
        match newline {
            Ok(true) => self.became_ready(),
            _ if !matches!(self.stage, Stage::Starting) => {}
            Ok(false) => {
                self.ready_pipe_closed = Some(Instant::now() + READY_PIPE_CLOSE_GRACE);
            }
            Err(e) => self.fail(format!("cannot read its readiness descriptor: {e}")),
        }
    }

    fn health_probe_running(&self) -> bool {
        self.watch_health
            .as_ref()
            .is_some_and(|watch| watch.running.is_some())
    }

    /// Starts a periodic probe of the ready worker: one request, through
    /// the shared listener, at once (a worker that accepts nothing, stuck
    /// in a loop, is not reached within --health-timeout, and fails).
    fn start_health_probe(&mut self) {
        let pid = self.pid;
        let Some(watch) = &mut self.watch_health else {
            return;
        };
        // Each probe is over before the next is due, so that a stuck
        // worker is found within --health-interval × --health-fall.
        let interval = watch.check.interval.unwrap_or(watch.check.timeout);
        let check = HealthCheck {
            count: 1,
            timeout: watch.check.timeout.min(interval),
            ..watch.check.clone()
        };
        watch.next = Some(Instant::now() + interval);
        let target = health::target(pid, &watch.listeners);
        let (answer, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = match target {
                Ok(target) => health::probe(&check, target, None).await,
                Err(unhealthy) => Err(unhealthy),
            };
            let _ = answer.send(outcome);
        });
        watch.running = Some(outcome);
    }

    /// A periodic probe is done: --health-fall failures in a row get the
    /// worker replaced (a release on probation is rolled back, as for a
    /// crash).
    fn on_health_probe(&mut self, outcome: Result<Healthy, Unhealthy>) {
        let Some(watch) = &mut self.watch_health else {
            return;
        };
        watch.running = None;
        match outcome {
            Ok(_) => watch.failed = 0,
            Err(unhealthy) => {
                watch.failed += 1;
                let (failed, fall) = (watch.failed, watch.check.fall);
                warn!(
                    status = unhealthy.status,
                    reason = %unhealthy.reason,
                    body = %unhealthy.body,
                    failed,
                    fall,
                    "periodic health probe failed"
                );
                if failed >= fall {
                    let answered = match unhealthy.status {
                        Some(status) => format!(" (it answered {status}: {:?})", unhealthy.body),
                        None => String::new(),
                    };
                    self.fail(format!(
                        "failed {failed} health probes in a row, the last: {}{answered}; replacing it",
                        unhealthy.reason
                    ));
                }
            }
        }
    }

    /// Hands the worker one end of a new connection to serve as a probe;
    /// returns the other.
    async fn hand_probe_connection(&self) -> Result<std::os::unix::net::UnixStream, String> {
        let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        self.channel
            .send(&ToWorker::Probe, &[theirs.as_fd()])
            .await
            .map_err(|e| e.to_string())?;
        Ok(mine)
    }

    /// The held worker's probes are done: it is told to accept if they
    /// passed, and the supervisor hears how they went.
    async fn on_probed(&mut self, outcome: Result<Healthy, Unhealthy>) {
        self.health = HealthStage::None;
        if outcome.is_ok() {
            if let Err(e) = self.channel.send(&ToWorker::Accept, &[]).await {
                self.fail(format!("cannot tell the worker to accept: {e}"));
                return;
            }
        }
        let _ = self.events.send(WorkerEvent::Probed {
            id: self.id,
            outcome,
        });
    }

    fn not_ready_in_time(&mut self) {
        let probing = self.timers().probe;
        if probing {
            // One last look, connections included: a worker that got ready
            // between two probes is ready, not late.
            self.look(true);
            if !matches!(self.stage, Stage::Starting) {
                return;
            }
        }
        let mut reason = format!(
            "not ready within {}",
            humantime::format_duration(self.ready_timeout)
        );
        if let Some(foreign) = self.foreign.as_ref().filter(|_| probing) {
            let tree = procfs::describe_tree(self.pid, &foreign.listeners);
            reason += &format!(" ({tree}; probed {} times)", self.probes);
        }
        self.fail(reason);
    }

    fn stuck(&mut self) {
        let Stage::Ready { alive_at } = self.stage else {
            return;
        };
        let silent = Duration::from_millis(alive_at.elapsed().as_millis() as u64);
        let silent = humantime::format_duration(silent);
        let sign = if self.foreign.is_some() {
            "WATCHDOG=1"
        } else {
            "report"
        };
        self.fail(format!("stuck: no {sign} for {silent}; replacing it"));
    }

    /// The worker exited: the supervisor hears it, and what it left behind
    /// is stopped.
    async fn exited(&mut self, status: std::io::Result<ExitStatus>) {
        // Connections it never said it took go back to the worker that
        // still holds them: those passed to it, and those still waiting in
        // its orders (dropped with them, they would be nobody's, and their
        // worker would hold them unserved to its drain deadline). Closed
        // first, so that an order sent from now on comes back to the
        // sender.
        self.orders.close();
        while let Ok(order) = self.orders.try_recv() {
            if let Order::Adopt(handed) = order {
                let _ = self.events.send(handed.settled(false));
            }
        }
        for (_, handed) in self.adopting.drain() {
            let _ = self.events.send(handed.settled(false));
        }
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                // Cannot happen for a child we spawned; report it as a crash.
                warn!(cause = %e, "cannot wait for worker");
                std::os::unix::process::ExitStatusExt::from_raw(0xff00)
            }
        };
        let exited = WorkerEvent::Exited {
            id: self.id,
            status,
        };
        // A drained worker is gone when its whole tree is; a crashed one is
        // replaced at once, and what it left behind is stopped meanwhile.
        if let Stage::Draining { deadline } = self.stage {
            self.stop_group(Some(deadline)).await;
            let _ = self.events.send(exited);
        } else {
            let _ = self.events.send(exited);
            self.stop_group(None).await;
        }
    }

    /// Reads one notify datagram: whether it says the worker is ready (in
    /// the ready modes that listen for it) and whether it is a watchdog
    /// beat. Only the worker itself (or a process it started) may speak for
    /// it.
    fn read_notification(&self, note: std::io::Result<(String, Option<u32>)>) -> Notification {
        let (text, sender) = match note {
            Ok(note) => note,
            Err(e) => {
                debug!(cause = %e, "notify socket");
                return Notification::default();
            }
        };
        if !sender.is_some_and(|pid| procfs::is_self_or_descendant(pid, self.pid)) {
            warn!(sender = ?sender, "ignored a notification from another process");
            return Notification::default();
        }
        for line in text.lines() {
            if let Some(status) = line.strip_prefix("STATUS=") {
                info!(%status, "worker status");
            }
        }
        let wants_notify = self
            .foreign
            .as_ref()
            .is_some_and(|f| matches!(f.ready, ReadyMode::Notify | ReadyMode::Auto));
        Notification {
            ready: wants_notify && text.lines().any(|l| l == "READY=1"),
            watchdog: text.lines().any(|l| l == "WATCHDOG=1"),
        }
    }

    /// Stops what is left of the worker's process group after the worker
    /// itself exited (children of a forking server or a shell wrapper):
    /// the drain signal (SIGTERM for built-in workers), then SIGKILL at
    /// `deadline` (the drain's, or the drain timeout from now); SIGKILL at
    /// once if the worker was killed.
    async fn stop_group(&self, deadline_at: Option<Instant>) {
        use nix::sys::signal::{killpg, Signal};
        let pgid = nix::unistd::Pid::from_raw(self.pid as i32);
        // Signal 0 finds whether anything is left in the group for the
        // price of one call; the scan of /proc that tells live processes
        // from zombies runs only when something is.
        let left = match killpg(pgid, None) {
            Err(nix::errno::Errno::ESRCH) => Vec::new(),
            _ => procfs::group_members(self.pid),
        };
        if !left.is_empty() {
            let signal = match &self.foreign {
                _ if self.killed => Signal::SIGKILL,
                Some(foreign) => foreign.drain_signal,
                None => Signal::SIGTERM,
            };
            warn!(left = left.len(), %signal, "the worker's processes outlived it; stopping them");
            let _ = killpg(pgid, signal);
            let until = deadline_at.unwrap_or_else(|| deadline(Instant::now(), self.drain_timeout));
            while !procfs::group_members(self.pid).is_empty() {
                if Instant::now() >= until {
                    warn!(
                        "processes the worker left are still alive at the deadline; killing them"
                    );
                    let _ = killpg(pgid, Signal::SIGKILL);
                    break;
                }
                sleep(GROUP_POLL).await;
            }
        }
        if let Some(keeper) = &self.keeper {
            keeper.forget(self.pid);
        }
    }

    /// Tells a built-in worker to drain within `timeout` (again, to hurry
    /// it); a worker that cannot be told is failed.
    /// Passes connections another worker handed over to this one; those
    /// it cannot pass go back.
    async fn adopt(&mut self, handed: Handed) {
        let serving = matches!(self.stage, Stage::Ready { .. }) && !self.killed;
        if !serving || !self.channel_open || self.foreign.is_some() {
            let _ = self.events.send(handed.settled(false));
            return;
        }
        let batch = self.next_adopt;
        self.next_adopt += 1;
        let message = ToWorker::Adopt {
            batch,
            connections: handed.connections.clone(),
        };
        let fds: Vec<BorrowedFd<'_>> = handed.fds.iter().map(|fd| fd.as_fd()).collect();
        // A SEQPACKET message is queued whole or not at all: one that times
        // out was not sent.
        let sent = tokio::time::timeout(ADOPT_SEND_LIMIT, self.channel.send(&message, &fds)).await;
        drop(fds);
        match sent {
            Ok(Ok(())) => {
                self.adopting.insert(batch, handed);
            }
            Ok(Err(e)) => {
                debug!(cause = %e, "cannot pass connections on");
                let _ = self.events.send(handed.settled(false));
            }
            Err(_) => {
                debug!("the worker takes no connections: its handoff socket is full");
                let _ = self.events.send(handed.settled(false));
            }
        }
    }

    async fn send_drain(&mut self, timeout: Duration, grace: Option<Duration>) {
        let drain = ToWorker::drain(timeout, grace, self.handover);
        if let Err(e) = self.channel.send(&drain, &[]).await {
            self.fail(format!("cannot send drain: {e}"));
        }
    }

    fn fail(&mut self, reason: String) {
        let _ = self.events.send(WorkerEvent::Failed {
            id: self.id,
            reason,
        });
        self.kill();
    }

    /// Before a COMMAND worker's drain signal: copies of its client
    /// connections go to the rescuer, so that those the program closes
    /// while their clients send are not reset (see [`crate::rescue`]).
    /// Returns the sockets copied, or `None` if nothing can be copied.
    async fn copy_for_rescue(&self, watch_for: Duration) -> Option<HashSet<u64>> {
        let (rescuer, listeners) = self.rescue.as_ref()?;
        let mut copied = HashSet::new();
        let copy = rescuer.copy(self.pid, listeners, &mut copied, watch_for, true);
        match copy.await {
            Ok(_) => Some(copied),
            Err(e) => {
                crate::event::Lifecycle::RescueUnavailable {
                    pid: self.pid,
                    cause: e.to_string(),
                }
                .log();
                None
            }
        }
    }

    fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            self.process.kill();
        }
    }
}

/// The outcome of running probes (a held worker's, or a ready worker's
/// periodic one); never, if none runs.
async fn verdict(
    outcome: Option<&mut oneshot::Receiver<Result<Healthy, Unhealthy>>>,
) -> Result<Healthy, Unhealthy> {
    match outcome {
        Some(outcome) => outcome
            .await
            .unwrap_or_else(|_| Err(Unhealthy::said("the probe stopped without a verdict"))),
        None => std::future::pending().await,
    }
}

/// Reads `pipe` until a newline (`true`) or its end (`false`).
async fn newline(pipe: &mut Option<tokio::net::unix::pipe::Receiver>) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let Some(pipe) = pipe else {
        return std::future::pending().await;
    };
    let mut chunk = [0u8; 512];
    loop {
        match pipe.read(&mut chunk).await? {
            0 => return Ok(false),
            n if chunk[..n].contains(&b'\n') => return Ok(true),
            _ => {}
        }
    }
}

/// What one notify datagram said.
#[derive(Debug, Default)]
struct Notification {
    ready: bool,
    watchdog: bool,
}

/// Resolves at `at` (never when `None`; guard the branch instead).
async fn at(at: Option<Instant>) {
    sleep_until(at.unwrap_or_else(Instant::now)).await;
}

async fn recv_notify(foreign: Option<&Foreign>) -> std::io::Result<(String, Option<u32>)> {
    match foreign {
        Some(foreign) => foreign.notify.recv().await,
        None => std::future::pending().await,
    }
}
