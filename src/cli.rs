//! The command line. `baton serve` runs the master; the hidden `baton worker`
//! is what the master starts for each worker, from the same program file.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{name_listeners, own_program_path, parse_duration, ListenSpec, MasterConfig};

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Zero-downtime process manager: the master owns the listening sockets, \
             workers serve, crashes and reloads refuse nothing"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the master: bind the listeners, start the workers, keep them serving.
    ///
    /// SIGHUP reloads (rolling restart, one worker at a time); SIGTERM or SIGINT
    /// drain every worker and exit; SIGQUIT stops at once.
    Serve(ServeArgs),
    /// A worker process, started by `baton serve`.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, [NAME=]HOST:PORT; repeat for several
    /// [default: 127.0.0.1:8080]
    #[arg(long = "listen", value_name = "[NAME=]ADDR")]
    pub listen: Vec<ListenSpec>,

    /// Number of worker processes [default: the number of CPUs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Listen backlog: connections that wait while no worker accepts
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub backlog: u32,

    /// How long a new worker may take to become ready before the start or
    /// reload counts as failed
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// How long a draining worker may take to finish its requests before it
    /// is killed
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// Options of the built-in HTTP worker, passed from the master to each worker.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Iterations of simulated CPU work per request
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub work: u64,

    /// Threads per worker process
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// While draining, how long an idle keep-alive connection stays open. A
    /// client that reuses its connection within this time gets its answer
    /// (with `Connection: close`) instead of a reset
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// Break a property on purpose, to prove that the tests notice
    #[arg(long, value_name = "FAULT", hide = true)]
    pub fault: Option<Fault>,
}

/// Deliberate faults for testing the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// On drain, close everything and exit at once, like a naive server.
    ExitOnDrain,
}

impl HttpArgs {
    /// The same options as command-line arguments for `baton worker`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--work".into(),
            self.work.to_string().into(),
            "--threads".into(),
            self.threads.to_string().into(),
            "--drain-grace".into(),
            humantime::format_duration(self.drain_grace)
                .to_string()
                .into(),
        ];
        if let Some(fault) = self.fault {
            let value = fault.to_possible_value().expect("faults are not skipped");
            args.extend(["--fault".into(), value.get_name().into()]);
        }
        args
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub http: HttpArgs,
}

impl ServeArgs {
    /// Validates the arguments into the master's configuration.
    pub fn into_config(self) -> Result<MasterConfig, String> {
        let listeners = name_listeners(&self.listen)?;
        let workers = match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
        let program = own_program_path().map_err(|e| {
            format!("cannot find baton's own program file to start workers from: {e}")
        })?;
        let mut worker_args: Vec<OsString> = vec!["worker".into()];
        worker_args.extend(self.http.to_args());
        Ok(MasterConfig {
            listeners,
            workers,
            backlog: self.backlog,
            ready_timeout: self.ready_timeout,
            drain_timeout: self.drain_timeout,
            program,
            worker_args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_args_round_trip_through_the_worker_command_line() {
        let http = HttpArgs {
            work: 5,
            threads: 2,
            drain_grace: Duration::from_millis(1500),
            fault: Some(Fault::ExitOnDrain),
        };
        let mut argv: Vec<OsString> = vec!["baton".into(), "worker".into()];
        argv.extend(http.to_args());
        let Command::Worker(parsed) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("expected the worker subcommand");
        };
        assert_eq!(parsed.http.work, 5);
        assert_eq!(parsed.http.threads, 2);
        assert_eq!(parsed.http.drain_grace, Duration::from_millis(1500));
        assert_eq!(parsed.http.fault, Some(Fault::ExitOnDrain));
    }
}
