//! The listen backlog stays what the operator set.
//!
//! Every worker holds the same listening socket, and many servers call
//! `listen()` again on the socket they are given (Node with 511, uvicorn
//! with 2048, hypercorn with 100), which changes the backlog for every
//! process sharing it: `--backlog 1024` silently stops being true, and a
//! backlog of 100 refuses or delays connections during a restart gap. The
//! master reads each TCP listener's backlog back from the kernel (sock_diag,
//! as `ss` does: a listener's send queue is its backlog) after every worker
//! becomes ready, and sets it again with `listen()`, which on a listening
//! socket changes only the backlog and keeps the queue.
//!
//! Unix listeners are not read back (their diag interface differs); they
//! are set again all the same.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;

use nix::sys::socket::{listen, socket, AddressFamily, Backlog, SockFlag, SockProtocol, SockType};

/// netlink's sock_diag request type and flags (linux/sock_diag.h,
/// linux/netlink.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HEADER: usize = 16;
const TCP_LISTEN: u32 = 10;

/// The backlog the kernel holds for the TCP listening socket `fd`, or
/// `None` for a socket that is not TCP (or that sock_diag does not list).
pub fn read(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    let local = socket2::SockRef::from(&fd).local_addr()?;
    let family = match local.family() as i32 {
        libc::AF_INET => libc::AF_INET as u8,
        libc::AF_INET6 => libc::AF_INET6 as u8,
        _ => return Ok(None),
    };
    let inode = nix::sys::stat::fstat(fd)?.st_ino as u32;
    // A netlink socket that is not bound sends to the kernel.
    let mut diag = std::fs::File::from(socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?);
    diag.write_all(&request(family))?;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let len = diag.read(&mut buf)?;
        if len == 0 {
            return Ok(None);
        }
        match find(&buf[..len], inode) {
            Found::Backlog(backlog) => return Ok(Some(backlog)),
            Found::Done => return Ok(None),
            Found::NotYet => {}
        }
    }
}

/// Sets the backlog of listening socket `fd` again.
pub fn restore(fd: BorrowedFd<'_>, backlog: u32) -> io::Result<()> {
    let backlog = Backlog::new(backlog.min(i32::MAX as u32) as i32)?;
    listen(&fd, backlog)?;
    Ok(())
}

/// A dump request for every listening TCP socket of `family`.
fn request(family: u8) -> Vec<u8> {
    let mut msg = Vec::with_capacity(72);
    // nlmsghdr: length, type, flags, sequence, port id.
    msg.extend_from_slice(&72u32.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, extensions, pad, states, then a
    // zeroed socket id (48 bytes): every socket in those states.
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    msg.resize(72, 0);
    msg
}

enum Found {
    Backlog(u32),
    Done,
    NotYet,
}

/// Looks through one datagram of netlink messages for the socket `inode`.
fn find(mut datagram: &[u8], inode: u32) -> Found {
    let u32_at = |bytes: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    while datagram.len() >= NLMSG_HEADER {
        let Some(len) = u32_at(datagram, 0).map(|l| l as usize) else {
            return Found::Done;
        };
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        if len < NLMSG_HEADER || len > datagram.len() || kind == NLMSG_DONE || kind == NLMSG_ERROR {
            return Found::Done;
        }
        // inet_diag_msg: 4 bytes, the 48-byte id, expires, rqueue, wqueue,
        // uid, inode. A listener's wqueue is its backlog.
        let body = &datagram[NLMSG_HEADER..len];
        if u32_at(body, 68) == Some(inode) {
            if let Some(backlog) = u32_at(body, 60) {
                return Found::Backlog(backlog);
            }
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        datagram = datagram.get(next..).unwrap_or_default();
    }
    Found::NotYet
}
