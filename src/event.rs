//! The master's lifecycle events, as data.
//!
//! Each step in a worker's or a reload's life is a [`Lifecycle`] value with
//! its fields, logged by [`Lifecycle::log`] and nowhere else: a line with an
//! `event` field naming it ([`Event`], derived from the variant) beside its
//! own fields (`pid`, `slot`, `generation`, `reason`, …). The names are
//! stable. `baton check`,
//! the tests and the benches run the master with `--log-format json` and
//! read each line as a [`Logged`] value, never through the wording of the
//! message beside it; so may anyone who reads baton's log with a program.

use std::net::SocketAddr;

use serde_json::{Map, Value};
use strum::IntoEnumIterator;
use tracing::{error, info, warn};

/// One step in the life of the master, a worker or a reload, with what
/// is known of it. [`Lifecycle::log`] writes it: the one place a lifecycle
/// line is made. Its name, [`Event`], is derived from the variant.
#[derive(Debug, Clone, PartialEq, strum::EnumDiscriminants)]
#[strum_discriminants(
    name(Event),
    vis(pub),
    derive(
        Hash,
        strum::EnumIter,
        strum::EnumString,
        strum::IntoStaticStr,
        strum::Display
    ),
    strum(serialize_all = "snake_case")
)]
pub enum Lifecycle {
    /// The master started.
    MasterStarted {
        pid: u32,
        version: &'static str,
    },
    /// A listener is bound (or inherited).
    Listening {
        name: String,
        addr: String,
        inherited: bool,
    },
    /// A socket for operators is bound: `option` is `admin` or `agent`.
    OperatorsListening {
        option: &'static str,
        addr: SocketAddr,
        what: &'static str,
    },
    /// A worker process started; `cause` says why (`start`, `reload`,
    /// `replacement`, …).
    WorkerStarted {
        worker: WorkerRef,
        cause: String,
    },
    /// A worker is ready to serve.
    WorkerReady {
        worker: WorkerRef,
        cause: String,
    },
    /// Every slot of the first generation is ready.
    AllWorkersReady {
        workers: usize,
        generation: u64,
    },
    /// A worker broke the protocol, missed a deadline or stopped showing
    /// signs of life; it is being killed.
    WorkerFailed {
        worker: WorkerRef,
        reason: String,
    },
    /// A ready worker died on its own; it is being replaced.
    WorkerCrashed {
        worker: WorkerRef,
        status: String,
    },
    /// A worker exited otherwise than after a drain or a crash.
    WorkerExited {
        worker: WorkerRef,
        status: String,
        when: Exit,
    },
    /// A new worker passed its `--health` probes.
    WorkerHealthy {
        worker: WorkerRef,
        probes: u32,
        connections: u32,
        /// From its first sign of listening to the verdict.
        window_ms: u64,
        /// Client connections it held at the verdict.
        clients_held: u32,
    },
    /// A new worker failed a `--health` probe: it is stopped and the
    /// reload fails. `status` is what it answered, if it answered.
    WorkerUnhealthy {
        worker: WorkerRef,
        status: Option<u16>,
        reason: String,
        /// From its first sign of listening to the verdict, if it listened.
        window_ms: Option<u64>,
        connections: u32,
        /// Client connections it held at the verdict.
        clients_held: u32,
    },
    /// A worker told to drain has exited.
    WorkerDrained {
        worker: WorkerRef,
        status: String,
    },
    /// A worker was told to drain.
    WorkerDraining {
        worker: WorkerRef,
    },
    /// A draining worker was told to end its grace early.
    WorkerHurried {
        worker: WorkerRef,
    },
    /// A slot's workers keep dying young: its next start waits.
    Backoff {
        slot: usize,
        delay_ms: u64,
        failures: u32,
    },
    /// A worker over `--max-memory` is being rolled.
    MemoryRoll {
        worker: WorkerRef,
        rss_bytes: u64,
        limit_bytes: u64,
    },
    ReloadStarted {
        generation: u64,
    },
    /// Every slot runs the new generation (its probation may follow).
    ReloadComplete {
        generation: u64,
        elapsed_ms: u64,
    },
    /// A reload failed before it completed; the old workers keep serving.
    ReloadFailed {
        generation: u64,
        replaced: usize,
        slots: usize,
        reason: String,
    },
    /// A reload was refused before it started (a bad config file).
    ReloadRejected {
        reason: String,
    },
    /// The new generation is on probation.
    ProbationStarted {
        generation: u64,
        probation_ms: u64,
    },
    /// The probation ended and the reload counts as done.
    ProbationOver {
        generation: u64,
        how: String,
    },
    /// A worker of the release on trial crashed: the reload failed and a
    /// rollback follows.
    ReleaseFailed {
        generation: u64,
        rollback_to: u64,
        reason: String,
    },
    RollbackStarted {
        generation: u64,
        rollback_to: u64,
    },
    RollbackComplete {
        generation: u64,
        elapsed_ms: u64,
    },
    /// Lame duck: health checks fail so that load balancers stop sending
    /// traffic; the workers go on serving.
    LameDuck {
        reason: String,
    },
    /// Back from lame duck: health checks pass again.
    Undrained,
    /// `baton upgrade`: the new program is being checked.
    UpgradeStarted {
        program: String,
    },
    /// The new program took over the master's state, in the same pid.
    Upgraded {
        version: String,
        pid: u32,
        took_ms: u64,
        workers: usize,
    },
    /// An upgrade was refused or failed; the program that logs it serves.
    UpgradeFailed {
        reason: String,
        stage: UpgradeStage,
    },
    /// The master drains (or, `at_once`, kills) every worker to exit.
    ShuttingDown {
        workers: usize,
        at_once: bool,
    },
    /// The first start failed; the master exits.
    StartFailed {
        reason: String,
    },
    /// A worker shut a listening socket down; it listens again.
    ListenerRestored {
        listener: String,
        suspects: String,
    },
    /// A worker changed a listener's backlog; it is set back.
    BacklogRestored {
        listener: String,
        found: u32,
        backlog: u32,
        suspects: String,
    },
    /// A listener is not as it should be and cannot be put right.
    ListenerDown {
        listener: String,
        fault: String,
        suspects: String,
        cause: String,
    },
    /// Copies of a draining COMMAND worker's idle connections went to the
    /// rescuer, before the drain signal.
    ConnectionsWatched {
        pid: u32,
        connections: usize,
        took_us: u64,
    },
    /// The draining worker's idle connections could not be copied: they
    /// drain as the program closes them.
    RescueUnavailable {
        pid: u32,
        cause: String,
    },
    /// The rescuer process started.
    RescuerStarted {
        pid: u32,
    },
    /// The rescuer served (or closed) a connection a program let go:
    /// `requests` is 1 when it forwarded a request and brought its answer.
    Rescued {
        connections: u64,
        requests: u64,
    },
}

