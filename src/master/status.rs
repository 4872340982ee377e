//! `baton status`: the supervisor's state taken as a [`Status`] value,
//! which the client prints.

use tokio::time::Instant;

use super::effects::Effects;
use super::supervisor::{Phase, Supervisor, WorkerState};
use crate::control::status::{Backoff, Master, ProbationRow, Status, WorkerRow};
use crate::procfs;

pub(super) fn collect<E: Effects>(supervisor: &Supervisor<E>) -> Status {
    let now = Instant::now();
    let mut workers: Vec<WorkerRow> = supervisor
        .workers
        .values()
        .map(|w| WorkerRow {
            slot: w.slot,
            pid: w.pid,
            generation: w.generation,
            state: match w.state {
                WorkerState::Starting => "starting",
                WorkerState::Ready => "ready",
                WorkerState::Draining => "draining",
                WorkerState::Hurried => "hurried",
            }
            .to_owned(),
            uptime_s: (now - w.started).as_secs_f64(),
            restarts: supervisor.slots.get(w.slot).map_or(0, |s| s.restarts),
            stats: w.stats,
            usage: procfs::group_usage(w.pid),
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
    let listeners_down: Vec<String> = supervisor.listening.broken().map(str::to_owned).collect();
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
