//! The master's state as a value: what `baton status` carries over the
//! control socket, printed as a table for people or as JSON for machines.
//! The master builds it from the supervisor (`master::status`); nothing
//! here reads the supervisor.

use serde::{Deserialize, Serialize};

use std::fmt;

use crate::procfs;
use crate::protocol::WorkerStats;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub master: Master,
    pub workers: Vec<WorkerRow>,
    /// Slots waiting out a crash-loop backoff.
    pub backoff: Vec<Backoff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Master {
    pub pid: u32,
    /// The version of the baton program serving (it changes with `baton
    /// upgrade`).
    pub version: String,
    /// The newest generation serving in a slot (not one being rolled in,
    /// nor one whose reload failed).
    pub generation: u64,
    /// `starting`, `running`, `degraded` (a slot has no ready worker: a
    /// crash, a crash loop backing off), `listener_down` (a listener is not
    /// listening and could not be put right), `reloading`, `upgrading` (the
    /// new program is being checked), `stopping`.
    pub state: String,
    pub uptime_s: f64,
    pub workers_wanted: usize,
    pub workers_ready: usize,
    /// Listeners not listening that could not be put right.
    pub listeners_down: Vec<String>,
    pub reload_in_progress: bool,
    /// The generation the reload in progress rolls in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reloading_to: Option<u64>,
    pub last_reload: Option<ReloadOutcome>,
    /// What happened over the master's life (as on `/metrics`).
    pub counters: Counters,
    /// For load balancers: `serving`, `lame_duck` or `draining`.
    pub host: String,
    /// Connections the built-in workers have open (none for COMMAND
    /// workers, which do not report them): wait for 0 before stopping.
    pub open_connections: Option<u64>,
    /// The newest generation, while a crash of one of its workers would
    /// still roll it back.
    pub probation: Option<ProbationRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbationRow {
    pub generation: u64,
    pub remaining_s: f64,
    /// The generation whose release a rollback would start again.
    pub rollback_to: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub slot: usize,
    pub pid: u32,
    pub generation: u64,
    pub state: String,
    pub uptime_s: f64,
    /// Crashed workers replaced in this slot.
    pub restarts: u64,
    /// Traffic counters; absent for COMMAND workers.
    #[serde(flatten)]
    pub stats: Option<WorkerStats>,
    /// Memory and CPU of the worker's process group.
    #[serde(flatten)]
    pub usage: procfs::Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    pub slot: usize,
    pub quick_failures: u32,
    pub restart_in_s: f64,
}

/// What the supervisor counts over its life, for `/metrics` and
/// `status --json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Reloads by outcome.
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub reloads_rejected: u64,
    pub reloads_rolled_back: u64,
    /// Reloads whose new worker failed its `--health` probe.
    #[serde(default)]
    pub reloads_unhealthy: u64,
    /// Workers that died on their own while serving.
    pub crashes: u64,
    /// Workers started to replace a crashed one.
    pub restarts: u64,
    /// Workers rolled for staying above `--max-memory`.
    pub memory_rolls: u64,
    /// `baton upgrade`s by outcome: the new program took over; it was
    /// refused (before anything happened); it failed (the previous program
    /// came back, or the exec failed).
    #[serde(default)]
    pub upgrades_ok: u64,
    #[serde(default)]
    pub upgrades_refused: u64,
    #[serde(default)]
    pub upgrades_failed: u64,
    /// Listeners a worker shut down, listening again.
    #[serde(default)]
    pub listener_restores: u64,
    /// Listeners whose backlog a worker changed, set back.
    #[serde(default)]
    pub backlog_restores: u64,
    /// Idle connections draining workers handed over that a newer worker
    /// took.
    #[serde(default)]
    pub connections_handed_over: u64,
    /// Idle connections draining workers handed over that came back to
    /// them (no newer worker could take them).
    #[serde(default)]
    pub connections_fell_back: u64,
    /// Connections draining COMMAND workers let go that the rescuer took
    /// (`--rescue-connections`), and the requests it forwarded on them.
    #[serde(default)]
    pub connections_rescued: u64,
    #[serde(default)]
    pub requests_rescued: u64,
}

