//! How a reload scales: its duration (the master's `reload_complete`
//! `elapsed_ms`, median of several `reload --wait`) and the memory of the
//! master and its workers, for 1, 4, 16 and 64 built-in workers with
//! `--threads 1`, one and 16 listeners, no open connection and 10,000 idle
//! keep-alive ones, one slot at a time and with `--reload-batch`.
//!
//! Then the master's private memory and descriptors over 1,000 reloads.
//!
//! Run with `cargo bench --bench scale`; `BATON_SCALE_QUICK=1` measures
//! only the rows without connections.

#[path = "support.rs"]
mod support;

use std::time::Instant;

use baton::event::Event;
use support::{idle_clients, median, start_baton_logged, LoggedBaton};

/// Reloads measured per row, after one that warms the page cache.
const RELOADS: usize = 5;

struct Row {
    workers: usize,
    listeners: usize,
    connections: usize,
    batch: usize,
}

struct Measured {
    reload_ms: f64,
    /// From `reload_started` to the last old worker's exit.
    old_gone_ms: f64,
    master_private_kib: u64,
    workers_pss_kib: u64,
}

/// A field of `/proc/PID/smaps_rollup`, in KiB.
fn smaps(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// One reload: its `elapsed_ms`, and the milliseconds until every worker
/// of the generation before it had exited.
fn reload(baton: &LoggedBaton, workers: usize) -> (f64, f64) {
    let started = Instant::now();
    baton.reload();
    let (mut elapsed_ms, mut drained) = (None, 0);
    while elapsed_ms.is_none() || drained < workers {
        let logged = baton.next(|e| matches!(e, Event::ReloadComplete | Event::WorkerDrained));
        match logged.event {
            Some(Event::ReloadComplete) => elapsed_ms = logged.parsed("elapsed_ms"),
            _ => drained += 1,
        }
    }
    (
        elapsed_ms.expect("elapsed_ms"),
        started.elapsed().as_secs_f64() * 1000.0,
    )
}

fn measure(row: &Row) -> Measured {
    let workers = row.workers.to_string();
    let batch = row.batch.to_string();
    let mut args = vec![
        "--workers",
        &workers,
        "--threads",
        "1",
        "--probation",
        "0s",
        "--reload-batch",
        &batch,
    ];
    for _ in 1..row.listeners {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    let baton = start_baton_logged(&args);
    let _clients = (row.connections > 0).then(|| idle_clients(baton.running.addr, row.connections));
    reload(&baton, row.workers);
    let (mut durations, mut gone): (Vec<f64>, Vec<f64>) =
        (0..RELOADS).map(|_| reload(&baton, row.workers)).unzip();
    let master = baton.running.pid();
    let workers_pss_kib = baton::procfs::live_workers(master)
        .into_iter()
        .map(|pid| smaps(pid, "Pss:"))
        .sum();
    Measured {
        reload_ms: median(&mut durations),
        old_gone_ms: median(&mut gone),
        master_private_kib: master_private_kib(master),
        workers_pss_kib,
    }
}

/// The master's private memory (KiB): its heap, stacks and the pages of
/// its program and libraries it wrote to, what only it uses and cannot be
/// dropped. Counted as `Anonymous`, not `Private_Dirty`: a program file
/// written a moment ago (a fresh build) is dirty in the page cache until
/// the kernel writes it back, and `Private_Dirty` then counts the text the
/// master alone maps, about 500 KiB more, for the first half minute.
fn master_private_kib(master: u32) -> u64 {
    smaps(master, "Anonymous:")
}

/// The master's private memory and descriptors after one reload, after
/// 250 more and after `count` more in all, with 4 workers.
fn master_over_reloads(count: usize) -> [(u64, usize); 3] {
    let baton = start_baton_logged(&["--workers", "4", "--threads", "1", "--probation", "0s"]);
    let master = baton.running.pid();
    let look = || {
        (
            master_private_kib(master),
            baton::procfs::fd_count(master).unwrap_or(0),
        )
    };
    reload(&baton, 4);
    let first = look();
    let warm = count.min(250);
    for _ in 0..warm {
        reload(&baton, 4);
    }
    let warmed = look();
    for _ in warm..count {
        reload(&baton, 4);
    }
    [first, warmed, look()]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("BATON_SCALE_QUICK").is_some();
    let mut rows = Vec::new();
    for workers in [1, 4, 16, 64] {
        for batch in [1, 4, 16] {
            if batch == 1 || batch < workers {
                rows.push(Row {
                    workers,
                    listeners: 1,
                    connections: 0,
                    batch,
                });
            }
        }
    }
    for workers in [4, 64] {
        rows.push(Row {
            workers,
            listeners: 16,
            connections: 0,
            batch: 1,
        });
        if !quick {
            rows.push(Row {
                workers,
                listeners: 1,
                connections: 10_000,
                batch: 1,
            });
        }
    }

    println!("reload scale: built-in workers, --threads 1, --probation 0s, median of {RELOADS} `reload --wait`");
    println!(
        "{:>7} {:>9} {:>11} {:>5} {:>10} {:>12} {:>17} {:>15}",
        "workers",
        "listeners",
        "connections",
        "batch",
        "reload ms",
        "old gone ms",
        "master private KiB",
        "workers PSS MiB"
    );
    let mut four = None;
    let mut sixty_four_batched = f64::MAX;
    for row in &rows {
        let m = measure(row);
        println!(
            "{:>7} {:>9} {:>11} {:>5} {:>10.1} {:>12.1} {:>17} {:>15.1}",
            row.workers,
            row.listeners,
            row.connections,
            row.batch,
            m.reload_ms,
            m.old_gone_ms,
            m.master_private_kib,
            m.workers_pss_kib as f64 / 1024.0
        );
        let plain = row.listeners == 1 && row.connections == 0;
        if plain && row.workers == 4 && row.batch == 1 {
            four = Some(m.reload_ms);
        }
        if plain && row.workers == 64 && row.batch > 1 {
            sixty_four_batched = sixty_four_batched.min(m.reload_ms);
        }
    }
    let reloads = 1000;
    let [before, warmed, after] = master_over_reloads(reloads);
    println!(
        "master, 4 workers: private {} KiB and {} descriptors after 1 reload, {} KiB and {} after 250 more, {} KiB and {} after {reloads} more (goal <= 1024 KiB, flat): {}",
        before.0,
        before.1,
        warmed.0,
        warmed.1,
        after.0,
        after.1,
        if after.0 <= 1024 && after.1 <= before.1 && after.0 <= before.0 + 64 {
            "met"
        } else {
            "MISSED"
        }
    );
    if let Some(four) = four {
        let ratio = sixty_four_batched / four;
        println!(
            "64 workers batched / 4 workers: {ratio:.2} (goal <= 4): {}",
            if ratio <= 4.0 { "met" } else { "MISSED" }
        );
    }
}
