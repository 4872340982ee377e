//! The tutorial's Node.js server under baton beside Node's own cluster, in
//! one run: 4 workers, a CPU loop of about a millisecond per request, 500
//! clients opening a new connection per request (like `ab -c 500 -r`).
//!
//! - throughput without crashes: requests/s, and how evenly the 4 workers
//!   shared them (the busiest worker's requests over the idlest's);
//! - with the tutorial's random crashes (each worker exits between 4 and 8 s
//!   after it starts): failed requests per crash, every run shown.
//!
//! Three servers, alternated round after round: baton with
//! `examples/node/server.js` as it ships, the same with libuv's
//! `UV_TCP_SINGLE_ACCEPT=1` (a worker yields after each accept instead of
//! taking the whole queue at once), and `benches/node/cluster.js`, the
//! tutorial's cluster (its primary accepts and deals connections round-robin).
//! Needs `node`. Run with `cargo bench --bench node_cluster`.

#[path = "support.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::load::{ClientMode, LoadPlan, LoadReport};
use support::{baton_bin, client_runtime, free_port, median};

const ROUNDS: usize = 5;
const WORKERS: &str = "4";
const CLIENTS: usize = 500;
const THROUGHPUT_RUN: Duration = Duration::from_secs(5);
const CRASH_RUN: Duration = Duration::from_secs(10);
/// Iterations of the CPU loop per request: about a millisecond.
const WORK: &str = "500000";
/// Each worker exits at a random moment between half this and this.
const CRASH_AFTER_MS: &str = "8000";

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Baton,
    BatonSingleAccept,
    Cluster,
}

const SERVERS: [Server; 3] = [Server::Baton, Server::BatonSingleAccept, Server::Cluster];

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Baton => "baton",
            Server::BatonSingleAccept => "baton + UV_TCP_SINGLE_ACCEPT=1",
            Server::Cluster => "node cluster",
        }
    }
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A server with its crash counter; killed with its workers on drop.
struct Running {
    child: Child,
    addr: SocketAddr,
    crashes: Arc<AtomicUsize>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `server`, waits until it answers, and counts the crashes its log
/// reports (baton: `worker crashed`; the cluster's primary: `died`).
fn start(server: Server, crash: bool) -> Running {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut command = match server {
        Server::Baton | Server::BatonSingleAccept => {
            let mut command = Command::new(baton_bin());
            let control = std::env::temp_dir().join(format!("baton-bench-{port}.sock"));
            command
                .args(["serve", "--listen", &addr.to_string(), "--workers", WORKERS])
                .arg("--control")
                .arg(control)
                .args(["--", "node"])
                .arg(repo_file("examples/node/server.js"))
                .env("RUST_LOG", "info");
            if server == Server::BatonSingleAccept {
                command.env("UV_TCP_SINGLE_ACCEPT", "1");
            }
            command
        }
        Server::Cluster => {
            let mut command = Command::new("node");
            command
                .arg(repo_file("benches/node/cluster.js"))
                .env("PORT", port.to_string())
                .env("WORKERS", WORKERS);
            command
        }
    };
    command.env("WORK", WORK);
    command.env("CRASH_AFTER_MS", if crash { CRASH_AFTER_MS } else { "0" });
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server (is node installed?)");
    let crashes = Arc::new(AtomicUsize::new(0));
    let marker = if server == Server::Cluster {
        " died"
    } else {
        "worker crashed"
    };
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let crashes = crashes.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains(marker) {
                    crashes.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never answered",
            server.name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every worker up (the cluster binds before its workers are all ready).
    std::thread::sleep(Duration::from_secs(1));
    Running {
        child,
        addr,
        crashes,
    }
}

fn load(addr: SocketAddr, duration: Duration) -> LoadReport {
    let plan = LoadPlan::new(addr, vec![ClientMode::NewConnection; CLIENTS], duration);
    client_runtime().block_on(baton::load::run(plan))
}

/// The busiest worker's requests over the idlest's.
fn spread(report: &LoadReport) -> f64 {
    let counts: Vec<u64> = report.by_pid.values().copied().collect();
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    let min = counts.iter().copied().min().unwrap_or(0) as f64;
    max / min
}

#[derive(Default)]
struct Figures {
    rate: Vec<f64>,
    spread: Vec<f64>,
    per_crash: Vec<f64>,
    crash_runs: Vec<String>,
}

fn main() {
    let mut figures: Vec<Figures> = SERVERS.iter().map(|_| Figures::default()).collect();
    for round in 0..ROUNDS {
        for i in 0..SERVERS.len() {
            let index = (i + round) % SERVERS.len();
            let server = SERVERS[index];
            let figures = &mut figures[index];

            let running = start(server, false);
            let report = load(running.addr, THROUGHPUT_RUN);
            drop(running);
            let rate = report.ok as f64 / report.elapsed.as_secs_f64();
            figures.rate.push(rate);
            figures.spread.push(spread(&report));
            let split: Vec<String> = report.by_pid.values().map(u64::to_string).collect();
            println!(
                "round {round} {:<31} {rate:7.0} req/s  split {}  failed {}",
                server.name(),
                split.join("/"),
                report.failures.len()
            );

            let running = start(server, true);
            let report = load(running.addr, CRASH_RUN);
            let crashes = running.crashes.load(Ordering::Relaxed);
            drop(running);
            let failed = report.failures.len();
            let per_crash = failed as f64 / crashes.max(1) as f64;
            figures.per_crash.push(per_crash);
            figures
                .crash_runs
                .push(format!("{failed}/{crashes} = {per_crash:.1}"));
            println!(
                "round {round} {:<31} crashes {crashes:2}  failed {failed:4}  {per_crash:5.1} per crash  ({} ok)",
                server.name(),
                report.ok
            );
        }
    }

    println!("\n{ROUNDS} rounds, {WORKERS} workers, {CLIENTS} new-connection clients, WORK={WORK}");
    let cluster_rate = median(&mut figures[2].rate.clone());
    for (server, figures) in SERVERS.iter().zip(&mut figures) {
        let rate = median(&mut figures.rate);
        println!(
            "{:<31} {rate:7.0} req/s ({:.2}x cluster), spread {:.2}, failed per crash: median {:.1}, worst {:.1}  [{}]",
            server.name(),
            rate / cluster_rate,
            median(&mut figures.spread),
            median(&mut figures.per_crash.clone()),
            figures.per_crash.iter().copied().fold(0.0, f64::max),
            figures.crash_runs.join(", ")
        );
    }
}
