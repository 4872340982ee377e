//! Accept balance: how workers sharing one listening socket split the new
//! connections evenly, with the master still off the data path.
//!
//! Every worker's epoll wakes for each new connection and whichever worker
//! is on a CPU takes it, so one worker can end up with most of them. The
//! master therefore creates one small table in shared memory (a sealed memfd
//! sent with each hello) where every worker publishes how many connections it
//! has open. Before each accept a worker looks at the table: when it has more
//! open than the least-loaded accepting worker, it leaves the
//! next connection in the kernel's queue, long enough for a worker with fewer
//! to be scheduled and take it: until one of its own connections closes, or
//! for at most [`YIELD_FOR`], after which it takes the connection itself if
//! nobody did. Nothing is re-bound, nothing is refused, and a worker that
//! stops (drains, crashes) leaves the table, so nobody defers to it.
//!
//! Why this and not an accept thread on an EPOLLEXCLUSIVE epoll: exclusive
//! wake-ups follow the socket's wait queue, last in first out, so the same
//! worker keeps winning; it needs the same pacing on top to be even, plus a
//! thread and a cross-thread hand-off per connection. The measurements
//! behind the choice are in docs/how-it-works.md (Accept balance).
//!
//! The table is advisory. A worker that ignores it (or a COMMAND worker,
//! which never sees it) only makes the split less even; nobody ever waits
//! longer than [`YIELD_FOR`] for a connection to be taken.

use std::io;
use std::mem::size_of;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use tokio::sync::Notify;

/// How long a worker over its share leaves a pending connection for others.
pub const YIELD_FOR: Duration = Duration::from_millis(1);

/// How many more connections than the least-taking accepting worker a
/// worker may have accepted before it leaves the next one to the others.
/// Short connections are rarely open long enough for the open counts to
/// differ, so the accept counts carry the balance under new-connection load.
const AHEAD_BY: u64 = 128;

/// A worker that has accepted this many fewer than the busiest is not
/// keeping up (stopped, or starved of CPU): the others stop deferring to it,
/// and when it accepts again it counts as only this far behind, so that it
/// is not handed a backlog of catch-up connections at once.
const BEHIND_AT_MOST: u64 = 1024;

/// Marks a table laid out as this module expects ("baton-b1").
const MAGIC: u64 = u64::from_le_bytes(*b"baton-b1");

/// Workers the table holds at once (serving and draining). Workers beyond
/// that accept without pacing.
const ENTRIES: usize = 255;

#[repr(C, align(64))]
struct Header {
    magic: AtomicU64,
    /// Entries at or above this index have never been used: scans stop here.
    high_water: AtomicU32,
}

/// One worker's line, on its own cache line so that workers updating their
/// counters do not slow each other down.
#[repr(C, align(64))]
struct Entry {
    /// The worker's pid; 0 when the entry is free.
    pid: AtomicU32,
    /// 1 while the worker accepts; only those count for the least-loaded.
    accepting: AtomicU32,
    open: AtomicU64,
    /// Connections taken from the listeners since the worker joined (set
    /// level with the others when it starts accepting).
    accepted: AtomicU64,
}

#[repr(C)]
struct Table {
    header: Header,
    entries: [Entry; ENTRIES],
}

/// The table mapped into this process.
struct Mapping {
    table: NonNull<Table>,
}

// SAFETY: the mapping holds only atomics, which any thread (or process) may
// read and write; it is unmapped once, on drop.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: shared access is only ever through atomics.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let size = nix::sys::stat::fstat(fd)?.st_size;
        if usize::try_from(size).ok() != Some(size_of::<Table>()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the accept-balance table has {size} bytes, not {}",
                    size_of::<Table>()
                ),
            ));
        }
        let length = NonZeroUsize::new(size_of::<Table>()).expect("the table is not empty");
        // SAFETY: a fresh shared mapping of a memfd whose size was just
        // checked and cannot shrink (the master sealed it); its bytes are
        // only ever accessed as the atomics of `Table`, for which any bit
        // pattern is valid, and the page alignment satisfies `Table`'s.
        let table = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }?;
        Ok(Mapping {
            table: table.cast(),
        })
    }

    fn table(&self) -> &Table {
        // SAFETY: see `map`: valid, aligned and mapped until drop.
        unsafe { self.table.as_ref() }
    }

    fn entries(&self) -> &[Entry] {
        let table = self.table();
        let used = table.header.high_water.load(Ordering::Acquire) as usize;
        &table.entries[..used.min(ENTRIES)]
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped by `map` with this length, and no reference into it
        // outlives `self`.
        let _ = unsafe { munmap(self.table.cast(), size_of::<Table>()) };
    }
}

/// The master's side: creates the table and forgets workers that exited.
pub struct ShareTable {
    fd: OwnedFd,
    mapping: Mapping,
}

