//! The master's children: each one it started is a pid and a pidfd,
//! instead of a runtime's child handle, and every other child is an orphan
//! to reap.
//!
//! A master that re-executed itself (`baton upgrade`) watches the workers
//! the previous image started exactly as those it starts itself: they are
//! its children either way (the pid did not change), so it reaps them; the
//! pidfd tells when, and never names a later process that got the same pid.
//!
//! The master is also a reaper. As PID 1 of a container every orphan of the
//! container becomes its child; elsewhere it makes itself a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), so that a process a worker left behind (a
//! daemon that double-forked) becomes baton's child rather than init's.
//! Such children are nobody's [`Process`]: on each SIGCHLD the master reaps
//! the ones that exited ([`reap_orphans`]), and never one a [`Process`]
//! waits for, whose exit status its watcher must see.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitStatus;
use std::sync::Mutex;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::fd;

/// A child process of this master, killed if dropped before it exited.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    reaped: bool,
}

impl Process {
    /// Watches child `pid`. Must be called before it is reaped.
    pub fn watch(pid: u32) -> io::Result<Self> {
        let pidfd = fd::register_readable(fd::pidfd_open(pid)?)?;
        watched().insert(pid);
        Ok(Process {
            pid,
            pidfd,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            let mut ready = self.pidfd.readable().await?;
            match fd::reap(self.pidfd.get_ref().as_fd())? {
                Some(status) => {
                    self.reaped = true;
                    watched().remove(&self.pid);
                    return Ok(status);
                }
                None => ready.clear_ready(),
            }
        }
    }

    /// Sends SIGKILL. Until it is reaped the pid cannot name another
    /// process, so this never reaches a stranger.
    pub fn kill(&self) {
        if !self.reaped {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.kill();
        // Already gone (its SIGCHLD came while it was watched, so the orphan
        // reaper skipped it): reaped now. Still dying: an orphan for
        // `reap_orphans` at its SIGCHLD.
        let _ = fd::reap(self.pidfd.get_ref().as_fd());
        watched().remove(&self.pid);
    }
}

/// The children a [`Process`] waits for.
fn watched() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    static WATCHED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
    WATCHED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes this process the reaper of its descendants' orphans (a no-op as
/// PID 1, which is already).
pub fn become_subreaper() -> io::Result<()> {
    if std::process::id() == 1 {
        return Ok(());
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Reaps every child that exited and that no [`Process`] waits for:
/// orphans that became this process's children. Returns their pids.
pub fn reap_orphans() -> Vec<u32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let me = std::process::id();
    let mut reaped = Vec::new();
    // Held throughout: a child cannot start being watched meanwhile.
    let watched = watched();
    // No need to read each child's state: waiting without hanging reaps
    // only one that exited, and a pid that is not a child is an error.
    for pid in crate::procfs::child_pids(me) {
        if pid == me || watched.contains(&pid) {
            continue;
        }
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => {}
            Ok(_) => reaped.push(pid),
        }
    }
    reaped
}
