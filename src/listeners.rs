//! The listening sockets: bound once by the master (or inherited from
//! systemd) and kept for its whole life, so that a connection made while no
//! worker accepts waits in the kernel's queue instead of being refused. Every
//! worker receives these very sockets; nothing ever binds a second one,
//! since closing a socket drops its accept queue (the classic source of
//! resets during reloads).
//!
//! With socket activation the rule is: every inherited listener is served.
//! A `--listen NAME=ADDR` whose NAME is an inherited listener's is satisfied
//! by that socket (the addresses must agree) and nothing is bound for it;
//! any other `--listen` is bound in addition. So one configuration works
//! both with and without systemd.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::config::{name_listeners, ListenAddr, ListenSpec};
use crate::error::{BindError, ListenError};

/// One bound, listening, non-blocking socket and the name workers know it by.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    /// The address actually bound (port 0 resolved).
    pub local_addr: ListenAddr,
    /// Whether systemd passed it (rather than baton binding it).
    pub inherited: bool,
    /// The listen backlog to keep (see [`crate::listen_state`]): `--backlog` for
    /// the TCP listeners baton binds, what systemd set for inherited ones;
    /// `None` where it cannot be read back (Unix sockets).
    pub backlog: Option<u32>,
    fd: OwnedFd,
    /// The socket file baton created: held only to be removed with the
    /// listener.
    _created: Option<SocketFile>,
}

/// A socket file baton created; removed on drop if it is still the same
/// file (another process may have replaced it since).
#[derive(Debug)]
pub struct SocketFile(SocketFileId);

/// Names a [`SocketFile`] without owning it (nothing is removed when it is
/// dropped): how `baton upgrade` hands one to the next image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SocketFileId {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// A listener as the next image of the master gets it: its descriptor's
/// number there, and what [`ListenerSet`] knew of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HandedListener {
    pub fd: std::os::fd::RawFd,
    pub name: String,
    pub inherited: bool,
    pub backlog: Option<u32>,
    pub file: Option<SocketFileId>,
}

impl SocketFile {
    pub fn id(&self) -> SocketFileId {
        self.0.clone()
    }

    /// Owns the file `id` names from now on (removed on drop).
    pub fn from_id(id: SocketFileId) -> Self {
        SocketFile(id)
    }

