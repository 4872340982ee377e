//! Reloads and crashes under load, measured by the same engine as
//! `baton check`: latency in steady state and during rolling reloads, reload
//! duration for 4 workers, time from a worker's SIGKILL to its replacement
//! being ready, the master's memory, how evenly 4 workers share the load, and
//! failures (which must be 0).
//!
//! Run with `cargo bench --bench reload`.

#[path = "support.rs"]
mod support;

use std::time::Duration;

use baton::check::{self, CheckOptions, Target};
use support::baton_bin;

fn options(
    duration: Duration,
    reload_every: Option<Duration>,
    kill_every: Option<Duration>,
) -> CheckOptions {
    // Removed by the check once its server has stopped.
    let config = std::env::temp_dir().join(format!(
        "baton-bench-reload-{}-{}.toml",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&config, "listen = [\"127.0.0.1:0\"]\nworkers = 4\n").unwrap();
    CheckOptions {
        target: Target::SelfHosted {
            program: baton_bin(),
            config,
        },
        duration,
        connections: 64,
        keepalive_ratio: 0.5,
        reload_every,
        reloads: None,
        kill_every,
        request_timeout: Duration::from_secs(10),
        json: None,
        server_timing: Default::default(),
        scenarios: vec![baton::check::scenario::Scenario::Get],
        junit: None,
        plot: None,
        progress: false,
    }
}

fn row(name: &str, value: String, goal: &str, met: bool) {
    println!(
        "{name:<44} {value:>16}   {goal:<22} {}",
        if met { "met" } else { "MISSED" }
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = support::client_runtime();
    let run = |o| runtime.block_on(check::run(o)).expect("the check runs");

    let steady = run(options(Duration::from_secs(8), None, None));
    let reloads = run(options(
        Duration::from_secs(12),
        Some(Duration::from_secs(2)),
        None,
    ));
    let kills = run(options(
        Duration::from_secs(8),
        None,
        Some(Duration::from_secs(1)),
    ));

    println!("reloads and crashes under load: 4 workers, 64 connections (half keep-alive)");
    println!("{:<44} {:>16}   {:<22}", "measure", "value", "goal");
    let failures = steady.failures.total() + reloads.failures.total() + kills.failures.total();
    row(
        "failed requests (all runs)",
        failures.to_string(),
        "0",
        failures == 0,
    );
    row(
        "requests/s, steady",
        format!("{:.0}", steady.rate),
        "",
        true,
    );
    row(
        "requests/s, with a reload every 2 s",
        format!("{:.0}", reloads.rate),
        "",
        true,
    );
    let steady_p99 = reloads.latency_steady_ms.p99;
    let reload_p99 = reloads.latency_reload_ms.p99;
    row(
        "p50 latency, steady (ms)",
        format!("{:.2}", reloads.latency_steady_ms.p50),
        "",
        true,
    );
    row(
        "p99 latency, steady (ms)",
        format!("{steady_p99:.2}"),
        "",
        true,
    );
    row(
        "p50 latency, during reloads (ms)",
        format!("{:.2}", reloads.latency_reload_ms.p50),
        "",
        true,
    );
    row(
        "p99 latency, during reloads (ms)",
        format!("{reload_p99:.2}"),
        "<= 1.5 x steady",
        reload_p99 <= 1.5 * steady_p99,
    );
    let mut durations: Vec<f64> = reloads.reloads.iter().map(|r| r.duration_ms).collect();
    let worst_reload = durations.iter().copied().fold(0.0, f64::max);
    let median_reload = support::median(&mut durations);
    row(
        "reload duration, 4 workers (ms, median/max)",
        format!("{median_reload:.1}/{worst_reload:.1}"),
        "<= 100 beyond grace",
        worst_reload <= 100.0,
    );
    let mut replaced: Vec<f64> = kills
        .kills
        .iter()
        .filter_map(|k| k.replaced_in_ms)
        .collect();
    if !replaced.is_empty() {
        let worst = replaced.iter().copied().fold(0.0, f64::max);
        let median = support::median(&mut replaced);
        row(
            "SIGKILL to replacement ready (ms, median/max)",
            format!("{median:.1}/{worst:.1}"),
            "<= 10",
            median <= 10.0,
        );
    }
    let in_flight = kills.killed_in_flight.total();
    row(
        "requests in flight on killed workers",
        in_flight.to_string(),
        "(allowed)",
        true,
    );
    if let Some(rss) = steady.master_rss_bytes {
        let mib = rss as f64 / (1024.0 * 1024.0);
        row("master RSS (MiB)", format!("{mib:.1}"), "<= 4", mib <= 4.0);
    }
    if let Some(spread) = steady.worker_spread {
        row(
            "per-worker share, busiest/idlest",
            format!("{spread:.2}"),
            "<= 1.5",
            spread <= 1.5,
        );
        let shares: Vec<String> = steady.workers.values().map(|n| n.to_string()).collect();
        println!("  requests per worker: {}", shares.join(", "));
    }
}
