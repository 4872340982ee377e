//! What can keep a worker from serving, each saying what to do about it.

use std::io;

pub use baton_protocol::error::{HandoffError, ProtocolError};

/// Why [`crate::serve`] could not serve, or stopped serving early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `BATON_HANDOFF_FD` names a descriptor that is not baton's handoff
    /// socket.
    #[error("no handoff socket on fd {fd}: a native worker is started by `baton serve --native -- COMMAND`; unset BATON_HANDOFF_FD to run it on its own")]
    NoHandoff {
        /// The descriptor looked at.
        fd: i32,
    },
    /// The handoff socket to the master failed, or the master broke the
    /// protocol.
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    /// A listening socket given to this process cannot be served.
    #[error("listener {name:?} is unusable: {reason}")]
    BadListener {
        /// The listener's name (the master's, or `LISTEN_FDNAMES`'s).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The address to listen on (`BATON_LISTEN`, or the builder's) cannot
    /// be bound.
    #[error(
        "cannot listen on {address}: {source}; choose another address with BATON_LISTEN=HOST:PORT"
    )]
    Listen {
        /// The address asked for.
        address: String,
        /// Why binding failed.
        source: io::Error,
    },
    /// The master closed the handoff socket before sending the listeners.
    #[error("the master closed the handoff socket before sending the listeners")]
    MasterGone,
    /// The master went away while this worker served; a worker without its
    /// master exits.
    #[error("the master is gone (its end of the handoff socket closed); a worker without its master exits")]
    MasterLeft,
    /// The tokio runtime of [`crate::Builder::run`] could not be built.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(io::Error),
    /// The handler of the drain signals (SIGTERM, SIGINT) could not be
    /// installed.
    #[error("cannot install the drain signal's handler: {0}")]
    Signals(io::Error),
}
