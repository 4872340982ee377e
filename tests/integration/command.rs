//! Any program as a worker: `baton serve -- COMMAND`. The examples' Node and
//! Python servers, programs that fail to start or never get ready, what a
//! COMMAND inherits, and one that ignores its drain signal.

use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::temp_dir;
use crate::support::*;

/// `baton serve --workers 2 -- node ARGS`, for tests that reload it under
/// load: a start can take seconds when the machine is busy (CI shares it),
/// so the ready timeout is 30 s.
fn serve_node_reloaded_under_load(args: &[&str]) -> Baton {
    let mut all = vec!["--workers", "2", "--ready-timeout", "30s", "--", "node"];
    all.extend_from_slice(args);
    Baton::serve(&all)
}

#[test]
fn node_workers_reload_under_load_with_zero_failures() {
    let _heavy = heavy();
    let server = example("node/server.js");
    let baton = serve_node_reloaded_under_load(&[&server]);
    let first = baton.workers();
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        mixed_clients(16, 16, 4),
        Duration::from_secs(10),
    ));
    let report = load.finish_after_reloads(&baton, 3, Duration::from_millis(2500));
    eprintln!("node workers across reloads: {report}");
    assert_no_failures(&report);
    assert!(report.ok > 1000, "{report}");
    let last = baton.wait_workers(Duration::from_secs(10), |w| w.len() == 2);
    assert!(
        last.iter().all(|pid| !first.contains(pid)),
        "every node worker replaced"
    );
}

#[test]
fn the_tutorials_crashing_workers_refuse_nothing() {
    let _heavy = heavy();
    let server = example("node/server.js");
    let mut cmd = std::process::Command::new(baton_bin());
    cmd.env("CRASH_AFTER_MS", "2000");
    let baton = Baton::serve_command(cmd, &["--workers", "2", "--", "node", &server]);
    // ab-style: every request on a new connection.
    let plan = LoadPlan::new(
        baton.addr,
        vec![ClientMode::NewConnection; 32],
        Duration::from_secs(8),
    );
    let report = runtime().block_on(baton::load::run(plan));
    eprintln!("crashing node workers: {report}");
    let crashes = baton.count_event(Event::WorkerCrashed);
    assert!(crashes >= 4, "the workers crashed ({crashes} times)");
    assert_eq!(report.count(FailureKind::Refused), 0, "{report}");
    assert_eq!(report.count(FailureKind::Timeout), 0, "{report}");
    assert_eq!(report.count(FailureKind::BadStatus), 0, "{report}");
    // Every crash was replaced: the crashes logged so far each have a
    // replacement started. (Not each a ready one: on a loaded host a
    // replacement may itself crash, 2 s after its start, before it is
    // ready.)
    baton.wait_logged(
        "a replacement worker started",
        crashes,
        Duration::from_secs(5),
        |l| l.is(Event::WorkerStarted, "cause", "replacement"),
    );
    baton.wait_logged(
        "a replacement worker ready",
        1,
        Duration::from_secs(10),
        |l| l.is(Event::WorkerReady, "cause", "replacement"),
    );
}

/// Runs `baton serve` on a free port with `args` and checks that the first
/// start fails (exit 1) with every one of `reasons` in the log.
fn assert_first_start_fails(args: &[&str], reasons: &[&str]) {
    let mut argv = vec!["serve", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(args);
    let (code, stderr) = run_baton(&argv);
    assert_eq!(code, 1, "{stderr}");
    for reason in reasons {
        assert!(stderr.contains(reason), "{stderr}");
    }
}

#[test]
fn a_command_that_cannot_start_fails_the_first_start() {
    assert_first_start_fails(
        &["--workers", "2", "--", "sh", "-c", "exit 3"],
        &["the first workers failed to start", "exit code 3"],
    );
    assert_first_start_fails(
        &[
            "--workers",
            "1",
            "--ready",
            "notify",
            "--ready-timeout",
            "1s",
            "--",
            "sleep",
            "30",
        ],
        &["not ready within 1s"],
    );
    // A program that is not there is a configuration problem, found
    // before anything starts (as `serve -t` finds it).
    let (code, stderr) = run_baton(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--",
        "/nonexistent/program",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("COMMAND: /nonexistent/program is not an executable file"),
        "{stderr}"
    );
}

#[test]
fn a_release_that_fails_on_reload_loses_nothing() {
    let _heavy = heavy();
    let dir = temp_dir("failing-release");
    let flag = dir.path().join("broken");
    let script = format!(
        "if [ -e {} ]; then exit 3; fi; exec python3 {}",
        flag.display(),
        example("python/server.py")
    );
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--ready",
        "notify",
        "--ready-timeout",
        "2s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let serving = baton.workers();
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        mixed_clients(8, 8, 0),
        Duration::from_secs(4),
    ));
    sleep(Duration::from_secs(1));
    std::fs::write(&flag, "").unwrap();
    baton.signal(Signal::SIGHUP);
    let failed = baton.wait_event(Event::ReloadFailed, Duration::from_secs(10));
    assert!(
        failed
            .field("reason")
            .unwrap_or_default()
            .contains("exit code 3"),
        "{failed}"
    );
    let report = load.finish();
    eprintln!("python workers, failed reload: {report}");
    assert_no_failures(&report);
    assert_eq!(
        baton.wait_workers(Duration::from_secs(5), |w| w == serving),
        serving
    );
    assert!(report.by_pid.keys().all(|pid| serving.contains(pid)));
}

