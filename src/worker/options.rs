//! The built-in worker's options. Declared with clap so that `baton serve`
//! takes them (flattened into its own options) and hands them to each
//! `baton worker` on its command line; the worker parses them back with the
//! same definitions.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::config::{duration_arg, DurationRange};

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
    /// (with `Connection: close`) instead of a reset; clients that think
    /// longer between requests than this can race the close. Capped by
    /// --drain-timeout
    #[arg(long, value_name = "DUR", default_value = "20s",
          value_parser = DurationRange::WAIT.parser())]
    pub drain_grace: Duration,

    /// How long a client may take to send a request's headers: from the
    /// connection's start, or from its first byte after an idle keep-alive
    /// pause, to the end of the headers. Slow or silent clients are closed
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub header_timeout: Duration,

    /// How long a keep-alive connection (HTTP/1 or HTTP/2) may sit idle
    /// between requests before it is closed
    #[arg(long, value_name = "DUR", default_value = "75s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub keepalive_timeout: Duration,

    /// How long a request body may pause between two chunks before the
    /// request is answered 408 and its connection closed
    #[arg(long, value_name = "DUR", default_value = "60s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub body_timeout: Duration,

    /// HTTP/2: ping the client after this long without a frame from it, and
    /// close the connection if the ping is not answered within as long
    #[arg(long, value_name = "DUR", default_value = "20s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub http2_ping: Duration,

    /// How workers share new connections. `balanced`: a worker with more
    /// connections open than the least-loaded one leaves the next connection
    /// to the others for a millisecond; `kernel`: whichever worker wakes
    /// first takes it (uneven: one worker can serve several times what
    /// another does)
    #[arg(long, value_name = "MODE", default_value = "balanced")]
    pub accept: AcceptMode,

    /// Break a property on purpose, to prove that the tests notice
    #[arg(long, value_name = "FAULT", hide = true)]
    pub fault: Option<WorkerFault>,
}

/// How a built-in worker accepts: see [`crate::balance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcceptMode {
    Balanced,
    Kernel,
}

/// Deliberate faults for testing the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkerFault {
    /// On drain, close everything and exit at once, like a naive server.
    ExitOnDrain,
}

/// The parser for the options alone: `baton worker`'s, and the defaults.
#[derive(Debug, Parser)]
#[command(name = "worker")]
struct WorkerCommandLine {
    #[command(flatten)]
    http: HttpArgs,
}

impl HttpArgs {
    /// Parses the options from `args` (the worker's arguments, without a
    /// program name).
    pub fn parse_from(args: Vec<OsString>) -> Result<Self, clap::Error> {
        let argv = std::iter::once(OsString::from("worker")).chain(args);
        WorkerCommandLine::try_parse_from(argv).map(|parsed| parsed.http)
    }
}

/// The built-in worker's defaults, as the command line gives them.
impl Default for HttpArgs {
    fn default() -> Self {
        Self::parse_from(Vec::new()).expect("the defaults parse")
    }
}

impl HttpArgs {
    /// The server's client limits.
    pub fn server_options(&self) -> super::server::ServerOptions {
        super::server::ServerOptions {
            limits: super::connection::Limits {
                header: self.header_timeout,
                keepalive: self.keepalive_timeout,
            },
            http2_ping: self.http2_ping,
        }
    }

    /// The same options as command-line arguments for `baton worker`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--work".into(),
            self.work.to_string().into(),
            "--threads".into(),
            self.threads.to_string().into(),
            "--drain-grace".into(),
            duration_arg(self.drain_grace),
            "--header-timeout".into(),
            duration_arg(self.header_timeout),
            "--keepalive-timeout".into(),
            duration_arg(self.keepalive_timeout),
            "--body-timeout".into(),
            duration_arg(self.body_timeout),
            "--http2-ping".into(),
            duration_arg(self.http2_ping),
            "--accept".into(),
            self.accept
                .to_possible_value()
                .expect("modes are not skipped")
                .get_name()
                .into(),
        ];
        if let Some(fault) = self.fault {
            let value = fault.to_possible_value().expect("faults are not skipped");
            args.extend(["--fault".into(), value.get_name().into()]);
        }
        args
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
            header_timeout: Duration::from_secs(4),
            keepalive_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(6),
            http2_ping: Duration::from_secs(7),
            accept: AcceptMode::Kernel,
            fault: Some(WorkerFault::ExitOnDrain),
        };
        let parsed = HttpArgs::parse_from(http.to_args()).unwrap();
        assert_eq!(parsed.work, 5);
        assert_eq!(parsed.threads, 2);
        assert_eq!(parsed.drain_grace, Duration::from_millis(1500));
        assert_eq!(parsed.header_timeout, Duration::from_secs(4));
        assert_eq!(parsed.keepalive_timeout, Duration::from_secs(5));
        assert_eq!(parsed.body_timeout, Duration::from_secs(6));
        assert_eq!(parsed.http2_ping, Duration::from_secs(7));
        assert_eq!(parsed.accept, AcceptMode::Kernel);
        assert_eq!(parsed.fault, Some(WorkerFault::ExitOnDrain));
    }
}
