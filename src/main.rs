//! The `baton` binary: parses the command line, sets up logging, and runs the
//! master, a control client, the check or a worker. Every subcommand returns
//! its outcome to `main`, the one place that prints an error and picks the
//! exit code: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::process::ExitCode;

use clap::Parser;

use baton::check::CheckError;
use baton::cli::{Action, CheckArgs, Cli, ControlArgs, ServeArgs, StopArgs};
use baton::control::{Command as Control, Reply};
use baton::error::{MasterError, WorkerError};

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Why a subcommand failed, kept typed up to here.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    /// Bad arguments or configuration, found before anything started.
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The master answered with an error, or could not be reached.
    #[error("{}", .0.trim_end())]
    Control(String),
    #[error("worker failed: {0}")]
    Worker(#[from] WorkerError),
    #[error("keeper failed: {0}")]
    Keeper(std::io::Error),
    #[error("rescuer failed: {0}")]
    Rescuer(std::io::Error),
    #[error("cannot write: {0}")]
    Output(std::io::Error),
}

impl Fatal {
    fn exit_code(&self) -> u8 {
        match self {
            Fatal::Usage(_) => EXIT_USAGE,
            Fatal::Master(e) if e.is_usage() => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

/// What a subcommand that did not fail exits with.
enum Success {
    Done,
    /// `baton check` ran, and something failed under load.
    CheckFailed,
}

fn main() -> ExitCode {
    // An image started by `baton upgrade` first prepares its way back to
    // the previous one, for whatever goes wrong from here on.
    let upgraded = baton::master::handover::incoming().is_some();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if upgraded {
                baton::master::handover::go_back(&format!(
                    "the new program cannot read the command line: {}",
                    e.kind()
                ));
            }
            e.exit()
        }
    };
    // Workers, exec stages and the keeper log the same way. (No other
    // thread exists yet.)
    std::env::set_var("BATON_LOG_FORMAT", cli.log_format.as_str());
    let worker = matches!(
        cli.command,
        Action::Worker | Action::Exec(_) | Action::Native(_) | Action::Keeper | Action::Rescuer
    );
    let rust_log = std::env::var("RUST_LOG").ok();
    baton::logging::init(cli.log_format, rust_log.as_deref(), !worker);
    match run(cli.command) {
        Ok(Success::Done) => ExitCode::SUCCESS,
        Ok(Success::CheckFailed) => ExitCode::from(EXIT_FAILURE),
        Err(failure) => {
            if upgraded {
                baton::master::handover::go_back(&failure.to_string());
            }
            if worker {
                // A worker's stderr is the master's log: one log line.
                tracing::error!("{failure}");
            } else {
                eprintln!("baton: {failure}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run(command: Action) -> Result<Success, Fatal> {
    match command {
        Action::Serve(args) => serve(*args),
        Action::Check(args) => check(*args),
        Action::Reload(args) => control(&args.control, Control::Reload { wait: args.wait }),
        Action::Status(args) => status(&args.control, args.json),
        Action::Stop(args) => stop(&args),
        Action::Drain(args) => control(&args, Control::Drain),
        Action::Undrain(args) => control(&args, Control::Undrain),
        Action::Upgrade(args) => control(
            &args.control,
            Control::Upgrade {
                wait: args.wait,
                keep_workers: args.keep_workers,
                fault: args.fault,
            },
        ),
        Action::UpgradeCheck(args) => upgrade_check(args),
        Action::Exec(args) => Err(baton::worker::exec::run(&args.command).into()),
        Action::Native(args) => Err(baton::worker::exec::run_native(&args.command).into()),
        Action::Completions { shell } => {
            let mut cli = baton::cli::public_command();
            clap_complete::generate(shell, &mut cli, "baton", &mut std::io::stdout());
            Ok(Success::Done)
        }
        Action::Man => {
            clap_mangen::Man::new(baton::cli::public_command())
                .render(&mut std::io::stdout())
                .map_err(Fatal::Output)?;
            Ok(Success::Done)
        }
        Action::Keeper => {
            baton::keeper::run().map_err(Fatal::Keeper)?;
            Ok(Success::Done)
        }
        Action::Rescuer => {
            baton::rescue::rescuer::run().map_err(Fatal::Rescuer)?;
            Ok(Success::Done)
        }
        Action::Worker => {
            baton::worker::run()?;
            Ok(Success::Done)
        }
    }
}

fn serve(args: ServeArgs) -> Result<Success, Fatal> {
    // The raw arguments after `serve`, merged over --config again on reload.
    let cli_args = baton::settings::own_serve_args();
    if args.test_config {
        return test_config(args, cli_args);
    }
    let config = baton::settings::serve_config(args, cli_args).map_err(Fatal::Usage)?;
    // SAFETY: no other thread exists yet (the runtime starts below).
    let inherited = unsafe { baton::systemd::take_listen_fds() }.map_err(Fatal::Usage)?;
    // One thread: workers are spawned from the thread that lives as long as
    // the master, which PR_SET_PDEATHSIG needs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Fatal::Runtime)?;
    runtime.block_on(baton::master::run(config, inherited, baton::settings::load))?;
    Ok(Success::Done)
}

/// `baton upgrade-check`: whether this program can take over from a
/// running master (its state format, its serve arguments).
fn upgrade_check(args: baton::cli::UpgradeCheckArgs) -> Result<Success, Fatal> {
    let format = baton::master::handover::FORMAT;
    if args.format != format {
        return Err(Fatal::Usage(format!(
            "this baton reads master state format {format}, the running master writes format {}",
            args.format
        )));
    }
    let argv = ["baton".into(), "serve".into()]
        .into_iter()
        .chain(args.serve_args.iter().cloned());
    let serve = match Cli::try_parse_from(argv).map(|cli| cli.command) {
        Ok(Action::Serve(serve)) => *serve,
        Ok(_) => unreachable!("parsed as serve"),
        Err(e) => {
            return Err(Fatal::Usage(format!(
                "this baton does not accept the running master's arguments: {}",
                e.to_string().lines().next().unwrap_or_default()
            )))
        }
    };
    let problems = baton::settings::test_config(serve, args.serve_args);
    if !problems.is_empty() {
        return Err(Fatal::Usage(format!(
            "the configuration has problems for this baton: {}",
            problems.join("; ")
        )));
    }
    println!("baton {}", env!("CARGO_PKG_VERSION"));
    Ok(Success::Done)
}

/// `baton serve -t`: lists every problem of the configuration.
fn test_config(args: ServeArgs, cli_args: Vec<std::ffi::OsString>) -> Result<Success, Fatal> {
    let problems = baton::settings::test_config(args, cli_args);
    if problems.is_empty() {
        println!("baton: the configuration is valid");
        return Ok(Success::Done);
    }
    let count = match problems.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    Err(Fatal::Usage(format!(
        "the configuration has {count}:\n  - {}",
        problems.join("\n  - ")
    )))
}

/// Sends one request to a running master; exit 0 on `ok`, 1 otherwise.
fn control(args: &ControlArgs, command: Control) -> Result<Success, Fatal> {
    send(args, command)?;
    Ok(Success::Done)
}

/// `baton status`: the master's state as a table, or as JSON.
fn status(args: &ControlArgs, json: bool) -> Result<Success, Fatal> {
    let answer = baton::control::request(&args.path(), Control::Status).map_err(Fatal::Control)?;
    match answer.reply {
        Reply::Status(status) if json => {
            let text = serde_json::to_string_pretty(&status).expect("the status serializes");
            println!("{text}");
        }
        Reply::Status(status) => print!("{}", status.table()),
        other => return Err(Fatal::Control(other.to_string())),
    }
    Ok(Success::Done)
}

/// Sends one request and prints the master's answer; returns the master's
/// pid.
fn send(args: &ControlArgs, command: Control) -> Result<u32, Fatal> {
    let answer = baton::control::request(&args.path(), command).map_err(Fatal::Control)?;
    if !answer.reply.is_ok() {
        return Err(Fatal::Control(answer.reply.to_string()));
    }
    print!("{}", answer.reply);
    Ok(answer.master_pid)
}

/// `baton stop`, and with `--wait` until the master's process has exited.
fn stop(args: &StopArgs) -> Result<Success, Fatal> {
    let master = send(&args.control, Control::Stop)?;
    if args.wait {
        while !baton::procfs::has_exited(master) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        println!("ok: baton (pid {master}) has exited");
    }
    Ok(Success::Done)
}

fn check(args: CheckArgs) -> Result<Success, Fatal> {
    let options = baton::settings::check_options(args).map_err(Fatal::Usage)?;
    // The load runs on two threads, like a separate load generator would.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Fatal::Runtime)?;
    let reloads_wanted = options.reloads.is_some();
    let report = runtime.block_on(baton::check::run(options))?;
    println!("{report}");
    if reloads_wanted {
        // The last line, for a pipeline to read.
        println!(
            "{} reloads, {} requests, {} failed",
            report.reloads.len(),
            report.requests,
            report.failures.total()
        );
    }
    Ok(if report.passed {
        Success::Done
    } else {
        Success::CheckFailed
    })
}
