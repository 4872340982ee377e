//! The worker's side of the handoff: receive the listening sockets the master
//! sent, check them, report ready, and learn when to drain. This is also the
//! API for Rust programs that want to be native baton workers.

use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use socket2::Domain;
use tracing::warn;

pub use crate::accept::Acceptor;
use baton_protocol::balance::AcceptShare;
use baton_protocol::fd;
pub use baton_protocol::Settlement;
use baton_protocol::{self as protocol, Channel, Hello, ToMaster, ToWorker, WorkerStats};

use crate::connection::Resume;
use crate::error::{Error as WorkerError, HandoffError, ProtocolError};

/// A listening socket received from the master: non-blocking, listening,
/// shared with the master and the other workers. Accept on it with
/// [`super::accept::Acceptor`].
#[derive(Debug)]
pub enum ReceivedListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening socket received from the master, with its name.
#[derive(Debug)]
pub struct NamedListener {
    pub name: String,
    pub listener: ReceivedListener,
}

/// What the master asks of a running worker.
#[derive(Debug)]
pub enum Instruction {
    /// Stop accepting, finish what is in flight within `timeout`. A second
    /// drain while draining hurries it: idle connections close now, and
    /// what is in flight has `timeout` left.
    Drain {
        timeout: Duration,
        /// How long idle keep-alive connections stay open, if the master
        /// says.
        grace: Option<Duration>,
        /// Hand idle HTTP/1 connections to the master instead of closing
        /// them.
        handover: bool,
    },
    /// Serve these connections, handed over by a draining worker, each
    /// idle for so long; then say [`Handoff::adopted`] with `batch`.
    Adopt {
        batch: u64,
        connections: Vec<(OwnedFd, Resume)>,
    },
    /// The connections this worker handed over in `batch` were taken by
    /// other workers, all or some of them; those that came back are
    /// served on here.
    Settle { batch: u64, settlement: Settlement },
    /// Serve this connection as if it had just been accepted: a health
    /// probe of a worker that holds its accepts.
    Probe(OwnedFd),
    /// Start accepting: the probes passed.
    Accept,
    /// The master is gone (its end of the handoff socket closed).
    MasterGone,
}

/// A worker's connection to its master.
#[derive(Debug)]
pub struct Handoff {
    channel: Channel,
    /// Accept nothing until the master says [`Instruction::Accept`]; serve
    /// its [`Instruction::Probe`] connections meanwhile.
    pub hold: bool,
    pub worker_id: u64,
    /// The slot it serves (the master's name for it in its log).
    pub slot: usize,
    pub generation: u64,
    /// This worker's place in the accept-balance table, for
    /// [`super::accept::Acceptor`]; `None` if the master sent none or it
    /// could not be used (the worker then accepts unpaced).
    pub balance: Option<Arc<AcceptShare>>,
}

/// The master's hello, read before the worker builds its runtime: it
/// carries the options the runtime is built with. The master queues it
/// before the worker starts, so reading it does not wait.
#[derive(Debug)]
pub struct Welcome {
    end: OwnedFd,
    hello: Hello,
}

impl Welcome {
    /// Takes the handoff socket inherited at fd 3 and reads the hello.
    /// Must be called once.
    pub fn receive() -> Result<Self, WorkerError> {
        // SAFETY: called once at start-up by a process that `baton serve`
        // started with its handoff socket at fd 3; take_handoff checks the
        // descriptor is a SEQPACKET socket before adopting it.
        let end =
            unsafe { fd::take_handoff() }.ok_or(WorkerError::NoHandoff { fd: fd::HANDOFF_FD })?;
        Self::receive_on(end)
    }

    /// Takes the handoff socket at the descriptor `fd` names (the value of
    /// [`crate::HANDOFF_ENV`]) and reads the hello.
    pub fn receive_named(fd: &str) -> Result<Self, WorkerError> {
        match fd.trim().parse::<i32>() {
            Ok(fd::HANDOFF_FD) => Self::receive(),
            Ok(other) => Err(WorkerError::NoHandoff { fd: other }),
            Err(_) => Err(WorkerError::NoHandoff { fd: -1 }),
        }
    }

    /// Reads the hello on an already-adopted handoff socket.
    pub fn receive_on(end: OwnedFd) -> Result<Self, WorkerError> {
        let (message, fds) =
            protocol::recv_now::<ToWorker>(end.as_fd())?.ok_or(WorkerError::MasterGone)?;
        let hello = Hello::from_received(message, fds).map_err(HandoffError::from)?;
        Ok(Welcome { end, hello })
    }

    /// The built-in worker's options, as the master sent them (`None` to
    /// a native COMMAND, which brings its own).
    pub fn options(&self) -> Option<&serde_json::Value> {
        self.hello.http.as_ref()
    }

