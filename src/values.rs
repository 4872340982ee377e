//! The grammar of option values: listen addresses, durations and their
//! ranges, sizes, file modes, signals, readiness modes. The command line
//! (clap's value parsers) and the config file (serde) parse every value
//! through these same functions.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
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

pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(24 * 3600);

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
    /// It wrote a newline to this descriptor (s6's notification-fd): the
    /// write end of a pipe the master reads.
    Fd(i32),
}

/// The descriptors `--ready fd:N` may name: above stdio and below where
/// the exec stage parks descriptors while it moves them.
pub const READY_FDS: std::ops::RangeInclusive<i32> = 3..=99;

impl FromStr for ReadyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ReadyMode::Auto),
            "notify" => Ok(ReadyMode::Notify),
            "listening" => Ok(ReadyMode::Listening),
            _ => {
                if let Some(duration) = s.strip_prefix("delay:") {
                    return DurationRange::WAIT.parse(duration).map(ReadyMode::Delay);
                }
                if let Some(fd) = s.strip_prefix("fd:") {
                    return match fd.parse::<i32>() {
                        Ok(fd) if READY_FDS.contains(&fd) => Ok(ReadyMode::Fd(fd)),
                        _ => Err(format!(
                            "{s:?} names no descriptor a program can be given; use fd:N with N from {} to {}",
                            READY_FDS.start(),
                            READY_FDS.end()
                        )),
                    };
                }
                Err(format!(
                    "{s:?} is not a readiness mode; use auto, notify, listening, delay:DUR (like delay:500ms) or fd:N"
                ))
            }
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
        assert_eq!("fd:5".parse::<ReadyMode>(), Ok(ReadyMode::Fd(5)));
        for wrong in ["fd:2", "fd:100", "fd:x", "fd:"] {
            assert!(wrong.parse::<ReadyMode>().is_err(), "{wrong}");
        }
    }
}

/// Parses a whole number from `min` to `max`.
fn parse_count<T>(s: &str, min: T, max: T) -> Result<T, String>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
{
    match s.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("{s:?} is not a whole number from {min} to {max}")),
    }
}

/// `--workers`, and `--reload-batch` (as many as there may be workers):
/// 1 to 1024.
pub fn parse_workers(s: &str) -> Result<u16, String> {
    parse_count(s, 1, 1024)
}

/// `--backlog`: 1 to 65535.
pub fn parse_backlog(s: &str) -> Result<u32, String> {
    parse_count(s, 1, 65535)
}

/// `--threads`: 1 to 256.
pub fn parse_threads(s: &str) -> Result<u16, String> {
    parse_count(s, 1, 256)
}

/// `--health`: the path (and query) a health probe asks for.
pub fn parse_health_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} is not a request path; write it like /healthz or /status?full=1"
        ));
    }
    Ok(s.to_owned())
}

/// `--health-count`: 1 to 100 probes.
pub fn parse_health_count(s: &str) -> Result<u32, String> {
    parse_count(s, 1, 100)
}

/// `--health-status`: the HTTP statuses a health probe passes with: a
/// class (`2xx`), one status (`204`) or a range (`200-399`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    /// Any 2xx status: what `--health-status` is unless given.
    pub const SUCCESS: StatusRange = StatusRange {
        low: 200,
        high: 299,
    };

    pub fn contains(self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let status = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| (100..=599).contains(n))
        };
        let range = if let Some(class) = s.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok()) {
            (1..=5).contains(&class).then(|| StatusRange {
                low: class * 100,
                high: class * 100 + 99,
            })
        } else if let Some((low, high)) = s.split_once('-') {
            status(low)
                .zip(status(high))
                .filter(|(low, high)| low <= high)
                .map(|(low, high)| StatusRange { low, high })
        } else {
            status(s).map(|n| StatusRange { low: n, high: n })
        };
        range.ok_or_else(|| {
            format!("{s:?} is not an HTTP status; write a class like 2xx, a status like 204 or a range like 200-399")
        })
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.low, self.high) {
            (low, high) if low % 100 == 0 && high == low + 99 => write!(f, "{}xx", low / 100),
            (low, high) if low == high => write!(f, "{low}"),
            (low, high) => write!(f, "{low}-{high}"),
        }
    }
}

/// `--work`: any count.
pub fn parse_work(s: &str) -> Result<u64, String> {
    parse_count(s, 0, u64::MAX)
}

/// A duration written so that [`parse_duration`] reads it back.
pub fn show_duration(duration: &Duration) -> String {
    humantime::format_duration(*duration).to_string()
}

impl fmt::Display for ReadyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyMode::Auto => f.write_str("auto"),
            ReadyMode::Notify => f.write_str("notify"),
            ReadyMode::Listening => f.write_str("listening"),
            ReadyMode::Delay(d) => write!(f, "delay:{}", show_duration(d)),
            ReadyMode::Fd(fd) => write!(f, "fd:{fd}"),
        }
    }
}

/// How the config file (and the worker's hello) writes option values:
/// `serde_with` adapters, each reading a value with the same function the
/// command line's parser calls, and writing it so that it reads back.
pub mod text {
    use std::time::Duration;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_with::{DeserializeAs, SerializeAs};

    use super::*;

