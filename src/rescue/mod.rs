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
//! While the program acts on its signal, its copied connections do not
//! wake it for the next request ([`HOLD`]): a request that arrives then
//! waits whole in the socket for whoever serves it.
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

/// How long at most a copied connection's next request is held back from
/// the program: the receive low-water mark of a connection copied from an
/// event loop (a process with an epoll instance) is raised to
/// [`HOLD_BYTES`], so that a request arriving while the program acts on
/// its drain signal does not wake it. Such a request stays unread: a program
/// that then closes the connection as idle leaves it whole to the rescue,
/// where without the hold it might have read it in part and closed it
/// (Go's `Shutdown` closes a connection whose request it has begun to read
/// but not yet marked active). The mark stops wake-ups, not reads: a
/// program that reads without waiting (Go tries to read the next request
/// as soon as it has answered one) still takes in what has arrived.
///
/// Only an event loop's connections are held, since it reads when told a
/// connection is readable: a thread that blocks in its own read instead,
/// begun while the mark is high, waits for as many bytes as its buffer
/// holds, and would sit on a short request it had taken in part long
/// after the hold ends. (Measured with a thread-per-connection Python
/// server that serves its keep-alive connections through its drain,
/// 36 s, a reload every 3 s: holding its connections gave 31 and 21
/// failed requests, mostly such reads cut at its exit, against 10 and 2.)
///
/// A connection the program still holds gets its mark of one byte back,
/// which wakes the program if a request waits, [`AFTER_STOP`] after the
/// program closed its listeners (it has acted on its signal, and servers
/// close their idle connections in that same step), or after `HOLD` if
/// it keeps them open. A program that serves its connections through its
/// drain answers a request held this way that much later.
pub const HOLD: Duration = Duration::from_millis(250);

/// See [`HOLD`].
pub const AFTER_STOP: Duration = Duration::from_millis(20);

/// The low-water mark of a held connection: more than any request line
/// and headers a client sends before waiting for an answer.
pub const HOLD_BYTES: u32 = 1 << 20;

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
        /// The listeners' sockets (inodes) the worker accepts on: once its
        /// processes hold none, it has acted on its signal.
        #[serde(default)]
        listeners: Vec<u64>,
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

    use super::HOLD_BYTES;
    use crate::fd::{set_read_low_water, tcp_state};

    /// What a held connection looks like to the program's event loop (an
    /// edge-triggered epoll set, as Go's, Node's and tokio's are): a
    /// request in the socket does not wake it until the mark is given
    /// back, and then it does at once.
    #[test]
    fn a_held_connection_wakes_its_program_only_once_given_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (program, _) = listener.accept().unwrap();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        epoll
            .add(program.as_fd(), EpollEvent::new(flags, 0))
            .unwrap();
        let mut events = [EpollEvent::empty(); 1];
        let woken =
            |epoll: &Epoll, events: &mut [EpollEvent], ms: u16| epoll.wait(events, ms).unwrap() > 0;
        assert!(!woken(&epoll, &mut events, 0), "woken before any request");

        set_read_low_water(program.as_fd(), HOLD_BYTES).unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        assert!(
            !woken(&epoll, &mut events, 200),
            "a held request woke the program"
        );
        assert_eq!(tcp_state(program.as_fd()).unwrap().unread, 27);

        set_read_low_water(program.as_fd(), 1).unwrap();
        assert!(
            woken(&epoll, &mut events, 10_000),
            "given back, the request did not wake it"
        );
    }
}
