//! The command line. `baton serve` runs the master; the hidden `baton worker`
//! is what the master starts for each worker, from the same program file.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::check::{parse_url, CheckOptions, Target};
use crate::config::{
    name_listeners, own_program_path, parse_mode, parse_signal, ConfigSource, DurationRange,
    ForeignWorker, ListenSpec, MasterConfig, ReadyMode,
};

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Zero-downtime process manager: the master owns the listening sockets, \
             workers serve, crashes and reloads refuse nothing"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the master: bind the listeners, start the workers, keep them serving.
    ///
    /// SIGHUP reloads (rolling restart, one worker at a time); SIGTERM or SIGINT
    /// drain every worker and exit; SIGQUIT stops at once.
    Serve(ServeArgs),
    /// Reload a running baton (like `kill -HUP`) and, with --wait, report
    /// whether the new generation came in
    Reload(ReloadArgs),
    /// Show a running baton's workers
    Status(StatusArgs),
    /// Drain a running baton's workers and make it exit
    Stop(ControlArgs),
    /// Zero-downtime check: drive HTTP load while reloading (and optionally
    /// killing workers), report every failure, exit 1 if anything failed.
    ///
    /// By default it starts `baton serve` with the given serve options on a
    /// free loopback port; with --url it checks any running server.
    Check(CheckArgs),
    /// A worker process, started by `baton serve`.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// The stage that hands a COMMAND worker its listeners and execs it,
    /// started by `baton serve -- COMMAND`.
    #[command(hide = true)]
    Exec(ExecArgs),
    /// The process that stops workers' process groups when the master is
    /// gone, started by `baton serve`.
    #[command(hide = true)]
    Keeper,
}

/// Where a control client finds the master.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The master's control socket [default: as for `baton serve`]
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

impl ControlArgs {
    pub fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(crate::control::default_path)
    }
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Wait until the new generation is in; exit 1 with the reason if the
    /// reload failed
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON for machines
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on: [NAME=]HOST:PORT, [NAME=][IPv6]:PORT or
    /// [NAME=]unix:PATH; repeat for several. Under systemd socket activation
    /// the passed sockets are used, and a --listen with the same NAME refers
    /// to one of them [default: 127.0.0.1:8080]
    #[arg(long = "listen", value_name = "[NAME=]ADDR")]
    pub listen: Vec<ListenSpec>,

    /// Permissions (octal) of Unix socket files baton creates
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,

    /// Read options from this TOML file (keys are these options' names with
    /// underscores); options given here override it. Re-read on reload
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Run workers as this user (the master keeps its privileges to bind
    /// and to manage them); needs root
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Run workers with this group [default: the --user's primary group]
    #[arg(long, value_name = "NAME", requires = "user")]
    pub group: Option<String>,

    /// The control socket `baton reload/status/stop` talk to [default:
    /// $XDG_RUNTIME_DIR/baton.sock, /run/baton.sock for root, else
    /// /tmp/baton-UID.sock]
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Number of worker processes [default: the number of CPUs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Listen backlog: connections that wait while no worker accepts
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub backlog: u32,

    /// How long a new worker may take to become ready before the start or
    /// reload counts as failed
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = DurationRange::TIMEOUT.parser())]
    pub ready_timeout: Duration,

    /// How long a draining worker may take to finish its requests before it
    /// is killed
    #[arg(long, value_name = "DUR", default_value = "30s",
          value_parser = DurationRange::DRAIN.parser())]
    pub drain_timeout: Duration,

    /// After a reload, how long the new generation must run without a worker
    /// crashing before the reload counts as done (`reload --wait` answers
    /// then). A crash meanwhile fails the reload and rolls back to the
    /// previous generation's program file, configuration and COMMAND. 0s
    /// for none
    #[arg(long, value_name = "DUR", default_value = "5s",
          value_parser = DurationRange::WAIT.parser())]
    pub probation: Duration,

    /// Roll a worker whose memory (the resident size of its process group)
    /// stays above SIZE for 3 s: a new worker takes its slot first, then it
    /// drains. SIZE like 512MiB or 2GiB (MB and GB are powers of 1000)
    #[arg(long, value_name = "SIZE", value_parser = crate::config::parse_memory_limit)]
    pub max_memory: Option<u64>,

    #[command(flatten)]
    pub http: HttpArgs,

    /// With a COMMAND: when a worker is ready. `listening`: its process
    /// tree waits for connections on every listener, or has accepted one
    /// (works for any program); `notify`: it sends READY=1 to
    /// $NOTIFY_SOCKET; `auto`: whichever comes first; `delay:DUR`: it stayed
    /// up that long
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub ready: ReadyMode,

    /// With a COMMAND: the signal that asks a worker to drain; SIGKILL
    /// follows at --drain-timeout
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_signal)]
    pub drain_signal: nix::sys::signal::Signal,

    /// With a COMMAND: the systemd watchdog. Workers get WATCHDOG_USEC and
    /// WATCHDOG_PID and must send WATCHDOG=1 on $NOTIFY_SOCKET at least this
    /// often once ready; one that misses it is killed and replaced. (Built-in
    /// workers are always watched: 3 s without their report.)
    #[arg(long, value_name = "DUR", value_parser = DurationRange::TIMEOUT.parser())]
    pub watchdog: Option<Duration>,

    /// With a COMMAND: `prefixed` puts "[slot N pid P]" before each line the
    /// workers print; `raw` passes their output through untouched
    #[arg(long, value_name = "MODE", default_value = "prefixed")]
    pub output: OutputMode,

    /// The program each worker runs, with its arguments (after `--`). It
    /// receives the listeners the systemd way: descriptors from 3 up,
    /// LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES. Without it, workers run the
    /// built-in HTTP server
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// What happens to a COMMAND worker's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputMode {
    Prefixed,
    Raw,
}

