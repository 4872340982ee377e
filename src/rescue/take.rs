//! The master's part of the rescue: copies of a draining worker's client
//! connections, taken before it is told to drain.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::fd;
use crate::procfs::{self, ListenerId};

use super::Baseline;

/// TCP_ESTABLISHED.
const ESTABLISHED: u8 = 1;

/// One connection's copy.
#[derive(Debug)]
pub struct Taken {
    pub fd: OwnedFd,
    pub baseline: Baseline,
}

/// What one look at a worker's process tree copied.
#[derive(Debug)]
pub struct Copies {
    pub taken: Vec<Taken>,
    /// Some process of the tree still holds one of the listeners: it may
    /// accept more.
    pub holds_listener: bool,
}

/// Why nothing could be taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    /// `pidfd_getfd` refused (EPERM: no right to ptrace the worker; ENOSYS:
    /// a kernel before 5.6), or the worker's descriptors cannot be read
    /// (EACCES, for the same lack of right).
    #[error("cannot copy the worker's connections ({0}); they drain as the program closes them. The rescue needs Linux 5.6 or later and the right to ptrace the workers: run baton as root with CAP_SYS_PTRACE, or as the workers' own user, or turn it off with --rescue-connections off")]
    Refused(io::Error),
    /// The look itself failed (its thread panicked).
    #[error(
        "the look at the worker's connections failed ({0}); they drain as the program closes them"
    )]
    Failed(String),
}

/// Copies of the established client connections of `listeners` (TCP) that
/// the process tree under `root` holds, each once. Busy ones too: a
/// program closes a keep-alive connection at an idle moment that may come
/// later in its drain, and whether it was idle is only known once it lets
/// it go.
///
/// Each socket the tree holds is copied and looked at (its local port is a
/// listener's, and it is not a listener): a few system calls per socket,
/// where asking the kernel's tables for the listeners' connections first
/// took 36 to 63 ms on a host a load had filled with closed connections.
/// Sockets in `skip` (taken before) are left alone.
pub fn connections(
    root: u32,
    listeners: &[ListenerId],
    skip: &HashSet<u64>,
) -> Result<Copies, TakeError> {
    let ports: HashSet<u16> = listeners
        .iter()
        .filter_map(|l| l.tcp.map(|a| a.port()))
        .collect();
    let listening: HashSet<u64> = listeners.iter().map(|l| l.inode).collect();
    let mut seen = HashSet::new();
    let mut copies = Copies {
        taken: Vec::new(),
        holds_listener: false,
    };
    if ports.is_empty() {
        return Ok(copies);
    }
    for pid in procfs::descendants_and_self(root) {
        let Ok(pidfd) = fd::pidfd_open(pid) else {
            continue;
        };
        let (sockets, event_loop) = match procfs::read_socket_fds_and_event_loop(pid) {
            Ok(read) => read,
            // Another user's process, to a master without CAP_SYS_PTRACE:
            // pidfd_getfd would be refused as well.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let read = format!("reading /proc/{pid}/fd: {e}");
                return Err(TakeError::Refused(std::io::Error::new(e.kind(), read)));
            }
            // Gone since the tree was read.
            Err(_) => continue,
        };
        for (number, inode) in sockets {
            if listening.contains(&inode) {
                copies.holds_listener = true;
                continue;
            }
            if skip.contains(&inode) || !seen.insert(inode) {
                continue;
            }
            let copy = match fd::pidfd_getfd(pidfd.as_fd(), number) {
                Ok(copy) => copy,
                // Closed since the table was read, or the process exited.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ESRCH)) => continue,
                Err(e) => {
                    let copy = format!("pidfd_getfd: {e}");
                    return Err(TakeError::Refused(std::io::Error::new(e.kind(), copy)));
                }
            };
            let socket = socket2::SockRef::from(&copy);
            let Some(local) = socket.local_addr().ok().and_then(|a| a.as_socket()) else {
                continue;
            };
            if !ports.contains(&local.port()) || socket.is_listener().unwrap_or(true) {
                continue;
            }
            match fd::tcp_state(copy.as_fd()) {
                // Established: a client that closed its side sends nothing
                // more.
                Ok(state) if state.state == ESTABLISHED => {}
                _ => continue,
            }
            if event_loop {
                // Its next request is held back from the program: see
                // [`super::HOLD`].
                let _ = fd::set_read_low_water(copy.as_fd(), super::HOLD_BYTES);
            }
            copies.taken.push(Taken {
                fd: copy,
                baseline: Baseline {
                    inode,
                    forward_to: local,
                },
            });
        }
    }
    Ok(copies)
}
