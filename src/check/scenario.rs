//! What the check drives at the server (`--scenario`), each scenario a kind
//! of traffic that fails its own way through a reload, counted and
//! reported apart.
//!
//! - `get`: GETs, some clients on keep-alive connections (reused until the
//!   server closes them) and the rest on a new connection per request.
//! - `post`: POSTs of 16 KiB bodies on reused connections, never retried:
//!   a client may not resend a non-idempotent request (RFC 9110 §9.2.2),
//!   so one lost on a connection closed as it was reused is a failure.
//! - `pipeline`: HTTP/1 connections carrying 2 to 8 GETs at a time, all
//!   written before the first answer is read (see
//!   [`crate::load::pipeline`]).
//! - `stream`: long responses, read to their end through reloads (baton's
//!   worker serves both): server-sent event streams of a minute
//!   (`/stream`), where a stream the server ends cleanly is answered and
//!   one cut is a failure; and chunked downloads of 8 MiB over 5 s
//!   (`/download`), which must come whole.
//! - `upload`: POSTs of 4 MiB sent over 3 s each, so that each spans
//!   reloads; the server must have read every byte.
//! - `idle-reuse`: keep-alive connections reused at the moments a drain is
//!   likeliest to race: just after a reload, anywhere across the drain's
//!   grace, and at the server's keep-alive timeout (see
//!   [`ClientMode::IdleReuse`]).
//! - `h2c`: HTTP/2 with prior knowledge, [`H2C_STREAMS`] concurrent GET
//!   streams on each connection; a stream the server refused unprocessed is
//!   sent again and counted apart (see [`crate::load::h2c`]).
//! - `websocket`: WebSockets on `/ws` (which baton's worker serves)
//!   echoing messages; one the server closes with a close frame is opened
//!   again, one cut without it is a failure (see
//!   [`crate::load::websocket`]).

use std::time::Duration;

use clap::ValueEnum;

use crate::load::ClientMode;

/// The body of each `post` request.
const POST_BODY_BYTES: usize = 16 * 1024;

/// How long each `stream` request asks its event stream to last.
const STREAM_SECONDS: u64 = 60;

/// Each `stream` download's size, and the time it takes to come.
const DOWNLOAD_BYTES: u64 = 8 << 20;
const DOWNLOAD_SECONDS: u64 = 5;

/// Each `upload` request's body, and the time it takes to send it.
const UPLOAD_BYTES: usize = 4 << 20;
const UPLOAD_OVER: Duration = Duration::from_secs(3);

/// Concurrent streams on each `h2c` connection.
pub const H2C_STREAMS: u16 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Get,
    Post,
    Pipeline,
    Stream,
    Upload,
    IdleReuse,
    H2c,
    Websocket,
}

