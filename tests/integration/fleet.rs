//! A fleet: a real HAProxy in front of three baton hosts (each a master on
//! its own loopback address, 127.0.0.2–4), load through HAProxy, and
//! `examples/fleet/deploy` rolling a restart over the hosts. With the drain
//! step nothing fails end to end; without it the same deploy loses
//! requests.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// One baton host.
struct Host {
    server: &'static str,
    control: PathBuf,
}

/// HAProxy and three hosts behind it; every process is killed when dropped,
/// masters the deploy script restarted included.
struct Fleet {
    dir: TempDir,
    hosts: Vec<Host>,
    /// The masters the harness started (stopped by a restart, then no
    /// longer the hosts' masters).
    _started: Vec<Baton>,
    _haproxy: KillOnDrop,
    /// HAProxy's frontend.
    front: String,
    /// HAProxy's TCP stats socket.
    stats: String,
}

impl Fleet {
    fn start() -> Fleet {
        let dir = temp_dir("fleet");
        // Chosen up front, not port 0: a restart starts each master again
        // with the same command line, which must name the same ports.
        let port = free_port().to_string();
        let agent_port = free_port().to_string();
        let mut hosts = Vec::new();
        let mut started = Vec::new();
        let mut servers = String::new();
        for (server, ip) in [
            ("h1", "127.0.0.2"),
            ("h2", "127.0.0.3"),
            ("h3", "127.0.0.4"),
        ] {
            let listen = format!("{ip}:{port}");
            let agent = format!("{ip}:{agent_port}");
            let baton = Baton::serve(&[
                "--listen",
                &listen,
                "--agent",
                &agent,
                "--workers",
                "1",
                "--drain-grace",
                "500ms",
            ]);
            servers += &format!(
                "  server {server} {listen} check inter 200ms agent-check agent-port {agent_port} agent-inter 200ms\n"
            );
            hosts.push(Host {
                server,
                control: baton.control.clone().unwrap(),
            });
            started.push(baton);
        }
        let front = format!("127.0.0.1:{}", free_port());
        let stats = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  stats socket ipv4@{stats} level admin\n\
                 defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend fe\n  bind {front}\n  default_backend be\n\
                 backend be\n{servers}"
            ),
        )
        .unwrap();
        let haproxy = KillOnDrop(
            Command::new("haproxy")
                .args(["-db", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("haproxy (Debian package haproxy; .ci/run installs it)"),
        );
        let fleet = Fleet {
            dir,
            hosts,
            _started: started,
            _haproxy: haproxy,
            front,
            stats,
        };
        let up = wait_until(Duration::from_secs(15), || {
            fleet
                .hosts
                .iter()
                .all(|h| fleet.column(h.server, "status") == "UP")
        });
        assert!(
            up,
            "HAProxy did not see every host UP: {}",
            fleet.show_stat()
        );
        fleet
    }

    /// HAProxy's `show stat` CSV.
    fn show_stat(&self) -> String {
        let Ok(mut socket) = std::net::TcpStream::connect(&self.stats) else {
            return String::new();
        };
        socket.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        let _ = socket.read_to_string(&mut csv);
        csv
    }

    /// One column of server `server`'s row in backend `be` (its first
    /// word: a status reads `DRAIN (agent)`).
    fn column(&self, server: &str, name: &str) -> String {
        haproxy_column(&self.show_stat(), "be", server, name)
            .and_then(|value| value.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Responses each host gave through HAProxy so far.
    fn served(&self) -> Vec<(&'static str, u64)> {
        self.hosts
            .iter()
            .map(|h| {
                (
                    h.server,
                    self.column(h.server, "hrsp_2xx").parse().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Runs the deploy script over every host with `args`; what it printed.
    fn deploy(&self, args: &[&str]) -> String {
        let mut command = Command::new(example("fleet/deploy"));
        command
            .args(["--haproxy", &self.stats, "--action", "restart"])
            .args(args)
            .env("BATON", baton_bin())
            .stdin(Stdio::null());
        for host in &self.hosts {
            command.arg(format!("{}={}", host.server, host.control.display()));
        }
        let output = command.output().expect("run examples/fleet/deploy");
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "deploy failed: {printed}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        printed
    }

    /// `baton check --url` through HAProxy for `duration`, in the
    /// background.
    fn check(&self, duration: Duration) -> Check {
        let report = self.dir.path().join("check.json");
        let process = KillOnDrop(
            Command::new(baton_bin())
                .args(["check", "--url", &format!("http://{}/", self.front)])
                .arg("--duration")
                .arg(format!("{}ms", duration.as_millis()))
                .arg("--json")
                .arg(&report)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run baton check"),
        );
        Check { process, report }
    }
}

/// A `baton check` running in the background, and where its JSON report
/// lands.
struct Check {
    process: KillOnDrop,
    report: PathBuf,
}

impl Check {
    /// The report, once the check has finished.
    fn report(mut self) -> serde_json::Value {
        let finished = wait_until(Duration::from_secs(120), || {
            self.process
                .0
                .try_wait()
                .expect("wait for baton check")
                .is_some()
        });
        assert!(finished, "baton check did not finish");
        serde_json::from_slice(&std::fs::read(&self.report).expect("the check's JSON report"))
            .expect("the check's JSON")
    }
}

impl Drop for Fleet {
    /// Kills the masters the deploy script started (and their workers).
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for host in &self.hosts {
            let Ok(answer) =
                baton::control::request(&host.control, baton::control::Command::Status)
            else {
                continue;
            };
            let workers = children(answer.master_pid);
            let _ = kill(Pid::from_raw(answer.master_pid as i32), Signal::SIGKILL);
            for (pid, _) in workers {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

fn failed(report: &serde_json::Value) -> u64 {
    let failures = &report["failures"];
    ["refused", "reset", "timeout", "eof", "bad_status", "other"]
        .iter()
        .map(|kind| failures[kind].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_fleet_deploy_that_drains_each_host_first_loses_nothing_end_to_end() {
    let _heavy = heavy();
    let fleet = Fleet::start();
    let check = fleet.check(slower(Duration::from_secs(25)));
    // Twice over every host, one host at a time.
    let first = fleet.deploy(&[]);
    let second = fleet.deploy(&[]);
    let served = fleet.served();
    let report = check.report();
    eprintln!(
        "deploy 1:\n{first}deploy 2:\n{second}served through HAProxy from the start of the load to the end of the deploys: {served:?}; check: {} requests, {} failed",
        report["requests"],
        failed(&report)
    );
    // HAProxy's own stats showed each host in DRAIN before it changed.
    for deploy in [&first, &second] {
        assert_eq!(deploy.matches("out (DRAIN)").count(), 3, "{deploy}");
    }
    assert_eq!(failed(&report), 0, "{report:#}");
    assert!(report["requests"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        served.iter().all(|(_, n)| *n > 0),
        "every host served: {served:?}"
    );
}

#[test]
fn the_same_deploy_without_the_drain_step_loses_requests() {
    let _heavy = heavy();
    let fleet = Fleet::start();
    let check = fleet.check(slower(Duration::from_secs(15)));
    // Twice over every host, as the deploy with the drain step does: six
    // restarts under live traffic, each a chance to lose requests.
    let printed = fleet.deploy(&["--no-drain"]) + &fleet.deploy(&["--no-drain"]);
    let report = check.report();
    eprintln!(
        "deploy without drain:\n{printed}check: {} requests, {} failed: {}",
        report["requests"],
        failed(&report),
        report["failures"]
    );
    assert!(
        failed(&report) > 0,
        "a restart under live traffic lost nothing? {report:#}"
    );
}
