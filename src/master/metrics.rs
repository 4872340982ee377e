//! `/metrics` on the admin listener: the supervisor's counters and gauges
//! in the Prometheus (OpenMetrics) text format, rendered from its state at
//! each scrape. The workers' traffic counters come from the reports they
//! already send every second; nothing here touches a client connection.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::control::status::{Counters, Status};
use crate::master::state::WorkerState;

/// Labels: `[("state", "ready")]` and the like.
type Labels = Vec<(&'static str, String)>;

/// A counter per value of `label`.
fn by_label(label: &'static str, counts: &[(&str, u64)]) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for &(value, count) in counts {
        family
            .get_or_create(&vec![(label, value.to_owned())])
            .inc_by(count);
    }
    family
}

pub(super) fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("baton");
    register_counters(&mut registry, &status.master.counters);
    register_gauges(&mut registry, status);
    register_worker_reports(&mut registry, status);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// What happened over the master's life.
fn register_counters(registry: &mut Registry, counters: &Counters) {
    registry.register(
        "reloads",
        "Reloads by outcome",
        by_label(
            "outcome",
            &[
                ("ok", counters.reloads_ok),
                ("failed", counters.reloads_failed),
                ("rejected", counters.reloads_rejected),
                ("rolled_back", counters.reloads_rolled_back),
                ("unhealthy", counters.reloads_unhealthy),
            ],
        ),
    );
    registry.register(
        "upgrades",
        "Upgrades of baton itself by outcome",
        by_label(
            "outcome",
            &[
                ("ok", counters.upgrades_ok),
                ("refused", counters.upgrades_refused),
                ("failed", counters.upgrades_failed),
            ],
        ),
    );
    registry.register(
        "connection_handovers",
        "Idle connections draining workers handed over, by what became of them",
        by_label(
            "outcome",
            &[
                ("moved", counters.connections_handed_over),
                ("fell_back", counters.connections_fell_back),
            ],
        ),
    );
    registry.register(
        "rescued",
        "Connections draining COMMAND workers let go that the rescuer took, and requests it forwarded",
        by_label(
            "kind",
            &[
                ("connections", counters.connections_rescued),
                ("requests", counters.requests_rescued),
            ],
        ),
    );
    registry.register(
        "listener_repairs",
        "Listeners a worker changed, put right, by what it did",
        by_label(
            "fault",
            &[
                ("shut_down", counters.listener_restores),
                ("backlog", counters.backlog_restores),
            ],
        ),
    );
    for (name, help, value) in [
        (
            "worker_crashes",
            "Workers that died on their own while serving",
            counters.crashes,
        ),
        (
            "worker_restarts",
            "Workers started to replace a crashed one",
            counters.restarts,
        ),
        (
            "memory_rolls",
            "Workers rolled for staying above --max-memory",
            counters.memory_rolls,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
}

/// The master's state now.
fn register_gauges(registry: &mut Registry, status: &Status) {
    let master = &status.master;
    let workers = Family::<Labels, Gauge>::default();
    for name in WorkerState::ALL.map(WorkerState::name) {
        let count = status.workers.iter().filter(|w| w.state == name).count();
        workers
            .get_or_create(&vec![("state", name.to_owned())])
            .set(count as i64);
    }
    registry.register("workers", "Worker processes by state", workers);
    for (name, help, value) in [
        (
            "workers_wanted",
            "Slots the master keeps filled (--workers)",
            master.workers_wanted as i64,
        ),
        (
            "generation",
            "The newest generation serving in a slot",
            master.generation as i64,
        ),
        (
            "reload_in_progress",
            "1 while a reload rolls",
            i64::from(master.reload_in_progress),
        ),
        (
            "listeners_down",
            "Listeners not listening that could not be put right",
            master.listeners_down.len() as i64,
        ),
        (
            "backing_off_slots",
            "Slots waiting out a crash-loop backoff",
            status.backoff.len() as i64,
        ),
    ] {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    }
}

/// Built-in workers' own reports.
fn register_worker_reports(registry: &mut Registry, status: &Status) {
    let requests = Family::<Labels, Counter>::default();
    let accepted = Family::<Labels, Counter>::default();
    let open = Family::<Labels, Gauge>::default();
    for worker in &status.workers {
        let Some(stats) = worker.stats else {
            continue;
        };
        let labels = vec![
            ("slot", worker.slot.to_string()),
            ("generation", worker.generation.to_string()),
            ("pid", worker.pid.to_string()),
        ];
        requests.get_or_create(&labels).inc_by(stats.requests);
        accepted.get_or_create(&labels).inc_by(stats.accepted);
        open.get_or_create(&labels)
            .set(stats.open_connections as i64);
    }
    registry.register(
        "worker_requests",
        "Requests a built-in worker answered",
        requests,
    );
    registry.register(
        "worker_accepted_connections",
        "Connections a built-in worker accepted",
        accepted,
    );
    registry.register(
        "worker_open_connections",
        "Connections a built-in worker has open",
        open,
    );
}
