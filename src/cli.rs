//! The command line. `baton serve` runs the master; the hidden `baton worker`
//! is what the master starts for each worker, from the same program file.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

pub use crate::http_options::HttpArgs;
use crate::logging::LogFormat;

use crate::values::{
    parse_backlog, parse_health_count, parse_health_path, parse_memory_limit, parse_mode,
    parse_signal, parse_workers, text, DurationRange, ListenSpec, ReadyMode, StatusRange,
};

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Zero-downtime process manager: the master owns the listening sockets, \
             workers serve, crashes and reloads refuse nothing"
)]
pub struct Cli {
    /// Log lines as `text`, or as `json` (one object per line with the
    /// stable fields event, pid, slot, generation) for log shippers; the
    /// workers baton starts log the same way
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        env = "BATON_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Run the master: bind the listeners, start the workers, keep them serving.
    ///
    /// SIGHUP reloads (rolling restart, one worker at a time); SIGTERM or SIGINT
    /// drain every worker and exit; SIGQUIT stops at once.
    Serve(Box<ServeArgs>),
    /// Reload a running baton (like `kill -HUP`) and, with --wait, report
    /// whether the new generation came in
    Reload(ReloadArgs),
    /// Show a running baton's workers
    Status(StatusArgs),
    /// Drain a running baton's workers and make it exit
    Stop(StopArgs),
    /// Lame duck: make health checks fail (503 on /healthz) while the
    /// workers go on serving, so that load balancers take this host out
    Drain(ControlArgs),
    /// Back from lame duck: health checks pass again
    Undrain(ControlArgs),
    /// Replace the running master's own program (the baton file at the path
    /// it was started from, like `kill -USR2`) in the same pid, keeping its
    /// sockets and workers, then roll the workers to it like a reload.
    ///
    /// The new program is checked first (state format, configuration); if
    /// it fails to take over, the previous one comes back with the same
    /// workers. Nothing is refused meanwhile.
    Upgrade(UpgradeArgs),
    /// Zero-downtime check: drive HTTP load while reloading (and optionally
    /// killing workers), report every failure, exit 1 if anything failed.
    ///
    /// By default it starts `baton serve` with the given serve options on a
    /// free loopback port; with --url it checks any running server.
    Check(Box<CheckArgs>),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell)
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print baton's man page (roff), for `man -l -` or man1/baton.1
    Man,
    /// A worker process, started by `baton serve`.
    #[command(hide = true)]
    Worker,
    /// The stage that hands a COMMAND worker its listeners and execs it,
    /// started by `baton serve -- COMMAND`.
    #[command(hide = true)]
    Exec(ExecArgs),
    /// The stage that execs a `--native` COMMAND with its handoff socket
    /// kept open at descriptor 3, started by `baton serve --native`.
    #[command(hide = true)]
    Native(ExecArgs),
    /// The process that stops workers' process groups when the master is
    /// gone, started by `baton serve`.
    #[command(hide = true)]
    Keeper,
    /// The process that serves idle connections a draining COMMAND let go,
    /// started by `baton serve -- COMMAND`.
    #[command(hide = true)]
    Rescuer,
    /// The check a running master runs the new program with before an
    /// upgrade: can it read the state format, does it accept the serve
    /// arguments. Prints `baton VERSION`.
    #[command(hide = true)]
    UpgradeCheck(UpgradeCheckArgs),
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Wait until the new program serves and the workers are rolled; exit
    /// 1 with the reason if the upgrade was refused or failed
    #[arg(long)]
    pub wait: bool,
    /// Keep the running workers instead of rolling them to the new program
    #[arg(long)]
    pub keep_workers: bool,
    /// A fault for the new program to show while it takes over (tests)
    #[arg(long, hide = true, value_name = "FAULT")]
    pub fault: Option<crate::control::UpgradeFault>,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct UpgradeCheckArgs {
    /// The state format the running master writes
    #[arg(long)]
    pub format: u32,
    /// The running master's arguments after `serve`
    #[arg(last = true, allow_hyphen_values = true)]
    pub serve_args: Vec<std::ffi::OsString>,
}

