//! The messages master and worker exchange on their handoff socketpair, and
//! the [`Channel`] that carries them.
//!
//! One message is one SEQPACKET datagram: a small JSON object with a version
//! field, bounded to [`MAX_MESSAGE_BYTES`]; the listening sockets ride on the
//! hello message as SCM_RIGHTS descriptors, in the order of its `listeners`
//! names. Each side treats the other as untrusted: an oversized, malformed,
//! unknown or wrongly-versioned message, or descriptors where none belong, is
//! an error for the receiver to report, never a panic or a leaked descriptor.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::Interest;

use crate::error::{HandoffError, ProtocolError};
use crate::fd;

/// The protocol version this baton speaks.
pub const VERSION: u32 = 1;

/// The largest message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Master to worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// The first message: who the worker is, and its listeners, whose
    /// descriptors are attached in the same order as `listeners`. With
    /// `balance`, one more descriptor follows them: the accept-balance table
    /// (see [`crate::balance`]).
    Hello {
        worker_id: u64,
        /// The slot it serves, so that its log names it as the master's
        /// does.
        #[serde(default)]
        slot: usize,
        generation: u64,
        listeners: Vec<String>,
        #[serde(default)]
        balance: bool,
        /// A built-in worker's options, as the binary serializes them;
        /// `None` for a COMMAND, or a worker of another kind that brings its
        /// own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http: Option<serde_json::Value>,
        /// A native worker's client limits, as the master was given them:
        /// the defaults for what its application did not set itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<ClientLimits>,
        /// A native worker's threads per process, as the master was given
        /// them (`--threads`): for a program that lets the library build
        /// its runtime.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threads: Option<u16>,
        /// Accept nothing until [`ToWorker::Accept`]: the master probes the
        /// worker first (`--health`), through [`ToWorker::Probe`]
        /// connections, so that no client reaches a release that has not
        /// passed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold: bool,
        /// `--ready fd:N`: a COMMAND gets the write end of a pipe, attached
        /// last, at descriptor N, and is ready when it writes a newline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ready_fd: Option<i32>,
    },
    /// Serve the one descriptor attached, a connected stream socket, as a
    /// connection just accepted: a health probe.
    Probe,
    /// Start accepting: the probes passed.
    Accept,
    /// Stop accepting and finish what is in flight within `timeout_ms`, after
    /// which the master kills the worker; keep idle keep-alive connections
    /// for `grace_ms` (else for the grace the worker was started with).
    /// Sent again to a worker that is draining, it hurries the drain: the
    /// grace ends at once.
    Drain {
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_ms: Option<u64>,
        /// Hand idle HTTP/1 connections to the master at their next idle
        /// moment ([`ToMaster::Handover`]) instead of closing them: a newer
        /// worker will serve them. Never set on a stop.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        handover: bool,
    },
    /// Serve the connections attached (one descriptor per entry, in the
    /// same order) as if just accepted: a draining worker handed them over.
    /// Each is idle between two HTTP/1 requests, nothing of the next one
    /// read yet. Answer [`ToMaster::Adopted`] with the same batch once they
    /// are taken in.
    Adopt {
        batch: u64,
        connections: Vec<MovedConnection>,
    },
    /// The connections of the worker's [`ToMaster::Handover`] `batch` are
    /// served elsewhere now: close this worker's copies (without a
    /// shutdown: the socket lives on in the other process). Those at the
    /// positions in `returned` (counted from 0 in the batch's order) could
    /// not be taken: serve them on, as for [`ToWorker::Returned`].
    Taken {
        batch: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        returned: Vec<u32>,
    },
    /// Nobody could take that batch: serve its connections on, with the
    /// drain's usual close.
    Returned { batch: u64 },
}

/// How the master answers a worker's [`ToMaster::Handover`]: a batch may
/// be split between several newer workers, and one of them may fail to
/// take its part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Other workers serve every connection of the batch.
    Taken,
    /// Nobody took any: the worker serves them all on.
    Returned,
    /// Other workers serve all but these, the positions in the batch
    /// (from 0, in its order), which the worker serves on.
    Partly(Vec<u32>),
}

