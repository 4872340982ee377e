//! The exec stage of a COMMAND worker: receive the listeners over the
//! handoff socket like any worker, put them at descriptors 3, 4, … the way
//! systemd does (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), and exec the
//! program. After the exec the program is the worker (same pid); it inherits
//! exactly those descriptors and stdio: the handoff socket, like everything
//! else, is close-on-exec.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;

use crate::error::{HandoffError, WorkerError};
use crate::fd;
use crate::protocol::{self, Hello, ToWorker};
use baton_worker::handoff::check_listener;

/// Receives the listeners and becomes `command`. Returns only on failure.
pub fn run(command: &[OsString]) -> WorkerError {
    match prepare(command) {
        Ok(mut cmd) => WorkerError::Exec {
            command: command[0].to_string_lossy().into_owned(),
            source: cmd.exec(),
        },
        Err(e) => e,
    }
}

/// Becomes a `--native` COMMAND: the handoff socket stays at
/// [`fd::HANDOFF_FD`] across the exec, unread, for the program's
/// baton-worker to take (`BATON_HANDOFF_FD`). Returns only on failure.
pub fn run_native(command: &[OsString]) -> WorkerError {
    // SAFETY: called once at start-up of a process `baton serve` started with
    // its handoff socket at fd 3; take_handoff checks it before adopting.
    let Some(handoff) = (unsafe { fd::take_handoff() }) else {
        return WorkerError::NoHandoff {
            stage: "exec",
            fd: fd::HANDOFF_FD,
        };
    };
    if let Err(source) = fd::set_inherited(handoff.as_fd(), true) {
        return WorkerError::KeepHandoff(source);
    }
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env(baton_worker::HANDOFF_ENV, fd::HANDOFF_FD.to_string());
    let source = cmd.exec();
    WorkerError::Exec {
        command: command[0].to_string_lossy().into_owned(),
        source,
    }
}

fn prepare(command: &[OsString]) -> Result<std::process::Command, WorkerError> {
    // SAFETY: called once at start-up of a process `baton serve` started with
    // its handoff socket at fd 3; take_handoff checks it before adopting.
    let handoff = unsafe { fd::take_handoff() }.ok_or(WorkerError::NoHandoff {
        stage: "exec",
        fd: fd::HANDOFF_FD,
    })?;
    // The master queued the hello before starting this process.
    let (message, fds) =
        protocol::recv_now::<ToWorker>(handoff.as_fd())?.ok_or(WorkerError::MasterGone)?;
    let Hello {
        listeners,
        balance,
        ready,
        ..
    } = Hello::from_received(message, fds).map_err(HandoffError::from)?;
    // A COMMAND does not speak baton's protocol: the accept-balance table is
    // of no use to it (see docs/workers.md on the accept balance for COMMAND workers). It is
    // closed now, before descriptors are moved into place for the exec.
    drop(balance);
    let (names, fds): (Vec<String>, Vec<OwnedFd>) = listeners.into_iter().unzip();
    for (name, listener) in names.iter().zip(&fds) {
        check_listener(name, listener.as_fd(), false)?;
    }
    drop(handoff);
    let count = fds.len();
    let mut placed: Vec<(OwnedFd, i32)> = fds.into_iter().zip(fd::FIRST_LISTEN_FD..).collect();
    if let Some((pipe, at)) = ready {
        let listeners = fd::FIRST_LISTEN_FD..fd::FIRST_LISTEN_FD + count as i32;
        if listeners.contains(&at) {
            return Err(WorkerError::ReadyFdTaken {
                fd: at,
                listeners: count,
            });
        }
        placed.push((pipe, at));
    }
    fd::place_for_exec(placed).map_err(WorkerError::PlaceListeners)?;
    if let Err(reason) = super::guard::install(fd::FIRST_LISTEN_FD, count) {
        tracing::warn!(%reason, "cannot keep the program from shutting its listeners down; the master will put them back if it does");
    }

    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("LISTEN_FDS", names.len().to_string())
        // exec keeps this process's pid.
        .env("LISTEN_PID", std::process::id().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    if std::env::var_os("WATCHDOG_USEC").is_some() {
        cmd.env("WATCHDOG_PID", std::process::id().to_string());
    }
    Ok(cmd)
}
