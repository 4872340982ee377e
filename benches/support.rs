//! What the benchmarks share: running servers as child processes, measuring
//! them with one HTTP client, medians.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton::load::ClientMode;

pub fn baton_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// The runtime the load generator runs on: two threads, like wrk -t2.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A child process killed (with its process group) on drop.
pub struct Running {
    child: Child,
    pub addr: SocketAddr,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SIGTERM first: baton drains and nginx quits; both exit at once idle.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `baton serve ARGS` on a free port and waits until it is ready.
pub fn start_baton(args: &[&str]) -> Running {
    start_baton_logged(args).running
}

/// A master started by [`start_baton_logged`]: its control socket and its
/// lifecycle events as they come.
pub struct LoggedBaton {
    pub running: Running,
    pub control: PathBuf,
    pub events: std::sync::mpsc::Receiver<baton::event::Logged>,
}

impl LoggedBaton {
    /// Runs `baton reload --wait` against it, failing the bench if the
    /// reload fails.
    pub fn reload(&self) {
        let status = Command::new(baton_bin())
            .args(["reload", "--wait", "--control"])
            .arg(&self.control)
            .stdout(Stdio::null())
            .status()
            .expect("run baton reload");
        assert!(status.success(), "the reload failed");
    }

    /// Waits for the next event that `wanted`, skipping others.
    pub fn next(&self, wanted: impl Fn(baton::event::Event) -> bool) -> baton::event::Logged {
        loop {
            let logged = self
                .events
                .recv_timeout(Duration::from_secs(120))
                .expect("baton logs the event");
            if logged.event.is_some_and(&wanted) {
                return logged;
            }
        }
    }
}

/// Like [`start_baton`], keeping the master's events.
pub fn start_baton_logged(args: &[&str]) -> LoggedBaton {
    // A control socket of its own: servers run side by side.
    static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let control = std::env::temp_dir().join(format!("baton-bench-{}-{n}.sock", std::process::id()));
    let mut child = Command::new(baton_bin())
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--control")
        .arg(&control)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start baton");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.expect("read baton's log");
        let Some(logged) = baton::event::Logged::parse(&line) else {
            continue;
        };
        if logged.event == Some(baton::event::Event::Listening) {
            addr = logged.parsed("addr");
        }
        if logged.event == Some(baton::event::Event::AllWorkersReady) {
            break;
        }
    }
    // Keep draining the log so that baton never blocks on a full pipe.
    let (sender, events) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(logged) = baton::event::Logged::parse(&line) {
                let _ = sender.send(logged);
            }
        }
    });
    LoggedBaton {
        running: Running {
            child,
            addr: addr.expect("baton logged its address"),
        },
        control,
        events,
    }
}

/// Starts a command that prints its listening address as its first line.
pub fn start_printing_addr(mut command: Command) -> Running {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().trim().parse().unwrap();
    std::thread::spawn(move || for _ in lines {});
    Running { child, addr }
}

/// A port that was free a moment ago (for servers that cannot bind port 0
/// and report it, like nginx).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The HTTP client the throughput benchmarks measure with.
pub enum Client {
    /// wrk, from the distribution, when installed: the same client nginx is
    /// usually measured with.
    Wrk,
    /// baton's own load generator otherwise.
    Builtin,
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub requests_per_second: f64,
    /// Responses received in all.
    pub requests: u64,
    pub errors: u64,
}

impl Client {
    pub fn detect() -> Self {
        let wrk = Command::new("wrk")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if wrk.is_ok() {
            Client::Wrk
        } else {
            Client::Builtin
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Client::Wrk => "wrk -t2 -c100",
            Client::Builtin => "baton load generator, 100 keep-alive connections",
        }
    }

    /// Keep-alive load of 100 connections for `duration`.
    pub fn measure(&self, addr: SocketAddr, duration: Duration) -> Throughput {
        match self {
            Client::Wrk => wrk(addr, duration, &[]),
            Client::Builtin => builtin(addr, duration, ClientMode::BUSY),
        }
    }

    /// 100 clients opening a new connection per request, for `duration`.
    pub fn measure_closing(&self, addr: SocketAddr, duration: Duration) -> Throughput {
        match self {
            Client::Wrk => wrk(addr, duration, &["-H", "Connection: close"]),
            Client::Builtin => builtin(addr, duration, ClientMode::NewConnection),
        }
    }
}

