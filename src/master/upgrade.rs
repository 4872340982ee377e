//! `baton upgrade` (and SIGUSR2): the master replaces its own program in
//! place, keeping its pid, its sockets and its workers.
//!
//! 1. Refused while the master starts or stops, or a reload rolls or is on
//!    probation; joined by a second upgrade asked for meanwhile. Reloads
//!    asked for during an upgrade are refused (`reload`) or folded into
//!    the upgrade's roll (SIGHUP), never raced.
//! 2. The new program is checked first (`baton upgrade-check`, run from the
//!    same path): it must read this state format and accept the
//!    configuration, within [`CHECK_WITHIN`]. A program that does not is
//!    refused with what it said; nothing else happened.
//! 3. The master's watchers go quiet (see [`super::worker::Quiet`]): no
//!    connection a draining worker handed over may be in the master's
//!    hands at the exec, nor an answer about one unwritten; this waits at
//!    most [`QUIET_WITHIN`].
//! 4. The master writes its state and `execve`s the new program in the
//!    same pid (see [`super::handover`]); the new image adopts the state,
//!    answers systemd, and rolls the workers to the new program like a
//!    reload (unless asked to keep them). If it cannot adopt the state, the
//!    previous image comes back and adopts it instead. Either way the
//!    `upgrade --wait` clients are answered by the image that serves.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::oneshot;

use super::handover::{self, SupervisorState, UpgradeFault};
use super::worker::{Quiet, WorkerId};
use crate::control::reply::Reply;

/// How long the new program's check may take.
pub const CHECK_WITHIN: Duration = Duration::from_secs(10);

/// How long the watchers may take to go quiet before the exec. A worker
/// that does not say it took what it was given by then (it is stopped, or
/// too busy) costs its batches: their old worker serves them on only at
/// its drain deadline.
pub const QUIET_WITHIN: Duration = Duration::from_secs(2);

/// An upgrade being prepared: its program is being checked.
#[derive(Debug)]
pub(crate) struct Upgrade {
    pub waiters: Vec<Waiter>,
    /// Roll the workers to the new program once it serves.
    pub roll: bool,
    pub fault: Option<UpgradeFault>,
    pub asked_at_ms: u64,
    /// The program passed its check: the master is going quiet to exec it.
    pub departing: Option<Departing>,
}

/// The master going quiet before the exec (see [`super::worker::Quiet`]).
#[derive(Debug)]
pub(crate) struct Departing {
    /// The version the new program said it is.
    pub version: String,
    /// The step the watchers are asked to reach.
    pub step: Quiet,
    /// The workers whose watchers have not reached it yet.
    pub waiting: BTreeSet<WorkerId>,
    /// The exec goes ahead then, quiet or not.
    pub until: Instant,
}

/// Someone who asked for the upgrade and waits for its outcome: answered
/// on `reply` by this image if the upgrade ends here, or on its
/// `connection` by the next image.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub reply: oneshot::Sender<Reply>,
    pub connection: Option<OwnedFd>,
}

/// What an upgrade asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Roll the workers to the new program (else they keep running).
    pub roll: bool,
    pub fault: Option<UpgradeFault>,
}

/// What the master hands to the effects to exec the new program.
#[derive(Debug)]
pub(crate) struct Departure {
    pub supervisor: SupervisorState,
    pub waiters: Vec<OwnedFd>,
    pub roll: bool,
    pub fault: Option<UpgradeFault>,
    pub asked_at_ms: u64,
}

/// Runs `program upgrade-check` with the master's serve arguments: `Ok`
/// with the version it reports, or why the program cannot take over.
pub async fn check_program(
    program: PathBuf,
    serve_args: Vec<std::ffi::OsString>,
) -> Result<String, String> {
    let cannot_run = |e: std::io::Error| format!("cannot run {}: {e}", program.display());
    let mut child = crate::systemd::scrub_env(&mut std::process::Command::new(&program))
        .arg("upgrade-check")
        .arg("--format")
        .arg(handover::FORMAT.to_string())
        .arg("--")
        .args(&serve_args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove(handover::ENV_STATE)
        .spawn()
        .map_err(cannot_run)?;
    // Killed if the check times out (dropped with the future below).
    let mut process = crate::process::Process::watch(child.id()).map_err(cannot_run)?;
    let pipe = |fd: Option<OwnedFd>| {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd.expect("piped")).map_err(cannot_run)
    };
    let mut stdout = pipe(child.stdout.take().map(OwnedFd::from))?;
    let mut stderr = pipe(child.stderr.take().map(OwnedFd::from))?;
    let run = async {
        use tokio::io::AsyncReadExt;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (_, _, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            process.wait()
        );
        status.map(|status| (status, out, err))
    };
    let (status, stdout, stderr) = match tokio::time::timeout(CHECK_WITHIN, run).await {
        Err(_) => {
            return Err(format!(
                "{} did not finish its check within {}",
                program.display(),
                humantime::format_duration(CHECK_WITHIN)
            ))
        }
        Ok(Err(e)) => return Err(cannot_run(e)),
        Ok(Ok(done)) => done,
    };
    let output = std::process::Output {
        status,
        stdout,
        stderr,
    };
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().replace('\n', "; ");
    if !output.status.success() {
        let mut reason = format!("{} failed its check ({})", program.display(), output.status);
        let stderr = said(&output.stderr);
        if !stderr.is_empty() {
            reason += &format!(": {stderr}");
        }
        return Err(reason);
    }
    let stdout = said(&output.stdout);
    match stdout.strip_prefix("baton ") {
        Some(version) if !version.is_empty() => Ok(version.to_owned()),
        _ => Err(format!(
            "{} passed its check but did not say its version (it said {stdout:?}); is it baton?",
            program.display()
        )),
    }
}
