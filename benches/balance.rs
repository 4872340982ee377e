//! Accept balance: how evenly 4 workers on this machine share the load with
//! the balanced accept path (the default) and with the old one
//! (`--accept kernel`: whichever worker wakes first takes the connection),
//! measured in the same run, round after round, alternating the two.
//!
//! - share: the busiest worker's requests over the idlest's, under
//!   new-connection load and under keep-alive load (a worker that answered
//!   nothing makes it infinite);
//! - tail latency under CPU-bound requests (`--work`), where a swamped
//!   worker queues requests while another idles;
//! - throughput: wrk's (or the built-in client's) keep-alive and
//!   new-connection rates, for 4 workers and for one worker per CPU; the
//!   goal is on these. (The requests/s of the share runs are shown too, but
//!   each of those starts a fresh server, whose rate varies more from run
//!   to run than anything measured here.)
//!
//! Each figure is the median of its rounds. Run with `cargo bench --bench
//! balance`.

#[path = "support.rs"]
mod support;

use std::time::Duration;

use baton::check::report::CheckReport;
use baton::check::Target;
use support::{baton_bin, median, start_baton, Client};

const ROUNDS: usize = 3;
const WORKERS: usize = 4;
const RUN: Duration = Duration::from_secs(4);
const THROUGHPUT_ROUNDS: usize = 8;
const THROUGHPUT_RUN: Duration = Duration::from_secs(3);
/// Iterations of the tutorial's CPU loop per request: about a millisecond.
const WORK: &str = "500000";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Kernel,
    Balanced,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Kernel => "kernel",
            Mode::Balanced => "balanced",
        }
    }
}

/// One kind of load, as `baton check` drives it.
struct Load {
    name: &'static str,
    connections: usize,
    keepalive_ratio: f64,
    work: Option<&'static str>,
}

const LOADS: [Load; 3] = [
    Load {
        name: "new connections (64 clients)",
        connections: 64,
        keepalive_ratio: 0.0,
        work: None,
    },
    Load {
        name: "keep-alive (64 clients)",
        connections: 64,
        keepalive_ratio: 1.0,
        work: None,
    },
    Load {
        name: "CPU-bound --work 500000 (16 clients, half keep-alive)",
        connections: 16,
        keepalive_ratio: 0.5,
        work: Some(WORK),
    },
];

/// What one run of one load showed.
struct Sample {
    spread: f64,
    answered: usize,
    rate: f64,
    p99_ms: f64,
}

fn check(runtime: &tokio::runtime::Runtime, load: &Load, mode: Mode) -> Sample {
    let mut options = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = {WORKERS}\naccept = \"{}\"\n",
        mode.flag()
    );
    if let Some(work) = load.work {
        options += &format!("work = {work}\n");
    }
    // Removed by the check once its server has stopped.
    let config = std::env::temp_dir().join(format!(
        "baton-bench-balance-{}-{}.toml",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&config, options).unwrap();
    let target = Target::SelfHosted {
        program: baton_bin(),
        config,
    };
    let report = support::check_load(runtime, target, RUN, load.connections, load.keepalive_ratio);
    sample(&report)
}

fn sample(report: &CheckReport) -> Sample {
    Sample {
        spread: support::busiest_over_idlest(report, WORKERS),
        answered: report.workers.len(),
        rate: report.rate,
        p99_ms: report.latency_ms.p99,
    }
}

fn medians(samples: &[Sample], field: fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(field).collect();
    median(&mut values)
}

fn row(name: &str, kernel: String, balanced: String, verdict: &str) {
    println!("{name:<46} {kernel:>12} {balanced:>12}   {verdict}");
}

fn goal(met: bool, goal: &str) -> String {
    format!("{goal:<14} {}", if met { "met" } else { "MISSED" })
}

fn fmt_spread(spread: f64) -> String {
    if spread.is_finite() {
        format!("{spread:.2}")
    } else {
        "inf".into()
    }
}

