//! Every `unsafe` operation on file descriptors in the binary lives here,
//! behind `OwnedFd` and `BorrowedFd`: adopting the descriptors systemd
//! passed, the code that runs in the child between `fork` and `exec`, the
//! master's exec into a new image. A `RawFd` never leaves this module.
//! Passing descriptors with SCM_RIGHTS and adopting the handoff socket are
//! the protocol's, in [`baton_protocol::fd`], re-exported here.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub use baton_protocol::fd::*;

/// Prepares `cmd` so that the child inherits `handoff` as [`HANDOFF_FD`] and
/// no other descriptor of ours (everything else is close-on-exec), and dies
/// with the master.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so
/// workers must be spawned from a thread that lives as long as the master.
///
/// With `identity` (uid, gid), the child drops to that user and group, with
/// no supplementary groups, before it runs anything.
pub fn prepare_child(
    cmd: &mut std::process::Command,
    handoff: BorrowedFd<'_>,
    identity: Option<(u32, u32)>,
) {
    let source = handoff.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: this runs between fork
        // and exec.
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a plain signal number.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The master may have died before PDEATHSIG was armed.
        // SAFETY: getppid has no preconditions.
        // (ESRCH, "no such process": the master. An OS error, because
        // building any other error allocates.)
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        if source == HANDOFF_FD {
            // dup2 onto itself would keep FD_CLOEXEC set: clear it instead.
            // SAFETY: source is an open descriptor owned by the parent's
            // OwnedFd, which outlives the fork.
            if unsafe { libc::fcntl(source, libc::F_SETFD, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        // SAFETY: as above; dup2 gives a new descriptor without FD_CLOEXEC.
        } else if unsafe { libc::dup2(source, HANDOFF_FD) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some((uid, gid)) = identity {
            // Groups first: after setuid there is no privilege left to
            // change them.
            // SAFETY: plain system calls on integers.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // A change of user clears the parent-death signal: arm it again,
            // and check again that the master did not die in between.
            // SAFETY: as above.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        // Close whatever else is open, including descriptors the master
        // inherited from its own parent without close-on-exec.
        // SAFETY: close_range takes plain integers; failure (an old kernel)
        // leaves only the master's close-on-exec descriptors, closed by exec.
        unsafe {
            libc::syscall(libc::SYS_close_range, HANDOFF_FD + 1, libc::c_uint::MAX, 0);
        }
        Ok(())
    };
    // SAFETY: the hook makes only async-signal-safe calls (prctl, getppid,
    // fcntl, dup2, setgroups, setgid, setuid, close_range) and allocates
    // nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, hook);
    }
}

/// Where a COMMAND finds its first listener, the systemd way (SD_LISTEN_FDS_START).
pub const FIRST_LISTEN_FD: i32 = 3;

/// Moves each descriptor to the number paired with it, without
/// close-on-exec: the listeners to 3, 4, … for a program that takes them the
/// systemd way, and a `--ready fd:N` pipe to N. Everything else stays
/// close-on-exec, so these are all the program inherits besides stdio.
pub fn place_for_exec(fds: Vec<(OwnedFd, RawFd)>) -> io::Result<()> {
    // First out of the way (a received descriptor may sit where another must
    // go), then into place; dup2 clears close-on-exec on the copy.
    let mut parked = Vec::with_capacity(fds.len());
    for (fd, target) in &fds {
        parked.push((fd.try_clone_to_owned_above(PARK_FLOOR)?, *target));
    }
    drop(fds);
    for (fd, target) in &parked {
        // SAFETY: dup2 onto a number nothing in this process owns any more
        // (the handoff socket was dropped, received descriptors were parked
        // above PARK_FLOOR and their originals closed); the new descriptor
        // is meant to outlive this process image.
        if unsafe { libc::dup2(fd.as_raw_fd(), *target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Where [`place_for_exec`] parks descriptors while it moves them.
const PARK_FLOOR: RawFd = 100;

trait DupAbove {
    fn try_clone_to_owned_above(&self, floor: RawFd) -> io::Result<OwnedFd>;
}

impl DupAbove for OwnedFd {
    fn try_clone_to_owned_above(&self, floor: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC on a borrowed, open descriptor.
        let raw = unsafe { libc::fcntl(self.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fcntl just created `raw` for us alone.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

/// Receives one datagram and the pid of the process that sent it
/// (SCM_CREDENTIALS; the socket needs SO_PASSCRED).
pub fn recv_with_pid(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<u32>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixCredentials};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut pid = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmCredentials(creds) = cmsg {
                pid = u32::try_from(creds.pid()).ok();
            }
        }
    }
    Ok((msg.bytes, pid))
}

/// Which side of [`fork_detached`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Parent,
    /// The child, in a session of its own.
    Child,
}

/// Forks a child that starts a session of its own (no terminal, no process
/// group shared with the caller). Refuses unless this process has a single
/// thread: only then may the child run ordinary code after `fork`.
pub fn fork_detached() -> io::Result<Forked> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork with {threads} threads running"
        )));
    }
    // SAFETY: the process has one thread (checked above), so the child
    // inherits no lock held by another thread.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => Ok(Forked::Parent),
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::setsid();
            Ok(Forked::Child)
        }
    }
}

