//! `baton check`: the zero-downtime check as a product feature.
//!
//! It drives concurrent HTTP load at a server (one it starts, `baton serve`,
//! or any server at `--url`), triggers reloads (SIGHUP, or a command) and
//! optionally worker kills on a schedule, and reports every request's outcome.
//! It passes only when no connection was refused and no request failed;
//! requests in flight on a worker it killed are reported apart and allowed.
//!
//! - [`server`]: the `baton serve` child a self-hosted check drives.
//! - `faults`: the reloads and kills on their schedules.
//! - [`report`]: the findings, for people and for machines.
//! - [`junit`]: the findings as JUnit XML, for CI systems.
//! - [`goaway`]: the GOAWAY frames an HTTP/2 server sends, as they pass.
//! - [`scenario`]: the kinds of traffic the check drives.
//! - [`plot`]: the timeline picture.

mod faults;
pub mod goaway;
pub mod junit;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod server;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use hyper::Uri;

use crate::load::{self, ClientMode, LoadPlan, LoadReport};
use faults::Faults;
use report::{CheckReport, Context};
use server::ManagedServer;

/// How long a self-hosted server may take to start before the check gives
/// up on it.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the check could not run (as opposed to a check that ran and failed).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("server: {0}")]
    Server(String),
    #[error("cannot write {path}: {reason}")]
    Output { path: PathBuf, reason: String },
}

/// What to check.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start `program serve --config FILE` (a free loopback port unless
    /// the file says otherwise), reload it with SIGHUP; the file is removed
    /// once the server has stopped.
    SelfHosted { program: PathBuf, config: PathBuf },
    /// Load the server at `url`; run `reload_command` through `sh -c` to reload.
    External {
        url: Uri,
        addr: SocketAddr,
        reload_command: Option<String>,
    },
}

/// A validated check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub target: Target,
    /// What it drives (`--scenario`), each reported apart.
    pub scenarios: Vec<scenario::Scenario>,
    /// What it knows of the server's timing.
    pub server_timing: scenario::ServerTiming,
    pub duration: Duration,
    pub connections: usize,
    /// Share of connections kept alive; the rest open one per request.
    pub keepalive_ratio: f64,
    pub reload_every: Option<Duration>,
    /// `--reloads N`: the check ends once N reloads have had their outcome.
    pub reloads: Option<usize>,
    pub kill_every: Option<Duration>,
    pub request_timeout: Duration,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    /// Print a live progress line (on a terminal).
    pub progress: bool,
}

/// Parses `--url`: `http://HOST:PORT/PATH`.
pub fn parse_url(url: &str) -> Result<(Uri, SocketAddr), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); write it like http://127.0.0.1:8080/"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// URLs can be checked"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} names no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", authority.host()))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", authority.host()))?;
    Ok((uri, addr))
}

/// Runs the check and returns its report (also written to `--json` and
/// `--plot` when asked).
pub async fn run(options: CheckOptions) -> Result<CheckReport, CheckError> {
    let (mut server, aim) = match &options.target {
        Target::SelfHosted { program, config } => {
            let server = ManagedServer::start(program, config, SERVER_START_TIMEOUT).await?;
            let aim = Aim::server(&server);
            (Some(server), aim)
        }
        Target::External { url, addr, .. } => (None, Aim::url(url, *addr)),
    };
    let clients = scenario::clients(
        &options.scenarios,
        options.connections,
        options.keepalive_ratio,
        &options.server_timing,
    );
    let count = |kind: fn(&ClientMode) -> bool| clients.iter().filter(|m| kind(m)).count();
    let keepalive = count(|mode| {
        matches!(
            mode,
            ClientMode::KeepAlive { .. }
                | ClientMode::Pipeline
                | ClientMode::Stream { .. }
                | ClientMode::Download { .. }
                | ClientMode::IdleReuse { .. }
        )
    });
    let posting = count(|mode| {
        matches!(
            mode,
            ClientMode::Upload { .. } | ClientMode::SlowUpload { .. }
        )
    });
    let http2 = count(|mode| matches!(mode, ClientMode::H2c { .. }));
    let websocket = count(|mode| matches!(mode, ClientMode::Websocket));
    let mut plan = LoadPlan::new(aim.addr, clients, options.duration);
    plan.host = aim.host;
    plan.path = aim.path;
    plan.request_timeout = options.request_timeout;
    let progress = plan.progress.clone();
    let load_task = tokio::spawn(load::run(plan));

    let mut faults = Faults::new(&options);
    let load_report = faults
        .run_beside(load_task, server.as_mut(), &progress)
        .await?;
    let master_rss_bytes = server.as_ref().and_then(ManagedServer::rss_bytes);
    if let Some(server) = server.take() {
        server.stop(Duration::from_secs(60)).await;
    }
    let (reloads, kills) = faults.timed_from(load_report.started);
    let context = Context {
        target: aim.name,
        scenarios: options.scenarios.clone(),
        keepalive_connections: keepalive,
        post_connections: posting,
        http2_connections: http2,
        websocket_connections: websocket,
        reloads,
        kills,
        master_rss_bytes,
    };
    let report = CheckReport::build(&load_report, context);
    write_outputs(&options, &load_report, &report)?;
    Ok(report)
}

/// Where the load goes, and what the report calls it.
struct Aim {
    addr: SocketAddr,
    /// The `Host` header.
    host: String,
    path: String,
    name: String,
}

impl Aim {
    fn server(server: &ManagedServer) -> Aim {
        Aim {
            addr: server.addr,
            host: server.addr.to_string(),
            path: "/".to_owned(),
            name: format!("baton serve (pid {}) on {}", server.pid(), server.addr),
        }
    }

    fn url(url: &Uri, addr: SocketAddr) -> Aim {
        Aim {
            addr,
            host: url.authority().map_or(addr.to_string(), |a| a.to_string()),
            path: url
                .path_and_query()
                .map_or("/".to_owned(), |p| p.to_string()),
            name: url.to_string(),
        }
    }
}

/// Writes the report to `--json` and `--junit` and the timeline to
/// `--plot`, if asked.
fn write_outputs(
    options: &CheckOptions,
    load_report: &LoadReport,
    report: &CheckReport,
) -> Result<(), CheckError> {
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| CheckError::Output {
            path: path.clone(),
            reason: e.to_string(),
        })
    };
    if let Some(path) = &options.json {
        let json = serde_json::to_string_pretty(report).expect("the report serializes");
        write(path, json + "\n")?;
    }
    if let Some(path) = &options.junit {
        write(path, junit::junit_xml(report))?;
    }
    if let Some(path) = &options.plot {
        plot::write_svg(path, load_report, report).map_err(|reason| CheckError::Output {
            path: path.clone(),
            reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (uri, addr) = parse_url("http://127.0.0.1:9000/health?x=1").unwrap();
        assert_eq!(addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/health?x=1");
        assert!(parse_url("https://127.0.0.1/").is_err());
        assert!(parse_url("not a url").is_err());
        assert_eq!(
            parse_url("http://[::1]/").unwrap().1,
            "[::1]:80".parse().unwrap()
        );
    }
}