impl Status {
    /// The status as a table for people.
    pub fn table(&self) -> String {
        self.master_lines() + &self.worker_lines()
    }

    /// Where the master stands, one fact a line.
    fn master_lines(&self) -> String {
        let master = &self.master;
        let mut text = format!(
            "master pid {}, {} ({}/{} workers ready), generation {}, up {}; last reload: {}\n",
            master.pid,
            master.state,
            master.workers_ready,
            master.workers_wanted,
            master.generation,
            human(master.uptime_s),
            master
                .last_reload
                .as_ref()
                .map_or_else(|| "none".to_owned(), ReloadOutcome::summary),
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
        text
    }

    /// One line per worker under a header, then the slots backing off.
    fn worker_lines(&self) -> String {
        let status = self;
        let mut text = format!(
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

/// How a reload ended: kept as the last outcome for `baton status` (as
/// JSON, with `outcome` naming the variant) and said to `--wait` clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new configuration cannot be used; nothing was started.
    Rejected { reason: String },
    /// Every slot runs the new generation (and it passed its probation).
    Ok {
        generation: u64,
        duration_ms: u64,
        /// How its probation ended, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probation: Option<String>,
    },
    /// A new worker did not become ready; the old workers go on.
    Failed { generation: u64, reason: String },
    /// A new worker failed its `--health` probe; the old workers go on.
    Unhealthy {
        generation: u64,
        /// The worker probed.
        pid: u32,
        /// The status it answered, if it answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// The start of the body it answered.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        body: String,
        reason: String,
    },
    /// A worker of the new release crashed; the previous release rolls in.
    RolledBack {
        generation: u64,
        rollback_to: u64,
        reason: String,
    },
}

impl ReloadOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, ReloadOutcome::Ok { .. })
    }

    /// For `baton status` and systemd's STATUS=, after "last reload".
    pub fn summary(&self) -> String {
        match self {
            ReloadOutcome::Rejected { reason } => format!("rejected: {reason}"),
            ReloadOutcome::Ok {
                duration_ms,
                probation,
                ..
            } => format!("ok in {duration_ms} ms{}", note(probation)),
            ReloadOutcome::Failed { generation, reason } => {
                format!("of generation {generation} FAILED: {reason}")
            }
            ReloadOutcome::Unhealthy {
                generation,
                pid,
                reason,
                ..
            } => format!("of generation {generation} FAILED its health probe: worker {pid}: {reason}"),
            ReloadOutcome::RolledBack {
                generation,
                rollback_to,
                reason,
            } => format!(
                "of generation {generation} FAILED: {reason}; rolled back to generation {rollback_to}'s release"
            ),
        }
    }
}

/// "; stayed up through its probation", or nothing.
fn note(probation: &Option<String>) -> String {
    probation
        .as_ref()
        .map_or_else(String::new, |how| format!("; {how}"))
}

impl fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadOutcome::Rejected { reason } => write!(f, "reload rejected: {reason}"),
            ReloadOutcome::Ok {
                generation,
                duration_ms,
                probation,
            } => write!(
                f,
                "generation {generation} is in ({duration_ms} ms){}",
                note(probation)
            ),
            ReloadOutcome::Failed { generation, reason } => write!(
                f,
                "reload of generation {generation} failed: {reason}; the old workers keep serving"
            ),
            ReloadOutcome::Unhealthy {
                generation,
                pid,
                body,
                reason,
                ..
            } => {
                write!(
                    f,
                    "reload of generation {generation} failed its health probe: worker {pid}: {reason}"
                )?;
                if !body.is_empty() {
                    write!(f, " ({body:?})")?;
                }
                write!(f, "; the old workers keep serving")
            }
            ReloadOutcome::RolledBack {
                generation,
                rollback_to,
                reason,
            } => write!(
                f,
                "reload of generation {generation} failed: {reason}; rolling back to generation {rollback_to}'s release"
            ),
        }
    }
}
