//! Reading the process tree from /proc: the check picks workers to kill and
//! measures the master's memory, and the tests inspect what baton started.

use std::fs;
use std::io;
use std::net::SocketAddr;

use nix::libc;

/// A process's state letter and parent pid, or `None` if it is gone.
pub fn stat(pid: u32) -> Option<(char, u32)> {
    read_stat(pid).map(|stat| (stat.state, stat.ppid))
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
pub fn has_exited(pid: u32) -> bool {
    read_stat(pid).is_none_or(|stat| !stat.is_live())
}

/// What the master needs of `/proc/PID/stat`.
struct Stat {
    state: char,
    ppid: u32,
    pgrp: u32,
    /// User and system time, in clock ticks.
    cpu_ticks: (u64, u64),
}

impl Stat {
    fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields resume after the last ')'
    // with the state (field 3); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = text
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .take(13)
        .collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: number(1)? as u32,
        pgrp: number(2)? as u32,
        cpu_ticks: (number(11)?, number(12)?),
    })
}

/// The user and system CPU time `pid` has spent, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    Some(read_stat(pid)?.cpu_ticks)
}

/// The live processes in process group `pgid`, with their stat.
fn group(pgid: u32) -> Vec<(u32, Stat)> {
    pids()
        .into_iter()
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .filter(|(_, stat)| stat.pgrp == pgid && stat.is_live())
        .collect()
}

