//! Rust programs on the worker library (`crates/baton-worker`), run with
//! `baton serve --native`: the axum example (`examples/axum`) must be what a
//! built-in worker is to the master (ready, reported, balanced, drained,
//! watched) and lose nothing through reloads and kills; on its own, and as a
//! plain COMMAND, it must serve `LISTEN_FDS` or an address.
//! `tests/servers/install` builds the example.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use baton::event::Event;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::real_servers::installed;
use crate::support::*;

/// A program `tests/servers/install` builds, at `path` under the target
/// directory.
fn built(path: &str) -> String {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    installed(target.join(path))
}

/// The axum example, built by `tests/servers/install`.
fn axum_example() -> String {
    built("debug/baton-axum-example")
}

/// `baton serve --native --workers N -- the axum example`, with time for a
/// busy machine to start it.
fn serve_native(workers: &str) -> Baton {
    serve_native_with(workers, &[])
}

/// The same, with more of `serve`'s options.
fn serve_native_with(workers: &str, options: &[&str]) -> Baton {
    let example = axum_example();
    let mut args = vec![
        "--workers",
        workers,
        "--native",
        "--probation",
        "0s",
        "--ready-timeout",
        "30s",
    ];
    args.extend_from_slice(options);
    args.extend(["--", &example]);
    Baton::serve(&args)
}

/// One `GET path` on a new connection: the whole response.
fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

/// Runs `baton check --json ARGS` and returns its report, asserting that
/// it passed: nothing refused, nothing failed (but requests in flight on a
/// worker the check killed).
fn check(args: &[&str]) -> serde_json::Value {
    let dir = temp_dir("native-check");
    let json = dir.path().join("report.json");
    let output = Command::new(baton_bin())
        .args(["check", "--json", json.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run baton check");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the check wrote its JSON"))
            .expect("the JSON report parses");
    report
}

#[test]
fn the_axum_example_loses_nothing_through_ten_reloads() {
    let _heavy = heavy();
    let baton = serve_native("4");
    let control = baton.control.as_ref().expect("the harness chose it");
    let reload = format!(
        "{} reload --wait --control {}",
        baton_bin().display(),
        control.display()
    );
    let url = format!("http://{}/", baton.addr);
    let report = check(&[
        "--url",
        &url,
        "--reloads",
        "10",
        "--reload-every",
        "1s",
        "--reload-command",
        &reload,
    ]);
    assert_eq!(report["ok"], report["requests"], "{report}");
    let reloads = report["reloads"].as_array().unwrap();
    assert!(reloads.len() >= 10, "{report}");
    assert!(reloads.iter().all(|r| r["ok"] == true), "{report}");
    assert!(report["ok"].as_u64().unwrap() > 1000, "{report}");
    // Every old worker drained and exited by itself, none was killed.
    let drained = baton.count_logged(|l| l.is(Event::WorkerDrained, "status", "exit code 0"));
    assert!(drained >= 40, "{drained} of 40 old workers drained");
    // The program's own log, behind the slot and pid as a COMMAND's is.
    let line = baton.wait_log("draining: stopped accepting", Duration::from_secs(10));
    assert!(line.starts_with("[slot "), "{line}");
}

/// The control: the same application served by `axum::serve` with its
/// graceful shutdown (the example's `--plain`), as a plain COMMAND, fails
/// the same check: axum closes idle keep-alive connections at once when it
/// stops, racing each client's next request.
#[test]
fn the_same_app_on_axum_serve_fails_the_same_check() {
    let _heavy = heavy();
    let example = axum_example();
    let baton = Baton::serve(&[
        "--workers",
        "4",
        "--probation",
        "0s",
        "--ready-timeout",
        "30s",
        "--",
        &example,
        "--plain",
    ]);
    let control = baton.control.as_ref().expect("the harness chose it");
    let reload = format!(
        "{} reload --wait --control {}",
        baton_bin().display(),
        control.display()
    );
    let dir = temp_dir("native-control");
    let json = dir.path().join("report.json");
    let output = Command::new(baton_bin())
        .args(["check", "--json", json.to_str().unwrap()])
        .args(["--url", &format!("http://{}/", baton.addr)])
        .args(["--reloads", "10", "--reload-every", "1s"])
        .args(["--reload-command", &reload])
        .stdin(Stdio::null())
        .output()
        .expect("run baton check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("axum::serve:\n{stdout}");
    assert_ne!(output.status.code(), Some(0), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        report["ok"].as_u64() < report["requests"].as_u64(),
        "{stdout}"
    );
}

#[test]
fn the_axum_example_loses_nothing_when_its_workers_are_killed() {
    let _heavy = heavy();
    let example = axum_example();
    let report = check(&[
        "--duration",
        "12s",
        "--reload-every",
        "2s",
        "--kill-every",
        "3s",
        "--workers",
        "4",
        "--native",
        "--",
        &example,
    ]);
    assert!(report["kills"].as_array().unwrap().len() >= 2, "{report}");
}

#[test]
fn status_counts_the_apps_requests_and_a_stopped_worker_is_replaced() {
    let _heavy = heavy();
    let baton = serve_native("2");
    let addr = baton.addr.to_string();
    for _ in 0..40 {
        assert!(get(&addr, "/").contains("Process handled by pid"));
    }
    let requests = |status: &serde_json::Value| -> u64 {
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["requests"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(10), || requests(&baton.status()) >= 40),
        "status shows the app's requests: {}",
        baton.status()
    );
    let accepted: u64 = baton.status()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap_or(0))
        .sum();
    assert!(accepted >= 40, "{}", baton.status());

    // A stopped worker stops reporting: the liveness check replaces it.
    let victim = baton.status()["workers"][0]["pid"].as_u64().unwrap() as i32;
    kill(Pid::from_raw(victim), Signal::SIGSTOP).unwrap();
    baton.wait_logged(
        "a replacement worker ready",
        1,
        Duration::from_secs(30),
        |l| l.is(Event::WorkerReady, "cause", "replacement"),
    );
    assert!(baton.logs_contain("stuck: no report for"));
    assert!(
        wait_until(Duration::from_secs(10), || is_dead(victim as u32)),
        "the stopped worker was killed"
    );
}

