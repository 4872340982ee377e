//! Health probes of one worker through the shared listener (`--health`).
//!
//! Every worker accepts from the same listening socket, so a connection to
//! it may land in any of them. The master opens connections to the
//! listener and, for each, finds which process accepted it: the accepted
//! socket's inode, looked up by the connection's two addresses (sock_diag,
//! or the TCP table where sock_diag is missing), is held by exactly one
//! process. A connection another
//! worker accepted is closed before a byte is sent (that worker reads the
//! end of an empty connection); one the probed worker's process tree
//! accepted carries the probe: `GET PATH` with `Connection: close`, whose
//! status must be in `--health-status`. Nothing is proxied and no client
//! connection is touched.
//!
//! A new worker is probed from the moment it starts: the master waits
//! for the first sign that it listens (its process tree waits on the
//! listener), then probes at once, so that the clients a broken release
//! answers before its verdict are as few as the design allows (they reach
//! it from the shared queue as soon as it accepts). A probe that cannot
//! reach the worker within `--health-timeout` fails as a probe that got a
//! bad answer does, and says so.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout_at, Instant};

use crate::config::HealthCheck;
use crate::procfs;

/// How often the kernel is asked whether a probe connection left the
/// accept queue, and a new worker's tree looked at while it is not
/// listening.
const ACCEPT_POLL: Duration = Duration::from_millis(1);
const LISTEN_POLL: Duration = Duration::from_millis(2);

/// The pause after a probe connection that another worker accepted.
const ELSEWHERE_PAUSE: Duration = Duration::from_millis(2);

/// The most of an answer read: its status line, headers and the start of
/// its body.
const ANSWER_LIMIT: usize = 16 * 1024;

/// How much of a failing answer's body is reported.
const BODY_SHOWN: usize = 120;

/// A worker that passed every probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthy {
    pub probes: u32,
    /// Connections opened to reach the worker (those other workers
    /// accepted included).
    pub connections: u32,
    /// From the first sign that it listened to the verdict: how long
    /// clients could reach it before it was judged.
    pub window_ms: u64,
    /// Client connections it held at the verdict (accepted from the shared
    /// listener before it was judged; those already closed are not seen).
    pub clients_held: u32,
}

/// The worker to probe and the listener to probe it through.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The worker's process (its tree is searched).
    pub pid: u32,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The listener, as its process tree shows it.
    pub listener: procfs::ListenerId,
}

/// Why a worker failed its probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    /// The status it answered, if it answered.
    pub status: Option<u16>,
    /// The start of the body it answered.
    pub body: String,
    /// What went wrong, in words.
    pub reason: String,
    /// From its first sign of listening to the verdict, if it listened.
    pub window_ms: Option<u64>,
    /// Connections opened to reach it.
    pub connections: u32,
    /// Client connections it held at the verdict (see [`Healthy`]).
    pub clients_held: u32,
}

impl Unhealthy {
    pub fn said(reason: impl Into<String>) -> Unhealthy {
        Unhealthy {
            status: None,
            body: String::new(),
            reason: reason.into(),
            window_ms: None,
            connections: 0,
            clients_held: 0,
        }
    }
}

/// Where to reach a worker: the listener its probes go through.
pub fn probe_address(listener: SocketAddr) -> SocketAddr {
    let ip = match listener.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listener.port())
}

/// Where to probe worker `pid` through: the first TCP listener.
pub fn target(pid: u32, listeners: &[procfs::ListenerId]) -> Result<Target, Unhealthy> {
    listeners
        .iter()
        .find_map(|&listener| {
            Some(Target {
                pid,
                addr: probe_address(listener.tcp?),
                listener,
            })
        })
        .ok_or_else(|| {
            Unhealthy::said("--health probes go through a TCP listener, and there is none")
        })
}

/// Probes `target`, `check.count` times. A worker that is starting has
/// `start_allowance` to start listening, and is probed at the first sign
/// of it; a worker known to be ready (`None`) is probed at once.
pub async fn probe(
    check: &HealthCheck,
    target: Target,
    start_allowance: Option<Duration>,
) -> Result<Healthy, Unhealthy> {
    if let Some(allowance) = start_allowance {
        listening(target, Instant::now() + allowance).await?;
    }
    let listening_since = Instant::now();
    let mut connections = 0;
    for _ in 0..check.count {
        let deadline = Instant::now() + check.timeout;
        let probed = match reach(target.addr, target.pid, deadline, &mut connections).await {
            Ok(stream) => ask(stream, check, target.addr, deadline).await,
            Err(unreachable) => Err(unreachable),
        };
        if let Err(unhealthy) = probed {
            return Err(Unhealthy {
                window_ms: Some(listening_since.elapsed().as_millis() as u64),
                connections,
                clients_held: clients_held(target).await,
                ..unhealthy
            });
        }
    }
    Ok(Healthy {
        probes: check.count,
        connections,
        window_ms: listening_since.elapsed().as_millis() as u64,
        clients_held: clients_held(target).await,
    })
}