/// Every process's pid.
fn pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// Whether `pid` is `ancestor` or one of its descendants (a few generations
/// deep).
pub fn is_self_or_descendant(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..8 {
        if current == ancestor {
            return true;
        }
        match stat(current) {
            Some((_, parent)) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

/// Live (not zombie) processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    group(pgid).into_iter().map(|(pid, _)| pid).collect()
}

/// Children of `parent`, each with its state letter (`Z` for a zombie).
pub fn children(parent: u32) -> Vec<(u32, char)> {
    child_pids(parent)
        .into_iter()
        .filter_map(|pid| {
            let (state, ppid) = stat(pid)?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

/// The pids of `parent`'s children, zombies included: read from each of its
/// threads' `children` list, which costs a read per thread where a scan of
/// every process's stat costs one per process on the machine (the master
/// looks at every SIGCHLD: 64 workers replaced made that quadratic). Where
/// the kernel lacks the list, every process is a candidate and the caller's
/// check of the parent decides. The list may miss a child that starts or
/// exits while it is read (proc(5)); the callers look again at the next
/// SIGCHLD.
pub fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(threads) = fs::read_dir(format!("/proc/{parent}/task")) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for thread in threads.flatten() {
        let Ok(list) = fs::read_to_string(thread.path().join("children")) else {
            return self::pids();
        };
        pids.extend(
            list.split_whitespace()
                .filter_map(|pid| pid.parse::<u32>().ok()),
        );
    }
    pids
}

/// The master's live children that are workers: all but the rescuer.
pub fn live_workers(master: u32) -> Vec<u32> {
    live_children(master)
        .into_iter()
        .filter(|&pid| !is_rescuer(pid))
        .collect()
}

/// Whether `pid` runs `baton rescuer` (see [`crate::rescue`]).
fn is_rescuer(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|line| line.split(|&b| b == 0).nth(1) == Some(b"rescuer".as_slice()))
}

/// Live (not zombie) children of `parent`.
pub fn live_children(parent: u32) -> Vec<u32> {
    children(parent)
        .into_iter()
        .filter(|&(_, state)| state != 'Z' && state != 'X')
        .map(|(pid, _)| pid)
        .collect()
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What a worker's processes use: the sum over its process group.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub rss_bytes: u64,
    /// User and system CPU time since each process started.
    pub cpu_s: f64,
}

/// The resident memory and CPU time of the live processes in group `pgid`
/// (a worker and what it started).
pub fn group_usage(pgid: u32) -> Usage {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64;
    let mut usage = Usage::default();
    for (pid, stat) in group(pgid) {
        usage.rss_bytes += rss_bytes(pid).unwrap_or(0);
        let (user, system) = stat.cpu_ticks;
        usage.cpu_s += (user + system) as f64 / ticks;
    }
    usage
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A listening socket as /proc shows it: its inode (`socket:[INODE]` in a
/// process's descriptor table) and, for TCP, its local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerId {
    pub inode: u64,
    pub tcp: Option<std::net::SocketAddr>,
}

/// Whether the process tree under `root` (it and its descendants) is
/// serving `listeners`: each listener is waited on by some process of the
/// tree (registered in an epoll set, or a thread blocked in accept, poll or
/// select on it, whatever its descriptor number there), or the tree holds a
/// connection accepted from one of them (a busy worker is serving, even if
/// it is never caught waiting; looked up only with `connections`, as it
/// reads the host's TCP tables).
pub fn tree_serves(root: u32, listeners: &[ListenerId], connections: bool) -> bool {
    let tree = tree_sockets(root, listeners);
    tree.waits || (connections && tree.holding(&accepted_inodes(listeners)) > 0)
}

/// What a process tree does with sockets: whether it waits on every one of
/// some listeners, and the sockets it holds.
pub struct TreeSockets {
    pub waits: bool,
    pub held: Vec<u64>,
}

impl TreeSockets {
    /// How many of `inodes` the tree holds.
    pub fn holding(&self, inodes: &[u64]) -> usize {
        inodes
            .iter()
            .filter(|inode| self.held.contains(inode))
            .count()
    }
}

/// `root`'s tree's sockets, and whether it waits on every one of
/// `listeners`.
pub fn tree_sockets(root: u32, listeners: &[ListenerId]) -> TreeSockets {
    let tree: Vec<Sockets> = descendants_and_self(root)
        .into_iter()
        .map(Sockets::of)
        .collect();
    TreeSockets {
        waits: listeners
            .iter()
            .all(|l| tree.iter().any(|p| p.waited.contains(&l.inode))),
        held: tree.into_iter().flat_map(|p| p.held).collect(),
    }
}

/// What the listening probe sees in `root`'s tree, for the message of a
/// worker that is not ready in time: how many processes, how many hold
/// every listener, how many wait on every listener.
pub fn describe_tree(root: u32, listeners: &[ListenerId]) -> String {
    let tree: Vec<Sockets> = descendants_and_self(root)
        .into_iter()
        .map(Sockets::of)
        .collect();
    let every = |inodes: &Vec<u64>| listeners.iter().all(|l| inodes.contains(&l.inode));
    let holding = tree.iter().filter(|p| every(&p.held)).count();
    let waiting = tree.iter().filter(|p| every(&p.waited)).count();
    let hidden = tree.iter().filter(|p| p.hidden).count();
    let mut text = format!(
        "its tree has {} processes, {holding} holding every listener, {waiting} waiting on them",
        tree.len()
    );
    if hidden > 0 {
        text.push_str(&format!(
            "; baton cannot read the descriptors of {hidden} of them (another user's: it needs \
             CAP_SYS_PTRACE to see them, which a container drops unless given \
             `--cap-add SYS_PTRACE`; or use a --ready that does not look: notify, fd:N or delay:DUR)"
        ));
    }
    text
}

/// One process's sockets, as inodes: those it holds, and those it waits on
/// (in an epoll set, or blocked in accept, poll or select).
struct Sockets {
    held: Vec<u64>,
    waited: Vec<u64>,
    /// Its descriptors cannot be read (`EACCES`).
    hidden: bool,
}

impl Sockets {
    fn of(pid: u32) -> Self {
        let read = read_socket_fds(pid);
        let hidden = matches!(&read, Err(e) if e.kind() == io::ErrorKind::PermissionDenied);
        let sockets = read.unwrap_or_default();
        let inode_of = |fd: i32| sockets.iter().find(|&&(f, _)| f == fd).map(|&(_, i)| i);
        let mut waited: Vec<u64> = epoll_interests(pid)
            .into_iter()
            .filter_map(inode_of)
            .collect();
        waited.extend(blocked_on(pid).into_iter().filter_map(inode_of));
        Sockets {
            held: sockets.iter().map(|&(_, inode)| inode).collect(),
            waited,
            hidden,
        }
    }
}

/// `root` and every process below it.
///
/// Walks `/proc/PID/task/TID/children` from `root`, which costs as many
/// reads as the tree has processes; a kernel without those files is scanned
/// whole (every process's stat), which on a busy host costs far more.
pub fn descendants_and_self(root: u32) -> Vec<u32> {
    match children_files_tree(root) {
        Some(tree) => tree,
        None => scanned_tree(root),
    }
}

fn children_files_tree(root: u32) -> Option<Vec<u32>> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let pid = tree[i];
        i += 1;
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            // Gone meanwhile: it has no children left to find.
            continue;
        };
        for task in tasks.flatten() {
            match fs::read_to_string(task.path().join("children")) {
                Ok(text) => tree.extend(
                    text.split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && pid == root => return None,
                Err(_) => {}
            }
        }
    }
    Some(tree)
}

fn scanned_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?.1)))
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, p)| p == parent)
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    tree
}

