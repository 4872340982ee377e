//! The property baton exists for: under concurrent load, reloads and crashes
//! refuse no connection and fail no request.

use std::collections::HashSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

/// The load of the reload tests: 32 clients opening a connection per
/// request, 32 on keep-alive connections, 8 uploading 16 KiB bodies.
fn reload_load(baton: &Baton, duration: Duration) -> LoadPlan {
    LoadPlan::new(baton.addr, mixed_clients(32, 32, 8), duration)
}

#[test]
fn four_workers_share_one_port() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "4"]);
    let workers = baton.wait_workers(Duration::from_secs(5), |w| w.len() == 4);
    assert_eq!(workers.len(), 4);

    let mut plan = LoadPlan::new(
        baton.addr,
        vec![ClientMode::NewConnection; 8],
        Duration::from_secs(30),
    );
    plan.requests_per_client = Some(25);
    let report = runtime().block_on(baton::load::run(plan));
    assert_eq!(report.attempted, 200);
    assert_eq!(report.ok, 200, "{}", describe_failures(&report));
    assert!(
        report.by_pid.len() >= 2,
        "only {:?} answered",
        report.by_pid
    );
    for pid in report.by_pid.keys() {
        assert!(
            workers.contains(pid),
            "pid {pid} is not one of the workers {workers:?}"
        );
    }
}

#[test]
fn reloads_under_mixed_load_fail_nothing() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "4"]);
    let first: HashSet<u32> = baton.workers().into_iter().collect();
    let load = BackgroundLoad::start(reload_load(&baton, Duration::from_secs(11)));

    let report = load.finish_after_reloads(&baton, 3, Duration::from_secs(2));
    eprintln!("reloads under load: {report}");

    assert_no_failures(&report);
    assert!(
        report.ok > 1000,
        "too little load to prove anything: {report}"
    );
    let last = baton.wait_workers(Duration::from_secs(10), |w| w.len() == 4);
    assert!(
        last.iter().all(|pid| !first.contains(pid)),
        "every worker is replaced: first {first:?}, last {last:?}"
    );
    assert!(
        report.by_pid.len() >= 8,
        "old and new workers served: {:?}",
        report.by_pid
    );
}

#[test]
fn a_reload_batch_replaces_several_slots_at_once_and_fails_nothing() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "8", "--reload-batch", "4"]);
    baton.wait_workers(Duration::from_secs(10), |w| w.len() == 8);
    let load = BackgroundLoad::start(reload_load(&baton, Duration::from_secs(8)));

    let report = load.finish_after_reloads(&baton, 2, Duration::from_secs(2));
    eprintln!("batched reloads under load: {report}");
    assert_no_failures(&report);
    assert!(
        report.ok > 500,
        "too little load to prove anything: {report}"
    );

    // Within each reload: never more than 4 new workers starting at once,
    // and 4 at some point; never an old worker draining before a new one
    // is ready in its place, so that 8 accept throughout.
    for (old, generation) in [("1", "2"), ("2", "3")] {
        let lines = baton.logged(|l| {
            matches!(
                l.event,
                Some(Event::WorkerStarted | Event::WorkerReady | Event::WorkerDraining)
            )
        });
        let (mut starting, mut most_starting, mut ready, mut draining) = (0, 0, 0, 0);
        for line in &lines {
            let of = line.field("generation");
            let new = of.as_deref() == Some(generation);
            match line.event {
                Some(Event::WorkerStarted) if new => starting += 1,
                Some(Event::WorkerReady) if new => {
                    starting -= 1;
                    ready += 1;
                }
                Some(Event::WorkerDraining) if of.as_deref() == Some(old) => draining += 1,
                _ => {}
            }
            most_starting = most_starting.max(starting);
            assert!(
                starting <= 4,
                "generation {generation}: {starting} starting at once"
            );
            assert!(
                draining <= ready,
                "generation {generation}: {draining} old workers draining with {ready} new ready"
            );
        }
        assert_eq!(ready, 8, "generation {generation} has 8 workers ready");
        assert_eq!(
            most_starting, 4,
            "generation {generation} started 4 at once"
        );
    }
}

