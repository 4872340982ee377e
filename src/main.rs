//! The `baton` binary: parses the command line, sets up logging, and runs the
//! master, a control client, the check or a worker. Every subcommand returns
//! its outcome to `main`, the one place that prints an error and picks the
//! exit code: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use baton::check::CheckError;
use baton::cli::{CheckArgs, Cli, Command, ControlArgs, ServeArgs};
use baton::control::Command as Control;
use baton::error::{MasterError, WorkerError};

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Why a subcommand failed, kept typed up to here.
#[derive(Debug, thiserror::Error)]
enum Failure {
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
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Master(e) if e.is_usage() => EXIT_USAGE,
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
    let cli = Cli::parse();
    init_tracing();
    let worker = matches!(
        cli.command,
        Command::Worker(_) | Command::Exec(_) | Command::Keeper
    );
    match run(cli.command) {
        Ok(Success::Done) => ExitCode::SUCCESS,
        Ok(Success::CheckFailed) => ExitCode::from(EXIT_FAILURE),
        Err(failure) => {
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

fn run(command: Command) -> Result<Success, Failure> {
    match command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
        Command::Reload(args) => control(&args.control, Control::Reload { wait: args.wait }),
        Command::Status(args) => control(&args.control, Control::Status { json: args.json }),
        Command::Stop(args) => control(&args, Control::Stop),
        Command::Exec(args) => Err(baton::worker::exec::run(&args.command).into()),
        Command::Keeper => {
            baton::keeper::run().map_err(Failure::Keeper)?;
            Ok(Success::Done)
        }
        Command::Worker(args) => {
            baton::worker::run(args.http)?;
            Ok(Success::Done)
        }
    }
}

fn serve(args: ServeArgs) -> Result<Success, Failure> {
    // The raw arguments after `serve`, merged over --config again on reload.
    let cli_args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip_while(|a| a != "serve")
        .skip(1)
        .collect();
    let config = baton::settings::serve_config(args, cli_args).map_err(Failure::Usage)?;
    // SAFETY: no other thread exists yet (the runtime starts below).
    let inherited = unsafe { baton::systemd::take_listen_fds() }.map_err(Failure::Usage)?;
    // One thread: workers are spawned from the thread that lives as long as
    // the master, which PR_SET_PDEATHSIG needs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::Runtime)?;
    runtime.block_on(baton::master::run(config, inherited, baton::settings::load))?;
    Ok(Success::Done)
}

/// Sends one request to a running master; exit 0 on `ok`, 1 otherwise.
fn control(args: &ControlArgs, command: Control) -> Result<Success, Failure> {
    let answer = baton::control::request(&args.path(), command).map_err(Failure::Control)?;
    if let Some(body) = answer.strip_prefix("ok\n") {
        // A bare "ok" line heads a body (the status): print the body.
        print!("{body}");
    } else if answer.starts_with("ok") {
        print!("{answer}");
    } else {
        return Err(Failure::Control(answer));
    }
    Ok(Success::Done)
}

fn check(args: CheckArgs) -> Result<Success, Failure> {
    let options = baton::settings::check_options(args).map_err(Failure::Usage)?;
    // The load runs on two threads, like a separate load generator would.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Failure::Runtime)?;
    let report = runtime.block_on(baton::check::run(options))?;
    println!("{report}");
    Ok(if report.passed {
        Success::Done
    } else {
        Success::CheckFailed
    })
}

/// Logs go to stderr, filtered by RUST_LOG (default `info`): a level, or
/// `target=level` directives separated by commas. (A target filter rather than
/// a full env filter keeps regex out of the binary: the master stays small.)
fn init_tracing() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| match value.parse::<Targets>() {
            Ok(filter) => Some(filter),
            Err(e) => {
                eprintln!("baton: ignoring RUST_LOG={value:?}: {e}");
                None
            }
        })
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .init();
}
