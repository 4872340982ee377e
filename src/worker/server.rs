//! Accepting and serving connections, and draining them without failing a
//! request.
//!
//! The drain has two phases, because hyper's graceful shutdown alone closes
//! idle keep-alive connections at once and drops accepted connections whose
//! request it has not read yet, racing every client about to reuse them:
//!
//! 1. Stop accepting (drop this worker's copy of each listener: the master
//!    and the other workers keep the socket and its queue; leave the
//!    accept-balance table, so nobody defers to this worker) and answer every
//!    HTTP/1 request with `Connection: close`. Busy connections leave after
//!    their next response; this lasts until none is open or the grace period
//!    ends.
//! 2. Graceful shutdown of what is left (idle connections close, requests in
//!    flight finish), bounded by the drain deadline.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at, Instant};
use tracing::{debug, info, warn};

use super::accept::{Accepted, Acceptor, Stream};
use super::http::{handle, HttpState};
use crate::balance::OpenConnection;

/// How often phase 1 of the drain looks whether every connection closed.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// A running HTTP server over one or more listeners.
pub struct Server {
    state: Arc<HttpState>,
    /// Tracks every open connection and shuts them down in phase 2. Shared
    /// with the accept loops, which register each new connection.
    graceful: Arc<GracefulShutdown>,
    stop_accepting: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts accepting on every listener. Returns once each is registered,
    /// so the caller may report ready.
    pub fn start(acceptors: Vec<Acceptor>, state: Arc<HttpState>) -> Self {
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop_accepting, stop_rx) = watch::channel(false);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let accept_loops = acceptors
            .into_iter()
            .map(|acceptor| {
                tokio::spawn(accept_loop(
                    acceptor,
                    builder.clone(),
                    state.clone(),
                    graceful.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        Server {
            state,
            graceful,
            stop_accepting,
            accept_loops,
        }
    }

    /// Drains: see the module docs. Returns when every connection closed, or
    /// at `deadline` with some still open.
    pub async fn drain(self, grace: Duration, deadline: Instant) {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.stop_accepting.send(true);
        for accept_loop in self.accept_loops {
            let _ = accept_loop.await;
        }
        let graceful = Arc::try_unwrap(self.graceful)
            .expect("the accept loops, the only other owners, have ended");
        info!(open = graceful.count(), "draining: stopped accepting");

        let grace_end = (Instant::now() + grace).min(deadline);
        while graceful.count() > 0 && Instant::now() < grace_end {
            sleep(DRAIN_POLL).await;
        }
        let idle = graceful.count();
        if timeout_at(deadline, graceful.shutdown()).await.is_err() {
            warn!("drain deadline passed with connections still open");
        }
        info!(
            closed_after_grace = idle,
            accepted = self.state.accepted.load(Ordering::Relaxed),
            requests = self.state.requests.load(Ordering::Relaxed),
            "drained"
        );
    }
}

async fn accept_loop(
    acceptor: Acceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<HttpState>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            // The only change ever sent is the order to stop.
            _ = stop.changed() => break,
            accepted = acceptor.accept() => accepted,
        };
        match accepted {
            Ok(Accepted {
                stream: Stream::Tcp(stream),
                open,
            }) => serve(stream, open, &builder, &state, &graceful),
            Ok(Accepted {
                stream: Stream::Unix(stream),
                open,
            }) => serve(stream, open, &builder, &state, &graceful),
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin; the
                // connection stays queued for another worker.
                warn!(cause = %e, "accept failed");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
    acceptor.stop();
    // Dropping `acceptor` closes this worker's descriptor only.
}

/// Serves one connection on its own task, watched for the drain.
fn serve<S>(
    stream: S,
    open: Option<OpenConnection>,
    builder: &auto::Builder<TokioExecutor>,
    state: &Arc<HttpState>,
    graceful: &GracefulShutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    state.accepted.fetch_add(1, Ordering::Relaxed);
    state.open.fetch_add(1, Ordering::Relaxed);
    let counters = state.clone();
    let state = state.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { handle(req, &state).await }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(cause = %e, "connection ended with an error");
        }
        counters.open.fetch_sub(1, Ordering::Relaxed);
        drop(open);
    });
}
