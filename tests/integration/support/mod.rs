//! The test harness: runs the real `baton` binary, captures its log lines so
//! tests can wait for lifecycle events instead of sleeping, inspects its
//! process tree through /proc, and kills everything it started on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use baton::event::{Event, Logged};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use baton::load::{ClientMode, FailureKind, LoadPlan, LoadReport};

/// The binary under test.
pub fn baton_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// Tests that put load on the machine take this lock so that they do not
/// starve each other of CPU (the machine has 2 cores).
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Log lines of a child process, shared with the thread that reads them.
#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A running `baton serve`, killed with its workers when dropped.
pub struct Baton {
    child: Option<Child>,
    pid: u32,
    logs: Arc<Logs>,
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Its control socket, when the harness chose it.
    pub control: Option<PathBuf>,
}

impl Baton {
    /// Starts `baton serve ARGS` on a free loopback port and waits until
    /// every worker is ready.
    pub fn serve(args: &[&str]) -> Baton {
        Self::serve_from(&baton_bin(), args)
    }

    /// Like [`Baton::serve`], from another copy of the program.
    pub fn serve_from(program: &Path, args: &[&str]) -> Baton {
        Self::serve_command(Command::new(program), args)
    }

    /// Like [`Baton::serve`], with `cmd` (a program and, say, environment)
    /// in place of the plain binary.
    pub fn serve_command(cmd: Command, args: &[&str]) -> Baton {
        let baton = Self::spawn_serve(cmd, args);
        baton.wait_event(Event::AllWorkersReady, Duration::from_secs(20));
        baton
    }

    /// Starts `baton serve ARGS` without waiting for readiness.
    pub fn spawn(program: &Path, args: &[&str]) -> Baton {
        Self::spawn_serve(Command::new(program), args)
    }

    /// Like [`Baton::spawn`], with `cmd` in place of the plain binary.
    pub fn spawn_command(cmd: Command, args: &[&str]) -> Baton {
        Self::spawn_serve(cmd, args)
    }