#[test]
fn idle_keep_alive_clients_survive_reloads() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "4"]);
    let mut clients = vec![ClientMode::thinking(Duration::from_secs(1)); 24];
    clients.extend(mixed_clients(8, 8, 0));
    let load = BackgroundLoad::start(LoadPlan::new(baton.addr, clients, Duration::from_secs(12)));

    let report = load.finish_after_reloads(&baton, 4, Duration::from_millis(2000));
    eprintln!("idle keep-alive clients across reloads: {report}");
    assert_no_failures(&report);
    assert!(report.ok > 500, "{report}");
}

#[test]
fn killed_workers_are_replaced_and_only_their_in_flight_requests_fail() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "4"]);
    let load = BackgroundLoad::start(reload_load(&baton, Duration::from_secs(11)));

    // (victim, signal sent, death seen): a worker serves until it dies, a
    // little after the signal.
    let mut kills: Vec<(u32, Instant, Instant)> = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..6 {
        sleep(Duration::from_millis(1500));
        let workers = baton.wait_workers(Duration::from_secs(1), |w| w.len() == 4);
        let victim = workers[fastrand::usize(..workers.len())];
        let ready_before = baton.count_event(Event::WorkerReady);
        let crashes_before = baton.count_event(Event::WorkerCrashed);
        let sent = Instant::now();
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        let crash = baton.wait_event_nth(
            Event::WorkerCrashed,
            crashes_before + 1,
            Duration::from_secs(1),
        );
        assert_eq!(crash.parsed::<u32>("pid"), Some(victim), "{crash}");
        kills.push((victim, sent, Instant::now()));
        baton.wait_event_nth(Event::WorkerReady, ready_before + 1, Duration::from_secs(1));
        slowest = slowest.max(sent.elapsed());
    }
    let report = load.finish();
    eprintln!("kills under load: {report}; slowest replacement {slowest:?}");

    for kind in [
        FailureKind::Refused,
        FailureKind::Timeout,
        FailureKind::BadStatus,
        FailureKind::Other,
    ] {
        assert_eq!(report.count(kind), 0, "{}", describe_failures(&report));
    }
    let unexplained: Vec<_> = report
        .failures
        .iter()
        .filter(|f| {
            !kills
                .iter()
                .any(|&(pid, sent, dead)| f.explained_by_kill(pid, sent, dead))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "failures not caused by a kill: {unexplained:#?}"
    );
    assert!(report.ok > 1000, "{report}");
}

#[test]
fn all_workers_killed_at_once_refuses_nothing() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "4"]);
    let workers = baton.wait_workers(Duration::from_secs(5), |w| w.len() == 4);
    let ready_before = baton.count_event(Event::WorkerReady);
    for &pid in &workers {
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    }
    // Connect at once, while no worker may be accepting: the connections wait
    // in the master's accept queue.
    let mut plan = LoadPlan::new(
        baton.addr,
        vec![ClientMode::NewConnection; 16],
        Duration::from_secs(30),
    );
    plan.requests_per_client = Some(5);
    let report = runtime().block_on(baton::load::run(plan));
    assert_eq!(report.ok, 80, "{}", describe_failures(&report));
    baton.wait_event_nth(Event::WorkerReady, ready_before + 4, Duration::from_secs(5));
    assert!(
        report.by_pid.keys().all(|pid| !workers.contains(pid)),
        "answered by the replacements only: {:?}",
        report.by_pid
    );
}

/// The tests above must be able to fail: a worker that exits at once on
/// drain, as a naive server does, fails requests under the same load.
#[test]
fn a_worker_that_does_not_drain_is_caught() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "4", "--fault", "exit-on-drain"]);
    let load = BackgroundLoad::start(reload_load(&baton, Duration::from_secs(6)));
    let report = load.finish_after_reloads(&baton, 2, Duration::from_secs(2));
    eprintln!("with the fault injected: {report}");
    assert!(
        !report.failures.is_empty(),
        "the load must notice workers that exit without draining: {report}"
    );
}
