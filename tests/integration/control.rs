//! Operating a running baton: the control socket (`reload --wait`,
//! `status`, `stop`), its defences, the crash-loop backoff, and workers that
//! run as another user.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use crate::support::*;
use crate::support::{temp_dir, TempDir};

/// Runs `baton ARGS --control PATH`, optionally as another uid; returns the
/// exit code, stdout and stderr.
fn client(args: &[&str], control: &Path, uid: Option<u32>) -> (i32, String, String) {
    let mut cmd = Command::new(baton_bin());
    cmd.args(args)
        .arg("--control")
        .arg(control)
        .stdin(Stdio::null());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let output = cmd.output().expect("run the baton client");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// Sends `bytes` as a request; the answer must be an error, or nothing (a
/// request cut off by the master's size limit may be reset).
fn assert_refused_politely(control: &Path, bytes: &[u8]) {
    let mut s = UnixStream::connect(control).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("error"),
        "{answer:?}"
    );
}

struct Controlled {
    _dir: TempDir,
    path: PathBuf,
    baton: Baton,
}

fn serve_with_control(args: &[&str]) -> Controlled {
    let dir = temp_dir("control");
    let path = dir.path().join("baton.sock");
    let control = path.to_str().unwrap().to_owned();
    // Before any `-- COMMAND`.
    let mut all = vec!["--control", &control];
    all.extend_from_slice(args);
    let baton = Baton::serve(&all);
    Controlled {
        _dir: dir,
        path,
        baton,
    }
}

#[test]
fn reload_wait_reports_success_and_failure_and_loses_nothing() {
    let _heavy = heavy();
    let dir = temp_dir("reload-wait");
    let flag = dir.path().join("broken");
    let script = format!(
        "if [ -e {} ]; then exit 4; fi; exec python3 {}/examples/python/server.py",
        flag.display(),
        env!("CARGO_MANIFEST_DIR")
    );
    let c = serve_with_control(&[
        "--workers",
        "2",
        "--ready",
        "notify",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let load = BackgroundLoad::start(LoadPlan::new(
        c.baton.addr,
        mixed_clients(8, 8, 0),
        Duration::from_secs(6),
    ));

    let (code, stdout, stderr) = client(&["reload", "--wait"], &c.path, None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("ok: generation 2 is in"), "{stdout}");
    let serving = c
        .baton
        .wait_workers(Duration::from_secs(10), |w| w.len() == 2);

    std::fs::write(&flag, "").unwrap();
    let (code, stdout, stderr) = client(&["reload", "--wait"], &c.path, None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("reload of generation 3 failed") && stderr.contains("exit code 4"),
        "{stderr}"
    );
    assert_eq!(
        c.baton
            .wait_workers(Duration::from_secs(5), |w| w == serving),
        serving,
        "the old workers keep serving"
    );

    let report = load.finish();
    eprintln!("reload --wait under load: {report}");
    assert_no_failures(&report);
}

#[test]
fn status_matches_the_process_tree() {
    let c = serve_with_control(&["--workers", "3"]);
    let (code, json, stderr) = client(&["status", "--json"], &c.path, None);
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&json).expect("status --json is JSON");
    assert_eq!(status["master"]["pid"].as_u64(), Some(c.baton.pid() as u64));
    let mut pids: Vec<u32> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect();
    pids.sort();
    let mut tree = c.baton.workers();
    tree.sort();
    assert_eq!(pids, tree);
    assert!(status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["state"] == "ready"));

    let (code, table, _) = client(&["status"], &c.path, None);
    assert_eq!(code, 0);
    assert!(
        table.contains("SLOT") && table.contains("REQUESTS"),
        "{table}"
    );
    // The worker rows, after the master's line and the column heads.
    assert_eq!(
        table
            .lines()
            .skip(2)
            .filter(|l| l.contains("ready"))
            .count(),
        3,
        "{table}"
    );

    let (code, stdout, _) = client(&["stop"], &c.path, None);
    assert_eq!(code, 0, "{stdout}");
    let mut baton = c.baton;
    assert_eq!(baton.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!c.path.exists(), "the control socket is removed on exit");
}