#[test]
fn a_command_inherits_exactly_its_listeners() {
    let baton = Baton::serve(&[
        "--workers",
        "1",
        "--listen",
        "a=127.0.0.1:0",
        "--listen",
        "b=127.0.0.1:0",
        "--ready",
        "delay:100ms",
        "--",
        "sleep",
        "30",
    ]);
    let pid = baton.workers()[0];
    // The worker is `sleep` itself now (exec keeps the pid): look at what it holds.
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2, 3, 4]);
    for fd in [3, 4] {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert!(link.to_string_lossy().starts_with("socket:"), "{link:?}");
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env: Vec<String> = environ
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for expected in [
        "LISTEN_FDS=2".to_owned(),
        "LISTEN_FDNAMES=a:b".to_owned(),
        format!("LISTEN_PID={pid}"),
    ] {
        assert!(env.contains(&expected), "{expected} missing from {env:?}");
    }
    assert!(
        env.iter().any(|v| v.starts_with("NOTIFY_SOCKET=")),
        "{env:?}"
    );
}

#[test]
fn a_worker_that_ignores_its_drain_signal_is_killed_and_the_reload_completes() {
    let baton = Baton::serve(&[
        "--workers",
        "1",
        "--ready",
        "delay:100ms",
        "--drain-timeout",
        "1s",
        "--",
        "sh",
        "-c",
        "trap '' TERM; exec sleep 60",
    ]);
    let old = baton.workers()[0];
    baton.reload();
    let exited = baton.wait_event(Event::WorkerDrained, Duration::from_secs(5));
    assert!(
        exited.parsed::<u32>("pid") == Some(old)
            && exited
                .field("status")
                .unwrap_or_default()
                .contains("SIGKILL"),
        "{exited}"
    );
    assert!(baton.logs_contain("drain deadline passed"));
}

/// A worker that calls `listen(5)` on the socket it is given, as servers
/// that listen again (with their own backlog) do, then says it is ready.
const RELISTENS: &str = r#"
import os, socket
s = socket.socket(fileno=3)
s.listen(5)
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
"#;

/// The backlog `ss` shows for the listener on `port`.
pub fn backlog_of(port: u16) -> u32 {
    let output = std::process::Command::new("ss")
        .args(["-Hlnt", &format!("sport = :{port}")])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&output.stdout);
    // State Recv-Q Send-Q ...: a listener's Send-Q is its backlog.
    text.split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listener on port {port}: {text:?}"))
}

#[test]
fn a_worker_that_changes_the_backlog_has_it_set_back() {
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--backlog",
        "1000",
        "--ready",
        "notify",
        "--",
        "python3",
        "-c",
        &format!("{RELISTENS}{SERVE_UNTIL_TERM}serve(s)\n"),
    ]);
    assert!(baton.logs_contain("a worker changed the listen backlog"));
    assert_eq!(backlog_of(baton.addr.port()), 1000);
    baton.reload();
    assert_eq!(backlog_of(baton.addr.port()), 1000, "and after a reload");
}

/// A server that forks two children which accept on the same socket, as
/// gunicorn, puma's cluster mode or a shell wrapper do.
const FORKS_TWO: &str = r#"
import os, socket
s = socket.socket(fileno=3)
for _ in range(2):
    if os.fork() == 0:
        break