/// The command line as users see it, for completion scripts and the man
/// page: hidden subcommands and options are left out (the generators would
/// offer them otherwise).
pub fn public_command() -> clap::Command {
    use clap::CommandFactory;
    fn without_hidden(cmd: &clap::Command) -> clap::Command {
        // Names live as long as the process: it prints once and exits.
        let name: &'static str = Box::leak(cmd.get_name().to_owned().into_boxed_str());
        let mut public = clap::Command::new(name);
        if let Some(about) = cmd.get_about() {
            public = public.about(about.clone());
        }
        if let Some(about) = cmd.get_long_about() {
            public = public.long_about(about.clone());
        }
        if let Some(version) = cmd.get_version() {
            let version: &'static str = Box::leak(version.to_owned().into_boxed_str());
            public = public.version(version);
        }
        public
            .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
            .subcommands(
                cmd.get_subcommands()
                    .filter(|sub| !sub.is_hide_set())
                    .map(without_hidden),
            )
    }
    without_hidden(&Cli::command())
}

/// Where a control client finds the master.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The master's control socket [default: as for `baton serve`]
    #[arg(long, value_name = "PATH", env = "BATON_CONTROL")]
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
pub struct StopArgs {
    /// Return only once baton has exited (every worker drained or killed
    /// at --drain-timeout)
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

/// `baton serve`'s options: filled by the command line (clap) and by the
/// `--config` file (serde, each value read by the same function; see
/// [`crate::values::text`]).
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct ServeArgs {
    /// Address to listen on: [NAME=]HOST:PORT, [NAME=][IPv6]:PORT or
    /// [NAME=]unix:PATH; repeat for several. Under systemd socket activation
    /// the passed sockets are used, and a --listen with the same NAME refers
    /// to one of them [default: 127.0.0.1:8080]
    #[serde_as(as = "Vec<text::Listen>")]
    #[arg(long = "listen", value_name = "[NAME=]ADDR")]
    pub listen: Vec<ListenSpec>,

    /// Permissions (octal) of Unix socket files baton creates
    #[serde_as(as = "Option<text::Mode>")]
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,

    /// Read options from this TOML file (keys are these options' names with
    /// underscores); options given here override it. Re-read on reload
    #[serde(skip)]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Test the configuration and exit (like `nginx -t`): check the command
    /// line and --config file completely (every value, the listeners, user
    /// and group, that COMMAND can be run) without binding or starting
    /// anything; list every problem, exit 0 if there is none, 2 otherwise
    #[serde(skip)]
    #[arg(short = 't', long)]
    pub test_config: bool,

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
    #[serde_as(as = "Option<text::Workers>")]
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    pub workers: Option<u16>,

    /// Listen backlog: connections that wait while no worker accepts
    #[serde_as(as = "text::Backlog")]
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = parse_backlog)]
    pub backlog: u32,

    /// How long a new worker may take to become ready before the start or
    /// reload counts as failed
    #[serde_as(as = "text::Timeout")]
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = DurationRange::TIMEOUT.parser())]
    pub ready_timeout: Duration,

    /// How long a draining worker may take to finish its requests before it
    /// is killed
    #[serde_as(as = "text::Drain")]
    #[arg(long, value_name = "DUR", default_value = "30s",
          value_parser = DurationRange::DRAIN.parser())]
    pub drain_timeout: Duration,

    /// After a reload, how long the new generation must run without a worker
    /// crashing before the reload counts as done (`reload --wait` answers
    /// then). A crash meanwhile fails the reload and rolls back to the
    /// previous generation's program file, configuration and COMMAND. 0s
    /// for none
    #[serde_as(as = "text::Wait")]
    #[arg(long, value_name = "DUR", default_value = "5s",
          value_parser = DurationRange::WAIT.parser())]
    pub probation: Duration,

    /// How many slots a reload replaces at once: new workers for that many
    /// slots start together, and as each is ready its old worker drains and
    /// the next slot starts. Capacity never drops below the worker count; it
    /// rises by up to N during the reload
    #[serde_as(as = "text::Workers")]
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_workers)]
    pub reload_batch: u16,

    /// During a reload, probe each new worker with GET PATH (say /healthz)
    /// before the old worker of its slot drains: a new worker that does not
    /// answer --health-status fails the reload, and the old workers go on.
    /// The probe goes through the shared listener and is served by the new
    /// worker itself, with no port of its own
    #[serde_as(as = "Option<text::HealthPath>")]
    #[arg(long, value_name = "PATH", value_parser = parse_health_path)]
    pub health: Option<String>,

    /// The statuses a --health probe passes with: a class (2xx), a status
    /// (204) or a range (200-399)
    #[serde_as(as = "text::Statuses")]
    #[arg(long, value_name = "STATUS", default_value = "2xx",
          value_parser = clap::builder::ValueParser::new(str::parse::<StatusRange>))]
    pub health_status: StatusRange,

    /// How long each --health probe may take, reaching the new worker
    /// included
    #[serde_as(as = "text::Timeout")]
    #[arg(long, value_name = "DUR", default_value = "5s",
          value_parser = DurationRange::TIMEOUT.parser())]
    pub health_timeout: Duration,

    /// How many --health probes a new worker must pass, each on a
    /// connection of its own
    #[serde_as(as = "text::HealthCount")]
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_health_count)]
    pub health_count: u32,

    /// Also probe every ready worker with --health every DUR (HAProxy's
    /// health checks, per process): a worker that fails --health-fall
    /// probes in a row, or that no probe can reach (stuck in a loop), is
    /// replaced, and a release on probation that fails them is rolled back
    #[serde_as(as = "Option<text::Timeout>")]
    #[arg(long, value_name = "DUR", value_parser = DurationRange::TIMEOUT.parser())]
    pub health_interval: Option<Duration>,

    /// How many periodic --health probes in a row a worker may fail before
    /// it is replaced
    #[serde_as(as = "text::HealthCount")]
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_health_count)]
    pub health_fall: u32,

    /// Roll a worker whose memory (the resident size of its process group)
    /// stays above SIZE for 3 s: a new worker takes its slot first, then it
    /// drains. SIZE like 512MiB or 2GiB (MB and GB are powers of 1000)
    #[serde_as(as = "Option<text::Memory>")]
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_limit)]
    pub max_memory: Option<u64>,

    /// Serve Prometheus metrics at http://ADDR/metrics (reloads by outcome,
    /// crashes, restarts, workers by state, and the built-in workers'
    /// requests and connections) and health checks for load balancers:
    /// /healthz (200, or 503 in lame duck and shutdown) and /readyz (503
    /// until the first workers are ready). Keep it on a private address
    #[serde_as(as = "Option<text::Addr>")]
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<std::net::SocketAddr>,

    /// Answer HAProxy's agent check here (`agent-check agent-port PORT`):
    /// `up ready` while serving, `drain` in lame duck and shutdown
    #[serde_as(as = "Option<text::Addr>")]
    #[arg(long, value_name = "HOST:PORT")]
    pub agent: Option<std::net::SocketAddr>,

    /// On SIGTERM, first serve this long as a lame duck (health checks
    /// fail, the workers go on serving, so that load balancers take this
    /// host out), then drain. A second SIGTERM drains at once
    #[serde_as(as = "text::Wait")]
    #[arg(long, value_name = "DUR", default_value = "0s",
          value_parser = DurationRange::WAIT.parser())]
    pub shutdown_delay: Duration,

    #[serde(flatten)]
    #[command(flatten)]
    pub http: HttpArgs,

    /// With a COMMAND: when a worker is ready. `listening`: its process
    /// tree waits for connections on every listener, or has accepted one
    /// (works for any program); `notify`: it sends READY=1 to
    /// $NOTIFY_SOCKET; `auto`: whichever comes first; `delay:DUR`: it stayed
    /// up that long; `fd:N`: it writes a newline to descriptor N (s6's
    /// notification-fd), and fails its start if it closes N without one
    #[serde_as(as = "text::Ready")]
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub ready: ReadyMode,

    /// With a COMMAND: the signal that asks a worker to drain; SIGKILL
    /// follows at --drain-timeout
    #[serde_as(as = "text::SignalName")]
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_signal)]
    pub drain_signal: nix::sys::signal::Signal,

    /// With a COMMAND: the systemd watchdog. Workers get WATCHDOG_USEC and
    /// WATCHDOG_PID and must send WATCHDOG=1 on $NOTIFY_SOCKET at least this
    /// often once ready; one that misses it is killed and replaced. (Built-in
    /// workers are always watched: 3 s without their report.)
    #[serde_as(as = "Option<text::Timeout>")]
    #[arg(long, value_name = "DUR", value_parser = DurationRange::TIMEOUT.parser())]
    pub watchdog: Option<Duration>,

    /// With a COMMAND: `prefixed` puts "[slot N pid P]" before each line the
    /// workers print; `raw` passes their output through untouched
    #[serde_as(as = "text::Named")]
    #[arg(long, value_name = "MODE", default_value = "prefixed")]
    pub output: OutputMode,

    /// With a COMMAND built on the baton-worker library: it speaks baton's
    /// protocol on the handoff socket (BATON_HANDOFF_FD) like a built-in
    /// worker: balanced accepts, readiness, the drain with --drain-grace,
    /// per-second reports for status, /metrics and the liveness check,
    /// health probes. Without it such a program serves LISTEN_FDS and
    /// drains on the drain signal
    #[arg(long, requires = "command")]
    pub native: bool,

    /// `on`: a draining built-in (or --native) worker hands each idle
    /// HTTP/1 keep-alive connection to a worker of the new generation at
    /// its next idle moment: the client keeps its connection and sees
    /// nothing. `off`: idle connections get `Connection: close` and close
    /// after --drain-grace, as a stop always does
    #[serde_as(as = "text::Named")]
    #[arg(long, value_name = "ON|OFF", default_value = "on")]
    pub handoff_connections: Switch,

    /// `on`: before a COMMAND worker gets its drain signal, baton keeps a
    /// copy of each of its idle keep-alive connections, so that one the
    /// program closes while its client sends the next request is not reset:
    /// that request goes to the new generation, answered with `Connection:
    /// close`. Connections the program reads or writes on stay its own.
    /// `off`: the program's closes reach its clients as they are
    #[serde_as(as = "text::Named")]
    #[arg(long, value_name = "ON|OFF", default_value = "on")]
    pub rescue_connections: Switch,

    /// The program each worker runs, with its arguments (after `--`). It
    /// receives the listeners the systemd way: descriptors from 3 up,
    /// LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES. Without it, workers run the
    /// built-in HTTP server
    #[serde_as(as = "Vec<text::Arg>")]
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// A feature on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// What happens to a COMMAND worker's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputMode {
    Prefixed,
    Raw,
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
    /// [default: 3s; with --url, never unless --reload-command is given]
    #[arg(long, value_name = "DUR", value_parser = DurationRange::SCHEDULE.parser())]
    pub reload_every: Option<Duration>,

    /// SIGKILL a random worker this often (self-hosted only)
    #[arg(long, value_name = "DUR", value_parser = DurationRange::SCHEDULE.parser())]
    pub kill_every: Option<Duration>,

    /// A request without a complete answer within this counts as a timeout
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = DurationRange::TIMEOUT.parser())]
    pub request_timeout: Duration,

    /// What to drive, each counted and reported apart: `get` (GETs on
    /// keep-alive and on new connections), `post` (POSTs of 16 KiB bodies,
    /// never retried), `pipeline` (2 to 8 GETs in flight per HTTP/1
    /// connection), `stream` (server-sent event streams of a minute at
    /// `/stream`, read to their end, a clean end not a failure; and chunked
    /// downloads of 8 MiB over 5 s at `/download`, which must come whole),
    /// `upload` (POSTs of 4 MiB sent over 3 s each, spanning
    /// reloads), `idle-reuse` (keep-alive connections reused just
    /// after a reload, across the drain grace, and at the server's
    /// keep-alive timeout), `h2c` (HTTP/2 with prior knowledge, 16 streams
    /// per connection; streams refused unprocessed are sent again, counted
    /// apart), `websocket` (WebSockets at `/ws` echoing messages; one
    /// closed with a close frame is opened again, one cut fails), or `all`;
    /// repeat for several
    #[arg(long = "scenario", value_name = "NAME", value_enum)]
    pub scenarios: Vec<crate::check::scenario::ScenarioChoice>,

    /// Run until N reloads have had their outcome, not for --duration:
    /// one line per reload as it ends, and a last line `N reloads, R
    /// requests, F failed` for a pipeline to read
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub reloads: Option<u32>,

    /// Write the report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also write the result as JUnit XML to FILE (a test case for each
    /// scenario and one for the reloads), for CI systems to show
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,

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

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1, like 0.5")),
    }
}

/// `baton serve`'s defaults, as the command line gives them: what a config
/// file's missing keys take.
impl Default for ServeArgs {
    fn default() -> Self {
        match Cli::try_parse_from(["baton", "serve"]) {
            Ok(Cli {
                command: Action::Serve(args),
                ..
            }) => *args,
            _ => unreachable!("`baton serve` alone parses"),
        }
    }
}