    fn record(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile(SocketFileId {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        }))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let SocketFileId { path, dev, ino } = &self.0;
        let same =
            std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino);
        if same {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Makes way for a new Unix socket at `path`: a socket file nothing answers
/// on (left by a crash) is removed; a live one is `AddrInUse`; anything that
/// is not a socket is left alone and refused.
pub fn clear_stale_socket(path: &Path) -> std::io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; remove it or choose another path",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(std::io::Error::from(std::io::ErrorKind::AddrInUse)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Binds a Unix socket only this user may connect to (mode 0600), for the
/// control socket.
pub fn bind_private_socket(
    path: &Path,
) -> std::io::Result<(std::os::unix::net::UnixListener, SocketFile)> {
    clear_stale_socket(path)?;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    let file = SocketFile::record(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok((listener, file))
}

impl Listener {
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The master's listeners: inherited ones first, then the ones bound.
#[derive(Debug)]
pub struct ListenerSet {
    listeners: Vec<Listener>,
}

/// How to bind the listeners baton creates itself.
#[derive(Debug, Clone, Copy)]
pub struct BindOptions {
    pub backlog: u32,
    /// Permissions of Unix socket files baton creates.
    pub unix_mode: Option<u32>,
}

impl ListenerSet {
    /// Takes the inherited listeners and binds the rest of `specs`, by the
    /// rule in the module docs.
    pub fn open(
        inherited: Vec<(String, OwnedFd)>,
        specs: &[ListenSpec],
        options: BindOptions,
    ) -> Result<Self, ListenError> {
        let mut listeners = Vec::with_capacity(inherited.len() + specs.len());
        for (name, fd) in inherited {
            listeners.push(adopt(name, fd)?);
        }
        let inherited_names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
        let mut to_bind = Vec::new();
        for spec in specs {
            let Some(name) = &spec.name else {
                // An address systemd passed a socket for (from a socket
                // unit, or back from its descriptor store) is that socket:
                // binding it again could only fail.
                if !listeners
                    .iter()
                    .any(|l| same_address(&spec.addr, &l.local_addr))
                {
                    to_bind.push(spec.clone());
                }
                continue;
            };
            match listeners.iter().find(|l| &l.name == name) {
                Some(listener) if agrees(&spec.addr, &listener.local_addr) => {}
                Some(listener) => {
                    return Err(ListenError::Mismatch {
                        name: name.clone(),
                        inherited: listener.local_addr.to_string(),
                        given: spec.addr.to_string(),
                    })
                }
                None => to_bind.push(spec.clone()),
            }
        }
        let named = name_listeners(&to_bind, &inherited_names, listeners.is_empty())
            .map_err(ListenError::Config)?;
        for spec in named {
            listeners.push(bind(spec.name, &spec.addr, options)?);
        }
        Ok(ListenerSet { listeners })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter()
    }

    /// Describes every listener for the next image of the master, `keep`
    /// giving the number each descriptor has there.
    pub fn hand_over(
        &self,
        mut keep: impl FnMut(BorrowedFd<'_>) -> std::io::Result<std::os::fd::RawFd>,
    ) -> std::io::Result<Vec<HandedListener>> {
        self.listeners
            .iter()
            .map(|l| {
                Ok(HandedListener {
                    fd: keep(l.as_fd())?,
                    name: l.name.clone(),
                    inherited: l.inherited,
                    backlog: l.backlog,
                    file: l._created.as_ref().map(SocketFile::id),
                })
            })
            .collect()
    }

    /// The listeners a previous image of the master handed over, each with
    /// its descriptor.
    pub fn adopt_handed(handed: Vec<(HandedListener, OwnedFd)>) -> Result<Self, ListenError> {
        let mut listeners = Vec::with_capacity(handed.len());
        for (handed, fd) in handed {
            let mut listener = adopt(handed.name, fd)?;
            listener.inherited = handed.inherited;
            listener.backlog = handed.backlog;
            listener._created = handed.file.map(SocketFile::from_id);
            listeners.push(listener);
        }
        Ok(ListenerSet { listeners })
    }

    pub fn names(&self) -> Vec<String> {
        self.listeners.iter().map(|l| l.name.clone()).collect()
    }

    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.listeners.iter().map(Listener::as_fd).collect()
    }

    /// How /proc shows each listener, to recognise it in a worker's
    /// descriptor table.
    pub fn ids(&self) -> Vec<crate::procfs::ListenerId> {
        self.listeners
            .iter()
            .map(|l| crate::procfs::ListenerId {
                inode: nix::sys::stat::fstat(l.as_fd()).map_or(0, |st| st.st_ino),
                tcp: match l.local_addr {
                    ListenAddr::Tcp(addr) => Some(addr),
                    ListenAddr::Unix(_) => None,
                },
            })
            .collect()
    }

    /// Reads every listener's state back from the kernel and puts right
    /// what a worker changed: listens again on a socket that was shut down,
    /// sets the backlog back. Returns what it found wrong.
    pub fn keep_listening(&self) -> Vec<Repair> {
        self.listeners.iter().filter_map(Listener::repair).collect()
    }
}

impl Listener {
    /// Whether the kernel says it listens (false if that cannot be read).
    pub fn is_listening(&self) -> bool {
        crate::listen_state::read(self.as_fd()).is_ok_and(|state| state.listening)
    }

    /// What is wrong with this listener, put right (see
    /// [`ListenerSet::keep_listening`]); `None` if nothing is.
    fn repair(&self) -> Option<Repair> {
        // Reading fails only for a descriptor that is not a socket, which
        // the master's own never stops being.
        let state = crate::listen_state::read(self.as_fd()).ok()?;
        let fault = if !state.listening {
            ListenerFault::ShutDown
        } else {
            match (state.backlog, self.backlog) {
                (Some(found), Some(wanted)) if found != wanted => {
                    ListenerFault::Backlog { found, wanted }
                }
                _ => return None,
            }
        };
        let result = match (&fault, &self.local_addr) {
            (ListenerFault::ShutDown, ListenAddr::Unix(_)) => Err(std::io::Error::other(
                "a Unix listener that was shut down cannot listen again; restart baton (systemctl restart keeps a socket unit's listener)",
            )),
            (ListenerFault::ShutDown, ListenAddr::Tcp(_)) => self.listen_again(),
            (_, _) => crate::listen_state::relisten(self.as_fd(), self.backlog.unwrap_or(1024)),
        };
        Some(Repair {
            listener: self.name.clone(),
            fault,
            result,
        })
    }

    /// Listens again on this TCP socket after a `shutdown()`, on the very
    /// address it had.
    fn listen_again(&self) -> std::io::Result<()> {
        crate::listen_state::relisten(self.as_fd(), self.backlog.unwrap_or(1024))?;
        let now = SockRef::from(&self.fd).local_addr()?;
        if listen_addr_of(&now).as_ref() != Some(&self.local_addr) {
            return Err(std::io::Error::other(format!(
                "the socket listens again but at {:?}, not at {}: the kernel gave its port away; restart baton",
                now.as_socket(),
                self.local_addr
            )));
        }
        Ok(())
    }
}

/// A listener a worker changed, and whether it was put right.
#[derive(Debug)]
pub struct Repair {
    pub listener: String,
    pub fault: ListenerFault,
    pub result: std::io::Result<()>,
}

/// What a worker did to a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerFault {
    /// It stopped listening (`shutdown()`): connections were refused and
    /// those waiting in its queue reset.
    ShutDown,
    /// It has another backlog (`listen()` again).
    Backlog { found: u32, wanted: u32 },
}

/// Whether `--listen` address `given` describes the inherited socket at
/// `actual` (port 0 matches any port).
/// `given` names exactly the address `actual` is bound to (port 0 names
/// none).
fn same_address(given: &ListenAddr, actual: &ListenAddr) -> bool {
    match (given, actual) {
        (ListenAddr::Tcp(given), ListenAddr::Tcp(actual)) => given.port() != 0 && given == actual,
        (ListenAddr::Unix(given), ListenAddr::Unix(actual)) => given == actual,
        _ => false,
    }
}

fn agrees(given: &ListenAddr, actual: &ListenAddr) -> bool {
    match (given, actual) {
        (ListenAddr::Tcp(given), ListenAddr::Tcp(actual)) => {
            given.ip() == actual.ip() && (given.port() == 0 || given.port() == actual.port())
        }
        (ListenAddr::Unix(given), ListenAddr::Unix(actual)) => given == actual,
        _ => false,
    }
}

pub use baton_protocol::fd::check_listening_socket;

/// Adopts an inherited descriptor: a listening stream socket, TCP or Unix.
fn adopt(name: String, fd: OwnedFd) -> Result<Listener, ListenError> {
    let bad = |reason: String| ListenError::Inherited {
        name: name.clone(),
        reason,
    };
    check_listening_socket(fd.as_fd()).map_err(bad)?;
    let sock = SockRef::from(&fd);
    let local = sock.local_addr().map_err(|e| bad(e.to_string()))?;
    let local_addr =
        listen_addr_of(&local).ok_or_else(|| bad("the socket has no address".into()))?;
    // O_NONBLOCK is shared by every process holding the socket: set it once,
    // here, never in a worker.
    sock.set_nonblocking(true).map_err(|e| bad(e.to_string()))?;
    Ok(Listener {
        name,
        local_addr,
        inherited: true,
        backlog: crate::listen_state::read(fd.as_fd())
            .ok()
            .and_then(|state| state.backlog),
        fd,
        _created: None,
    })
}

fn listen_addr_of(addr: &SockAddr) -> Option<ListenAddr> {
    if let Some(addr) = addr.as_socket() {
        return Some(ListenAddr::Tcp(addr));
    }
    addr.as_pathname().map(|p| ListenAddr::Unix(p.to_owned()))
}

fn bind(name: String, addr: &ListenAddr, options: BindOptions) -> Result<Listener, ListenError> {
    match addr {
        ListenAddr::Tcp(addr) => bind_tcp(name, *addr, options.backlog).map_err(ListenError::Bind),
        ListenAddr::Unix(path) => bind_unix(name, path, options),
    }
}

fn bind_tcp(name: String, addr: SocketAddr, backlog: u32) -> Result<Listener, BindError> {
    let fail = |e| BindError::new(ListenAddr::Tcp(addr), e);
    // socket2 creates the socket close-on-exec.
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    // A port the kernel picks is given back when a worker shuts the socket
    // down, and `listen()` again would pick another: bind the port picked
    // explicitly, so that the kernel keeps it (see `crate::listen_state`).
    let (addr, _probe) = match addr.port() {
        0 => pick_port(addr).map_err(fail)?,
        _ => (addr, None),
    };
    socket.bind(&addr.into()).map_err(fail)?;
    let local = socket.local_addr().map_err(fail)?;
    let listener = listen(socket, backlog).map_err(fail)?;
    Ok(Listener {
        name,
        local_addr: ListenAddr::Tcp(local.as_socket().expect("a TCP socket has an IP address")),
        inherited: false,
        backlog: Some(backlog),
        fd: listener,
        _created: None,
    })
}

/// A free port at `addr`'s IP, and the socket that holds it (bound with
/// SO_REUSEADDR, as the listener is, but not listening) until the listener
/// has bound it too, so that nothing else takes it in between.
fn pick_port(addr: SocketAddr) -> std::io::Result<(SocketAddr, Option<Socket>)> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())?;
    let picked = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("no IP address"))?;
    Ok((picked, Some(probe)))
}

/// Binds a Unix socket at `path`. A socket file already there is replaced
/// only when nothing answers on it (a stale file left by a crash); a live one
/// is "in use", and anything that is not a socket is left alone.
fn bind_unix(name: String, path: &Path, options: BindOptions) -> Result<Listener, ListenError> {
    let addr = ListenAddr::Unix(path.to_owned());
    let fail = |e| ListenError::Bind(BindError::new(addr.clone(), e));
    clear_stale_socket(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ListenError::Config(e.to_string()),
        _ => fail(e),
    })?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
    socket
        .bind(&SockAddr::unix(path).map_err(fail)?)
        .map_err(fail)?;
    let created = SocketFile::record(path).map_err(fail)?;
    if let Some(mode) = options.unix_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    }
    let fd = listen(socket, options.backlog).map_err(fail)?;
    Ok(Listener {
        name,
        local_addr: addr,
        inherited: false,
        backlog: None,
        fd,
        _created: Some(created),
    })
}

fn listen(socket: Socket, backlog: u32) -> std::io::Result<OwnedFd> {
    // std and tokio use 128, after which connections made during a gap wait
    // seconds on SYN retransmits.
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    // O_NONBLOCK lives on the open file description that every worker shares:
    // set it once, here, and never from a worker.
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
