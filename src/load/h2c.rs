//! The `h2c` clients: HTTP/2 with prior knowledge, each client one
//! connection at a time carrying many concurrent streams, as gRPC and
//! HTTP/2 pools use them.
//!
//! A stream the server did not process is sent again on a new connection
//! and counted apart, as safe: one above the last stream id of a GOAWAY, one
//! opened on a connection that had already received GOAWAY, and one reset
//! with `REFUSED_STREAM` (RFC 9113 §8.7 guarantees none was processed).
//! Anything else that ends a stream early (a reset, a cut connection, a
//! status other than 200) is a failure.
//!
//! Every connection's GOAWAY frames are recorded as they arrive, so the
//! report can say how the server ended each connection it closed: one
//! GOAWAY naming the last stream, the two-step GOAWAY (2^31−1 first), or no
//! GOAWAY at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::Reason;
use hyper::{Request, StatusCode};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::{
    classify_io, timed_out, worker_pid, Attempt, ClientMode, FailureKind, LoadPlan, LoadReport,
    Outcome,
};
use crate::check::goaway::{GoawayLog, Recorded, ANY_STREAM};

/// How the server ended the HTTP/2 connections it closed while the load ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GoawaySequences {
    /// One GOAWAY naming the last stream.
    pub single: u64,
    /// GOAWAY(2^31−1), then one naming the last stream.
    pub two_step: u64,
    /// Any other sequence (GOAWAY(2^31−1) alone, say).
    pub other: u64,
    /// Closed without a GOAWAY.
    pub without_goaway: u64,
}

impl GoawaySequences {
    fn count(&mut self, log: &GoawayLog) {
        let frames = log.frames();
        let named = |i: usize| frames.get(i).is_some_and(|f| f.last_stream != ANY_STREAM);
        match frames.len() {
            0 => self.without_goaway += 1,
            1 if named(0) => self.single += 1,
            2 if !named(0) && named(1) => self.two_step += 1,
            _ => self.other += 1,
        }
    }

    pub fn merge(&mut self, other: GoawaySequences) {
        self.single += other.single;
        self.two_step += other.two_step;
        self.other += other.other;
        self.without_goaway += other.without_goaway;
    }

    pub fn total(&self) -> u64 {
        self.single + self.two_step + self.other + self.without_goaway
    }
}

/// Runs one `h2c` client: `streams` concurrent streams, each sending GETs
/// one after another until `deadline`.
pub async fn run_client(
    plan: Arc<LoadPlan>,
    streams: u16,
    epoch: Instant,
    deadline: Instant,
    sample_cap: usize,
) -> LoadReport {
    let mode = ClientMode::H2c { streams };
    let pool = Arc::new(Pool::new(plan.target));
    let per_stream = sample_cap / usize::from(streams.max(1));
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (plan, pool) = (plan.clone(), pool.clone());
            tokio::spawn(async move {
                let mut report = LoadReport::default();
                while Instant::now() < deadline && !plan.progress.stopped.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    plan.progress.attempted.fetch_add(1, Ordering::Relaxed);
                    let outcome = timeout(plan.request_timeout, pool.get(&plan))
                        .await
                        .unwrap_or_else(|_| Err(timed_out()));
                    let attempt = Attempt {
                        mode,
                        epoch,
                        started,
                        worker_pid: None,
                        sample_cap: per_stream,
                    };
                    report.record(attempt, outcome, &plan.progress);
                }
                report
            })
        })
        .collect();
    let mut report = LoadReport::default();
    for task in tasks {
        report.merge(task.await.expect("load clients do not panic"));
    }
    report.refused_retried = pool.refused.load(Ordering::Relaxed);
    report.goaways = pool.goaways();
    report.of_mode(mode)
}

/// Why a stream ended without a response.
enum StreamError {
    /// The server did not process it: safe to send again.
    Refused,
    Failed(FailureKind, String),
}

