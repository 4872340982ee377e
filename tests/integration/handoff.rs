//! Keep-alive connections survive a reload: a draining worker hands each
//! idle HTTP/1 connection to the new generation, so that its client keeps
//! the connection it has and its next request is answered by a new worker.
//! Each test fails with `--handoff-connections off` (the control runs it).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// What the thinking clients saw.
#[derive(Debug, Default)]
struct Seen {
    connects: AtomicU64,
    answered: AtomicU64,
    /// Requests that failed: the connection closed or broke under one.
    failed: AtomicU64,
    /// (when the request was sent, the pid that answered).
    answers: Mutex<Vec<(Instant, u32)>>,
}

/// One GET on `stream`: the answering pid, or `None` if the connection
/// ended or broke first.
async fn get(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u32> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: handoff\r\n\r\n")
        .await
        .ok()?;
    buf.clear();
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(buf);
        let Some(head_end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..head_end]
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() < head_end + 4 + length {
            continue;
        }
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let closes = text[..head_end]
            .to_ascii_lowercase()
            .contains("connection: close");
        let body = &text[head_end + 4..head_end + 4 + length];
        let pid = body.split_whitespace().last()?.parse().ok()?;
        // A response that closes the connection makes its client
        // reconnect: the handoff is there so that none does.
        return if closes {
            Some(pid | 1 << 31)
        } else {
            Some(pid)
        };
    }
}

/// A client that connects once and sends a GET after thinking 1–5 s,
/// until `stop`; it reconnects (and counts it) if its connection ends.
async fn thinking_client(addr: std::net::SocketAddr, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let mut buf = Vec::new();
    let mut stream = None;
    while !stop.load(Ordering::Relaxed) {
        let think = Duration::from_millis(1000 + fastrand::u64(..4000));
        tokio::time::sleep(think).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if stream.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    seen.connects.fetch_add(1, Ordering::Relaxed);
                    stream = Some(s);
                }
                Err(_) => {
                    seen.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let sent = Instant::now();
        match get(stream.as_mut().expect("connected"), &mut buf).await {
            Some(pid) if pid & 1 << 31 != 0 => {
                seen.answered.fetch_add(1, Ordering::Relaxed);
                seen.answers.lock().unwrap().push((sent, pid & !(1 << 31)));
                stream = None;
            }
            Some(pid) => {
                seen.answered.fetch_add(1, Ordering::Relaxed);
                seen.answers.lock().unwrap().push((sent, pid));
            }
            None => {
                seen.failed.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
        }
    }
}

/// What a run of `clients` thinking clients through `reloads` reloads
/// showed.
struct Outcome {
    seen: Arc<Seen>,
    clients: u64,
    /// Per reload: when it started and ended, the workers after it, and
    /// how long its old generation outlived its end.
    reloads: Vec<(Instant, Instant, BTreeSet<u32>, Duration)>,
    status: serde_json::Value,
}

fn run(handoff: &str, clients: usize, reloads: usize) -> Outcome {
    let baton = Baton::serve(&[
        "--workers",
        "4",
        "--handoff-connections",
        handoff,
        "--keepalive-timeout",
        "30s",
    ]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..clients)
        .map(|_| runtime.spawn(thinking_client(baton.addr, seen.clone(), stop.clone())))
        .collect();
    // Every client connected and answered once.
    assert!(
        wait_until(slower(Duration::from_secs(30)), || {
            seen.answered.load(Ordering::Relaxed) >= clients as u64
        }),
        "the clients did not get going"
    );
    let mut ended = Vec::new();
    for reload in 1..=reloads {
        let before: BTreeSet<u32> = baton.workers().into_iter().collect();
        let start = Instant::now();
        let (code, answer) = baton.reload_wait();
        assert_eq!(code, 0, "reload {reload}: {answer}");
        let end = Instant::now();
        let after: BTreeSet<u32> = baton.workers().into_iter().collect();
        assert!(
            before.is_disjoint(&after),
            "reload {reload} replaced every worker"
        );
        let gone = wait_until(Duration::from_secs(30), || {
            before.iter().all(|&p| is_dead(p))
        });
        assert!(gone, "the old generation of reload {reload} did not exit");
        ended.push((start, end, after, end.elapsed()));
        // Time for every client to send a request or two.
        std::thread::sleep(Duration::from_secs(6));
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    Outcome {
        seen,
        clients: clients as u64,
        reloads: ended,
        status: baton.status(),
    }
}

/// 2,000 keep-alive clients thinking 1–5 s, 3 reloads: nothing fails, no
/// client opens a second connection, every request sent after a reload
/// ended is answered by that reload's workers, and each old generation is
/// gone within a second of its reload's end.
#[test]
fn keep_alive_clients_keep_their_connections_through_reloads() {
    let _heavy = heavy();
    let outcome = run("on", 2000, 3);
    let seen = &outcome.seen;
    let answered = seen.answered.load(Ordering::Relaxed);
    let failed = seen.failed.load(Ordering::Relaxed);
    let connects = seen.connects.load(Ordering::Relaxed);
    eprintln!(
        "handoff on: {answered} answered, {failed} failed, {connects} connects by {} clients; old generations gone after {:?}; master counters {}",
        outcome.clients,
        outcome.reloads.iter().map(|r| r.3).collect::<Vec<_>>(),
        outcome.status["master"]["counters"]
    );
    assert_eq!(failed, 0);
    assert_eq!(connects, outcome.clients, "a client had to connect again");
    let answers = seen.answers.lock().unwrap();
    for (_, end, workers, _) in &outcome.reloads {
        // Requests sent after this reload ended and before the next began.
        let next = outcome
            .reloads
            .iter()
            .map(|r| r.0)
            .find(|start| start > end)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let stale: Vec<_> = answers
            .iter()
            .filter(|(sent, pid)| *sent > *end && *sent < next && !workers.contains(pid))
            .collect();
        assert!(
            stale.is_empty(),
            "{} answered by an old worker, the first {:?} after the reload's end; workers after it {workers:?}",
            stale.len(),
            stale.iter().map(|(sent, pid)| (sent.duration_since(*end), pid)).min()
        );
    }
    for (_, _, _, outlived) in &outcome.reloads {
        assert!(
            *outlived < slower(Duration::from_secs(1)),
            "an old generation outlived its reload by {outlived:?}"
        );
    }
    let counters = &outcome.status["master"]["counters"];
    assert!(counters["connections_handed_over"].as_u64() >= Some(outcome.clients));
}

/// The control: the same clients with the handoff off reconnect after
/// every reload (the drain answers them with `Connection: close`).
#[test]
fn without_the_handoff_clients_reconnect() {
    let _heavy = heavy();
    let outcome = run("off", 200, 1);
    let connects = outcome.seen.connects.load(Ordering::Relaxed);
    eprintln!("handoff off: {connects} connects by 200 clients");
    assert!(connects > outcome.clients, "no client reconnected");
}
