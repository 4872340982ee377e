//! Every `unsafe` operation on the descriptors the protocol moves lives
//! here, behind `OwnedFd` and `BorrowedFd`: passing descriptors with
//! SCM_RIGHTS, adopting the handoff socket a worker inherits, and
//! registering a listener with tokio for readiness.
//!
//! Why by hand rather than `sendfd`'s receive: a received descriptor must be
//! close-on-exec from its first instant (`MSG_CMSG_CLOEXEC`), and a truncated
//! control message (`MSG_CTRUNC`) must be reported, with whatever descriptors
//! did arrive closed rather than leaked. Sending uses `sendfd`.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use sendfd::SendWithFd;

/// The descriptor number at which a worker finds its end of the handoff
/// socketpair.
pub const HANDOFF_FD: i32 = 3;

/// The most descriptors one handoff message may carry. A message with more is
/// truncated by the kernel and rejected.
pub const MAX_FDS_PER_MESSAGE: usize = 32;

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, both close-on-exec.
///
/// SEQPACKET keeps message boundaries (one message per datagram, the
/// descriptors riding on it) and, unlike a datagram pair, reports EOF when
/// the peer closes, which is how each side learns that the other died.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends `bytes` as one message with `fds` attached. On a non-blocking socket
/// this returns `WouldBlock` when the socket is not writable; tokio callers
/// drive it through `async_io`.
pub fn send_with_fds(
    sock: &impl SendWithFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    sock.send_with_fd(bytes, &raw)
}

/// One message received by [`recv_with_fds`].
#[derive(Debug)]
pub struct Received {
    /// Bytes of payload written into the caller's buffer; 0 with no
    /// descriptors means the peer closed its end (EOF).
    pub len: usize,
    /// The descriptors that arrived, already owned and close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The payload was longer than the buffer (`MSG_TRUNC`).
    pub payload_truncated: bool,
    /// More descriptors were sent than fit (`MSG_CTRUNC`); the ones that did
    /// fit are in `fds`, the rest were closed by the kernel.
    pub control_truncated: bool,
}

/// Receives one message and the descriptors attached to it, with
/// `MSG_CMSG_CLOEXEC` so that no received descriptor can leak into a child.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * mem::size_of::<RawFd>()) as u32) };
    // u64 elements keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; (space as usize).div_ceil(mem::size_of::<u64>())];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;

    // SAFETY: msg points at `iov` (covering `buf`) and `control`, both alive
    // and of the lengths given, for the duration of the call.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg.msg_control` with well-formed control
    // headers within `msg_controllen` (which it lowered to what it wrote, also
    // when it truncated); CMSG_FIRSTHDR/CMSG_NXTHDR stay within that length.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and points at a header inside `control`.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes a size.
            let data_len = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points at `count` descriptors inside this header.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: within the header's data, see above; unaligned
                // because CMSG_DATA gives no alignment guarantee for i32.
                let raw = unsafe { data.add(i).read_unaligned() };
                // SAFETY: SCM_RIGHTS just installed `raw` in this process;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: msg and cmsg are valid, as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }

    Ok(Received {
        len: n as usize,
        fds,
        payload_truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Takes the handoff socket a worker inherited at [`HANDOFF_FD`], after
/// checking that it is an open SEQPACKET socket. Returns `None` otherwise.
///
/// # Safety
/// The caller must own descriptor [`HANDOFF_FD`]: nothing else in the process
/// may use or close it. Call once, at start-up.
pub unsafe fn take_handoff() -> Option<OwnedFd> {
    if !is_open(HANDOFF_FD) {
        return None;
    }
    // SAFETY: the descriptor is open and, per this function's contract, ours.
    let fd = unsafe { OwnedFd::from_raw_fd(HANDOFF_FD) };
    let is_seqpacket = socket2::SockRef::from(&fd)
        .r#type()
        .is_ok_and(|ty| ty == socket2::Type::SEQPACKET);
    if !is_seqpacket {
        // Give the descriptor back untouched: it is not ours to close.
        std::mem::forget(fd);
        return None;
    }
    // Close-on-exec from now on, so that nothing this worker runs inherits it.
    set_inherited(fd.as_fd(), false).ok()?;
    Some(fd)
}

/// Whether descriptor number `raw` is open (errno tells why not).
pub fn is_open(raw: RawFd) -> bool {
    // SAFETY: F_GETFD on any number is harmless; it fails on a closed one.
    unsafe { libc::fcntl(raw, libc::F_GETFD) >= 0 }
}

/// Whether `O_NONBLOCK` is set on the open file description behind `fd`.
///
/// The flag is shared by every process holding the socket, so the master sets
/// it once and workers only check it.
pub fn is_nonblocking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GETFL on a borrowed, open descriptor.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// Registers a non-blocking descriptor with the current tokio runtime, for
/// readiness (the accept path waits for a pending connection before
/// deciding whether to take it).
pub fn register_readable(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved in and owned by the `AsyncFd` for its
    // whole life: nothing else can close or replace the descriptor while it
    // is registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    registered.map_err(|e| e.into_parts().1)
}

/// Lets `fd` survive `execve` (clears close-on-exec) or not.
pub fn set_inherited(fd: BorrowedFd<'_>, inherited: bool) -> io::Result<()> {
    let flags = if inherited { 0 } else { libc::FD_CLOEXEC };
    // SAFETY: F_SETFD on a borrowed, open descriptor.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks that `fd` is a listening stream socket, TCP or Unix, and returns
/// its domain; the reason otherwise. Both the master (for sockets systemd
/// passed) and each worker (for sockets the master sent) check this.
pub fn check_listening_socket(fd: BorrowedFd<'_>) -> Result<socket2::Domain, String> {
    let sock = socket2::SockRef::from(&fd);
    let ty = sock.r#type().map_err(|e| format!("not a socket ({e})"))?;
    let domain = sock.domain().map_err(|e| e.to_string())?;
    if ty != socket2::Type::STREAM
        || ![
            socket2::Domain::IPV4,
            socket2::Domain::IPV6,
            socket2::Domain::UNIX,
        ]
        .contains(&domain)
    {
        return Err("not a TCP or Unix stream socket".into());
    }
    if !sock.is_listener().map_err(|e| e.to_string())? {
        return Err("the socket is not listening".into());
    }
    Ok(domain)
}

/// Adopts a descriptor this process inherited (from systemd's socket
/// activation), making it close-on-exec.
///
/// # Safety
/// `raw` must be a descriptor this process owns and that nothing else uses
/// or closes.
pub unsafe fn adopt_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    if !is_open(raw) {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open, and ours per this function's contract.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_inherited(fd.as_fd(), false)?;
    Ok(fd)
}
