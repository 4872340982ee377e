//! The `baton` binary: parses the command line, sets up logging, and runs the
//! master or a worker. Exit codes: 0 success, 1 runtime failure, 2 usage or
//! configuration error.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use baton::cli::{Cli, Command};
use baton::control::Command as Control;

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
        Command::Reload(args) => control(&args.control, Control::Reload { wait: args.wait }),
        Command::Status(args) => control(&args.control, Control::Status { json: args.json }),
        Command::Stop(args) => control(&args, Control::Stop),
        Command::Exec(args) => {
            let error = baton::worker::exec::run(&args.command);
            tracing::error!("worker failed: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
        Command::Keeper => match baton::keeper::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("keeper failed: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Worker(args) => match baton::worker::run(args.http) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("worker failed: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}

fn serve(args: baton::cli::ServeArgs) -> ExitCode {
    // The raw arguments after `serve`, merged over --config again on reload.
    let cli_args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip_while(|a| a != "serve")
        .skip(1)
        .collect();
    let config = match baton::settings::serve_config(args, cli_args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("baton: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // SAFETY: no other thread exists yet (the runtime starts below).
    let inherited = match unsafe { baton::systemd::take_listen_fds() } {
        Ok(inherited) => inherited,
        Err(message) => {
            eprintln!("baton: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One thread: workers are spawned from the thread that lives as long as
    // the master, which PR_SET_PDEATHSIG needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("baton: cannot start the tokio runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(baton::master::run(config, inherited, baton::settings::load)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: {e}");
            ExitCode::from(if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}

/// Sends one request to a running master; exit 0 on `ok`, 1 otherwise.
fn control(args: &baton::cli::ControlArgs, command: Control) -> ExitCode {
    match baton::control::request(&args.path(), command) {
        Ok(answer) => {
            if let Some(body) = answer.strip_prefix("ok\n") {
                // A bare "ok" line heads a body (the status): print the body.
                print!("{body}");
                ExitCode::SUCCESS
            } else if answer.starts_with("ok") {
                print!("{answer}");
                ExitCode::SUCCESS
            } else {
                eprint!("baton: {answer}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
        Err(message) => {
            eprintln!("baton: {message}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn check(args: baton::cli::CheckArgs) -> ExitCode {
    let options = match baton::settings::check_options(args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("baton check: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // The load runs on two threads, like a separate load generator would.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("baton check: cannot start the tokio runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(baton::check::run(options)) {
        Ok(report) => {
            println!("{report}");
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
        Err(e) => {
            eprintln!("baton check: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
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
