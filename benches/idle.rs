//! What an idle keep-alive connection costs a worker, baton beside nginx:
//! each server with 2 workers (baton's built-in worker with `--threads 1`),
//! 4,000 connections that each sent one request and wait, the workers'
//! resident memory before and after, divided (before: after a first round
//! of 200 connections, closed). baton's is read once its
//! connections have parked (see the worker library's `PARK_AFTER`).
//!
//! Run with `cargo bench --bench idle`; without nginx, baton alone.

#[path = "support.rs"]
mod support;

use std::time::Duration;

use support::{idle_clients, nginx_available, start_baton, start_nginx, Running};

const CONNECTIONS: usize = 4000;

/// How long the connections wait before the second reading: baton parks an
/// idle connection after one to two seconds and trims its heap within a
/// second more.
const SETTLE: Duration = Duration::from_secs(4);

fn workers_rss_kib(server: &Running) -> u64 {
    let workers = baton::procfs::live_workers(server.pid());
    workers
        .iter()
        .filter_map(|&pid| baton::procfs::rss_bytes(pid))
        .sum::<u64>()
        / 1024
}

/// KiB per connection: while all are fresh, and after `SETTLE`.
fn per_connection(server: &Running) -> (f64, f64) {
    // A first round of connections, closed, so that what every connection
    // shares (the code that serves it, the runtime's tables at their
    // working size) is in before the first reading.
    drop(idle_clients(server.addr, 200));
    std::thread::sleep(Duration::from_secs(SETTLE.as_secs() + 1));
    let before = workers_rss_kib(server);
    let clients = idle_clients(server.addr, CONNECTIONS);
    let fresh = workers_rss_kib(server);
    std::thread::sleep(SETTLE);
    let settled = workers_rss_kib(server);
    drop(clients);
    let per = |after: u64| after.saturating_sub(before) as f64 / CONNECTIONS as f64;
    (per(fresh), per(settled))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("idle keep-alive connections: {CONNECTIONS} after one request each, 2 workers");
    println!(
        "{:<8} {:>18} {:>20}",
        "server", "KiB each, fresh", "KiB each, settled"
    );
    let baton = per_connection(&start_baton(&["--workers", "2", "--threads", "1"]));
    println!("{:<8} {:>18.2} {:>20.2}", "baton", baton.0, baton.1);
    if nginx_available() {
        let nginx = per_connection(&start_nginx(2));
        println!("{:<8} {:>18.2} {:>20.2}", "nginx", nginx.0, nginx.1);
    }
    println!(
        "baton settled: {:.2} KiB (goal <= 4): {}",
        baton.1,
        if baton.1 <= 4.0 { "met" } else { "MISSED" }
    );
}