impl Settlement {
    /// The settlement of a batch of `count` connections of which those
    /// at the positions in `returned` came back.
    pub fn of(count: usize, returned: Vec<u32>) -> Self {
        if !returned.is_empty() && returned.len() >= count {
            Settlement::Returned
        } else {
            Settlement::taken_but(returned)
        }
    }

    /// A batch whose connections were taken but those at the positions in
    /// `returned`, as a worker reads it, knowing the batch's size itself.
    pub fn taken_but(mut returned: Vec<u32>) -> Self {
        if returned.is_empty() {
            Settlement::Taken
        } else {
            returned.sort_unstable();
            Settlement::Partly(returned)
        }
    }

    /// Whether the connection at `position` of the batch came back.
    pub fn returns(&self, position: usize) -> bool {
        match self {
            Settlement::Taken => false,
            Settlement::Returned => true,
            Settlement::Partly(returned) => u32::try_from(position)
                .is_ok_and(|position| returned.binary_search(&position).is_ok()),
        }
    }

    /// The message that tells the worker of `batch`.
    pub fn message(self, batch: u64) -> ToWorker {
        match self {
            Settlement::Taken => ToWorker::Taken {
                batch,
                returned: Vec::new(),
            },
            Settlement::Returned => ToWorker::Returned { batch },
            Settlement::Partly(returned) => ToWorker::Taken { batch, returned },
        }
    }
}

/// The time limits the master's `--header-timeout`, `--keepalive-timeout`,
/// `--body-timeout` and `--http2-ping` give a native worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLimits {
    pub header_timeout_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub http2_ping_ms: u64,
}

/// One connection moved from a draining worker to a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedConnection {
    /// How long it has been idle since its last response: its keep-alive
    /// limit goes on from there.
    pub idle_ms: u64,
    /// It has not sent a request yet: the limit that goes on is the one
    /// for a request's head, counted from when it opened (`idle_ms` ago).
    #[serde(default)]
    pub fresh: bool,
}

impl ToWorker {
    pub fn drain(timeout: Duration, grace: Option<Duration>, handover: bool) -> Self {
        let millis = |d: Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
        ToWorker::Drain {
            timeout_ms: millis(timeout),
            grace_ms: grace.map(millis),
            handover,
        }
    }
}

/// Worker to master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToMaster {
    /// The worker accepts on every listener it was given.
    Ready,
    /// Counters the master shows in `baton status`, sent every second.
    Stats(WorkerStats),
    /// A draining worker's idle connections, attached one descriptor per
    /// entry (at most [`crate::fd::MAX_FDS_PER_MESSAGE`]): the master passes
    /// them to a newer worker, and answers [`ToWorker::Taken`] or
    /// [`ToWorker::Returned`] with the same batch. The worker keeps its
    /// copies until then, so that a connection always has a process
    /// serving it.
    Handover {
        batch: u64,
        connections: Vec<MovedConnection>,
    },
    /// The connections of an [`ToWorker::Adopt`] batch are this worker's.
    Adopted { batch: u64 },
}

impl ToWorker {
    /// How many descriptors come with this message, the listeners of a
    /// hello aside.
    pub fn descriptors(&self) -> usize {
        match self {
            ToWorker::Probe => 1,
            ToWorker::Adopt { connections, .. } => connections.len(),
            _ => 0,
        }
    }
}

impl ToMaster {
    /// How many descriptors come with this message.
    pub fn descriptors(&self) -> usize {
        match self {
            ToMaster::Handover { connections, .. } => connections.len(),
            _ => 0,
        }
    }
}

/// What a built-in worker reports about its traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub accepted: u64,
    pub open_connections: u64,
    pub requests: u64,
    /// Idle connections this worker handed to a newer one while draining.
    #[serde(default)]
    pub handed_over: u64,
    /// Connections a draining worker handed to this one.
    #[serde(default)]
    pub received: u64,
    /// Connections it meant to hand over that came back (nobody could
    /// take them) and were closed by the drain as before.
    #[serde(default)]
    pub fell_back: u64,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

