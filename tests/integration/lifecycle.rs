//! Start, stop, reload bookkeeping: exit codes, no process left behind, no
//! descriptor leaked.

use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::*;

#[test]
fn sigterm_drains_every_worker_and_exits_zero() {
    let mut baton = Baton::serve(&["--workers", "2"]);
    let workers = baton.wait_workers(Duration::from_secs(5), |w| w.len() == 2);
    baton.signal(Signal::SIGTERM);
    let status = baton.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert_eq!(baton.count_event(Event::WorkerDrained), 2);
    // Reaped by the master itself: not even a zombie is left.
    for pid in workers {
        assert!(
            stat(pid).is_none(),
            "worker {pid} is still there: {:?}",
            stat(pid)
        );
    }
}

#[test]
fn sigint_drains_like_sigterm() {
    let mut baton = Baton::serve(&["--workers", "1"]);
    baton.signal(Signal::SIGINT);
    assert_eq!(baton.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(baton.count_event(Event::WorkerDrained), 1);
}

#[test]
fn sigquit_stops_at_once() {
    let mut baton = Baton::serve(&["--workers", "2", "--drain-grace", "30s"]);
    let workers = baton.workers();
    baton.signal(Signal::SIGQUIT);
    assert_eq!(baton.wait_exit(Duration::from_secs(2)).code(), Some(0));
    assert!(workers.iter().all(|&pid| stat(pid).is_none()));
}

#[test]
fn workers_die_with_a_killed_master() {
    let baton = Baton::serve(&["--workers", "2"]);
    let workers = baton.wait_workers(Duration::from_secs(5), |w| w.len() == 2);
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let private_dir = base.join(format!("baton-{}", baton.pid()));
    assert!(private_dir.is_dir(), "{}", private_dir.display());
    baton.signal(Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(1), || workers
            .iter()
            .all(|&pid| is_dead(pid))),
        "workers outlived their master: {:?}",
        workers.iter().map(|&pid| stat(pid)).collect::<Vec<_>>()
    );
    // Nobody keeps the port: it now refuses.
    assert!(wait_until(Duration::from_secs(1), || TcpStream::connect(
        baton.addr
    )
    .is_err()));
    // Nor is the master's private directory left behind.
    assert!(
        wait_until(Duration::from_secs(5), || !private_dir.exists()),
        "{} outlived its master",
        private_dir.display()
    );
}

#[test]
fn twenty_reloads_leak_no_descriptor_and_no_process() {
    let baton = Baton::serve(&["--workers", "2", "--drain-grace", "50ms"]);
    baton.wait_workers(Duration::from_secs(5), |w| w.len() == 2);
    let fds = baton.fd_count();
    for _ in 0..20 {
        baton.reload();
    }
    baton.wait_event_nth(Event::WorkerDrained, 40, Duration::from_secs(10));
    baton.wait_workers(Duration::from_secs(5), |w| w.len() == 2);
    assert!(
        wait_until(Duration::from_secs(5), || baton.fd_count() == fds),
        "the master had {fds} descriptors before 20 reloads and {} after",
        baton.fd_count()
    );
    assert!(
        children(baton.pid()).iter().all(|&(_, state)| state != 'Z'),
        "no zombie"
    );
}

#[test]
fn reloads_asked_for_during_a_reload_are_coalesced() {
    let baton = Baton::serve(&["--workers", "2"]);
    for _ in 0..5 {
        baton.signal(Signal::SIGHUP);
    }
    baton.wait_event(Event::ReloadComplete, Duration::from_secs(10));
    // However many SIGHUPs arrived during the first reload, one more follows.
    let settled = wait_until(Duration::from_secs(10), || {
        let started = baton.count_event(Event::ReloadStarted);
        started == baton.count_event(Event::ReloadComplete) && started >= 1
    });
    assert!(settled);
    assert!(
        baton.count_event(Event::ReloadStarted) <= 2,
        "reloads were not coalesced"
    );
    // Old generations drain away, leaving the configured count.
    baton.wait_workers(Duration::from_secs(10), |w| w.len() == 2);
}

#[test]
fn workers_inherit_only_their_handoff_socket() {
    // The master itself inherits a stray descriptor without close-on-exec,
    // as happens under careless parents; its workers must not get it.
    let stray = std::fs::File::open("/dev/zero").unwrap();
    let baton = Baton::spawn_with_fd(&stray, 40, &["--workers", "2"]);
    baton.wait_event(Event::AllWorkersReady, Duration::from_secs(20));
    assert!(std::fs::read_link(format!("/proc/{}/fd/40", baton.pid())).is_ok());
    for pid in baton.workers() {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                )
            })
            .collect();
        assert!(
            !fds.iter().any(|fd| fd.contains("/dev/zero")),
            "worker {pid} inherited the master's stray descriptor: {fds:#?}"
        );
        let handoff = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
        assert!(handoff.to_string_lossy().starts_with("socket:"), "{fds:#?}");
    }
}
