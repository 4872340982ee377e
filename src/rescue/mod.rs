//! The rescue of idle keep-alive connections a draining COMMAND throws away.
//!
//! Most servers, told to stop, close their idle keep-alive connections at
//! once. A client may be sending its next request on one at that very
//! moment: the request arrives at a closed socket and the client sees a
//! reset, or an empty answer. A server baton runs unchanged cannot be told
//! to wait, but baton can keep the socket open for it:
//!
//! 1. Before the drain signal, the master takes a duplicate of each client
//!    connection the worker's processes hold (`pidfd_getfd`: accepted from
//!    one of baton's listeners, established). While baton holds a copy,
//!    the program's `close()` sends no FIN and no reset. The master reads
//!    and writes no byte; it hands the copies to the rescuer at once
//!    ([`take`]).
//! 2. The rescuer, a process of its own, watches each copy ([`rescuer`]).
//!    While any process of the worker holds the socket, it is the
//!    program's, whatever it does with it. Once none does, the rescuer
//!    looks at what is left: bytes the program never read that begin an
//!    HTTP/1 request line are a request that arrived as the program
//!    closed, and are forwarded to the listener, where the new generation
//!    accepts it; its answer goes back with `Connection: close`
//!    ([`forward`]). With nothing unread, the client may be about to send,
//!    and gets [`GRACE`] to start a request, then a lingering close; a
//!    quarter of a second only if the program wrote just before it let go,
//!    since that may be an answer whose body ends at the close, and its
//!    client waits for that close. Anything else (the middle of a request
//!    the program read in part, TLS, an HTTP/2 preface) closes at once.
//!
//! A program that ends its connections with `shutdown()` sends its FIN
//! whatever baton holds: it is not helped.

pub mod forward;
pub mod handle;
pub mod rescuer;
pub mod take;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a rescued connection waits for its client's next request.
pub const GRACE: Duration = Duration::from_secs(2);

/// At most this many connections travel in one message: the protocol's
/// messages carry 32 descriptors and 4 KiB.
pub const BATCH: usize = 24;

/// What the master tells the rescuer, with the connections' descriptors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToRescuer {
    /// Copies of `worker`'s connections, in the order of the descriptors
    /// sent with this message.
    Watch {
        /// The draining worker: its process tree holds the connections.
        worker: u32,
        /// Each connection, as the master took it.
        connections: Vec<Baseline>,
        /// Give up watching after this long (past the drain deadline): the
        /// program was killed by then.
        within: Duration,
    },
}

/// What the rescuer tells the master.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rescued {
    /// Connections the program let go that the rescuer served or closed.
    pub connections: u64,
    /// Requests forwarded and answered.
    pub requests: u64,
}

/// A connection as the master took it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Baseline {
    pub inode: u64,
    /// The connection's local address: the listener it was accepted from,
    /// where a rescued request goes for the new generation to accept.
    pub forward_to: SocketAddr,
}