fn wrk(addr: SocketAddr, duration: Duration, extra: &[&str]) -> Throughput {
    let output = Command::new("wrk")
        .args(["-t2", "-c100", &format!("-d{}s", duration.as_secs().max(1))])
        .args(extra)
        .arg(format!("http://{addr}/"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    let requests_per_second = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "wrk against {addr} printed no rate ({}):\n{text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    let mut errors = 0;
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = line.trim().strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Throughput {
        requests_per_second,
        requests,
        errors,
    }
}

fn builtin(addr: SocketAddr, duration: Duration, mode: ClientMode) -> Throughput {
    let runtime = client_runtime();
    let clients = vec![mode; 100];
    let report = runtime.block_on(baton::load::run(baton::load::LoadPlan::new(
        addr, clients, duration,
    )));
    Throughput {
        requests_per_second: report.ok as f64 / report.elapsed.as_secs_f64(),
        requests: report.ok,
        errors: report.failures.len() as u64,
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// Runs `baton check` (GET only, no reloads, no output) against `target`
/// with `connections` clients, `keepalive_ratio` of them keeping their
/// connection, for `duration`; no request may fail.
pub fn check_load(
    runtime: &tokio::runtime::Runtime,
    target: baton::check::Target,
    duration: Duration,
    connections: usize,
    keepalive_ratio: f64,
) -> baton::check::report::CheckReport {
    let options = baton::check::CheckOptions {
        target,
        duration,
        connections,
        keepalive_ratio,
        reload_every: None,
        reloads: None,
        kill_every: None,
        request_timeout: Duration::from_secs(10),
        json: None,
        scenarios: vec![baton::check::scenario::Scenario::Get],
        server_timing: Default::default(),
        junit: None,
        plot: None,
        progress: false,
    };
    let report = runtime
        .block_on(baton::check::run(options))
        .expect("the check runs");
    assert_eq!(report.failures.total(), 0, "no request may fail");
    report
}

/// The busiest worker's requests over the idlest's in `report`; infinite
/// if fewer than `workers` answered.
pub fn busiest_over_idlest(report: &baton::check::report::CheckReport, workers: usize) -> f64 {
    let counts: Vec<u64> = report.workers.values().copied().collect();
    let busiest = counts.iter().copied().max().unwrap_or(0);
    let idlest = if counts.len() < workers {
        0
    } else {
        counts.iter().copied().min().unwrap_or(0)
    };
    if idlest == 0 {
        f64::INFINITY
    } else {
        busiest as f64 / idlest as f64
    }
}

pub fn nginx_available() -> bool {
    Command::new("nginx").arg("-v").output().is_ok()
}

/// nginx with `workers` processes answering every request with a fixed
/// body; SIGHUP to its pid reloads it.
pub fn start_nginx(workers: usize) -> Running {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("baton-bench-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; server {{ listen 127.0.0.1:{port} backlog=1024; \
         location / {{ return 200 \"Process handled by pid: 0\"; }} }} }}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut command = Command::new("sh");
    command.args([
        "-c",
        &format!(
            "echo 127.0.0.1:{port}; exec nginx -p {dir} -c {dir}/nginx.conf",
            dir = dir.display()
        ),
    ]);
    let server = start_printing_addr(command);
    let ready = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::net::TcpStream::connect(server.addr).is_ok()
    });
    assert!(ready, "nginx did not start");
    server
}

/// Opens `count` keep-alive connections, each after one request answered,
/// and keeps them open until the returned runtime is dropped.
pub fn idle_clients(addr: std::net::SocketAddr, count: usize) -> tokio::runtime::Runtime {
    let runtime = client_runtime();
    let (opened, mut ready) = tokio::sync::mpsc::channel(count);
    for _ in 0..count {
        let opened = opened.clone();
        runtime.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tokio::io::AsyncWriteExt::write_all(
                &mut stream,
                b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n",
            )
            .await
            .unwrap();
            let mut buffer = [0; 1024];
            let read = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer)
                .await
                .unwrap();
            assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
            opened.send(()).await.unwrap();
            // Idle; a handed-over connection stays open, one that is
            // closed ends here.
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
            std::future::pending::<()>().await;
        });
    }
    runtime.block_on(async {
        for _ in 0..count {
            ready.recv().await.unwrap();
        }
    });
    runtime
}

/// CPU time (user, system) spent so far by process `pid` and its children
/// (a master's workers), in clock ticks (100 a second on Linux).
pub fn cpu_ticks(pid: u32) -> (u64, u64) {
    std::iter::once(pid)
        .chain(baton::procfs::child_pids(pid))
        .filter_map(baton::procfs::cpu_ticks)
        .fold((0, 0), |(u, s), (du, ds)| (u + du, s + ds))
}
