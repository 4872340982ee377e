//! Running under systemd: socket activation, the sd_notify protocol, a full
//! restart on a socket systemd holds, every kind of listener, and the unit
//! files. The tests play systemd's part themselves (systemd is not PID 1
//! here), except for `systemd-socket-activate` and `systemd-analyze`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::*;
use crate::support::{temp_dir, TempDir};

fn get(mut stream: impl Read + Write) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serves_on_the_socket_systemd_socket_activate_passes() {
    let port = free_port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args([
        "-l",
        &format!("127.0.0.1:{port}"),
        "--fdname=http",
        "-E",
        "RUST_LOG=info",
        "-E",
        "BATON_LOG_FORMAT=json",
    ])
    .arg(baton_bin())
    .args(["serve", "--workers", "2", "--control"])
    .arg(private_control_path());
    let baton = Baton::launch(cmd);
    baton.wait_log("Listening on", Duration::from_secs(10));
    // The first connection makes systemd-socket-activate exec baton; it waits
    // in the queue until a worker is ready.
    let response = get(TcpStream::connect(("127.0.0.1", port)).unwrap());
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let line = baton.wait_event(Event::Listening, Duration::from_secs(10));
    assert!(
        line.field("name").as_deref() == Some("http")
            && line.field("inherited").as_deref() == Some("true"),
        "{line}"
    );
    assert!(!baton.logs_contain("bind"), "nothing is bound");
    assert!(
        get(TcpStream::connect(("127.0.0.1", port)).unwrap()).contains("Process handled by pid")
    );
}

/// A NOTIFY_SOCKET the test reads continuously, as systemd does.
struct NotifySocket {
    _dir: TempDir,
    path: String,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = temp_dir("notify");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        NotifySocket {
            path: path.to_str().unwrap().to_owned(),
            _dir: dir,
            messages,
        }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits for the `n`th message that has every one of `parts`.
    fn wait_for(&self, parts: &[&str], n: usize) -> (Instant, String) {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(10), || {
            found = self
                .all()
                .into_iter()
                .filter(|(_, m)| parts.iter().all(|p| m.lines().any(|l| l.starts_with(p))))
                .nth(n - 1);
            found.is_some()
        });
        assert!(
            ok,
            "no message with {parts:?} (#{n}); got {:#?}",
            self.all()
        );
        found.unwrap()
    }
}

#[test]
fn speaks_the_notify_reload_protocol_and_the_watchdog() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let notify = NotifySocket::new();
    let mut baton = Baton::spawn_activated(
        &[("http", listener.as_fd())],
        &[("NOTIFY_SOCKET", &notify.path), ("WATCHDOG_USEC", "400000")],
        &["--workers", "2"],
    );
    baton.wait_event(Event::AllWorkersReady, Duration::from_secs(20));
    let (_, ready) = notify.wait_for(&["READY=1", "STATUS="], 1);
    assert!(ready.contains("2/2 workers ready"), "{ready}");

    // Serves on the inherited socket.
    let addr = listener.local_addr().unwrap();
    assert!(get(TcpStream::connect(addr).unwrap()).starts_with("HTTP/1.1 200"));

    baton.signal(Signal::SIGHUP);
    let (reloading_at, reloading) = notify.wait_for(&["RELOADING=1", "MONOTONIC_USEC="], 1);
    let (ready_at, _) = notify.wait_for(&["READY=1"], 2);
    assert!(
        ready_at > reloading_at,
        "READY=1 follows RELOADING=1: {reloading}"
    );

    // At least two WATCHDOG=1 in any 1.5 s.
    let window_start = Instant::now();
    sleep(Duration::from_millis(1500));
    let pings = notify
        .all()
        .iter()
        .filter(|(at, m)| *at >= window_start && m.contains("WATCHDOG=1"))
        .count();
    assert!(pings >= 2, "{pings} watchdog pings in 1.5 s");

    baton.signal(Signal::SIGTERM);
    notify.wait_for(&["STOPPING=1"], 1);
    assert_eq!(baton.wait_exit(Duration::from_secs(10)).code(), Some(0));
    // The workers never saw the notify socket or the listen variables.
    assert!(!baton.logs_contain("NOTIFY_SOCKET"));
}

