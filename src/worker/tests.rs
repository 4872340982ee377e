//! The built-in server in this process: each connection is one end of an
//! in-memory pipe, the test holds the other as the client, and time is
//! tokio's paused clock, which moves only when every task waits for a
//! timer. So each phase's limit is checked to the millisecond, with no
//! wall-clock sleep and no socket.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::time::{sleep, Instant};

use baton_worker::server::{Server, HTTP2_PREFACE, IDLE_MOMENT_WAIT, LINGER_FOR};
use baton_worker::Builder;
use tokio::task::JoinHandle;

use super::http::{Demo, HttpState};
use crate::check::goaway::{GoawayFrame, GoawayLog, Recorded, ANY_STREAM};

const HEADER: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(60);
const BODY: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(20);
const DRAIN: Duration = Duration::from_secs(120);
const PING: Duration = Duration::from_secs(20);

fn server() -> Server {
    Builder::new()
        .header_timeout(HEADER)
        .keepalive_timeout(KEEPALIVE)
        .body_timeout(BODY)
        .http2_ping(PING)
        .start(Demo::new(HttpState::new(0)))
}

/// A new client connection to `server`.
fn connect(server: &Server) -> DuplexStream {
    let (client, ours) = tokio::io::duplex(64 * 1024);
    server.serve_connection(ours);
    client
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

/// Reads one response: its head, lower-cased, and its body.
async fn response(client: &mut DuplexStream) -> (String, String) {
    let mut bytes = Vec::new();
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = client.read(&mut chunk).await.expect("read a response");
        assert!(n > 0, "closed before a response: {bytes:?}");
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a content-length");
    let mut body = bytes[head_end..].to_vec();
    body.resize(length, 0);
    client
        .read_exact(&mut body[bytes.len() - head_end..])
        .await
        .expect("read the body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// Sends a GET and reads its response's head.
async fn get(client: &mut DuplexStream) -> String {
    client.write_all(GET).await.expect("send a request");
    let (head, _) = response(client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    head
}

/// How long after `since` the server closed the connection (the client
/// reads the end of the stream).
async fn closed_after(client: &mut DuplexStream, since: Instant) -> Duration {
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "nothing more was sent: {rest:?}");
    let closed = since.elapsed();
    // As a client does: its end closes too, which ends the server's linger.
    let _ = client.shutdown().await;
    closed
}

/// Starts `server`'s drain; the returned sender hurries it. The task ends
/// when the drain does.
fn drain(server: Server) -> (oneshot::Sender<()>, JoinHandle<Instant>) {
    let (hurry, hurried) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let hurry = async {
            if hurried.await.is_err() {
                std::future::pending::<()>().await;
            }
            DRAIN
        };
        server
            .drain(GRACE, Instant::now() + DRAIN, hurry, false)
            .await;
        Instant::now()
    });
    (hurry, task)
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let server = server();
    let start = Instant::now();
    let mut client = connect(&server);
    assert_eq!(closed_after(&mut client, start).await, HEADER);
}

#[tokio::test(start_paused = true)]
async fn a_slow_request_head_is_dropped_at_the_header_timeout_from_its_first_byte() {
    let server = server();
    let mut client = connect(&server);
    sleep(HEADER / 2).await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let first_byte = Instant::now();
    assert_eq!(closed_after(&mut client, first_byte).await, HEADER);
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_closes_at_the_keepalive_timeout_after_its_response() {
    let server = server();
    let mut client = connect(&server);
    let head = get(&mut client).await;
    assert!(!head.contains("connection: close"), "{head}");
    let answered = Instant::now();
    sleep(KEEPALIVE / 2).await;
    get(&mut client).await;
    let answered_again = Instant::now();
    assert!(answered_again > answered);
    assert_eq!(closed_after(&mut client, answered_again).await, KEEPALIVE);
}

#[tokio::test(start_paused = true)]
async fn a_draining_server_answers_an_idle_connections_next_request_then_closes_it() {
    let server = server();
    let mut client = connect(&server);
    get(&mut client).await;
    let (_hurry, drained) = drain(server);

    sleep(GRACE / 2).await;
    let head = get(&mut client).await;
    assert!(head.contains("connection: close"), "{head}");
    let answered = Instant::now();
    assert_eq!(closed_after(&mut client, answered).await, Duration::ZERO);
    let drained_at = drained.await.unwrap();
    assert!(
        drained_at < answered + GRACE,
        "the drain ends with its last connection"
    );
}

#[tokio::test(start_paused = true)]
async fn when_the_grace_ends_idle_connections_close_and_a_request_in_flight_finishes() {
    let server = server();
    let mut idle = connect(&server);
    get(&mut idle).await;
    let mut uploading = connect(&server);
    uploading
        .write_all(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhalf.")
        .await
        .unwrap();
    let start = Instant::now();
    let (_hurry, drained) = drain(server);

    assert_eq!(closed_after(&mut idle, start).await, GRACE);
    assert!(!drained.is_finished(), "the upload is still in flight");
    // The rest of the body, within the body timeout of its first half.
    sleep(BODY - GRACE - Duration::from_secs(1)).await;
    uploading.write_all(b"rest.").await.unwrap();
    let (head, body) = response(&mut uploading).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body.contains("10"), "the whole body was read: {body}");
    let answered = Instant::now();
    closed_after(&mut uploading, answered).await;
    assert!(drained.await.unwrap() < answered + Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_request_already_sent_when_the_drain_closes_idle_connections_is_answered() {
    let server = server();
    let mut client = connect(&server);
    get(&mut client).await;
    let (hurry, drained) = drain(server);
    // Let the drain reach its grace.
    sleep(Duration::from_millis(1)).await;

    // The request is in the pipe before the close is asked; nothing runs
    // between the two.
    client.write_all(GET).await.unwrap();
    hurry.send(()).unwrap();
    let (head, _) = response(&mut client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    closed_after(&mut client, Instant::now()).await;
    drained.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_drain_ends_when_its_closed_connections_have_lingered() {
    let server = server();
    let mut client = connect(&server);
    get(&mut client).await;
    let (hurry, drained) = drain(server);
    let hurried = Instant::now();
    hurry.send(()).unwrap();
    // The client reads the end and keeps its own end open: the worker must
    // not exit (which would reset the socket) before the linger is over.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        drained.await.unwrap(),
        hurried + LINGER_FOR,
        "the linger is part of the drain"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hurried_drain_closes_idle_connections_at_once() {
    let server = server();
    let mut client = connect(&server);
    get(&mut client).await;
    let (hurry, drained) = drain(server);
    sleep(Duration::from_secs(1)).await;
    let hurried = Instant::now();
    hurry.send(()).unwrap();
    assert_eq!(closed_after(&mut client, hurried).await, Duration::ZERO);
    assert_eq!(drained.await.unwrap(), hurried);
}

/// An HTTP/2 client connection to `server`: its request sender, the GOAWAY
/// frames it receives, and the task that drives it.
async fn connect_h2(
    server: &Server,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    GoawayLog,
    JoinHandle<Result<(), h2::Error>>,
) {
    let (recorded, log) = Recorded::new(connect(server));
    let (send, connection) = h2::client::handshake(recorded).await.expect("handshake");
    (send, log, tokio::spawn(connection))
}

/// Sends a request on `send` (a body follows if `body_follows`), and
/// returns its response and its body's stream.
async fn open_stream(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    body_follows: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = hyper::Request::builder()
        .method(method)
        .uri("http://test/")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.expect("may open a stream");
    ready
        .send_request(request, !body_follows)
        .expect("stream opened")
}

/// The status of a response, its body read to the end.
async fn status_of(response: h2::client::ResponseFuture) -> u16 {
    let response = response.await.expect("a response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status
}

fn goaway(last_stream: u32) -> GoawayFrame {
    GoawayFrame {
        last_stream,
        error_code: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_is_sent_one_goaway_naming_its_last_stream_and_closed() {
    let server = server();
    let (mut send, log, driven) = connect_h2(&server).await;
    for _ in 0..3 {
        let (response, _) = open_stream(&mut send, "GET", false).await;
        assert_eq!(status_of(response).await, 200);
    }
    let start = Instant::now();
    let (_hurry, drained) = drain(server);
    driven.await.unwrap().expect("a clean end");
    assert_eq!(
        log.frames(),
        vec![goaway(5)],
        "streams 1, 3 and 5 were served"
    );
    assert_eq!(drained.await.unwrap(), start, "nothing keeps the drain");
}

#[tokio::test(start_paused = true)]
async fn a_busy_http2_connection_is_sent_the_two_step_goaway_and_its_stream_finishes() {
    let server = server();
    let (mut send, log, driven) = connect_h2(&server).await;
    let (response, mut upload) = open_stream(&mut send, "POST", true).await;
    upload
        .send_data(bytes::Bytes::from_static(b"half."), false)
        .unwrap();
    sleep(Duration::from_millis(10)).await;
    let start = Instant::now();
    let (_hurry, drained) = drain(server);

    sleep(IDLE_MOMENT_WAIT - Duration::from_millis(1)).await;
    assert_eq!(log.frames(), vec![], "waiting for a moment with no stream");
    sleep(Duration::from_millis(2)).await;
    // The client answers the PING at once: the second GOAWAY follows.
    assert_eq!(log.frames(), vec![goaway(ANY_STREAM), goaway(1)]);
    upload
        .send_data(bytes::Bytes::from_static(b"rest."), true)
        .unwrap();
    assert_eq!(status_of(response).await, 200, "the open stream finished");
    driven.await.unwrap().expect("a clean end");
    let drained_at = drained.await.unwrap();
    assert!(drained_at - start < IDLE_MOMENT_WAIT + Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn an_http2_client_that_never_answers_a_ping_is_dropped() {
    let server = server();
    let mut client = connect(&server);
    client.write_all(HTTP2_PREFACE).await.unwrap();
    client
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let start = Instant::now();
    // Reads the server's frames (a PING among them) and never answers.
    let mut frames = Vec::new();
    let _ = client.read_to_end(&mut frames).await;
    let closed = start.elapsed();
    assert_eq!(
        closed,
        PING * 2,
        "a PING after {PING:?} of silence, unanswered as long"
    );
}

#[tokio::test(start_paused = true)]
async fn http2_answers_carry_their_length_and_a_head_request_gets_no_body() {
    let server = server();
    let (mut send, _log, _driven) = connect_h2(&server).await;
    for (method, body_expected) in [("GET", true), ("HEAD", false)] {
        let (response, _) = open_stream(&mut send, method, false).await;
        let response = response.await.expect("a response");
        let length: usize = response.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(length > 0, "{method}");
        let mut body = response.into_body();
        let mut read = 0;
        while let Some(chunk) = body.data().await {
            read += chunk.expect("the body").len();
        }
        let expected = if body_expected { length } else { 0 };
        assert_eq!(read, expected, "{method}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_drained_http2_connection_that_carried_no_stream_yet_serves_its_first() {
    let server = server();
    let (mut send, log, driven) = connect_h2(&server).await;
    let (_hurry, drained) = drain(server);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(log.frames(), vec![], "no GOAWAY(0) for a stream on its way");
    let (response, _) = open_stream(&mut send, "GET", false).await;
    assert_eq!(status_of(response).await, 200);
    driven.await.unwrap().expect("a clean end");
    assert_eq!(log.frames(), vec![goaway(1)]);
    drained.await.unwrap();
}
