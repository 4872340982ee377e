//! Settings: the grammar of command-line values (`--listen`, durations) and the
//! validated configuration the master runs with.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The address baton listens on when no `--listen` is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `HOST:PORT` or `[IPv6]:PORT`.
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() || path.contains('\0') {
                return Err(format!(
                    "{s:?} names no socket path; write it like unix:/run/app.sock"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "{s:?} is not an address to listen on; write HOST:PORT with an IP address, \
                 like 127.0.0.1:8080 or [::1]:8080, or unix:PATH"
            )
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One `--listen [NAME=]ADDR` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// The name workers know the listener by; `None` takes a default.
    pub name: Option<String>,
    pub addr: ListenAddr,
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A name has no ':' or '/', so the first '=' before either ends it.
        let (name, addr) = match s.split_once('=') {
            Some((name, addr)) if !name.contains([':', '/']) => {
                validate_name(name)?;
                (Some(name.to_owned()), addr)
            }
            _ => (None, s),
        };
        Ok(ListenSpec {
            name,
            addr: addr.parse()?,
        })
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}={}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Listener names travel in `LISTEN_FDNAMES`, which is colon-separated, so
/// they are kept to a safe alphabet.
fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a listener name; use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Parses file permissions in octal, such as `660` or `0660`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("{s:?} is not a file mode; write it in octal, like 0660"))
}

/// Parses a duration such as `500ms`, `3s` or `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write it like 500ms, 3s or 1m"))
}

/// The range a duration option accepts. Every duration baton takes is
/// bounded: a huge one would overflow the clock when added to it, and a zero
/// one makes most timeouts fail everything they guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

impl DurationRange {
    /// Timeouts that guard something: never zero, at most an hour.
    pub const TIMEOUT: Self = Self::new(Duration::from_millis(10), HOUR);
    /// Client timeouts of the built-in server: at least 100 ms (less would
    /// close connections of healthy clients on a busy machine), at most an
    /// hour.
    pub const CLIENT_TIMEOUT: Self = Self::new(Duration::from_millis(100), HOUR);
    /// How long a drain may take: never zero (that would be a kill), at most
    /// a day.
    pub const DRAIN: Self = Self::new(Duration::from_millis(10), DAY);
    /// Waits where zero means "at once": at most an hour.
    pub const WAIT: Self = Self::new(Duration::ZERO, HOUR);
    /// Schedules of the check, where zero means "never": at most a day.
    pub const SCHEDULE: Self = Self::new(Duration::ZERO, DAY);
    /// How long the check runs.
    pub const RUN: Self = Self::new(Duration::from_millis(100), DAY);

    pub const fn new(min: Duration, max: Duration) -> Self {
        DurationRange { min, max }
    }

    /// Parses `s` and checks it against this range.
    pub fn parse(self, s: &str) -> Result<Duration, String> {
        let duration = parse_duration(s)?;
        if duration < self.min || duration > self.max {
            return Err(format!(
                "{s:?} is out of range: give a duration from {} to {}",
                humantime::format_duration(self.min),
                humantime::format_duration(self.max)
            ));
        }
        Ok(duration)
    }

    /// A clap value parser for this range.
    pub fn parser(self) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
        move |s| self.parse(s)
    }
}

/// `--max-memory`: a size with a unit (`512MiB`, `2GiB`, `500MB`; `M` and
/// `G` are powers of 1000, `MiB` and `GiB` of 1024), at least 1 MiB.
pub fn parse_memory_limit(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write it like 512MiB or 2GiB"))?;
    if size.as_u64() < 1 << 20 {
        return Err(format!("{text:?} is below the least limit, 1MiB"));
    }
    Ok(size.as_u64())
}

/// A duration as an argument that parses back to the same value.
pub fn duration_arg(duration: Duration) -> OsString {
    humantime::format_duration(duration).to_string().into()
}

