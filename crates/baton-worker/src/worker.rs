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
use crate::connection::Resume;
use crate::deadline;
use crate::error::{Error, HandoffError};
use crate::handoff::{Handoff, Instruction, NamedListener, Settlement, Welcome};
use crate::server::{Counters, Moved, Server, ServerHandle};
use baton_protocol::fd::MAX_FDS_PER_MESSAGE;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use tokio::sync::mpsc;
use tracing::debug;

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
    let builder = builder.under_limits(welcome.limits());
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
                handed_over: counters.handed_over.load(Relaxed),
                received: counters.received.load(Relaxed),
                fell_back: counters.fell_back.load(Relaxed),
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
    let hold = handoff.hold;
    let (mut server, held) = if hold {
        let server = Server::start(Vec::new(), handler, options, builder.drain.clone());
        (server, acceptors)
    } else {
        let server = Server::start(acceptors, handler, options, builder.drain.clone());
        (server, Vec::new())
    };
    handoff.ready().await?;
    let handoff = Arc::new(handoff);
    tokio::spawn(report_stats(handoff.clone(), server.counters()));
    let handing = Arc::new(Handing::default());
    let (orders_tx, mut orders) = mpsc::unbounded_channel();
    tokio::spawn(listen(
        handoff.clone(),
        server.handle(),
        handing.clone(),
        orders_tx,
    ));

    let mut drain = None;
    if hold {
        match orders.recv().await {
            Some(Order::Accept) => {
                info!("health probes passed; accepting");
                server.accept(held);
            }
            Some(Order::Drain(order)) => drain = Some(order),
            None => return Err(Error::MasterLeft),
        }
    }
    let drain = match drain {
        Some(order) => order,
        None => tokio::select! {
            order = orders.recv() => match order {
                Some(Order::Drain(order)) => order,
                Some(Order::Accept) => {
                    return Err(HandoffError::from(ProtocolError::Unexpected(
                        "an accept to a worker that accepts",
                    ))
                    .into())
                }
                None => return Err(Error::MasterLeft),
            },
            _ = sigterm.next() => {
                warn!("SIGTERM received without the master; draining");
                DrainOrder { timeout: SIGTERM_DRAIN_TIMEOUT, grace: None, handover: false }
            }
        },
    };
    let timeout = drain.timeout;
    let grace = drain.grace.unwrap_or(builder.drain_grace);
    if builder.fault == Some(Fault::ExitOnDrain) {
        warn!("fault injected: exiting at once instead of draining");
        // Dropping the runtime drops every connection unanswered.
        return Ok(());
    }
    info!(
        timeout_ms = timeout.as_millis() as u64,
        grace_ms = grace.as_millis() as u64,
        handover = drain.handover,
        "drain requested"
    );
    if let Some(moves) = server.take_moves() {
        tokio::spawn(hand_over(handoff.clone(), moves, handing));
    }
    let hurried = async move {
        // A second drain hurries this one; the master gone or broken, the
        // drain goes on to its deadline.
        loop {
            match orders.recv().await {
                Some(Order::Drain(order)) => return order.timeout,
                Some(Order::Accept) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    };
    let deadline = deadline(Instant::now(), timeout);
    server.drain(grace, deadline, hurried, drain.handover).await;
    Ok(())
}

/// A drain the master ordered.
#[derive(Debug, Clone, Copy)]
struct DrainOrder {
    timeout: Duration,
    grace: Option<Duration>,
    handover: bool,
}

/// What the master says that the worker's main flow acts on.
#[derive(Debug)]
enum Order {
    Drain(DrainOrder),
    /// The health probes passed: start accepting.
    Accept,
}

/// The connections handed to the master and not settled yet, by batch.
#[derive(Debug, Default)]
struct Handing {
    batches: Mutex<HashMap<u64, Vec<Moved>>>,
}

impl Handing {
    fn insert(&self, batch: u64, moved: Vec<Moved>) {
        self.batches
            .lock()
            .expect("not poisoned")
            .insert(batch, moved);
    }

    /// The master settled `batch`: each connection was taken, or came
    /// back (see [`Moved::settle`]).
    fn settle(&self, batch: u64, settlement: &Settlement) {
        let moved = self
            .batches
            .lock()
            .expect("not poisoned")
            .remove(&batch)
            .unwrap_or_default();
        for (position, connection) in moved.into_iter().enumerate() {
            connection.settle(!settlement.returns(position));
        }
    }
}

/// Reads the master's instructions for as long as it speaks: serves its
/// probe and handed-over connections, settles this worker's handed-over
/// batches, and passes drains and accepts to the main flow.
async fn listen(
    handoff: Arc<Handoff>,
    server: ServerHandle,
    handing: Arc<Handing>,
    orders: mpsc::UnboundedSender<Order>,
) {
    loop {
        let instruction = match handoff.next_instruction().await {
            Ok(instruction) => instruction,
            Err(e) => {
                warn!(cause = %e, "the master broke the protocol; listening no more");
                return;
            }
        };
        match instruction {
            Instruction::Drain {
                timeout,
                grace,
                handover,
            } => {
                let _ = orders.send(Order::Drain(DrainOrder {
                    timeout,
                    grace,
                    handover,
                }));
            }
            Instruction::Accept => {
                let _ = orders.send(Order::Accept);
            }
            Instruction::Probe(connection) => {
                if let Err(e) = server.probe(connection) {
                    warn!(cause = %e, "cannot serve a probe connection");
                }
            }
            Instruction::Adopt { batch, connections } => {
                for (fd, resume) in connections {
                    if let Err(e) = server.adopt(fd, resume) {
                        warn!(cause = %e, "cannot serve a connection handed over");
                    }
                }
                if handoff.adopted(batch).await.is_err() {
                    return;
                }
            }
            Instruction::Settle { batch, settlement } => handing.settle(batch, &settlement),
            Instruction::MasterGone => return,
        }
    }
}

/// Hands the connections leaving this draining worker to the master, in
/// batches of what has gathered, each kept until the master settles it.
async fn hand_over(
    handoff: Arc<Handoff>,
    mut moves: mpsc::UnboundedReceiver<Moved>,
    handing: Arc<Handing>,
) {
    let mut next_batch = 1u64;
    let mut gathered = Vec::new();
    while moves.recv_many(&mut gathered, MAX_FDS_PER_MESSAGE).await > 0 {
        let batch = next_batch;
        next_batch += 1;
        // Copies go to the master; the batch is recorded first, so that
        // however soon the master answers, the answer finds it.
        let copies: std::io::Result<Vec<(OwnedFd, Resume)>> = gathered
            .iter()
            .map(|m| Ok((m.fd.try_clone()?, m.resume)))
            .collect();
        handing.insert(batch, std::mem::take(&mut gathered));
        let sent = match copies {
            Ok(copies) => {
                let connections: Vec<_> = copies
                    .iter()
                    .map(|(fd, resume)| (fd.as_fd(), *resume))
                    .collect();
                handoff.hand_over(batch, &connections).await
            }
            Err(e) => Err(HandoffError::from(e)),
        };
        if let Err(e) = sent {
            debug!(cause = %e, "cannot hand connections over; serving them on");
            handing.settle(batch, &Settlement::Returned);
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
    server
        .drain(builder.drain_grace, deadline, hurry, false)
        .await;
    Ok(())
}