/// Throughput of `workers` workers, old path against balanced: both servers
/// run side by side for the whole measurement and short runs alternate
/// between them (starting a fresh server per round moved the rate by up to
/// 20 % here, more than any difference being measured). Returns the median
/// requests/s of (kernel, balanced) for keep-alive and for new connections.
fn throughput(client: &Client, workers: usize) -> [(f64, f64); 2] {
    let workers = workers.to_string();
    let servers = [Mode::Kernel, Mode::Balanced]
        .map(|mode| start_baton(&["--workers", &workers, "--accept", mode.flag()]));
    let mut rates = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for _ in 0..THROUGHPUT_ROUNDS {
        for (i, server) in servers.iter().enumerate() {
            let keepalive = client.measure(server.addr, THROUGHPUT_RUN);
            let close = client.measure_closing(server.addr, THROUGHPUT_RUN);
            assert_eq!(keepalive.errors + close.errors, 0, "the client saw errors");
            rates[0][i].push(keepalive.requests_per_second);
            rates[1][i].push(close.requests_per_second);
        }
    }
    rates.map(|[mut kernel, mut balanced]| (median(&mut kernel), median(&mut balanced)))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = support::client_runtime();
    let modes = [Mode::Kernel, Mode::Balanced];

    println!(
        "accept balance: {WORKERS} workers on {} CPUs, {ROUNDS} alternating rounds of {}s each, medians",
        support::cpus(),
        RUN.as_secs()
    );
    println!(
        "{:<46} {:>12} {:>12}   goal",
        "measure", "kernel", "balanced"
    );
    let mut throughput_ratios = Vec::new();
    for load in &LOADS {
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (i, mode) in modes.iter().enumerate() {
                samples[i].push(check(&runtime, load, *mode));
            }
        }
        let [kernel, balanced] = &samples;
        println!("{}", load.name);
        let answered = |s: &[Sample]| {
            s.iter()
                .map(|s| s.answered.to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        let spread = [
            medians(kernel, |s| s.spread),
            medians(balanced, |s| s.spread),
        ];
        if load.work.is_none() {
            row(
                "  busiest/idlest worker",
                fmt_spread(spread[0]),
                fmt_spread(spread[1]),
                &goal(spread[1] <= 1.5, "<= 1.5"),
            );
        } else {
            row(
                "  busiest/idlest worker",
                fmt_spread(spread[0]),
                fmt_spread(spread[1]),
                "",
            );
        }
        row(
            "  workers that answered, per round",
            answered(kernel),
            answered(balanced),
            "",
        );
        let p99 = [
            medians(kernel, |s| s.p99_ms),
            medians(balanced, |s| s.p99_ms),
        ];
        let p99_goal = if load.work.is_some() {
            goal(p99[1] < p99[0], "< kernel")
        } else {
            String::new()
        };
        row(
            "  p99 latency (ms)",
            format!("{:.2}", p99[0]),
            format!("{:.2}", p99[1]),
            &p99_goal,
        );
        let rate = [medians(kernel, |s| s.rate), medians(balanced, |s| s.rate)];
        row(
            "  requests/s",
            format!("{:.0}", rate[0]),
            format!("{:.0}", rate[1]),
            &format!("ratio {:.3}", rate[1] / rate[0]),
        );
    }

    let client = Client::detect();
    for workers in [WORKERS, support::cpus()] {
        println!(
            "throughput, {} ({workers} workers, {THROUGHPUT_ROUNDS} alternating rounds of {}s)",
            client.name(),
            THROUGHPUT_RUN.as_secs()
        );
        let [keepalive, close] = throughput(&client, workers);
        for (name, (kernel, balanced)) in [
            ("  keep-alive requests/s", keepalive),
            ("  new-connection requests/s", close),
        ] {
            throughput_ratios.push(balanced / kernel);
            row(
                name,
                format!("{kernel:.0}"),
                format!("{balanced:.0}"),
                &format!("ratio {:.3}", balanced / kernel),
            );
        }
    }
    let overall = median(&mut throughput_ratios);
    row(
        "throughput, balanced/kernel (median of the rows)",
        String::new(),
        format!("{overall:.3}"),
        &goal(overall >= 0.98, ">= 0.98"),
    );
}