#[test]
fn a_full_restart_on_a_held_socket_fails_nothing() {
    let _heavy = heavy();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let start = || {
        let baton = Baton::spawn_activated(&[("http", listener.as_fd())], &[], &["--workers", "2"]);
        baton.wait_event(Event::AllWorkersReady, Duration::from_secs(20));
        baton
    };
    let mut old = start();
    let load = BackgroundLoad::start(LoadPlan::new(
        addr,
        mixed_clients(16, 16, 4),
        Duration::from_secs(8),
    ));

    sleep(Duration::from_secs(2));
    // What `systemctl restart` does: stop the old master, start a new one on
    // the socket systemd holds.
    old.signal(Signal::SIGTERM);
    let new = start();
    assert_eq!(old.wait_exit(Duration::from_secs(10)).code(), Some(0));
    sleep(Duration::from_secs(2));
    let mut newer = start();
    new.signal(Signal::SIGTERM);

    let report = load.finish();
    eprintln!("restarts on a held socket: {report}");
    assert_no_failures(&report);
    assert!(report.ok > 1000, "{report}");
    newer.signal(Signal::SIGTERM);
    assert_eq!(newer.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// What systemd's descriptor store holds: (FDNAME, descriptor).
type Stored = Arc<Mutex<Vec<(String, std::os::fd::OwnedFd)>>>;

/// A NOTIFY_SOCKET that keeps what baton hands to the descriptor store, as
/// systemd does with `FileDescriptorStoreMax=`.
fn fd_store() -> (TempDir, String, Stored) {
    let dir = temp_dir("fdstore");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let store = Arc::new(Mutex::new(Vec::new()));
    let kept = store.clone();
    std::thread::spawn(move || loop {
        let mut buf = [0u8; 4096];
        // recv_with_fds does not block: wait for the next message first.
        let mut peek = [0u8; 1];
        let flags = nix::sys::socket::MsgFlags::MSG_PEEK;
        if nix::sys::socket::recv(socket.as_raw_fd(), &mut peek, flags).is_err() {
            return;
        }
        let Ok(message) = baton::fd::recv_with_fds(socket.as_fd(), &mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..message.len]).into_owned();
        if text.lines().any(|l| l == "FDSTORE=1") {
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_owned();
            for fd in message.fds {
                kept.lock().unwrap().push((name.clone(), fd));
            }
        }
    });
    let path = path.to_str().unwrap().to_owned();
    (dir, path, store)
}

/// `systemctl restart` of a service with no socket unit: stop the master
/// (SIGTERM, wait for it to exit), start it again, with the listeners it
/// stored with systemd passed back (`with_store`) or not. Returns what the
/// load saw.
fn restart_without_a_socket_unit(with_store: bool) -> baton::load::LoadReport {
    let (_dir, notify, store) = fd_store();
    let mut command = Command::new(baton_bin());
    command.env("NOTIFY_SOCKET", &notify);
    let mut old = Baton::serve_command(command, &["--workers", "2", "--listen", "127.0.0.1:0"]);
    // The new master is told the port the old one got.
    let listen = old.addr.to_string();
    let args = ["--workers", "2", "--listen", &listen];
    assert!(
        wait_until(Duration::from_secs(10), || !store
            .lock()
            .unwrap()
            .is_empty()),
        "nothing was stored"
    );
    assert_eq!(store.lock().unwrap()[0].0, "http");
    let load = BackgroundLoad::start(LoadPlan::new(
        old.addr,
        mixed_clients(16, 16, 4),
        Duration::from_secs(4),
    ));
    sleep(Duration::from_secs(1));
    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let new = if with_store {
        let stored = store.lock().unwrap();
        let fds: Vec<_> = stored
            .iter()
            .map(|(name, fd)| (name.as_str(), fd.as_fd()))
            .collect();
        // The same command line: its --listen is the socket passed back.
        Baton::spawn_activated(&fds, &[], &args)
    } else {
        // As systemd without FileDescriptorStoreMax=: nothing kept.
        store.lock().unwrap().clear();
        Baton::spawn(&baton_bin(), &args)
    };
    new.wait_event(Event::AllWorkersReady, Duration::from_secs(20));
    load.finish()
}

#[test]
fn a_restart_with_the_listeners_in_systemds_store_refuses_nothing() {
    let _heavy = heavy();
    let report = restart_without_a_socket_unit(true);
    eprintln!("restart with the descriptor store: {report}");
    assert_no_failures(&report);
    // Without the store the port is closed between the two masters.
    let report = restart_without_a_socket_unit(false);
    eprintln!("restart without it: {report}");
    assert!(!report.failures.is_empty(), "{report}");
}

#[test]
fn tcp4_tcp6_and_unix_listeners_at_once() {
    let dir = temp_dir("listeners");
    let socket = dir.path().join("app.sock");
    let listen_unix = format!("sock=unix:{}", socket.display());
    let ipv6 = TcpListener::bind("[::1]:0").is_ok();
    let mut args = vec![
        "--workers",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        &listen_unix,
        "--unix-mode",
        "600",
    ];
    if ipv6 {
        args.extend(["--listen", "v6=[::1]:0"]);
    } else {
        eprintln!("no IPv6 loopback here: checking IPv4 and Unix only");
    }
    let mut baton = Baton::serve(&args);
    assert!(get(TcpStream::connect(baton.addr).unwrap()).starts_with("HTTP/1.1 200"));
    assert!(get(UnixStream::connect(&socket).unwrap()).starts_with("HTTP/1.1 200"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    if ipv6 {
        let line = baton.wait_logged("the v6 listener", 1, Duration::from_secs(1), |l| {
            l.is(Event::Listening, "name", "v6")
        });
        let addr: std::net::SocketAddr = line.parsed("addr").unwrap();
        assert!(get(TcpStream::connect(addr).unwrap()).starts_with("HTTP/1.1 200"));
    }
    baton.signal(Signal::SIGTERM);
    assert_eq!(baton.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        !socket.exists(),
        "the socket file baton created is removed on exit"
    );
}

#[test]
fn a_stale_unix_socket_is_replaced_and_a_live_one_is_in_use() {
    let dir = temp_dir("stale");
    let path = dir.path().join("app.sock");
    // A socket file left behind by a crashed server: nothing listens.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listen = format!("unix:{}", path.display());
    let baton = Baton::serve(&["--workers", "1", "--listen", &listen]);
    assert!(get(UnixStream::connect(&path).unwrap()).starts_with("HTTP/1.1 200"));
    // While it serves, a second baton on the same path is refused.
    let (code, stderr) = run_baton(&["serve", "--listen", &listen]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    drop(baton);
    // A path that is not a socket is never removed.
    let file = dir.path().join("data.txt");
    std::fs::write(&file, "keep me").unwrap();
    let (code, stderr) = run_baton(&["serve", "--listen", &format!("unix:{}", file.display())]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// Runs `baton serve` with socket activation variables and `fds`, expecting
/// a usage error that mentions `expected`.
fn assert_bad_activation(
    fds: &[(&str, std::os::fd::BorrowedFd<'_>)],
    listen_fds: Option<&str>,
    expected: &str,
) {
    let mut env = vec![];
    if let Some(count) = listen_fds {
        env.push(("LISTEN_FDS", count));
    }
    let mut baton = Baton::spawn_activated(fds, &env, &["--workers", "1"]);
    let status = baton.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    assert!(
        baton
            .try_wait_log(expected, Duration::from_secs(2))
            .is_some(),
        "the error should mention {expected:?}"
    );
}

#[test]
fn bad_socket_activation_is_a_usage_error() {
    let file = std::fs::File::open("/dev/null").unwrap();
    assert_bad_activation(&[("http", file.as_fd())], None, "not a socket");
    let unbound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    assert_bad_activation(&[("http", unbound.as_fd())], None, "not listening");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    assert_bad_activation(&[("http", listener.as_fd())], Some("3"), "LISTEN_FDS");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_bad_activation(
        &[("http", udp.as_fd())],
        None,
        "not a TCP or Unix stream socket",
    );
}

#[test]
fn a_listen_flag_naming_an_inherited_socket_refers_to_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let same = format!("http={addr}");
    let baton = Baton::spawn_activated(
        &[("http", listener.as_fd())],
        &[],
        &[
            "--workers",
            "1",
            "--listen",
            &same,
            "--listen",
            "extra=127.0.0.1:0",
        ],
    );
    baton.wait_event(Event::AllWorkersReady, Duration::from_secs(20));
    assert_eq!(baton.count_event(Event::Listening), 2);
    let listening = |name: &str| {
        baton.wait_logged(name, 1, Duration::from_secs(1), |l| {
            l.is(Event::Listening, "name", name)
        })
    };
    assert_eq!(
        listening("http").field("inherited").as_deref(),
        Some("true")
    );
    assert_eq!(
        listening("extra").field("inherited").as_deref(),
        Some("false")
    );

    let other = "http=127.0.0.1:1".to_owned();
    let mut mismatched = Baton::spawn_activated(
        &[("http", listener.as_fd())],
        &[],
        &["--workers", "1", "--listen", &other],
    );
    assert_eq!(
        mismatched.wait_exit(Duration::from_secs(10)).code(),
        Some(2)
    );
    assert!(mismatched
        .try_wait_log("make them agree", Duration::from_secs(2))
        .is_some());
}

#[test]
fn systemd_analyze_accepts_the_type_notify_units() {
    let dir = temp_dir("units");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    std::fs::copy(root.join("baton.socket"), dir.path().join("baton.socket")).unwrap();
    let service = std::fs::read_to_string(root.join("legacy/baton.service"))
        .unwrap()
        .replace("/usr/local/bin/baton", baton_bin().to_str().unwrap());
    std::fs::write(dir.path().join("baton.service"), service).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("baton.socket"))
        .arg(dir.path().join("baton.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd) runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze complained: {stderr}"
    );
}

/// Both units work as installed: the control socket sits in the unit's own
/// runtime directory (so `baton status --control /run/baton/control.sock`
/// reaches it from the host, whatever PrivateTmp= hides), and the
/// open-file limit is raised for thousands of connections.
#[test]
fn the_units_put_the_control_socket_where_the_host_reaches_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for unit in ["baton.service", "legacy/baton.service"] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for wanted in ["RuntimeDirectory=baton", "RuntimeDirectoryMode=0700"] {
            assert!(lines.contains(&wanted), "{unit} lacks {wanted}");
        }
        assert!(
            lines.iter().any(|l| l.starts_with("LimitNOFILE=")),
            "{unit} lacks LimitNOFILE="
        );
        let exec = lines
            .iter()
            .find(|l| l.starts_with("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has no ExecStart="));
        assert!(
            exec.contains("--control /run/baton/"),
            "{unit}: the control socket must be in the runtime directory: {exec}"
        );
    }
}
