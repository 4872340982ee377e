//! Lame duck for load balancers: health checks on the admin listener fail
//! while the workers go on serving, on `baton drain` and for
//! `--shutdown-delay` after SIGTERM.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::temp_dir;
use crate::support::*;

/// `GET path` on `addr`: the status line's code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let response = exchange(&mut stream, request.as_bytes());
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.trim().to_owned())
}

#[test]
fn drain_fails_health_checks_at_once_while_traffic_is_served() {
    let baton = Baton::serve(&["--workers", "2", "--admin", "127.0.0.1:0"]);
    let admin = baton.operators_addr("admin").to_string();
    baton.wait_workers(Duration::from_secs(10), |w| w.len() == 2);
    let traffic = baton.addr.to_string();
    assert_eq!(get(&admin, "/healthz"), (200, "serving".to_owned()));
    assert_eq!(get(&admin, "/readyz"), (200, "ready".to_owned()));

    let output = baton.control_client(&["drain"]);
    assert!(output.status.success(), "{output:?}");
    let drained = Instant::now();
    let (code, body) = get(&admin, "/healthz");
    let flipped = drained.elapsed();
    // The first check after `drain` returns already fails: the flip is
    // synchronous, whatever the machine's load.
    assert_eq!((code, body.as_str()), (503, "lame_duck"));
    eprintln!("/healthz answered 503 {flipped:?} after `baton drain` returned");
    for _ in 0..20 {
        assert_eq!(get(&traffic, "/").0, 200, "traffic is served in lame duck");
    }
    assert_eq!(baton.status()["master"]["host"], "lame_duck");

    let output = baton.control_client(&["undrain"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(get(&admin, "/healthz"), (200, "serving".to_owned()));
    assert_eq!(baton.status()["master"]["host"], "serving");
}

#[test]
fn a_shutdown_delay_keeps_serving_as_a_lame_duck_before_the_drain() {
    let mut baton = Baton::serve(&[
        "--workers",
        "1",
        "--admin",
        "127.0.0.1:0",
        "--shutdown-delay",
        "2s",
        "--drain-grace",
        "0s",
    ]);
    let admin = baton.operators_addr("admin").to_string();
    baton.wait_workers(Duration::from_secs(10), |w| w.len() == 1);
    let traffic = baton.addr.to_string();
    baton.signal(nix::sys::signal::Signal::SIGTERM);
    let signalled = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || get(&admin, "/healthz").0 == 503),
        "health checks fail once SIGTERM arrives"
    );
    // Served all through the delay.
    while signalled.elapsed() < Duration::from_millis(1500) {
        assert_eq!(get(&traffic, "/").0, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    baton.wait_event(Event::ShuttingDown, Duration::from_secs(10));
    let drained_after = signalled.elapsed();
    assert!(
        drained_after >= Duration::from_millis(1900),
        "the drain began {drained_after:?} after SIGTERM"
    );
    let status = baton.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

/// HAProxy's view of server `be/host1`, from its stats socket: `UP`,
/// `DRAIN`, `DOWN`, … (the `status` column of `show stat`).
fn haproxy_status(stats: &std::path::Path) -> String {
    use std::io::{Read, Write};
    let Ok(mut socket) = std::os::unix::net::UnixStream::connect(stats) else {
        return "no stats socket yet".to_owned();
    };
    socket.write_all(b"show stat\n").unwrap();
    let mut csv = String::new();
    socket.read_to_string(&mut csv).unwrap();
    haproxy_column(&csv, "be", "host1", "status")
        .unwrap_or_else(|| format!("no status of be/host1 in {csv:?}"))
}

/// A real HAProxy reads baton's agent check (`--agent`): `baton drain`
/// shows the server in DRAIN in HAProxy's own stats, `undrain` brings it
/// back UP, and requests through HAProxy are served before and after.
#[test]
fn haproxy_sees_the_host_drain_through_the_agent_check() {
    let dir = temp_dir("haproxy");
    let baton = Baton::serve(&["--workers", "1", "--agent", "127.0.0.1:0"]);
    let agent_port = baton.operators_addr("agent").port();
    baton.wait_workers(Duration::from_secs(10), |w| w.len() == 1);
    let front = format!("127.0.0.1:{}", free_port());
    let stats = dir.path().join("haproxy.sock");
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind {front}\n  default_backend be\n\
             backend be\n  server host1 {} check inter 200ms agent-check agent-port {agent_port} agent-inter 200ms\n",
            stats.display(),
            baton.addr
        ),
    )
    .unwrap();
    let _haproxy = KillOnDrop(
        std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy; .ci/run installs it)"),
    );
    let within = slower(Duration::from_secs(15));
    let mut seen = String::new();
    let mut status_is = |wanted: &str| {
        wait_until(within, || {
            seen = haproxy_status(&stats);
            // "DRAIN (agent)": the state, then why.
            seen.split_whitespace().next() == Some(wanted)
        })
    };
    assert!(status_is("UP"), "HAProxy saw {seen}");
    assert_eq!(get(&front, "/").0, 200, "served through HAProxy");

    let output = baton.control_client(&["drain"]);
    assert!(output.status.success(), "{output:?}");
    assert!(status_is("DRAIN"), "HAProxy saw {seen}");

    let output = baton.control_client(&["undrain"]);
    assert!(output.status.success(), "{output:?}");
    assert!(status_is("UP"), "HAProxy saw {seen}");
    assert_eq!(get(&front, "/").0, 200, "served through HAProxy again");
}
