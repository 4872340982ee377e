//! `--config FILE`: every `baton serve` option in TOML, keys named as the
//! long options with underscores (`workers = 4`, `drain_timeout = "30s"`,
//! `listen = ["127.0.0.1:8080"]`, `command = ["node", "server.js"]`).
//!
//! The file deserialises into the same [`ServeArgs`] the command line
//! fills, each value read by the same function as its flag (see
//! [`crate::values::text`]); then the options given on the command line
//! replace the file's, field by field. Every key is read on its own, so
//! that `serve -t` lists every problem and `serve` and a reload stop at the
//! first of the same list. The master reads the file again on every reload.

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};
use serde::Deserialize;

use crate::cli::{Cli, ServeArgs};

/// The keys that take a list.
const LISTS: [&str; 2] = ["listen", "command"];

/// Every key the file may hold: each `serve` option's long name with
/// underscores, from the command line's own definition (so the two cannot
/// drift), and `command`; with whether it is listed to users (hidden
/// options are not).
fn keys() -> Vec<(String, bool)> {
    let mut keys: Vec<(String, bool)> = serve_command()
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.replace('-', "_"), !arg.is_hide_set())))
        .filter(|(key, _)| !["config", "test_config", "help"].contains(&key.as_str()))
        .collect();
    keys.push(("command".to_owned(), true));
    keys
}

/// `baton serve`'s own definition.
fn serve_command() -> clap::Command {
    Cli::command()
        .find_subcommand("serve")
        .expect("baton has a serve subcommand")
        .clone()
}

/// Reads `file` and merges `cli_args` (the arguments after `serve`) over
/// it: the serve options they make together, or the first problem.
pub fn load(file: &Path, cli_args: &[OsString]) -> Result<ServeArgs, String> {
    let (problems, args) = check(file, cli_args);
    match (problems.into_iter().next(), args) {
        (None, Some(args)) => Ok(args),
        (Some(problem), _) => Err(problem),
        (None, None) => unreachable!("no options without a problem"),
    }
}

/// Every problem of `file` merged under `cli_args`, each key read on its
/// own (so that one bad value does not hide the next), and the serve
/// options that the keys without a problem make with the command line.
pub fn check(file: &Path, cli_args: &[OsString]) -> (Vec<String>, Option<ServeArgs>) {
    let table = match read_table(file) {
        Ok(table) => table,
        Err(problem) => return (vec![problem], None),
    };
    let known = keys();
    let mut problems = Vec::new();
    let mut good = toml::Table::new();
    for (key, value) in table {
        let alone: toml::Table = [(key.clone(), value.clone())].into_iter().collect();
        let problem = if !known.iter().any(|(k, _)| *k == key) {
            let listed: Vec<&str> = known
                .iter()
                .filter(|(_, listed)| *listed)
                .map(|(k, _)| k.as_str())
                .collect();
            Some(format!(
                "unknown key {key:?}; keys are the serve options: {}",
                listed.join(", ")
            ))
        } else if LISTS.contains(&key.as_str()) && !value.is_array() {
            Some(format!("{key} is a list, like {key} = [{}]", value))
        } else {
            ServeArgs::deserialize(alone)
                .err()
                .map(|e| format!("{key}: {}", e.message().trim()))
        };
        match problem {
            Some(problem) => problems.push(format!("{}: {problem}", file.display())),
            None => {
                good.insert(key, value);
            }
        }
    }
    let from_file = ServeArgs::deserialize(good).expect("each key was read alone");
    match over(from_file, cli_args) {
        Ok(args) => (problems, Some(args)),
        Err(problem) => {
            problems.push(problem);
            (problems, None)
        }
    }
}

