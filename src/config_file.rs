//! `--config FILE`: every `baton serve` option in TOML, keys named as the
//! long options with underscores (`workers = 4`, `drain_timeout = "30s"`,
//! `listen = ["127.0.0.1:8080"]`, `command = ["node", "server.js"]`).
//!
//! The file is turned into command-line arguments and parsed by the same
//! parser as the command line, so both are validated alike; an option given
//! on the command line replaces the file's. The master reads the file again
//! on every reload.

use std::ffi::OsString;
use std::path::Path;

use clap::Parser;

use crate::cli::{Action, Cli, ServeArgs};

/// Options that take a list.
const LISTS: [&str; 2] = ["listen", "command"];
/// Every key the file may hold: each `serve` option's long name with
/// underscores, from the command line's own definition (so the two cannot
/// drift), and `command`; with whether it is listed to users (hidden
/// options are not).
fn keys() -> Vec<(String, bool)> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let serve = cli
        .find_subcommand("serve")
        .expect("baton has a serve subcommand");
    let mut keys: Vec<(String, bool)> = serve
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.replace('-', "_"), !arg.is_hide_set())))
        .filter(|(key, _)| !["config", "test_config", "help"].contains(&key.as_str()))
        .collect();
    keys.push(("command".to_owned(), true));
    keys
}

/// Reads `file` and merges it under `cli_args` (the arguments after
/// `serve`), returning the serve options they make together.
pub fn load(file: &Path, cli_args: &[OsString]) -> Result<ServeArgs, String> {
    let table = read_table(file)?;
    merge(file, &table, cli_args)
}

/// Every problem of `file` merged under `cli_args`, each key checked on
/// its own (so that one bad value does not hide the next), and the serve
/// options that the keys without a problem make with the command line.
pub fn check(file: &Path, cli_args: &[OsString]) -> (Vec<String>, Option<ServeArgs>) {
    use clap::CommandFactory;
    let table = match read_table(file) {
        Ok(table) => table,
        Err(problem) => return (vec![problem], None),
    };
    // `serve` alone, each option free of what it requires of the others:
    // a key is checked on its own.
    let serve = Cli::command()
        .find_subcommand("serve")
        .expect("baton has a serve subcommand")
        .clone()
        .mut_args(|arg| arg.requires(clap::builder::Resettable::<clap::Id>::Reset));
    let mut problems = Vec::new();
    let mut good = toml::Table::new();
    for (key, value) in &table {
        let alone: toml::Table = [(key.clone(), value.clone())].into_iter().collect();
        let values = match to_args(&alone) {
            Ok(args) => args.into_iter().flat_map(|(_, values)| values),
            Err(problem) => {
                problems.push(format!("{}: {problem}", file.display()));
                continue;
            }
        };
        let option = format!("--{}=", key.replace('_', "-"));
        let invalid = (key != "command")
            .then(|| {
                values.into_iter().find_map(|value| {
                    let mut word = OsString::from(&option);
                    word.push(value);
                    serve
                        .clone()
                        .try_get_matches_from(["serve".into(), word])
                        .err()
                })
            })
            .flatten();
        match invalid {
            Some(e) => problems.push(format!("{}: {key}: {}", file.display(), first_line(&e))),
            None => {
                good.insert(key.clone(), value.clone());
            }
        }
    }
    match merge(file, &good, cli_args) {
        Ok(args) => (problems, Some(args)),
        Err(problem) => {
            problems.push(problem);
            (problems, None)
        }
    }
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

/// The serve options `table` (read from `file`) makes under `cli_args`.
fn merge(file: &Path, table: &toml::Table, cli_args: &[OsString]) -> Result<ServeArgs, String> {
    let from_file = to_args(table).map_err(|e| format!("{}: {e}", file.display()))?;
    let (cli_options, cli_command) = split_command(cli_args);
    let given_on_cli: Vec<String> = cli_options
        .iter()
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).replace('-', "_"))
        .collect();

    let mut argv: Vec<OsString> = vec!["baton".into(), "serve".into()];
    let mut file_command = Vec::new();
    for (key, values) in from_file {
        if given_on_cli.contains(&key) {
            continue;
        }
        if key == "command" {
            file_command = values;
            continue;
        }
        for value in values {
            // One `--key=value` word: a value that starts with '-' stays a
            // value.
            let mut arg = OsString::from(format!("--{}=", key.replace('_', "-")));
            arg.push(value);
            argv.push(arg);
        }
    }
    argv.extend(cli_options.iter().cloned());
    let command = if cli_command.is_empty() {
        file_command
    } else {
        cli_command.to_vec()
    };
    if !command.is_empty() {
        argv.push("--".into());
        argv.extend(command);
    }
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Action::Serve(args),
            ..
        }) => Ok(args),
        Ok(_) => unreachable!("the arguments start with serve"),
        Err(e) => Err(format!(
            "invalid options (with {}): {}",
            file.display(),
            first_line(&e)
        )),
    }
}

/// The arguments before and after `--`.
fn split_command(args: &[OsString]) -> (&[OsString], &[OsString]) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[]),
    }
}

/// Each key's values as argument strings, in the file's order.
fn to_args(table: &toml::Table) -> Result<Vec<(String, Vec<OsString>)>, String> {
    let known = keys();
    let mut args = Vec::new();
    for (key, value) in table {
        if !known.iter().any(|(k, _)| k == key) {
            let listed: Vec<&str> = known
                .iter()
                .filter(|(_, listed)| *listed)
                .map(|(k, _)| k.as_str())
                .collect();
            return Err(format!(
                "unknown key {key:?}; keys are the serve options: {}",
                listed.join(", ")
            ));
        }
        let values = match value {
            toml::Value::Array(items) if LISTS.contains(&key.as_str()) => items
                .iter()
                .map(|item| scalar(key, item))
                .collect::<Result<Vec<_>, _>>()?,
            toml::Value::Array(_) => return Err(format!("{key} takes one value, not a list")),
            _ if key == "command" => {
                return Err("command is a list, like [\"node\", \"server.js\"]".to_owned())
            }
            other => vec![scalar(key, other)?],
        };
        args.push((key.clone(), values));
    }
    Ok(args)
}

fn scalar(key: &str, value: &toml::Value) -> Result<OsString, String> {
    match value {
        toml::Value::String(s) => Ok(s.into()),
        toml::Value::Integer(i) if key == "unix_mode" => Ok(format!("{i:o}").into()),
        toml::Value::Integer(i) => Ok(i.to_string().into()),
        toml::Value::Boolean(b) => Ok(b.to_string().into()),
        other => Err(format!(
            "{key} = {} is not a value baton takes",
            other.type_str()
        )),
    }
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
        let file = write("workers = 4\ndrain_timeout = \"5s\"\nlisten = [\"127.0.0.1:9000\", \"b=127.0.0.1:9001\"]\ncommand = [\"node\", \"server.js\"]\n");
        let args = load(&file.0, &["--workers".into(), "2".into()]).unwrap();
        assert_eq!(args.workers, Some(2));
        assert_eq!(args.drain_timeout, std::time::Duration::from_secs(5));
        assert_eq!(args.listen.len(), 2);
        assert_eq!(args.command, ["node", "server.js"]);
        let args = load(&file.0, &["--".into(), "python3".into()]).unwrap();
        assert_eq!(args.command, ["python3"]);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let file = write("workers = \"many\"\n");
        assert!(load(&file.0, &[]).unwrap_err().contains("--workers"));
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
