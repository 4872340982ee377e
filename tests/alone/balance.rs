//! Accept balance: workers sharing one listening socket take even shares of
//! the new connections, and a worker that crashed is not waited for.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

/// Opens `n` connections at once, sends one request on each and returns
/// them, still open, with the pid that answered. The kernel completes each
/// handshake without a worker, so all `n` wait in the listening socket's
/// queue together, a burst made by one client thread instead of `n` threads
/// fighting the workers for the CPUs.
fn open_at_once(addr: SocketAddr, n: usize) -> Vec<(TcpStream, u32)> {
    let mut connections: Vec<TcpStream> =
        (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for conn in &mut connections {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    connections
        .into_iter()
        .map(|mut conn| {
            let pid = answered_by(&read_response(&mut conn));
            (conn, pid)
        })
        .collect()
}

/// Opens `n` connections one after another, each answered before the next
/// is opened (a steady stream rather than a burst), and returns them, still
/// open, with the pid that answered.
fn open_one_by_one(addr: SocketAddr, n: usize) -> Vec<(TcpStream, u32)> {
    (0..n)
        .map(|_| {
            let mut conn = TcpStream::connect(addr).unwrap();
            let pid = answered_by(&exchange(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
            (conn, pid)
        })
        .collect()
}

/// The worker pid the built-in worker puts at the end of its answer.
fn answered_by(response: &str) -> u32 {
    response
        .rsplit("pid: ")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {response:?}"))
}

/// Connections per worker pid.
fn per_worker(connections: &[(TcpStream, u32)]) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for (_, pid) in connections {
        *counts.entry(*pid).or_default() += 1;
    }
    counts
}

/// Asserts that every one of `workers` holds a share of `connections`:
/// none more than 3 short of an equal share, the busiest at most 1.5 times
/// the idlest's.
fn assert_even(connections: &[(TcpStream, u32)], workers: &[u32]) {
    let counts = per_worker(connections);
    let mut expected = workers.to_vec();
    expected.sort();
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        expected,
        "every worker must take some: {counts:?}"
    );
    let equal_share = connections.len() as f64 / workers.len() as f64;
    let busiest = *counts.values().max().unwrap();
    let idlest = *counts.values().min().unwrap();
    assert!(
        idlest as f64 >= equal_share - 3.0 && busiest as f64 <= 1.5 * idlest as f64,
        "{} connections over {} workers: {counts:?}",
        connections.len(),
        workers.len()
    );
}

/// SIGKILLs `victim` and returns the workers once its replacement is ready.
fn kill_and_replace(baton: &Baton, victim: u32, ready_before: usize) -> Vec<u32> {
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    baton.wait_event_nth(
        Event::WorkerReady,
        ready_before + 1,
        Duration::from_secs(10),
    );
    baton.wait_workers(Duration::from_secs(10), |w| {
        w.len() == 4 && !w.contains(&victim)
    })
}

#[test]
fn four_workers_take_even_shares_of_a_burst_of_connections() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "4"]);
    assert_even(&open_at_once(baton.addr, 48), &baton.workers());
}

#[test]
fn a_dead_worker_is_not_waited_for_and_its_replacement_catches_up() {
    let _heavy = heavy();
    let baton = Baton::serve(&["--workers", "4"]);
    // An idle worker dies. Had it stayed in the table, the least-loaded
    // worker would forever be one with no connections that never accepts:
    // every other worker would count as over its share, and the replacement
    // below would not be preferred.
    let workers = kill_and_replace(&baton, baton.workers()[0], 4);
    let mut connections = open_at_once(baton.addr, 24);
    assert_even(&connections, &workers);

    // A busy worker dies: its replacement starts with none while the others
    // hold about 6 each. It is the least loaded, so the others leave new
    // connections to it until it has caught up: after a stream of 48 more,
    // the open connections are even again, the replacement's included.
    let victim = connections[0].1;
    let workers = kill_and_replace(&baton, victim, 5);
    connections.retain(|(_, pid)| *pid != victim);
    connections.extend(open_one_by_one(baton.addr, 48));
    assert_even(&connections, &workers);
}