/// Options of the built-in HTTP worker, passed from the master to each worker.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Iterations of simulated CPU work per request
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub work: u64,

    /// Threads per worker process
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// While draining, how long an idle keep-alive connection stays open. A
    /// client that reuses its connection within this time gets its answer
    /// (with `Connection: close`) instead of a reset; clients that think
    /// longer between requests than this can race the close. Capped by
    /// --drain-timeout
    #[arg(long, value_name = "DUR", default_value = "20s",
          value_parser = DurationRange::WAIT.parser())]
    pub drain_grace: Duration,

    /// How long a client may take to send a request's headers: from the
    /// connection's start, or from its first byte after an idle keep-alive
    /// pause, to the end of the headers. Slow or silent clients are closed
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub header_timeout: Duration,

    /// How long a keep-alive connection (HTTP/1 or HTTP/2) may sit idle
    /// between requests before it is closed
    #[arg(long, value_name = "DUR", default_value = "75s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub keepalive_timeout: Duration,

    /// How long a request body may pause between two chunks before the
    /// request is answered 408 and its connection closed
    #[arg(long, value_name = "DUR", default_value = "60s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub body_timeout: Duration,

    /// HTTP/2: ping the client after this long without a frame from it, and
    /// close the connection if the ping is not answered within as long
    #[arg(long, value_name = "DUR", default_value = "20s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub http2_ping: Duration,

    /// How workers share new connections. `balanced`: a worker with more
    /// connections open than the least-loaded one leaves the next connection
    /// to the others for a millisecond; `kernel`: whichever worker wakes
    /// first takes it (uneven: one worker can serve several times what
    /// another does)
    #[arg(long, value_name = "MODE", default_value = "balanced")]
    pub accept: AcceptMode,

    /// Break a property on purpose, to prove that the tests notice
    #[arg(long, value_name = "FAULT", hide = true)]
    pub fault: Option<Fault>,
}

/// How a built-in worker accepts: see [`crate::balance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcceptMode {
    Balanced,
    Kernel,
}

/// Deliberate faults for testing the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// On drain, close everything and exit at once, like a naive server.
    ExitOnDrain,
}

/// The built-in worker's defaults, as the command line gives them.
impl Default for HttpArgs {
    fn default() -> Self {
        match Cli::parse_from(["baton", "worker"]).command {
            Command::Worker(args) => args.http,
            _ => unreachable!("parsed as the worker subcommand"),
        }
    }
}

impl HttpArgs {
    /// The server's client limits.
    pub fn server_options(&self) -> crate::worker::server::ServerOptions {
        crate::worker::server::ServerOptions {
            limits: crate::worker::connection::Limits {
                header: self.header_timeout,
                keepalive: self.keepalive_timeout,
            },
            http2_ping: self.http2_ping,
        }
    }