/// Encodes `message` as one datagram.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let envelope = Envelope {
        v: VERSION,
        body: message,
    };
    serde_json::to_vec(&envelope).expect("protocol messages always serialize")
}

/// Decodes one datagram, checking its version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let Version { v } = serde_json::from_slice(bytes)?;
    if v != VERSION {
        return Err(ProtocolError::Version {
            got: v,
            supported: VERSION,
        });
    }
    let envelope: Envelope<T> = serde_json::from_slice(bytes)?;
    Ok(envelope.body)
}

/// Sends one message on a blocking socket that tokio does not drive yet: the
/// master queues a worker's hello before the worker even starts, so that the
/// worker finds its listeners waiting.
pub fn send_now<T: Serialize>(
    sock: &std::os::unix::net::UnixDatagram,
    message: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), HandoffError> {
    fd::send_with_fds(sock, &encode(message), fds)?;
    Ok(())
}

/// Receives one message at once, without a runtime (the exec stage: the
/// master queued the hello before starting it). `Ok(None)` means the peer
/// closed its end.
pub fn recv_now<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>, HandoffError> {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let received = fd::recv_with_fds(sock, &mut buf)?;
    read_message(&buf, received)
}

/// Turns one received datagram into a message and its descriptors.
fn read_message<T: DeserializeOwned>(
    buf: &[u8],
    received: fd::Received,
) -> Result<Option<(T, Vec<OwnedFd>)>, HandoffError> {
    // Any descriptors in `received` are owned: returning early closes them.
    if received.control_truncated {
        return Err(ProtocolError::ControlTruncated {
            limit: fd::MAX_FDS_PER_MESSAGE,
        }
        .into());
    }
    if received.payload_truncated {
        return Err(ProtocolError::Oversized {
            len: MAX_MESSAGE_BYTES,
            limit: MAX_MESSAGE_BYTES,
        }
        .into());
    }
    if received.len == 0 && received.fds.is_empty() {
        return Ok(None);
    }
    let message = decode(&buf[..received.len])?;
    Ok(Some((message, received.fds)))
}

/// A hello with its descriptors matched to what it announces.
#[derive(Debug)]
pub struct Hello {
    pub worker_id: u64,
    pub slot: usize,
    pub generation: u64,
    /// Each listener's name and socket, in the master's order.
    pub listeners: Vec<(String, OwnedFd)>,
    /// The accept-balance table, when the master sent one.
    pub balance: Option<OwnedFd>,
    /// A built-in worker's options.
    pub http: Option<serde_json::Value>,
    /// A native worker's client limits.
    pub limits: Option<ClientLimits>,
    /// A native worker's threads per process.
    pub threads: Option<u16>,
    /// Accept nothing until told (see [`ToWorker::Hello`]).
    pub hold: bool,
    /// `--ready fd:N`: the pipe's write end, and N.
    pub ready: Option<(OwnedFd, i32)>,
}

impl Hello {
    /// Checks that the first message is a hello and that `fds` are exactly
    /// the descriptors it announces.
    pub fn from_received(message: ToWorker, mut fds: Vec<OwnedFd>) -> Result<Self, ProtocolError> {
        let ToWorker::Hello {
            worker_id,
            slot,
            generation,
            listeners: names,
            balance,
            http,
            limits,
            threads,
            hold,
            ready_fd,
        } = message
        else {
            return Err(ProtocolError::Unexpected("expected hello first"));
        };
        let expected = names.len() + usize::from(balance) + usize::from(ready_fd.is_some());
        if fds.len() != expected {
            return Err(ProtocolError::DescriptorCount {
                got: fds.len(),
                expected,
            });
        }
        let ready = ready_fd.and_then(|at| fds.pop().map(|fd| (fd, at)));
        let balance = if balance { fds.pop() } else { None };
        Ok(Hello {
            worker_id,
            slot,
            generation,
            listeners: names.into_iter().zip(fds).collect(),
            balance,
            http,
            limits,
            threads,
            hold,
            ready,
        })
    }
}

