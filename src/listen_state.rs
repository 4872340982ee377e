//! A listener stays listening, with the backlog the operator set.
//!
//! Every worker holds the same listening socket, and what a worker does to
//! the socket (not to its descriptor) it does for everyone. Many servers
//! call `listen()` again on the socket they are given (Node with 511,
//! uvicorn with 2048, hypercorn with 100), which changes the backlog for
//! every process sharing it; some call `shutdown()` on it when they stop
//! (sanic does), which stops the socket for the master and every other
//! worker: connections are refused until something listens again. The
//! master reads each listener's state back from the kernel and puts it
//! right: `listen()` on a TCP socket that was shut down listens again on
//! the same address (baton binds its ports explicitly, so the kernel keeps
//! the port), and on a listening one changes only the backlog, keeping the
//! queue.
//!
//! A Unix listener that was shut down cannot listen again (the kernel keeps
//! its shutdown flags); it is reported, not mended.

use std::io;
use std::os::fd::BorrowedFd;

use nix::sys::socket::{listen, Backlog};
use socket2::{Domain, SockRef};

/// What the kernel says of a listener now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenState {
    pub listening: bool,
    /// The backlog, for TCP listeners (the Unix one cannot be read back).
    pub backlog: Option<u32>,
    /// Connections waiting to be accepted, for TCP listeners.
    pub queued: Option<u32>,
}

/// Reads the state of listener `fd`.
pub fn read(fd: BorrowedFd<'_>) -> io::Result<ListenState> {
    let sock = SockRef::from(&fd);
    if sock.domain()? == Domain::UNIX {
        let listening = sock.is_listener()? && !crate::fd::is_shut_down(fd)?;
        return Ok(ListenState {
            listening,
            backlog: None,
            queued: None,
        });
    }
    let info = crate::fd::tcp_listen_info(fd)?;
    Ok(ListenState {
        listening: info.listening,
        backlog: Some(info.backlog),
        queued: Some(info.queued),
    })
}

/// Listens on `fd` again with `backlog`: a TCP socket that was shut down
/// listens again; a listening one gets its backlog back.
pub fn relisten(fd: BorrowedFd<'_>, backlog: u32) -> io::Result<()> {
    let backlog = Backlog::new(backlog.min(i32::MAX as u32) as i32)?;
    listen(&fd, backlog)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn tcp_listener(backlog: i32) -> socket2::Socket {
        let socket = socket2::Socket::new(Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        socket.listen(backlog).unwrap();
        socket
    }

    #[test]
    fn reads_backlog_and_queue_and_sees_a_shutdown() {
        let socket = tcp_listener(37);
        let state = read(socket.as_fd()).unwrap();
        assert_eq!(
            state,
            ListenState {
                listening: true,
                backlog: Some(37),
                queued: Some(0)
            }
        );
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(read(socket.as_fd()).unwrap().queued, Some(1));
        relisten(socket.as_fd(), 99).unwrap();
        assert_eq!(read(socket.as_fd()).unwrap().backlog, Some(99));
        assert_eq!(
            read(socket.as_fd()).unwrap().queued,
            Some(1),
            "the queue is kept"
        );
        socket.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(!read(socket.as_fd()).unwrap().listening);
    }

    #[test]
    fn a_shut_down_unix_listener_is_not_listening() {
        let dir = std::env::temp_dir().join(format!("baton-listen-state-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        assert!(read(listener.as_fd()).unwrap().listening);
        SockRef::from(&listener)
            .shutdown(std::net::Shutdown::Both)
            .unwrap();
        assert!(!read(listener.as_fd()).unwrap().listening);
        let _ = std::fs::remove_file(&dir);
    }
}