    /// Starts `baton serve ARGS` with `file` inherited at descriptor `at`,
    /// without close-on-exec.
    pub fn spawn_with_fd(file: &std::fs::File, at: i32, args: &[&str]) -> Baton {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let source = file.as_raw_fd();
        let mut cmd = Command::new(baton_bin());
        // SAFETY: dup2 and fcntl are async-signal-safe; the file outlives
        // the spawn.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would leave close-on-exec set.
                let result = if source == at {
                    nix::libc::fcntl(at, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(source, at)
                };
                if result < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn_serve(cmd, args)
    }

    /// Starts `baton serve ARGS` as systemd would with socket activation:
    /// `fds` at descriptors 3, 4, … with LISTEN_FDS, LISTEN_PID (the pid baton
    /// will have) and LISTEN_FDNAMES, plus `env`.
    pub fn spawn_activated(
        fds: &[(&str, BorrowedFd<'_>)],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Baton {
        use std::os::unix::process::CommandExt;
        let sources: Vec<i32> = fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let names: Vec<&str> = fds.iter().map(|&(name, _)| name).collect();
        // sh learns its own pid, which exec keeps.
        let control = private_control_path();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
            .arg(baton_bin())
            .arg("serve")
            .arg("--control")
            .arg(&control)
            .args(args)
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .envs(env.iter().copied());
        // SAFETY: only dup2, which is async-signal-safe; the descriptors
        // outlive the spawn. Two steps, so that no source is overwritten
        // before it is copied.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &source) in sources.iter().enumerate() {
                    if nix::libc::dup2(source, 100 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for i in 0..sources.len() as i32 {
                    if nix::libc::dup2(100 + i, 3 + i) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut baton = Self::launch(cmd);
        baton.control = Some(control);
        baton
    }

    fn spawn_serve(mut cmd: Command, args: &[&str]) -> Baton {
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let control = (!args.contains(&"--control")).then(private_control_path);
        if let Some(path) = &control {
            cmd.arg("--control").arg(path);
        }
        cmd.args(args);
        let mut baton = Self::launch(cmd);
        baton.control = control;
        if let Some(line) = baton.try_wait_event(Event::Listening, Duration::from_secs(20)) {
            if let Some(addr) = line.parsed("addr") {
                baton.addr = addr;
            }
        }
        baton
    }

    /// Starts a fully formed command whose stderr is baton's log, in JSON
    /// lines (read as [`Logged`] values).
    pub fn launch(mut cmd: Command) -> Baton {
        cmd.env("RUST_LOG", "info")
            .env("BATON_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_retrying_busy(&mut cmd);
        let pid = child.id();
        let logs = Arc::new(Logs::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[baton {pid}] {line}");
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });
        Baton {
            child: Some(child),
            pid,
            logs,
            addr: "0.0.0.0:0".parse().unwrap(),
            control: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid as i32), signal).expect("signal the master");
    }

    /// Lines logged so far that contain `pattern`.
    pub fn count_log(&self, pattern: &str) -> usize {
        self.logs
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pattern))
            .count()
    }

    /// Whether any line logged so far contains `pattern`.
    pub fn logs_contain(&self, pattern: &str) -> bool {
        self.count_log(pattern) > 0
    }

    /// Waits for the `n`th line that `pick` takes something from, and
    /// returns what it took.
    fn try_wait_nth<T>(
        &self,
        n: usize,
        within: Duration,
        pick: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + slower(within);
        let mut lines = self.logs.lines.lock().unwrap();
        loop {
            if let Some(found) = lines.iter().filter_map(|l| pick(l)).nth(n - 1) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self
                .logs
                .grew
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Waits for the `n`th line containing `pattern` and returns it.
    pub fn try_wait_log_nth(&self, pattern: &str, n: usize, within: Duration) -> Option<String> {
        self.try_wait_nth(n, within, |l| l.contains(pattern).then(|| l.to_owned()))
    }

    pub fn try_wait_log(&self, pattern: &str, within: Duration) -> Option<String> {
        self.try_wait_log_nth(pattern, 1, within)
    }

    /// Waits for the `n`th line containing `pattern`, failing the test if it
    /// does not come.
    pub fn wait_log_nth(&self, pattern: &str, n: usize, within: Duration) -> String {
        self.try_wait_log_nth(pattern, n, within)
            .unwrap_or_else(|| {
                let lines = self.logs.lines.lock().unwrap();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                panic!("baton did not log {pattern:?} ({n} times) within {within:?}; its last lines:\n{tail}")
            })
    }

    pub fn wait_log(&self, pattern: &str, within: Duration) -> String {
        self.wait_log_nth(pattern, 1, within)
    }

    /// Lines logged so far that `matches`, read.
    pub fn logged(&self, matches: impl Fn(&Logged) -> bool) -> Vec<Logged> {
        self.logs
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| Logged::parse(line))
            .filter(|logged| matches(logged))
            .collect()
    }

    /// How many lines logged so far `matches`.
    pub fn count_logged(&self, matches: impl Fn(&Logged) -> bool) -> usize {
        self.logged(matches).len()
    }

    /// Lines logged so far that carry `event`.
    pub fn count_event(&self, event: Event) -> usize {
        self.count_logged(|l| l.event == Some(event))
    }

    /// Waits for the `n`th line that `matches` (`what` names it in a
    /// failure) and returns it, read.
    pub fn try_wait_logged(
        &self,
        n: usize,
        within: Duration,
        matches: impl Fn(&Logged) -> bool,
    ) -> Option<Logged> {
        self.try_wait_nth(n, within, |l| {
            Logged::parse(l).filter(|logged| matches(logged))
        })
    }

    /// Like [`Baton::try_wait_logged`], failing the test if the line does
    /// not come.
    pub fn wait_logged(
        &self,
        what: &str,
        n: usize,
        within: Duration,
        matches: impl Fn(&Logged) -> bool,
    ) -> Logged {
        self.try_wait_logged(n, within, matches).unwrap_or_else(|| {
            let lines = self.logs.lines.lock().unwrap();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            panic!(
                "baton did not log {what} ({n} times) within {within:?}; its last lines:\n{tail}"
            )
        })
    }

    pub fn try_wait_event(&self, event: Event, within: Duration) -> Option<Logged> {
        self.try_wait_logged(1, within, |l| l.event == Some(event))
    }

    /// Waits for the `n`th line that carries `event`.
    pub fn wait_event_nth(&self, event: Event, n: usize, within: Duration) -> Logged {
        self.wait_logged(&event.to_string(), n, within, |l| l.event == Some(event))
    }

    /// The address the master bound for `--admin` or `--agent` (`option`),
    /// as its `operators_listening` event says: give it port 0.
    pub fn operators_addr(&self, option: &str) -> SocketAddr {
        let line = self.wait_logged(option, 1, Duration::from_secs(20), |l| {
            l.is(Event::OperatorsListening, "option", option)
        });
        line.parsed("addr").expect("an address")
    }

    /// Waits for the first line that carries `event`.
    pub fn wait_event(&self, event: Event, within: Duration) -> Logged {
        self.wait_event_nth(event, 1, within)
    }

    /// Sends SIGHUP and waits for the reload to complete; returns the
    /// generation it rolled in.
    pub fn reload(&self) -> u64 {
        let done = self.count_event(Event::ReloadComplete);
        self.signal(Signal::SIGHUP);
        let line = self.wait_event_nth(Event::ReloadComplete, done + 1, Duration::from_secs(30));
        line.parsed("generation").unwrap()
    }

    /// Runs `baton ARGS --control PATH` against this master.
    pub fn control_client(&self, args: &[&str]) -> std::process::Output {
        let control = self
            .control
            .as_ref()
            .expect("a control socket the harness chose");
        Command::new(baton_bin())
            .args(args)
            .arg("--control")
            .arg(control)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run baton {args:?}: {e}"))
    }

    /// `baton status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let output = self.control_client(&["status", "--json"]);
        assert!(output.status.success(), "baton status failed: {output:?}");
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }

    /// `baton reload --wait` against this master: its exit code and what it
    /// printed (the answer on stdout, an error on stderr).
    pub fn reload_wait(&self) -> (i32, String) {
        let output = self.control_client(&["reload", "--wait"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code().unwrap_or(-1), text)
    }

    /// Live (not zombie) child processes of the master.
    pub fn workers(&self) -> Vec<u32> {
        baton::procfs::live_workers(self.pid)
    }

    /// Waits until the master has exactly `n` live children that answer the
    /// condition `accept`.
    pub fn wait_workers(&self, within: Duration, accept: impl Fn(&[u32]) -> bool) -> Vec<u32> {
        let deadline = Instant::now() + slower(within);
        loop {
            let workers = self.workers();
            if accept(&workers) {
                return workers;
            }
            assert!(
                Instant::now() < deadline,
                "workers {workers:?} did not reach the expected state within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the master to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("not yet reaped");
        let deadline = Instant::now() + slower(within);
        loop {
            if let Some(status) = child.try_wait().expect("wait for baton") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "baton did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The master's open descriptors.
    pub fn fd_count(&self) -> usize {
        baton::procfs::fd_count(self.pid).expect("read the master's fds")
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        let workers = children(self.pid);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (pid, _) in workers {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// A child process that is killed and reaped when dropped, even when the
/// test fails.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `within`, stretched by `BATON_TEST_SLOWDOWN` (a factor, 1 by default):
/// every deadline the support waits for scales with it, so that a machine
/// slower than any this suite was tuned on can still run it, by setting one
/// number rather than editing tests.
pub fn slower(within: Duration) -> Duration {
    static FACTOR: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let factor = *FACTOR.get_or_init(|| {
        std::env::var("BATON_TEST_SLOWDOWN")
            .ok()
            .and_then(|f| f.parse().ok())
            .filter(|f: &f64| f.is_finite() && *f >= 1.0)
            .unwrap_or(1.0)
    });
    within.mul_f64(factor)
}

/// A control socket path of this test's own, so that masters started side
/// by side never share one.
pub fn private_control_path() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "control-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

pub use baton::procfs::{children, stat};
pub use tempfile::TempDir;

/// Whether `pid` is gone or dead (a zombie waiting for its reaper): the
/// same test `baton stop --wait` makes.
pub fn is_dead(pid: u32) -> bool {
    baton::procfs::has_exited(pid)
}

/// A loopback port nothing listens on now (the kernel picked it for a
/// listener that is closed again), for a program other than baton that
/// must be told its port: baton binds port 0 and logs the port it got.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` every few milliseconds until it holds or `within` passes.
pub fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + slower(within);
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A runtime for the load generator, separate from the test's thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Load running in the background while a test acts on the server.
pub struct BackgroundLoad {
    runtime: tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl BackgroundLoad {
    pub fn start(plan: LoadPlan) -> Self {
        let runtime = runtime();
        let task = runtime.spawn(baton::load::run(plan));
        BackgroundLoad { runtime, task }
    }

    /// Waits for the load to end and returns what it saw.
    /// Reloads `baton` `times` times, each `every` after the last one
    /// completed, then waits for the load to end and returns its report.
    pub fn finish_after_reloads(self, baton: &Baton, times: usize, every: Duration) -> LoadReport {
        for _ in 0..times {
            std::thread::sleep(every);
            baton.reload();
        }
        self.finish()
    }

    pub fn finish(self) -> LoadReport {
        self.runtime
            .block_on(self.task)
            .expect("the load does not panic")
    }
}

/// The report and its first failures, for an assertion message.
pub fn describe_failures(report: &LoadReport) -> String {
    let mut text = format!("{report}\n");
    for failure in report.failures.iter().take(20) {
        text += &format!(
            "  {} after {:?} (worker {:?}): {}\n",
            failure.kind,
            failure.ended - failure.started,
            failure.worker_pid,
            failure.detail
        );
    }
    text
}

/// Fails the test, showing the failures, unless every request succeeded.
pub fn assert_no_failures(report: &LoadReport) {
    assert!(report.failures.is_empty(), "{}", describe_failures(report));
}

/// The mixed load the zero-downtime tests use: clients that open a new
/// connection per request, clients on keep-alive connections and clients
/// uploading 16 KiB bodies.
pub fn mixed_clients(new_connection: usize, keep_alive: usize, uploads: usize) -> Vec<ClientMode> {
    let mut clients = vec![ClientMode::NewConnection; new_connection];
    clients.extend(vec![ClientMode::BUSY; keep_alive]);
    clients.extend(vec![
        ClientMode::Upload {
            body_bytes: 16 * 1024
        };
        uploads
    ]);
    clients
}

/// Copies the binary into a fresh directory, so a test can replace the file
/// (a deploy) without touching the one other tests run.
/// Spawns `cmd`, trying again while its program is busy: a program just
/// copied (see [`private_copy`]) is open for writing in any child another
/// test thread forked meanwhile, until that child's exec closes it.
fn spawn_retrying_busy(cmd: &mut Command) -> std::process::Child {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            spawned => return spawned.expect("start baton"),
        }
    }
}

pub fn private_copy(name: &str) -> (TempDir, PathBuf) {
    let dir = temp_dir(name);
    let path = dir.path().join("baton");
    std::fs::copy(baton_bin(), &path).expect("copy the baton binary");
    (dir, path)
}

/// A new directory under cargo's directory for test files, removed with
/// everything in it when dropped.
pub fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a test directory")
}

/// Replaces the file at `path` with `contents`, as a deploy would: a new
/// file renamed over the old one, so that running processes keep theirs.
pub fn replace_file(path: &Path, contents: &[u8], executable: bool) {
    use std::os::unix::fs::PermissionsExt;
    let staging = path.with_extension("new");
    std::fs::write(&staging, contents).expect("write the new file");
    if executable {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::rename(&staging, path).expect("rename over the old file");
}

/// The path of a file under `examples/`.
pub fn example(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
        .to_str()
        .unwrap()
        .to_owned()
}

/// Runs `baton ARGS` to completion (killing it after 20 s) and returns its
/// exit code and stderr.
pub fn run_baton(args: &[&str]) -> (i32, String) {
    // A master gets its own control socket, as every master a test starts.
    // (Right after `serve`: what follows `--` is the COMMAND's.)
    let control = private_control_path().display().to_string();
    let mut argv: Vec<&str> = args.to_vec();
    if args.first() == Some(&"serve") && !args.contains(&"--control") {
        argv.splice(1..1, ["--control", control.as_str()]);
    }
    let mut child = Command::new(baton_bin())
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run baton");
    let exited = wait_until(Duration::from_secs(20), || {
        child.try_wait().expect("wait for baton").is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("collect baton's output");
    assert!(exited, "baton {args:?} did not exit within 20 s");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends raw bytes and reads until the server closes or goes quiet.
pub fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> String {
    stream.write_all(bytes).unwrap();
    read_response(stream)
}

pub fn read_response(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if complete(&response) {
                    break;
                }
            }
            Err(e) => panic!(
                "reading the response: {e}; got so far: {:?}",
                String::from_utf8_lossy(&response)
            ),
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// Whether `response` holds a whole response with a Content-Length body.
pub fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .is_some_and(|len| body.len() >= len)
}

/// One column (`status`, `hrsp_2xx`, …) of server `server` in proxy
/// `proxy`, from the CSV of HAProxy's `show stat`.
pub fn haproxy_column(csv: &str, proxy: &str, server: &str, column: &str) -> Option<String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, col) = (at("pxname")?, at("svname")?, at(column)?);
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .find(|row| row.get(px) == Some(&proxy) && row.get(sv) == Some(&server))
        .and_then(|row| row.get(col).map(|value| value.to_string()))
}
