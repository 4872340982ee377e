//! The listening sockets: bound once by the master and kept for its whole
//! life, so that a connection made while no worker accepts waits in the
//! kernel's queue instead of being refused. Every worker receives these very
//! sockets; nothing ever binds a second one, since closing a socket drops its
//! accept queue (the classic source of resets during reloads).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::NamedListen;
use crate::error::BindError;

/// One bound, listening, non-blocking socket and the name workers know it by.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    /// The address actually bound (port 0 resolved).
    pub local_addr: SocketAddr,
    fd: OwnedFd,
}

impl Listener {
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The master's listeners, in the order given on the command line.
#[derive(Debug)]
pub struct ListenerSet {
    listeners: Vec<Listener>,
}

impl ListenerSet {
    /// Binds every listener, with `backlog` as the accept queue length.
    pub fn bind(specs: &[NamedListen], backlog: u32) -> Result<Self, BindError> {
        let listeners = specs
            .iter()
            .map(|spec| bind_tcp(spec, backlog))
            .collect::<Result<_, _>>()?;
        Ok(ListenerSet { listeners })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter()
    }

    pub fn names(&self) -> Vec<String> {
        self.listeners.iter().map(|l| l.name.clone()).collect()
    }

    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.listeners.iter().map(Listener::as_fd).collect()
    }
}

fn bind_tcp(spec: &NamedListen, backlog: u32) -> Result<Listener, BindError> {
    let addr = spec.addr;
    let fail = |e| BindError::new(addr, e);
    // socket2 creates the socket close-on-exec.
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.bind(&addr.into()).map_err(fail)?;
    // std and tokio use 128, after which connections made during a gap wait
    // seconds on SYN retransmits.
    socket
        .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        .map_err(fail)?;
    // O_NONBLOCK lives on the open file description that every worker shares:
    // set it once, here, and never from a worker.
    socket.set_nonblocking(true).map_err(fail)?;
    let local_addr = socket
        .local_addr()
        .map_err(fail)?
        .as_socket()
        .expect("a TCP socket has an IP address");
    Ok(Listener {
        name: spec.name.clone(),
        local_addr,
        fd: socket.into(),
    })
}
