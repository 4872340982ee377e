//! `baton check`, the zero-downtime check: it passes on baton, and it catches
//! a server that refuses connections while it restarts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use crate::support::{temp_dir, TempDir};

/// Runs `baton check ARGS` and returns its exit code, stdout and stderr.
fn run_check(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(baton_bin())
        .arg("check")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run baton check");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the check wrote its JSON");
    serde_json::from_str(&text).expect("the JSON report parses")
}

#[test]
fn baton_passes_its_own_check_with_json_and_plot() {
    let _heavy = heavy();
    let dir = temp_dir("check-self");
    let json = dir.path().join("report.json");
    let svg = dir.path().join("timeline.svg");
    let junit = dir.path().join("junit.xml");
    let (code, stdout, stderr) = run_check(&[
        "--duration",
        "10s",
        "--reload-every",
        "2s",
        "--workers",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--scenario",
        "all",
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("PASS"), "{stdout}");

    let report = read_json(&json);
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests >= 2000, "thousands of requests: {report}");
    assert_eq!(report["ok"].as_u64(), Some(requests));
    for kind in ["refused", "reset", "timeout", "eof", "bad_status"] {
        assert_eq!(
            report["failures"][kind].as_u64(),
            Some(0),
            "{kind}: {report}"
        );
    }
    for percentile in ["p50", "p90", "p99", "max"] {
        assert!(
            report["latency_ms"][percentile].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    let reloads = report["reloads"].as_array().unwrap();
    assert!(reloads.len() >= 4, "{report}");
    for reload in reloads {
        assert_eq!(reload["ok"].as_bool(), Some(true), "{reload}");
        assert!(reload["duration_ms"].as_f64().unwrap() > 0.0);
    }
    let workers = report["workers"].as_object().unwrap();
    assert!(
        workers.len() >= 2 * 5,
        "two workers per generation: {report}"
    );

    let picture = std::fs::read_to_string(&svg).expect("the check drew its plot");
    assert!(
        picture.starts_with("<svg"),
        "{}",
        &picture[..picture.len().min(200)]
    );
    assert!(picture.trim_end().ends_with("</svg>"));
    assert!(picture.contains("<polyline"), "the plot has lines");
    assert!(picture.contains("requests/s"), "the plot has labels");
    assert!(
        picture.lines().any(|line| line.trim() == "reload"),
        "the legend names the reload bands"
    );

    let cases = junit_cases(&junit);
    assert_eq!(
        cases,
        [
            ("get".to_owned(), None),
            ("post".to_owned(), None),
            ("pipeline".to_owned(), None),
            ("stream".to_owned(), None),
            ("upload".to_owned(), None),
            ("idle-reuse".to_owned(), None),
            ("h2c".to_owned(), None),
            ("websocket".to_owned(), None),
            ("reloads".to_owned(), None)
        ]
    );
}

/// `baton check --scenario all` through ten reloads of the built-in worker:
/// 256 connections shared by eight scenarios, so 32 HTTP/2 connections of 16
/// streams each among them; nothing
/// fails in any scenario, and every HTTP/2 connection the server closed
/// was sent GOAWAY.
fn check_all_scenarios(dir: &TempDir, serve_options: &[&str]) -> (i32, serde_json::Value) {
    let json = dir.path().join("report.json");
    let mut args = vec![
        "--scenario",
        "all",
        "--reloads",
        "10",
        "--reload-every",
        "1s",
        "--connections",
        "256",
        "--workers",
        "2",
        // Shorter than the time between reloads: a third generation
        // draining at once would be hurried, its idle connections closed at
        // once (baton's bound on a reload storm), racing their clients.
        "--drain-grace",
        "800ms",
        "--keepalive-timeout",
        "3s",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(serve_options);
    let (code, stdout, stderr) = run_check(&args);
    eprintln!("{stdout}");
    assert!(code == 0 || code == 1, "{stdout}\n{stderr}");
    (code, read_json(&json))
}

/// What `--scenario all` drives, in the report's order.
const ALL_SCENARIOS: [&str; 8] = [
    "get",
    "post",
    "pipeline",
    "stream",
    "upload",
    "idle-reuse",
    "h2c",
    "websocket",
];

/// The failed requests of scenario `name`, of every kind.
fn scenario_failures(report: &serde_json::Value, name: &str) -> u64 {
    let scenario = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name}: {report}"));
    let failures = scenario["failures"].as_object().unwrap();
    failures.values().map(|n| n.as_u64().unwrap()).sum()
}

#[test]
fn every_scenario_passes_through_ten_reloads_and_http2_connections_get_goaway() {
    let _heavy = heavy();
    let dir = temp_dir("check-all");
    let (code, report) = check_all_scenarios(&dir, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["reloads"].as_array().unwrap().len(), 10);
    assert_eq!(report["http2_connections"], 32, "{report}");
    for name in ALL_SCENARIOS {
        assert_eq!(scenario_failures(&report, name), 0, "{name}: {report}");
    }
    let goaways = &report["http2"]["goaways"];
    let closed = ["single", "two_step", "other", "without_goaway"]
        .iter()
        .map(|k| goaways[k].as_u64().unwrap())
        .sum::<u64>();
    assert!(
        closed >= 32,
        "the drains closed HTTP/2 connections: {report}"
    );
    assert_eq!(goaways["without_goaway"], 0, "{report}");
    let websockets = &report["websocket"];
    assert_eq!(websockets["cut"], 0, "{report}");
    assert!(
        websockets["clean"].as_u64().unwrap() >= 32,
        "each drain closed its WebSockets with a close frame: {report}"
    );
}

/// With idle connections handed over, pipelined requests and back-to-back
/// downloads lose nothing: a connection whose next request is already read,
/// or that is never idle, stays and closes the drain's usual way (handed
/// over mid-pipeline it lost requests; never idle, it was cut at the drain
/// deadline).
#[test]
fn pipelines_and_downloads_lose_nothing_when_connections_are_handed_over() {
    let _heavy = heavy();
    let dir = temp_dir("check-handoff");
    let json = dir.path().join("report.json");
    let (code, stdout, stderr) = run_check(&[
        "--scenario",
        "pipeline",
        "--scenario",
        "stream",
        // Each old generation drains alone for 12 s: a connection never
        // idle would be cut at its deadline, within the load.
        "--reloads",
        "3",
        "--reload-every",
        "7s",
        "--connections",
        "64",
        "--workers",
        "2",
        "--drain-timeout",
        "12s",
        "--handoff-connections",
        "on",
        "--json",
        json.to_str().unwrap(),
    ]);
    eprintln!("{stdout}");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report = read_json(&json);
    for name in ["pipeline", "stream"] {
        assert_eq!(scenario_failures(&report, name), 0, "{name}: {report}");
    }
}

/// The h2c scenario notices a drain that sends its GOAWAY at once, cutting
/// the streams in flight.
#[test]
fn a_goaway_that_cuts_streams_fails_the_h2c_scenario() {
    let _heavy = heavy();
    let dir = temp_dir("check-immediate-goaway");
    let (code, report) = check_all_scenarios(&dir, &["--fault", "immediate-goaway"]);
    assert_eq!(code, 1, "{report}");
    assert!(scenario_failures(&report, "h2c") > 0, "{report}");
}

/// A drain that ends a worker without closing its WebSockets and without
/// finishing its downloads (`--fault exit-on-drain`) fails both scenarios,
/// and the report counts the WebSockets cut.
#[test]
fn websockets_and_downloads_cut_by_a_drain_fail_their_scenarios() {
    let dir = temp_dir("check-exit-on-drain");
    let json = dir.path().join("report.json");
    let (code, stdout, stderr) = run_check(&[
        "--scenario",
        "stream",
        "--scenario",
        "websocket",
        "--reloads",
        "3",
        "--reload-every",
        "2s",
        "--connections",
        "16",
        "--fault",
        "exit-on-drain",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let report = read_json(&json);
    assert!(scenario_failures(&report, "stream") > 0, "{report}");
    assert!(scenario_failures(&report, "websocket") > 0, "{report}");
    assert!(report["websocket"]["cut"].as_u64().unwrap() > 0, "{report}");
}

/// The test cases of a `--junit` file, read with an XML parser of its own:
/// each case's name and its failure message, if it failed.
fn junit_cases(path: &std::path::Path) -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(path).expect("the check wrote its JUnit XML");
    let document = roxmltree::Document::parse(&text).expect("the JUnit XML parses");
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "testsuites", "{text}");
    let suite = root
        .children()
        .find(|n| n.has_tag_name("testsuite"))
        .expect("a test suite");
    let cases: Vec<(String, Option<String>)> = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|case| {
            let failure = case
                .children()
                .find(|n| n.has_tag_name("failure"))
                .map(|f| f.attribute("message").unwrap_or_default().to_owned());
            (
                case.attribute("name").unwrap_or_default().to_owned(),
                failure,
            )
        })
        .collect();
    let failed = cases.iter().filter(|(_, f)| f.is_some()).count();
    assert_eq!(
        suite.attribute("tests"),
        Some(&*cases.len().to_string()),
        "{text}"
    );
    assert_eq!(
        suite.attribute("failures"),
        Some(&*failed.to_string()),
        "{text}"
    );
    cases
}

/// baton's own server, killed (SIGKILL; its workers die with it) and
/// started again on reload, as a naive deploy does: what was in flight is
/// cut, and for a moment nothing listens. Every scenario has a server that
/// serves it, so what fails is the restart alone.
struct NaiveServer {
    dir: TempDir,
    port: u16,
}

impl NaiveServer {
    fn start() -> Self {
        let dir = temp_dir("naive");
        let port = free_port();
        let server = NaiveServer { dir, port };
        let status = Command::new("sh")
            .args(["-c", &server.start_command()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        server
    }

    fn start_command(&self) -> String {
        let dir = self.dir.path().display();
        format!(
            "{baton} serve --listen 127.0.0.1:{port} --control {dir}/control --workers 1 \
             >{dir}/log 2>&1 & echo $! > {dir}/pid",
            baton = baton_bin().display(),
            port = self.port
        )
    }

    /// Kill, a pause in which nothing listens, start again.
    fn restart_command(&self) -> String {
        let dir = self.dir.path().display();
        format!(
            "kill -9 $(cat {dir}/pid); sleep 0.5; {}",
            self.start_command()
        )
    }
}

impl Drop for NaiveServer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn a_naive_restart_is_caught_with_its_refused_connections() {
    let _heavy = heavy();
    let server = NaiveServer::start();
    let json = server.dir.path().join("report.json");
    let junit = server.dir.path().join("junit.xml");
    let url = format!("http://127.0.0.1:{}/", server.port);
    let (code, stdout, stderr) = run_check(&[
        "--url",
        &url,
        "--reload-command",
        &server.restart_command(),
        "--duration",
        "6s",
        "--reload-every",
        "2s",
        // Twelve clients for each of the eight scenarios: an idle-reuse
        // client reuses its connection just after a reload (and meets the
        // restart) at half of its pauses, so with four of them one run in
        // sixteen met none.
        "--connections",
        "96",
        "--json",
        json.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--scenario",
        "all",
    ]);
    assert_eq!(
        code, 1,
        "the check must fail.\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("FAIL"), "{stdout}");
    let report = read_json(&json);
    assert!(
        report["failures"]["refused"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["passed"].as_bool(), Some(false));
    assert!(report["reloads"].as_array().unwrap().len() >= 2, "{report}");
    // Every scenario loses requests, POSTs (never retried) and connections
    // reused as the server restarts included.
    let cases = junit_cases(&junit);
    for scenario in ALL_SCENARIOS {
        let failed = cases.iter().find(|(name, _)| name == scenario);
        let message = failed.and_then(|(_, failure)| failure.clone());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("requests failed")),
            "{scenario}: {cases:?}"
        );
    }
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 8, "{report}");
}

#[test]
fn bad_check_options_are_usage_errors() {
    for (args, expected) in [
        (&["--keepalive-ratio", "2"][..], "not a ratio"),
        (&["--url", "ftp://127.0.0.1/"], "only http://"),
        (
            &["--url", "http://127.0.0.1:1/", "--kill-every", "1s"],
            "--kill-every",
        ),
        (&["--reload-command", "true"], "--url"),
        (
            &["--url", "http://127.0.0.1:1/", "--reload-every", "2s"],
            "--reload-every needs --reload-command",
        ),
        (&["--duration", "forever"], "not a duration"),
        (&["--workers", "0"], "--workers"),
    ] {
        let (code, _, stderr) = run_check(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?} should say {expected:?}: {stderr}"
        );
    }
}

/// A server that answers only requests for the virtual host `localhost`,
/// like a name-based virtual host: 421 for any other Host header.
/// It binds a free port itself (a port chosen beforehand may be taken by
/// another test's process in the meantime) and prints it.
const VIRTUAL_HOST_SERVER: &str = r#"
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        ok = self.headers.get("Host") == f"localhost:{port}"
        body = b"ok" if ok else b"wrong virtual host"
        self.send_response(200 if ok else 421)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
port = server.server_address[1]
print(port, flush=True)
server.serve_forever()
"#;

#[test]
fn check_url_sends_the_urls_host() {
    let mut server = KillOnDrop(
        Command::new("python3")
            .args(["-c", VIRTUAL_HOST_SERVER])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start python3"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().expect("the server prints its port");
    let url = format!("http://localhost:{port}/");
    let (code, stdout, stderr) = run_check(&[
        "--url",
        &url,
        "--duration",
        "2s",
        "--reload-every",
        "0s",
        "--connections",
        "4",
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

/// Without a reload command, `--url` checks load alone: nothing is
/// scheduled that nothing performs, and the check ends on time. A reload
/// command's own output goes to stderr, not into the report.
#[test]
fn check_url_without_a_reload_command_checks_load_alone_and_on_time() {
    let baton = Baton::serve(&["--workers", "1"]);
    let url = format!("http://{}/", baton.addr);
    let started = std::time::Instant::now();
    let (code, stdout, stderr) =
        run_check(&["--url", &url, "--duration", "4s", "--connections", "4"]);
    let took = started.elapsed();
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("reloads     0"), "{stdout}");
    assert!(
        took < slower(Duration::from_secs(15)),
        "took {took:?} for a 4 s check"
    );

    let (code, stdout, stderr) = run_check(&[
        "--url",
        &url,
        "--duration",
        "2s",
        "--reload-every",
        "1s",
        "--reload-command",
        "echo reload-command-output",
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains("reload-command-output"), "{stdout}");
    assert!(stderr.contains("reload-command-output"), "{stderr}");
}

/// `--reloads N` runs until N reloads have had their outcome, printing a
/// line as each ends and a last line a pipeline can read; without a way to
/// reload it is a usage error.
#[test]
fn check_reloads_runs_until_n_reloads_and_ends_with_a_line_for_pipelines() {
    let (code, stdout, stderr) = run_check(&[
        "--reloads",
        "3",
        "--reload-every",
        "200ms",
        "--workers",
        "2",
        "--connections",
        "8",
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for n in 1..=3 {
        assert!(stdout.contains(&format!("reload {n}/3 at ")), "{stdout}");
    }
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    let words: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(
        (words[0], words[1], words[3], words[4], words[5]),
        ("3", "reloads,", "requests,", "0", "failed"),
        "{last}"
    );
    assert!(words[2].parse::<u64>().unwrap() > 0, "{last}");

    let (code, _, stderr) = run_check(&["--url", "http://127.0.0.1:9/", "--reloads", "2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--reloads needs reloads"), "{stderr}");
}