    /// The same options as command-line arguments for `baton worker`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--work".into(),
            self.work.to_string().into(),
            "--threads".into(),
            self.threads.to_string().into(),
            "--drain-grace".into(),
            duration_arg(self.drain_grace),
            "--header-timeout".into(),
            duration_arg(self.header_timeout),
            "--keepalive-timeout".into(),
            duration_arg(self.keepalive_timeout),
            "--body-timeout".into(),
            duration_arg(self.body_timeout),
            "--http2-ping".into(),
            duration_arg(self.http2_ping),
            "--accept".into(),
            self.accept
                .to_possible_value()
                .expect("modes are not skipped")
                .get_name()
                .into(),
        ];
        if let Some(fault) = self.fault {
            let value = fault.to_possible_value().expect("faults are not skipped");
            args.extend(["--fault".into(), value.get_name().into()]);
        }
        args
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// How long to drive load
    #[arg(long, value_name = "DUR", default_value = "20s",
          value_parser = DurationRange::RUN.parser())]
    pub duration: Duration,

    /// Concurrent client connections
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub connections: u32,

    /// Share of connections kept alive between requests (the rest open a
    /// new connection per request)
    #[arg(long, value_name = "RATIO", default_value_t = 0.5, value_parser = parse_ratio)]
    pub keepalive_ratio: f64,

    /// Reload this often (SIGHUP, or --reload-command); 0s for never
    #[arg(long, value_name = "DUR", default_value = "3s",
          value_parser = DurationRange::SCHEDULE.parser())]
    pub reload_every: Duration,

    /// SIGKILL a random worker this often (self-hosted only)
    #[arg(long, value_name = "DUR", value_parser = DurationRange::SCHEDULE.parser())]
    pub kill_every: Option<Duration>,

    /// A request without a complete answer within this counts as a timeout
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = DurationRange::TIMEOUT.parser())]
    pub request_timeout: Duration,

    /// Write the report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draw the timeline (requests/s and p99 latency, reloads and kills
    /// marked) as an SVG to FILE
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,

    /// Check the server at this URL (http://HOST:PORT/PATH) instead of
    /// starting one
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// With --url: the command (run by sh) that reloads the server
    #[arg(long, value_name = "CMD", requires = "url")]
    pub reload_command: Option<String>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Reads the configuration again from its file and command line.
pub fn load_config(source: &ConfigSource) -> Result<MasterConfig, String> {
    let args = crate::config_file::load(&source.file, &source.cli_args)?;
    let mut config = args.into_config()?;
    config.source = Some(source.clone());
    Ok(config)
}

/// A duration as an argument that parses back to the same value.
fn duration_arg(duration: Duration) -> OsString {
    humantime::format_duration(duration).to_string().into()
}

/// Looks up `--user` and `--group`.
fn resolve_identity(user: Option<&str>, group: Option<&str>) -> Result<Option<(u32, u32)>, String> {
    use nix::unistd::{Group, User};
    let Some(user) = user else {
        return Ok(None);
    };
    if !nix::unistd::getuid().is_root() {
        return Err(format!("--user {user} needs baton to run as root"));
    }
    let found = User::from_name(user)
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
        .ok_or_else(|| format!("there is no user {user:?}"))?;
    let gid = match group {
        None => found.gid,
        Some(group) => {
            Group::from_name(group)
                .map_err(|e| format!("cannot look up group {group:?}: {e}"))?
                .ok_or_else(|| format!("there is no group {group:?}"))?
                .gid
        }
    };
    Ok(Some((found.uid.as_raw(), gid.as_raw())))
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1, like 0.5")),
    }
}

impl CheckArgs {
    /// Validates the arguments into the check's options.
    pub fn into_options(self) -> Result<CheckOptions, String> {
        let target = match self.url {
            Some(url) => {
                if self.kill_every.is_some() {
                    return Err("--kill-every needs a server baton starts itself; it cannot kill the workers of --url".into());
                }
                let (url, addr) = parse_url(&url)?;
                Target::External {
                    url,
                    addr,
                    reload_command: self.reload_command,
                }
            }
            None => {
                let mut serve = self.serve;
                if serve.listen.is_empty() {
                    serve
                        .listen
                        .push("127.0.0.1:0".parse().expect("a valid address"));
                }
                if serve.control.is_none() {
                    // Its own control socket, so that the check runs beside
                    // a baton that uses the default one.
                    let dir = crate::control::default_dir();
                    crate::control::ensure_private_dir(&dir)?;
                    serve.control = Some(dir.join(format!("check-{}.sock", std::process::id())));
                }
                // Validate now, so that a bad serve option is a usage error
                // of the check itself.
                serve.clone().into_config()?;
                let program = own_program_path().map_err(|e| {
                    format!("cannot find baton's own program file to start the server from: {e}")
                })?;
                Target::SelfHosted {
                    program,
                    serve_args: serve.to_args(),
                }
            }
        };
        Ok(CheckOptions {
            target,
            duration: self.duration,
            connections: self.connections as usize,
            keepalive_ratio: self.keepalive_ratio,
            reload_every: (!self.reload_every.is_zero()).then_some(self.reload_every),
            kill_every: self.kill_every.filter(|every| !every.is_zero()),
            request_timeout: self.request_timeout,
            json: self.json,
            plot: self.plot,
            progress: true,
        })
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub http: HttpArgs,
}

impl ServeArgs {
    /// The configuration from these arguments, merged over `--config FILE`
    /// when given. `cli_args` are the raw arguments after `serve`, kept to
    /// merge again on every reload.
    pub fn into_config_with_file(self, cli_args: Vec<OsString>) -> Result<MasterConfig, String> {
        let Some(file) = self.config.clone() else {
            return self.into_config();
        };
        let source = ConfigSource { file, cli_args };
        load_config(&source)
    }

