//! The master as a reaper: a process a worker leaves behind (a daemon that
//! double-forked out of the worker's process group) becomes baton's child,
//! not init's, and is reaped when it exits, both as a child subreaper and
//! as PID 1 of a container (a new PID namespace).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::*;

/// `--workers 1` and a COMMAND worker (the Python example) whose shell
/// first leaves a daemon behind: `setsid sh` in a subshell that exits at
/// once, so that the daemon is orphaned and out of the worker's process
/// group. The daemon exits once `flag` exists.
fn leaves_a_daemon_behind(flag: &Path) -> Vec<String> {
    vec![
        "--workers".to_owned(),
        "1".to_owned(),
        "--".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        format!(
            "(setsid sh -c 'while [ ! -e {} ]; do sleep 0.05; done' &); exec python3 {}",
            flag.display(),
            example("python/server.py")
        ),
    ]
}

/// The daemon (its command line names `flag`) among `parent`'s children.
fn daemon_under(parent: u32, flag: &Path) -> Option<u32> {
    let flag = flag.display().to_string();
    children(parent)
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&flag))
        })
}

/// Waits until the daemon is `parent`'s child, tells it to exit, and checks
/// that it is reaped (no zombie left).
fn daemon_is_adopted_and_reaped(baton: &Baton, parent: u32, flag: &Path) {
    let mut daemon = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            daemon = daemon_under(parent, flag);
            daemon.is_some()
        }),
        "the daemon is not baton's child: {:?}",
        children(parent)
    );
    let daemon = daemon.unwrap();
    std::fs::write(flag, "").unwrap();
    baton.wait_log("reaped an orphaned process", Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(5), || daemon_under(parent, flag)
            .is_none()),
        "the daemon {daemon} was not reaped: {:?}",
        children(parent)
    );
    assert!(children(parent).iter().all(|(_, state)| *state != 'Z'));
}

#[test]
fn a_daemon_left_by_a_worker_becomes_batons_child_and_is_reaped() {
    let dir = temp_dir("reaper");
    let flag = dir.path().join("exit");
    let args = leaves_a_daemon_behind(&flag);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let baton = Baton::serve(&args);
    // Orphaned, it went to baton (a child subreaper), not to init.
    daemon_is_adopted_and_reaped(&baton, baton.pid(), &flag);
    // The worker itself is still watched, not taken for an orphan.
    assert_eq!(baton.status()["master"]["workers_ready"], 1);
}

#[test]
fn as_pid_1_of_a_container_baton_reaps_orphans_and_drains_on_sigterm() {
    let dir = temp_dir("reaper-pid1");
    let flag = dir.path().join("exit");
    // PID 1 of a new PID namespace with its own /proc; killed with it if
    // the test dies.
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(baton_bin());
    let args = leaves_a_daemon_behind(&flag);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut baton = Baton::serve_command(unshare, &args);
    // baton, seen from outside the namespace: unshare's only child.
    let master = baton.workers()[0];
    let status = baton.status();
    assert_eq!(status["master"]["pid"], 1, "PID 1 inside: {status}");
    daemon_is_adopted_and_reaped(&baton, master, &flag);

    // A container runtime's SIGTERM: drain, then exit 0 (unshare exits
    // with its child's status).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(master as i32), Signal::SIGTERM).unwrap();
    assert_eq!(baton.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert!(baton.count_event(Event::ShuttingDown) > 0);
}
