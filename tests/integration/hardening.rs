//! What production brings: clients that send nothing or trickle, the
//! open-file limit, thousands of keep-alive clients that think for seconds.
//! None of it may cost a normal client a request or keep old workers alive.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// `baton` with its open-file limit set to `soft`/`hard` before it starts,
/// as systemd (1024 soft) or a tight container would.
fn with_open_files(soft: u64, hard: u64) -> Command {
    let mut cmd = Command::new(baton_bin());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let limit = nix::libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The soft open-file limit /proc shows for `pid`.
fn soft_open_files(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Connections that send nothing at all.
fn silent_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect a silent client"))
        .collect()
}

/// One `GET /` on a new connection; how long the whole answer took.
fn timed_get(addr: SocketAddr, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(limit)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("{e} after {:?}", started.elapsed()))?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {answer:?}"));
    }
    Ok(started.elapsed())
}

#[test]
fn silent_connections_cannot_exhaust_workers_started_with_a_low_soft_limit() {
    let _heavy = heavy();
    let baton = Baton::serve_command(with_open_files(1024, 20000), &["--workers", "2"]);
    let workers = baton.wait_workers(Duration::from_secs(5), |w| w.len() == 2);
    for &worker in &workers {
        assert_eq!(
            soft_open_files(worker),
            20000,
            "worker {worker} inherits the raised limit"
        );
    }
    let silent = silent_connections(baton.addr, 2200);
    for i in 0..20 {
        let took = timed_get(baton.addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("request {i} behind 2,200 silent clients: {e}"));
        assert!(took < Duration::from_secs(2), "request {i} took {took:?}");
    }
    drop(silent);
}

#[test]
fn out_of_descriptors_pauses_accept_and_logs_once_per_pause() {
    let _heavy = heavy();
    // Soft and hard alike: nothing to raise, the workers run out.
    let baton = Baton::serve_command(
        with_open_files(128, 128),
        &["--workers", "2", "--header-timeout", "3s"],
    );
    let silent = silent_connections(baton.addr, 400);
    let watched = Duration::from_secs(3);
    std::thread::sleep(watched);
    let lines = baton.count_log("out of descriptors");
    assert!(lines > 0, "the workers ran out of descriptors");
    // Two workers, one line per 500 ms pause each: 12 in 3 s, a few more
    // for timing.
    assert!(
        lines <= 16,
        "{lines} lines in {watched:?}: one per pause, not one per attempt"
    );
    // The header timeout frees the descriptors: service resumes by itself.
    let took = timed_get(baton.addr, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("service did not resume: {e}"));
    eprintln!("first request after descriptors ran out answered in {took:?}");
    drop(silent);
}

/// How a slow client's connection ended, and when.
async fn slow_client(addr: SocketAddr, trickle: bool, limit: Duration) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let header = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
    let mut sent = 0;
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(limit, async {
        loop {
            if trickle {
                // One byte every 200 ms: the headers never end.
                let byte = header.get(sent).copied().unwrap_or(b'x');
                if stream.write_all(&[byte]).await.is_err() {
                    return;
                }
                sent += 1;
            }
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| started.elapsed())
}

/// `n` silent and `n` trickling clients at once; how long each lasted
/// (None: still open at `limit`).
fn slow_clients(addr: SocketAddr, n: usize, limit: Duration) -> Vec<Option<Duration>> {
    runtime().block_on(async {
        let clients: Vec<_> = (0..2 * n)
            .map(|i| tokio::spawn(slow_client(addr, i % 2 == 1, limit)))
            .collect();
        let mut lasted = Vec::new();
        for client in clients {
            lasted.push(client.await.unwrap());
        }
        lasted
    })
}

#[test]
fn silent_and_slow_header_clients_are_closed_by_the_header_timeout() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "2", "--header-timeout", "1s"]);
    let lasted = slow_clients(baton.addr, 50, Duration::from_secs(15));
    let open = lasted.iter().filter(|l| l.is_none()).count();
    assert_eq!(open, 0, "{open} slow clients were never closed");
    let longest = lasted.iter().flatten().max().unwrap();
    eprintln!("100 slow clients closed, the last after {longest:?}");
    assert!(*longest >= Duration::from_secs(1), "not before the timeout");
    // And the service is fine.
    timed_get(baton.addr, Duration::from_secs(5)).unwrap();
}