else:
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
"#;

/// Every process of the workers' trees: each worker and its children.
fn worker_trees(baton: &Baton) -> Vec<u32> {
    let workers = baton.wait_workers(Duration::from_secs(10), |w| {
        w.len() == 2
            && w.iter()
                .all(|&p| baton::procfs::live_children(p).len() == 2)
    });
    workers
        .iter()
        .flat_map(|&w| std::iter::once(w).chain(baton::procfs::live_children(w)))
        .collect()
}

fn serve_forking() -> Baton {
    Baton::serve(&[
        "--workers",
        "2",
        "--ready",
        "notify",
        "--",
        "python3",
        "-c",
        &format!("{FORKS_TWO}{SERVE_UNTIL_TERM}serve(s)\n"),
    ])
}

fn assert_all_gone(pids: &[u32], after: &str) {
    assert!(
        wait_until(Duration::from_secs(2), || pids.iter().all(|&p| is_dead(p))),
        "after {after}, still alive: {:?}",
        pids.iter().filter(|&&p| !is_dead(p)).collect::<Vec<_>>()
    );
}

#[test]
fn a_forking_worker_leaves_nothing_behind_after_reload_stop_or_a_killed_master() {
    // A reload: the old generation's children go with their worker.
    let baton = serve_forking();
    let old = worker_trees(&baton);
    assert_eq!(old.len(), 6);
    baton.reload();
    assert_all_gone(&old, "a reload");
    let old = worker_trees(&baton);

    // `stop`: the whole tree, then the master.
    let mut baton = baton;
    baton.signal(Signal::SIGTERM);
    assert_eq!(baton.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_all_gone(&old, "stop");

    // A SIGKILLed master: the keeper stops every group, and the port is free.
    let baton = serve_forking();
    let addr = baton.addr.to_string();
    let old = worker_trees(&baton);
    let mut baton = baton;
    baton.signal(Signal::SIGKILL);
    baton.wait_exit(Duration::from_secs(5));
    assert_all_gone(&old, "SIGKILL of the master");
    let again = Baton::serve(&["--workers", "1", "--listen", &addr]);
    assert_eq!(again.addr.to_string(), addr, "the port was free at once");
}

/// Serves `ok` one connection at a time on `s` (a single-threaded select()
/// server); on SIGTERM it finishes the request in hand and exits.
pub const SERVE_UNTIL_TERM: &str = r#"
import select, signal, sys
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
def serve(s):
    while not stop:
        try:
            ready, _, _ = select.select([s], [], [], 0.1)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            c, _ = s.accept()
        except BlockingIOError:
            continue
        c.setblocking(True)
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        c.close()
    sys.exit(0)
"#;

/// Readiness shapes of real servers, as small stand-ins (no READY=1 from
/// any of them: the process tree alone must tell).
#[test]
fn readiness_is_seen_in_the_whole_process_tree_and_on_the_real_listener() {
    // gunicorn: the parent waits for its child and never touches the
    // socket; the child serves it.
    let parent_waits = format!(
        "import os, socket\ns = socket.socket(fileno=3)\nif os.fork():\n    os.wait()\nelse:\n{}\n    serve(s)\n",
        SERVE_UNTIL_TERM
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // uvicorn --fd 3: serves on a duplicate of descriptor 3.
    let duplicate = format!(
        "import os, socket\n{SERVE_UNTIL_TERM}\ns = socket.socket(fileno=os.dup(3))\nos.close(3)\nserve(s)\n"
    );
    // A parent that sleeps in select() on something else for 2 s before it
    // serves (hypercorn's parent, puma's cluster master): not ready early.
    let waits_elsewhere = format!(
        "import os, select, socket\n{SERVE_UNTIL_TERM}\nr, w = os.pipe()\nselect.select([r], [], [], 2)\nserve(socket.socket(fileno=3))\n"
    );
    for (shape, program, at_least) in [
        ("a parent that does not poll", &parent_waits, Duration::ZERO),
        ("a duplicated listener", &duplicate, Duration::ZERO),
        (
            "select() on something else",
            &waits_elsewhere,
            Duration::from_millis(1900),
        ),
    ] {
        eprintln!("readiness shape: {shape}");
        let baton = Baton::serve(&["--workers", "1", "--", "python3", "-c", program]);
        let started = baton.wait_event(Event::WorkerStarted, Duration::from_secs(1));
        let ready = baton.wait_event(Event::WorkerReady, Duration::from_secs(1));
        let at = |line: &Logged| -> f64 {
            let stamp = line.field("timestamp").unwrap();
            let clock = stamp.rsplit_once('T').unwrap().1.trim_end_matches('Z');
            clock
                .split(':')
                .map(|part| part.parse::<f64>().unwrap())
                .fold(0.0, |total, part| total * 60.0 + part)
        };
        let took = Duration::from_secs_f64((at(&ready) - at(&started)).max(0.0));
        assert!(
            took >= at_least,
            "{shape}: ready after {took:?}, before it served"
        );
        let mut answer = String::new();
        let mut stream = std::net::TcpStream::connect(baton.addr).unwrap();
        use std::io::{Read, Write};
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{shape}: {answer}");
    }
}

#[test]
fn a_single_threaded_select_worker_reloads_under_load_without_failures() {
    let _heavy = heavy();
    let program = format!("import socket\n{SERVE_UNTIL_TERM}\nserve(socket.socket(fileno=3))\n");
    let baton = Baton::serve(&["--workers", "2", "--", "python3", "-c", &program]);
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        vec![ClientMode::NewConnection; 16],
        Duration::from_secs(9),
    ));
    let report = load.finish_after_reloads(&baton, 3, Duration::from_secs(2));
    eprintln!("single-threaded select() workers across 3 reloads: {report}");
    assert_eq!(baton.count_event(Event::ReloadFailed), 0);
    assert_no_failures(&report);
    assert!(report.ok > 500, "{report}");
}

