//! Unix signals, mapped in one place to what the master should do. Handlers
//! are installed before the first worker starts, so no signal sent once the
//! master has announced itself can take the default action and kill it.

use futures::StreamExt;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR2};
use signal_hook_tokio::Signals;

/// What a signal asks of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// SIGHUP: roll a new generation of workers in.
    Reload,
    /// SIGTERM, SIGINT: drain every worker, then exit 0.
    Shutdown,
    /// SIGQUIT: kill every worker and exit at once.
    Quit,
    /// SIGUSR2: replace the master's own program in place (`baton
    /// upgrade`).
    Upgrade,
    /// SIGCHLD: a child exited; orphans among them are reaped (see
    /// [`crate::process::reap_orphans`]).
    ChildExited,
}

/// The master's signal stream.
pub struct SignalIntents {
    signals: Signals,
}

impl SignalIntents {
    /// Installs the handlers. Must be called inside a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(SignalIntents {
            signals: Signals::new([SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR2, SIGCHLD])?,
        })
    }

    /// The next signal's intent. Repeated deliveries of one signal may merge
    /// into one; the master coalesces reloads anyway.
    pub async fn next(&mut self) -> Option<(Intent, &'static str)> {
        let signal = self.signals.next().await?;
        Some(match signal {
            SIGHUP => (Intent::Reload, "SIGHUP"),
            SIGQUIT => (Intent::Quit, "SIGQUIT"),
            SIGINT => (Intent::Shutdown, "SIGINT"),
            SIGUSR2 => (Intent::Upgrade, "SIGUSR2"),
            SIGCHLD => (Intent::ChildExited, "SIGCHLD"),
            _ => (Intent::Shutdown, "SIGTERM"),
        })
    }
}
