//! Bad input gets exit code 2 and a message that names the problem.

use crate::support::*;

fn assert_usage_error(args: &[&str], expected: &str) {
    let (code, stderr) = run_baton(args);
    assert_eq!(code, 2, "baton {args:?} should exit 2; stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "baton {args:?} should say {expected:?}; it said: {stderr}"
    );
}

#[test]
fn unknown_flag() {
    assert_usage_error(&["serve", "--frobnicate"], "--frobnicate");
}

#[test]
fn malformed_addresses() {
    assert_usage_error(&["serve", "--listen", "nonsense"], "not an address");
    assert_usage_error(&["serve", "--listen", "localhost:80"], "not an address");
    assert_usage_error(&["serve", "--listen", "127.0.0.1:99999"], "not an address");
    assert_usage_error(
        &["serve", "--listen", "a b=127.0.0.1:1"],
        "not a listener name",
    );
    assert_usage_error(&["serve", "--listen", "unix:"], "names no socket path");
}

#[test]
fn port_in_use() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    assert_usage_error(&["serve", "--listen", &addr], "already in use");
}

#[test]
fn same_address_twice() {
    // Refused before anything is bound.
    let addr = "127.0.0.1:8080";
    assert_usage_error(
        &["serve", "--listen", addr, "--listen", addr],
        "given twice",
    );
}

#[test]
fn bad_durations_and_counts() {
    assert_usage_error(&["serve", "--drain-timeout", "3x"], "not a duration");
    assert_usage_error(&["serve", "--ready-timeout", "soon"], "not a duration");
    assert_usage_error(&["serve", "--workers", "0"], "--workers");
    assert_usage_error(&["serve", "--backlog=0"], "--backlog");
    for (flag, value) in [
        ("--ready-timeout", "500000000000years"),
        ("--ready-timeout", "0s"),
        ("--drain-timeout", "18446744073709551615s"),
        ("--drain-timeout", "0s"),
        ("--drain-grace", "2h"),
        ("--header-timeout", "0s"),
        ("--keepalive-timeout", "10years"),
        ("--ready", "delay:2days"),
    ] {
        assert_usage_error(&["serve", flag, value], "out of range");
    }
    assert_usage_error(&["check", "--duration", "0s"], "out of range");
}

#[test]
fn an_empty_config_file_is_refused_at_start() {
    let dir = crate::support::temp_dir("empty-config");
    let file = dir.path().join("baton.toml");
    std::fs::write(&file, "# being rewritten\n").unwrap();
    assert_usage_error(
        &["serve", "--config", file.to_str().unwrap()],
        "sets no option",
    );
}

#[test]
fn a_worker_started_by_hand_explains_itself() {
    let (code, stderr) = run_baton(&["worker"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("started by `baton serve`"), "{stderr}");
}
