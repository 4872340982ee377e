//! The control socket: `baton reload [--wait]`, `baton status [--json]` and
//! `baton stop` talk to a running master through it.
//!
//! One request per connection: a line of at most [`MAX_REQUEST_BYTES`],
//! answered with text whose first line starts with `ok` or `error`, then the
//! connection closes. The socket file is 0600 and the peer's uid is checked
//! on both sides (SO_PEERCRED): the master serves root and its own user
//! only, and a client believes only a master of its own user or root. The
//! default path lies in a directory only the user can write. A client that sends garbage,
//! too much, or nothing at all is answered or dropped on a deadline; at most
//! [`MAX_CLIENTS`] are served at once. Nothing a client does reaches the
//! supervisor except a well-formed request.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::timeout;
use tracing::{debug, warn};

/// The longest request line.
pub const MAX_REQUEST_BYTES: u64 = 256;
/// Clients served at once; more are turned away.
pub const MAX_CLIENTS: usize = 512;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Reload {
        wait: bool,
    },
    Status {
        json: bool,
    },
    Stop,
    /// The Prometheus text of `/metrics`.
    Metrics,
    /// Lame duck: health checks fail, the workers go on serving.
    Drain,
    /// Back from lame duck.
    Undrain,
    /// `ok` while this host should get traffic (`/healthz`).
    Health,
    /// `ok` once the first generation is ready (`/readyz`).
    Ready,
    /// Replace the master's own program in place (see
    /// [`crate::master`]'s upgrade).
    Upgrade {
        wait: bool,
        /// Keep the workers running instead of rolling them to the new
        /// program.
        keep_workers: bool,
        /// A fault for the new program to show (tests only).
        fault: Option<UpgradeFault>,
    },
}

/// A fault a test asks the new program of an upgrade to show while it takes
/// over, to prove that the previous program comes back.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeFault {
    /// Abort (SIGABRT) halfway through taking over.
    CrashHalfway,
    /// Stop responding before taking over.
    Hang,
    /// Find the state unusable.
    Refuse,
}

impl UpgradeFault {
    fn as_str(self) -> &'static str {
        match self {
            UpgradeFault::CrashHalfway => "crash-halfway",
            UpgradeFault::Hang => "hang",
            UpgradeFault::Refuse => "refuse",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        [
            UpgradeFault::CrashHalfway,
            UpgradeFault::Hang,
            UpgradeFault::Refuse,
        ]
        .into_iter()
        .find(|fault| fault.as_str() == word)
    }
}

impl Command {
    pub fn parse(line: &str) -> Option<Self> {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["reload"] => Some(Command::Reload { wait: false }),
            ["reload", "--wait"] => Some(Command::Reload { wait: true }),
            ["status"] => Some(Command::Status { json: false }),
            ["status", "--json"] => Some(Command::Status { json: true }),
            ["stop"] => Some(Command::Stop),
            ["metrics"] => Some(Command::Metrics),
            ["drain"] => Some(Command::Drain),
            ["undrain"] => Some(Command::Undrain),
            ["health"] => Some(Command::Health),
            ["ready"] => Some(Command::Ready),
            ["upgrade", flags @ ..] => {
                let mut upgrade = (false, false, None);
                for flag in flags {
                    match *flag {
                        "--wait" if !upgrade.0 => upgrade.0 = true,
                        "--keep-workers" if !upgrade.1 => upgrade.1 = true,
                        _ => match flag.strip_prefix("--fault=").and_then(UpgradeFault::parse) {
                            Some(fault) if upgrade.2.is_none() => upgrade.2 = Some(fault),
                            _ => return None,
                        },
                    }
                }
                let (wait, keep_workers, fault) = upgrade;
                Some(Command::Upgrade {
                    wait,
                    keep_workers,
                    fault,
                })
            }
            _ => None,
        }
    }

    pub fn as_line(&self) -> String {
        if let Command::Upgrade {
            wait,
            keep_workers,
            fault,
        } = self
        {
            let mut line = "upgrade".to_owned();
            if *wait {
                line += " --wait";
            }
            if *keep_workers {
                line += " --keep-workers";
            }
            if let Some(fault) = fault {
                line += &format!(" --fault={}", fault.as_str());
            }
            return line;
        }
        self.simple_line().to_owned()
    }

    fn simple_line(&self) -> &'static str {
        match self {
            Command::Reload { wait: false } => "reload",
            Command::Reload { wait: true } => "reload --wait",
            Command::Status { json: false } => "status",
            Command::Status { json: true } => "status --json",
            Command::Stop => "stop",
            Command::Metrics => "metrics",
            Command::Drain => "drain",
            Command::Undrain => "undrain",
            Command::Health => "health",
            Command::Ready => "ready",
            Command::Upgrade { .. } => "upgrade",
        }
    }
}