    /// A native worker's client limits, as the master was given them.
    pub fn limits(&self) -> Option<protocol::ClientLimits> {
        self.hello.limits
    }

    /// A native worker's threads per process, as the master was given
    /// them (`--threads`).
    pub fn threads(&self) -> Option<u16> {
        self.hello.threads
    }

    /// Starts talking to the master, and takes the listeners. Must be
    /// called inside a tokio runtime.
    pub fn into_handoff(self) -> Result<(Handoff, Vec<NamedListener>), WorkerError> {
        let Welcome { end, hello } = self;
        let channel = Channel::new(end).map_err(HandoffError::from)?;
        let balance = hello.balance.and_then(|table| {
            AcceptShare::join(table)
                .inspect_err(|e| warn!(cause = %e, "no accept balance: accepting unpaced"))
                .ok()
        });
        let listeners = hello
            .listeners
            .into_iter()
            .map(|(name, fd)| adopt_listener(name, fd))
            .collect::<Result<_, _>>()?;
        let handoff = Handoff {
            channel,
            hold: hello.hold,
            worker_id: hello.worker_id,
            slot: hello.slot,
            generation: hello.generation,
            balance,
        };
        Ok((handoff, listeners))
    }
}

impl Handoff {
    /// Reads the hello on an already-adopted handoff socket and takes the
    /// listeners. Must be called inside a tokio runtime.
    pub fn receive_on(end: OwnedFd) -> Result<(Self, Vec<NamedListener>), WorkerError> {
        Welcome::receive_on(end)?.into_handoff()
    }

    /// Tells the master this worker accepts on every listener.
    pub async fn ready(&self) -> Result<(), HandoffError> {
        self.channel.send(&ToMaster::Ready, &[]).await
    }

    /// Sends counters for `baton status`.
    pub async fn stats(&self, stats: WorkerStats) -> Result<(), HandoffError> {
        self.channel.send(&ToMaster::Stats(stats), &[]).await
    }

