//! What operators reach for first: a configuration test that binds nothing,
//! logs that a typo in RUST_LOG cannot silence, JSON log lines.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::temp_dir;
use crate::support::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(baton_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run baton");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn the_config_test_lists_every_problem_and_binds_nothing() {
    let dir = temp_dir("config-test");
    // Held open: a config test that bound the port would fail.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let file = dir.path().join("baton.toml");
    let control = dir.path().join("baton.sock");
    let control = control.to_str().unwrap();
    // `-t` and `--test-config` alike.
    let test = |flag: &str, toml: String| {
        std::fs::write(&file, toml).unwrap();
        let file = file.to_str().unwrap();
        run(
            &["serve", flag, "--config", file, "--control", control],
            &[],
        )
    };
    let (code, stdout, stderr) = test(
        "-t",
        format!("listen = [\"127.0.0.1:{port}\"]\nworkers = 2\ndrain_timeout = \"45s\"\ncommand = [\"python3\", \"-c\", \"pass\"]\n"),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("the configuration is valid"), "{stdout}");

    let (code, stdout, stderr) = test(
        "--test-config",
        format!(
            "listen = [\"127.0.0.1:{port}\", \"nowhere:port\"]\nworkers = 2\ndrain_timeout = \"forever\"\nwrokers = 3\nuser = \"no-such-user-here\"\ncommand = [\"/no/such/program\"]\n"
        ),
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    for expected in [
        "5 problems",
        "drain_timeout",
        "unknown key \"wrokers\"",
        "nowhere:port",
        "no-such-user-here",
        "/no/such/program is not an executable file",
    ] {
        assert!(
            stderr.contains(expected),
            "should say {expected:?}:\n{stderr}"
        );
    }
    assert!(
        !std::path::Path::new(control).exists(),
        "it made a control socket"
    );
}

#[test]
fn a_typo_in_rust_log_is_reported_and_errors_still_show() {
    let dir = temp_dir("rust-log");
    let control = dir.path().join("baton.sock");
    let (code, _, stderr) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control",
            control.to_str().unwrap(),
            "--workers",
            "1",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
        &[("RUST_LOG", "warning")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("ignoring RUST_LOG=\"warning\""), "{stderr}");
    assert!(
        stderr.contains("exit code 3"),
        "the worker's reason is shown:\n{stderr}"
    );
}

#[test]
fn json_log_lines_parse_and_carry_the_stable_fields() {
    let dir = temp_dir("json-log");
    let control = dir.path().join("baton.sock");
    let log = dir.path().join("log");
    let mut baton = KillOnDrop(
        Command::new(baton_bin())
            .args([
                "serve",
                "--log-format",
                "json",
                "--listen",
                "127.0.0.1:0",
                "--control",
                control.to_str().unwrap(),
                "--workers",
                "1",
                "--drain-grace",
                "0s",
            ])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start baton"),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(slower(Duration::from_secs(10)), || read()
            .contains("\"all_workers_ready\"")),
        "{}",
        read()
    );
    let pid = baton.0.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_until(slower(Duration::from_secs(10)), || baton
        .0
        .try_wait()
        .unwrap()
        .is_some()));
    let lines: Vec<serde_json::Value> = read()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let event = |name: &str| {
        lines
            .iter()
            .find(|l| l["event"] == name)
            .unwrap_or_else(|| panic!("no {name} line in {lines:?}"))
    };
    assert_eq!(event("master_started")["pid"], pid);
    let started = event("worker_started");
    for field in ["pid", "slot", "generation", "message", "level", "timestamp"] {
        assert!(!started[field].is_null(), "{field} in {started}");
    }
    // The worker's own lines name it as the master does.
    let worker_pid = started["pid"].clone();
    let own = lines
        .iter()
        .find(|l| l["span"]["name"] == "worker" && l["span"]["pid"] == worker_pid)
        .unwrap_or_else(|| panic!("no line from worker {worker_pid} in {lines:?}"));
    assert_eq!(own["span"]["slot"], 0, "{own}");
    assert_eq!(own["span"]["generation"], 1, "{own}");
}

/// One scrape of `/metrics` at `admin`, parsed as Prometheus text.
fn scrape(admin: &str) -> prometheus_parse::Scrape {
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    let response = exchange(
        &mut stream,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    let lines = body.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text")
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        other => panic!(
            "no sample {name} {labels:?}: {other:?} in {:?}",
            scrape.samples
        ),
    }
}

#[test]
fn metrics_count_reloads_and_restarts_as_they_happen() {
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--admin",
        "127.0.0.1:0",
        "--probation",
        "0s",
    ]);
    let admin = baton.operators_addr("admin").to_string();
    let first = baton.wait_workers(Duration::from_secs(10), |w| w.len() == 2);
    let before = scrape(&admin);
    assert_eq!(
        sample(&before, "baton_reloads_total", &[("outcome", "ok")]),
        0.0
    );
    assert_eq!(sample(&before, "baton_worker_restarts_total", &[]), 0.0);
    assert_eq!(sample(&before, "baton_workers", &[("state", "ready")]), 2.0);
    assert_eq!(sample(&before, "baton_workers_wanted", &[]), 2.0);

    let (code, answer) = baton.reload_wait();
    assert_eq!(code, 0, "{answer}");
    let serving = baton.wait_workers(Duration::from_secs(10), |w| {
        w.len() == 2 && w.iter().all(|p| !first.contains(p))
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serving[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    baton.wait_workers(Duration::from_secs(10), |w| {
        w.len() == 2 && !w.contains(&serving[0])
    });
    let mut after = scrape(&admin);
    // The replacement counts as ready once it says so.
    wait_until(slower(Duration::from_secs(10)), || {
        after = scrape(&admin);
        sample(&after, "baton_workers", &[("state", "ready")]) == 2.0
    });
    assert_eq!(
        sample(&after, "baton_reloads_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        sample(&after, "baton_reloads_total", &[("outcome", "failed")]),
        0.0
    );
    assert_eq!(sample(&after, "baton_worker_crashes_total", &[]), 1.0);
    assert_eq!(sample(&after, "baton_worker_restarts_total", &[]), 1.0);
    assert_eq!(sample(&after, "baton_generation", &[]), 2.0);
    assert_eq!(sample(&after, "baton_workers", &[("state", "ready")]), 2.0);
    // The same counters in `status --json`.
    let status = baton.status();
    assert_eq!(status["master"]["counters"]["reloads_ok"], 1, "{status}");
    assert_eq!(status["master"]["counters"]["restarts"], 1, "{status}");

    let mut stream = std::net::TcpStream::connect(&admin).unwrap();
    let other = exchange(&mut stream, b"GET / HTTP/1.1\r\nHost: admin\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line() {
    let (code, script, stderr) = run(&["completions", "bash"], &[]);
    assert_eq!(code, 0, "{stderr}");
    for word in ["serve", "reload", "--drain-timeout", "--test-config"] {
        assert!(script.contains(word), "the bash completion lacks {word}");
    }
    for hidden in ["keeper", "--fault"] {
        assert!(!script.contains(hidden), "{hidden} is offered");
    }
    let (code, page, stderr) = run(&["man"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH baton"),
        "{page}"
    );
    assert!(page.contains("serve"), "{page}");
}
