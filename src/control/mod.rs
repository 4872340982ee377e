//! The control socket: `baton reload [--wait]`, `baton status [--json]` and
//! `baton stop` talk to a running master through it.
//!
//! One request per connection: a JSON line of at most
//! [`MAX_REQUEST_BYTES`] carrying a [`Command`], answered with one JSON line
//! carrying a [`Reply`], then the connection closes. Both lines name the
//! protocol [`VERSION`] and the baton that wrote them, so that a client and
//! a master of different versions say so instead of misreading each other;
//! a client that sends words instead of JSON is answered in words. The socket file is 0600 and the peer's uid is checked
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

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::timeout;
use tracing::{debug, warn};

pub mod reply;
pub mod status;

pub use reply::{Problem, Reply};

/// The longest request line.
pub const MAX_REQUEST_BYTES: u64 = 256;
/// Clients served at once; more are turned away.
pub const MAX_CLIENTS: usize = 512;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The control protocol this baton speaks. Client and master refuse each
/// other's lines of another version, and say which versions met.
pub const VERSION: u32 = 1;

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Reload {
        #[serde(default)]
        wait: bool,
    },
    /// The master and its workers (the client prints a table or JSON).
    Status,
    Stop,
    /// The Prometheus text of `/metrics`.
    Metrics,
    /// Lame duck: health checks fail, the workers go on serving.
    Drain,
    /// Back from lame duck.
    Undrain,
    /// Whether this host should get traffic (`/healthz`).
    Health,
    /// Whether the first generation is ready (`/readyz`).
    Ready,
    /// Replace the master's own program in place (see
    /// [`crate::master`]'s upgrade).
    Upgrade {
        #[serde(default)]
        wait: bool,
        /// Keep the workers running instead of rolling them to the new
        /// program.
        #[serde(default)]
        keep_workers: bool,
        /// A fault for the new program to show (tests only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// One line on the control socket, either way: the protocol version, the
/// baton that wrote it, and the request or the reply.
#[derive(Debug, Serialize, Deserialize)]
struct Line<T> {
    v: u32,
    #[serde(default)]
    baton: String,
    #[serde(flatten)]
    body: T,
}

impl<T: Serialize> Line<T> {
    fn encode(body: T) -> Vec<u8> {
        let line = Line {
            v: VERSION,
            baton: env!("CARGO_PKG_VERSION").to_owned(),
            body,
        };
        let mut bytes = serde_json::to_vec(&line).expect("control lines serialize");
        bytes.push(b'\n');
        bytes
    }
}

/// A line's version and writer, read before its body so that a line of
/// another version is recognised as such.
#[derive(Debug, Deserialize)]
struct Peek {
    v: u32,
    #[serde(default)]
    baton: String,
}

/// Reads a request line: the command, or the reply that refuses it.
fn read_request(line: &str) -> Result<Command, Reply> {
    let unknown = || {
        Reply::Error(Problem::Unknown {
            request: line.trim().chars().take(80).collect(),
        })
    };
    let peek: Peek = serde_json::from_str(line).map_err(|_| unknown())?;
    if peek.v != VERSION {
        return Err(Reply::Error(Problem::Version {
            master: VERSION,
            client: peek.v,
        }));
    }
    serde_json::from_str::<Line<Command>>(line)
        .map(|line| line.body)
        .map_err(|_| unknown())
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
    pub reply: oneshot::Sender<Reply>,
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
    // A client that does not speak JSON lines (garbage, or a baton from
    // before them) is answered in words, which such a client prints.
    let speaks_json = line.trim_start().starts_with('{');
    let reply = if peer.uid() != 0 && peer.uid() != me {
        warn!(uid = peer.uid(), "control request refused: wrong user");
        Reply::Error(Problem::PermissionDenied { master_uid: me })
    } else {
        match read {
            Err(_) => Reply::Error(Problem::NoRequestInTime),
            Ok(Err(_)) => Reply::Error(Problem::Unknown {
                request: "(not text)".to_owned(),
            }),
            Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST_BYTES => Reply::Error(Problem::TooLong {
                max_bytes: MAX_REQUEST_BYTES,
            }),
            Ok(Ok(_)) => match read_request(&line) {
                Err(refusal) => refusal,
                Ok(command @ Command::Upgrade { wait: true, .. }) => {
                    ask(&requests, command, Some(connection)).await
                }
                Ok(command) => ask(&requests, command, None).await,
            },
        }
    };
    let bytes = if speaks_json {
        encode_reply(&reply)
    } else {
        reply.to_string().into_bytes()
    };
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// A reply as the line a client reads.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    Line::encode(reply)
}

/// Passes `command` to the supervisor and waits for its answer.
pub async fn ask(
    requests: &mpsc::UnboundedSender<Request>,
    command: Command,
    connection: Option<std::os::fd::OwnedFd>,
) -> Reply {
    let gone = || Reply::Error(Problem::ShuttingDown);
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
    pub reply: Reply,
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
    // Even if sending fails, the master may have said why: read on.
    let sent = stream.write_all(&Line::encode(command));
    let mut answer = String::new();
    let read = stream.read_to_string(&mut answer);
    if answer.is_empty() {
        sent.map_err(|e| format!("cannot send to {}: {e}", path.display()))?;
        read.map_err(|e| format!("no answer from {}: {e}", path.display()))?;
        return Err(format!("no answer from {}", path.display()));
    }
    let master_pid = peer.pid() as u32;
    let reply = read_reply(&answer).map_err(|problem| {
        format!(
            "the master at {} (pid {master_pid}) {problem}; run this command with the master's own program, /proc/{master_pid}/exe",
            path.display()
        )
    })?;
    Ok(Answer { reply, master_pid })
}

/// Reads the master's answer, or says why it cannot be read.
fn read_reply(answer: &str) -> Result<Reply, String> {
    let Ok(peek) = serde_json::from_str::<Peek>(answer) else {
        let first = answer.lines().next().unwrap_or_default();
        return Err(format!(
            "answered in words, not in control protocol {VERSION} (it is a baton from before JSON lines): {first:?}"
        ));
    };
    if peek.v != VERSION {
        return Err(format!(
            "runs baton {} and speaks control protocol {}, and this baton {} speaks {VERSION}",
            peek.baton,
            peek.v,
            env!("CARGO_PKG_VERSION")
        ));
    }
    serde_json::from_str::<Line<Reply>>(answer)
        .map(|line| line.body)
        .map_err(|e| format!("answered something this baton cannot read ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_garbage_is_refused() {
        for command in [
            Command::Reload { wait: false },
            Command::Reload { wait: true },
            Command::Status,
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
            let line = String::from_utf8(Line::encode(command)).unwrap();
            assert!(line.len() as u64 <= MAX_REQUEST_BYTES, "{line}");
            assert_eq!(read_request(&line), Ok(command));
        }
        for garbage in [
            "reload",
            "",
            r#"{"v":1,"command":"reload","wait":"soon"}"#,
            r#"{"v":1,"command":"explode"}"#,
            r#"{"command":"reload"}"#,
        ] {
            assert!(
                matches!(
                    read_request(garbage),
                    Err(Reply::Error(Problem::Unknown { .. }))
                ),
                "{garbage}"
            );
        }
    }

    #[test]
    fn a_request_of_another_version_is_refused_with_both_versions() {
        let line = r#"{"v":2,"baton":"9.0.0","command":"reload","wait":true}"#;
        let refusal = read_request(line).unwrap_err();
        assert_eq!(
            refusal,
            Reply::Error(Problem::Version {
                master: VERSION,
                client: 2
            })
        );
        assert!(refusal
            .to_string()
            .starts_with("error: this master speaks control protocol 1 and the client 2"));
    }

    #[test]
    fn a_client_says_which_versions_met_when_the_master_speaks_another() {
        let newer = r#"{"v":7,"baton":"9.0.0","reply":"stopping"}"#;
        let said = read_reply(newer).unwrap_err();
        assert!(
            said.contains("baton 9.0.0 and speaks control protocol 7"),
            "{said}"
        );
        assert!(said.contains(&format!("speaks {VERSION}")), "{said}");
        let words = "error: unknown request; send one of: reload, status\n";
        let said = read_reply(words).unwrap_err();
        assert!(said.contains("answered in words"), "{said}");
        let ours = String::from_utf8(encode_reply(&Reply::Stopping)).unwrap();
        assert_eq!(read_reply(&ours), Ok(Reply::Stopping));
    }
}