/// A plain Node.js `http` server, as users write one, with the shipped
/// drain module and nothing else baton-specific but `listen({ fd: 3 })`.
fn node_with_drain_module() -> String {
    format!(
        "const http = require('http');\n\
         const drain = require({:?});\n\
         const server = http.createServer((req, res) => {{\n\
           req.resume();\n\
           req.on('end', () => res.end(`Process handled by pid: ${{process.pid}}`));\n\
         }});\n\
         server.listen({{ fd: 3 }});\n\
         drain(server, {{ graceMs: 5000 }});\n",
        example("node/baton-drain.js")
    )
}

#[test]
fn node_http_with_the_drain_module_loses_nothing_through_reloads() {
    let _heavy = heavy();
    let program = node_with_drain_module();
    let baton = serve_node_reloaded_under_load(&["-e", &program]);
    let mut clients = vec![
        ClientMode::KeepAlive {
            min_idle: Duration::from_millis(500),
            max_idle: Duration::from_secs(3),
        };
        32
    ];
    clients.extend(mixed_clients(16, 16, 0));
    let load = BackgroundLoad::start(LoadPlan::new(baton.addr, clients, Duration::from_secs(14)));
    let report = load.finish_after_reloads(&baton, 4, Duration::from_secs(3));
    eprintln!("node http with baton-drain.js, 4 reloads: {report}");
    assert_no_failures(&report);
    assert!(report.ok > 1000, "{report}");
}

/// `--ready fd:N`, s6's notification-fd: a program listening at once but
/// writing its newline on descriptor 5 only after 800 ms is ready only then;
/// one that closes 5 without writing fails its start with that reason.
#[test]
fn a_command_is_ready_when_it_writes_a_newline_on_its_readiness_descriptor() {
    let started = Instant::now();
    let baton = Baton::serve(&[
        "--workers",
        "1",
        "--ready",
        "fd:5",
        "--",
        "python3",
        "-c",
        &format!(
            "{SERVE_UNTIL_TERM}import os, socket, threading, time\ns = socket.socket(fileno=3)\nt = threading.Thread(target=serve, args=(s,))\nt.start()\ntime.sleep(0.8)\nos.write(5, b'ready\\n')\nos.close(5)\nt.join()\n"
        ),
    ]);
    let ready_after = started.elapsed();
    assert!(ready_after >= Duration::from_millis(800), "{ready_after:?}");

    assert_first_start_fails(
        &[
            "--workers",
            "1",
            "--ready",
            "fd:5",
            "--",
            "python3",
            "-c",
            "import os, time\nos.close(5)\ntime.sleep(30)\n",
        ],
        &["closed its readiness descriptor 5 without writing a newline"],
    );
    assert_first_start_fails(
        &["--ready", "fd:3", "--", "sleep", "30"],
        &["--ready fd:3 is where a listener goes"],
    );
    drop(baton);
}
