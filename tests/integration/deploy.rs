//! Deploys: a reload starts whatever program file is at the master's path
//! now. A new program that breaks the handoff protocol, exits, or never gets
//! ready fails the reload while the old workers go on serving every request.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::*;

/// A "new release" that writes garbage on its handoff socket and lingers.
const GARBAGE_WORKER: &str = r#"#!/usr/bin/env python3
import socket, time
s = socket.socket(fileno=3)
s.send(b"\xff\xfe not a baton message \x00" * 8)
time.sleep(30)
"#;

/// A "new release" that dies at start.
const CRASHING_WORKER: &str = "#!/bin/sh\nexit 3\n";

/// A "new release" that never says it is ready.
const SILENT_WORKER: &str = "#!/bin/sh\nexec sleep 30\n";

fn light_load(baton: &Baton, duration: Duration) -> LoadPlan {
    LoadPlan::new(baton.addr, mixed_clients(8, 8, 2), duration)
}

#[test]
fn broken_releases_fail_the_reload_and_lose_nothing() {
    let _heavy = heavy();
    let (dir, program) = private_copy("broken-release");
    let original = std::fs::read(&program).unwrap();
    // Long enough for a loaded machine to start a release; the silent one
    // waits it out.
    let baton = Baton::serve_from(&program, &["--workers", "2", "--ready-timeout", "5s"]);
    let serving = baton.workers();
    let load = BackgroundLoad::start(light_load(&baton, Duration::from_secs(8)));

    let cases = [
        (GARBAGE_WORKER, "broke the handoff protocol"),
        (CRASHING_WORKER, "exited before it was ready (exit code 3)"),
        (SILENT_WORKER, "not ready within 5s"),
    ];
    for (n, (release, reason)) in cases.iter().enumerate() {
        replace_file(&program, release.as_bytes(), true);
        baton.signal(nix::sys::signal::Signal::SIGHUP);
        let line = baton.wait_event_nth(Event::ReloadFailed, n + 1, Duration::from_secs(20));
        assert!(
            line.field("reason").unwrap_or_default().contains(reason),
            "reload failure should say {reason:?}: {line}"
        );
        // The failed worker is killed and reaped; the old ones keep serving.
        baton.wait_workers(Duration::from_secs(5), |w| w == serving);
    }
    let report = load.finish();
    eprintln!("failed reloads under load: {report}");
    assert_no_failures(&report);
    assert!(report.by_pid.keys().all(|pid| serving.contains(pid)));

    // Putting a good release back and reloading deploys it.
    replace_file(&program, &original, true);
    baton.reload();
    let deployed = baton.wait_workers(Duration::from_secs(10), |w| {
        w.len() == 2 && w.iter().all(|p| !serving.contains(p))
    });
    assert_eq!(deployed.len(), 2);
    assert!(std::fs::metadata(&program).unwrap().permissions().mode() & 0o111 != 0);
    drop(dir);
}

/// A "new release" that starts the real worker and kills it 2 s later, as a
/// release that passes readiness and then dies.
fn dies_after_two_seconds() -> String {
    format!(
        "#!/bin/sh\n( exec 3>&-; sleep 2; kill -9 $$ ) &\nexec {:?} \"$@\"\n",
        baton_bin()
    )
}

#[test]
fn a_release_that_dies_after_it_is_ready_is_rolled_back() {
    let _heavy = heavy();
    let (dir, program) = private_copy("late-crash");
    let baton = Baton::serve_from(&program, &["--workers", "2", "--probation", "5s"]);
    let first = baton.workers();
    let load = BackgroundLoad::start(light_load(&baton, Duration::from_secs(12)));
    std::thread::sleep(Duration::from_millis(500));

    replace_file(&program, dies_after_two_seconds().as_bytes(), true);
    let (code, answer) = baton.reload_wait();
    let failed_at = std::time::Instant::now();
    assert_eq!(code, 1, "{answer}");
    assert!(
        answer.contains("crashed") && answer.contains("rolling back to generation 1"),
        "{answer}"
    );

    baton.wait_event(Event::RollbackComplete, Duration::from_secs(20));
    let rolled_back_in = failed_at.elapsed();
    // The previous release serves again: workers of the rollback generation,
    // started from the old program file, though the path holds the broken one.
    let serving = baton.wait_workers(Duration::from_secs(10), |w| {
        w.len() == 2 && w.iter().all(|p| !first.contains(p))
    });
    for pid in &serving {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.to_string_lossy().ends_with("program-1"),
            "worker {pid} runs {exe:?}"
        );
    }
    let status = baton.status();
    assert!(
        status["master"]["last_reload"]["outcome"] == "rolled_back",
        "{status}"
    );
    let report = load.finish();
    eprintln!("rolled back {rolled_back_in:?} after the crash was reported; load: {report}");
    assert_eq!(
        report.count(baton::load::FailureKind::Refused),
        0,
        "{report}"
    );
    // Only requests in flight on the crashed workers may fail: at most one
    // per client (18) on each of the broken release's two workers (the
    // second may die before the rollback reaches its slot).
    assert!(report.failures.len() <= 2 * 18, "{report}");
    // The rolled-back workers stay up: nothing crashed after the rollback.
    let crashes = baton.count_event(Event::WorkerCrashed);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(baton.count_event(Event::WorkerCrashed), crashes);
    assert!(serving.iter().all(|pid| !is_dead(*pid)));
    drop(dir);
}
