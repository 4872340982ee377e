//! The master's lifecycle events, as data.
//!
//! Every log line that marks a step in a worker's or a reload's life carries
//! an `event` field with one of these names, beside its own fields (`pid`,
//! `slot`, `generation`, `reason`, …). The names are stable. `baton check`,
//! the tests and the benches run the master with `--log-format json` and
//! read each line as a [`Logged`] value, never through the wording of the
//! message beside it; so may anyone who reads baton's log with a program.

use serde_json::{Map, Value};
use strum::IntoEnumIterator;

/// One step in the life of the master, a worker or a reload.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::EnumIter,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
)]
#[strum(serialize_all = "snake_case")]
pub enum Event {
    /// The master started; `pid=`, `version=`.
    MasterStarted,
    /// A listener is bound (or inherited); `addr=`.
    Listening,
    /// A socket for operators is bound; `option=` (`admin` or `agent`),
    /// `addr=`.
    OperatorsListening,
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
    /// The stable name logged as its `event` field.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Every event.
    pub fn all() -> impl Iterator<Item = Event> {
        Event::iter()
    }
}

/// One line of baton's JSON log (`--log-format json`), read: its level,
/// message and lifecycle event, and its fields with those of the span it
/// was logged in (a worker's `slot`, `generation`, `pid`).
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub level: String,
    pub message: String,
    pub event: Option<Event>,
    fields: Map<String, Value>,
}

impl Logged {
    /// Reads one JSON log line; `None` for a line that is not one (a
    /// COMMAND worker's own output, say).
    pub fn parse(line: &str) -> Option<Logged> {
        let Value::Object(mut fields) = serde_json::from_str(line).ok()? else {
            return None;
        };
        // The span's fields, under the event's own.
        if let Some(Value::Object(span)) = fields.remove("span") {
            for (key, value) in span {
                fields.entry(key).or_insert(value);
            }
        }
        let text = |fields: &mut Map<String, Value>, key: &str| match fields.remove(key) {
            Some(Value::String(text)) => text,
            _ => String::new(),
        };
        let level = text(&mut fields, "level");
        let message = text(&mut fields, "message");
        let event = fields
            .get("event")
            .and_then(Value::as_str)
            .and_then(|name| name.parse().ok());
        Some(Logged {
            level,
            message,
            event,
            fields,
        })
    }

    /// A field's value as text (numbers and booleans written out).
    pub fn field(&self, key: &str) -> Option<String> {
        match self.fields.get(key)? {
            Value::String(text) => Some(text.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// A field's value read as `T` (a number, an address).
    pub fn parsed<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.field(key)?.parse().ok()
    }

    /// Whether this line carries `event` with `key` equal to `value`.
    pub fn is(&self, event: Event, key: &str, value: &str) -> bool {
        self.event == Some(event) && self.field(key).as_deref() == Some(value)
    }
}

impl std::fmt::Display for Logged {
    /// The line for a person: level, message, fields.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.level, self.message)?;
        for (key, value) in &self.fields {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_read_back_from_its_log_line() {
        for event in Event::all() {
            let line = format!(
                r#"{{"timestamp":"2026-11-29T23:42:35.369700Z","level":"INFO","message":"some words","event":"{event}","pid":12,"reason":"a reason: with words","span":{{"name":"worker","slot":0,"generation":3}},"target":"baton::master"}}"#
            );
            let logged = Logged::parse(&line).unwrap();
            assert_eq!(logged.event, Some(event), "{line}");
            assert_eq!(logged.parsed::<u32>("pid"), Some(12));
            assert_eq!(
                logged.field("reason").as_deref(),
                Some("a reason: with words")
            );
            assert_eq!(
                logged.parsed::<u64>("generation"),
                Some(3),
                "span fields too"
            );
            assert_eq!(logged.message, "some words");
        }
        let plain = Logged::parse(r#"{"level":"INFO","message":"reload complete"}"#).unwrap();
        assert_eq!(plain.event, None);
        let unknown = Logged::parse(r#"{"event":"no_such_event"}"#).unwrap();
        assert_eq!(unknown.event, None);
        assert_eq!(Logged::parse("[slot 0 pid 12] listening on 3"), None);
    }

    #[test]
    fn names_are_distinct_and_snake_case() {
        let mut names: Vec<_> = Event::all().map(Event::name).collect();
        assert_eq!(Event::ReloadComplete.name(), "reload_complete");
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Event::all().count());
    }
}