/// A descriptor that refers to process `pid` (`pidfd_open`): readable once
/// the process has exited, and never confused with a later process that
/// gets the same pid. Needs Linux 5.3.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us alone; it is
    // close-on-exec (pidfd_open always sets O_CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// A duplicate of descriptor `target` of the process `pidfd` refers to
/// (`pidfd_getfd`, Linux 5.6): the same open socket, close-on-exec. Needs
/// the right to ptrace that process (a parent, same user or root, unless
/// Yama forbids it); refused with EPERM otherwise.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that
    // process and flags (0), and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us alone; it is
    // close-on-exec (pidfd_getfd always sets O_CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// What TCP says of a connection, the fields the rescue reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpState {
    /// TCP_ESTABLISHED (1), TCP_CLOSE_WAIT (8), …
    pub state: u8,
    /// Milliseconds since data was last sent.
    pub since_sent_ms: u32,
    /// Bytes arrived and not read (SIOCINQ).
    pub unread: u32,
}

/// TCP_INFO of the TCP socket `fd`.
fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    // SAFETY: a zeroed tcp_info is a valid value of the plain C struct.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // that large, on a borrowed open descriptor.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// [`TcpState`] of the TCP socket `fd`.
pub fn tcp_state(fd: BorrowedFd<'_>) -> io::Result<TcpState> {
    let info = tcp_info(fd)?;
    let mut unread: libc::c_int = 0;
    // SAFETY: SIOCINQ (FIONREAD) writes one int to the pointer given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpState {
        state: info.tcpi_state,
        since_sent_ms: info.tcpi_last_data_sent,
        unread: unread.max(0) as u32,
    })
}

/// Sets the TCP socket `fd`'s receive low-water mark (`SO_RCVLOWAT`): a
/// process waiting in poll or epoll is woken only once this many bytes
/// are unread (the kernel caps it at half the largest receive buffer).
/// Setting it lower wakes a waiting reader at once if enough is unread.
/// What `recv` returns is unchanged.
pub fn set_read_low_water(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let bytes = bytes.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: setsockopt reads one int from the pointer given, on a
    // borrowed open descriptor.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps the child `pidfd` refers to, if it has exited: its exit status,
/// `None` while it runs. Only a child of this process can be reaped.
pub fn reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    // SAFETY: siginfo_t is plain data; waitid fills it in.
    let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
    // SAFETY: waitid with P_PIDFD on a borrowed, open pidfd and a valid
    // siginfo_t to fill.
    let done = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled in a SIGCHLD siginfo, or left it zeroed.
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    // The raw wait status, as waitpid would have given it.
    let raw = match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => status | 0x80,
        _ => status,
    };
    Ok(Some(std::process::ExitStatus::from_raw(raw)))
}

/// Descriptors a previous image of this process left open across `execve`
/// for this one (see [`crate::master`]'s upgrade), by number. They stay
/// inheritable until [`HandedOver::close_way_back`], so that the previous
/// image gets them back if this one gives up.
///
/// The numbers come from the state the previous image wrote; each is taken
/// once. That is the contract that makes the functions below sound, kept by
/// the one module that reads the state.
pub struct HandedOver;