/// `args` with what `cli_args` gives put over it, field by field: only the
/// options the command line names (parsed without defaults, so that a
/// default never hides the file's value).
fn over(mut args: ServeArgs, cli_args: &[OsString]) -> Result<ServeArgs, String> {
    let given = serve_command()
        .mut_args(|arg| arg.default_value(None::<&str>))
        .try_get_matches_from(
            std::iter::once(OsString::from("serve")).chain(cli_args.iter().cloned()),
        )
        .map_err(|e| format!("invalid options: {}", first_line(&e)))?;
    // A switch reads as false when not given, whatever the defaults: the
    // file's `native = true` stands unless the command line sets it too.
    let native = args.native;
    args.update_from_arg_matches(&given)
        .map_err(|e| format!("invalid options: {}", first_line(&e)))?;
    args.native |= native;
    Ok(args)
}

/// The first line of a clap error, without its "error: ".
fn first_line(error: &clap::Error) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

fn read_table(file: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the config file {}: {e}", file.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{} is not valid TOML: {e}", file.display()))?;
    if table.is_empty() {
        // Most often a file caught while an editor or a deploy rewrites it:
        // applying it would silently reset every option to its default.
        return Err(format!(
            "{} sets no option; if it is being rewritten, write the new file beside it and rename it over this one",
            file.display()
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::Path {
        tempfile_path::Path::new(text)
    }

    mod tempfile_path {
        pub struct Path(pub std::path::PathBuf);
        impl Path {
            pub fn new(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "baton-config-{}-{}.toml",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::write(&path, text).unwrap();
                Path(path)
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let file = write("workers = 4\nbacklog = 77\ndrain_timeout = \"5s\"\nlisten = [\"127.0.0.1:9000\", \"b=127.0.0.1:9001\"]\ncommand = [\"node\", \"server.js\"]\n");
        let args = load(&file.0, &["--workers".into(), "2".into()]).unwrap();
        assert_eq!(args.workers, Some(2));
        assert_eq!(args.backlog, 77, "a flag's default never hides the file");
        assert_eq!(args.drain_timeout, std::time::Duration::from_secs(5));
        assert_eq!(args.listen.len(), 2);
        assert_eq!(args.command, ["node", "server.js"]);
        let args = load(&file.0, &["--".into(), "python3".into()]).unwrap();
        assert_eq!(args.command, ["python3"]);
    }

    /// One value per serve option, none of them its default.
    const SAMPLES: [(&str, &str); 38] = [
        ("listen", "a=127.0.0.1:9000"),
        ("unix_mode", "0640"),
        ("user", "nobody"),
        ("group", "nogroup"),
        ("control", "/tmp/baton-sample.sock"),
        ("workers", "3"),
        ("backlog", "77"),
        ("ready_timeout", "1500ms"),
        ("drain_timeout", "2m"),
        ("probation", "0s"),
        ("reload_batch", "4"),
        ("health", "/healthz?deep=1"),
        ("health_status", "200-399"),
        ("health_timeout", "2s"),
        ("health_count", "5"),
        ("health_interval", "2s"),
        ("health_fall", "4"),
        ("max_memory", "1GiB"),
        ("admin", "127.0.0.1:9100"),
        ("agent", "127.0.0.1:9101"),
        ("shutdown_delay", "3s"),
        ("work", "7"),
        ("threads", "2"),
        ("drain_grace", "4s"),
        ("header_timeout", "5s"),
        ("keepalive_timeout", "6s"),
        ("body_timeout", "7s"),
        ("http2_ping", "8s"),
        ("accept", "kernel"),
        ("fault", "exit-on-drain"),
        ("ready", "delay:250ms"),
        ("drain_signal", "SIGINT"),
        ("watchdog", "9s"),
        ("output", "raw"),
        ("handoff_connections", "off"),
        ("rescue_connections", "off"),
        ("native", "true"),
        ("command", "node"),
    ];

    /// `key = value` as the file would hold it.
    fn as_key(key: &str, value: &str) -> (String, toml::Value) {
        let value = if key == "native" {
            toml::Value::Boolean(value == "true")
        } else {
            toml::Value::String(value.to_owned())
        };
        let value = if LISTS.contains(&key) {
            toml::Value::Array(vec![value])
        } else {
            value
        };
        (key.to_owned(), value)
    }

    #[test]
    fn every_serve_option_reads_the_same_as_a_flag_and_as_a_key() {
        for (key, _) in keys() {
            assert!(
                SAMPLES.iter().any(|(k, _)| *k == key),
                "no sample for {key}"
            );
        }
        for (key, value) in SAMPLES {
            // --group needs --user: both ways alike.
            let mut words: Vec<OsString> = Vec::new();
            let mut table = toml::Table::new();
            if key != "user" {
                words.push("--user=nobody".into());
                table.extend([as_key("user", "nobody")]);
            }
            if key == "command" {
                words.extend(["--".into(), value.into()]);
            } else if key == "native" {
                // A switch, and only with a COMMAND.
                words.extend(["--native".into(), "--".into(), "app".into()]);
                table.extend([as_key("command", "app")]);
            } else {
                words.push(format!("--{}={value}", key.replace('_', "-")).into());
            }
            table.extend([as_key(key, value)]);
            let by_flag = over(ServeArgs::default(), &words).unwrap();
            let by_key = ServeArgs::deserialize(table).unwrap();
            assert_eq!(by_flag, by_key, "{key}");
            let default = ServeArgs {
                user: (key != "user").then(|| "nobody".to_owned()),
                ..Default::default()
            };
            assert_ne!(by_key, default, "{key}: the sample is the default");
        }
    }

    #[test]
    fn the_options_written_as_a_file_read_back_the_same() {
        let table: toml::Table = SAMPLES
            .iter()
            .map(|(key, value)| as_key(key, value))
            .collect();
        let args = ServeArgs::deserialize(table).unwrap();
        let text = toml::to_string(&args).unwrap();
        let file = write(&text);
        assert_eq!(load(&file.0, &[]).unwrap(), args, "{text}");
        let defaults = toml::to_string(&ServeArgs::default()).unwrap();
        assert_eq!(
            load(&write(&defaults).0, &[]).unwrap(),
            ServeArgs::default()
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let file = write("workers = \"many\"\n");
        let said = load(&file.0, &[]).unwrap_err();
        assert!(
            said.contains("workers: \"many\" is not a whole number from 1 to 1024"),
            "{said}"
        );
        let file = write("wrokers = 4\n");
        assert!(load(&file.0, &[])
            .unwrap_err()
            .contains("unknown key \"wrokers\""));
        let file = write("workers = [1, 2]\n");
        assert!(load(&file.0, &[]).unwrap_err().contains("one value"));
        let file = write("workers = \n");
        assert!(load(&file.0, &[]).unwrap_err().contains("not valid TOML"));
        let file = write("# nothing yet\n");
        assert!(load(&file.0, &[]).unwrap_err().contains("sets no option"));
        let file = write("ready_timeout = \"500000000000years\"\n");
        assert!(load(&file.0, &[]).unwrap_err().contains("out of range"));
        let file = write("config = \"other.toml\"\n");
        assert!(load(&file.0, &[]).unwrap_err().contains("unknown key"));
    }

    #[test]
    fn every_serve_option_is_a_key_and_hidden_ones_are_not_listed() {
        let file = write("accept = \"kernel\"\nmax_memory = \"1GiB\"\nprobation = \"0s\"\n");
        let args = load(&file.0, &[]).unwrap();
        assert_eq!(args.probation, std::time::Duration::ZERO);
        let listed = load(&write("nope = 1\n").0, &[]).unwrap_err();
        for key in ["workers", "accept", "watchdog", "max_memory", "command"] {
            assert!(listed.contains(key), "{key} missing from {listed}");
        }
        assert!(!listed.contains("fault"), "{listed}");
        assert!(!listed.contains("config,"), "{listed}");
    }
}
