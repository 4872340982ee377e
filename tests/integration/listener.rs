//! The listener is the master's: whatever a worker does to the socket it
//! shares (`shutdown()`, `listen()` with another backlog), the master puts
//! it back, loudly, and nobody is refused for it.

use std::time::{Duration, Instant};

use baton::event::Event;
use baton::load::{ClientMode, FailureKind, LoadPlan, LoadReport};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command::backlog_of;
use crate::support::*;

/// A single-threaded select() server that says it is ready, and on SIGTERM
/// does what sanic's stop does: `shutdown(SHUT_RDWR)` on the listening
/// socket, which stops it for every process holding it. Then it watches
/// the socket until it listens again and prints how long it was down, in
/// milliseconds. `{LISTENER}` is how it takes fd 3: as it is, or a copy
/// (`dup`, as uvicorn's `--fd` does), which baton's exec stage cannot tell
/// from any other socket. Its accept loop is `command::SERVE_UNTIL_TERM`'s
/// but for one thing: it survives an `accept()` that fails (EINVAL) while
/// another worker has the socket shut down.
const SHUTS_DOWN_ON_TERM: &str = r#"
import os, select, signal, socket, sys, time
s = socket.socket(fileno={LISTENER})
stop = []
def on_term(*_):
    shut = time.monotonic()
    s.shutdown(socket.SHUT_RDWR)
    while time.monotonic() - shut < 5:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            down = "%.3f" % ((time.monotonic() - shut) * 1000)
            break
    else:
        down = "never"
    print("listener-down-ms " + down, file=sys.stderr, flush=True)
    stop.append(1)
signal.signal(signal.SIGTERM, on_term)
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while not stop:
    try:
        ready, _, _ = select.select([s], [], [], 0.1)
        if not ready or stop:
            continue
        c, _ = s.accept()
    except OSError:
        continue
    c.setblocking(True)
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
"#;

const RELOADS: usize = 10;
const CLIENTS: usize = 16;

/// What [`shut_down_on_every_drain`] saw.
struct ShutDowns {
    report: LoadReport,
    /// How long the listener was down after each shutdown, as the worker
    /// that shut it down saw it.
    down_ms: Vec<f64>,
    refused: usize,
    reset: usize,
    restored: usize,
}

/// Two workers that each shut the listener down when drained (taking fd 3
/// as `listener` says), under load from new connections through
/// [`RELOADS`] reloads, each of which must succeed.
fn shut_down_on_every_drain(listener: &str) -> ShutDowns {
    let program = SHUTS_DOWN_ON_TERM.replace("{LISTENER}", listener);
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--ready",
        "notify",
        "--probation",
        "0s",
        "--",
        "python3",
        "-c",
        &program,
    ]);
    // Until the reloads are done (a deadline only for a test gone wrong).
    let plan = LoadPlan::new(
        baton.addr,
        vec![ClientMode::NewConnection; CLIENTS],
        Duration::from_secs(300),
    );
    let progress = plan.progress.clone();
    let load = BackgroundLoad::start(plan);
    for reload in 1..=RELOADS {
        // Some traffic between reloads.
        let before = progress.succeeded();
        assert!(
            wait_until(Duration::from_secs(10), || progress.succeeded()
                > before + 100),
            "no traffic before reload {reload}"
        );
        let (code, answer) = baton.reload_wait();
        assert_eq!(code, 0, "reload {reload}: {answer}");
    }
    // Every old worker has shut the listener down and reported.
    baton.wait_log_nth("listener-down-ms ", 2 * RELOADS, Duration::from_secs(10));
    progress.stop();
    let report = load.finish();
    let down_ms = (1..=2 * RELOADS)
        .map(|n| {
            // The worker's own line, after baton's `[slot N pid P]`.
            let line = baton.wait_log_nth("listener-down-ms ", n, Duration::ZERO);
            let ms = line.split_whitespace().last().unwrap_or_default();
            ms.parse().unwrap_or(f64::INFINITY)
        })
        .collect();
    let count = |kind: FailureKind| report.failures.iter().filter(|f| f.kind == kind).count();
    let restored = baton.count_event(Event::ListenerRestored);
    assert_eq!(baton.count_event(Event::ReloadFailed), 0);
    let status = baton.status();
    assert_eq!(status["master"]["state"], "running", "{status}");
    assert_eq!(
        status["master"]["counters"]["listener_restores"],
        restored as u64
    );
    ShutDowns {
        refused: count(FailureKind::Refused),
        reset: count(FailureKind::Reset),
        report,
        down_ms,
        restored,
    }
}