/// The clients being answered, at most [`MAX_CLIENTS`]. The master waits
/// for them before it exits, so that an answer given just before (to
/// `stop`, say) is written out rather than cut off with the connection.
#[derive(Debug, Clone)]
pub struct Clients(Arc<Semaphore>);

impl Default for Clients {
    fn default() -> Self {
        Clients(Arc::new(Semaphore::new(MAX_CLIENTS)))
    }
}

impl Clients {
    /// Waits until every client has been answered, for at most `within`.
    pub async fn answered(&self, within: Duration) {
        let _ = timeout(within, self.0.acquire_many(MAX_CLIENTS as u32)).await;
    }
}

/// A request for the supervisor, with where to send its answer.
#[derive(Debug)]
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<String>,
    /// For `upgrade --wait`: a copy of the client's connection, which the
    /// next image of the master answers on if the upgrade goes ahead.
    pub connection: Option<std::os::fd::OwnedFd>,
}

/// Where the control socket lives when `--control` is not given:
/// `control.sock` in a directory only this user can write (see
/// [`default_dir`]), so that nobody else can put a socket there first and
/// answer in the master's name.
pub fn default_path() -> PathBuf {
    default_dir().join("control.sock")
}

/// `$XDG_RUNTIME_DIR/baton`, `/run/baton` for root, else `/tmp/baton-UID`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&dir).join("baton");
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        PathBuf::from("/run/baton")
    } else {
        PathBuf::from(format!("/tmp/baton-{uid}"))
    }
}

/// Creates `dir` (mode 0700) if it is missing, and checks that it belongs
/// to this user and that nobody else may write in it.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_private_dir(dir),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

/// Checks that `dir` is a directory (not a link) of this user that nobody
/// else may write in.
fn check_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::getuid().as_raw();
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    let problem = if !meta.is_dir() {
        Some("is not a directory".to_owned())
    } else if meta.uid() != me {
        Some(format!("belongs to uid {}, not to uid {me}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "may be written by others (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(format!(
            "{} {problem}, so another user could answer in baton's name; remove it, or give --control PATH in a directory only you can write",
            dir.display()
        )),
    }
}

/// Whether a control client running as `me` may believe a master that runs
/// as `peer` and listens at `path`: its own user and root always; for root,
/// also the user that owns both the socket and a directory only that user
/// (or root) can write, like a systemd `RuntimeDirectory=` of a service
/// running as its own user.
fn trusted_peer(me: u32, peer: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if peer == me || peer == 0 {
        return true;
    }
    if me != 0 {
        return false;
    }
    let owned_by_peer = std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == peer);
    let dir_private = path
        .parent()
        .and_then(|dir| std::fs::symlink_metadata(dir).ok())
        .is_some_and(|m| m.is_dir() && (m.uid() == peer || m.uid() == 0) && m.mode() & 0o022 == 0);
    owned_by_peer && dir_private
}

/// Serves the control socket until the master exits, passing well-formed
/// requests to `requests`.
///
/// When [`MAX_CLIENTS`] are connected, a new client takes the place of the
/// one that has waited longest without sending its request: clients that
/// connect and say nothing cannot lock the operator out, since the
/// operator's own command sends its request at once.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::UnboundedSender<Request>,
    clients: Clients,
) {
    let slots = clients.0;
    let silent = Silent::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(cause = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if silent.evict_oldest() => {
                debug!("control socket full; the longest silent client made room");
                match timeout(REQUEST_TIMEOUT, slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => continue,
                }
            }
            Err(_) => {
                debug!("control socket busy; client turned away");
                continue;
            }
        };
        let requests = requests.clone();
        let (id, evicted) = silent.add();
        let silent = silent.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, requests, evicted, || silent.remove(id)).await {
                debug!(cause = %e, "control client");
            }
            silent.remove(id);
            drop(permit);
        });
    }
}

/// The clients that have not sent their request yet, oldest first, each
/// with the means to drop it.
#[derive(Debug, Clone, Default)]
struct Silent(Arc<std::sync::Mutex<SilentList>>);

#[derive(Debug, Default)]
struct SilentList {
    next_id: u64,
    waiting: std::collections::VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Silent {
    /// A new client: its id, and what resolves when it is evicted.
    fn add(&self) -> (u64, oneshot::Receiver<()>) {
        let (evict, evicted) = oneshot::channel();
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let id = list.next_id;
        list.next_id += 1;
        list.waiting.push_back((id, evict));
        (id, evicted)
    }

    /// The client `id` sent its request (or left).
    fn remove(&self, id: u64) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.waiting.retain(|(waiting, _)| *waiting != id);
    }

    /// Drops the client silent for longest; false if none is.
    fn evict_oldest(&self) -> bool {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match list.waiting.pop_front() {
            Some((_, evict)) => {
                let _ = evict.send(());
                true
            }
            None => false,
        }
    }
}

