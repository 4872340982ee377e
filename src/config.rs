//! The validated configuration the master runs with, and what it needs to
//! read it again on reload.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::values::{ListenAddr, ListenSpec, ReadyMode, DEFAULT_LISTEN};

/// The instant `after` from `from`, or far in the future if that overflows
/// the clock: time arithmetic on values from outside never panics.
pub fn deadline(from: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    from.checked_add(after)
        .or_else(|| from.checked_add(100 * 365 * crate::values::DAY))
        .unwrap_or(from)
}

/// A listener after defaults are applied: every one has a unique name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedListen {
    pub name: String,
    pub addr: ListenAddr,
}

/// Gives every listener a name and rejects duplicates. Unnamed listeners
/// take the first free name of `http`, `http-1`, `http-2`, …, skipping the
/// names in `taken` (those of inherited listeners). With no listener at all
/// and `default_when_empty`, listens on [`DEFAULT_LISTEN`].
pub fn name_listeners(
    specs: &[ListenSpec],
    taken: &[String],
    default_when_empty: bool,
) -> Result<Vec<NamedListen>, String> {
    let defaulted: Vec<ListenSpec>;
    let specs = if specs.is_empty() && default_when_empty {
        defaulted = vec![DEFAULT_LISTEN.parse().expect("the default address parses")];
        &defaulted
    } else {
        specs
    };
    let mut named: Vec<NamedListen> = Vec::with_capacity(specs.len());
    let is_taken = |name: &str, named: &[NamedListen]| {
        taken.iter().any(|t| t == name) || named.iter().any(|other| other.name == name)
    };
    for spec in specs {
        let name = match &spec.name {
            Some(name) => name.clone(),
            None => std::iter::once("http".to_owned())
                .chain((1..).map(|n| format!("http-{n}")))
                .find(|candidate| !is_taken(candidate, &named))
                .expect("an unbounded sequence has a free name"),
        };
        if named.iter().any(|other| other.name == name) {
            return Err(format!(
                "two listeners are named {name:?}; give each its own name"
            ));
        }
        // Port 0 asks for any free port, so it may be given more than once.
        let any_port = matches!(spec.addr, ListenAddr::Tcp(addr) if addr.port() == 0);
        if !any_port && named.iter().any(|other| other.addr == spec.addr) {
            return Err(format!(
                "{} is given twice as a --listen address",
                spec.addr
            ));
        }
        named.push(NamedListen {
            name,
            addr: spec.addr.clone(),
        });
    }
    Ok(named)
}

/// Everything the master needs to run.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// The `--listen` values; see [`crate::listeners`] for how they combine
    /// with inherited listeners.
    pub listen: Vec<ListenSpec>,
    /// Permissions for Unix socket files baton creates.
    pub unix_mode: Option<u32>,
    /// Where the configuration came from, to read it again on reload; set
    /// with `--config`.
    pub source: Option<ConfigSource>,
    /// `--user`/`--group`: the uid and gid workers run as.
    pub worker_identity: Option<(u32, u32)>,
    /// `--control`: the control socket's path (else a default, see
    /// [`crate::control::default_path`]).
    pub control: Option<PathBuf>,
    pub workers: usize,
    pub backlog: u32,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    /// The built-in worker's options, sent in each worker's hello; `None`
    /// for a COMMAND.
    pub http: Option<crate::http_options::HttpArgs>,
    /// `--native`: workers run a COMMAND that speaks baton's protocol (the
    /// baton-worker library); `--drain-grace`, sent with each drain.
    pub native_drain_grace: Option<Duration>,
    /// `--native`: the client limits (`--header-timeout` and the others)
    /// its hello carries, for what the application leaves unset.
    pub native_limits: Option<crate::protocol::ClientLimits>,
    /// `--native`: the threads per process (`--threads`) its hello carries,
    /// for a program that lets the library build its runtime.
    pub native_threads: Option<u16>,
    /// `--probation`: how long a new generation must run without a crash
    /// after its reload before the reload counts as done; zero for none.
    pub probation: Duration,
    /// `--reload-batch`: how many slots' new workers a rollout starts at
    /// once (see [`crate::master::rollout`]).
    pub reload_batch: usize,
    /// `--health`: how each new worker of a reload is probed before the
    /// old worker of its slot drains.
    pub health: Option<HealthCheck>,
    /// `--admin`: where `/metrics` and the health checks are served.
    pub admin: Option<SocketAddr>,
    /// `--agent`: where HAProxy's agent check is answered.
    pub agent: Option<SocketAddr>,
    /// `--shutdown-delay`: how long SIGTERM keeps serving as a lame duck
    /// before the drain.
    pub shutdown_delay: Duration,
    /// `--max-memory`: a worker whose process group stays above this many
    /// resident bytes is rolled (a new worker first, then the old drains).
    pub max_memory: Option<u64>,
    /// The file workers are started from, resolved once at start-up. It is a
    /// path, not /proc/self/exe: replacing the file and reloading deploys it.
    pub program: PathBuf,
    /// Arguments after the program: the hidden `worker` (built-in) or `exec`
    /// (COMMAND) subcommand, and COMMAND.
    pub worker_args: Vec<OsString>,
    /// Set when workers run a COMMAND rather than the built-in server.
    pub foreign: Option<ForeignWorker>,
    /// Prefix each output line of a program's worker (a COMMAND, native or
    /// not) with its slot and pid.
    pub prefix_output: bool,
    /// Draining workers hand idle connections to the new generation
    /// (`--handoff-connections`).
    pub handoff_connections: bool,
}