    /// The same options as command-line arguments for `baton serve`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        for listen in &self.listen {
            args.extend(["--listen".into(), listen.to_string().into()]);
        }
        if let Some(mode) = self.unix_mode {
            args.extend(["--unix-mode".into(), format!("{mode:o}").into()]);
        }
        if let Some(control) = &self.control {
            args.extend(["--control".into(), control.into()]);
        }
        if let Some(config) = &self.config {
            args.extend(["--config".into(), config.into()]);
        }
        if let Some(user) = &self.user {
            args.extend(["--user".into(), user.into()]);
        }
        if let Some(group) = &self.group {
            args.extend(["--group".into(), group.into()]);
        }
        if let Some(workers) = self.workers {
            args.extend(["--workers".into(), workers.to_string().into()]);
        }
        args.extend([
            "--backlog".into(),
            self.backlog.to_string().into(),
            "--ready-timeout".into(),
            duration_arg(self.ready_timeout),
            "--drain-timeout".into(),
            duration_arg(self.drain_timeout),
            "--probation".into(),
            duration_arg(self.probation),
        ]);
        if let Some(bytes) = self.max_memory {
            args.extend(["--max-memory".into(), format!("{bytes}B").into()]);
        }
        args.extend(self.http.to_args());
        if !self.command.is_empty() {
            let ready = match self.ready {
                ReadyMode::Notify => "notify".to_owned(),
                ReadyMode::Auto => "auto".to_owned(),
                ReadyMode::Listening => "listening".to_owned(),
                ReadyMode::Delay(d) => format!("delay:{}", humantime::format_duration(d)),
            };
            args.extend([
                "--ready".into(),
                ready.into(),
                "--drain-signal".into(),
                self.drain_signal.as_str().into(),
                "--output".into(),
                format!("{:?}", self.output).to_lowercase().into(),
            ]);
            if let Some(watchdog) = self.watchdog {
                args.extend(["--watchdog".into(), duration_arg(watchdog)]);
            }
            args.push("--".into());
            args.extend(self.command.iter().cloned());
        }
        args
    }

    /// Validates the arguments into the master's configuration.
    pub fn into_config(self) -> Result<MasterConfig, String> {
        // Names must be unique whatever systemd passes.
        name_listeners(&self.listen, &[], true)?;
        let workers = match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
        let program = own_program_path().map_err(|e| {
            format!("cannot find baton's own program file to start workers from: {e}")
        })?;
        let (worker_args, foreign) = if self.command.is_empty() {
            let mut args: Vec<OsString> = vec!["worker".into()];
            args.extend(self.http.to_args());
            (args, None)
        } else {
            let mut args: Vec<OsString> = vec!["exec".into(), "--".into()];
            args.extend(self.command.iter().cloned());
            let foreign = ForeignWorker {
                ready: self.ready,
                drain_signal: self.drain_signal,
                prefix_output: self.output == OutputMode::Prefixed,
                watchdog: self.watchdog,
            };
            (args, Some(foreign))
        };
        Ok(MasterConfig {
            listen: self.listen,
            unix_mode: self.unix_mode,
            control: self.control,
            source: None,
            worker_identity: resolve_identity(self.user.as_deref(), self.group.as_deref())?,
            workers,
            backlog: self.backlog,
            ready_timeout: self.ready_timeout,
            drain_timeout: self.drain_timeout,
            probation: self.probation,
            max_memory: self.max_memory,
            program,
            worker_args,
            foreign,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_args_round_trip_through_the_worker_command_line() {
        let http = HttpArgs {
            work: 5,
            threads: 2,
            drain_grace: Duration::from_millis(1500),
            header_timeout: Duration::from_secs(4),
            keepalive_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(6),
            http2_ping: Duration::from_secs(7),
            accept: AcceptMode::Kernel,
            fault: Some(Fault::ExitOnDrain),
        };
        let mut argv: Vec<OsString> = vec!["baton".into(), "worker".into()];
        argv.extend(http.to_args());
        let Command::Worker(parsed) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("expected the worker subcommand");
        };
        assert_eq!(parsed.http.work, 5);
        assert_eq!(parsed.http.threads, 2);
        assert_eq!(parsed.http.drain_grace, Duration::from_millis(1500));
        assert_eq!(parsed.http.header_timeout, Duration::from_secs(4));
        assert_eq!(parsed.http.keepalive_timeout, Duration::from_secs(5));
        assert_eq!(parsed.http.body_timeout, Duration::from_secs(6));
        assert_eq!(parsed.http.http2_ping, Duration::from_secs(7));
        assert_eq!(parsed.http.accept, AcceptMode::Kernel);
        assert_eq!(parsed.http.fault, Some(Fault::ExitOnDrain));
    }
}
