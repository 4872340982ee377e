//! Logging set-up: stderr, as text for people or JSON for log shippers,
//! filtered by `RUST_LOG`.
//!
//! A typo in `RUST_LOG` must never turn logging off: `warning` or `inf`
//! would read as the name of a target, show that target alone and hide
//! every error. A value that is not a level or `target=level` directives
//! is reported, and `info` is used instead.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Layer;
use tracing_subscriber::prelude::*;
use tracing_subscriber::Registry;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL target: message key=value …`
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`,
    /// and the event's fields (`event`, `pid`, `slot`, `generation`, …) at
    /// the top level; `span` holds the enclosing worker or reload span.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The levels `RUST_LOG` may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Installs the logger for this process. `rust_log` is the `RUST_LOG`
/// value; a bad one is reported (as a log line, when `report`: the
/// processes baton starts inherit the value, and the master has said it)
/// and `info` used instead.
pub fn init(format: LogFormat, rust_log: Option<&str>, report: bool) {
    let (filter, problem) = match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => (default_filter(), None),
        Some(value) => match filter(value) {
            Ok(filter) => (filter, None),
            Err(why) => (
                default_filter(),
                Some(format!(
                    "ignoring RUST_LOG={value:?}: {why}; logging at info"
                )),
            ),
        },
    };
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        ),
        LogFormat::Json => Box::new(json_lines(std::io::stderr)),
    };
    tracing_subscriber::registry()
        .with(lines)
        .with(filter)
        .init();
    if let Some(problem) = problem.filter(|_| report) {
        tracing::warn!("{problem}");
    }
}

/// Log lines as JSON objects, one a line, to `writer`: the event's fields
/// at the top level, the current span's under `span`.
pub fn json_lines<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
}

fn default_filter() -> Targets {
    Targets::new().with_default(Level::INFO)
}

/// A level, or `target=level` directives separated by commas.
fn filter(value: &str) -> Result<Targets, String> {
    for directive in value.split(',').map(str::trim) {
        let level = match directive.split_once('=') {
            Some((target, _)) if target.trim().is_empty() => {
                return Err(format!("{directive:?} names no target"));
            }
            Some((_, level)) => level.trim(),
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{level:?} is not a level ({})", LEVELS.join(", ")));
        }
    }
    value.parse::<Targets>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_directives_are_filters() {
        for good in [
            "info",
            "WARN",
            "off",
            "baton=debug",
            "baton::master=trace,warn",
        ] {
            assert!(filter(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn typos_are_refused_rather_than_read_as_targets() {
        for (bad, says) in [
            ("warning", "\"warning\" is not a level"),
            ("inf", "\"inf\" is not a level"),
            ("=", "names no target"),
            ("info,", "\"\" is not a level"),
            ("baton=loud", "\"loud\" is not a level"),
        ] {
            let error = filter(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