/// What `--scenario` takes: a scenario, or `all` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioChoice {
    Get,
    Post,
    Pipeline,
    Stream,
    Upload,
    IdleReuse,
    H2c,
    Websocket,
    All,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Get => "get",
            Scenario::Post => "post",
            Scenario::Pipeline => "pipeline",
            Scenario::Stream => "stream",
            Scenario::Upload => "upload",
            Scenario::IdleReuse => "idle-reuse",
            Scenario::H2c => "h2c",
            Scenario::Websocket => "websocket",
        }
    }

    /// Whether a client of `mode` is part of this scenario.
    pub fn drives(self, mode: &ClientMode) -> bool {
        self.drives_named(mode.name())
    }

    /// Whether clients of the mode named `mode` ([`ClientMode::name`]) are
    /// part of this scenario.
    pub fn drives_named(self, mode: &str) -> bool {
        match self {
            Scenario::Get => mode == "new-connection" || mode == "keep-alive",
            Scenario::Post => mode == "upload",
            Scenario::Pipeline => mode == "pipeline",
            Scenario::Stream => mode == "stream" || mode == "download",
            Scenario::Upload => mode == "slow-upload",
            Scenario::IdleReuse => mode == "idle-reuse",
            Scenario::H2c => mode == "h2c",
            Scenario::Websocket => mode == "websocket",
        }
    }

    /// `--scenario`'s choices, `all` expanded, in order, each once (`get`
    /// when none is given).
    pub fn chosen(choices: &[ScenarioChoice]) -> Vec<Scenario> {
        let mut scenarios: Vec<Scenario> = choices
            .iter()
            .flat_map(|choice| match choice {
                ScenarioChoice::Get => vec![Scenario::Get],
                ScenarioChoice::Post => vec![Scenario::Post],
                ScenarioChoice::Pipeline => vec![Scenario::Pipeline],
                ScenarioChoice::Stream => vec![Scenario::Stream],
                ScenarioChoice::Upload => vec![Scenario::Upload],
                ScenarioChoice::IdleReuse => vec![Scenario::IdleReuse],
                ScenarioChoice::H2c => vec![Scenario::H2c],
                ScenarioChoice::Websocket => vec![Scenario::Websocket],
                ScenarioChoice::All => vec![
                    Scenario::Get,
                    Scenario::Post,
                    Scenario::Pipeline,
                    Scenario::Stream,
                    Scenario::Upload,
                    Scenario::IdleReuse,
                    Scenario::H2c,
                    Scenario::Websocket,
                ],
            })
            .collect();
        scenarios.sort();
        scenarios.dedup();
        if scenarios.is_empty() {
            scenarios.push(Scenario::Get);
        }
        scenarios
    }

    /// This scenario's share of the clients: `connections` of them, the
    /// `keepalive_ratio` of a `get`'s on keep-alive connections.
    pub fn clients(
        self,
        connections: usize,
        keepalive_ratio: f64,
        server: &ServerTiming,
    ) -> Vec<ClientMode> {
        let every = match self {
            Scenario::Get => {
                let keepalive = (connections as f64 * keepalive_ratio).round() as usize;
                let mut clients = vec![ClientMode::BUSY; keepalive];
                clients.resize(connections, ClientMode::NewConnection);
                return clients;
            }
            // Event streams and downloads, half each (an event stream
            // first when the share is odd).
            Scenario::Stream => {
                let events = ClientMode::Stream {
                    seconds: STREAM_SECONDS,
                };
                let download = ClientMode::Download {
                    bytes: DOWNLOAD_BYTES,
                    seconds: DOWNLOAD_SECONDS,
                };
                let mut clients = vec![events; connections.div_ceil(2)];
                clients.resize(connections, download);
                return clients;
            }
            Scenario::Post => ClientMode::Upload {
                body_bytes: POST_BODY_BYTES,
            },
            Scenario::H2c => ClientMode::H2c {
                streams: H2C_STREAMS,
            },
            Scenario::Pipeline => ClientMode::Pipeline,
            Scenario::Upload => ClientMode::SlowUpload {
                body_bytes: UPLOAD_BYTES,
                over: UPLOAD_OVER,
            },
            Scenario::IdleReuse => ClientMode::IdleReuse {
                grace: server.drain_grace,
                keepalive: server.keepalive_timeout,
            },
            Scenario::Websocket => ClientMode::Websocket,
        };
        vec![every; connections]
    }
}

/// What the check knows of the server's timing, for `idle-reuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTiming {
    /// How long a draining worker keeps idle connections open (baton's
    /// default when the server is not baton's own).
    pub drain_grace: Duration,
    /// How long the server keeps an idle keep-alive connection, if known.
    pub keepalive_timeout: Option<Duration>,
}

/// Baton's default drain grace; the keep-alive timeout unknown.
impl Default for ServerTiming {
    fn default() -> Self {
        ServerTiming {
            drain_grace: crate::http_options::HttpArgs::default().drain_grace,
            keepalive_timeout: None,
        }
    }
}

/// The clients of `scenarios`, `connections` shared among them as evenly
/// as they divide (each gets one at least).
pub fn clients(
    scenarios: &[Scenario],
    connections: usize,
    keepalive_ratio: f64,
    server: &ServerTiming,
) -> Vec<ClientMode> {
    let count = scenarios.len().max(1);
    scenarios
        .iter()
        .enumerate()
        .flat_map(|(i, scenario)| {
            let share = (connections / count + usize::from(i < connections % count)).max(1);
            scenario.clients(share, keepalive_ratio, server)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_shared_among_the_scenarios() {
        let server = ServerTiming {
            drain_grace: Duration::from_secs(20),
            keepalive_timeout: None,
        };
        let both = clients(&[Scenario::Get, Scenario::Post], 9, 0.5, &server);
        assert_eq!(both.len(), 9);
        let posts = both.iter().filter(|m| Scenario::Post.drives(m)).count();
        assert_eq!(posts, 4);
        let keepalive = both
            .iter()
            .filter(|m| matches!(m, ClientMode::KeepAlive { .. }))
            .count();
        assert_eq!(keepalive, 3, "half of get's 5, rounded");
        assert_eq!(clients(&[Scenario::Get], 64, 0.5, &server).len(), 64);
        assert_eq!(
            Scenario::chosen(&[ScenarioChoice::Post, ScenarioChoice::All]),
            [
                Scenario::Get,
                Scenario::Post,
                Scenario::Pipeline,
                Scenario::Stream,
                Scenario::Upload,
                Scenario::IdleReuse,
                Scenario::H2c,
                Scenario::Websocket
            ]
        );
        assert_eq!(Scenario::chosen(&[]), [Scenario::Get]);
    }
}
