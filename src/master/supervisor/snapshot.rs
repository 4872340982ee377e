//! The supervisor's state taken as a [`Status`] value: what `baton status`
//! prints and `/metrics` renders.

use tokio::time::Instant;

use super::Supervisor;
use crate::control::status::{Backoff, Master, ProbationRow, Status, WorkerRow};
use crate::master::effects::Effects;
use crate::master::state::Phase;

impl<E: Effects> Supervisor<E> {
    /// The state now. The workers' memory and CPU are left at zero: reading
    /// them is an effect, for the caller to add.
    pub fn status(&self) -> Status {
        let supervisor = self;
        let now = Instant::now();
        let mut workers: Vec<WorkerRow> = supervisor
            .workers
            .values()
            .map(|w| WorkerRow {
                slot: w.slot,
                pid: w.pid,
                generation: w.generation,
                state: w.state.name().to_owned(),
                uptime_s: (now - w.started).as_secs_f64(),
                restarts: supervisor.slots.get(w.slot).map_or(0, |s| s.restarts),
                stats: w.stats,
                usage: Default::default(),
            })
            .collect();
        workers.sort_by_key(|w| (w.slot, w.generation, w.pid));
        let backoff = supervisor
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let at = s.restart_at?;
                Some(Backoff {
                    slot,
                    quick_failures: s.quick_failures,
                    restart_in_s: at.saturating_duration_since(now).as_secs_f64(),
                })
            })
            .collect();
        let ready = supervisor.ready_slots();
        let listeners_down: Vec<String> =
            supervisor.listening.broken().map(str::to_owned).collect();
        Status {
            master: Master {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                generation: supervisor.serving_generation(),
                state: match supervisor.phase {
                    Phase::Starting => "starting",
                    Phase::Stopping => "stopping",
                    Phase::Running if !listeners_down.is_empty() => "listener_down",
                    Phase::Running if supervisor.upgrade.is_some() => "upgrading",
                    Phase::Running if supervisor.reloads.rollout.is_some() => "reloading",
                    Phase::Running if ready < supervisor.slots.len() => "degraded",
                    Phase::Running => "running",
                }
                .to_owned(),
                uptime_s: (now - supervisor.started).as_secs_f64(),
                workers_wanted: supervisor.slots.len(),
                workers_ready: ready,
                listeners_down,
                reload_in_progress: supervisor.reloads.rollout.is_some(),
                reloading_to: supervisor.reloads.rollout.as_ref().map(|r| r.generation),
                last_reload: supervisor.reloads.last.clone(),
                counters: supervisor.counters.clone(),
                host: supervisor.host_state().to_owned(),
                open_connections: supervisor
                    .workers
                    .values()
                    .map(|w| w.stats.map(|s| s.open_connections))
                    .sum(),
                probation: supervisor.reloads.probation.as_ref().map(|p| ProbationRow {
                    generation: p.generation,
                    remaining_s: p.until.saturating_duration_since(now).as_secs_f64(),
                    rollback_to: p.previous.generation,
                }),
            },
            workers,
            backoff,
        }
    }
}
