//! The `pipeline` clients: HTTP/1 keep-alive connections carrying 2 to 8
//! GETs at a time, all written before the first answer is read (RFC 9112
//! §9.3.2). hyper's client does not pipeline, so these speak HTTP/1 over a
//! plain socket and read the answers with httparse.
//!
//! A server that ends a connection with `Connection: close` has not
//! processed the requests after that answer: they are sent again on a new
//! connection, counted in `resent_after_close`, and so are the GETs of a
//! batch a reused connection closed before answering any (the server's idle
//! close crossed it, RFC 9112 §9.3.1). A connection that ends without
//! `Connection: close` after answering part of a batch fails the rest, and
//! so does an answer cut short: pipelining is where a close that does not
//! linger turns into a reset that destroys answers already sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{
    classify_io, timed_out, worker_pid, Attempt, ClientMode, FailureKind, LoadPlan, LoadReport,
    Outcome,
};

/// The most requests in flight on a connection.
const MAX_DEPTH: usize = 8;

/// Runs one `pipeline` client until `deadline`.
pub async fn run_client(
    plan: Arc<LoadPlan>,
    epoch: Instant,
    deadline: Instant,
    sample_cap: usize,
) -> LoadReport {
    let mode = ClientMode::Pipeline;
    let mut report = LoadReport::default();
    let mut rng = fastrand::Rng::new();
    let mut connection: Option<TcpStream> = None;
    // Requests a `Connection: close` left unanswered, to send again.
    let mut owed = 0;
    while Instant::now() < deadline && !plan.progress.stopped.load(Ordering::Relaxed) {
        let depth = if owed > 0 {
            owed
        } else {
            rng.usize(2..=MAX_DEPTH)
        };
        let started = Instant::now();
        let mut batch = timeout(
            plan.request_timeout,
            pipeline(&plan, &mut connection, depth),
        )
        .await
        .unwrap_or_else(|_| Batch::failed(timed_out()));
        owed = batch.unanswered_after_close;
        let closed = matches!(
            batch.failure,
            Some((FailureKind::Eof | FailureKind::Reset, _))
        );
        if batch.reused && batch.answered == 0 && closed {
            // The server closed the reused connection as the batch crossed
            // (its idle close): none was answered, GETs all, so all are sent
            // again on a new connection, as for one GET (RFC 9112 §9.3.1).
            owed = depth;
            batch.failure = None;
        }
        report.resent_after_close += owed as u64;
        let attempt = Attempt {
            mode,
            epoch,
            started,
            worker_pid: None,
            sample_cap,
        };
        for outcome in batch.answers {
            plan.progress.attempted.fetch_add(1, Ordering::Relaxed);
            report.record(attempt, outcome, &plan.progress);
        }
        if let Some(failure) = batch.failure {
            connection = None;
            for _ in batch.answered..depth {
                plan.progress.attempted.fetch_add(1, Ordering::Relaxed);
                report.record(attempt, Err(failure.clone()), &plan.progress);
            }
        }
        if batch.closed {
            connection = None;
        }
    }
    report.of_mode(mode)
}

/// What became of one pipelined batch.
#[derive(Default)]
struct Batch {
    /// Each answer read, in order.
    answers: Vec<Outcome>,
    answered: usize,
    /// The server announced its close: the rest were not processed.
    unanswered_after_close: usize,
    /// The connection is closed (announced or not).
    closed: bool,
    /// The batch went on a connection that had carried one before.
    reused: bool,
    /// Why the rest of the batch failed.
    failure: Option<(FailureKind, String)>,
}

impl Batch {
    fn failed(failure: (FailureKind, String)) -> Self {
        Batch {
            closed: true,
            failure: Some(failure),
            ..Batch::default()
        }
    }
}

/// Writes `depth` GETs on the connection (a new one if there is none), then
/// reads their answers.
async fn pipeline(plan: &LoadPlan, slot: &mut Option<TcpStream>, depth: usize) -> Batch {
    let reused = slot.is_some();
    if !reused {
        match TcpStream::connect(plan.target).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                *slot = Some(stream);
            }
            Err(e) => return Batch::failed((classify_io(&e), format!("connect: {e}"))),
        }
    }
    let stream = slot.as_mut().expect("connected above");
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", plan.path, plan.host);
    let mut batch = Batch {
        reused,
        ..Batch::default()
    };
    if let Err(e) = stream.write_all(request.repeat(depth).as_bytes()).await {
        batch.closed = true;
        batch.failure = Some((classify_io(&e), format!("write: {e}")));
        return batch;
    }
    let mut buffer = Vec::new();
    while batch.answered < depth {
        match read_answer(stream, &mut buffer).await {
            Ok(answer) => {
                batch.answered += 1;
                batch.answers.push(answer.outcome);
                if answer.closes {
                    batch.closed = true;
                    batch.unanswered_after_close = depth - batch.answered;
                    return batch;
                }
            }
            Err(failure) => {
                batch.closed = true;
                batch.failure = Some(failure);
                return batch;
            }
        }
    }
    batch
}

/// One answer read off a pipelined connection.
struct Answer {
    outcome: Outcome,
    /// It said `Connection: close`.
    closes: bool,
}

/// Reads one answer (head and `content-length` body) from `stream`, with
/// what is already in `buffer` first; leaves what follows it there.
async fn read_answer(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Answer, (FailureKind, String)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut head = httparse::Response::new(&mut headers);
        match head.parse(buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let header = |name: &str| {
                    head.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let length: usize = header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| {
                        (
                            FailureKind::Other,
                            "an answer without content-length".to_owned(),
                        )
                    })?;
                let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let status = head.code.unwrap_or(0);
                fill(stream, buffer, head_len + length).await?;
                let body: Vec<u8> = buffer.drain(..head_len + length).skip(head_len).collect();
                let outcome = if status == 200 {
                    Ok(worker_pid(&body))
                } else {
                    Err((FailureKind::BadStatus, format!("status {status}")))
                };
                return Ok(Answer { outcome, closes });
            }
            Ok(httparse::Status::Partial) => {
                let wanted = buffer.len() + 1;
                fill(stream, buffer, wanted).await?;
            }
            Err(e) => return Err((FailureKind::Other, format!("a malformed answer: {e}"))),
        }
    }
}

/// Reads until `buffer` holds `len` bytes.
async fn fill(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    len: usize,
) -> Result<(), (FailureKind, String)> {
    let mut chunk = [0u8; 16 * 1024];
    while buffer.len() < len {
        match stream.read(&mut chunk).await {
            Ok(0) => {
                return Err((
                    FailureKind::Eof,
                    "the connection closed with answers owed".to_owned(),
                ))
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) => return Err((classify_io(&e), e.to_string())),
        }
    }
    Ok(())
}
