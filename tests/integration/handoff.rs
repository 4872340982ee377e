//! Keep-alive connections survive a reload: a draining worker hands each
//! idle HTTP/1 connection to the new generation, so that its client keeps
//! the connection it has and its next request is answered by a new worker.
//! Each test fails with `--handoff-connections off` (the control runs it).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
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
    /// (when a request failed, the requests its connection had carried
    /// before: 0 for a new connection's first), to tell where failures
    /// come from.
    failures: Mutex<Vec<(Instant, u64)>>,
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

/// A client that connects once and sends a GET after thinking for a time
/// in `think_ms`, until `stop`; it reconnects (and counts it) if its
/// connection ends.
async fn thinking_client(
    addr: std::net::SocketAddr,
    think_ms: std::ops::Range<u64>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = Vec::new();
    let mut stream = None;
    let mut carried = 0;
    let failed = |carried| {
        seen.failed.fetch_add(1, Ordering::Relaxed);
        seen.failures
            .lock()
            .unwrap()
            .push((Instant::now(), carried));
    };
    while !stop.load(Ordering::Relaxed) {
        let think = Duration::from_millis(fastrand::u64(think_ms.clone()));
        tokio::time::sleep(think).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if stream.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    seen.connects.fetch_add(1, Ordering::Relaxed);
                    stream = Some(s);
                    carried = 0;
                }
                Err(_) => {
                    failed(0);
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
                carried += 1;
            }
            None => {
                failed(carried);
                stream = None;
            }
        }
    }
}

/// Starts `clients` thinking clients (see [`thinking_client`]) and waits
/// until each has connected and been answered once.
fn start_thinking_clients(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    clients: usize,
    think_ms: std::ops::Range<u64>,
    seen: &Arc<Seen>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let tasks = (0..clients)
        .map(|_| {
            runtime.spawn(thinking_client(
                addr,
                think_ms.clone(),
                seen.clone(),
                stop.clone(),
            ))
        })
        .collect();
    assert!(
        wait_until(slower(Duration::from_secs(30)), || {
            seen.answered.load(Ordering::Relaxed) >= clients as u64
        }),
        "the clients did not get going"
    );
    tasks
}

