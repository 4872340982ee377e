//! Liveness: a worker that is alive but stuck (stopped, deadlocked) is
//! killed and replaced like a crash, so that what it holds fails instead of
//! hanging forever; built-in workers by their missing reports, COMMAND
//! workers by the systemd watchdog (`--watchdog`).

use std::thread::sleep;
use std::time::{Duration, Instant};

use baton::load::{ClientMode, FailureKind, LoadPlan};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command::SERVE_UNTIL_TERM;
use crate::support::temp_dir;
use crate::support::*;

#[test]
fn a_stopped_builtin_worker_is_replaced_while_load_runs() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "2"]);
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        mixed_clients(8, 8, 0),
        Duration::from_secs(8),
    ));
    sleep(Duration::from_secs(1));
    let victim = baton.workers()[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    baton.wait_logged(
        "a replacement worker ready",
        1,
        Duration::from_secs(20),
        |l| l.is(Event::WorkerReady, "cause", "replacement"),
    );
    let replaced_in = stopped.elapsed();
    let report = load.finish();
    eprintln!("stopped worker replaced in {replaced_in:?}; load: {report}");
    assert!(
        baton.logs_contain("stuck: no report for"),
        "the stuck worker was named"
    );
    assert!(is_dead(victim), "the stopped worker was killed");
    assert!(replaced_in < Duration::from_secs(5), "{replaced_in:?}");
    assert_eq!(report.count(FailureKind::Refused), 0, "{report}");
    // A worker that keeps reporting is left alone.
    assert_eq!(baton.count_log("stuck:"), 1);
}

/// A COMMAND that checks the watchdog environment, sends READY=1 and then
/// WATCHDOG=1 every 200 ms for 2 s, then goes on serving without them, like
/// a program whose health loop hung.
fn watchdog_worker() -> String {
    format!(
        r#"import os, socket, threading, time
assert os.environ.get("WATCHDOG_PID") == str(os.getpid()), "WATCHDOG_PID"
assert os.environ.get("WATCHDOG_USEC") == "1000000", "WATCHDOG_USEC"
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.connect(os.environ["NOTIFY_SOCKET"])
notify.send(b"READY=1")
def beat():
    end = time.time() + 2
    while time.time() < end:
        notify.send(b"WATCHDOG=1")
        time.sleep(0.2)
threading.Thread(target=beat, daemon=True).start()
{SERVE_UNTIL_TERM}
serve(socket.socket(fileno=3))
"#
    )
}

#[test]
fn a_command_worker_that_stops_its_watchdog_is_replaced() {
    let _heavy = heavy();
    let program = watchdog_worker();
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--ready",
        "notify",
        "--watchdog",
        "1s",
        "--",
        "python3",
        "-c",
        &program,
    ]);
    let first = baton.workers();
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        vec![ClientMode::NewConnection; 8],
        Duration::from_secs(6),
    ));
    // Each worker beats for 2 s, then is stuck 1 s later.
    let line = baton.wait_log("stuck: no WATCHDOG=1 for", Duration::from_secs(20));
    baton.wait_logged(
        "a replacement worker ready",
        1,
        Duration::from_secs(20),
        |l| l.is(Event::WorkerReady, "cause", "replacement"),
    );
    let report = load.finish();
    eprintln!("{line}\nload: {report}");
    assert!(
        first.iter().any(|pid| is_dead(*pid)),
        "a stuck worker was killed"
    );
    assert_eq!(report.count(FailureKind::Refused), 0, "{report}");
}

#[test]
fn a_command_worker_over_its_memory_limit_is_rolled_without_failures() {
    let _heavy = heavy();
    let dir = temp_dir("memory");
    let marker = dir.path().join("hog");
    // The first worker to create the marker holds 96 MiB; the others and
    // its successor hold what python needs.
    let program = format!(
        r#"import os, socket
{SERVE_UNTIL_TERM}
try:
    os.close(os.open({marker:?}, os.O_CREAT | os.O_EXCL))
    hog = b"x" * (96 << 20)
except FileExistsError:
    pass
serve(socket.socket(fileno=3))
"#
    );
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--max-memory",
        "64MiB",
        "--",
        "python3",
        "-c",
        &program,
    ]);
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        vec![ClientMode::NewConnection; 8],
        Duration::from_secs(8),
    ));
    let mut hog = None;
    wait_until(Duration::from_secs(10), || {
        let status = baton.status();
        hog = status["workers"].as_array().unwrap().iter().find_map(|w| {
            (w["rss_bytes"].as_u64().unwrap() > 64 << 20).then(|| w["pid"].as_u64().unwrap() as u32)
        });
        hog.is_some()
    });
    let hog = hog.expect("status showed a worker above the limit");
    baton.wait_logged("a memory worker ready", 1, Duration::from_secs(20), |l| {
        l.is(Event::WorkerReady, "cause", "memory")
    });
    assert!(
        wait_until(Duration::from_secs(20), || is_dead(hog)),
        "the worker over its limit drained and exited"
    );
    let report = load.finish();
    eprintln!("rolled worker {hog} over its memory limit; load: {report}");
    assert_eq!(baton.count_event(Event::MemoryRoll), 1);
    assert_no_failures(&report);
    assert!(report.ok > 200, "{report}");
}
