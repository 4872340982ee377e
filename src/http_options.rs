//! The built-in worker's options. Declared with clap so that `baton serve`
//! takes them (flattened into its own options), and with serde so that the
//! master hands them to each worker in its hello (see
//! [`crate::protocol::ToWorker::Hello`]), as values.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::values::{parse_threads, parse_work, text, DurationRange};

/// Options of the built-in HTTP worker, passed from the master to each worker.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpArgs {
    /// Iterations of simulated CPU work per request
    #[serde_as(as = "text::Work")]
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_work)]
    pub work: u64,

    /// Threads per worker process
    #[serde_as(as = "text::Threads")]
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = parse_threads)]
    pub threads: u16,

    /// While draining, how long an idle keep-alive connection stays open. A
    /// client that reuses its connection within this time gets its answer
    /// (with `Connection: close`) instead of a reset; clients that think
    /// longer between requests than this can race the close. Capped by
    /// --drain-timeout
    #[serde_as(as = "text::Wait")]
    #[arg(long, value_name = "DUR", default_value = "20s",
          value_parser = DurationRange::WAIT.parser())]
    pub drain_grace: Duration,

    /// How long a client may take to send a request's headers: from the
    /// connection's start, or from its first byte after an idle keep-alive
    /// pause, to the end of the headers. Slow or silent clients are closed
    #[serde_as(as = "text::ClientTimeout")]
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub header_timeout: Duration,

    /// How long a keep-alive connection (HTTP/1 or HTTP/2) may sit idle
    /// between requests before it is closed
    #[serde_as(as = "text::ClientTimeout")]
    #[arg(long, value_name = "DUR", default_value = "75s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub keepalive_timeout: Duration,

    /// How long a request body may pause between two chunks before the
    /// request is answered 408 and its connection closed
    #[serde_as(as = "text::ClientTimeout")]
    #[arg(long, value_name = "DUR", default_value = "60s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub body_timeout: Duration,

    /// HTTP/2: ping the client after this long without a frame from it, and
    /// close the connection if the ping is not answered within as long
    #[serde_as(as = "text::ClientTimeout")]
    #[arg(long, value_name = "DUR", default_value = "20s",
          value_parser = DurationRange::CLIENT_TIMEOUT.parser())]
    pub http2_ping: Duration,

    /// How workers share new connections. `balanced`: a worker with more
    /// connections open than the least-loaded one leaves the next connection
    /// to the others for a millisecond; `kernel`: whichever worker wakes
    /// first takes it (uneven: one worker can serve several times what
    /// another does)
    #[serde_as(as = "text::Named")]
    #[arg(long, value_name = "MODE", default_value = "balanced")]
    pub accept: AcceptMode,

    /// Break a property on purpose, to prove that the tests notice
    #[serde_as(as = "Option<text::Named>")]
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
    /// Answer every request 500, like a release that is up but broken.
    ServerError,
    /// Drain every HTTP/2 connection with the two-step GOAWAY
    /// (GOAWAY(2^31−1), PING, GOAWAY(last stream)), as hyper does.
    TwoStepGoaway,
    /// Drain every HTTP/2 connection with one GOAWAY at once, cutting the
    /// streams in flight.
    ImmediateGoaway,
    /// Close connections without the lingering read.
    NoLinger,
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

    /// The client limits a native worker's hello carries.
    pub fn client_limits(&self) -> crate::protocol::ClientLimits {
        let ms = |d: std::time::Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
        crate::protocol::ClientLimits {
            header_timeout_ms: ms(self.header_timeout),
            keepalive_timeout_ms: ms(self.keepalive_timeout),
            body_timeout_ms: ms(self.body_timeout),
            http2_ping_ms: ms(self.http2_ping),
        }
    }
}

/// The built-in worker's defaults, as the command line gives them.
impl Default for HttpArgs {
    fn default() -> Self {
        Self::parse_from(Vec::new()).expect("the defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_cross_the_hello_unchanged() {
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
        let json = serde_json::to_string(&http).unwrap();
        assert_eq!(serde_json::from_str::<HttpArgs>(&json).unwrap(), http);
    }
}
