//! The server a self-hosted check drives: `baton serve` in a child process,
//! whose log lines are read as lifecycle events (listening, ready, reload
//! outcome, a crashed worker replaced).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::CheckError;
use crate::event::{Event, Logged};
use crate::procfs;

/// Log lines kept to explain a server that failed.
const TAIL_LINES: usize = 40;

/// What the server's log says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    Listening(SocketAddr),
    AllReady,
    ReloadComplete,
    ReloadFailed(String),
    /// A worker process ended; `crashed` unless it was draining.
    WorkerExited {
        pid: u32,
        slot: usize,
        crashed: bool,
    },
    /// A worker started to replace a crashed one is ready.
    ReplacementReady {
        slot: usize,
    },
}

/// Reads one JSON log line of `baton serve` by its `event` field.
pub fn parse_event(line: &str) -> Option<ServerEvent> {
    let logged = Logged::parse(line)?;
    match logged.event? {
        Event::Listening => logged.parsed("addr").map(ServerEvent::Listening),
        Event::AllWorkersReady => Some(ServerEvent::AllReady),
        Event::ReloadComplete => Some(ServerEvent::ReloadComplete),
        Event::ReloadFailed | Event::ReleaseFailed => Some(ServerEvent::ReloadFailed(
            logged
                .field("reason")
                .unwrap_or_else(|| "see the server's log".to_owned()),
        )),
        Event::WorkerReady if logged.field("cause").as_deref() == Some("replacement") => {
            Some(ServerEvent::ReplacementReady {
                slot: logged.parsed("slot")?,
            })
        }
        event @ (Event::WorkerCrashed | Event::WorkerExited | Event::WorkerDrained) => {
            Some(ServerEvent::WorkerExited {
                pid: logged.parsed("pid")?,
                slot: logged.parsed("slot")?,
                crashed: event == Event::WorkerCrashed,
            })
        }
        _ => None,
    }
}

/// A running `baton serve` started by the check.
pub struct ManagedServer {
    child: Child,
    /// Its config file, removed with it.
    config: PathBuf,
    pid: u32,
    pub addr: SocketAddr,
    events: mpsc::UnboundedReceiver<ServerEvent>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ManagedServer {
    /// Starts `program serve --config FILE` and waits until every worker
    /// is ready.
    pub async fn start(
        program: &Path,
        config: &Path,
        within: Duration,
    ) -> Result<Self, CheckError> {
        let mut child = Command::new(program)
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CheckError::Server(format!("cannot start {}: {e}", program.display())))?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let log_tail = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(event) = parse_event(&line) {
                    let _ = events_tx.send(event);
                }
                let mut tail = log_tail.lock().expect("the tail lock is never poisoned");
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });

        let mut addr = None;
        let started = timeout(within, async {
            while let Some(event) = events.recv().await {
                match event {
                    ServerEvent::Listening(a) if addr.is_none() => addr = Some(a),
                    ServerEvent::AllReady => return true,
                    _ => {}
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        let mut server = ManagedServer {
            child,
            config: config.to_owned(),
            pid,
            addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            events,
            tail,
        };
        if !started || addr.is_none() {
            let _ = server.child.start_kill();
            let status = server.child.wait().await.ok();
            return Err(CheckError::Server(format!(
                "baton serve did not become ready within {} (exit: {})\n{}",
                humantime::format_duration(within),
                status.map_or("still running".to_owned(), |s| s.to_string()),
                server.tail().join("\n")
            )));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks for a reload, as `kill -HUP` does.
    pub fn reload(&self) -> Result<(), CheckError> {
        kill(Pid::from_raw(self.pid as i32), Signal::SIGHUP)
            .map_err(|e| CheckError::Server(format!("cannot signal the server: {e}")))
    }

    /// SIGKILLs one worker chosen at random; returns its pid.
    pub fn kill_random_worker(&self) -> Option<u32> {
        let workers = procfs::live_workers(self.pid);
        let victim = *workers.get(fastrand::usize(..workers.len().max(1)))?;
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).ok()?;
        Some(victim)
    }

    /// The next event from the server's log; `None` once the log closed.
    pub async fn next_event(&mut self) -> Option<ServerEvent> {
        self.events.recv().await
    }

    pub fn rss_bytes(&self) -> Option<u64> {
        procfs::rss_bytes(self.pid)
    }

    /// The last log lines, for explaining a failure.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .expect("the tail lock is never poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Stops the server gracefully (SIGTERM), killing it if it takes longer
    /// than `within`.
    pub async fn stop(mut self, within: Duration) -> Option<ExitStatus> {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        match timeout(within, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.start_kill();
                self.child.wait().await.ok()
            }
        }
    }
}

impl Drop for ManagedServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON log line as `baton serve --log-format json` writes it.
    fn line(fields: &str) -> String {
        format!(
            r#"{{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"words","target":"baton::master",{fields}}}"#
        )
    }

    #[test]
    fn reads_the_masters_log_lines() {
        assert_eq!(
            parse_event(&line(
                r#""event":"listening","name":"http","addr":"127.0.0.1:4000""#
            )),
            Some(ServerEvent::Listening("127.0.0.1:4000".parse().unwrap()))
        );
        assert_eq!(
            parse_event(&line(
                r#""event":"all_workers_ready","workers":2,"generation":1"#
            )),
            Some(ServerEvent::AllReady)
        );
        assert_eq!(
            parse_event(&line(
                r#""event":"reload_failed","generation":2,"reason":"the new worker failed: x y""#
            )),
            Some(ServerEvent::ReloadFailed(
                "the new worker failed: x y".into()
            ))
        );
        assert_eq!(
            parse_event(&line(
                r#""event":"worker_ready","pid":1,"slot":3,"generation":1,"cause":"replacement""#
            )),
            Some(ServerEvent::ReplacementReady { slot: 3 })
        );
        assert_eq!(
            parse_event(&line(
                r#""event":"worker_crashed","pid":77,"slot":1,"status":"signal 9 (SIGKILL)""#
            )),
            Some(ServerEvent::WorkerExited {
                pid: 77,
                slot: 1,
                crashed: true
            })
        );
        assert_eq!(
            parse_event(&line(r#""event":"worker_drained","pid":78,"slot":0"#)),
            Some(ServerEvent::WorkerExited {
                pid: 78,
                slot: 0,
                crashed: false
            })
        );
        assert_eq!(
            parse_event(&line(
                r#""event":"worker_ready","pid":1,"slot":0,"generation":2,"cause":"reload""#
            )),
            None
        );
        // The wording alone means nothing: only the event field counts.
        assert_eq!(
            parse_event(&line(r#""all_workers_ready":"event=all_workers_ready""#)),
            None
        );
        assert_eq!(parse_event("event=all_workers_ready"), None);
    }
}