/// Waits for every client task; a client that panicked (an answer that
/// was not a 200) fails the test.
fn join_clients(runtime: &tokio::runtime::Runtime, tasks: Vec<tokio::task::JoinHandle<()>>) {
    runtime.block_on(async {
        for task in tasks {
            task.await
                .expect("a client saw an answer that was not a 200");
        }
    });
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
    let runtime = runtime();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start_thinking_clients(&runtime, baton.addr, clients, 1000..5000, &seen, &stop);
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
    join_clients(&runtime, tasks);
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

/// What clients sending without pause saw.
#[derive(Debug, Default)]
struct Tight {
    answered: AtomicU64,
    /// Requests whose connection ended or broke before their answer.
    failed: AtomicU64,
    /// Answers cut short or not a 200.
    bad: AtomicU64,
    connects: AtomicU64,
}

/// How a [`tight_client`] writes each request.
#[derive(Debug, Clone, Copy)]
enum Writes {
    /// A GET at once.
    Whole,
    /// A GET in two parts a few milliseconds apart, so that many moves
    /// fall between them.
    Split,
    /// A small POST whose body follows its head after up to 1.5 s: the
    /// connection is busy most of the time and idles at any moment, so
    /// that a draining worker hands connections over all along its drain.
    SlowBody,
}

/// Sends requests back to back on one connection until `stop`, written as
/// `writes` says, reconnecting only after a `Connection: close` answer.
async fn tight_client(
    addr: std::net::SocketAddr,
    writes: Writes,
    seen: Arc<Tight>,
    stop: Arc<AtomicBool>,
) {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: handoff\r\nUser-Agent: tight\r\n\r\n";
    const POST: &[u8] = b"POST / HTTP/1.1\r\nHost: handoff\r\nContent-Length: 16\r\n\r\n";
    let mut buf = Vec::new();
    let mut stream: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let connection = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => {
                    seen.connects.fetch_add(1, Ordering::Relaxed);
                    stream.insert(s)
                }
                Err(_) => {
                    seen.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        let (first, rest, pause): (&[u8], &[u8], _) = match writes {
            Writes::Whole => (REQUEST, b"", Duration::ZERO),
            Writes::Split => {
                let (first, rest) = REQUEST.split_at(fastrand::usize(1..REQUEST.len()));
                (first, rest, Duration::from_micros(fastrand::u64(..3000)))
            }
            Writes::SlowBody => (
                POST,
                b"0123456789abcdef",
                Duration::from_millis(fastrand::u64(..1500)),
            ),
        };
        let sent = async {
            connection.write_all(first).await?;
            if !rest.is_empty() {
                tokio::time::sleep(pause).await;
                connection.write_all(rest).await?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        if sent.is_err() {
            seen.failed.fetch_add(1, Ordering::Relaxed);
            stream = None;
            continue;
        }
        match read_answer(connection, &mut buf).await {
            Answer::Whole { closes } => {
                seen.answered.fetch_add(1, Ordering::Relaxed);
                if closes {
                    stream = None;
                }
            }
            Answer::Cut => {
                seen.bad.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
            Answer::None => {
                seen.failed.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
        }
    }
}

/// Starts `clients` [`tight_client`]s, the `i`th writing as `writes(i)`
/// says, and waits until they have been answered `at_least` times.
fn start_tight_clients(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    clients: usize,
    writes: impl Fn(usize) -> Writes,
    at_least: u64,
    seen: &Arc<Tight>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let tasks = (0..clients)
        .map(|i| runtime.spawn(tight_client(addr, writes(i), seen.clone(), stop.clone())))
        .collect();
    assert!(
        wait_until(slower(Duration::from_secs(10)), || {
            seen.answered.load(Ordering::Relaxed) >= at_least
        }),
        "the clients did not get going"
    );
    tasks
}

/// How one response came.
enum Answer {
    /// A 200 with its whole body.
    Whole { closes: bool },
    /// Some of a response, or one that is not a 200.
    Cut,
    /// Nothing: the connection ended or broke first.
    None,
}

async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    buf.clear();
    loop {
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) if buf.is_empty() => return Answer::None,
            Err(_) => return Answer::Cut,
        };
        if n == 0 {
            return if buf.is_empty() {
                Answer::None
            } else {
                Answer::Cut
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = response.parse(buf) else {
            continue;
        };
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() < head + length {
            continue;
        }
        if response.code != Some(200) || buf.len() > head + length {
            return Answer::Cut;
        }
        let closes = header("connection").is_some_and(|v| v.contains("close"));
        return Answer::Whole { closes };
    }
}

/// Clients that send their next request at the very moment of the move:
/// eight send GETs back to back, eight write each GET in two parts a few
/// milliseconds apart. Through 50 reloads nothing fails, every split
/// request is answered whole, and connections move all along (the master
/// counts them; with the handoff off it counts none).
#[test]
fn requests_sent_at_the_moment_of_the_move_lose_nothing() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "2"]);
    let runtime = runtime();
    let seen = Arc::new(Tight::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writes = |i| {
        if i % 2 == 1 {
            Writes::Split
        } else {
            Writes::Whole
        }
    };
    let tasks = start_tight_clients(&runtime, baton.addr, 16, writes, 160, &seen, &stop);
    for reload in 1..=50 {
        let (code, answer) = baton.reload_wait();
        assert_eq!(code, 0, "reload {reload}: {answer}");
    }
    stop.store(true, Ordering::Relaxed);
    join_clients(&runtime, tasks);
    let status = baton.status();
    let counters = &status["master"]["counters"];
    let answered = seen.answered.load(Ordering::Relaxed);
    let failed = seen.failed.load(Ordering::Relaxed);
    let bad = seen.bad.load(Ordering::Relaxed);
    let connects = seen.connects.load(Ordering::Relaxed);
    eprintln!(
        "50 reloads: {answered} answered, {failed} failed, {bad} cut or bad, {connects} connects by 16 clients; master counters {counters}"
    );
    assert_eq!(failed, 0, "requests failed");
    assert_eq!(bad, 0, "answers came cut or not a 200");
    assert!(
        counters["connections_handed_over"].as_u64() > Some(0),
        "no connection moved: {counters}"
    );
}

/// The workers `status` says are in one of `states`.
fn workers_in(baton: &Baton, states: &[&str]) -> Vec<u32> {
    baton.status()["workers"]
        .as_array()
        .map(|workers| {
            workers
                .iter()
                .filter(|w| states.iter().any(|&state| w["state"] == state))
                .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
                .collect()
        })
        .unwrap_or_default()
}

/// A new worker SIGKILLed while idle connections are being handed to it:
/// those it had not received yet go back to the old worker, whose drain
/// serves them (`Connection: close`); those it held are lost with it, as a
/// killed worker's own are, and their clients' next requests find the
/// connection closed: no more fail than that, counting the clients that
/// think between requests and those whose slow POSTs keep the handoff going. Nothing hangs: each old
/// generation is gone within the drain timeout. The kill is tried on up to
/// five reloads until one lands in the middle of a handoff.
#[test]
fn a_new_worker_killed_mid_handoff_loses_only_what_it_held() {
    let _heavy = heavy();
    let drain_timeout = Duration::from_secs(10);
    // One worker: the new one is then the only worker that may take the
    // old one's connections, so that what the master passes it while it is
    // stopped waits in its socket. (With two, the master would place them
    // on the workers that take them.) Under the default probation, the
    // crash also rolls the release back.
    let baton = Baton::serve(&[
        "--workers",
        "1",
        "--keepalive-timeout",
        "30s",
        "--drain-timeout",
        "10s",
    ]);
    // What a ready worker holds before any client connects.
    let idle_fds = baton
        .workers()
        .iter()
        .filter_map(|&pid| baton::procfs::fd_count(pid))
        .max()
        .expect("a worker");
    let clients = 600;
    let runtime = runtime();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start_thinking_clients(&runtime, baton.addr, clients, 300..1500, &seen, &stop);
    // And a few whose POST bodies come up to 1.5 s after their heads: their
    // connections leave one by one all along a drain, so that the handoff
    // is still going on when the new worker is stopped.
    let slow_clients = 50;
    let slow = Arc::new(Tight::default());
    let slow_tasks = start_tight_clients(
        &runtime,
        baton.addr,
        slow_clients,
        |_| Writes::SlowBody,
        slow_clients as u64,
        &slow,
        &stop,
    );
    let counter = |name: &str| {
        baton.status()["master"]["counters"][name]
            .as_u64()
            .unwrap_or(0)
    };
    let mut held_by_killed = 0;
    let mut kills = Vec::new();
    let mut landed = false;
    for attempt in 1..=5 {
        let old: BTreeSet<u32> = baton.workers().into_iter().collect();
        let fell_back = counter("connections_fell_back");
        baton.signal(Signal::SIGHUP);
        // The first new worker, killed once it holds 20 connections. (A
        // ready one: a child just forked to be a worker still holds the
        // master's descriptors.)
        let deadline = Instant::now() + slower(Duration::from_secs(10));
        let mut killed = None;
        while killed.is_none() && Instant::now() < deadline {
            for pid in workers_in(&baton, &["ready"])
                .into_iter()
                .filter(|p| !old.contains(p))
            {
                let fds = baton::procfs::fd_count(pid).unwrap_or(0);
                if fds >= idle_fds + 20 {
                    // Stopped first, so that the count read is what it holds
                    // when it dies; and stopped a while, so that the
                    // connections the master passes it meanwhile are in
                    // its socket, not taken, when it dies.
                    let pid = Pid::from_raw(pid as i32);
                    let _ = kill(pid, Signal::SIGSTOP);
                    let held = baton::procfs::fd_count(pid.as_raw() as u32).unwrap_or(idle_fds);
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = kill(pid, Signal::SIGKILL);
                    kills.push(Instant::now());
                    killed = Some(held.saturating_sub(idle_fds));
                    break;
                }
            }
        }
        let held = killed.expect("a new worker received connections");
        held_by_killed += held;
        let start = Instant::now();
        // The old workers told to drain leave within the drain timeout. (A
        // crash in the middle of a reload may abandon it: an old worker
        // not yet replaced then goes on serving.)
        let draining: Vec<u32> = workers_in(&baton, &["draining", "hurried"])
            .into_iter()
            .filter(|p| old.contains(p))
            .collect();
        assert!(
            wait_until(slower(drain_timeout + Duration::from_secs(5)), || {
                draining.iter().all(|&p| is_dead(p))
            }),
            "attempt {attempt}: an old worker outlived its drain timeout"
        );
        let workers = baton.wait_workers(Duration::from_secs(10), |w| {
            w.len() == 1 && w.iter().all(|p| !draining.contains(p))
        });
        let returned = counter("connections_fell_back") - fell_back;
        eprintln!(
            "attempt {attempt}: the killed worker held {held} connections, {returned} went back to the old worker, old generation gone {:?} after the kill; workers now {workers:?}",
            start.elapsed()
        );
        if returned > 0 && held > 0 {
            landed = true;
            break;
        }
    }
    assert!(landed, "no kill landed in the middle of a handoff");
    // Every client is answered again after the kills.
    let answered = seen.answered.load(Ordering::Relaxed);
    assert!(
        wait_until(slower(Duration::from_secs(10)), || {
            seen.answered.load(Ordering::Relaxed) >= answered + clients as u64
        }),
        "the clients were not answered again"
    );
    stop.store(true, Ordering::Relaxed);
    join_clients(&runtime, tasks);
    join_clients(&runtime, slow_tasks);
    let slow_failed = slow.failed.load(Ordering::Relaxed) + slow.bad.load(Ordering::Relaxed);
    let failed = seen.failed.load(Ordering::Relaxed) + slow_failed;
    // Each failure by the kill before it, and whether its connection was
    // new (a reconnect's first request) or had carried requests.
    let failures: Vec<String> = seen
        .failures
        .lock()
        .unwrap()
        .iter()
        .map(|(at, carried)| {
            let after = kills
                .iter()
                .rev()
                .find(|k| *k <= at)
                .map(|k| format!("{} ms after a kill", at.duration_since(*k).as_millis()));
            format!(
                "{} ({} requests before)",
                after.unwrap_or_else(|| "before the first kill".to_owned()),
                carried
            )
        })
        .collect();
    eprintln!(
        "{} answered, {failed} failed ({slow_failed} of them slow POSTs) by {clients} + {slow_clients} clients; killed workers held {held_by_killed} connections; master counters {}",
        seen.answered.load(Ordering::Relaxed) + slow.answered.load(Ordering::Relaxed),
        baton.status()["master"]["counters"]
    );
    if failed > held_by_killed as u64 {
        eprintln!("failures: {failures:#?}");
    }
    assert!(
        failed <= held_by_killed as u64,
        "{failed} requests failed, more than the {held_by_killed} connections the killed workers held"
    );
}

/// `baton upgrade` in the middle of a handoff: each upgrade's new image
/// rolls the workers, and the next upgrade's exec lands while that roll's
/// old workers still hand connections over (clients whose POST bodies come
/// up to 1.5 s after their heads keep the old workers busy, and their
/// connections leave one by one). Nothing is lost on the way: no request
/// fails, no connection is closed under a client, and every old worker is
/// gone well within its drain timeout (a batch in the master's hands at
/// the exec would keep its old worker waiting for an answer until then,
/// and its client unanswered).
#[test]
fn an_upgrade_in_the_middle_of_a_handoff_loses_nothing() {
    let _heavy = heavy();
    let drain_timeout = Duration::from_secs(20);
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--probation",
        "0s",
        "--keepalive-timeout",
        "30s",
        "--drain-timeout",
        "20s",
    ]);
    let clients = 200;
    let runtime = runtime();
    let seen = Arc::new(Tight::default());
    let stop = Arc::new(AtomicBool::new(false));
    let slow = |_| Writes::SlowBody;
    let tasks = start_tight_clients(
        &runtime,
        baton.addr,
        clients,
        slow,
        clients as u64,
        &seen,
        &stop,
    );
    let mut old_workers = BTreeSet::new();
    for upgrade in 1..=10 {
        old_workers.extend(baton.workers());
        let output = baton.control_client(&["upgrade", "--wait"]);
        assert!(
            output.status.success(),
            "upgrade {upgrade}: {}",
            String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr)
        );
    }
    let last = Instant::now();
    let gone = wait_until(drain_timeout / 2, || {
        old_workers.iter().all(|&p| is_dead(p))
    });
    let outlived = last.elapsed();
    stop.store(true, Ordering::Relaxed);
    join_clients(&runtime, tasks);
    let answered = seen.answered.load(Ordering::Relaxed);
    let failed = seen.failed.load(Ordering::Relaxed);
    let bad = seen.bad.load(Ordering::Relaxed);
    let connects = seen.connects.load(Ordering::Relaxed);
    eprintln!(
        "10 upgrades: {answered} answered, {failed} failed, {bad} cut or bad, {connects} connects by {clients} clients; old workers gone {outlived:?} after the last; master counters {}",
        baton.status()["master"]["counters"]
    );
    assert_eq!(failed, 0, "requests failed");
    assert_eq!(bad, 0, "answers came cut or not a 200");
    assert!(
        gone,
        "old workers still alive {outlived:?} after the last upgrade: {:?}",
        old_workers
            .iter()
            .filter(|&&p| !is_dead(p))
            .collect::<Vec<_>>()
    );
}
