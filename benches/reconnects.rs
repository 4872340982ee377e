//! What a reload costs keep-alive clients in new connections: 1,000 HTTP/1
//! clients, each keeping one connection and thinking 0.5–3 s between
//! requests, through 3 reloads 6 s apart. baton with its connection
//! handoff (the default), baton without it (`--handoff-connections off`,
//! the drain's `Connection: close`), and nginx reloaded by SIGHUP when it
//! is installed, one after the other in one run. Each client counts the
//! connections it had to open beyond its first; the goal is 0 for baton.

#[path = "support.rs"]
mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use baton::load::{ClientMode, LoadPlan};
use support::*;

const CLIENTS: usize = 1000;
const RELOADS: u32 = 3;
const BETWEEN: Duration = Duration::from_secs(6);

/// One server's run.
struct Row {
    name: &'static str,
    answered: u64,
    failed: usize,
    /// GETs sent again because their reused connection closed before
    /// answering: the races the server's idle closes caused.
    resent: u64,
    reconnects: u64,
}

fn through_reloads(name: &'static str, server: Running) -> Row {
    let runtime = client_runtime();
    let clients = vec![
        ClientMode::KeepAlive {
            min_idle: Duration::from_millis(500),
            max_idle: Duration::from_secs(3),
        };
        CLIENTS
    ];
    // Every client connects within its first think (up to 3 s); the
    // reloads come after that, and a last think follows the last.
    let duration = BETWEEN * (RELOADS + 1);
    let load = runtime.spawn(baton::load::run(LoadPlan::new(
        server.addr,
        clients,
        duration,
    )));
    for _ in 0..RELOADS {
        std::thread::sleep(BETWEEN);
        kill(Pid::from_raw(server.pid() as i32), Signal::SIGHUP).expect("reload");
    }
    let report = runtime.block_on(load).expect("the load ran");
    drop(server);
    Row {
        name,
        answered: report.ok,
        failed: report.failures.len(),
        resent: report.resent_after_close,
        reconnects: report.reconnects,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut rows = vec![
        through_reloads("baton (handoff on)", start_baton(&["--workers", "2"])),
        through_reloads(
            "baton --handoff-connections off",
            start_baton(&["--workers", "2", "--handoff-connections", "off"]),
        ),
    ];
    if nginx_available() {
        rows.push(through_reloads("nginx, SIGHUP", start_nginx(2)));
    } else {
        println!("nginx is not installed: its row is left out");
    }
    println!(
        "{CLIENTS} keep-alive clients thinking 0.5-3 s, {RELOADS} reloads {} s apart, 2 workers",
        BETWEEN.as_secs()
    );
    println!(
        "{:<34} {:>10} {:>8} {:>8} {:>11} {:>12}",
        "server", "answered", "failed", "resent", "reconnects", "per reload"
    );
    for row in &rows {
        println!(
            "{:<34} {:>10} {:>8} {:>8} {:>11} {:>12.1}",
            row.name,
            row.answered,
            row.failed,
            row.resent,
            row.reconnects,
            row.reconnects as f64 / f64::from(RELOADS)
        );
    }
    println!("goal: 0 reconnects and 0 failed for baton with the handoff");
}