impl std::fmt::Display for ShutDowns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; refused {}, reset {}; down for {:?} ms; {} listener_restored lines",
            self.report, self.refused, self.reset, self.down_ms, self.restored
        )
    }
}

#[test]
fn a_worker_that_shuts_its_listener_down_on_every_drain_refuses_nobody() {
    let _heavy = heavy();
    let seen = shut_down_on_every_drain("3");
    eprintln!("shutdown(3) on each of {} drains: {seen}", 2 * RELOADS);
    // The exec stage's filter made every shutdown a no-op: the socket never
    // stopped listening, and nobody was refused or reset.
    assert!(seen.down_ms.iter().all(|&ms| ms < 50.0), "{seen}");
    assert_no_failures(&seen.report);
    assert_eq!(seen.restored, 0, "{seen}");
}

#[test]
fn a_worker_that_shuts_a_copy_of_its_listener_down_has_it_listening_again_in_milliseconds() {
    let _heavy = heavy();
    let seen = shut_down_on_every_drain("os.dup(3)");
    eprintln!("shutdown(dup(3)) on each of {} drains: {seen}", 2 * RELOADS);
    // The master saw each shutdown and listened again, naming the worker:
    // within its next turn, a few milliseconds on a quiet machine. On a
    // machine whose cores are busy with other jobs the master may wait
    // for a core: once 61 ms (median 12 ms) beside another test run, once
    // 100 ms. So the median is held to 50 ms, and every one to 500 ms.
    assert_eq!(seen.restored, 2 * RELOADS, "{seen}");
    let mut down = seen.down_ms.clone();
    down.sort_by(f64::total_cmp);
    assert!(down[down.len() / 2] < 50.0, "{seen}");
    assert!(down.iter().all(|&ms| ms < 500.0), "{seen}");
    // While it was down, connections were refused and those queued reset:
    // a window of milliseconds that only the filter closes; nothing else
    // failed.
    assert!(
        seen.report
            .failures
            .iter()
            .all(|f| f.kind == FailureKind::Refused || f.kind == FailureKind::Reset),
        "{}",
        describe_failures(&seen.report)
    );
}

/// A worker that, once serving, calls `listen(1)` on its socket when it
/// gets SIGUSR1.
const RELISTENS_ON_USR1: &str = r#"
import os, signal, socket
s = socket.socket(fileno=3)
signal.signal(signal.SIGUSR1, lambda *_: s.listen(1))
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
"#;

#[test]
fn a_serving_worker_that_changes_the_backlog_has_it_back_within_a_second() {
    let baton = Baton::serve(&[
        "--workers",
        "1",
        "--backlog",
        "1000",
        "--ready",
        "notify",
        "--",
        "python3",
        "-c",
        &format!(
            "{RELISTENS_ON_USR1}{}serve(s)\n",
            crate::command::SERVE_UNTIL_TERM
        ),
    ]);
    assert_eq!(backlog_of(baton.addr.port()), 1000);
    let worker = baton.workers()[0];
    for round in 1..=3 {
        let sent = Instant::now();
        kill(Pid::from_raw(worker as i32), Signal::SIGUSR1).unwrap();
        let line = baton.wait_event_nth(Event::BacklogRestored, round, Duration::from_secs(1));
        let took = sent.elapsed();
        assert_eq!(backlog_of(baton.addr.port()), 1000);
        assert_eq!(line.field("found").as_deref(), Some("1"), "{line}");
        assert!(
            line.field("suspects")
                .unwrap_or_default()
                .contains(&worker.to_string()),
            "names the worker: {line}"
        );
        eprintln!("backlog set back {took:?} after the worker changed it");
    }
    assert_eq!(baton.status()["master"]["counters"]["backlog_restores"], 3);
}