/// The worker an event is about, as every worker event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerRef {
    pub pid: u32,
    pub slot: usize,
    pub generation: u64,
}

/// When a worker exited that neither drained nor crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// While the master stops.
    Stopping,
    /// Before it was ready, at the master's start: the start fails.
    FirstStart,
    /// The new worker of a reload, before it was ready: the reload fails.
    Rollout,
    /// The worker taking over a slot, before it was ready: the old one
    /// goes on.
    Successor,
}

/// Where an upgrade stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeStage {
    /// Refused before it began (one already runs, a reload runs…).
    Refused,
    /// The new program failed its check.
    Check,
    /// The new program could not be run.
    Exec,
    /// The new program could not take over; the previous one took its
    /// state back.
    TakeOver,
}

impl Lifecycle {
    /// Its name.
    pub fn event(&self) -> Event {
        self.into()
    }

    /// Logs it, with its `event` name and fields, at its level, in the
    /// current span.
    pub fn log(&self) {
        let event = self.event().name();
        match self {
            Lifecycle::MasterStarted { pid, version } => {
                info!(event, pid, version, "baton started")
            }
            Lifecycle::Listening {
                name,
                addr,
                inherited,
            } => {
                info!(event, name, addr, inherited, "listening")
            }
            Lifecycle::OperatorsListening { option, addr, what } => {
                info!(event, %addr, option, what, "listening for operators")
            }
            Lifecycle::AllWorkersReady {
                workers,
                generation,
            } => {
                info!(event, workers, generation, "all workers ready")
            }
            Lifecycle::Backoff {
                slot,
                delay_ms,
                failures,
            } => {
                warn!(
                    event,
                    slot, delay_ms, failures, "worker keeps dying; backing off"
                )
            }
            Lifecycle::ShuttingDown {
                workers,
                at_once: true,
            } => {
                info!(event, workers, "stopping at once: killing every worker")
            }
            Lifecycle::ShuttingDown {
                workers,
                at_once: false,
            } => {
                info!(event, workers, "shutting down: draining every worker")
            }
            Lifecycle::StartFailed { reason } => error!(event, reason, "start failed; stopping"),
            Lifecycle::ConnectionsWatched {
                pid,
                connections,
                took_us,
            } => {
                info!(
                    event,
                    pid, connections, took_us, "idle connections copied for the rescuer"
                )
            }
            Lifecycle::RescueUnavailable { pid, cause } => {
                warn!(
                    event,
                    pid, cause, "no rescue for this worker's idle connections"
                )
            }
            Lifecycle::RescuerStarted { pid } => info!(event, pid, "rescuer started"),
            Lifecycle::Rescued {
                connections,
                requests,
            } => {
                info!(
                    event,
                    connections, requests, "rescued a connection the program let go"
                )
            }
            Lifecycle::LameDuck { reason } => {
                info!(
                    event,
                    reason, "lame duck: health checks fail, the workers go on serving"
                )
            }
            Lifecycle::Undrained => info!(event, "lame duck over: health checks pass"),
            worker if worker.worker().is_some() => worker.log_worker(event),
            reload => reload.log_reload(event),
        }
    }