/// Whether this process may read the descriptors of another user's
/// processes and copy them (`CAP_SYS_PTRACE` in its effective set, as
/// /proc/self/status shows).
pub fn may_trace_other_users() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// `pid`'s descriptors that are sockets, with their inodes; none if they
/// cannot be read.
pub fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    read_socket_fds(pid).unwrap_or_default()
}

/// `pid`'s descriptors that are sockets, with their inodes: `ENOENT` once
/// it is gone, `EACCES` if it hides them from this process (another
/// user's, or one that made itself non-dumpable).
pub fn read_socket_fds(pid: u32) -> io::Result<Vec<(i32, u64)>> {
    read_socket_fds_and_event_loop(pid).map(|(sockets, _)| sockets)
}

/// [`read_socket_fds`], and whether `pid` holds an epoll instance: an
/// event loop, which reads a connection when told it is readable.
pub fn read_socket_fds_and_event_loop(pid: u32) -> io::Result<(Vec<(i32, u64)>, bool)> {
    let mut sockets = Vec::new();
    let mut event_loop = false;
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // The directory lists even a hidden process's descriptors; what
        // each names is what it hides.
        let target = match fs::read_link(entry.path()) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(e),
            // Closed since the listing.
            Err(_) => continue,
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
        if let Some(inode) = inode {
            sockets.push((fd, inode));
        } else if target.as_os_str() == "anon_inode:[eventpoll]" {
            event_loop = true;
        }
    }
    Ok((sockets, event_loop))
}

/// The system calls a thread waiting for connections blocks in, by this
/// architecture's numbers (as /proc/PID/task/TID/syscall gives them).
/// Architectures without `poll` and `select` (aarch64) have only the `p`
/// forms, whose first arguments are the same.
const ACCEPT: &[i64] = &[libc::SYS_accept, libc::SYS_accept4];
#[cfg(target_arch = "x86_64")]
const POLL: &[i64] = &[libc::SYS_poll, libc::SYS_ppoll];
#[cfg(not(target_arch = "x86_64"))]
const POLL: &[i64] = &[libc::SYS_ppoll];
#[cfg(target_arch = "x86_64")]
const SELECT: &[i64] = &[libc::SYS_select, libc::SYS_pselect6];
#[cfg(not(target_arch = "x86_64"))]
const SELECT: &[i64] = &[libc::SYS_pselect6];

/// The descriptors `pid`'s threads are blocked on in accept, poll or
/// select. poll's and select's descriptor sets are read from the process's
/// memory.
fn blocked_on(pid: u32) -> Vec<i32> {
    let mut fds = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return fds;
    };
    for task in tasks.flatten() {
        let Ok(syscall) = fs::read_to_string(task.path().join("syscall")) else {
            continue;
        };
        let mut fields = syscall.split_whitespace();
        let Some(number) = fields.next().and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let args: Vec<u64> = fields
            .take(3)
            .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .collect();
        let (Some(&a0), Some(&a1)) = (args.first(), args.get(1)) else {
            continue;
        };
        if ACCEPT.contains(&number) {
            fds.push(a0 as i32);
        } else if POLL.contains(&number) {
            // struct pollfd { int fd; short events; short revents; }
            let count = a1.min(1024) as usize;
            if let Some(bytes) = read_memory(pid, a0, count * 8) {
                fds.extend(
                    bytes
                        .chunks_exact(8)
                        .map(|p| i32::from_ne_bytes([p[0], p[1], p[2], p[3]])),
                );
            }
        } else if SELECT.contains(&number) {
            // nfds, then the read set: a bitmap of nfds bits.
            let nfds = a0.min(65536) as usize;
            if let Some(bits) = read_memory(pid, a1, nfds.div_ceil(8)) {
                fds.extend(
                    (0..nfds)
                        .filter(|fd| bits[fd / 8] & (1 << (fd % 8)) != 0)
                        .map(|fd| fd as i32),
                );
            }
        }
    }
    fds
}

/// `len` bytes of `pid`'s memory at `address` (root, or the same user for a
/// descendant).
fn read_memory(pid: u32, address: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    if address == 0 || len == 0 {
        return None;
    }
    let file = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, address).ok()?;
    Some(buf)
}

