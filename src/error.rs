//! Errors, one enum per boundary. Each message says what went wrong and, where
//! a person can act on it, what to do.

use std::io;
use std::path::PathBuf;

use crate::config::ListenAddr;

/// Binding a listening socket failed. A usage error: the user chose the address.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: the address is already in use; stop what holds it or choose another --listen address")]
    InUse { addr: ListenAddr },
    #[error("cannot listen on {addr}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, socket files a writable directory")]
    Denied { addr: ListenAddr },
    #[error("cannot listen on {addr}: {source}")]
    Other { addr: ListenAddr, source: io::Error },
}

/// The listeners could not be set up. A usage error: the user chose them.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{0}")]
    Config(String),
    #[error("socket activation: listener {name:?} is unusable: {reason}")]
    Inherited { name: String, reason: String },
    #[error(
        "listener {name:?}: systemd passed {inherited}, but --listen says {given}; make them agree"
    )]
    Mismatch {
        name: String,
        inherited: String,
        given: String,
    },
}

impl BindError {
    pub fn new(addr: ListenAddr, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse { addr },
            io::ErrorKind::PermissionDenied => BindError::Denied { addr },
            _ => BindError::Other { addr, source },
        }
    }
}

pub use baton_protocol::error::{HandoffError, ProtocolError};

/// Starting a worker process failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the handoff socketpair: {0}")]
    Socketpair(io::Error),
    #[error("cannot queue the listeners for the new worker: {0}")]
    Hello(HandoffError),
    #[error("cannot create the worker's notify socket: {0}")]
    Notify(io::Error),
    #[error("cannot start worker program {program}: {source}")]
    Exec { program: PathBuf, source: io::Error },
    #[error("cannot watch the new worker (a pidfd needs Linux 5.3): {0}")]
    Watch(io::Error),
}

/// The master could not run.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot open the control socket {path}: {reason}; stop the baton using it or choose another --control path")]
    Control { path: PathBuf, reason: String },
    #[error("cannot listen on {addr} for --{option}: {reason}; choose another address")]
    Admin {
        option: &'static str,
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("cannot create a directory for the workers' notify sockets: {0}")]
    RuntimeDir(io::Error),
    #[error("the first workers failed to start: {reason}")]
    FirstStart { reason: String },
    #[error("cannot copy the master's own sockets (out of descriptors?): {0}")]
    OwnSockets(io::Error),
    #[error("cannot take over from the previous program after an upgrade: {0}; its workers stop once they notice the master is gone")]
    TakeOver(String),
}

impl MasterError {
    /// Whether the user's input caused this (exit code 2) rather than the
    /// environment at run time (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            MasterError::Listen(_) | MasterError::Control { .. } | MasterError::Admin { .. }
        )
    }
}

/// A worker could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Serve(#[from] baton_worker::Error),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error(
        "no handoff socket on fd {fd}: `baton {stage}` is started by `baton serve`, not by hand"
    )]
    NoHandoff { stage: &'static str, fd: i32 },
    #[error("the master closed the handoff socket before sending the listeners")]
    MasterGone,
    #[error("cannot put the listeners at descriptors 3 and up: {0}")]
    PlaceListeners(io::Error),
    #[error("cannot keep the handoff socket open for the native program: {0}")]
    KeepHandoff(io::Error),
    #[error("--ready fd:{fd} is where a listener goes (the {listeners} listeners take 3 to {}); choose fd:{} or above", 2 + listeners, 3 + listeners)]
    ReadyFdTaken { fd: i32, listeners: usize },
    #[error("cannot run {command}: {source}")]
    Exec { command: String, source: io::Error },
}
