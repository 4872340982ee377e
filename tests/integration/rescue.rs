//! The rescue of idle keep-alive connections a draining COMMAND closes
//! (`--rescue-connections`, on by default): real programs, unchanged, with
//! their own graceful stop, through reloads under load; and a program's
//! own answers, slow or ended by a close, reach their clients exactly as
//! it wrote them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton::event::Event;

use crate::real_servers::{check_reloads, serve_with};
use crate::support::*;

/// The plain Node server of `examples/node/unchanged.js`.
fn unchanged_node() -> [String; 2] {
    ["node".to_owned(), example("node/unchanged.js")]
}

fn program(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// GETs and POSTs through reloads of a Node server that closes its idle
/// connections at once when it stops: the rescue loses none of them.
#[test]
fn an_unchanged_node_server_loses_no_request_with_the_rescue() {
    let _heavy = heavy();
    let [node, server] = unchanged_node();
    let baton = serve_with(&["--log-format", "json"], &[&node, &server]);
    let (report, stdout) = check_reloads(&baton, "node-unchanged", &["get", "post"]);
    assert_eq!(report["ok"], report["requests"], "{stdout}");
    assert!(report["ok"].as_u64().unwrap() > 1000, "{stdout}");
    let rescued = baton.count_logged(|l| {
        l.event == Some(Event::Rescued) && l.parsed::<u64>("requests") == Some(1)
    });
    assert!(rescued > 0, "no request needed rescuing:\n{stdout}");
    let counters = &baton.status()["master"]["counters"];
    assert_eq!(counters["requests_rescued"].as_u64(), Some(rescued as u64));
    assert!(counters["connections_rescued"].as_u64() >= Some(rescued as u64));
    eprintln!("{rescued} requests rescued");
}

/// The same, rescue off: the same server fails requests (the rescue test
/// above could not fail otherwise).
#[test]
fn without_the_rescue_the_same_node_server_fails_requests() {
    let _heavy = heavy();
    let [node, server] = unchanged_node();
    let baton = serve_with(&["--rescue-connections", "off"], &[&node, &server]);
    let (report, stdout) = check_reloads(&baton, "node-unchanged-off", &["get", "post"]);
    let failed = report["requests"].as_u64().unwrap() - report["ok"].as_u64().unwrap();
    assert!(failed > 0, "{stdout}");
    eprintln!("{failed} requests failed without the rescue");
}

/// Sends `GET path` on a new connection.
fn ask(baton: &Baton, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(baton.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    stream
}

/// Everything until the server closes, and how long the close came after
/// the last byte.
fn read_to_close(mut stream: TcpStream) -> (String, Duration) {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let mut last = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&all).into_owned(), last.elapsed()),
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                last = Instant::now();
            }
            Err(e) => panic!("reading {:?}: {e}", String::from_utf8_lossy(&all)),
        }
    }
}

/// A request the program is working on when the drain starts (2 s), and
/// one it answers with a body that ends at its close: each client gets
/// exactly the program's answer, and the close follows the answer at
/// once, not after the rescue's wait for a request.
#[test]
fn the_rescue_never_touches_what_the_program_answers() {
    let _heavy = heavy();
    let baton = serve_with(
        &["--log-format", "json"],
        &["python3", &program("drain_cases.py")],
    );
    let old = baton.workers();
    let slow = ask(&baton, "/slow");
    let ended_by_close = ask(&baton, "/eof");
    baton.wait_log_nth("handling /slow", 1, Duration::from_secs(30));
    baton.wait_log_nth("handling /eof", 1, Duration::from_secs(30));
    let output = baton.control_client(&["reload"]);
    assert!(output.status.success(), "{output:?}");
    baton.wait_event(Event::ConnectionsWatched, Duration::from_secs(30));

    let from_old = |answer: &str, body: &str| {
        old.iter()
            .any(|pid| answer.ends_with(&format!("\r\n\r\n{body} from {pid}")))
    };
    let (answer, _) = read_to_close(ended_by_close);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\neof answer from ")
            && from_old(&answer, "eof answer"),
        "{answer}"
    );
    let (answer, close_after) = read_to_close(slow);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(from_old(&answer, "slow answer"), "{answer}");
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    // The program closed right after its answer: the client sees the close
    // well before the 2 s an idle rescued connection waits.
    assert!(close_after < Duration::from_secs(1), "{close_after:?}");
    assert_eq!(
        baton.count_logged(
            |l| l.event == Some(Event::Rescued) && l.parsed::<u64>("requests") == Some(1)
        ),
        0,
        "nothing was the rescuer's to answer"
    );
}

