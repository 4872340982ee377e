//! systemd integration: listeners passed by socket activation (LISTEN_FDS,
//! LISTEN_PID, LISTEN_FDNAMES) and sd_notify messages (READY, RELOADING with
//! MONOTONIC_USEC, STOPPING, STATUS, WATCHDOG, EXTEND_TIMEOUT_USEC).
//!
//! Notifications never block the master: the notify socket is non-blocking,
//! and a message that does not fit in a full queue is dropped (and logged),
//! because a stalled supervisor is worse than a lost status line.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub use sd_notify::NotifyState;
use tracing::debug;

use crate::fd;

/// What systemd says to the master alone: no child of the master (worker,
/// keeper, the check of an upgrade's program) may read these and think it
/// is the one socket-activated, notified or watched.
pub const MASTER_ONLY_ENV: [&str; 6] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Removes [`MASTER_ONLY_ENV`] from what `command` starts with.
pub fn scrub_env(command: &mut std::process::Command) -> &mut std::process::Command {
    for name in MASTER_ONLY_ENV {
        command.env_remove(name);
    }
    command
}

/// Takes the listeners systemd passed, named by LISTEN_FDNAMES (systemd's
/// default name, `unknown`, where none is given), each close-on-exec, and
/// removes LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES from the environment.
/// Returns nothing unless LISTEN_PID is this process.
///
/// # Safety
/// Must be called before any other thread exists (it changes the
/// environment), and at most once: the descriptors become owned by the
/// caller.
pub unsafe fn take_listen_fds() -> Result<Vec<(String, OwnedFd)>, String> {
    // SAFETY: single-threaded, per this function's contract.
    let passed = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }.map_err(|e| {
        format!("bad socket activation variables (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES): {e}")
    })?;
    let mut taken = Vec::new();
    for (raw, name) in passed {
        // SAFETY: sd_notify checked the descriptor is open (it set
        // close-on-exec on it) and systemd handed it to this process alone.
        let fd = unsafe { fd::adopt_inherited(raw) }
            .map_err(|e| format!("LISTEN_FDS: descriptor {raw} ({name:?}) is not usable: {e}"))?;
        taken.push((name, fd));
    }
    Ok(taken)
}

/// The master's channel to systemd, if it runs under one.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<UnixDatagram>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Connects to NOTIFY_SOCKET (a path, or `@name` in the abstract
    /// namespace) and reads WATCHDOG_USEC. Without NOTIFY_SOCKET every
    /// notification is a no-op.
    pub fn from_env() -> Self {
        let watchdog = sd_notify::watchdog_enabled();
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier {
                socket: None,
                watchdog: None,
            };
        };
        let socket = connect(&path.to_string_lossy())
            .map_err(|e| tracing::warn!(cause = %e, "cannot reach NOTIFY_SOCKET; systemd will not hear from baton"))
            .ok();
        Notifier { socket, watchdog }
    }

    /// How often to send WATCHDOG=1: half the watchdog timeout.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket
            .as_ref()
            .and(self.watchdog)
            .map(|timeout| timeout / 2)
    }

    /// Sends one message made of `states`, without blocking.
    pub fn notify(&self, states: &[NotifyState<'_>]) {
        let Some(socket) = &self.socket else {
            return;
        };
        let message: String = states.iter().map(|state| format!("{state}\n")).collect();
        if let Err(e) = socket.send(message.as_bytes()) {
            debug!(cause = %e, message = %message.trim_end(), "notification dropped");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// RELOADING=1 together with MONOTONIC_USEC, as `Type=notify-reload`
    /// requires.
    pub fn reloading(&self, status: &str) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.notify(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
            Err(_) => self.notify(&[NotifyState::Reloading, NotifyState::Status(status)]),
        }
    }

    pub fn stopping(&self, status: &str, drain: Duration) {
        let usec = u32::try_from(drain.as_micros()).unwrap_or(u32::MAX);
        self.notify(&[
            NotifyState::Stopping,
            NotifyState::Status(status),
            NotifyState::ExtendTimeoutUsec(usec),
        ]);
    }

    pub fn status(&self, status: &str) {
        self.notify(&[NotifyState::Status(status)]);
    }

    /// Hands `listeners` (name, descriptor) to systemd's file descriptor
    /// store (`FDSTORE=1`, `FDNAME=`), one message each: systemd holds them
    /// while the service restarts and passes them back by name, so that
    /// even a `systemctl restart` without a socket unit refuses nothing.
    /// Needs `FileDescriptorStoreMax=` in the unit; without it systemd
    /// drops them. Returns how many were sent.
    pub fn store_fds(&self, listeners: &[(&str, std::os::fd::BorrowedFd<'_>)]) -> usize {
        let Some(socket) = &self.socket else {
            return 0;
        };
        let mut stored = 0;
        for (name, fd) in listeners {
            let message = format!("FDSTORE=1\nFDNAME={name}\n");
            match fd::send_with_fds(socket, message.as_bytes(), &[*fd]) {
                Ok(_) => stored += 1,
                Err(e) => debug!(cause = %e, name, "listener not stored with systemd"),
            }
        }
        stored
    }

    pub fn watchdog(&self) {
        self.notify(&[NotifyState::Watchdog]);
    }
}

fn connect(path: &str) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.connect_addr(&addr)?;
        }
        None => socket.connect(path)?,
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}
