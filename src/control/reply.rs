//! What the master answers on the control socket, as values.
//!
//! The supervisor, the upgrade and the control server build a [`Reply`];
//! the `baton` command line, the admin listener (`/healthz`, `/readyz`,
//! `/metrics`) and the agent check read it. The words a person reads are
//! made here, in [`Reply`]'s `Display`, and nowhere else; whether a reply
//! is a success is [`Reply::is_ok`], not its first word.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use super::status::ReloadOutcome;
use super::status::Status;

/// One answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// `reload`: a reload was asked for (see `status` for how it goes).
    ReloadRequested,
    /// `reload --wait`: how the reload ended.
    Reload(ReloadOutcome),
    /// `upgrade`: an upgrade was asked for.
    UpgradeRequested,
    /// `upgrade --wait`: how the upgrade ended.
    Upgrade(UpgradeOutcome),
    /// `stop`: every worker drains, then the master exits.
    Stopping,
    /// `drain`: lame duck: health checks fail, the workers go on serving.
    LameDuck,
    /// `undrain`: health checks pass again.
    Serving,
    /// `health`: whether this host should get traffic, and its state
    /// (`serving`, `lame_duck` or `draining`).
    Health { state: String },
    /// `ready`: whether the first generation is ready, and the master's
    /// phase (`running`, `starting` or `stopping`).
    Readiness { phase: String },
    /// `status`: the master and its workers.
    Status(Box<Status>),
    /// `metrics`: the Prometheus text of `/metrics`.
    Metrics { text: String },
    /// The request was not carried out.
    Error(Problem),
}

/// How `baton upgrade --wait` ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UpgradeOutcome {
    /// Not tried: the master is busy with something else.
    Refused { reason: String },
    /// The new program failed its check; this one goes on.
    CheckFailed { reason: String, version: String },
    /// The master began to shut down first.
    Cancelled,
    /// The new program could not be run; this one goes on.
    ExecFailed { reason: String },
    /// The new program failed while taking over; the previous program
    /// (`version`) took its state back, with the same workers.
    FellBack { reason: String, version: String },
    /// The new program serves; what became of the workers.
    TookOver {
        version: String,
        took_ms: u64,
        workers: Workers,
    },
}

/// The workers after an upgrade took over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "workers", rename_all = "snake_case")]
pub enum Workers {
    /// `--keep-workers`: the same processes serve.
    Kept,
    /// Rolled to the new program, like a reload.
    Rolled { roll: ReloadOutcome },
    /// The roll's outcome never came (the master is exiting).
    Unknown,
}

/// Why a request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The client runs as another user than the master's, and not as root.
    PermissionDenied { master_uid: u32 },
    /// The client connected and said nothing.
    NoRequestInTime,
    /// The request line was longer than the protocol allows.
    TooLong { max_bytes: u64 },
    /// The request was not a request of this protocol.
    Unknown { request: String },
    /// The client speaks another version of the control protocol.
    Version { master: u32, client: u32 },
    /// The master is shutting down.
    ShuttingDown,
    /// A reload asked for while `baton upgrade` prepares.
    UpgradeInProgress,
}

impl Reply {
    /// Whether the request did what it asked (the command's exit status,
    /// `/healthz`'s and `/readyz`'s HTTP status).
    pub fn is_ok(&self) -> bool {
        match self {
            Reply::Reload(outcome) => outcome.is_ok(),
            Reply::Upgrade(UpgradeOutcome::TookOver { workers, .. }) => match workers {
                Workers::Kept => true,
                Workers::Rolled { roll } => roll.is_ok(),
                Workers::Unknown => false,
            },
            Reply::Upgrade(_) | Reply::Error(_) => false,
            Reply::Health { state } => state == "serving",
            Reply::Readiness { phase } => phase == "running",
            Reply::ReloadRequested
            | Reply::UpgradeRequested
            | Reply::Stopping
            | Reply::LameDuck
            | Reply::Serving
            | Reply::Status(_)
            | Reply::Metrics { .. } => true,
        }
    }
}

/// The first word of every line a person reads: `ok` or `error`.
fn word(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "error"
    }
}