#[test]
fn the_control_socket_refuses_other_users_and_survives_abuse() {
    let c = serve_with_control(&["--workers", "1"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&c.path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Let `nobody` reach the socket file, so that the peer check itself is tested.
    let dir = c.path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&c.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, stderr) = client(&["reload"], &c.path, Some(65534));
    assert_eq!(code, 1);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(
        c.baton.count_event(Event::ReloadStarted),
        0,
        "nobody's request did nothing"
    );

    // Garbage, half a request, an oversized line, and 200 idle clients.
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&c.path).unwrap())
        .collect();
    for garbage in [
        &b"\xff\x00\x01garbage\n"[..],
        b"reload --now\n",
        &vec![b'x'; 100_000],
        b"stat",
    ] {
        assert_refused_politely(&c.path, garbage);
    }
    // And random bytes, a hundred times.
    for _ in 0..100 {
        let len = fastrand::usize(1..600);
        let bytes: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
        assert_refused_politely(&c.path, &bytes);
    }
    for _ in 0..3 {
        let (code, stdout, stderr) = client(&["reload", "--wait"], &c.path, None);
        assert_eq!(code, 0, "{stdout}{stderr}");
    }
    drop(idle);
    let fds_now = baton::procfs::fd_count(c.baton.pid()).unwrap();
    sleep(Duration::from_millis(200));
    assert!(
        wait_until(Duration::from_secs(5), || baton::procfs::fd_count(
            c.baton.pid()
        )
        .unwrap()
            <= fds_now),
        "no descriptor leaked"
    );
    assert!(c.baton.workers().len() == 1);
}

/// What a real master answers to `line`.
fn raw_answer(control: &Path, line: &[u8]) -> String {
    let mut s = UnixStream::connect(control).unwrap();
    s.write_all(line).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn a_client_of_another_protocol_version_is_told_both_versions_and_nothing_happens() {
    let c = serve_with_control(&["--workers", "1"]);
    let newer = raw_answer(
        &c.path,
        b"{\"v\":99,\"baton\":\"9.9.9\",\"command\":\"stop\"}\n",
    );
    let reply: serde_json::Value = serde_json::from_str(&newer).expect("a JSON reply");
    assert_eq!(reply["v"], baton::control::VERSION, "{newer}");
    assert_eq!(reply["reply"], "error", "{newer}");
    assert_eq!(reply["problem"], "version", "{newer}");
    assert_eq!(reply["client"], 99, "{newer}");
    // A client from before JSON lines sends words and is answered in words.
    let older = raw_answer(&c.path, b"stop\n");
    assert!(
        older.starts_with("error: unknown request \"stop\""),
        "{older}"
    );
    assert!(older.contains("control protocol 1"), "{older}");
    // Neither stopped the master.
    let (code, stdout, stderr) = client(&["status"], &c.path, None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("running"), "{stdout}");
}

#[test]
fn status_answers_while_a_thousand_silent_clients_hold_the_control_socket() {
    let c = serve_with_control(&["--workers", "1"]);
    for round in 1..=3 {
        // Silent clients of the same user: they connect and say nothing.
        let silent: Vec<UnixStream> = (0..1000)
            .map(|_| UnixStream::connect(&c.path).unwrap())
            .collect();
        let asked = std::time::Instant::now();
        let (code, stdout, stderr) = client(&["status"], &c.path, None);
        let took = asked.elapsed();
        eprintln!("status behind 1,000 silent clients, round {round}: {took:?}");
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stdout.contains("running"), "{stdout}");
        // Answered at once, not behind the silent clients (that would take
        // their read timeouts, one after another). The bound is what a
        // machine with both cores busy meets: a `baton status` process
        // took 1.8 s to start and answer there once, 0.26 s idle.
        assert!(took < slower(Duration::from_secs(4)), "took {took:?}");
        drop(silent);
    }
}

/// A program of another user that listens at a control path and answers
/// every client "ok", as an impersonator would; it records what it is sent.
const IMPERSONATOR: &str = r#"
import socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        data = c.recv(4096)
    except OSError:
        data = b""
    with open(log, "ab") as f:
        f.write(data)
    try:
        c.sendall(b"ok: generation 99 is in\n")
    except OSError:
        pass
    c.close()
"#;