    /// A value as text; a TOML number or boolean is taken as its text.
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one value (text, a number or true/false), not a list or a table")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
                Ok(text.to_owned())
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<String, E> {
                Ok(b.to_string())
            }
        }
        deserializer.deserialize_any(Text)
    }

    /// Declares an adapter for `$ty` that reads with `$parse` and writes
    /// with `$show`.
    macro_rules! adapter {
        ($(#[$doc:meta])* $name:ident: $ty:ty, $parse:expr, $show:expr) => {
            $(#[$doc])*
            pub struct $name;

            impl SerializeAs<$ty> for $name {
                fn serialize_as<S: Serializer>(value: &$ty, serializer: S) -> Result<S::Ok, S::Error> {
                    let show: fn(&$ty) -> String = $show;
                    show(value).serialize(serializer)
                }
            }

            impl<'de> DeserializeAs<'de, $ty> for $name {
                fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                    let parse: fn(&str) -> Result<$ty, String> = $parse;
                    parse(&read(deserializer)?).map_err(D::Error::custom)
                }
            }
        };
    }

    adapter!(
        /// A timeout: [`DurationRange::TIMEOUT`].
        Timeout: Duration, |s| DurationRange::TIMEOUT.parse(s), show_duration
    );
    adapter!(
        /// A client timeout of the built-in server: [`DurationRange::CLIENT_TIMEOUT`].
        ClientTimeout: Duration, |s| DurationRange::CLIENT_TIMEOUT.parse(s), show_duration
    );
    adapter!(
        /// A drain's length: [`DurationRange::DRAIN`].
        Drain: Duration, |s| DurationRange::DRAIN.parse(s), show_duration
    );
    adapter!(
        /// A wait where zero means at once: [`DurationRange::WAIT`].
        Wait: Duration, |s| DurationRange::WAIT.parse(s), show_duration
    );
    adapter!(
        /// A memory size: [`parse_memory_limit`].
        Memory: u64, parse_memory_limit, |bytes| format!("{bytes}B")
    );
    adapter!(
        /// A signal name: [`parse_signal`].
        SignalName: nix::sys::signal::Signal, parse_signal, |signal| signal.as_str().to_owned()
    );
    adapter!(
        /// `--workers`: [`parse_workers`].
        Workers: u16, parse_workers, u16::to_string
    );
    adapter!(
        /// `--backlog`: [`parse_backlog`].
        Backlog: u32, parse_backlog, u32::to_string
    );
    adapter!(
        /// `--threads`: [`parse_threads`].
        Threads: u16, parse_threads, u16::to_string
    );
    adapter!(
        /// `--health`: [`parse_health_path`].
        HealthPath: String, parse_health_path, String::clone
    );
    adapter!(
        /// `--health-count`: [`parse_health_count`].
        HealthCount: u32, parse_health_count, u32::to_string
    );
    adapter!(
        /// `--health-status`: a [`StatusRange`].
        Statuses: StatusRange, |s| s.parse(), StatusRange::to_string
    );
    adapter!(
        /// `--work`: [`parse_work`].
        Work: u64, parse_work, u64::to_string
    );
    adapter!(
        /// A listener: [`ListenSpec`]'s grammar.
        Listen: ListenSpec, str::parse, ListenSpec::to_string
    );
    adapter!(
        /// A readiness mode: [`ReadyMode`]'s grammar.
        Ready: ReadyMode, str::parse, ReadyMode::to_string
    );
    adapter!(
        /// A socket address, `HOST:PORT`.
        Addr: SocketAddr,
        |s| s.parse().map_err(|_| format!("{s:?} is not an address; write it like 127.0.0.1:9100")),
        SocketAddr::to_string
    );

    /// File permissions: octal text (`"0660"`), or a TOML octal number
    /// (`0o660`), read by [`parse_mode`].
    pub struct Mode;

    impl SerializeAs<u32> for Mode {
        fn serialize_as<S: Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
            format!("{mode:o}").serialize(serializer)
        }
    }

    impl<'de> DeserializeAs<'de, u32> for Mode {
        fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Written {
                Text(String),
                Number(u32),
            }
            let text = match Written::deserialize(deserializer)? {
                Written::Text(text) => text,
                Written::Number(n) => format!("{n:o}"),
            };
            parse_mode(&text).map_err(D::Error::custom)
        }
    }

    /// One of a clap `ValueEnum`'s names, read by clap's own `from_str`.
    pub struct Named;

    impl<T: clap::ValueEnum> SerializeAs<T> for Named {
        fn serialize_as<S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
            let name = value
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default();
            name.serialize(serializer)
        }
    }

    impl<'de, T: clap::ValueEnum> DeserializeAs<'de, T> for Named {
        fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
            let text = read(deserializer)?;
            T::from_str(&text, false).map_err(|_| {
                let names: Vec<String> = T::value_variants()
                    .iter()
                    .filter_map(|v| Some(v.to_possible_value()?.get_name().to_owned()))
                    .collect();
                D::Error::custom(format!("{text:?} is not one of {}", names.join(", ")))
            })
        }
    }

    /// An argument of COMMAND: text.
    pub struct Arg;

    impl SerializeAs<std::ffi::OsString> for Arg {
        fn serialize_as<S: Serializer>(
            arg: &std::ffi::OsString,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match arg.to_str() {
                Some(text) => text.serialize(serializer),
                None => Err(serde::ser::Error::custom(format!(
                    "{arg:?} is not UTF-8, which a config file cannot hold"
                ))),
            }
        }
    }

    impl<'de> DeserializeAs<'de, std::ffi::OsString> for Arg {
        fn deserialize_as<D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<std::ffi::OsString, D::Error> {
            String::deserialize(deserializer).map(Into::into)
        }
    }
}
