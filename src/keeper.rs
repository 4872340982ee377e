//! The keeper: what stops a worker's whole process tree when the master is
//! gone.
//!
//! A COMMAND may fork (gunicorn's and puma's masters, a shell wrapper), and
//! its children hold the listening socket too. Each worker is started as
//! the leader of its own process group, and the master stops the group, not
//! only the leader: when a worker exits, whatever is left of its group gets
//! the drain signal, then SIGKILL at the deadline (see
//! [`crate::master::WorkerHandle`]). That needs a master. A SIGKILLed master
//! runs no code, and `PR_SET_PDEATHSIG` reaches only the workers it started,
//! not their children: they would go on serving old code and hold the port,
//! so that the next `baton serve` could not bind it.
//!
//! So the master starts a keeper first: `baton keeper`, which detaches
//! (forks, the parent exits, the child starts its own session) and reads
//! the master's list of worker process groups from a pipe whose only writer
//! is the master. When the pipe ends, which happens however the master
//! ends, the keeper SIGKILLs every group still listed and exits. It also
//! removes the master's private directory (notify sockets, rolled-back
//! program files), which a SIGKILLed master would leave behind.
//!
//! Limits: a process that leaves its group (`setsid`, `setpgid`) escapes
//! both the master and the keeper; under systemd the service's cgroup still
//! catches it at stop (`KillMode=mixed`).

use std::io::{self, BufRead};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// The master's side: tells the keeper which process groups to stop if the
/// master goes away.
#[derive(Debug, Clone)]
pub struct Keeper {
    lines: mpsc::UnboundedSender<String>,
    /// A copy of the pipe's writing end, for `baton upgrade` to hand over.
    pipe: Arc<OwnedFd>,
}

impl Keeper {
    /// Starts `program keeper` and the task that writes to it. The keeper
    /// is detached: it is not a child of the master once started.
    pub async fn start(program: &Path) -> io::Result<Self> {
        let mut child = crate::systemd::scrub_env(&mut std::process::Command::new(program))
            .arg("keeper")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        // The first process only forks the keeper and exits.
        let status = match crate::process::Process::watch(child.id()) {
            Ok(mut process) => process.wait().await?,
            Err(_) => child.wait()?,
        };
        if !status.success() {
            return Err(io::Error::other(format!(
                "the keeper did not start ({status})"
            )));
        }
        Self::adopt(OwnedFd::from(stdin))
    }

    /// Writes to the keeper whose pipe is `pipe` (the writing end): one
    /// this master started, or one a previous image of it started.
    pub fn adopt(pipe: OwnedFd) -> io::Result<Self> {
        let copy = Arc::new(pipe.try_clone()?);
        let mut pipe = tokio::net::unix::pipe::Sender::from_owned_fd(pipe)?;
        let (lines, mut to_write) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = to_write.recv().await {
                if pipe.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        Ok(Keeper { lines, pipe: copy })
    }

    /// The pipe's writing end.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Stops group `pgid` if the master goes away.
    pub fn watch(&self, pgid: u32) {
        let _ = self.lines.send(format!("+{pgid}\n"));
    }

    /// Removes `dir` (the master's private directory) if the master goes
    /// away without doing it.
    pub fn remove_when_gone(&self, dir: &Path) {
        let _ = self.lines.send(format!("d{}\n", dir.display()));
    }

    /// Group `pgid` is empty: leave it alone.
    pub fn forget(&self, pgid: u32) {
        let _ = self.lines.send(format!("-{pgid}\n"));
    }
}

/// The keeper process (`baton keeper`): detaches, then follows the list on
/// standard input until it ends, and SIGKILLs every group left on it.
/// Called before any thread exists.
pub fn run() -> io::Result<()> {
    // Its own session: no terminal's signals, not in the master's process
    // group, and not the master's child.
    if crate::fd::fork_detached()? == crate::fd::Forked::Parent {
        return Ok(());
    }
    let mut groups = std::collections::BTreeSet::new();
    let mut private_dir = None;
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (sign, rest) = line.split_at(line.len().min(1));
        match (sign, rest.parse::<u32>()) {
            ("+", Ok(pgid)) => {
                groups.insert(pgid);
            }
            ("-", Ok(pgid)) => {
                groups.remove(&pgid);
            }
            ("d", _) => private_dir = Some(std::path::PathBuf::from(rest)),
            _ => {}
        }
    }
    for pgid in groups {
        if pgid > 1 {
            let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        }
    }
    // A master that exits removes it itself; a killed one cannot.
    if let Some(dir) = private_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(0);
}
