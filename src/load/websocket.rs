//! The `websocket` clients: a WebSocket each (`GET /ws` upgraded, as
//! baton's worker serves it), sending a text message every 10 to 50 ms and
//! waiting for its echo, through reloads.
//!
//! A draining server ends a WebSocket with a close frame; the client
//! answers it and opens a new one, as WebSocket clients do, and the
//! connection counts as closed cleanly. A message sent as the close frame
//! crossed it was not answered (no data may follow a close frame): it is
//! sent again on the new connection and counted in `resent_after_close`.
//! A WebSocket cut without a close frame (an EOF, a reset), while a message
//! waits for its echo or while the client is quiet, is a failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{client_async, WebSocketStream};

use super::{classify_io, timed_out, Attempt, ClientMode, FailureKind, LoadPlan, LoadReport};
use crate::worker::websocket::PATH;

/// How the WebSockets of a load ended, when the server ended them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Closes {
    /// With a close frame: the client reconnects, nothing is lost.
    pub clean: u64,
    /// Without one (EOF, reset): failures.
    pub cut: u64,
}

impl Closes {
    pub fn merge(&mut self, other: Closes) {
        self.clean += other.clean;
        self.cut += other.cut;
    }
}

/// Times a message goes out on a new WebSocket after a close frame crossed
/// it before it counts as failed (each close is a reload's drain).
const SENDS: usize = 3;

type Socket = WebSocketStream<TcpStream>;

type Failure = (FailureKind, String);

/// Runs one `websocket` client until `deadline`.
pub async fn run_client(
    plan: Arc<LoadPlan>,
    epoch: Instant,
    deadline: Instant,
    sample_cap: usize,
) -> LoadReport {
    let mode = ClientMode::Websocket;
    let mut report = LoadReport::default();
    let mut rng = fastrand::Rng::new();
    let mut socket: Option<Socket> = None;
    while Instant::now() < deadline && !plan.progress.stopped.load(Ordering::Relaxed) {
        let think = Duration::from_millis(rng.u64(10..=50));
        let started = Instant::now();
        let attempt = Attempt {
            mode,
            epoch,
            started,
            worker_pid: None,
            sample_cap,
        };
        if let Err(failure) = listen(&mut socket, think, &mut report.websocket_closes).await {
            plan.progress.attempted.fetch_add(1, Ordering::Relaxed);
            report.record(attempt, Err(failure), &plan.progress);
            continue;
        }
        let started = Instant::now();
        plan.progress.attempted.fetch_add(1, Ordering::Relaxed);
        let text = format!("message {} of this client", report.attempted);
        let exchanged = exchange(&plan, &mut socket, &text, &mut report);
        let outcome = timeout(plan.request_timeout, exchanged)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
            .map(|()| None);
        if outcome.is_err() {
            socket = None;
        }
        let attempt = Attempt { started, ..attempt };
        report.record(attempt, outcome, &plan.progress);
    }
    if let Some(mut socket) = socket {
        let _ = timeout(Duration::from_secs(1), socket.close(None)).await;
    }
    report.of_mode(mode)
}

/// Waits `think` on the open WebSocket, if any, for what the server may
/// send unasked: a close frame ends it cleanly; a cut is a failure.
async fn listen(
    slot: &mut Option<Socket>,
    think: Duration,
    closes: &mut Closes,
) -> Result<(), Failure> {
    let Some(socket) = slot.as_mut() else {
        tokio::time::sleep(think).await;
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + think;
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, socket.next()).await else {
            return Ok(());
        };
        match frame {
            Some(Ok(Message::Close(_))) => {
                closes.clean += 1;
                finish_closing(slot.take());
                return Ok(());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => {
                *slot = None;
                return Err((FailureKind::Other, format!("unasked message {other:?}")));
            }
            Some(Err(e)) => {
                closes.cut += 1;
                *slot = None;
                return Err(cut(e, "while the client was quiet"));
            }
            None => {
                closes.cut += 1;
                *slot = None;
                return Err(cut_short("while the client was quiet"));
            }
        }
    }
}

/// Sends `text` and reads its echo, on a new WebSocket if the open one
/// is closed by the server first.
async fn exchange(
    plan: &LoadPlan,
    slot: &mut Option<Socket>,
    text: &str,
    report: &mut LoadReport,
) -> Result<(), Failure> {
    for send in 1..=SENDS {
        let socket = match slot {
            Some(socket) => socket,
            None => slot.insert(open(plan).await?),
        };
        if let Err(e) = socket.send(Message::text(text)).await {
            report.websocket_closes.cut += 1;
            return Err(cut(e, "sending"));
        }
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(echo))) if echo.as_str() == text => return Ok(()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) => {
                    report.websocket_closes.clean += 1;
                    finish_closing(slot.take());
                    if send < SENDS {
                        report.resent_after_close += 1;
                    }
                    break;
                }
                Some(Ok(other)) => {
                    return Err((FailureKind::Other, format!("sent {text:?}, got {other:?}")))
                }
                Some(Err(e)) => {
                    report.websocket_closes.cut += 1;
                    return Err(cut(e, "waiting for an echo"));
                }
                None => {
                    report.websocket_closes.cut += 1;
                    return Err(cut_short("waiting for an echo"));
                }
            }
        }
    }
    Err((
        FailureKind::Eof,
        format!("closed by the server {SENDS} times in a row before an echo"),
    ))
}

/// Opens a WebSocket to the plan's target.
async fn open(plan: &LoadPlan) -> Result<Socket, Failure> {
    let stream = TcpStream::connect(plan.target)
        .await
        .map_err(|e| (classify_io(&e), format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{}{PATH}", plan.host);
    let (socket, _) = client_async(url, stream).await.map_err(|e| match e {
        tungstenite::Error::Http(response) => (
            FailureKind::BadStatus,
            format!("the handshake was answered {}", response.status()),
        ),
        e => cut(e, "in the handshake"),
    })?;
    Ok(socket)
}

/// Answers the server's close frame and waits for its end of the socket,
/// off the client's path (the client opens a new WebSocket meanwhile).
fn finish_closing(socket: Option<Socket>) {
    if let Some(mut socket) = socket {
        tokio::spawn(async move {
            let _ = timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = socket.next().await {}
            })
            .await;
        });
    }
}

/// A WebSocket that ended with `error` while `doing`.
fn cut(error: tungstenite::Error, doing: &str) -> Failure {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Io(e) => (classify_io(&e), format!("{e} {doing}")),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            cut_short(doing)
        }
        e => (FailureKind::Other, format!("{e} {doing}")),
    }
}

fn cut_short(doing: &str) -> Failure {
    (
        FailureKind::Eof,
        format!("cut without a close frame {doing}"),
    )
}