/// Inodes of connections accepted from TCP `listeners` (established, local
/// address the listener's, and held by a process: a connection still in the
/// accept queue has inode 0). Asked of sock_diag (6 ms on a host that a
/// load left with 45,000 sockets) or, where it is missing, read from the
/// TCP tables (45 to 65 ms on the same host).
pub fn accepted_inodes(listeners: &[ListenerId]) -> Vec<u64> {
    let addrs: Vec<std::net::SocketAddr> = listeners.iter().filter_map(|l| l.tcp).collect();
    if addrs.is_empty() {
        return Vec::new();
    }
    if let Ok(mut diag) = crate::sock_diag::SockDiag::open() {
        let asked: std::io::Result<Vec<Vec<u64>>> = addrs
            .iter()
            .map(|a| diag.accepted_inodes(a.port()))
            .collect();
        if let Ok(inodes) = asked {
            return inodes.concat();
        }
    }
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .flat_map(tcp_sockets)
        // ESTABLISHED. The port is enough to tell: the listener's port is
        // not used for anything else on this host.
        .filter(|s| s.established && s.inode != 0)
        .filter(|s| addrs.iter().any(|a| a.port() == s.local.port()))
        .map(|s| s.inode)
        .collect()
}

/// The inode of the socket the server side accepted for the TCP
/// connection from `client` to `server`, once some process accepted it
/// (a connection still waiting in the accept queue has no inode yet).
/// Asked of sock_diag (3 µs) or, where it is missing, read from the TCP
/// table (2.5 ms on an idle host, 40 to 65 ms with the tens of thousands
/// of closed connections a load leaves behind).
pub fn accepted_inode(server: SocketAddr, client: SocketAddr) -> Option<u64> {
    if let Ok(mut diag) = crate::sock_diag::SockDiag::open() {
        if let Ok(found) = diag.accepted_inode(server, client) {
            return found;
        }
    }
    table_accepted_inode(server, client)
}

/// [`accepted_inode`], from the TCP table.
pub(crate) fn table_accepted_inode(server: SocketAddr, client: SocketAddr) -> Option<u64> {
    let table = if server.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    tcp_sockets(table)
        .into_iter()
        .find(|s| same(s.local, server) && same(s.remote, client) && s.inode != 0)
        .map(|s| s.inode)
}

/// One line of /proc/net/tcp{,6}.
struct TcpSocket {
    local: SocketAddr,
    remote: SocketAddr,
    /// State 01.
    established: bool,
    /// 0 for a connection no process has accepted yet.
    inode: u64,
}

/// The sockets `table` lists (none if it cannot be read).
fn tcp_sockets(table: &str) -> Vec<TcpSocket> {
    let Ok(text) = fs::read_to_string(table) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            Some(TcpSocket {
                local: socket_addr(fields.get(1)?)?,
                remote: socket_addr(fields.get(2)?)?,
                established: *fields.get(3)? == "01",
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The sockets (inodes) the process tree under `root` holds; none once
/// it is gone. `None` if a process of the tree hides its descriptors from
/// this one: what it holds cannot be known.
pub fn tree_held(root: u32) -> Option<std::collections::HashSet<u64>> {
    let mut held = std::collections::HashSet::new();
    for pid in descendants_and_self(root) {
        match read_socket_fds(pid) {
            Ok(fds) => held.extend(fds.into_iter().map(|(_, inode)| inode)),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return None,
            // Gone since the tree was read.
            Err(_) => {}
        }
    }
    Some(held)
}

/// Whether the process tree under `root` holds the socket `inode`.
pub fn tree_holds(root: u32, inode: u64) -> bool {
    descendants_and_self(root)
        .into_iter()
        .any(|pid| socket_fds(pid).iter().any(|&(_, held)| held == inode))
}

/// An address as /proc/net/tcp{,6} writes it: the address's bytes in
/// network order, each 32-bit word printed as this host reads it, then the
/// port, both in hex.
fn socket_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in ip.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The same address, an IPv4-mapped IPv6 one and its IPv4 form alike.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// The descriptors registered in any of `pid`'s epoll sets.
fn epoll_interests(pid: u32) -> Vec<i32> {
    let mut targets = Vec::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return targets;
    };
    for entry in entries.flatten() {
        let is_epoll = fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[eventpoll]");
        if !is_epoll {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(info) else {
            continue;
        };
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("tfd:") {
                targets.extend(
                    rest.split_whitespace()
                        .next()
                        .and_then(|fd| fd.parse::<i32>().ok()),
                );
            }
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_itself_and_its_children() {
        let me = std::process::id();
        assert!(matches!(stat(me), Some(('R' | 'S', _))));
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(fd_count(me).unwrap() >= 3);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(live_children(me).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children(me).iter().any(|&(pid, _)| pid == child.id()));
    }
}
