//! `baton upgrade`: the master replaces its own program in the same pid,
//! keeping its sockets and workers, under load; a new program that fails
//! brings the previous one back.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::load::LoadPlan;

use crate::support::*;

/// `baton upgrade ARGS --control …` against `baton`: exit code and all it
/// printed.
fn upgrade(baton: &Baton, args: &[&str]) -> (i32, String) {
    let mut full = vec!["upgrade"];
    full.extend(args);
    let output = baton.control_client(&full);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

/// The inode of the program the process `pid` runs.
fn running_inode(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .expect("the master's program")
        .ino()
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("the program file").ino()
}

/// Workers of the master that are zombies (exited, not reaped).
fn zombies(baton: &Baton) -> Vec<u32> {
    children(baton.pid())
        .into_iter()
        .filter(|(_, state)| *state == 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn an_upgrade_under_load_keeps_the_pid_runs_the_new_file_and_fails_nothing() {
    let _heavy = heavy();
    let (_dir, program) = private_copy("upgrade");
    let baton = Baton::serve_from(&program, &["--workers", "2", "--probation", "0s"]);
    let before = baton.workers();
    let old_program = inode(&program);
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        mixed_clients(16, 16, 4),
        slower(Duration::from_secs(6)),
    ));
    std::thread::sleep(Duration::from_secs(1));
    // A new release of baton, renamed over the file the master runs.
    replace_file(&program, &std::fs::read(baton_bin()).unwrap(), true);
    assert_ne!(inode(&program), old_program);

    let (code, said) = upgrade(&baton, &["--wait"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("ok: baton "), "{said}");
    assert!(
        said.contains("took over in") && said.contains("generation 2 is in"),
        "{said}"
    );
    assert!(!is_dead(baton.pid()), "same pid, still running");
    assert_eq!(
        running_inode(baton.pid()),
        inode(&program),
        "runs the new file"
    );
    let after = baton.wait_workers(Duration::from_secs(10), |w| {
        w.len() == 2 && w.iter().all(|pid| !before.contains(pid))
    });
    assert_eq!(after.len(), 2);
    let report = load.finish();
    assert_no_failures(&report);
    assert!(report.ok > 0);
    assert!(baton.count_event(Event::Upgraded) > 0);
    assert_eq!(baton.status()["master"]["counters"]["upgrades_ok"], 1);
}

#[test]
fn a_new_program_that_fails_is_refused_or_replaced_by_the_previous_one() {
    let _heavy = heavy();
    let (_dir, program) = private_copy("upgrade-fail");
    let baton = Baton::serve_from(&program, &["--workers", "2"]);
    let workers = baton.workers();
    let original = running_inode(baton.pid());
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        mixed_clients(8, 8, 2),
        slower(Duration::from_secs(14)),
    ));
    let unchanged = |said: &str| {
        assert!(!is_dead(baton.pid()), "{said}");
        assert_eq!(running_inode(baton.pid()), original, "{said}");
        assert_eq!(baton.workers(), workers, "the same workers: {said}");
    };

    // A program that is not baton at all fails its check: refused.
    let good = std::fs::read(&program).unwrap();
    replace_file(&program, b"#!/bin/sh\nexit 3\n", true);
    let (code, said) = upgrade(&baton, &["--wait"]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("upgrade refused") && said.contains("failed its check"),
        "{said}"
    );
    unchanged(&said);
    replace_file(&program, &good, true);

    // A program that passes its check, then crashes halfway through taking
    // over, finds the state unusable, or hangs: the previous one comes back
    // in the same pid.
    for (fault, reason) in [
        ("crash-halfway", "crashed while taking over"),
        ("refuse", "found the state unusable"),
        ("hang", "did not take over within"),
    ] {
        let (code, said) = upgrade(&baton, &["--wait", "--fault", fault]);
        assert_eq!(code, 1, "{fault}: {said}");
        assert!(said.contains(reason), "{fault}: {said}");
        assert!(
            said.contains("serving again, with the same workers"),
            "{said}"
        );
        unchanged(&said);
    }
    assert_eq!(baton.count_event(Event::UpgradeFailed), 4);
    let counters = &baton.status()["master"]["counters"];
    assert_eq!(counters["upgrades_refused"], 1, "{counters}");
    assert_eq!(counters["upgrades_failed"], 3, "{counters}");
    let report = load.finish();
    assert_no_failures(&report);
    // Still fully in control afterwards.
    let (code, said) = baton.reload_wait();
    assert_eq!(code, 0, "{said}");
}