/// How many connections accepted from the listener `target`'s tree holds:
/// the clients it serves now.
async fn clients_held(target: Target) -> u32 {
    tokio::task::spawn_blocking(move || {
        let tree = procfs::tree_sockets(target.pid, &[target.listener]);
        tree.holding(&procfs::accepted_inodes(&[target.listener])) as u32
    })
    .await
    .unwrap_or(0)
}

/// Probes a worker that holds its accepts over `connections`, which it
/// serves as if it had accepted them (their other ends were handed to it
/// over its handoff socket): no client reaches it before the verdict, so
/// the window is 0.
pub async fn probe_held(
    check: &HealthCheck,
    connections: Vec<std::os::unix::net::UnixStream>,
) -> Result<Healthy, Unhealthy> {
    let count = connections.len() as u32;
    for (done, connection) in connections.into_iter().enumerate() {
        let unhealthy = |mut unhealthy: Unhealthy| {
            unhealthy.connections = done as u32 + 1;
            unhealthy.window_ms = Some(0);
            unhealthy
        };
        let stream = connection
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(connection))
            .map_err(|e| {
                unhealthy(Unhealthy::said(format!(
                    "cannot use a probe connection: {e}"
                )))
            })?;
        let deadline = Instant::now() + check.timeout;
        ask(stream, check, "localhost", deadline)
            .await
            .map_err(unhealthy)?;
    }
    Ok(Healthy {
        probes: count,
        connections: count,
        window_ms: 0,
        clients_held: 0,
    })
}

/// Returns at the first sign that `target` accepts: its process tree
/// waits on the listener (in an epoll set, or blocked in accept, poll or
/// select on it), or holds a connection accepted from it. A busy server
/// that polls the listener only between requests (gunicorn's sync workers,
/// Python's socketserver) is seldom caught waiting, but the connections it
/// accepts show at once: each socket new in its tree is looked up among the
/// listener's accepted connections.
async fn listening(target: Target, deadline: Instant) -> Result<(), Unhealthy> {
    let look = move || {
        tokio::task::spawn_blocking(move || procfs::tree_sockets(target.pid, &[target.listener]))
    };
    let mut known: Vec<u64> = Vec::new();
    loop {
        let Ok(now) = look().await else {
            return Err(Unhealthy::said(
                "the worker's process tree could not be read",
            ));
        };
        if now.waits {
            return Ok(());
        }
        let new: Vec<u64> = now
            .held
            .into_iter()
            .filter(|inode| !known.contains(inode))
            .collect();
        if !new.is_empty() {
            let listener = target.listener;
            let accepted =
                tokio::task::spawn_blocking(move || procfs::accepted_inodes(&[listener]))
                    .await
                    .unwrap_or_default();
            if new.iter().any(|inode| accepted.contains(inode)) {
                return Ok(());
            }
            known.extend(new);
        }
        if Instant::now() >= deadline {
            return Err(Unhealthy::said(format!(
                "worker {} never listened, so it could not be probed",
                target.pid
            )));
        }
        sleep(LISTEN_POLL).await;
    }
}

/// A connection to the listener that worker `pid`'s tree accepted.
async fn reach(
    addr: SocketAddr,
    pid: u32,
    deadline: Instant,
    connections: &mut u32,
) -> Result<TcpStream, Unhealthy> {
    let mut elsewhere = 0;
    let unreachable = |elsewhere: u32, why: &str| {
        Unhealthy::said(format!(
            "no probe connection reached worker {pid} in time ({elsewhere} went to other workers{why})"
        ))
    };
    loop {
        let stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(Unhealthy::said(format!("cannot connect to {addr}: {e}"))),
            Err(_) => return Err(unreachable(elsewhere, "")),
        };
        *connections += 1;
        let client = stream
            .local_addr()
            .map_err(|e| Unhealthy::said(format!("cannot read the probe's address: {e}")))?;
        match accepted_by(addr, client, pid, deadline).await {
            Some(true) => return Ok(stream),
            // Closed unused: the worker that took it reads an empty
            // connection's end. Paced, so that a worker that accepts
            // nothing (stuck) costs the others few such connections.
            Some(false) => {
                elsewhere += 1;
                sleep(ELSEWHERE_PAUSE).await;
            }
            None => return Err(unreachable(elsewhere, "; the last one was never accepted")),
        }
    }
}

