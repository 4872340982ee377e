//! A worker process: receives the listeners from the master, serves HTTP on
//! them with hyper, and drains when told to.
//!
//! - [`handoff`]: the protocol side, usable by any Rust program.
//! - [`accept`]: accepting this worker's share of the connections.
//! - [`connection`]: one connection's life, each phase bounded in time.
//! - [`exec`]: the stage that turns a COMMAND into a worker.
//! - [`server`]: accepting, serving and the two-phase drain.
//! - [`http`]: the built-in handler.
//! - [`options`]: the built-in worker's options.

pub mod accept;
pub mod connection;
pub mod exec;
pub mod guard;
pub mod handoff;
pub mod http;
pub mod http2;
pub mod server;
pub mod sniff;
pub mod stream;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use signal_hook::consts::SIGTERM;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::error::WorkerError;
use crate::error::{HandoffError, ProtocolError};
use crate::http_options::{AcceptMode, HttpArgs, WorkerFault};
use accept::Acceptor;
pub use handoff::{Handoff, Instruction, NamedListener, ReceivedListener, Welcome};
use http::HttpState;
use server::{Server, ServerOptions};

/// How long a worker told to stop by SIGTERM (not by its master) may drain.
const SIGTERM_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the worker tells the master its counters.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Sends the counters to the master every [`STATS_EVERY`] until the
/// handoff socket fails.
async fn report_stats(handoff: Arc<Handoff>, state: Arc<HttpState>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut every = tokio::time::interval(STATS_EVERY);
    loop {
        every.tick().await;
        let sent = handoff
            .stats(crate::protocol::WorkerStats {
                accepted: state.accepted.load(Relaxed),
                open_connections: state.open.load(Relaxed),
                requests: state.requests.load(Relaxed),
            })
            .await;
        if sent.is_err() {
            return;
        }
    }
}

/// Runs the built-in worker until it has drained, with the options the
/// master sent in its hello.
pub fn run() -> Result<(), WorkerError> {
    let welcome = Welcome::receive()?;
    let args = welcome
        .http()
        .map_err(HandoffError::from)?
        .unwrap_or_default();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()
    }
    .map_err(WorkerError::Runtime)?;
    runtime.block_on(serve(args, welcome))
}

async fn serve(args: HttpArgs, welcome: Welcome) -> Result<(), WorkerError> {
    let (handoff, received) = welcome.into_handoff()?;
    // Named as the master names it: slot, generation, pid.
    let span = tracing::info_span!(
        "worker",
        slot = handoff.slot,
        generation = handoff.generation,
        pid = std::process::id()
    );
    serve_listeners(args, handoff, received)
        .instrument(span)
        .await
}

async fn serve_listeners(
    args: HttpArgs,
    handoff: Handoff,
    received: Vec<NamedListener>,
) -> Result<(), WorkerError> {
    let balance = match args.accept {
        AcceptMode::Balanced => handoff.balance.clone(),
        AcceptMode::Kernel => None,
    };
    let mut acceptors = Vec::with_capacity(received.len());
    for NamedListener { name, listener } in received {
        let acceptor =
            Acceptor::new(listener, balance.clone()).map_err(|e| WorkerError::BadListener {
                name,
                reason: e.to_string(),
            })?;
        acceptors.push(acceptor);
    }
    // Before ready: a drain signal that comes right after must find its
    // handler, not the default action that kills.
    let mut sigterm = signal_hook_tokio::Signals::new([SIGTERM]).map_err(WorkerError::Signals)?;
    let mut state = HttpState::new(args.work, args.body_timeout);
    if args.fault == Some(WorkerFault::ServerError) {
        warn!("fault injected: every answer is 500");
        state.fail_every_request();
    }
    let state = Arc::new(state);
    let options = ServerOptions::from(&args);
    let (mut server, held) = if handoff.hold {
        (Server::start(Vec::new(), state.clone(), options), acceptors)
    } else {
        (Server::start(acceptors, state.clone(), options), Vec::new())
    };
    handoff.ready().await?;
    let handoff = Arc::new(handoff);
    tokio::spawn(report_stats(handoff.clone(), state));

    let drain = if handoff.hold {
        serve_probes(&handoff, &mut server, held).await?
    } else {
        None
    };
    let (timeout, grace) = match drain {
        Some(Instruction::Drain { timeout, grace }) => (timeout, grace.unwrap_or(args.drain_grace)),
        _ => tokio::select! {
            instruction = handoff.next_instruction() => match instruction? {
                Instruction::Drain { timeout, grace } => (timeout, grace.unwrap_or(args.drain_grace)),
                Instruction::MasterGone => return Err(WorkerError::MasterLeft),
                Instruction::Probe(_) | Instruction::Accept => {
                    return Err(HandoffError::from(ProtocolError::Unexpected(
                        "a probe or accept to a worker that accepts",
                    ))
                    .into())
                }
            },
            _ = sigterm.next() => {
                warn!("SIGTERM received without the master; draining");
                (SIGTERM_DRAIN_TIMEOUT, args.drain_grace)
            }
        },
    };
    if args.fault == Some(WorkerFault::ExitOnDrain) {
        warn!("fault injected: exiting at once instead of draining");
        // Dropping the runtime drops every connection unanswered.
        return Ok(());
    }
    info!(
        timeout_ms = timeout.as_millis() as u64,
        grace_ms = grace.as_millis() as u64,
        "drain requested"
    );
    let deadline = crate::config::deadline(Instant::now(), timeout);
    server.drain(grace, deadline, hurried(&handoff)).await;
    Ok(())
}

/// A worker that holds its accepts (`--health`): serves the master's probe
/// connections until it is told to accept, which it then does. Returns the
/// drain if the master sends one instead (the probes failed).
async fn serve_probes(
    handoff: &Handoff,
    server: &mut Server,
    held: Vec<Acceptor>,
) -> Result<Option<Instruction>, WorkerError> {
    loop {
        match handoff.next_instruction().await? {
            Instruction::Probe(connection) => {
                let connection = std::os::unix::net::UnixStream::from(connection);
                connection
                    .set_nonblocking(true)
                    .map_err(HandoffError::from)?;
                let connection =
                    tokio::net::UnixStream::from_std(connection).map_err(HandoffError::from)?;
                server.serve_connection(connection);
            }
            Instruction::Accept => {
                info!("health probes passed; accepting");
                server.accept(held);
                return Ok(None);
            }
            drain @ Instruction::Drain { .. } => return Ok(Some(drain)),
            Instruction::MasterGone => return Err(WorkerError::MasterLeft),
        }
    }
}

/// Resolves when the master sends a second drain (a reload storm hurries
/// old generations), with the time it leaves for requests in flight. Never
/// resolves if the master says nothing more.
async fn hurried(handoff: &Handoff) -> Duration {
    match handoff.next_instruction().await {
        Ok(Instruction::Drain { timeout, .. }) => timeout,
        // Gone or broken: the drain goes on to its deadline.
        Ok(Instruction::MasterGone | Instruction::Probe(_) | Instruction::Accept) | Err(_) => {
            std::future::pending().await
        }
    }
}
