//! Programs users really run, as COMMAND workers, each with the drain recipe
//! shipped in `examples/` for its ecosystem: `baton check --url` against the
//! running server, reloaded three times or more by `baton reload --wait`, must
//! count zero failed requests. `tests/servers/install` installs what these need
//! (uvicorn into a venv under target/servers, Debian's Go).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::temp_dir;
use crate::support::*;

pub fn servers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/servers")
}

/// Runs `baton check --url` against `baton` with a `reload --wait` every 3 s
/// (the next starts when the last has answered), and asserts that at least
/// three reloads ran, all succeeded, and nothing failed. On a quiet machine
/// 36 s holds five or more; with both cores kept busy by other jobs a Node
/// worker once took 7 s to start, and a reload of two 13 s.
///
/// The servers run with `--probation 0s`, so that `reload --wait` answers as
/// soon as the rollout is done: these tests are about the drain (probation
/// has its own in deploy.rs).
fn assert_reloads_lose_nothing(baton: &Baton, name: &str) {
    assert_scenarios_lose_nothing(baton, name, &["get"]);
}

/// [`assert_reloads_lose_nothing`] with `check --scenario S` for each S of
/// `scenarios`. Where `websocket` runs, the drains must have closed
/// WebSockets with a close frame, and cut none.
fn assert_scenarios_lose_nothing(baton: &Baton, name: &str, scenarios: &[&str]) {
    let (report, stdout) = check_reloads(baton, name, scenarios);
    assert_eq!(report["ok"], report["requests"], "{stdout}");
    assert!(report["ok"].as_u64().unwrap() > 1000, "{stdout}");
    if scenarios.contains(&"websocket") {
        assert_eq!(report["websocket"]["cut"], 0, "{stdout}");
        assert!(
            report["websocket"]["clean"].as_u64().unwrap() > 0,
            "{stdout}"
        );
    }
}

/// `baton check --url` with `--scenario S` for each of `scenarios`
/// against `baton`, 36 s with a `reload --wait` every 3 s: its JSON report
/// and what it printed, once at least three reloads ran, all succeeded.
pub fn check_reloads(baton: &Baton, name: &str, scenarios: &[&str]) -> (serde_json::Value, String) {
    let dir = temp_dir(&format!("real-{name}"));
    let json = dir.path().join("report.json");
    let control = baton
        .control
        .as_ref()
        .expect("the harness chose the control path");
    let reload = format!(
        "{} reload --wait --control {}",
        baton_bin().display(),
        control.display()
    );
    let output = Command::new(baton_bin())
        .args(["check", "--url", &format!("http://{}/", baton.addr)])
        .args(["--duration", "36s", "--reload-every", "3s"])
        .args(scenarios.iter().flat_map(|s| ["--scenario", s]))
        .args(["--reload-command", &reload])
        .args(["--json", json.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("run baton check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{name}:\n{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the check wrote its JSON"))
            .expect("the JSON report parses");
    let reloads = report["reloads"].as_array().unwrap();
    assert!(reloads.len() >= 3, "{stdout}");
    assert!(reloads.iter().all(|r| r["ok"] == true), "{stdout}");
    let failed = report["ok"] != report["requests"];
    assert_eq!(
        output.status.code(),
        Some(if failed { 1 } else { 0 }),
        "{stdout}"
    );
    (report, stdout.into_owned())
}

/// `baton serve --workers 2 --probation 0s -- COMMAND`.
fn serve(command: &[&str]) -> Baton {
    serve_with(&[], command)
}

/// `baton serve --workers 2 --probation 0s OPTIONS -- COMMAND`.
pub fn serve_with(options: &[&str], command: &[&str]) -> Baton {
    // A start can take seconds when the machine is busy (CI shares it).
    let mut args = vec![
        "--workers",
        "2",
        "--probation",
        "0s",
        "--ready-timeout",
        "30s",
    ];
    args.extend_from_slice(options);
    args.push("--");
    args.extend_from_slice(command);
    Baton::serve(&args)
}

/// A tool the tests need that `tests/servers/install` provides.
pub fn installed(path: PathBuf) -> String {
    assert!(
        path.exists(),
        "{} is missing: run tests/servers/install first",
        path.display()
    );
    path.to_str().unwrap().to_owned()
}

/// The Node example, its `ws` package from `tests/servers/install`.
fn node_example() -> Vec<String> {
    let modules = servers_dir().join("node/node_modules");
    installed(modules.join("ws"));
    [
        "env",
        &format!("NODE_PATH={}", modules.display()),
        "node",
        &example("node/server.js"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// GETs, POSTs, event streams, downloads and WebSockets through reloads of
/// the Node example: its drain ends event streams and closes WebSockets with
/// a close frame when it starts (`onDrain`), and lets downloads finish.
#[test]
fn node_http_with_the_drain_module_passes_the_check() {
    let _heavy = heavy();
    let command = node_example();
    let baton = serve(&command.iter().map(String::as_str).collect::<Vec<_>>());
    let scenarios = ["get", "post", "stream", "websocket"];
    assert_scenarios_lose_nothing(&baton, "node", &scenarios);
}

#[test]
fn node_http2_closing_its_sessions_passes_the_h2c_check() {
    let _heavy = heavy();
    let baton = serve(&["node", &example("node/http2-server.js")]);
    assert_scenarios_lose_nothing(&baton, "node-http2", &["h2c"]);
}

#[test]
fn uvicorn_with_the_drain_runner_passes_the_check() {
    let _heavy = heavy();
    let python = installed(servers_dir().join("venv/bin/python"));
    let baton = serve(&[
        &python,
        &example("python/baton_uvicorn.py"),
        "--fd",
        "3",
        "--no-access-log",
        "--app-dir",
        &example("python"),
        "asgi_app:app",
    ]);
    assert_reloads_lose_nothing(&baton, "uvicorn");
}

#[test]
fn go_net_http_with_batondrain_passes_the_check() {
    let _heavy = heavy();
    let program = servers_dir().join("go-server");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&program)
        .arg(".")
        .current_dir(example("go"))
        .status()
        .expect("run `go build` (tests/servers/install installs Go)");
    assert!(built.success(), "go build failed");
    let baton = serve(&[program.to_str().unwrap()]);
    assert_reloads_lose_nothing(&baton, "go");
}