/// Clients that trickle a request's head never finish it: the drain drops
/// them when its grace ends. Clients that connect and say nothing are idle:
/// they move to the new generation with their header limit going on from
/// when they connected (not the longer keep-alive limit), which closes them.
#[test]
fn slow_clients_do_not_keep_old_workers_past_the_grace() {
    let _heavy = heavy();
    let grace = Duration::from_secs(1);
    let header_timeout = Duration::from_secs(15);
    let baton = Baton::serve(&[
        "--workers",
        "2",
        "--header-timeout",
        "15s",
        "--drain-grace",
        "1s",
    ]);
    let old = baton.wait_workers(Duration::from_secs(5), |w| w.len() == 2);
    let descriptors = || {
        old.iter()
            .map(|&w| baton::procfs::fd_count(w).unwrap_or(0))
            .sum::<usize>()
    };
    let before = descriptors();
    let addr = baton.addr;
    let slow = std::thread::spawn(move || slow_clients(addr, 100, Duration::from_secs(30)));
    // Every slow client is connected and accepted before the reload.
    assert!(
        wait_until(Duration::from_secs(10), || descriptors() >= before + 200),
        "the 200 slow clients reached the workers"
    );
    let reloaded = Instant::now();
    baton.reload();
    assert!(
        wait_until(grace + Duration::from_secs(1), || old
            .iter()
            .all(|&w| is_dead(w))),
        "old workers still alive {:?} after the reload with a {grace:?} grace",
        reloaded.elapsed()
    );
    eprintln!("old workers gone {:?} after the reload", reloaded.elapsed());
    let lasted = slow.join().unwrap();
    assert!(
        lasted.iter().all(Option::is_some),
        "the drain or the header limit closed them all: {lasted:?}"
    );
    let (silent, trickling): (Vec<_>, Vec<_>) = lasted
        .iter()
        .flatten()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let trickled_longest = trickling.iter().map(|(_, d)| **d).max().unwrap();
    assert!(
        trickled_longest < header_timeout,
        "a trickling client lasted {trickled_longest:?}: the drain did not drop it"
    );
    let silent_shortest = silent.iter().map(|(_, d)| **d).min().unwrap();
    assert!(
        silent_shortest >= header_timeout - Duration::from_secs(1),
        "a silent client was closed after {silent_shortest:?}, before its header limit: it did not move"
    );
}

#[test]
fn keep_alive_clients_that_think_for_seconds_lose_nothing_through_reloads() {
    let _heavy = heavy();
    // baton's defaults, but for the port and control socket.
    let baton = Baton::serve(&[]);
    let clients = vec![
        ClientMode::KeepAlive {
            min_idle: Duration::from_secs(2),
            max_idle: Duration::from_secs(12),
        };
        3000
    ];
    let load = BackgroundLoad::start(LoadPlan::new(baton.addr, clients, Duration::from_secs(32)));
    // The first reload once most clients have connected (their first
    // requests spread over 12 s), the second while the first generation
    // still drains.
    for pause in [10, 8] {
        std::thread::sleep(Duration::from_secs(pause));
        baton.reload();
    }
    let report = load.finish();
    eprintln!("3,000 thinking keep-alive clients, 2 reloads: {report}");
    assert_no_failures(&report);
    assert!(
        report.ok > 5000,
        "too little load to prove anything: {report}"
    );
}

/// What a reload storm (a SIGHUP every 200 ms for 8 s, under idle
/// keep-alive clients and a little other load) showed.
struct Storm {
    reloads: usize,
    most_alive: usize,
    most_draining_generations: usize,
    hurried: usize,
    report: LoadReport,
    counters: serde_json::Value,
}

fn reload_storm(handoff: &str) -> Storm {
    let baton = Baton::serve(&["--workers", "2", "--handoff-connections", handoff]);
    // Idle keep-alive clients hold every draining worker for its whole grace
    // unless the drain is hurried or hands them over.
    let mut clients = vec![
        ClientMode::KeepAlive {
            min_idle: Duration::from_secs(1),
            max_idle: Duration::from_secs(8),
        };
        200
    ];
    clients.extend(mixed_clients(4, 4, 0));
    let load = BackgroundLoad::start(LoadPlan::new(baton.addr, clients, Duration::from_secs(14)));
    std::thread::sleep(Duration::from_secs(4));
    let mut most_alive = 0;
    let mut most_draining_generations = 0;
    let mut hurried = 0;
    let storm = Instant::now();
    while storm.elapsed() < Duration::from_secs(8) {
        baton.signal(nix::sys::signal::Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(200));
        let status = baton.status();
        let workers = status["workers"].as_array().unwrap();
        let draining: std::collections::BTreeSet<u64> = workers
            .iter()
            .filter(|w| w["state"] == "draining")
            .map(|w| w["generation"].as_u64().unwrap())
            .collect();
        most_draining_generations = most_draining_generations.max(draining.len());
        hurried += workers.iter().filter(|w| w["state"] == "hurried").count();
        most_alive = most_alive.max(baton.workers().len());
    }
    let report = load.finish();
    // Hurried workers close their idle connections and leave within
    // milliseconds; status rarely catches one.
    let storm = Storm {
        reloads: baton.count_event(Event::ReloadComplete),
        most_alive,
        most_draining_generations,
        hurried: hurried + baton.count_event(Event::WorkerHurried),
        report,
        counters: baton.status()["master"]["counters"].clone(),
    };
    eprintln!(
        "reload storm, handoff {handoff}: {} reloads, at most {} workers alive, {} generations draining at their own pace, {} hurried; master counters {}; {}",
        storm.reloads,
        storm.most_alive,
        storm.most_draining_generations,
        storm.hurried,
        storm.counters,
        storm.report
    );
    assert!(
        storm.most_draining_generations <= 2,
        "{} generations drained at once",
        storm.most_draining_generations
    );
    // 2 serving, 1 starting, 2 generations of 2 draining, and the hurried
    // ones finishing their last requests.
    assert!(
        storm.most_alive <= 12,
        "{} workers alive at once",
        storm.most_alive
    );
    storm
}

