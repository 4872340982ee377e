//! A worker process as a pid and a pidfd, instead of a runtime's child
//! handle: a master that re-executed itself (`baton upgrade`) watches the
//! workers the previous image started exactly as those it starts itself.
//! They are its children either way (the pid did not change), so it reaps
//! them; the pidfd tells when, and never names a later process that got
//! the same pid.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitStatus;

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
        self.kill();
    }
}