impl From<h2::Error> for StreamError {
    fn from(e: h2::Error) -> Self {
        let unprocessed = e.reason() == Some(Reason::REFUSED_STREAM)
            || (e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR));
        if unprocessed {
            return StreamError::Refused;
        }
        let kind = match e.get_io() {
            Some(io) if io.kind() == std::io::ErrorKind::ConnectionReset => FailureKind::Reset,
            Some(_) => FailureKind::Eof,
            None if e.is_reset() => FailureKind::Reset,
            None => FailureKind::Other,
        };
        StreamError::Failed(kind, e.to_string())
    }
}

/// One client's connection, replaced when the server ends it, and every
/// connection it had.
struct Pool {
    target: std::net::SocketAddr,
    current: tokio::sync::Mutex<Option<(u64, SendRequest<Bytes>)>>,
    opened: AtomicU64,
    /// Each connection's GOAWAY frames and the task driving it.
    connections: Mutex<Vec<(GoawayLog, JoinHandle<()>)>>,
    /// Streams the server did not process, sent again.
    refused: AtomicU64,
}

impl Pool {
    fn new(target: std::net::SocketAddr) -> Self {
        Pool {
            target,
            current: tokio::sync::Mutex::new(None),
            opened: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// One GET, sent again on a new connection as long as the server
    /// refuses it unprocessed.
    async fn get(&self, plan: &LoadPlan) -> Outcome {
        loop {
            let (id, send) = self.connection().await?;
            match get(send, plan).await {
                Ok(pid) => return Ok(pid),
                Err(error) => {
                    self.retire(id).await;
                    match error {
                        StreamError::Refused => self.refused.fetch_add(1, Ordering::Relaxed),
                        StreamError::Failed(kind, detail) => return Err((kind, detail)),
                    };
                }
            }
        }
    }

    /// The live connection, a new one if there is none.
    async fn connection(&self) -> Result<(u64, SendRequest<Bytes>), (FailureKind, String)> {
        let mut current = self.current.lock().await;
        if let Some((id, send)) = current.as_ref() {
            return Ok((*id, send.clone()));
        }
        let stream = TcpStream::connect(self.target)
            .await
            .map_err(|e| (classify_io(&e), format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (stream, log) = Recorded::new(stream);
        let (send, connection) = h2::client::handshake(stream)
            .await
            .map_err(|e| (FailureKind::Other, format!("HTTP/2 handshake: {e}")))?;
        let task = tokio::spawn(async move {
            // Errors surface on the streams that were open.
            let _ = connection.await;
        });
        self.connections
            .lock()
            .expect("not poisoned")
            .push((log, task));
        let id = self.opened.fetch_add(1, Ordering::Relaxed);
        *current = Some((id, send.clone()));
        Ok((id, send))
    }

    /// Connection `id` takes no more streams: the next needs a new one.
    async fn retire(&self, id: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(live, _)| *live == id) {
            *current = None;
        }
    }

    /// How the server ended each connection it ended (the ones still open
    /// are the client's to close).
    fn goaways(&self) -> GoawaySequences {
        let mut sequences = GoawaySequences::default();
        for (log, task) in self.connections.lock().expect("not poisoned").iter() {
            if task.is_finished() {
                sequences.count(log);
            } else {
                task.abort();
            }
        }
        sequences
    }
}

/// One GET on `send`'s connection.
async fn get(send: SendRequest<Bytes>, plan: &LoadPlan) -> Result<Option<u32>, StreamError> {
    let mut send = send.ready().await?;
    let request = Request::get(format!("http://{}{}", plan.host, plan.path))
        .body(())
        .map_err(|e| StreamError::Failed(FailureKind::Other, e.to_string()))?;
    let (response, _) = send.send_request(request, true)?;
    let response = response.await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    if status != StatusCode::OK {
        return Err(StreamError::Failed(
            FailureKind::BadStatus,
            format!("status {status}"),
        ));
    }
    Ok(worker_pid(&bytes))
}