/// An idle keep-alive connection the program closes when it drains: the
/// client's next request, sent after the close, is answered by the new
/// generation, with `Connection: close`.
#[test]
fn a_request_on_a_connection_the_program_closed_reaches_the_new_generation() {
    let _heavy = heavy();
    let [node, server] = unchanged_node();
    let baton = serve_with(&["--log-format", "json"], &[&node, &server]);
    request_after_the_close_reaches_the_new_generation(&baton);
}

/// The same with workers of another user (`--user nobody`): the rescuer
/// runs as that user too, as a worker does, since it parses what clients
/// send; and a master killed at once takes workers and rescuer with it.
#[test]
fn another_users_workers_are_rescued_by_a_rescuer_of_that_user() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("not root: skipping the --user rescue test");
        return;
    }
    let _heavy = heavy();
    let [node, server] = unchanged_node();
    let mut baton = serve_with(
        &["--log-format", "json", "--user", "nobody"],
        &[&node, &server],
    );
    request_after_the_close_reaches_the_new_generation(&baton);
    let rescuer: u32 = baton
        .wait_event(Event::RescuerStarted, Duration::from_secs(30))
        .parsed("pid")
        .expect("the rescuer's pid");
    assert_eq!(uids(rescuer), ["65534"; 4], "the rescuer's Uid");
    let mut processes = baton.workers();
    processes.push(rescuer);
    baton.signal(nix::sys::signal::Signal::SIGKILL);
    baton.wait_exit(Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(30), || processes
            .iter()
            .all(|&pid| is_dead(pid))),
        "outlived the master: {:?}",
        processes
            .iter()
            .filter(|&&pid| !is_dead(pid))
            .collect::<Vec<_>>()
    );
}

/// Root without CAP_SYS_PTRACE (as a container runs it) and workers of
/// another user: baton cannot see their descriptors. It says so at start;
/// `--ready auto` says why a worker is not ready; a drain says why there
/// is no rescue, and goes on as without it.
#[test]
fn without_the_right_to_copy_the_drain_goes_on_and_says_why() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("not root: skipping the CAP_SYS_PTRACE test");
        return;
    }
    let _heavy = heavy();
    let [node, server] = unchanged_node();
    let without_ptrace = || {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace"])
            .arg(baton_bin());
        cmd
    };
    let mut looking = Baton::spawn_command(
        without_ptrace(),
        &[
            "--user",
            "nobody",
            "--ready-timeout",
            "2s",
            "--",
            &node,
            &server,
        ],
    );
    assert!(!looking.wait_exit(Duration::from_secs(60)).success());
    assert!(looking.logs_contain("lacks CAP_SYS_PTRACE"));
    assert!(looking.logs_contain("baton cannot read the descriptors of 1 of them"));

    let baton = Baton::serve_command(
        without_ptrace(),
        &[
            "--workers",
            "2",
            "--probation",
            "0s",
            "--user",
            "nobody",
            "--ready",
            "delay:500ms",
            "--",
            &node,
            &server,
        ],
    );
    let old = baton.workers();
    let (code, text) = baton.reload_wait();
    assert_eq!(code, 0, "{text}");
    let refused = baton.wait_event(Event::RescueUnavailable, Duration::from_secs(30));
    let cause: String = refused.parsed("cause").expect("a cause");
    assert!(cause.contains("Permission denied"), "{cause}");
    assert!(cause.contains("CAP_SYS_PTRACE"), "{cause}");
    let mut stream = TcpStream::connect(baton.addr).expect("connect");
    let answer = exchange(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    baton.wait_workers(Duration::from_secs(30), |now| {
        now.len() == old.len() && now.iter().all(|pid| !old.contains(pid))
    });
}

/// The Uid line of /proc/PID/status: real, effective, saved, filesystem.
fn uids(pid: u32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

/// A request on an idle connection, a reload that replaces every worker,
/// then the client's next request on that connection: the new generation
/// answers it through the rescuer, with `Connection: close`.
fn request_after_the_close_reaches_the_new_generation(baton: &Baton) {
    let old = baton.workers();
    let mut stream = TcpStream::connect(baton.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = "GET / HTTP/1.1\r\nHost: test\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    let (code, text) = baton.reload_wait();
    assert_eq!(code, 0, "{text}");
    // The old workers are gone: whatever answers is the new generation.
    baton.wait_workers(Duration::from_secs(30), |now| {
        now.len() == old.len() && now.iter().all(|pid| !old.contains(pid))
    });
    stream.write_all(request.as_bytes()).unwrap();
    let (answer, _) = read_to_close(stream);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("connection: close\r\n"),
        "{answer}"
    );
    let pid: u32 = answer
        .rsplit("pid: ")
        .next()
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {answer}"));
    assert!(!old.contains(&pid), "answered by {pid}, an old worker");
    baton.wait_event(Event::Rescued, Duration::from_secs(30));
}