    /// The worker it is about, if it is about one.
    pub fn worker(&self) -> Option<WorkerRef> {
        match self {
            Lifecycle::WorkerStarted { worker, .. }
            | Lifecycle::WorkerReady { worker, .. }
            | Lifecycle::WorkerFailed { worker, .. }
            | Lifecycle::WorkerCrashed { worker, .. }
            | Lifecycle::WorkerExited { worker, .. }
            | Lifecycle::WorkerDrained { worker, .. }
            | Lifecycle::WorkerDraining { worker }
            | Lifecycle::WorkerHurried { worker }
            | Lifecycle::WorkerHealthy { worker, .. }
            | Lifecycle::WorkerUnhealthy { worker, .. }
            | Lifecycle::MemoryRoll { worker, .. } => Some(*worker),
            _ => None,
        }
    }

    fn log_worker(&self, event: &'static str) {
        let Some(WorkerRef {
            pid,
            slot,
            generation,
        }) = self.worker()
        else {
            return;
        };
        match self {
            Lifecycle::WorkerStarted { cause, .. } => {
                info!(event, pid, slot, generation, cause, "worker started")
            }
            Lifecycle::WorkerReady { cause, .. } => {
                info!(event, pid, slot, generation, cause, "worker ready")
            }
            Lifecycle::WorkerFailed { reason, .. } => {
                warn!(event, pid, slot, generation, reason, "worker failed")
            }
            Lifecycle::WorkerCrashed { .. }
            | Lifecycle::WorkerDrained { .. }
            | Lifecycle::WorkerExited { .. } => self.log_exit(event, pid, slot, generation),
            Lifecycle::WorkerHealthy {
                probes,
                connections,
                window_ms,
                clients_held,
                ..
            } => {
                info!(
                    event,
                    pid,
                    slot,
                    generation,
                    probes,
                    connections,
                    window_ms,
                    clients_held,
                    "worker passed its health probes"
                )
            }
            Lifecycle::WorkerUnhealthy {
                status,
                reason,
                window_ms,
                connections,
                clients_held,
                ..
            } => error!(
                event,
                pid,
                slot,
                generation,
                status,
                reason,
                window_ms,
                connections,
                clients_held,
                "worker failed its health probe; stopping it"
            ),
            Lifecycle::WorkerDraining { .. } => {
                info!(event, pid, slot, generation, "draining worker")
            }
            Lifecycle::WorkerHurried { .. } => {
                info!(event, pid, slot, generation, "hurrying a draining worker")
            }
            Lifecycle::MemoryRoll {
                rss_bytes,
                limit_bytes,
                ..
            } => {
                warn!(
                    event,
                    pid,
                    slot,
                    generation,
                    rss_bytes,
                    limit_bytes,
                    "worker over its memory limit; rolling it"
                )
            }
            _ => {}
        }
    }

