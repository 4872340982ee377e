//! The master's lifecycle events, as data.
//!
//! Every log line that marks a step in a worker's or a reload's life carries
//! an `event=NAME` field with one of these names. The names are stable:
//! `baton check`, the tests and the benches follow a master through
//! [`Event::of_line`], never through the wording of the message beside it,
//! and so may anyone who reads baton's log with a program.

use std::fmt;

/// One step in the life of the master, a worker or a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The master started; `pid=`, `version=`.
    MasterStarted,
    /// A listener is bound (or inherited); `addr=`.
    Listening,
    /// A worker process started; `pid=`, `slot=`, `generation=`, `cause=`.
    WorkerStarted,
    /// A worker is ready to serve.
    WorkerReady,
    /// Every slot of the first generation is ready.
    AllWorkersReady,
    /// A worker broke the protocol, missed a deadline or stopped showing
    /// signs of life; it is being killed. `reason=`.
    WorkerFailed,
    /// A ready worker died on its own; it is being replaced.
    WorkerCrashed,
    /// A worker exited otherwise than after a drain (before it was ready,
    /// or during shutdown).
    WorkerExited,
    /// A worker told to drain has exited.
    WorkerDrained,
    /// A worker was told to drain.
    WorkerDraining,
    /// A draining worker was told to end its grace early.
    WorkerHurried,
    /// A slot's workers keep dying young: its next start waits.
    Backoff,
    /// A worker over `--max-memory` is being rolled.
    MemoryRoll,
    ReloadStarted,
    /// Every slot runs the new generation (its probation may follow).
    ReloadComplete,
    /// A reload failed before it completed; the old workers keep serving.
    /// `reason=`.
    ReloadFailed,
    /// A reload was refused before it started (a bad config file). `reason=`.
    ReloadRejected,
    /// The new generation is on probation.
    ProbationStarted,
    /// The probation ended and the reload counts as done.
    ProbationOver,
    /// A worker of the release on trial crashed: the reload failed and a
    /// rollback follows. `reason=`.
    ReleaseFailed,
    RollbackStarted,
    RollbackComplete,
    /// Lame duck: health checks fail so that load balancers stop sending
    /// traffic; the workers go on serving. `reason=`.
    LameDuck,
    /// Back from lame duck: health checks pass again.
    Undrained,
    /// `baton upgrade`: the new program is being checked.
    UpgradeStarted,
    /// The new program took over the master's state, in the same pid.
    /// `version=`, `took_ms=`.
    Upgraded,
    /// An upgrade was refused or failed; the program that logs it serves.
    /// `reason=`.
    UpgradeFailed,
    /// The master drains (or kills) every worker to exit.
    ShuttingDown,
    /// The first start failed; the master exits. `reason=`.
    StartFailed,
    ListenerRestored,
    BacklogRestored,
    ListenerDown,
}

impl Event {
    pub const ALL: [Event; 32] = [
        Event::MasterStarted,
        Event::Listening,
        Event::WorkerStarted,
        Event::WorkerReady,
        Event::AllWorkersReady,
        Event::WorkerFailed,
        Event::WorkerCrashed,
        Event::WorkerExited,
        Event::WorkerDrained,
        Event::WorkerDraining,
        Event::WorkerHurried,
        Event::Backoff,
        Event::MemoryRoll,
        Event::ReloadStarted,
        Event::ReloadComplete,
        Event::ReloadFailed,
        Event::ReloadRejected,
        Event::ProbationStarted,
        Event::ProbationOver,
        Event::ReleaseFailed,
        Event::RollbackStarted,
        Event::RollbackComplete,
        Event::LameDuck,
        Event::Undrained,
        Event::UpgradeStarted,
        Event::Upgraded,
        Event::UpgradeFailed,
        Event::ShuttingDown,
        Event::StartFailed,
        Event::ListenerRestored,
        Event::BacklogRestored,
        Event::ListenerDown,
    ];

    /// The stable name logged as `event=NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Event::MasterStarted => "master_started",
            Event::Listening => "listening",
            Event::WorkerStarted => "worker_started",
            Event::WorkerReady => "worker_ready",
            Event::AllWorkersReady => "all_workers_ready",
            Event::WorkerFailed => "worker_failed",
            Event::WorkerCrashed => "worker_crashed",
            Event::WorkerExited => "worker_exited",
            Event::WorkerDrained => "worker_drained",
            Event::WorkerDraining => "worker_draining",
            Event::WorkerHurried => "worker_hurried",
            Event::Backoff => "backoff",
            Event::MemoryRoll => "memory_roll",
            Event::ReloadStarted => "reload_started",
            Event::ReloadComplete => "reload_complete",
            Event::ReloadFailed => "reload_failed",
            Event::ReloadRejected => "reload_rejected",
            Event::ProbationStarted => "probation_started",
            Event::ProbationOver => "probation_over",
            Event::ReleaseFailed => "release_failed",
            Event::RollbackStarted => "rollback_started",
            Event::RollbackComplete => "rollback_complete",
            Event::LameDuck => "lame_duck",
            Event::Undrained => "undrained",
            Event::UpgradeStarted => "upgrade_started",
            Event::Upgraded => "upgraded",
            Event::UpgradeFailed => "upgrade_failed",
            Event::ShuttingDown => "shutting_down",
            Event::StartFailed => "start_failed",
            Event::ListenerRestored => "listener_restored",
            Event::BacklogRestored => "backlog_restored",
            Event::ListenerDown => "listener_down",
        }
    }

    /// The `key=value` text that marks a log line with this event, for
    /// matching lines as text.
    pub fn field(self) -> String {
        format!("event={}", self.name())
    }

    /// The event a log line of `baton serve` carries, if any.
    pub fn of_line(line: &str) -> Option<Event> {
        let name = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("event="))?;
        Event::ALL.into_iter().find(|event| event.name() == name)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_read_back_from_its_log_line() {
        for event in Event::ALL {
            let line = format!(
                "2026-11-29T23:42:35.369700Z  INFO baton::master: some words event={event} pid=12 slot=0"
            );
            assert_eq!(Event::of_line(&line), Some(event), "{line}");
        }
        assert_eq!(Event::of_line("INFO reload complete generation=2"), None);
        assert_eq!(Event::of_line("event=no_such_event"), None);
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<_> = Event::ALL.iter().map(|e| e.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Event::ALL.len());
    }
}