impl fmt::Display for Reply {
    /// The reply in words, one line (the status: a table), ending in a
    /// newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ok = word(self.is_ok());
        match self {
            Reply::ReloadRequested => writeln!(f, "ok: reload requested"),
            Reply::Reload(outcome) => writeln!(f, "{ok}: {outcome}"),
            Reply::UpgradeRequested => writeln!(f, "ok: upgrade requested; see baton status"),
            Reply::Upgrade(outcome) => writeln!(f, "{ok}: {outcome}"),
            Reply::Stopping => writeln!(f, "ok: draining every worker, then exiting"),
            Reply::LameDuck => writeln!(
                f,
                "ok: lame duck: health checks fail, the workers go on serving"
            ),
            Reply::Serving => writeln!(f, "ok: serving: health checks pass"),
            Reply::Health { state } => writeln!(f, "{ok}: {state}"),
            Reply::Readiness { .. } if self.is_ok() => writeln!(f, "ok: ready"),
            Reply::Readiness { phase } => writeln!(f, "error: {phase}"),
            Reply::Status(status) => write!(f, "{}", status.table()),
            Reply::Metrics { text } => write!(f, "{text}"),
            Reply::Error(problem) => writeln!(f, "error: {problem}"),
        }
    }
}

impl fmt::Display for UpgradeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeOutcome::Refused { reason } => write!(f, "upgrade refused: {reason}"),
            UpgradeOutcome::CheckFailed { reason, version } => write!(
                f,
                "upgrade refused: {reason}; baton {version} goes on unchanged"
            ),
            UpgradeOutcome::Cancelled => write!(f, "upgrade cancelled: baton is shutting down"),
            UpgradeOutcome::ExecFailed { reason } => write!(f, "upgrade failed: {reason}"),
            UpgradeOutcome::FellBack { reason, version } => write!(
                f,
                "upgrade failed: {reason}; baton {version} is serving again, with the same workers"
            ),
            UpgradeOutcome::TookOver {
                version,
                took_ms,
                workers,
            } => {
                write!(f, "baton {version} took over in {took_ms} ms; ")?;
                match workers {
                    Workers::Kept => write!(f, "the workers were kept"),
                    Workers::Rolled { roll } => write!(f, "roll of the workers: {roll}"),
                    Workers::Unknown => write!(f, "roll of the workers: no outcome"),
                }
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::PermissionDenied { master_uid } => write!(
                f,
                "permission denied: only root or uid {master_uid} may control this baton"
            ),
            Problem::NoRequestInTime => write!(f, "no request in time"),
            Problem::TooLong { max_bytes } => {
                write!(f, "requests are at most {max_bytes} bytes")
            }
            Problem::Unknown { request } => write!(
                f,
                "unknown request {request:?}; this baton's control socket takes JSON lines (control protocol {}): use the baton command line",
                super::VERSION
            ),
            Problem::Version { master, client } => write!(
                f,
                "this master speaks control protocol {master} and the client {client}; use the baton program the master runs (/proc/PID/exe, PID from `baton status` or systemd)"
            ),
            Problem::ShuttingDown => write!(f, "baton is shutting down"),
            Problem::UpgradeInProgress => {
                write!(f, "an upgrade is in progress; reload once it has ended")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_as_json_and_read_as_before() {
        let rolled = Reply::Upgrade(UpgradeOutcome::TookOver {
            version: "1.2.3".into(),
            took_ms: 7,
            workers: Workers::Rolled {
                roll: ReloadOutcome::Ok {
                    generation: 3,
                    duration_ms: 12,
                    probation: None,
                },
            },
        });
        for (reply, text) in [
            (
                Reply::Reload(ReloadOutcome::Ok {
                    generation: 2,
                    duration_ms: 30,
                    probation: Some("stayed up through its probation".into()),
                }),
                "ok: generation 2 is in (30 ms); stayed up through its probation\n",
            ),
            (
                Reply::Reload(ReloadOutcome::Failed {
                    generation: 2,
                    reason: "no".into(),
                }),
                "error: reload of generation 2 failed: no; the old workers keep serving\n",
            ),
            (
                rolled,
                "ok: baton 1.2.3 took over in 7 ms; roll of the workers: generation 3 is in (12 ms)\n",
            ),
            (
                Reply::Health {
                    state: "lame_duck".into(),
                },
                "error: lame_duck\n",
            ),
            (
                Reply::Error(Problem::ShuttingDown),
                "error: baton is shutting down\n",
            ),
        ] {
            assert_eq!(reply.to_string(), text);
            let json = serde_json::to_string(&reply).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), reply, "{json}");
        }
    }
}