/// The instant `after` from `from`, or far in the future if that overflows
/// the clock: time arithmetic on values from outside never panics.
pub fn deadline(from: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    from.checked_add(after)
        .or_else(|| from.checked_add(100 * 365 * DAY))
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
    /// `--drain-grace` of the built-in worker, sent with each drain so that
    /// a reload changes it for workers already running; `None` for a
    /// COMMAND.
    pub drain_grace: Option<Duration>,
    /// `--probation`: how long a new generation must run without a crash
    /// after its reload before the reload counts as done; zero for none.
    pub probation: Duration,
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
    /// (COMMAND) subcommand and its options.
    pub worker_args: Vec<OsString>,
    /// Set when workers run a COMMAND rather than the built-in server.
    pub foreign: Option<ForeignWorker>,
}

/// A `--config` file and the command-line arguments merged over it.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: PathBuf,
    pub cli_args: Vec<OsString>,
}

impl MasterConfig {
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
    /// Prefix each output line with the worker's slot and pid.
    pub prefix_output: bool,
    /// `--watchdog`: set as WATCHDOG_USEC; a ready worker that sends no
    /// WATCHDOG=1 for this long is replaced.
    pub watchdog: Option<Duration>,
}

/// When a COMMAND worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyMode {
    /// Whichever comes first of `Notify` and `Listening`.
    Auto,
    /// It sends READY=1 on its NOTIFY_SOCKET.
    Notify,
    /// Its process tree serves every listener it was given, as /proc
    /// shows (see [`crate::procfs::tree_serves`]).
    Listening,
    /// It has stayed alive this long.
    Delay(Duration),
}

impl FromStr for ReadyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ReadyMode::Auto),
            "notify" => Ok(ReadyMode::Notify),
            "listening" => Ok(ReadyMode::Listening),
            _ => match s.strip_prefix("delay:") {
                Some(duration) => DurationRange::WAIT.parse(duration).map(ReadyMode::Delay),
                None => Err(format!(
                    "{s:?} is not a readiness mode; use auto, notify, listening or delay:DUR (like delay:500ms)"
                )),
            },
        }
    }
}

/// Parses a signal name such as `SIGTERM`, `TERM` or `sigquit`.
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, String> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse()
        .map_err(|_| format!("{s:?} is not a signal name; write it like SIGTERM or INT"))
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
    fn memory_limits_take_units_and_refuse_nonsense() {
        assert_eq!(parse_memory_limit("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory_limit("2GB"), Ok(2_000_000_000));
        assert!(parse_memory_limit("100KiB").unwrap_err().contains("least"));
        assert!(parse_memory_limit("-1M")
            .unwrap_err()
            .contains("not a size"));
        assert!(parse_memory_limit("lots").unwrap_err().contains("512MiB"));
    }

    #[test]
    fn listen_grammar() {
        let spec: ListenSpec = "api=[::1]:9000".parse().unwrap();
        assert_eq!(spec.name.as_deref(), Some("api"));
        assert_eq!(spec.addr, ListenAddr::Tcp("[::1]:9000".parse().unwrap()));
        let spec: ListenSpec = "unix:/run/a=b.sock".parse().unwrap();
        assert_eq!(spec.name, None);
        assert_eq!(spec.addr, ListenAddr::Unix("/run/a=b.sock".into()));
        let spec: ListenSpec = "sock=unix:/run/app.sock".parse().unwrap();
        assert_eq!(spec.name.as_deref(), Some("sock"));
        assert!("unix:".parse::<ListenSpec>().is_err());
        assert!("localhost:80".parse::<ListenSpec>().is_err());
        assert!("a:b=127.0.0.1:1".parse::<ListenSpec>().is_err());
        assert!("127.0.0.1".parse::<ListenSpec>().is_err());
    }

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
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("3x").unwrap_err().contains("500ms"));
    }

    #[test]
    fn durations_out_of_range_say_the_range() {
        let range = DurationRange::TIMEOUT;
        assert_eq!(range.parse("2s").unwrap(), Duration::from_secs(2));
        for bad in ["0s", "2h", "500000000000years", "18446744073709551615s"] {
            let error = range.parse(bad).unwrap_err();
            assert!(error.contains("from 10ms to 1h"), "{bad}: {error}");
        }
        assert!(range.parse("-5s").unwrap_err().contains("not a duration"));
        assert!("delay:0s".parse::<ReadyMode>().is_ok());
        assert!("delay:2days".parse::<ReadyMode>().is_err());
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
