//! `--health`: a release that is up but answers 500 never replaces one that
//! works. Each new worker of a reload is probed through the shared listener
//! before the old worker of its slot drains.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use baton::load::{FailureKind, LoadPlan, LoadReport};

use crate::support::*;

/// A master of two workers of the Python example, answering the status in
/// `status_file` as each worker starts; with `health`, reloads probe
/// `/healthz`.
fn python_release(status_file: &Path, health: bool) -> Baton {
    let mut cmd = std::process::Command::new(baton_bin());
    cmd.env("STATUS_FILE", status_file);
    let server = example("python/server.py");
    let mut args = vec!["--workers", "2", "--probation", "0s"];
    if health {
        // A probe's answer comes from a Python worker on a busy host.
        args.extend(["--health", "/healthz", "--health-timeout", "10s"]);
    }
    args.extend(["--", "python3", &server]);
    Baton::serve_command(cmd, &args)
}

/// The status a plain GET of `/` gets now.
fn status_now(baton: &Baton) -> String {
    let mut stream = TcpStream::connect(baton.addr).unwrap();
    let answer = exchange(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    );
    answer.lines().next().unwrap_or_default().to_owned()
}

/// The failures of `report` that are not a bad status, in words.
fn other_than_bad_status(report: &LoadReport) -> Vec<String> {
    report
        .failures
        .iter()
        .filter(|f| f.kind != FailureKind::BadStatus)
        .map(|f| format!("{:?}: {}", f.kind, f.detail))
        .collect()
}

#[test]
fn a_release_that_answers_500_is_refused_and_the_old_one_serves_alone() {
    let _heavy = heavy();
    let dir = temp_dir("health");
    let status_file = dir.path().join("status");
    std::fs::write(&status_file, "200").unwrap();
    let baton = python_release(&status_file, true);
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        mixed_clients(8, 8, 0),
        Duration::from_secs(6),
    ));
    std::thread::sleep(Duration::from_secs(1));

    std::fs::write(&status_file, "500").unwrap();
    let (code, answer) = baton.reload_wait();
    let refused_at = Instant::now();
    assert_eq!(code, 1, "{answer}");
    let probed = baton.wait_event(baton::event::Event::WorkerUnhealthy, Duration::from_secs(5));
    let pid: u32 = probed.parsed("pid").unwrap();
    for expected in ["health probe", "answered 500", &format!("worker {pid}")] {
        assert!(answer.contains(expected), "{expected:?} in {answer}");
    }
    let report = load.finish();
    let window: u64 = probed.parsed("window_ms").unwrap();
    let connections: u32 = probed.parsed("connections").unwrap();
    eprintln!(
        "through a refused release ({window} ms from listening to verdict, {connections} probe connections): {report}"
    );
    assert!(other_than_bad_status(&report).is_empty(), "{report}");
    let after: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.started > refused_at)
        .collect();
    assert!(
        after.is_empty(),
        "500s after the reload was refused: {after:?}"
    );
    let status = baton.status();
    let last = &status["master"]["last_reload"];
    assert_eq!(last["outcome"], "unhealthy", "{status}");
    assert_eq!(
        status_now(&baton),
        "HTTP/1.1 200 OK",
        "the old release serves"
    );
    baton.wait_workers(Duration::from_secs(20), |w| w.len() == 2);
}

#[test]
fn without_health_the_same_release_rolls_out() {
    let dir = temp_dir("no-health");
    let status_file = dir.path().join("status");
    std::fs::write(&status_file, "200").unwrap();
    let baton = python_release(&status_file, false);
    std::fs::write(&status_file, "500").unwrap();
    let (code, answer) = baton.reload_wait();
    assert_eq!(code, 0, "{answer}");
    assert_eq!(status_now(&baton), "HTTP/1.1 500 Internal Server Error");
}

/// The built-in worker's options as a config file, `extra` added.
fn built_in_config(extra: &str) -> String {
    format!(
        "workers = 2\nprobation = \"0s\"\nhealth = \"/healthz\"\nhealth_timeout = \"10s\"\n{extra}"
    )
}

#[test]
fn a_built_in_release_that_answers_500_is_refused_before_any_client_reaches_it() {
    let _heavy = heavy();
    let dir = temp_dir("health-built-in");
    let file = dir.path().join("baton.toml");
    std::fs::write(&file, built_in_config("")).unwrap();
    let baton = Baton::serve(&["--config", file.to_str().unwrap()]);
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        mixed_clients(8, 8, 0),
        Duration::from_secs(4),
    ));
    std::thread::sleep(Duration::from_secs(1));

    std::fs::write(&file, built_in_config("fault = \"server-error\"\n")).unwrap();
    let (code, answer) = baton.reload_wait();
    assert_eq!(code, 1, "{answer}");
    assert!(answer.contains("answered 500"), "{answer}");
    let report = load.finish();
    eprintln!("through a refused built-in release: {report}");
    assert!(report.failures.is_empty(), "{report}");
    let probed = baton.wait_event(baton::event::Event::WorkerUnhealthy, Duration::from_secs(5));
    assert_eq!(probed.parsed::<u64>("window_ms"), Some(0), "{probed:?}");
    assert_eq!(
        baton.status()["master"]["last_reload"]["outcome"],
        "unhealthy"
    );
    assert_eq!(status_now(&baton), "HTTP/1.1 200 OK");
}
