//! The built-in worker's HTTP behaviour: its endpoints over HTTP/1.1 and h2c,
//! malformed requests, and request bodies that are still being uploaded when
//! their worker is told to drain.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

/// A keep-alive connection that a worker has certainly accepted: one request
/// has been answered on it.
fn accepted_connection(baton: &Baton) -> TcpStream {
    let mut conn = TcpStream::connect(baton.addr).unwrap();
    let response = exchange(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    conn
}

#[test]
fn endpoints_over_http1() {
    let baton = Baton::serve(&["--workers", "1"]);
    let pid = baton.workers()[0];
    let mut conn = TcpStream::connect(baton.addr).unwrap();
    let root = exchange(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(root.starts_with("HTTP/1.1 200"), "{root}");
    assert!(
        root.ends_with(&format!("Process handled by pid: {pid}")),
        "{root}"
    );
    let health = exchange(&mut conn, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let post = exchange(
        &mut conn,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(
        post.ends_with(&format!("pid: {pid}, received 5 bytes")),
        "{post}"
    );
    let missing = exchange(&mut conn, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[test]
fn endpoints_over_h2c() {
    let baton = Baton::serve(&["--workers", "1"]);
    let pid = baton.workers()[0];
    let body = runtime().block_on(async {
        let stream = tokio::net::TcpStream::connect(baton.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::post("/")
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    });
    assert_eq!(
        &body[..],
        format!("Process handled by pid: {pid}, received 3 bytes").as_bytes()
    );
}

#[test]
fn malformed_requests_get_400_and_harm_no_worker() {
    let baton = Baton::serve(&["--workers", "1"]);
    let workers = baton.workers();
    for garbage in [
        &b"\x16\x03\x01\x02\x00garbage that is not http\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"GET /\x7f\x00 HTTP/9.9\r\n\r\n",
        // RFC 9112 §3.2: no Host in HTTP/1.1, or more than one in any.
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(baton.addr).unwrap();
        let response = exchange(&mut conn, garbage);
        assert!(
            response.starts_with("HTTP/1.1 400") || response.starts_with("HTTP/1.0 400"),
            "{garbage:?} got {response:?}"
        );
    }
    let mut conn = TcpStream::connect(baton.addr).unwrap();
    assert!(exchange(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 200"));
    assert_eq!(baton.workers(), workers, "no worker crashed");
}

/// An upload in flight finishes on its worker through a reload; then its
/// connection moves to the new worker (the handoff), so the answer does
/// not close it and the client's next request is the new worker's.
#[test]
fn an_upload_in_flight_finishes_across_a_reload() {
    let baton = Baton::serve(&["--workers", "1"]);
    let old = baton.workers();
    let mut conn = accepted_connection(&baton);
    conn.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n")
        .unwrap();
    conn.write_all(&[b'a'; 10000]).unwrap();
    baton.reload();
    baton.wait_log("draining: stopped accepting", Duration::from_secs(5));
    conn.write_all(&[b'b'; 10000]).unwrap();
    let response = read_response(&mut conn);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("received 20000 bytes"), "{response}");
    assert!(
        response.contains(&format!("pid: {},", old[0])),
        "{response}"
    );
    assert!(
        !response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    let next = exchange(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    assert!(
        !next.contains(&format!("pid: {}", old[0])),
        "the next request is the new worker's, not {}'s: {next}",
        old[0]
    );
}

#[test]
fn a_drain_that_overruns_its_timeout_ends_at_the_deadline() {
    let baton = Baton::serve(&[
        "--workers",
        "1",
        "--drain-timeout",
        "1s",
        "--drain-grace",
        "200ms",
    ]);
    let mut conn = accepted_connection(&baton);
    // An upload that never finishes keeps the old worker busy.
    conn.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nstart")
        .unwrap();
    baton.reload();
    let exited = baton.wait_event(Event::WorkerDrained, Duration::from_secs(5));
    assert_eq!(exited.parsed::<u64>("generation"), Some(1), "{exited}");
    baton.wait_log("drain deadline passed", Duration::from_secs(1));
}

/// The pid in a built-in worker's answer.
fn answered_by(response: &str) -> u32 {
    let (_, pid) = response
        .rsplit_once("pid: ")
        .unwrap_or_else(|| panic!("no pid in {response:?}"));
    pid.trim().parse().unwrap()
}

/// A keep-alive connection idle past `PARK_AFTER` (1 s) leaves hyper and
/// waits parked, its buffers freed: its next requests are answered on the
/// same connection, and a reload while it is parked hands it to the new
/// worker, which answers the next one.
#[test]
fn a_parked_keep_alive_connection_is_answered_on_the_same_connection() {
    let baton = Baton::serve(&["--workers", "1"]);
    let mut stream = TcpStream::connect(baton.addr).unwrap();
    let request = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";
    let first = exchange(&mut stream, request);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Idle long enough to park (between 1 and 2 s): the pause is what is
    // tested, not a wait for a condition.
    let past_the_park = Duration::from_millis(2500);
    for round in 1..=2 {
        std::thread::sleep(past_the_park);
        let answer = exchange(&mut stream, request);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "round {round}: {answer}"
        );
        assert_eq!(answered_by(&answer), answered_by(&first));
    }
    std::thread::sleep(past_the_park);
    baton.reload();
    let old = answered_by(&first);
    let gone = wait_until(Duration::from_secs(30), || is_dead(old));
    assert!(
        gone,
        "the old worker exits once its parked connection moved"
    );
    let answer = exchange(&mut stream, request);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "after the reload: {answer}"
    );
    assert_ne!(answered_by(&answer), old, "the new worker answers");
}