impl ShareTable {
    pub fn create() -> io::Result<Self> {
        let fd = memfd_create(
            "baton-accept-balance",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        nix::unistd::ftruncate(&fd, size_of::<Table>() as i64)?;
        // A worker could otherwise shrink the file under the master, whose
        // next read of the mapping would then be a SIGBUS.
        fcntl(
            fd.as_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let mapping = Mapping::map(fd.as_fd())?;
        mapping.table().header.magic.store(MAGIC, Ordering::Release);
        Ok(ShareTable { fd, mapping })
    }

    /// Takes over the table a previous image of this master created (see
    /// the master's upgrade): the workers' entries stay as they are.
    pub fn adopt(fd: OwnedFd) -> io::Result<Self> {
        let mapping = Mapping::map(fd.as_fd())?;
        if mapping.table().header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an accept-balance table (bad magic)",
            ));
        }
        Ok(ShareTable { fd, mapping })
    }

    /// The descriptor sent to each worker with its hello.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Frees the entry of `pid`, which has exited (and may have crashed
    /// without leaving the table itself).
    pub fn forget(&self, pid: u32) {
        for entry in self.mapping.entries() {
            if entry.pid.load(Ordering::Acquire) == pid {
                entry.accepting.store(0, Ordering::Release);
                entry.open.store(0, Ordering::Release);
                entry.accepted.store(0, Ordering::Release);
                let _ = entry
                    .pid
                    .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// (pid, accepting, open connections) of every worker in the table.
    pub fn snapshot(&self) -> Vec<(u32, bool, u64)> {
        self.mapping
            .entries()
            .iter()
            .filter_map(|e| {
                let pid = e.pid.load(Ordering::Acquire);
                (pid != 0).then(|| {
                    (
                        pid,
                        e.accepting.load(Ordering::Acquire) == 1,
                        e.open.load(Ordering::Relaxed),
                    )
                })
            })
            .collect()
    }
}

/// A worker's place in the table.
pub struct AcceptShare {
    mapping: Mapping,
    index: usize,
    pid: u32,
    /// Signalled when one of this worker's connections closes: a worker
    /// waiting for its share to drop looks again then.
    closed: Notify,
}

impl std::fmt::Debug for AcceptShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptShare")
            .field("index", &self.index)
            .field("pid", &self.pid)
            .finish()
    }
}

impl AcceptShare {
    /// Maps the table the master sent and takes a free entry, not yet
    /// accepting. Fails for a descriptor that is not such a table, or when
    /// the table is full.
    pub fn join(fd: OwnedFd) -> io::Result<Arc<Self>> {
        let mapping = Mapping::map(fd.as_fd())?;
        let table = mapping.table();
        if table.header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an accept-balance table (bad magic)",
            ));
        }
        let pid = std::process::id();
        let index = table
            .entries
            .iter()
            .position(|e| {
                e.pid
                    .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| io::Error::other("the accept-balance table is full"))?;
        let entry = &table.entries[index];
        entry.accepting.store(0, Ordering::Release);
        entry.open.store(0, Ordering::Release);
        entry.accepted.store(0, Ordering::Release);
        table
            .header
            .high_water
            .fetch_max(index as u32 + 1, Ordering::AcqRel);
        Ok(Arc::new(AcceptShare {
            mapping,
            index,
            pid,
            closed: Notify::new(),
        }))
    }

    fn entry(&self) -> &Entry {
        &self.mapping.table().entries[self.index]
    }

    /// Counts this worker among those that accept (or no longer, on drain).
    /// A worker that starts accepting counts as having taken as many
    /// connections as the least-taking of the others, so that neither it
    /// nor they are owed a backlog.
    pub fn set_accepting(&self, accepting: bool) {
        let entry = self.entry();
        if accepting && entry.accepting.load(Ordering::Acquire) == 0 {
            if let Some(least) = self
                .others()
                .map(|e| e.accepted.load(Ordering::Relaxed))
                .min()
            {
                entry.accepted.store(least, Ordering::Relaxed);
            }
        }
        entry
            .accepting
            .store(u32::from(accepting), Ordering::Release);
    }

    /// The other workers' entries that count: those accepting.
    fn others(&self) -> impl Iterator<Item = &Entry> {
        let mine = self.entry() as *const Entry;
        self.mapping.entries().iter().filter(move |e| {
            !std::ptr::eq(*e, mine)
                && e.accepting.load(Ordering::Relaxed) == 1
                && e.pid.load(Ordering::Relaxed) != 0
        })
    }

    /// Whether this worker has taken more than its share: more connections
    /// open than the least-loaded accepting worker (long connections), or
    /// more than [`AHEAD_BY`] more accepted than the least-taking one that
    /// keeps up (short ones). (Allowing a margin of one or two open made
    /// the split less even and bought no throughput.)
    pub fn over_share(&self) -> bool {
        let entry = self.entry();
        let open = entry.open.load(Ordering::Relaxed);
        let accepted = entry.accepted.load(Ordering::Relaxed);
        let (mut least_open, mut least_accepted, mut most_accepted) = (open, accepted, accepted);
        for other in self.others() {
            least_open = least_open.min(other.open.load(Ordering::Relaxed));
            let taken = other.accepted.load(Ordering::Relaxed);
            most_accepted = most_accepted.max(taken);
            if taken + BEHIND_AT_MOST >= accepted {
                least_accepted = least_accepted.min(taken);
            }
        }
        if most_accepted > accepted + BEHIND_AT_MOST {
            // This worker fell behind: count it as only so far behind.
            entry
                .accepted
                .fetch_max(most_accepted - BEHIND_AT_MOST, Ordering::Relaxed);
        }
        open > least_open || accepted > least_accepted + AHEAD_BY
    }

    /// Resolves when one of this worker's connections closes (or has closed
    /// since the last call).
    pub async fn closed(&self) {
        self.closed.notified().await
    }

    /// Counts a connection this worker took from a listener: one more
    /// accepted, and open until the guard drops.
    pub fn accepted(self: &Arc<Self>) -> OpenConnection {
        self.entry().accepted.fetch_add(1, Ordering::Relaxed);
        self.opened()
    }

    /// Counts a connection this worker was given (not accepted) as open,
    /// until the guard drops.
    pub fn opened(self: &Arc<Self>) -> OpenConnection {
        self.entry().open.fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            share: Arc::clone(self),
        }
    }
}