#[test]
fn the_workers_survive_the_exec_and_keep_their_connections() {
    let baton = Baton::serve(&["--workers", "2"]);
    let workers = baton.workers();
    // A keep-alive connection to one of them, open across the exec.
    let mut held = std::net::TcpStream::connect(baton.addr).unwrap();
    let first = exchange(&mut held, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let (code, said) = upgrade(&baton, &["--wait", "--keep-workers"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("the workers were kept"), "{said}");
    // No worker received its parent-death signal: every one is alive, is
    // still the master's child, and serves.
    assert_eq!(baton.workers(), workers);
    let again = exchange(&mut held, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    // The new image watches them: their reports arrive, a crash is replaced.
    let status = baton.status();
    assert_eq!(status["master"]["workers_ready"], 2, "{status}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(workers[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    baton.wait_workers(Duration::from_secs(10), |w| {
        w.len() == 2 && !w.contains(&workers[0])
    });
    assert!(zombies(&baton).is_empty());
}

#[test]
fn twenty_upgrades_under_load_leave_descriptors_children_and_memory_flat() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "2", "--probation", "0s"]);
    let load = BackgroundLoad::start(LoadPlan::new(
        baton.addr,
        mixed_clients(8, 8, 2),
        slower(Duration::from_secs(8)),
    ));
    // What the master holds once an upgrade's drained workers are gone
    // (answers being written and workers exiting hold a few more for a
    // moment).
    let mut settled_fds = None;
    let mut rss = Vec::new();
    for n in 1..=20 {
        let (code, said) = upgrade(&baton, &["--wait"]);
        assert_eq!(code, 0, "upgrade {n}: {said}");
        // Once the drained workers are gone, what the master holds.
        baton.wait_workers(Duration::from_secs(20), |w| w.len() == 2);
        assert!(
            wait_until(Duration::from_secs(10), || zombies(&baton).is_empty()),
            "zombies after upgrade {n}: {:?}",
            zombies(&baton)
        );
        let baseline = *settled_fds.get_or_insert_with(|| baton.fd_count());
        assert!(
            wait_until(Duration::from_secs(10), || baton.fd_count() <= baseline),
            "after upgrade {n} the master holds {} descriptors, {baseline} after the first",
            baton.fd_count()
        );
        rss.push(baton::procfs::rss_bytes(baton.pid()).unwrap());
    }
    let report = load.finish();
    assert_no_failures(&report);
    let grew = rss[19].saturating_sub(rss[1]);
    assert!(
        grew < 4 << 20,
        "the master's memory grew by {grew} bytes: {rss:?}"
    );
    assert_eq!(baton.status()["master"]["generation"], 21);
}

/// A NOTIFY_SOCKET that records each message with its sender's pid, as
/// systemd checks `NotifyAccess=main` against MAINPID.
struct Notify {
    _dir: TempDir,
    path: String,
    messages: Arc<Mutex<Vec<(Instant, u32, String)>>>,
}

impl Notify {
    fn new() -> Self {
        use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
        use std::os::fd::AsRawFd;
        let dir = temp_dir("notify-upgrade");
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || loop {
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let Ok(msg) = recvmsg::<()>(
                socket.as_fd().as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            ) else {
                return;
            };
            let mut pid = 0;
            for cmsg in msg.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmCredentials(creds) = cmsg {
                    pid = creds.pid() as u32;
                }
            }
            let len = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            sink.lock().unwrap().push((Instant::now(), pid, text));
        });
        Notify {
            path: path.to_str().unwrap().to_owned(),
            _dir: dir,
            messages,
        }
    }

    fn all(&self) -> Vec<(Instant, u32, String)> {
        self.messages.lock().unwrap().clone()
    }

    fn has(&self, word: &str) -> usize {
        self.all()
            .iter()
            .filter(|(_, _, m)| m.lines().any(|l| l == word))
            .count()
    }
}

#[test]
fn systemd_hears_reloading_then_ready_from_the_same_pid_and_the_watchdog_goes_on() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let notify = Notify::new();
    let baton = Baton::spawn_activated(
        &[("http", listener.as_fd())],
        &[
            ("NOTIFY_SOCKET", &notify.path),
            ("WATCHDOG_USEC", "2000000"),
        ],
        &["--workers", "2", "--probation", "0s"],
    );
    baton.wait_event(Event::AllWorkersReady, Duration::from_secs(20));
    assert!(wait_until(Duration::from_secs(10), || notify
        .has("READY=1")
        == 1));
    let upgrade_at = Instant::now();
    let (code, said) = upgrade(&baton, &["--wait"]);
    assert_eq!(code, 0, "{said}");
    assert!(wait_until(Duration::from_secs(10), || notify
        .has("READY=1")
        == 2));
    // Two watchdog intervals (1 s each) after the upgrade.
    std::thread::sleep(Duration::from_millis(2500));

    let messages = notify.all();
    let master = baton.pid();
    assert!(
        messages.iter().all(|(_, pid, _)| *pid == master),
        "every message from MAINPID {master}: {messages:#?}"
    );
    let position = |word: &str, n: usize| {
        messages
            .iter()
            .enumerate()
            .filter(|(_, (_, _, m))| m.lines().any(|l| l == word))
            .nth(n)
            .map(|(i, _)| i)
    };
    let reloading = position("RELOADING=1", 0).expect("RELOADING=1 before the exec");
    let ready = position("READY=1", 1).expect("READY=1 from the new program");
    assert!(reloading < ready, "{messages:#?}");
    assert!(messages[reloading].2.contains("MONOTONIC_USEC="));
    // The watchdog never went quiet for its whole timeout (2 s).
    let pings: Vec<Instant> = messages
        .iter()
        .filter(|(at, _, m)| *at >= upgrade_at && m.contains("WATCHDOG=1"))
        .map(|(at, _, _)| *at)
        .collect();
    assert!(pings.len() >= 2, "{messages:#?}");
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_secs(2),
        "the watchdog went quiet for {longest:?}"
    );
}