/// Without the handoff, idle clients hold each old generation for its
/// grace: the storm hurries the oldest, whose idle connections close at
/// once (racing their clients: resets and early EOFs are expected there,
/// nothing else).
#[test]
fn a_reload_storm_hurries_old_generations_so_processes_stay_bounded() {
    let _heavy = heavy();
    let storm = reload_storm("off");
    assert!(storm.hurried > 0, "old generations were hurried");
    for kind in [
        FailureKind::Refused,
        FailureKind::Timeout,
        FailureKind::BadStatus,
    ] {
        assert_eq!(
            storm.report.count(kind),
            0,
            "{}",
            describe_failures(&storm.report)
        );
    }
}

/// With the handoff (the default), each old generation hands its idle
/// connections on and leaves: the same storm keeps as few processes and
/// fails nothing at all, a connection moving as often as it must.
#[test]
fn a_reload_storm_with_connections_handed_over_fails_nothing() {
    let _heavy = heavy();
    let storm = reload_storm("on");
    assert_no_failures(&storm.report);
    assert!(
        storm.counters["connections_handed_over"].as_u64() > Some(200),
        "connections moved: {}",
        storm.counters
    );
}

/// The c10k run for the figures in docs/usage.md (a minute; run it by name with
/// `--ignored`): 10,000 keep-alive clients thinking 5–15 s, two reloads.
#[test]
#[ignore = "a minute of 10,000 connections; run by hand for the figures"]
fn c10k_thinking_clients_through_reloads() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "2"]);
    let clients = vec![
        ClientMode::KeepAlive {
            min_idle: Duration::from_secs(5),
            max_idle: Duration::from_secs(15),
        };
        10_000
    ];
    let load = BackgroundLoad::start(LoadPlan::new(baton.addr, clients, Duration::from_secs(60)));
    let rss_mib = |pids: &[u32]| -> Vec<u64> {
        pids.iter()
            .filter_map(|&p| baton::procfs::rss_bytes(p))
            .map(|b| b >> 20)
            .collect()
    };
    for pause in [20, 20] {
        std::thread::sleep(Duration::from_secs(pause));
        let old = baton.workers();
        eprintln!("before the reload: worker RSS (MiB) {:?}", rss_mib(&old));
        let started = Instant::now();
        baton.reload();
        let reloaded = started.elapsed();
        wait_until(Duration::from_secs(40), || old.iter().all(|&w| is_dead(w)));
        eprintln!(
            "reload in {reloaded:?}; old generation gone {:?} after it started; new workers' RSS (MiB) {:?}",
            started.elapsed(),
            rss_mib(&baton.workers())
        );
    }
    let report = load.finish();
    eprintln!(
        "c10k: {report}; {} reconnects; master counters {}",
        report.reconnects,
        baton.status()["master"]["counters"]
    );
    assert_no_failures(&report);
    // Every idle connection moved to the new generation: no client had to
    // connect again.
    assert_eq!(report.reconnects, 0);
}

#[test]
fn an_idle_h2c_connection_is_closed_with_goaway() {
    let baton = Baton::serve(&["--workers", "1", "--keepalive-timeout", "1s"]);
    let mut stream = TcpStream::connect(baton.addr).unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame, then silence.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .expect("the server closes the connection");
    let closed_after = started.elapsed();
    // Frames: 3-byte length, 1-byte type; GOAWAY is type 7.
    let mut types = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(
        types.contains(&7),
        "a GOAWAY before the close: frame types {types:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(8),
        "closed after {closed_after:?}, with a 1 s idle limit"
    );
}

/// HTTP/2 clients that would keep a drain waiting if the server waited for
/// them: one that never answers anything (a PING included) and one that
/// stops halfway through the preface. Neither keeps the old worker past the
/// drain grace plus 5 s.
#[test]
fn http2_clients_that_never_answer_or_stop_mid_preface_do_not_hold_a_drain() {
    let grace = Duration::from_secs(2);
    let baton = Baton::serve(&["--workers", "1", "--drain-grace", "2s"]);
    let old = baton.workers();
    let mut silent = TcpStream::connect(baton.addr).unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    silent.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    let mut half = TcpStream::connect(baton.addr).unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    // Both connections reach the worker before it is told to drain.
    assert!(
        wait_until(slower(Duration::from_secs(10)), || {
            baton.status()["workers"][0]["open_connections"].as_u64() == Some(2)
        }),
        "the worker reports its two connections: {}",
        baton.status()
    );
    let started = Instant::now();
    baton.reload();
    assert!(
        wait_until(grace + Duration::from_secs(15), || old
            .iter()
            .all(|&pid| is_dead(pid))),
        "the old worker outlived the drain"
    );
    let gone_after = started.elapsed();
    assert!(
        gone_after < grace + Duration::from_secs(5),
        "the old worker left {gone_after:?} after the reload began, with a {grace:?} grace"
    );
    // Neither client is answered with anything but the end.
    for mut client in [silent, half] {
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("closed by the server");
    }
}
