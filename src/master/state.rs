//! What the master knows of its workers and slots: the plain values the
//! supervisor changes, `status` and `/metrics` read, and an upgrade hands
//! to the next image as they are.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::worker::WorkerId;
use crate::protocol::WorkerStats;

/// Quick deaths in a row that are restarted at once; from the next one on,
/// restarts back off. More than one, so that two unlucky kills in a row are
/// not taken for a crash loop.
pub(crate) const QUICK_FAILURES_BEFORE_BACKOFF: u32 = 2;
/// The first delay of the crash-loop backoff, doubled per quick failure.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest crash-loop backoff.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Where the master is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The first generation is starting; a worker failing now fails the start.
    Starting,
    /// Serving: crashed workers are replaced, reloads roll.
    Running,
    /// Draining or killing every worker; exits when none is left.
    Stopping,
}

/// A worker process the master is responsible for. It crosses an upgrade
/// as it is (its instants as wall-clock milliseconds), keyed by its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Worker {
    pub pid: u32,
    /// The slot it serves, or will serve once a rollout hands it over.
    pub slot: usize,
    pub generation: u64,
    pub cause: Cause,
    pub state: WorkerState,
    #[serde(rename = "started_at_ms", with = "wall_clock")]
    pub started: Instant,
    /// The last counters it reported (built-in workers only).
    pub stats: Option<WorkerStats>,
    /// Consecutive memory checks that found it above `--max-memory`.
    #[serde(skip)]
    pub over_memory: u32,
    /// It passed its `--health` probes (a new worker of a reload).
    #[serde(skip)]
    pub passed_probe: bool,
    /// Why its watcher failed it (stuck, failed its periodic probes), for
    /// what is said when it then dies.
    #[serde(skip)]
    pub failure: Option<String>,
    /// Connections the master handed to it in all. Those its last report
    /// does not count as received yet are not in its open count either.
    #[serde(skip)]
    pub handed_to: u64,
    /// A built-in or native worker: it takes connections handed over.
    #[serde(default)]
    pub speaks_protocol: bool,
}

impl Worker {
    /// How a lifecycle event names it.
    pub fn named(&self) -> crate::event::WorkerRef {
        crate::event::WorkerRef {
            pid: self.pid,
            slot: self.slot,
            generation: self.generation,
        }
    }
}

/// Why a worker was started; logged, so that operators (and `baton check`)
/// can tell a crash replacement from a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Cause {
    Start,
    Replacement,
    Reload,
    /// Its slot's worker stayed above `--max-memory`.
    Memory,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Start => "start",
            Cause::Replacement => "replacement",
            Cause::Reload => "reload",
            Cause::Memory => "memory",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WorkerState {
    Starting,
    /// Ready, and being probed (`--health`) before it takes its slot.
    Probing,
    Ready,
    Draining,
    /// Draining, and told to end its grace early: a reload storm left more
    /// than `MAX_DRAINING_GENERATIONS` generations draining.
    Hurried,
}

impl WorkerState {
    pub const ALL: [WorkerState; 5] = [
        WorkerState::Starting,
        WorkerState::Probing,
        WorkerState::Ready,
        WorkerState::Draining,
        WorkerState::Hurried,
    ];

    /// As `status` and `/metrics` name it.
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Probing => "probing",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Hurried => "hurried",
        }
    }

    pub fn is_draining(self) -> bool {
        matches!(self, WorkerState::Draining | WorkerState::Hurried)
    }
}

/// One of the `--workers` positions the master keeps filled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Slot {
    /// The worker serving this slot, if one is alive.
    pub current: Option<WorkerId>,
    /// The generation a replacement for a crashed worker belongs to.
    pub generation: u64,
    /// Consecutive workers that died within `STABLE_LIFETIME`: the
    /// crash-loop backoff's exponent.
    pub quick_failures: u32,
    /// When a backed-off restart is due.
    #[serde(rename = "restart_at_ms", with = "wall_clock::optional")]
    pub restart_at: Option<Instant>,
    /// Crashed workers replaced in this slot.
    pub restarts: u64,
    /// A worker starting to take this slot over outside a reload (its
    /// worker used too much memory); the current one drains once it is
    /// ready.
    pub successor: Option<WorkerId>,
}

impl Slot {
    /// Counts the death of this slot's worker (`quick`: it died young) and
    /// says how long to wait before the restart: `None` for at once.
    pub fn backoff(&mut self, quick: bool) -> Option<Duration> {
        self.quick_failures = if quick { self.quick_failures + 1 } else { 0 };
        let beyond = self
            .quick_failures
            .checked_sub(QUICK_FAILURES_BEFORE_BACKOFF + 1)?;
        Some(
            BACKOFF_FIRST
                .saturating_mul(1 << beyond.min(16))
                .min(BACKOFF_CAP),
        )
    }
}

/// Instants as milliseconds since the epoch: an `Instant` means nothing in
/// another process, the wall clock does (an upgrade's next image, or the
/// previous one coming back, reads them).
pub(crate) mod wall_clock {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tokio::time::Instant;

    /// Milliseconds since the epoch now.
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// `at` on the wall clock.
    pub fn to_ms(at: Instant) -> u64 {
        let now = Instant::now();
        let now_ms = now_ms();
        if at >= now {
            now_ms + at.duration_since(now).as_millis() as u64
        } else {
            now_ms.saturating_sub(now.duration_since(at).as_millis() as u64)
        }
    }

    /// The instant of `at_ms` on the wall clock.
    pub fn from_ms(at_ms: u64) -> Instant {
        let now = Instant::now();
        let now_ms = now_ms();
        if at_ms >= now_ms {
            crate::config::deadline(now, Duration::from_millis(at_ms - now_ms))
        } else {
            now.checked_sub(Duration::from_millis(now_ms - at_ms))
                .unwrap_or(now)
        }
    }

    pub fn serialize<S: Serializer>(at: &Instant, serializer: S) -> Result<S::Ok, S::Error> {
        to_ms(*at).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Instant, D::Error> {
        u64::deserialize(deserializer).map(from_ms)
    }

    /// The same for an `Option<Instant>`.
    pub mod optional {
        use super::*;

        pub fn serialize<S: Serializer>(
            at: &Option<Instant>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            at.map(to_ms).serialize(serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Instant>, D::Error> {
            Option::<u64>::deserialize(deserializer).map(|at| at.map(from_ms))
        }
    }
}