#[test]
fn a_control_socket_of_another_user_is_not_believed() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    const ATTACKER: u32 = 1;
    let dir = temp_dir("impersonated");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("control.sock");
    let log = dir.path().join("received");
    std::fs::write(&log, b"").unwrap();
    std::os::unix::fs::chown(&log, Some(ATTACKER), Some(ATTACKER)).unwrap();
    let mut fake = KillOnDrop(
        Command::new("python3")
            .args(["-c", IMPERSONATOR])
            .arg(&path)
            .arg(&log)
            .uid(ATTACKER)
            .gid(ATTACKER)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3"),
    );
    let mut line = String::new();
    std::io::BufReader::new(fake.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening");

    for args in [&["status"][..], &["reload", "--wait"], &["stop"]] {
        let (code, stdout, stderr) = client(args, &path, None);
        assert_ne!(
            code, 0,
            "baton {args:?} believed the impersonator: {stdout}"
        );
        assert!(!stdout.contains("ok"), "{args:?} reported {stdout:?}");
        assert!(
            stderr.contains(&format!("runs as uid {ATTACKER}")),
            "{args:?} should say whose socket it is: {stderr}"
        );
    }
    drop(fake);
    assert_eq!(
        std::fs::read(&log).unwrap(),
        b"",
        "no request reached the impersonator"
    );

    // The default control directory taken by another user: the master
    // refuses to start rather than run without its control socket.
    const VICTIM: u32 = 65534;
    let taken = PathBuf::from(format!("/tmp/baton-{VICTIM}"));
    let _ = std::fs::remove_dir_all(&taken);
    std::fs::create_dir(&taken).unwrap();
    std::fs::set_permissions(&taken, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&taken, Some(ATTACKER), Some(ATTACKER)).unwrap();
    let output = Command::new(baton_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .env_remove("XDG_RUNTIME_DIR")
        .uid(VICTIM)
        .gid(VICTIM)
        .stdin(Stdio::null())
        .output()
        .expect("run baton serve");
    let _ = std::fs::remove_dir_all(&taken);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("belongs to uid {ATTACKER}")),
        "the error says who owns the directory: {stderr}"
    );
}

#[test]
fn a_crash_loop_backs_off_to_the_cap_with_flat_resources() {
    let dir = temp_dir("crash-loop");
    let flag = dir.path().join("broken");
    let script = format!(
        "if [ -e {} ]; then exit 1; fi; exec sleep 600",
        flag.display()
    );
    let c = serve_with_control(&[
        "--workers",
        "1",
        "--ready",
        "delay:50ms",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    std::fs::write(&flag, "").unwrap();
    let first = c.baton.workers()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // 0, 0, 100, 200, … 6400 ms, then the 10 s cap: reached after ~13 s.
    c.baton
        .wait_logged("the backoff at its cap", 1, Duration::from_secs(30), |l| {
            l.is(Event::Backoff, "delay_ms", "10000")
        });
    let pid = c.baton.pid();
    let (code, json, _) = client(&["status", "--json"], &c.path, None);
    // Measured after the status answer, whose code is then paged in.
    let fds = baton::procfs::fd_count(pid).unwrap();
    let rss = baton::procfs::rss_bytes(pid).unwrap();
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["backoff"][0]["slot"].as_u64(), Some(0), "{status}");
    assert!(
        status["backoff"][0]["quick_failures"].as_u64().unwrap() >= 9,
        "{status}"
    );

    // Five cap-length backoffs later (a minute into the loop), nothing has grown.
    c.baton
        .wait_logged("the backoff at its cap", 6, Duration::from_secs(70), |l| {
            l.is(Event::Backoff, "delay_ms", "10000")
        });
    // (A worker being reaped or started holds a descriptor or two for a
    // moment: what counts is that the count comes back.)
    assert!(
        wait_until(slower(Duration::from_secs(5)), || {
            baton::procfs::fd_count(pid).unwrap() <= fds
        }),
        "the master holds {} descriptors, {fds} five backoffs before",
        baton::procfs::fd_count(pid).unwrap()
    );
    let rss_after = baton::procfs::rss_bytes(pid).unwrap();
    assert!(
        rss_after <= rss + 256 * 1024,
        "RSS grew from {rss} to {rss_after}"
    );
    assert!(c.baton.workers().len() <= 1, "no process piles up");
}

#[test]
fn workers_run_as_another_user_on_a_privileged_port() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("not root: skipping the privilege test");
        return;
    }
    let port = (81..1024)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let listen = format!("127.0.0.1:{port}");
    let c = serve_with_control(&["--workers", "2", "--listen", &listen, "--user", "nobody"]);
    for pid in c.baton.workers() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_owned()
        };
        assert!(
            field("Uid:")
                .split_whitespace()
                .skip(1)
                .all(|id| id == "65534"),
            "{}",
            field("Uid:")
        );
        assert!(
            field("Gid:")
                .split_whitespace()
                .skip(1)
                .all(|id| id == "65534"),
            "{}",
            field("Gid:")
        );
        assert_eq!(
            field("Groups:").trim(),
            "Groups:",
            "no supplementary groups"
        );
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `baton serve --config FILE`, with the file in its own directory.
fn serve_with_config(toml: &str) -> (Controlled, PathBuf) {
    let dir = temp_dir("config");
    let file = dir.path().join("baton.toml");
    std::fs::write(&file, toml).unwrap();
    let control = dir.path().join("baton.sock");
    let args = [
        "--config",
        file.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
    ];
    let baton = Baton::serve(&args);
    (
        Controlled {
            _dir: dir,
            path: control,
            baton,
        },
        file,
    )
}

