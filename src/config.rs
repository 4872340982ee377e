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

/// One `--listen [NAME=]ADDR` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// The name workers know the listener by; `None` takes a default.
    pub name: Option<String>,
    pub addr: SocketAddr,
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = match s.split_once('=') {
            Some((name, addr)) => {
                validate_name(name)?;
                (Some(name.to_owned()), addr)
            }
            None => (None, s),
        };
        let addr = addr.parse::<SocketAddr>().map_err(|_| {
            format!(
                "{addr:?} is not an address to listen on; write HOST:PORT with an IP address, \
                 like 127.0.0.1:8080 or [::1]:8080"
            )
        })?;
        Ok(ListenSpec { name, addr })
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

/// Parses a duration such as `500ms`, `3s` or `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write it like 500ms, 3s or 1m"))
}

/// A listener after defaults are applied: every one has a unique name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedListen {
    pub name: String,
    pub addr: SocketAddr,
}

/// Gives every listener a name (`http`, then `http-1`, `http-2`, … for
/// unnamed ones) and rejects duplicates.
pub fn name_listeners(specs: &[ListenSpec]) -> Result<Vec<NamedListen>, String> {
    let defaulted: Vec<ListenSpec>;
    let specs = if specs.is_empty() {
        defaulted = vec![DEFAULT_LISTEN.parse().expect("the default address parses")];
        &defaulted
    } else {
        specs
    };
    let mut named: Vec<NamedListen> = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let name = spec.name.clone().unwrap_or_else(|| match index {
            0 => "http".to_owned(),
            n => format!("http-{n}"),
        });
        if named.iter().any(|other| other.name == name) {
            return Err(format!(
                "two listeners are named {name:?}; give each its own name"
            ));
        }
        if named.iter().any(|other| other.addr == spec.addr) {
            return Err(format!(
                "{} is given twice as a --listen address",
                spec.addr
            ));
        }
        named.push(NamedListen {
            name,
            addr: spec.addr,
        });
    }
    Ok(named)
}

/// Everything the master needs to run.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub listeners: Vec<NamedListen>,
    pub workers: usize,
    pub backlog: u32,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    /// The file workers are started from, resolved once at start-up. It is a
    /// path, not /proc/self/exe: replacing the file and reloading deploys it.
    pub program: PathBuf,
    /// Arguments after the program: the hidden `worker` subcommand and its
    /// options.
    pub worker_args: Vec<OsString>,
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
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(argv0);
        if is_executable(&candidate) {
            return std::path::absolute(candidate);
        }
    }
    Err(std::io::Error::other(format!(
        "{} is not in $PATH",
        argv0.display()
    )))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_grammar() {
        let spec: ListenSpec = "api=[::1]:9000".parse().unwrap();
        assert_eq!(spec.name.as_deref(), Some("api"));
        assert_eq!(spec.addr, "[::1]:9000".parse().unwrap());
        assert!("localhost:80".parse::<ListenSpec>().is_err());
        assert!("a:b=127.0.0.1:1".parse::<ListenSpec>().is_err());
        assert!("127.0.0.1".parse::<ListenSpec>().is_err());
    }

    #[test]
    fn listeners_get_unique_names() {
        let named = name_listeners(&[]).unwrap();
        assert_eq!(named[0].name, "http");
        assert_eq!(named[0].addr.to_string(), DEFAULT_LISTEN);
        let specs: Vec<ListenSpec> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let named = name_listeners(&specs).unwrap();
        assert_eq!(named[1].name, "http-1");
        let dup: Vec<ListenSpec> = vec![
            "a=127.0.0.1:1".parse().unwrap(),
            "a=127.0.0.1:2".parse().unwrap(),
        ];
        assert!(name_listeners(&dup).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("3x").unwrap_err().contains("500ms"));
    }
}