    /// Hands idle connections to the master (at most
    /// [`fd::MAX_FDS_PER_MESSAGE`]), each with how long it has been idle.
    /// The caller keeps its copies until the batch is settled.
    pub async fn hand_over(
        &self,
        batch: u64,
        connections: &[(BorrowedFd<'_>, Resume)],
    ) -> Result<(), HandoffError> {
        let message = ToMaster::Handover {
            batch,
            connections: connections
                .iter()
                .map(|(_, resume)| protocol::MovedConnection {
                    idle_ms: resume.idle.as_millis().try_into().unwrap_or(u64::MAX),
                    fresh: resume.fresh,
                })
                .collect(),
        };
        let fds: Vec<BorrowedFd<'_>> = connections.iter().map(|(fd, _)| *fd).collect();
        self.channel.send(&message, &fds).await
    }

    /// Tells the master the connections of an adopt `batch` are served.
    pub async fn adopted(&self, batch: u64) -> Result<(), HandoffError> {
        self.channel.send(&ToMaster::Adopted { batch }, &[]).await
    }

    /// Waits for the master's next instruction.
    pub async fn next_instruction(&self) -> Result<Instruction, HandoffError> {
        let Some((message, mut fds)) = self.channel.recv::<ToWorker>().await? else {
            return Ok(Instruction::MasterGone);
        };
        let expected = message.descriptors();
        if fds.len() != expected {
            return Err(ProtocolError::DescriptorCount {
                got: fds.len(),
                expected,
            }
            .into());
        }
        match message {
            ToWorker::Drain {
                timeout_ms,
                grace_ms,
                handover,
            } => Ok(Instruction::Drain {
                timeout: Duration::from_millis(timeout_ms),
                grace: grace_ms.map(Duration::from_millis),
                handover,
            }),
            ToWorker::Adopt { batch, connections } => Ok(Instruction::Adopt {
                batch,
                connections: fds
                    .into_iter()
                    .zip(connections)
                    .map(|(fd, moved)| {
                        let resume = Resume {
                            idle: Duration::from_millis(moved.idle_ms),
                            fresh: moved.fresh,
                        };
                        (fd, resume)
                    })
                    .collect(),
            }),
            ToWorker::Taken { batch, returned } => Ok(Instruction::Settle {
                batch,
                settlement: Settlement::taken_but(returned),
            }),
            ToWorker::Returned { batch } => Ok(Instruction::Settle {
                batch,
                settlement: Settlement::Returned,
            }),
            ToWorker::Probe => Ok(Instruction::Probe(fds.remove(0))),
            ToWorker::Accept => Ok(Instruction::Accept),
            ToWorker::Hello { .. } => Err(ProtocolError::Unexpected("a second hello").into()),
        }
    }
}

/// Checks that a received descriptor is what the master promised: a
/// listening TCP or Unix stream socket, non-blocking when `need_nonblocking`
/// (tokio needs it; a COMMAND may do as it likes). Anything else fails
/// loudly. Returns whether it is a Unix socket.
pub fn check_listener(
    name: &str,
    fd: BorrowedFd<'_>,
    need_nonblocking: bool,
) -> Result<bool, WorkerError> {
    let bad = |reason: String| WorkerError::BadListener {
        name: name.to_owned(),
        reason,
    };
    wait_listening(fd);
    let domain = fd::check_listening_socket(fd).map_err(bad)?;
    // Tokio needs O_NONBLOCK, which the master sets once for every process:
    // setting it here would change it under the others' feet.
    if need_nonblocking && !fd::is_nonblocking(fd).map_err(|e| bad(e.to_string()))? {
        return Err(bad(
            "the socket is blocking; the master should have set O_NONBLOCK".into(),
        ));
    }
    Ok(domain == Domain::UNIX)
}

/// How long a worker waits for a listener that is not listening to listen
/// again before it gives up on it.
const RELISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits, for [`RELISTEN_WAIT`] at the most, while `fd` is a socket that
/// does not listen: a worker of the generation draining may have shut the
/// shared socket down a moment ago, and the master listens on it again
/// within milliseconds (baton's master puts it right).
fn wait_listening(fd: BorrowedFd<'_>) {
    let deadline = std::time::Instant::now() + RELISTEN_WAIT;
    let sock = socket2::SockRef::from(&fd);
    while sock.is_listener().is_ok_and(|listening| !listening)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn adopt_listener(name: String, fd: OwnedFd) -> Result<NamedListener, WorkerError> {
    let listener = if check_listener(&name, fd.as_fd(), true)? {
        ReceivedListener::Unix(UnixListener::from(fd))
    } else {
        ReceivedListener::Tcp(TcpListener::from(fd))
    };
    Ok(NamedListener { name, listener })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_protocol::balance::ShareTable;

    fn listener() -> TcpListener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    }

    /// Sends a hello naming one listener, with `fds` attached, and receives
    /// it as a worker would.
    async fn receive(
        balance: bool,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Handoff, Vec<NamedListener>), WorkerError> {
        let (master_end, worker_end) = fd::seqpacket_pair().unwrap();
        let master_end = std::os::unix::net::UnixDatagram::from(master_end);
        receive_from(&master_end, worker_end, balance, fds)
    }

    fn receive_from(
        master_end: &std::os::unix::net::UnixDatagram,
        worker_end: OwnedFd,
        balance: bool,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Handoff, Vec<NamedListener>), WorkerError> {
        let hello = ToWorker::Hello {
            worker_id: 1,
            slot: 0,
            generation: 1,
            listeners: vec!["http".into()],
            balance,
            http: None,
            limits: None,
            threads: None,
            hold: false,
            ready_fd: None,
        };
        protocol::send_now(master_end, &hello, fds).unwrap();
        Handoff::receive_on(worker_end)
    }

    #[tokio::test]
    async fn a_batch_taken_in_part_says_which_connections_come_back() {
        let (master_end, worker_end) = fd::seqpacket_pair().unwrap();
        let master_end = std::os::unix::net::UnixDatagram::from(master_end);
        let listener = listener();
        let (handoff, _listeners) =
            receive_from(&master_end, worker_end, false, &[listener.as_fd()]).unwrap();
        for (batch, settlement) in [
            (3, Settlement::Partly(vec![0, 2])),
            (4, Settlement::Taken),
            (5, Settlement::Returned),
        ] {
            let message = settlement.clone().message(batch);
            protocol::send_now(&master_end, &message, &[]).unwrap();
            match handoff.next_instruction().await.unwrap() {
                Instruction::Settle {
                    batch: got,
                    settlement: how,
                } => assert_eq!((got, how), (batch, settlement)),
                other => panic!("not a settlement: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_balance_table_follows_the_listeners() {
        let table = ShareTable::create().unwrap();
        let listener = listener();
        let (handoff, listeners) = receive(true, &[listener.as_fd(), table.fd()])
            .await
            .unwrap();
        assert_eq!(listeners.len(), 1);
        assert!(handoff.balance.is_some());
        assert_eq!(table.snapshot(), vec![(std::process::id(), false, 0)]);
    }

    #[tokio::test]
    async fn a_missing_table_is_a_protocol_error() {
        let listener = listener();
        let err = receive(true, &[listener.as_fd()]).await.unwrap_err();
        assert!(err.to_string().contains("descriptor"), "{err}");
    }

    #[tokio::test]
    async fn something_else_in_place_of_the_table_only_costs_the_balance() {
        let listener = listener();
        let other = listener.try_clone().unwrap();
        let (handoff, listeners) = receive(true, &[listener.as_fd(), other.as_fd()])
            .await
            .unwrap();
        assert_eq!(listeners.len(), 1);
        assert!(handoff.balance.is_none());
    }
}
