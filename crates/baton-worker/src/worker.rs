//! A worker's life: serve, drain when told, return when drained; under a
//! master (the native protocol) or on its own.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::error::ProtocolError;
use baton_protocol::WorkerStats;
use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::accept::Acceptor;
use crate::alone;
use crate::app::Handler;
use crate::builder::{Builder, Fault};
use crate::deadline;
use crate::error::{Error, HandoffError};
use crate::handoff::{Handoff, Instruction, NamedListener, Welcome};
use crate::server::{Counters, Server};

/// How long a worker told to stop by SIGTERM (not by its master) may drain.
const SIGTERM_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the worker tells the master its counters.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Serves under the master that sent `welcome` until drained.
pub async fn under_master(
    builder: Builder,
    welcome: Welcome,
    handler: Handler,
) -> Result<(), Error> {
    let (handoff, received) = welcome.into_handoff()?;
    // Named as the master names it: slot, generation, pid.
    let span = tracing::info_span!(
        "worker",
        slot = handoff.slot,
        generation = handoff.generation,
        pid = std::process::id()
    );
    serve_listeners(builder, handoff, received, handler)
        .instrument(span)
        .await
}

/// Sends the counters to the master every [`STATS_EVERY`] until the
/// handoff socket fails.
async fn report_stats(handoff: Arc<Handoff>, counters: Arc<Counters>) {
    let mut every = tokio::time::interval(STATS_EVERY);
    loop {
        every.tick().await;
        let sent = handoff
            .stats(WorkerStats {
                accepted: counters.accepted.load(Relaxed),
                open_connections: counters.open.load(Relaxed),
                requests: counters.requests.load(Relaxed),
            })
            .await;
        if sent.is_err() {
            return;
        }
    }
}

fn acceptors(
    received: Vec<NamedListener>,
    balance: Option<Arc<baton_protocol::balance::AcceptShare>>,
) -> Result<Vec<Acceptor>, Error> {
    received
        .into_iter()
        .map(|NamedListener { name, listener }| {
            Acceptor::new(listener, balance.clone()).map_err(|e| Error::BadListener {
                name,
                reason: e.to_string(),
            })
        })
        .collect()
}

async fn serve_listeners(
    builder: Builder,
    handoff: Handoff,
    received: Vec<NamedListener>,
    handler: Handler,
) -> Result<(), Error> {
    let balance = handoff.balance.clone().filter(|_| builder.balanced);
    let acceptors = acceptors(received, balance)?;
    // Before ready: a drain signal that comes right after must find its
    // handler, not the default action that kills.
    let mut sigterm = signal_hook_tokio::Signals::new([SIGTERM]).map_err(Error::Signals)?;
    let options = builder.options();
    let (mut server, held) = if handoff.hold {
        let server = Server::start(Vec::new(), handler, options, builder.drain.clone());
        (server, acceptors)
    } else {
        let server = Server::start(acceptors, handler, options, builder.drain.clone());
        (server, Vec::new())
    };
    handoff.ready().await?;
    let handoff = Arc::new(handoff);
    tokio::spawn(report_stats(handoff.clone(), server.counters()));

    let drain = if handoff.hold {
        serve_probes(&handoff, &mut server, held).await?
    } else {
        None
    };
    let (timeout, grace) = match drain {
        Some(Instruction::Drain { timeout, grace }) => {
            (timeout, grace.unwrap_or(builder.drain_grace))
        }
        _ => tokio::select! {
            instruction = handoff.next_instruction() => match instruction? {
                Instruction::Drain { timeout, grace } => (timeout, grace.unwrap_or(builder.drain_grace)),
                Instruction::MasterGone => return Err(Error::MasterLeft),
                Instruction::Probe(_) | Instruction::Accept => {
                    return Err(HandoffError::from(ProtocolError::Unexpected(
                        "a probe or accept to a worker that accepts",
                    ))
                    .into())
                }
            },
            _ = sigterm.next() => {
                warn!("SIGTERM received without the master; draining");
                (SIGTERM_DRAIN_TIMEOUT, builder.drain_grace)
            }
        },
    };
    if builder.fault == Some(Fault::ExitOnDrain) {
        warn!("fault injected: exiting at once instead of draining");
        // Dropping the runtime drops every connection unanswered.
        return Ok(());
    }
    info!(
        timeout_ms = timeout.as_millis() as u64,
        grace_ms = grace.as_millis() as u64,
        "drain requested"
    );
    let deadline = deadline(Instant::now(), timeout);
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
) -> Result<Option<Instruction>, Error> {
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
            Instruction::MasterGone => return Err(Error::MasterLeft),
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

/// Serves on its own (no master) until SIGTERM or SIGINT, then drains.
pub async fn alone(builder: Builder, handler: Handler) -> Result<(), Error> {
    let listeners = alone::listeners(&builder.address)?;
    alone_on(builder, listeners, handler).await
}

/// Serves `listeners` on its own until SIGTERM or SIGINT, then drains.
pub async fn alone_on(
    builder: Builder,
    listeners: Vec<NamedListener>,
    handler: Handler,
) -> Result<(), Error> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT]).map_err(Error::Signals)?;
    let acceptors = acceptors(listeners, None)?;
    let server = Server::start(acceptors, handler, builder.options(), builder.drain.clone());
    signals.next().await;
    if builder.fault == Some(Fault::ExitOnDrain) {
        warn!("fault injected: exiting at once instead of draining");
        return Ok(());
    }
    info!(
        timeout_ms = builder.drain_timeout.as_millis() as u64,
        grace_ms = builder.drain_grace.as_millis() as u64,
        "drain requested by a signal"
    );
    let deadline = deadline(Instant::now(), builder.drain_timeout);
    let hurry = async move {
        signals.next().await;
        info!("a second signal: ending the grace");
        builder.drain_timeout
    };
    server.drain(builder.drain_grace, deadline, hurry).await;
    Ok(())
}