    fn log_exit(&self, event: &'static str, pid: u32, slot: usize, generation: u64) {
        match self {
            Lifecycle::WorkerCrashed { status, .. } => {
                warn!(
                    event,
                    pid, slot, generation, status, "worker crashed; replacing it"
                )
            }
            Lifecycle::WorkerDrained { status, .. } => {
                info!(
                    event,
                    pid, slot, generation, status, "worker exited after draining"
                )
            }
            Lifecycle::WorkerExited {
                status,
                when: Exit::Stopping,
                ..
            } => {
                info!(event, pid, slot, generation, status, "worker exited")
            }
            Lifecycle::WorkerExited {
                status,
                when: Exit::FirstStart,
                ..
            } => {
                error!(
                    event,
                    pid, slot, generation, status, "worker exited before it was ready"
                )
            }
            Lifecycle::WorkerExited {
                status,
                when: Exit::Rollout,
                ..
            } => {
                warn!(
                    event,
                    pid, slot, generation, status, "new worker exited before it was ready"
                )
            }
            Lifecycle::WorkerExited {
                status,
                when: Exit::Successor,
                ..
            } => {
                warn!(event, pid, slot, generation, status, "the worker taking over the slot exited before it was ready; the old one goes on")
            }
            _ => {}
        }
    }

    fn log_reload(&self, event: &'static str) {
        match self {
            Lifecycle::ReloadStarted { generation } => info!(event, generation, "reload started"),
            Lifecycle::ReloadComplete {
                generation,
                elapsed_ms,
            } => {
                info!(event, generation, elapsed_ms, "reload complete")
            }
            Lifecycle::ReloadFailed {
                generation,
                replaced,
                slots,
                reason,
            } => {
                error!(
                    event,
                    generation,
                    replaced,
                    slots,
                    reason,
                    "reload failed; the old workers keep serving"
                )
            }
            Lifecycle::ReloadRejected { reason } => {
                error!(
                    event,
                    reason, "reload rejected; the workers go on untouched"
                )
            }
            Lifecycle::ProbationStarted {
                generation,
                probation_ms,
            } => {
                info!(
                    event,
                    generation, probation_ms, "new generation on probation"
                )
            }
            Lifecycle::ProbationOver { generation, how } => {
                info!(event, generation, how, "probation over")
            }
            Lifecycle::ReleaseFailed {
                generation,
                rollback_to,
                reason,
            } => {
                error!(
                    event,
                    generation, rollback_to, reason, "release failed; rolling back"
                )
            }
            Lifecycle::RollbackStarted {
                generation,
                rollback_to,
            } => {
                info!(event, generation, rollback_to, "rollback started")
            }
            Lifecycle::RollbackComplete {
                generation,
                elapsed_ms,
            } => {
                info!(event, generation, elapsed_ms, "rollback complete")
            }
            other => other.log_upgrade(event),
        }
    }