impl HandedOver {
    /// Takes descriptor `raw`.
    pub fn take(raw: RawFd) -> io::Result<OwnedFd> {
        if !is_open(raw) {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open (checked), handed to this image, taken once.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Reads the whole file behind `raw` without taking it.
    pub fn read(raw: RawFd) -> io::Result<Vec<u8>> {
        if !is_open(raw) {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open (checked) and only borrowed for the read.
        read_whole(unsafe { BorrowedFd::borrow_raw(raw) })
    }

    /// The adoption is complete: `handed` become close-on-exec, and
    /// `done` (the previous image's executable, the state) are closed.
    pub fn close_way_back(handed: &[RawFd], done: &[RawFd]) {
        for &raw in handed {
            // SAFETY: open in this image (taken by the adoption), borrowed
            // only to change its flag.
            let _ = set_inherited(unsafe { BorrowedFd::borrow_raw(raw) }, false);
        }
        for &raw in done {
            // SAFETY: these were handed to this image for the adoption only;
            // nothing else owns them.
            unsafe { libc::close(raw) };
        }
    }
}

/// Ends the process at once, running nothing (async-signal-safe).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// A sealed in-memory file holding `bytes`, to hand to the next image of
/// this process.
pub fn memfd_with(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, bytes)?;
    let fd = OwnedFd::from(file);
    nix::fcntl::fcntl(
        fd.as_fd(),
        nix::fcntl::FcntlArg::F_ADD_SEALS(
            nix::fcntl::SealFlag::F_SEAL_SHRINK
                | nix::fcntl::SealFlag::F_SEAL_GROW
                | nix::fcntl::SealFlag::F_SEAL_WRITE
                | nix::fcntl::SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// Everything in the file behind `fd`, read from its start (whatever its
/// offset), so that it can be read again by a later image.
pub fn read_whole(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = nix::sys::uio::pread(fd, &mut buf, bytes.len() as libc::off_t)?;
        if n == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// What `execve` needs, prepared beforehand: a signal handler may call
/// [`Exec::run`], which only calls `execve`/`execveat` (async-signal-safe)
/// on these pointers and allocates nothing.
pub struct Exec {
    /// The program: a path, or a descriptor of the file (`fexecve`).
    program: ExecProgram,
    _argv: Vec<std::ffi::CString>,
    _envp: Vec<std::ffi::CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

enum ExecProgram {
    Path(std::ffi::CString),
    Fd(RawFd),
}

// SAFETY: the pointers point into the CStrings owned alongside them, which
// are never changed; the value is only read.
unsafe impl Send for Exec {}
// SAFETY: as above.
unsafe impl Sync for Exec {}

impl Exec {
    /// `path` with `argv` and `env`.
    pub fn path(
        path: &std::path::Path,
        argv: &[std::ffi::OsString],
        env: &[(std::ffi::OsString, std::ffi::OsString)],
    ) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        Self::build(ExecProgram::Path(path), argv, env)
    }

    /// The file open at `program` (which must survive the exec: it is the
    /// caller's to keep open), with `argv` and `env`.
    pub fn fd(
        program: RawFd,
        argv: &[std::ffi::OsString],
        env: &[(std::ffi::OsString, std::ffi::OsString)],
    ) -> io::Result<Self> {
        Self::build(ExecProgram::Fd(program), argv, env)
    }

    fn build(
        program: ExecProgram,
        argv: &[std::ffi::OsString],
        env: &[(std::ffi::OsString, std::ffi::OsString)],
    ) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let argv: Vec<std::ffi::CString> = argv
            .iter()
            .map(|a| std::ffi::CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let envp: Vec<std::ffi::CString> = env
            .iter()
            .map(|(k, v)| {
                let mut pair = k.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(v.as_bytes());
                std::ffi::CString::new(pair)
            })
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(Exec {
            program,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        })
    }

    /// Replaces this process image. Returns only if that failed, with why.
    /// Async-signal-safe.
    pub fn run(&self) -> io::Error {
        let (argv, envp) = (self.argv_ptrs.as_ptr(), self.envp_ptrs.as_ptr());
        match &self.program {
            ExecProgram::Path(path) => {
                // SAFETY: argv and envp are NULL-terminated arrays of
                // pointers to NUL-terminated strings owned by `self`, alive
                // for this call.
                unsafe { libc::execve(path.as_ptr(), argv, envp) };
            }
            ExecProgram::Fd(fd) => {
                let (argv, envp) = (argv.cast(), envp.cast());
                // SAFETY: as above; `fd` is the caller's, open.
                unsafe { libc::execveat(*fd, c"".as_ptr(), argv, envp, libc::AT_EMPTY_PATH) };
            }
        }
        io::Error::last_os_error()
    }
}

/// Arms (`Some`) or cancels (`None`) a SIGALRM after `after`. The timer
/// survives `execve`: the next image of this process gets the signal if it
/// does not cancel it in time.
pub fn alarm(after: Option<std::time::Duration>) {
    let secs = after.map_or(0, |d| d.as_secs().max(1) as libc::c_uint);
    // SAFETY: alarm takes a plain number.
    unsafe {
        libc::alarm(secs);
    }
}

/// Runs `handler` (an `extern "C" fn(c_int)`) on each of `signals`, or
/// restores their default action when `handler` is `None`.
pub fn set_fatal_handler(signals: &[libc::c_int], handler: Option<extern "C" fn(libc::c_int)>) {
    for &signal in signals {
        // SAFETY: sigaction with a zeroed struct, an empty mask, and either
        // SIG_DFL or a handler the caller vouches is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = mem::zeroed();
            action.sa_sigaction = handler.map_or(libc::SIG_DFL, |h| h as usize);
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_NODEFER | libc::SA_RESETHAND;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// What TCP_INFO tells of a TCP socket that is, or was, listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpListenInfo {
    /// In the LISTEN state (a `shutdown()` leaves it CLOSE).
    pub listening: bool,
    /// The accept queue's length limit, as `listen()` last set it.
    pub backlog: u32,
    /// Connections waiting in the accept queue now.
    pub queued: u32,
}

/// Reads TCP_INFO of the TCP socket `fd`. For a listener the kernel puts
/// the backlog where a connection's SACKed count would be and the queue's
/// length in place of its unacknowledged count (`tcp_get_info`): one
/// `getsockopt`, where `ss` needs a netlink dump of every socket.
pub fn tcp_listen_info(fd: BorrowedFd<'_>) -> io::Result<TcpListenInfo> {
    // tcp_states.h
    const TCP_LISTEN: u8 = 10;
    let info = tcp_info(fd)?;
    Ok(TcpListenInfo {
        listening: info.tcpi_state == TCP_LISTEN,
        backlog: info.tcpi_sacked,
        queued: info.tcpi_unacked,
    })
}

/// Whether the socket `fd` has been shut down for reading (`shutdown()`
/// with SHUT_RD or SHUT_RDWR, by this process or any other holding it):
/// `poll` asking for nothing still reports hang-ups.
pub fn is_shut_down(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll on one pollfd that lives across the call, timeout 0.
    let rc = unsafe { libc::poll(&mut pollfd, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pollfd.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0)
}

/// An epoll set that wakes its owner when a socket in it hangs up (a
/// listener shut down by any process holding it), and never for anything
/// else: the sockets are added asking for no event but EPOLLRDHUP, so the
/// wake-ups a listener sends for each new connection (keyed EPOLLIN) are
/// filtered out in the kernel and cost the owner nothing. Each socket is
/// one-shot: after it was reported, [`HangupWatch::arm`] it again once it
/// listens again.
#[derive(Debug)]
pub struct HangupWatch {
    epoll: tokio::io::unix::AsyncFd<EpollFd>,
}

#[derive(Debug)]
struct EpollFd(nix::sys::epoll::Epoll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

impl HangupWatch {
    /// An empty watch, registered with the current tokio runtime.
    pub fn new() -> io::Result<Self> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags};
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // SAFETY: the epoll descriptor is moved in and owned by the
        // `AsyncFd` for its whole life: nothing else can close or replace
        // it while it is registered.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                EpollFd(epoll),
                tokio::io::Interest::READABLE,
            )
        };
        Ok(HangupWatch {
            epoll: registered.map_err(|e| e.into_parts().1)?,
        })
    }

    fn event(token: u64) -> nix::sys::epoll::EpollEvent {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        EpollEvent::new(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT, token)
    }

    /// Watches `fd` for a hang-up, reported with `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        Ok(self.epoll.get_ref().0.add(fd, Self::event(token))?)
    }

    /// Watches `fd`, already added, again after it was reported.
    pub fn arm(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut event = Self::event(token);
        Ok(self.epoll.get_ref().0.modify(fd, &mut event)?)
    }

    /// Waits until at least one socket hung up; their tokens.
    pub async fn hung_up(&self) -> io::Result<Vec<u64>> {
        use nix::sys::epoll::{EpollEvent, EpollTimeout};
        loop {
            let mut guard = self.epoll.readable().await?;
            let mut events = [EpollEvent::empty(); 16];
            let n = guard.get_inner().0.wait(&mut events, EpollTimeout::ZERO)?;
            if n == 0 {
                guard.clear_ready();
                continue;
            }
            return Ok(events[..n].iter().map(EpollEvent::data).collect());
        }
    }
}

/// Installs the seccomp filter `program` on this process (every thread),
/// kept across `execve` by its children and itself. Without privileges the
/// kernel requires `no_new_privs` first (set-user-ID programs then no
/// longer gain privileges): with `allow_no_new_privs` it is set when it is
/// needed; without, such a process gets EACCES.
pub fn install_seccomp(program: &[libc::sock_filter], allow_no_new_privs: bool) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| io::Error::other("filter too long"))?,
        // The kernel only reads the program.
        filter: program.as_ptr().cast_mut(),
    };
    let install = || {
        // SAFETY: seccomp(2) reads `prog` and the instructions it points
        // to, which outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_TSYNC,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    match install() {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) && allow_no_new_privs => {
            // SAFETY: prctl with plain numbers.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            install()
        }
        other => other,
    }
}