/// `--health PATH` and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path (and query) asked for.
    pub path: String,
    /// `--health-status`: what passes.
    pub status: crate::values::StatusRange,
    /// `--health-timeout`: for each probe, reaching the worker included.
    pub timeout: Duration,
    /// `--health-count`: probes a worker must pass, one connection each.
    pub count: u32,
    /// `--health-interval`: every ready worker is probed this often.
    pub interval: Option<Duration>,
    /// `--health-fall`: periodic probes failed in a row that get a worker
    /// replaced.
    pub fall: u32,
}

/// A `--config` file and the command-line arguments merged over it.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: PathBuf,
    pub cli_args: Vec<OsString>,
}

impl MasterConfig {
    /// `--drain-grace` of the built-in worker or a native COMMAND, sent
    /// with each drain so that a reload changes it for workers already
    /// running; `None` for a COMMAND.
    pub fn drain_grace(&self) -> Option<Duration> {
        self.http
            .as_ref()
            .map(|http| http.drain_grace)
            .or(self.native_drain_grace)
    }

    /// Whether workers speak baton's protocol: the built-in worker, or a
    /// `--native` COMMAND.
    pub fn speaks_protocol(&self) -> bool {
        self.foreign.is_none()
    }

    /// Why `new` cannot replace this configuration while baton runs, if it
    /// cannot: listeners and privileges are fixed at start.
    pub fn fixed_changes(&self, new: &MasterConfig) -> Option<String> {
        let mut changed = Vec::new();
        if self.listen != new.listen || self.unix_mode != new.unix_mode {
            changed.push("listen");
        }
        if self.backlog != new.backlog {
            changed.push("backlog");
        }
        if self.control != new.control {
            changed.push("control");
        }
        if self.admin != new.admin {
            changed.push("admin");
        }
        if self.agent != new.agent {
            changed.push("agent");
        }
        if self.worker_identity != new.worker_identity {
            changed.push("user/group");
        }
        (!changed.is_empty()).then(|| {
            format!(
                "{} cannot change while baton runs; restart it for that (with a systemd socket, a restart refuses nothing)",
                changed.join(", ")
            )
        })
    }
}

/// How the master treats workers that run a COMMAND, which does not speak
/// baton's handoff protocol after it starts.
#[derive(Debug, Clone)]
pub struct ForeignWorker {
    pub ready: ReadyMode,
    /// Sent to ask the program to drain; SIGKILL follows at the drain timeout.
    pub drain_signal: nix::sys::signal::Signal,
    /// `--watchdog`: set as WATCHDOG_USEC; a ready worker that sends no
    /// WATCHDOG=1 for this long is replaced.
    pub watchdog: Option<Duration>,
    /// `--rescue-connections`: idle connections are copied for the rescuer
    /// before the drain signal (never for a `--native` program, which
    /// hands its connections over itself).
    pub rescue: bool,
}

/// Finds the file this process was started from, as a path that will name
/// whatever file is there later (symlinks are deliberately not resolved).
pub fn own_program_path() -> std::io::Result<PathBuf> {
    let argv0 = std::env::args_os()
        .next()
        .ok_or_else(|| std::io::Error::other("no argv[0]"))?;
    let argv0 = Path::new(&argv0);
    if argv0.components().count() > 1 {
        return std::path::absolute(argv0);
    }
    match search_path(argv0) {
        Some(found) => std::path::absolute(found),
        None => Err(std::io::Error::other(format!(
            "{} is not in $PATH",
            argv0.display()
        ))),
    }
}

/// The first executable file named `name` in a directory of `$PATH`, as
/// `execvp` would find it.
pub fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file someone may execute.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn listeners_get_unique_names() {
        let named = name_listeners(&[], &[], true).unwrap();
        assert_eq!(named[0].name, "http");
        assert_eq!(named[0].addr.to_string(), DEFAULT_LISTEN);
        let specs: Vec<ListenSpec> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let named = name_listeners(&specs, &[], true).unwrap();
        assert_eq!(named[1].name, "http-1");
        let named = name_listeners(&specs, &["http".to_owned()], false).unwrap();
        assert_eq!(
            (named[0].name.as_str(), named[1].name.as_str()),
            ("http-1", "http-2")
        );
        assert!(name_listeners(&[], &[], false).unwrap().is_empty());
        let dup: Vec<ListenSpec> = vec![
            "a=127.0.0.1:1".parse().unwrap(),
            "a=127.0.0.1:2".parse().unwrap(),
        ];
        assert!(name_listeners(&dup, &[], true).is_err());
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = tokio::time::Instant::now();
        assert!(deadline(now, Duration::MAX) > now);
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