/// Once a process accepted the connection from `client`: whether it is in
/// worker `pid`'s tree. `None` if nobody accepted it by `deadline`.
async fn accepted_by(
    server: SocketAddr,
    client: SocketAddr,
    pid: u32,
    deadline: Instant,
) -> Option<bool> {
    loop {
        let found = tokio::task::spawn_blocking(move || {
            procfs::accepted_inode(server, client).map(|inode| procfs::tree_holds(pid, inode))
        })
        .await
        .ok()?;
        if found.is_some() {
            return found;
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(ACCEPT_POLL).await;
    }
}

/// Sends the probe's request on `stream` and judges the answer.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    check: &HealthCheck,
    host: impl std::fmt::Display,
    deadline: Instant,
) -> Result<(), Unhealthy> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: baton-health\r\nConnection: close\r\n\r\n",
        check.path
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while answer.len() < ANSWER_LIMIT {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
            if head_and_body_start(&answer).is_some_and(|(head, body)| {
                body.len() >= BODY_SHOWN.min(content_length(&head).unwrap_or(BODY_SHOWN))
            }) {
                break;
            }
        }
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match timeout_at(deadline, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            return Err(Unhealthy::said(format!(
                "the probe's connection failed: {e}"
            )))
        }
        Err(_) => {
            return Err(Unhealthy::said(format!(
                "no answer to GET {} within {}",
                check.path,
                humantime::format_duration(check.timeout)
            )))
        }
    };
    judge(&answer, check)
}

/// Whether `answer` passes `check`.
fn judge(answer: &[u8], check: &HealthCheck) -> Result<(), Unhealthy> {
    let Some((head, body)) = head_and_body_start(answer) else {
        return Err(Unhealthy::said(format!(
            "GET {} got no HTTP answer ({} bytes)",
            check.path,
            answer.len()
        )));
    };
    let head = head.lines().next().unwrap_or_default();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok());
    let body = String::from_utf8_lossy(&body[..body.len().min(BODY_SHOWN)]).into_owned();
    match status {
        Some(status) if check.status.contains(status) => Ok(()),
        Some(status) => Err(Unhealthy {
            status: Some(status),
            reason: format!("GET {} answered {status}, not {}", check.path, check.status),
            body,
            ..Unhealthy::said("")
        }),
        None => Err(Unhealthy::said(format!(
            "GET {} got no HTTP status line: {head:?}",
            check.path
        ))),
    }
}

/// An answer's head and the start of its body, once its head is
/// complete.
fn head_and_body_start(answer: &[u8]) -> Option<(String, &[u8])> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    Some((head, &answer[end + 4..]))
}

/// The `Content-Length` an answer's head gives, if any.
fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::StatusRange;

    fn check(status: &str) -> HealthCheck {
        HealthCheck {
            path: "/healthz".into(),
            status: status.parse::<StatusRange>().unwrap(),
            timeout: Duration::from_secs(2),
            count: 2,
            interval: None,
            fall: 3,
        }
    }

    #[test]
    fn answers_are_judged_by_their_status() {
        let ok = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(judge(ok, &check("2xx")), Ok(()));
        let broken = b"HTTP/1.1 500 Internal Server Error\r\n\r\ndatabase is down";
        let unhealthy = judge(broken, &check("2xx")).unwrap_err();
        assert_eq!(unhealthy.status, Some(500));
        assert_eq!(unhealthy.body, "database is down");
        assert!(
            unhealthy.reason.contains("answered 500, not 2xx"),
            "{}",
            unhealthy.reason
        );
        assert_eq!(judge(broken, &check("200-599")), Ok(()));
        assert_eq!(
            judge(b"SSH-2.0-OpenSSH\r\n", &check("2xx"))
                .unwrap_err()
                .status,
            None
        );
    }

    #[tokio::test]
    async fn a_probe_reaches_the_process_that_accepts_and_only_that_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inode = {
            use std::os::fd::AsFd;
            nix::sys::stat::fstat(listener.as_fd()).unwrap().st_ino
        };
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        });
        let me = Target {
            pid: std::process::id(),
            addr,
            listener: procfs::ListenerId {
                inode,
                tcp: Some(addr),
            },
        };
        let allowance = Some(Duration::from_secs(5));
        let healthy = probe(&check("2xx"), me, allowance).await.unwrap();
        assert_eq!((healthy.probes, healthy.connections), (2, 2));

        // This process accepts, so no connection reaches another one.
        let mut other = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let mut quick = check("2xx");
        quick.timeout = Duration::from_millis(300);
        // The other process does not listen: it is given no connection.
        let other_target = Target {
            pid: other.id(),
            ..me
        };
        let never = probe(&quick, other_target, Some(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(never.reason.contains("never listened"), "{}", never.reason);
        let elsewhere = reach(addr, other.id(), Instant::now() + quick.timeout, &mut 0)
            .await
            .unwrap_err();
        let _ = other.kill();
        let _ = other.wait();
        let expected = format!("no probe connection reached worker {}", other.id());
        assert!(elsewhere.reason.contains(&expected), "{}", elsewhere.reason);
    }
}
