//! Accepting connections on a shared listening socket, paced by the
//! accept-balance table (see [`baton_protocol::balance`]) so that no worker takes
//! more than its share while another idles.
//!
//! This is the accept path of the built-in worker and of any Rust program
//! that serves with [`super::Handoff`]: wrap each listener in an
//! [`Acceptor`], give it the handoff's balance, and call
//! [`Acceptor::accept`] in a loop. Each [`Accepted`] carries a guard that
//! counts the connection as open until it drops: keep it for as long as the
//! connection lives.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::sys::socket::{accept4, SockFlag};
use tokio::io::unix::AsyncFd;
use tokio::time::{timeout_at, Instant};

use super::handoff::ReceivedListener;
use baton_protocol::balance::{AcceptShare, OpenConnection, YIELD_FOR};
use baton_protocol::fd;

/// A listener registered with tokio, accepting its share of connections.
#[derive(Debug)]
pub struct Acceptor {
    socket: AsyncFd<OwnedFd>,
    unix: bool,
    balance: Option<Arc<AcceptShare>>,
}

/// An accepted connection, registered with tokio.
#[derive(Debug)]
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A connection and its place in the balance table.
#[derive(Debug)]
pub struct Accepted {
    pub stream: Stream,
    /// Counts the connection as open in the balance table until dropped.
    pub open: Option<OpenConnection>,
}

impl Acceptor {
    /// This worker's place in the balance table, if it accepts balanced.
    pub fn share(&self) -> Option<Arc<AcceptShare>> {
        self.balance.clone()
    }

    /// Registers `listener` with the current tokio runtime. With `balance`,
    /// accepts are paced by the table and this worker counts as accepting
    /// from now on; without, every pending connection is taken at once.
    pub fn new(listener: ReceivedListener, balance: Option<Arc<AcceptShare>>) -> io::Result<Self> {
        let (socket, unix) = match listener {
            ReceivedListener::Tcp(l) => (OwnedFd::from(l), false),
            ReceivedListener::Unix(l) => (OwnedFd::from(l), true),
        };
        let socket = fd::register_readable(socket)?;
        if let Some(share) = &balance {
            share.set_accepting(true);
        }
        Ok(Acceptor {
            socket,
            unix,
            balance,
        })
    }

    /// The next connection. While this worker has more connections open than
    /// its share, a pending connection is left to the others until one of
    /// this worker's connections closes or [`YIELD_FOR`] has passed, then
    /// taken if still there. Cancel-safe: nothing is accepted until it
    /// returns.
    pub async fn accept(&self) -> io::Result<Accepted> {
        let mut yield_until = None;
        loop {
            let mut ready = self.socket.readable().await?;
            if let Some(share) = self.balance.as_ref().filter(|s| s.over_share()) {
                let until = *yield_until.get_or_insert_with(|| Instant::now() + YIELD_FOR);
                if Instant::now() < until {
                    // Readiness may be stale (nothing pending): waiting on is
                    // harmless then, and the accept below finds out.
                    drop(ready);
                    let _ = timeout_at(until, share.closed()).await;
                    continue;
                }
            }
            let accepted = ready.try_io(|socket| {
                accept4(
                    socket.get_ref().as_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(io::Error::from)
            });
            match accepted {
                Ok(Ok(connection)) => return self.register(connection),
                Ok(Err(e)) if gone_before_accepted(&e) => continue,
                Ok(Err(e)) => return Err(e),
                // Another worker took it; readiness was cleared.
                Err(_would_block) => continue,
            }
        }
    }

    fn register(&self, connection: OwnedFd) -> io::Result<Accepted> {
        let stream = if self.unix {
            Stream::Unix(tokio::net::UnixStream::from_std(connection.into())?)
        } else {
            let stream = tokio::net::TcpStream::from_std(connection.into())?;
            // Responses are small and written whole: do not wait for ACKs.
            // (A connection the client already reset may refuse; it fails
            // later, where it is reported.)
            let _ = stream.set_nodelay(true);
            Stream::Tcp(stream)
        };
        Ok(Accepted {
            stream,
            open: self.balance.as_ref().map(AcceptShare::accepted),
        })
    }

    /// Stops counting this worker among those that accept (on drain, or
    /// while it cannot accept).
    pub fn stop(&self) {
        if let Some(share) = &self.balance {
            share.set_accepting(false);
        }
    }

    /// Counts this worker among those that accept again.
    pub fn resume(&self) {
        if let Some(share) = &self.balance {
            share.set_accepting(true);
        }
    }
}

/// Errors that concern only the connection being accepted (its client gave
/// up, or its network failed, before it was taken): accept(2) asks to treat
/// them like EAGAIN and try the next one at once.
fn gone_before_accepted(error: &io::Error) -> bool {
    use nix::errno::Errno;
    let errno = Errno::from_raw(error.raw_os_error().unwrap_or(0));
    matches!(
        errno,
        Errno::ECONNABORTED
            | Errno::EINTR
            | Errno::EPROTO
            | Errno::ENETDOWN
            | Errno::ENOPROTOOPT
            | Errno::EHOSTDOWN
            | Errno::ENONET
            | Errno::EHOSTUNREACH
            | Errno::EOPNOTSUPP
            | Errno::ENETUNREACH
    )
}
