//! `baton status`: the master and its workers, as a table for people or
//! JSON for machines.

use serde::Serialize;
use tokio::time::Instant;

use super::effects::Effects;
use super::metrics::Counters;
use super::supervisor::{Outcome, Phase, Supervisor, WorkerState};
use super::WorkerStats;
use crate::procfs;

#[derive(Serialize)]
struct Status {
    master: Master,
    workers: Vec<WorkerRow>,
    /// Slots waiting out a crash-loop backoff.
    backoff: Vec<Backoff>,
}

#[derive(Serialize)]
struct Master {
    pid: u32,
    /// The version of the baton program serving (it changes with `baton
    /// upgrade`).
    version: &'static str,
    /// The newest generation serving in a slot (not one being rolled in,
    /// nor one whose reload failed).
    generation: u64,
    /// `starting`, `running`, `degraded` (a slot has no ready worker: a
    /// crash, a crash loop backing off), `listener_down` (a listener is not
    /// listening and could not be put right), `reloading`, `upgrading` (the
    /// new program is being checked), `stopping`.
    state: &'static str,
    uptime_s: f64,
    workers_wanted: usize,
    workers_ready: usize,
    /// Listeners not listening that could not be put right.
    listeners_down: Vec<String>,
    reload_in_progress: bool,
    /// The generation the reload in progress rolls in.
    #[serde(skip_serializing_if = "Option::is_none")]
    reloading_to: Option<u64>,
    last_reload: Option<Outcome>,
    /// What happened over the master's life (as on `/metrics`).
    counters: Counters,
    /// For load balancers: `serving`, `lame_duck` or `draining`.
    host: &'static str,
    /// Connections the built-in workers have open (none for COMMAND
    /// workers, which do not report them): wait for 0 before stopping.
    open_connections: Option<u64>,
    /// The newest generation, while a crash of one of its workers would
    /// still roll it back.
    probation: Option<ProbationRow>,
}

#[derive(Serialize)]
struct ProbationRow {
    generation: u64,
    remaining_s: f64,
    /// The generation whose release a rollback would start again.
    rollback_to: u64,
}

#[derive(Serialize)]
struct WorkerRow {
    slot: usize,
    pid: u32,
    generation: u64,
    state: &'static str,
    uptime_s: f64,
    /// Crashed workers replaced in this slot.
    restarts: u64,
    /// Traffic counters; absent for COMMAND workers.
    #[serde(flatten)]
    stats: Option<WorkerStats>,
    /// Memory and CPU of the worker's process group.
    #[serde(flatten)]
    usage: procfs::Usage,
}

#[derive(Serialize)]
struct Backoff {
    slot: usize,
    quick_failures: u32,
    restart_in_s: f64,
}

pub(super) fn render<E: Effects>(supervisor: &Supervisor<E>, json: bool) -> String {
    let status = collect(supervisor);
    if json {
        let text = serde_json::to_string_pretty(&status).expect("the status serializes");
        return format!("ok\n{text}\n");
    }
    table(&status)
}

fn collect<E: Effects>(supervisor: &Supervisor<E>) -> Status {
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
            },
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
            version: env!("CARGO_PKG_VERSION"),
            generation: supervisor.serving_generation(),
            state: match supervisor.phase {
                Phase::Starting => "starting",
                Phase::Stopping => "stopping",
                Phase::Running if !listeners_down.is_empty() => "listener_down",
                Phase::Running if supervisor.upgrade.is_some() => "upgrading",
                Phase::Running if supervisor.reloads.rollout.is_some() => "reloading",
                Phase::Running if ready < supervisor.slots.len() => "degraded",
                Phase::Running => "running",
            },
            uptime_s: (now - supervisor.started).as_secs_f64(),
            workers_wanted: supervisor.slots.len(),
            workers_ready: ready,
            listeners_down,
            reload_in_progress: supervisor.reloads.rollout.is_some(),
            reloading_to: supervisor.reloads.rollout.as_ref().map(|r| r.generation),
            last_reload: supervisor.reloads.last.clone(),
            counters: supervisor.counters.clone(),
            host: supervisor.host_state(),
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

fn table(status: &Status) -> String {
    let master = &status.master;
    let mut text = format!(
        "ok\nmaster pid {}, {} ({}/{} workers ready), generation {}, up {}; last reload: {}\n",
        master.pid,
        master.state,
        master.workers_ready,
        master.workers_wanted,
        master.generation,
        human(master.uptime_s),
        master
            .last_reload
            .as_ref()
            .map_or_else(|| "none".to_owned(), Outcome::summary),
    );
    if master.host != "serving" {
        text += &format!(
            "host: {} (health checks fail); {} connections open\n",
            master.host,
            master
                .open_connections
                .map_or_else(|| "?".to_owned(), |n| n.to_string())
        );
    }
    if !master.listeners_down.is_empty() {
        text += &format!(
            "listeners down (not listening, cannot be put right): {}\n",
            master.listeners_down.join(", ")
        );
    }
    if let Some(generation) = master.reloading_to {
        text += &format!("reloading to generation {generation}\n");
    }
    if let Some(p) = &master.probation {
        text += &format!(
            "generation {} on probation for {:.1} s more; a crash rolls back to generation {}'s release\n",
            p.generation, p.remaining_s, p.rollback_to
        );
    }
    text += &format!(
        "{:<5} {:<8} {:<4} {:<9} {:>8} {:>8} {:>9} {:>8} {:>6} {:>9} {:>10}\n",
        "SLOT",
        "PID",
        "GEN",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "RSS",
        "CPU",
        "OPEN",
        "ACCEPTED",
        "REQUESTS"
    );
    for w in &status.workers {
        let count = |f: fn(&WorkerStats) -> u64| {
            w.stats
                .as_ref()
                .map_or("-".to_owned(), |s| f(s).to_string())
        };
        text += &format!(
            "{:<5} {:<8} {:<4} {:<9} {:>8} {:>8} {:>9} {:>8} {:>6} {:>9} {:>10}\n",
            w.slot,
            w.pid,
            w.generation,
            w.state,
            human(w.uptime_s),
            w.restarts,
            format!("{:.1}M", w.usage.rss_bytes as f64 / (1024.0 * 1024.0)),
            format!("{:.2}s", w.usage.cpu_s),
            count(|s| s.open_connections),
            count(|s| s.accepted),
            count(|s| s.requests),
        );
    }
    for b in &status.backoff {
        text += &format!(
            "slot {} is backing off after {} quick crashes: restart in {:.1} s\n",
            b.slot, b.quick_failures, b.restart_in_s
        );
    }
    text
}

/// 42s, 3m07s, 2h05m.
fn human(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}