/// One end of a handoff socketpair, driven by tokio.
#[derive(Debug)]
pub struct Channel {
    sock: tokio::net::UnixDatagram,
}

impl Channel {
    /// Wraps one end of a [`fd::seqpacket_pair`]. tokio has no SEQPACKET
    /// type; its datagram type works for one because both move whole
    /// messages. Must be called inside a tokio runtime.
    pub fn new(end: impl Into<std::os::unix::net::UnixDatagram>) -> io::Result<Self> {
        let std_sock = end.into();
        std_sock.set_nonblocking(true)?;
        Ok(Channel {
            sock: tokio::net::UnixDatagram::from_std(std_sock)?,
        })
    }

    /// Sends one message with `fds` attached.
    pub async fn send<T: Serialize>(
        &self,
        message: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), HandoffError> {
        let bytes = encode(message);
        debug_assert!(bytes.len() <= MAX_MESSAGE_BYTES);
        self.sock
            .async_io(Interest::WRITABLE, || {
                fd::send_with_fds(&self.sock, &bytes, fds)
            })
            .await?;
        Ok(())
    }

    /// Receives one message and its descriptors. `Ok(None)` means the peer
    /// closed its end.
    pub async fn recv<T: DeserializeOwned>(
        &self,
    ) -> Result<Option<(T, Vec<OwnedFd>)>, HandoffError> {
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
        let received = match self
            .sock
            .async_io(Interest::READABLE, || {
                fd::recv_with_fds(self.sock.as_fd(), &mut buf)
            })
            .await
        {
            Ok(received) => received,
            // A peer that exits without reading what was sent to it resets
            // the connection: that is the peer going away, like EOF.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        read_message(&buf, received)
    }

    /// Receives one message that must carry no descriptors.
    pub async fn recv_plain<T: DeserializeOwned>(&self) -> Result<Option<T>, HandoffError> {
        match self.recv().await? {
            None => Ok(None),
            Some((message, fds)) if fds.is_empty() => Ok(Some(message)),
            Some((_, fds)) => Err(ProtocolError::DescriptorCount {
                got: fds.len(),
                expected: 0,
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_version() {
        let hello = ToWorker::Hello {
            worker_id: 7,
            slot: 1,
            generation: 2,
            listeners: vec!["http".into()],
            balance: true,
            http: None,
            limits: None,
            threads: None,
            hold: false,
            ready_fd: None,
        };
        let bytes = encode(&hello);
        assert!(String::from_utf8_lossy(&bytes).contains("\"v\":1"));
        assert_eq!(decode::<ToWorker>(&bytes).unwrap(), hello);
        assert_eq!(
            decode::<ToMaster>(&encode(&ToMaster::Ready)).unwrap(),
            ToMaster::Ready
        );
    }

    #[test]
    fn a_drain_carries_its_grace_and_one_without_it_still_decodes() {
        let drain = ToWorker::drain(
            Duration::from_secs(30),
            Some(Duration::from_millis(1500)),
            true,
        );
        assert_eq!(
            decode::<ToWorker>(&encode(&drain)).unwrap(),
            ToWorker::Drain {
                timeout_ms: 30_000,
                grace_ms: Some(1500),
                handover: true,
            }
        );
        let bare = br#"{"v":1,"type":"drain","timeout_ms":200}"#;
        assert_eq!(
            decode::<ToWorker>(bare).unwrap(),
            ToWorker::Drain {
                timeout_ms: 200,
                grace_ms: None,
                handover: false,
            }
        );
    }

    #[test]
    fn a_batch_settled_in_part_names_what_came_back_and_a_whole_answer_names_nothing() {
        assert_eq!(Settlement::of(3, vec![]), Settlement::Taken);
        assert_eq!(Settlement::of(2, vec![1, 0]), Settlement::Returned);
        let partly = Settlement::of(4, vec![3, 1]);
        assert_eq!(partly, Settlement::Partly(vec![1, 3]));
        let returned: Vec<bool> = (0..4).map(|i| partly.returns(i)).collect();
        assert_eq!(returned, [false, true, false, true]);
        assert!(!Settlement::Taken.returns(0) && Settlement::Returned.returns(0));

        let taken = encode(&Settlement::Taken.message(7));
        assert_eq!(
            String::from_utf8_lossy(&taken),
            r#"{"v":1,"type":"taken","batch":7}"#,
            "a whole batch taken reads as it always did"
        );
        let message = Settlement::Partly(vec![1, 3]).message(7);
        assert_eq!(decode::<ToWorker>(&encode(&message)).unwrap(), message);
    }

    #[test]
    fn rejects_garbage_unknown_and_other_versions() {
        assert!(matches!(
            decode::<ToMaster>(b"\xff\x00garbage"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            decode::<ToMaster>(br#"{"v":1,"type":"launch_missiles"}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            decode::<ToMaster>(br#"{"v":9,"type":"ready"}"#),
            Err(ProtocolError::Version { got: 9, .. })
        ));
    }

    fn pair() -> (Channel, Channel) {
        let (a, b) = fd::seqpacket_pair().unwrap();
        (Channel::new(a).unwrap(), Channel::new(b).unwrap())
    }

    #[tokio::test]
    async fn descriptors_arrive_close_on_exec_and_eof_is_seen() {
        let (master, worker) = pair();
        let (x, _y) = fd::seqpacket_pair().unwrap();
        let hello = ToWorker::Hello {
            worker_id: 1,
            slot: 0,
            generation: 1,
            listeners: vec!["a".into()],
            balance: false,
            http: None,
            limits: None,
            threads: None,
            hold: false,
            ready_fd: None,
        };
        master.send(&hello, &[x.as_fd()]).await.unwrap();
        let (got, fds) = worker.recv::<ToWorker>().await.unwrap().unwrap();
        assert_eq!(got, hello);
        assert_eq!(fds.len(), 1);
        let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fd must be close-on-exec"
        );
        drop(master);
        assert!(worker.recv::<ToWorker>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_peer_that_exits_without_reading_is_gone_not_broken() {
        let (master, worker) = pair();
        master.send(&ToMaster::Ready, &[]).await.unwrap();
        drop(worker); // unread data: the kernel resets the connection
        assert!(master.recv::<ToMaster>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_fd_flooded_messages_are_errors_that_leak_nothing() {
        let (master, worker) = pair();
        let huge = vec![b'x'; MAX_MESSAGE_BYTES * 2];
        master.sock.send(&huge).await.unwrap();
        assert!(matches!(
            worker.recv::<ToWorker>().await,
            Err(HandoffError::Protocol(ProtocolError::Oversized { .. }))
        ));

        let (x, _y) = fd::seqpacket_pair().unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..fd::MAX_FDS_PER_MESSAGE + 8)
            .map(|_| x.as_fd())
            .collect();
        // Other tests open descriptors concurrently: count only copies of `x`.
        let copies_of_x = || {
            use std::os::fd::AsRawFd;
            let target = std::fs::read_link(format!("/proc/self/fd/{}", x.as_raw_fd())).unwrap();
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == target))
                .count()
        };
        let before = copies_of_x();
        master.send(&ToMaster::Ready, &many).await.unwrap();
        assert!(matches!(
            worker.recv::<ToMaster>().await,
            Err(HandoffError::Protocol(
                ProtocolError::ControlTruncated { .. }
            ))
        ));
        let after = copies_of_x();
        assert_eq!(
            before, after,
            "descriptors of a rejected message must be closed"
        );

        master.send(&ToMaster::Ready, &[x.as_fd()]).await.unwrap();
        assert!(matches!(
            worker.recv_plain::<ToMaster>().await,
            Err(HandoffError::Protocol(ProtocolError::DescriptorCount {
                got: 1,
                expected: 0
            }))
        ));
    }
}