#[test]
fn the_worker_count_follows_the_config_file_on_reload() {
    let (c, file) =
        serve_with_config("workers = 2\ndrain_grace = \"100ms\"\nlisten = [\"127.0.0.1:0\"]\n");
    c.baton
        .wait_workers(Duration::from_secs(5), |w| w.len() == 2);
    for count in [4, 2] {
        std::fs::write(
            &file,
            format!("workers = {count}\ndrain_grace = \"100ms\"\nlisten = [\"127.0.0.1:0\"]\n"),
        )
        .unwrap();
        let (code, stdout, stderr) = client(&["reload", "--wait"], &c.path, None);
        assert_eq!(code, 0, "{stdout}{stderr}");
        c.baton
            .wait_workers(Duration::from_secs(10), |w| w.len() == count);
        let (_, json, _) = client(&["status", "--json"], &c.path, None);
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            status["master"]["workers_wanted"].as_u64(),
            Some(count as u64)
        );
    }
}

/// The drain grace comes with each drain order, from the configuration in
/// force then: a reload that shortens it shortens it for the workers it
/// replaces too, not only for the workers it starts.
#[test]
fn a_reload_that_shortens_the_drain_grace_applies_it_to_the_old_workers() {
    let config = |grace: &str| {
        format!(
            "workers = 1\ndrain_grace = \"{grace}\"\ndrain_timeout = \"60s\"\nlisten = [\"127.0.0.1:0\"]\n\
             handoff_connections = \"off\"\n"
        )
    };
    let (c, file) = serve_with_config(&config("60s"));
    c.baton
        .wait_workers(Duration::from_secs(5), |w| w.len() == 1);
    // An idle keep-alive client holds the old worker for its whole grace
    // (with the handoff off: it would move to the new worker at once).
    let mut idle = std::net::TcpStream::connect(c.baton.addr).unwrap();
    let response = exchange(&mut idle, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    std::fs::write(&file, config("200ms")).unwrap();
    let (code, stdout, stderr) = client(&["reload", "--wait"], &c.path, None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // With the grace it was started with, it would drain for 60 s.
    c.baton
        .wait_event(Event::WorkerDrained, Duration::from_secs(20));
    let mut rest = Vec::new();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        idle.read_to_end(&mut rest).map_err(|e| e.kind()),
        Ok(0),
        "the worker closed the idle connection"
    );
}

#[test]
fn an_invalid_config_rejects_the_reload_and_loses_nothing() {
    let _heavy = heavy();
    let (c, file) = serve_with_config("workers = 2\nlisten = [\"127.0.0.1:0\"]\n");
    let serving = c
        .baton
        .wait_workers(Duration::from_secs(5), |w| w.len() == 2);
    let load = BackgroundLoad::start(LoadPlan::new(
        c.baton.addr,
        mixed_clients(8, 8, 2),
        Duration::from_secs(5),
    ));
    for (broken, reason) in [
        (
            "workers = \"many\"\nlisten = [\"127.0.0.1:0\"]\n",
            "workers: \"many\" is not a whole number",
        ),
        (
            "workers = 2\nlisten = [\"127.0.0.1:0\"]\nwrokers = 3\n",
            "unknown key",
        ),
        // (The harness's --listen overrides the file's; backlog is as fixed.)
        ("workers = 2\nbacklog = 10\n", "backlog cannot change"),
        // Durations out of range: each once crashed or wedged the master.
        (
            "workers = 2\nready_timeout = \"500000000000years\"\n",
            "out of range",
        ),
        (
            "workers = 2\ndrain_timeout = \"18446744073709551615s\"\n",
            "out of range",
        ),
        ("workers = 2\nready_timeout = \"0s\"\n", "out of range"),
        ("workers = 2\ndrain_timeout = \"-5s\"\n", "not a duration"),
        ("workers = 2\nheader_timeout = \"0s\"\n", "out of range"),
        // A file caught half-written.
        ("", "sets no option"),
    ] {
        std::fs::write(&file, broken).unwrap();
        let (code, stdout, stderr) = client(&["reload", "--wait"], &c.path, None);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(
            stderr.contains("reload rejected") && stderr.contains(reason),
            "{stderr}"
        );
    }
    let report = load.finish();
    assert_no_failures(&report);
    assert_eq!(c.baton.workers(), serving, "the workers went on untouched");
}

/// `status --json` tells the truth when things go wrong: a slot in a crash
/// loop makes the master `degraded` with the backoff shown; a failed reload
/// is the last reload's outcome, with its generation and reason, while the
/// old generation still counts as the one serving. `stop --wait` returns
/// only once the master has exited.
#[test]
fn status_tells_a_crash_loop_and_a_failed_reload_and_stop_waits_for_the_exit() {
    let dir = temp_dir("crashloop");
    let broken = dir.path().join("broken");
    let program = format!(
        "import os, socket, sys\n{}\nif os.path.exists({:?}):\n    sys.exit(3)\nserve(socket.socket(fileno=3))\n",
        crate::command::SERVE_UNTIL_TERM,
        broken.to_str().unwrap()
    );
    let c = serve_with_control(&["--workers", "1", "--", "python3", "-c", &program]);
    let first = c
        .baton
        .wait_workers(Duration::from_secs(10), |w| w.len() == 1);
    let status = || -> serde_json::Value {
        let (code, json, stderr) = client(&["status", "--json"], &c.path, None);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&json).unwrap()
    };
    assert_eq!(status()["master"]["state"], "running");

    std::fs::write(&broken, "").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut seen = serde_json::Value::Null;
    let backing_off = wait_until(slower(Duration::from_secs(10)), || {
        seen = status();
        seen["backoff"].as_array().is_some_and(|b| !b.is_empty())
    });
    assert!(backing_off, "{seen}");
    assert_eq!(seen["master"]["state"], "degraded", "{seen}");
    assert_eq!(seen["master"]["workers_ready"], 0, "{seen}");

    let (code, _, stderr) = client(&["reload", "--wait"], &c.path, None);
    assert_eq!(code, 1, "{stderr}");
    let seen = status();
    let last = &seen["master"]["last_reload"];
    assert_eq!(last["outcome"], "failed", "{seen}");
    assert_eq!(last["generation"], 2, "{seen}");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exited before it was ready")),
        "{seen}"
    );
    assert_eq!(seen["master"]["generation"], 1, "{seen}");

    std::fs::remove_file(&broken).unwrap();
    let mut seen = serde_json::Value::Null;
    let recovered = wait_until(slower(Duration::from_secs(30)), || {
        seen = status();
        seen["master"]["state"] == "running"
    });
    assert!(recovered, "{seen}");

    let (code, stdout, stderr) = client(&["stop", "--wait"], &c.path, None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("has exited"), "{stdout}");
    assert!(
        is_dead(c.baton.pid()),
        "stop --wait returned before the master exited"
    );
}