impl Drop for AcceptShare {
    fn drop(&mut self) {
        let entry = self.entry();
        entry.accepting.store(0, Ordering::Release);
        entry.open.store(0, Ordering::Release);
        let _ = entry
            .pid
            .compare_exchange(self.pid, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// One open connection in the table; closing it (dropping this) counts it
/// out.
#[derive(Debug)]
pub struct OpenConnection {
    share: Arc<AcceptShare>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.share.entry().open.fetch_sub(1, Ordering::Relaxed);
        self.share.closed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(table: &ShareTable) -> Arc<AcceptShare> {
        let fd = table.fd().try_clone_to_owned().unwrap();
        AcceptShare::join(fd).unwrap()
    }

    #[test]
    fn a_worker_with_more_open_than_the_least_loaded_is_over_its_share() {
        let table = ShareTable::create().unwrap();
        // One process plays both workers: give them distinct pids.
        let a = worker(&table);
        let b = worker(&table);
        a.set_accepting(true);
        b.set_accepting(true);
        assert!(!a.over_share());
        let first = a.opened();
        assert!(a.over_share(), "a has 1 open, b has 0");
        assert!(!b.over_share());
        let _second = b.opened();
        assert!(!a.over_share(), "1 and 1");
        b.set_accepting(false);
        assert!(!a.over_share(), "a draining worker does not count");
        drop(first);
        assert_eq!(table.snapshot().iter().map(|e| e.2).sum::<u64>(), 1);
    }

    #[test]
    fn a_worker_that_took_more_than_its_share_of_short_connections_is_over_it() {
        let table = ShareTable::create().unwrap();
        let a = worker(&table);
        let b = worker(&table);
        a.set_accepting(true);
        b.set_accepting(true);
        let take = |share: &Arc<AcceptShare>, n: u64| {
            for _ in 0..n {
                drop(share.accepted());
            }
        };
        take(&a, AHEAD_BY);
        assert!(!a.over_share(), "ahead by the margin, not more");
        take(&a, 1);
        assert!(a.over_share(), "ahead by more than the margin");
        assert!(!b.over_share());
        take(&b, 1);
        assert!(!a.over_share(), "level within the margin again");

        let c = worker(&table);
        c.set_accepting(true);
        assert!(!a.over_share() && !c.over_share(), "c starts level with b");

        take(&a, BEHIND_AT_MOST + AHEAD_BY);
        take(&c, BEHIND_AT_MOST + AHEAD_BY);
        assert!(!a.over_share(), "b does not keep up: nobody defers to it");
        assert!(!b.over_share());
        take(&b, 1);
        assert!(
            a.over_share(),
            "b counts as only so far behind once it accepts again"
        );
    }

    #[test]
    fn exited_workers_leave_the_table() {
        let table = ShareTable::create().unwrap();
        let a = worker(&table);
        a.set_accepting(true);
        let _open = a.opened();
        assert_eq!(table.snapshot(), vec![(std::process::id(), true, 1)]);
        table.forget(std::process::id());
        assert!(table.snapshot().is_empty());
    }

    #[test]
    fn anything_else_is_refused() {
        let file = tempfile_fd(b"not a table");
        let err = AcceptShare::join(file).unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
    }

    fn tempfile_fd(contents: &[u8]) -> OwnedFd {
        let fd = memfd_create("test", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::write(&fd, contents).unwrap();
        fd
    }
}
