//! The master as a reaper: a process a worker leaves behind (a daemon that
//! double-forked out of the worker's process group) becomes baton's child,
//! not init's, and is reaped when it exits, both as a child subreaper and
//! as PID 1 of a container (a new PID namespace).

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::*;

/// A COMMAND worker (the Python example) whose shell first leaves a daemon
/// behind: `setsid sleep SECS`, in a subshell that exits at once, so that
/// the sleep is orphaned and out of the worker's process group.
fn leaves_a_daemon_behind(secs: &str) -> Vec<String> {
    vec![
        "--".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        format!(
            "(setsid sleep {secs} &); exec python3 {}",
            example("python/server.py")
        ),
    ]
}

/// `sleep` processes whose parent is `parent`, with their state letter.
fn sleeps_under(parent: u32) -> Vec<(u32, char)> {
    children(parent)
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .collect()
}

#[test]
fn a_daemon_left_by_a_worker_becomes_batons_child_and_is_reaped() {
    let mut args = vec!["--workers".to_owned(), "1".to_owned()];
    args.extend(leaves_a_daemon_behind("2"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let baton = Baton::serve(&args);
    // Orphaned, it went to baton (a child subreaper), not to init.
    assert!(
        wait_until(Duration::from_secs(10), || !sleeps_under(baton.pid())
            .is_empty()),
        "the daemon is not baton's child: {:?}",
        children(baton.pid())
    );
    let daemon = sleeps_under(baton.pid())[0].0;
    // When it exits it is reaped: no zombie is left.
    baton.wait_log("reaped an orphaned process", Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(5), || is_dead(daemon)),
        "the daemon {daemon} was not reaped: {:?}",
        children(baton.pid())
    );
    assert!(children(baton.pid()).iter().all(|(_, state)| *state != 'Z'));
    // The worker itself is still watched, not taken for an orphan.
    assert_eq!(baton.status()["master"]["workers_ready"], 1);
}

#[test]
fn as_pid_1_of_a_container_baton_reaps_orphans_and_drains_on_sigterm() {
    // PID 1 of a new PID namespace with its own /proc; killed with it if
    // the test dies.
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(baton_bin());
    let mut args = vec!["--workers".to_owned(), "1".to_owned()];
    args.extend(leaves_a_daemon_behind("1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut baton = Baton::serve_command(unshare, &args);
    // baton, seen from outside the namespace: unshare's only child.
    let master = baton.workers()[0];
    let status = baton.status();
    assert_eq!(status["master"]["pid"], 1, "PID 1 inside: {status}");

    baton.wait_log("reaped an orphaned process", Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(5), || sleeps_under(master).is_empty()),
        "{:?}",
        children(master)
    );
    assert!(children(master).iter().all(|(_, state)| *state != 'Z'));

    // A container runtime's SIGTERM: drain, then exit 0 (unshare exits
    // with its child's status).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(master as i32), Signal::SIGTERM).unwrap();
    assert_eq!(baton.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert!(baton.logs_contain(&Event::ShuttingDown.field()));
}