    fn log_upgrade(&self, event: &'static str) {
        match self {
            Lifecycle::UpgradeStarted { program } => {
                info!(event, program, "upgrade: checking the new program")
            }
            Lifecycle::Upgraded {
                version,
                pid,
                took_ms,
                workers,
            } => {
                info!(
                    event,
                    version, pid, took_ms, workers, "upgraded: this program took over"
                )
            }
            Lifecycle::UpgradeFailed {
                reason,
                stage: UpgradeStage::Refused,
            } => {
                warn!(event, reason, "upgrade refused")
            }
            Lifecycle::UpgradeFailed {
                reason,
                stage: UpgradeStage::Check,
            } => {
                error!(
                    event,
                    reason, "upgrade refused: the new program failed its check"
                )
            }
            Lifecycle::UpgradeFailed {
                reason,
                stage: UpgradeStage::Exec,
            } => {
                error!(event, reason, "upgrade failed; this program goes on")
            }
            Lifecycle::UpgradeFailed {
                reason,
                stage: UpgradeStage::TakeOver,
            } => {
                error!(
                    event,
                    reason, "upgrade failed; the previous program took its state back"
                )
            }
            listener => listener.log_listener(event),
        }
    }

    fn log_listener(&self, event: &'static str) {
        match self {
            Lifecycle::ListenerRestored { listener, suspects } => {
                error!(event, listener, suspects, "a worker shut the listening socket down (connections were refused, and those queued reset); listening again")
            }
            Lifecycle::BacklogRestored {
                listener,
                found,
                backlog,
                suspects,
            } => {
                warn!(
                    event,
                    listener,
                    found,
                    backlog,
                    suspects,
                    "a worker changed the listen backlog; set back"
                )
            }
            Lifecycle::ListenerDown {
                listener,
                fault,
                suspects,
                cause,
            } => {
                error!(
                    event,
                    listener,
                    fault,
                    suspects,
                    cause,
                    "a listener is not as it should be, and cannot be put right"
                )
            }
            _ => {}
        }
    }
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
    /// When it was logged.
    pub fn timestamp(&self) -> Option<std::time::SystemTime> {
        humantime::parse_rfc3339(self.fields.get("timestamp")?.as_str()?).ok()
    }

    /// Microseconds from `earlier`'s logging to this one's.
    pub fn micros_since(&self, earlier: &Logged) -> Option<u64> {
        let gap = self
            .timestamp()?
            .duration_since(earlier.timestamp()?)
            .ok()?;
        Some(gap.as_micros() as u64)
    }

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

    /// What `log` writes while `what` runs, as read back.
    fn logged(what: impl FnOnce()) -> Vec<Logged> {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let writer = move || Sink(sink.clone());
        let subscriber = tracing_subscriber::registry().with(crate::logging::json_lines(writer));
        tracing::subscriber::with_default(subscriber, what);
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        text.lines().filter_map(Logged::parse).collect()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_lifecycle_value_is_logged_with_its_name_and_its_fields() {
        let worker = WorkerRef {
            pid: 12,
            slot: 1,
            generation: 3,
        };
        let lines = logged(|| {
            Lifecycle::WorkerCrashed {
                worker,
                status: "signal 9 (SIGKILL)".into(),
            }
            .log();
            Lifecycle::ReloadFailed {
                generation: 4,
                replaced: 1,
                slots: 2,
                reason: "the new worker failed: no hello".into(),
            }
            .log();
            Lifecycle::UpgradeFailed {
                reason: "exec format error".into(),
                stage: UpgradeStage::Exec,
            }
            .log();
        });
        let [crashed, failed, upgrade] = &lines[..] else {
            panic!("three lines: {lines:?}");
        };
        assert!(crashed.is(Event::WorkerCrashed, "status", "signal 9 (SIGKILL)"));
        assert_eq!(crashed.parsed::<u32>("pid"), Some(12));
        assert_eq!(crashed.parsed::<usize>("slot"), Some(1));
        assert_eq!(crashed.level, "WARN");
        assert!(failed.is(
            Event::ReloadFailed,
            "reason",
            "the new worker failed: no hello"
        ));
        assert_eq!(failed.parsed::<usize>("replaced"), Some(1));
        assert_eq!(failed.level, "ERROR");
        assert_eq!(upgrade.event, Some(Event::UpgradeFailed));
        assert_eq!(upgrade.message, "upgrade failed; this program goes on");
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