#[test]
fn the_axum_example_serves_an_address_on_its_own_and_drains_on_sigterm() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(axum_example())
        .env("BATON_LISTEN", &addr)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the example");
    let mut child = KillOnDrop(child);
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect(&addr)
            .is_ok()),
        "the example listens on BATON_LISTEN"
    );
    assert!(get(&addr, "/").contains("Process handled by pid"));
    let posted = {
        let mut stream = TcpStream::connect(&addr).unwrap();
        let body = r#"{"text":"on its own"}"#;
        write!(
            stream,
            "POST /notes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    assert!(posted.contains(r#""text":"on its own""#), "{posted}");
    assert!(get(&addr, "/notes").contains("on its own"));
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let exited = wait_until(Duration::from_secs(20), || {
        child.0.try_wait().unwrap().is_some()
    });
    assert!(exited, "the example drains and exits on SIGTERM");
}

/// Without `--native` the same program is a plain COMMAND: it serves the
/// socket passed the systemd way (`LISTEN_FDS`) and drains on SIGTERM.
#[test]
fn the_axum_example_as_a_plain_command_serves_listen_fds() {
    let _heavy = heavy();
    let example = axum_example();
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--probation",
        "0s",
        "--ready-timeout",
        "30s",
        "--",
        &example,
    ]);
    let addr = baton.addr.to_string();
    assert!(get(&addr, "/").contains("Process handled by pid"));
    let (code, answer) = baton.reload_wait();
    assert_eq!(code, 0, "{answer}");
    assert!(get(&addr, "/").contains("Process handled by pid"));
}

/// The master's client limits reach a native application that does not
/// set its own: with `--keepalive-timeout 1s`, an idle keep-alive
/// connection to the axum example closes after a second, not after the
/// library's default 75 s.
#[test]
fn the_masters_client_limits_reach_the_application() {
    let baton = serve_native_with("1", &["--keepalive-timeout", "1s"]);
    let mut stream = TcpStream::connect(baton.addr).expect("connect");
    stream
        .write_all(b"GET /notes HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let answered = read_response(&mut stream);
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let idle = std::time::Instant::now();
    stream
        .set_read_timeout(Some(slower(Duration::from_secs(20))))
        .unwrap();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(
        read.is_ok(),
        "the idle connection was not closed within 20 s: {read:?}"
    );
    let closed_after = idle.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(10),
        "closed after {closed_after:?}"
    );
}

/// The master's `--threads` sizes the runtime of a program that lets the
/// library build it (`Builder::run`, the library's `hello` example): one
/// thread by default, as for the built-in worker, four with
/// `--threads 4`.
#[test]
fn the_masters_threads_size_a_library_built_runtime() {
    let hello = built("debug/examples/hello");
    let threads_of = |options: &[&str]| {
        let mut args = vec!["--workers", "1", "--native", "--ready-timeout", "30s"];
        args.extend_from_slice(options);
        args.extend(["--", &hello]);
        let baton = Baton::serve(&args);
        let answered = get(&baton.addr.to_string(), "/");
        assert!(answered.contains("hello from pid"), "{answered}");
        let pid = baton.workers()[0];
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("the worker's threads")
            .count()
    };
    assert_eq!(threads_of(&[]), 1, "one thread unless told");
    // The runtime's four threads, and the thread that runs `main`.
    assert_eq!(threads_of(&["--threads", "4"]), 5);
}