async fn handle(
    stream: UnixStream,
    requests: mpsc::UnboundedSender<Request>,
    evicted: oneshot::Receiver<()>,
    spoke: impl FnOnce(),
) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    let connection = {
        use std::os::fd::AsFd;
        stream.as_fd().try_clone_to_owned()?
    };
    let (read, mut write) = stream.into_split();
    // Read the request first, even from a peer about to be refused: closing
    // with its request unread would reset the connection before it reads why.
    let mut line = String::new();
    let mut limited = BufReader::new(read.take(MAX_REQUEST_BYTES + 1));
    let read = tokio::select! {
        read = timeout(REQUEST_TIMEOUT, limited.read_line(&mut line)) => read,
        // Dropped for a newer client: closed without an answer.
        Ok(()) = evicted => return Ok(()),
    };
    spoke();
    let me = nix::unistd::getuid().as_raw();
    let answer = if peer.uid() != 0 && peer.uid() != me {
        warn!(uid = peer.uid(), "control request refused: wrong user");
        format!("error: permission denied: only root or uid {me} may control this baton\n")
    } else {
        match read {
            Err(_) => "error: no request in time\n".to_owned(),
            Ok(Err(_)) => "error: the request is not text\n".to_owned(),
            Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST_BYTES => {
                format!("error: requests are at most {MAX_REQUEST_BYTES} bytes\n")
            }
            Ok(Ok(_)) => match Command::parse(&line) {
                None => "error: unknown request; send one of: reload, reload --wait, status, status --json, stop, metrics, drain, undrain, health, ready, upgrade [--wait] [--keep-workers]\n"
                    .to_owned(),
                Some(command @ Command::Upgrade { wait: true, .. }) => {
                    ask(&requests, command, Some(connection)).await
                }
                Some(command) => ask(&requests, command, None).await,
            },
        }
    };
    write.write_all(answer.as_bytes()).await?;
    write.shutdown().await
}

/// Passes `command` to the supervisor and waits for its answer.
pub async fn ask(
    requests: &mpsc::UnboundedSender<Request>,
    command: Command,
    connection: Option<std::os::fd::OwnedFd>,
) -> String {
    let gone = || "error: the master is shutting down\n".to_owned();
    let (reply, answer) = oneshot::channel();
    let request = Request {
        command,
        reply,
        connection,
    };
    if requests.send(request).is_err() {
        return gone();
    }
    answer.await.unwrap_or_else(|_| gone())
}

/// What the master answered, and who it is.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    /// The master's pid, as the kernel says (SO_PEERCRED).
    pub master_pid: u32,
}

/// Sends `command` to the master at `path` and returns its answer. The
/// master must run as this user or root (SO_PEERCRED): an answer from
/// anyone else is not read.
pub fn request(path: &Path, command: Command) -> Result<Answer, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach baton at {}: {e}; is it running, and is this its --control path?",
            path.display()
        )
    })?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot tell who listens at {}: {e}", path.display()))?;
    let me = nix::unistd::getuid().as_raw();
    if !trusted_peer(me, peer.uid(), path) {
        return Err(format!(
            "refusing to talk to {}: the process listening there (pid {}) runs as uid {}, not as uid {me} or root, so it is not your baton; nothing was sent",
            path.display(),
            peer.pid(),
            peer.uid()
        ));
    }
    let line = format!("{}\n", command.as_line());
    // Even if sending fails, the master may have said why: read on.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = stream.read_to_string(&mut answer);
    if !answer.is_empty() {
        return Ok(Answer {
            text: answer,
            master_pid: peer.pid() as u32,
        });
    }
    sent.map_err(|e| format!("cannot send to {}: {e}", path.display()))?;
    read.map_err(|e| format!("no answer from {}: {e}", path.display()))?;
    Err(format!("no answer from {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_round_trip() {
        for command in [
            Command::Reload { wait: false },
            Command::Reload { wait: true },
            Command::Status { json: false },
            Command::Status { json: true },
            Command::Stop,
            Command::Metrics,
            Command::Drain,
            Command::Undrain,
            Command::Health,
            Command::Ready,
            Command::Upgrade {
                wait: true,
                keep_workers: false,
                fault: None,
            },
            Command::Upgrade {
                wait: false,
                keep_workers: true,
                fault: Some(UpgradeFault::Hang),
            },
        ] {
            assert_eq!(Command::parse(&command.as_line()), Some(command));
        }
        assert_eq!(Command::parse("upgrade --wait --wait"), None);
        assert_eq!(Command::parse("upgrade --fault=boom"), None);
        assert_eq!(Command::parse("reload --now"), None);
        assert_eq!(Command::parse(""), None);
    }
}
