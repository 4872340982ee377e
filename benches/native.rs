//! A Rust application on the worker library against the same application
//! on `axum::serve`, both under baton, measured in the same run:
//!
//! - share: the busiest worker's requests over the idlest's, 4 workers
//!   under new-connection load (`baton check --url`, 64 clients), for the
//!   axum example on baton-worker (`--native`: the balance table), the
//!   same router on `axum::serve` over the shared socket (`--plain`, a
//!   plain COMMAND: whichever worker wakes first accepts), and the built-in
//!   worker as the reference;
//! - throughput: wrk's (or the built-in client's) keep-alive and
//!   new-connection rates, 2 workers each, both servers running side by
//!   side and short runs alternating between them.
//!
//! Each figure is the median of its rounds. The example is built in
//! release first. Run with `cargo bench --bench native`.

#[path = "support.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use baton::check::Target;
use support::{median, start_baton, Client, Running};

const ROUNDS: usize = 5;
const WORKERS: &str = "4";
const RUN: Duration = Duration::from_secs(4);
const THROUGHPUT_ROUNDS: usize = 8;
const THROUGHPUT_RUN: Duration = Duration::from_secs(3);

/// The servers compared, in the order they are measured each round.
#[derive(Clone, Copy)]
enum Server {
    Library,
    AxumServe,
    Builtin,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Library => "axum on baton-worker",
            Server::AxumServe => "axum::serve",
            Server::Builtin => "built-in worker",
        }
    }

    fn start(self, example: &str, workers: &str) -> Running {
        match self {
            Server::Library => start_baton(&["--workers", workers, "--native", "--", example]),
            Server::AxumServe => start_baton(&["--workers", workers, "--", example, "--plain"]),
            Server::Builtin => start_baton(&["--workers", workers]),
        }
    }
}

/// Builds the example in release and returns its path.
fn build_example() -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "baton-axum-example"])
        .status()
        .expect("run cargo");
    assert!(status.success(), "the axum example builds");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target
        .join("release/baton-axum-example")
        .to_string_lossy()
        .into_owned()
}

/// Busiest over idlest worker of one new-connection run against `server`.
fn share(runtime: &tokio::runtime::Runtime, server: &Running) -> (f64, f64) {
    let target = Target::External {
        url: format!("http://{}/", server.addr).parse().unwrap(),
        addr: server.addr,
        reload_command: None,
    };
    let report = support::check_load(runtime, target, RUN, 64, 0.0);
    let workers = WORKERS.parse().expect("a count");
    let spread = support::busiest_over_idlest(&report, workers);
    (spread, report.rate)
}

fn row(name: &str, cells: &[String]) {
    print!("{name:<34}");
    for cell in cells {
        print!(" {cell:>22}");
    }
    println!();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let example = build_example();
    let runtime = support::client_runtime();
    let servers = [Server::Library, Server::AxumServe, Server::Builtin];

    println!(
        "accept share: {WORKERS} workers on {} CPUs, new connections from 64 clients, {ROUNDS} rounds of {}s, each round alternating the servers, medians",
        support::cpus(),
        RUN.as_secs()
    );
    let names: Vec<String> = servers.iter().map(|s| s.name().to_string()).collect();
    row("measure", &names);
    let mut spreads: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for _ in 0..ROUNDS {
        for (i, server) in servers.iter().enumerate() {
            // A fresh server per round: the balance a server settles into
            // is part of what is measured.
            let running = server.start(&example, WORKERS);
            let (spread, rate) = share(&runtime, &running);
            spreads[i].push(spread);
            rates[i].push(rate);
        }
    }
    let show = |values: &mut Vec<f64>| {
        let all = values
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(" ");
        let m = median(values);
        format!("{m:.2} ({all})")
    };
    row(
        "  busiest/idlest worker",
        &spreads.iter_mut().map(show).collect::<Vec<_>>(),
    );
    row(
        "  requests/s",
        &rates
            .iter_mut()
            .map(|r| format!("{:.0}", median(r)))
            .collect::<Vec<_>>(),
    );

    let client = Client::detect();
    let workers = support::cpus().to_string();
    println!(
        "throughput, {} ({workers} workers, {THROUGHPUT_ROUNDS} alternating rounds of {}s, medians)",
        client.name(),
        THROUGHPUT_RUN.as_secs()
    );
    let compared = [Server::Library, Server::AxumServe];
    row(
        "measure",
        &compared
            .iter()
            .map(|s| s.name().to_string())
            .chain(["library/axum::serve".to_string()])
            .collect::<Vec<_>>(),
    );
    let running = compared.map(|s| s.start(&example, &workers));
    let mut keepalive = [Vec::new(), Vec::new()];
    let mut closing = [Vec::new(), Vec::new()];
    for _ in 0..THROUGHPUT_ROUNDS {
        for (i, server) in running.iter().enumerate() {
            let kept = client.measure(server.addr, THROUGHPUT_RUN);
            let closed = client.measure_closing(server.addr, THROUGHPUT_RUN);
            assert_eq!(kept.errors + closed.errors, 0, "the client saw errors");
            keepalive[i].push(kept.requests_per_second);
            closing[i].push(closed.requests_per_second);
        }
    }
    for (name, rates) in [
        ("  keep-alive requests/s", &mut keepalive),
        ("  new-connection requests/s", &mut closing),
    ] {
        let spread = |r: &Vec<f64>| {
            let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.iter().copied().fold(0.0, f64::max);
            (lo, hi)
        };
        let ranges = [spread(&rates[0]), spread(&rates[1])];
        let [library, plain] = [median(&mut rates[0]), median(&mut rates[1])];
        row(
            name,
            &[
                format!("{library:.0} ({:.0}–{:.0})", ranges[0].0, ranges[0].1),
                format!("{plain:.0} ({:.0}–{:.0})", ranges[1].0, ranges[1].1),
                format!("{:.3}", library / plain),
            ],
        );
    }
}
