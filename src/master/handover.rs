//! The master's state across `execve`, for `baton upgrade`: the image that
//! upgrades writes it, the next image of the same process (same pid) reads
//! it and carries on where the first stopped.
//!
//! What crosses is descriptors and a little data. Descriptors survive
//! `execve` when close-on-exec is cleared, and keep their numbers: the
//! listeners, the control socket, the `--admin` and `--agent` listeners,
//! the keeper's pipe, the accept-balance table, each worker's handoff
//! socket (and a COMMAND worker's notify socket and output pipes), the
//! connections of the `upgrade --wait` clients, and the executable of the
//! image that wrote the state. The data is a JSON document in a sealed
//! memfd whose number is in [`ENV_STATE`]: format version, those numbers,
//! and the supervisor's state (slots, workers, generations, counters).
//!
//! The workers notice nothing: they are still the children of the same
//! pid, their handoff sockets never closed, and they accept on their own
//! copies of the listeners while the master is between images.
//!
//! Going back: until the new image has adopted everything it can return to
//! the previous one, which comes back with the same state. The previous
//! image's executable stays open across the exec; a new image that finds
//! the state unusable, panics, crashes (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
//! SIGABRT) or does not take over in time (a SIGALRM armed before the
//! exec, which survives it) `fexecve`s that file, with [`ENV_FAILED`]
//! saying why. Handed-over descriptors stay inheritable until the adoption
//! is complete, so that nothing is lost on the way back. A new program so
//! broken that it cannot run this code is refused earlier, by the check
//! the upgrade runs it with first (`baton upgrade-check`).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{Slot, Worker};
pub use crate::control::UpgradeFault;
use crate::fd::{self, Exec, HandedOver};
use crate::listeners::{HandedListener, SocketFileId};

/// The version of the state's layout. A program that cannot read this
/// version refuses the upgrade in its check (`baton upgrade-check`).
pub const FORMAT: u32 = 1;

/// Names the descriptor of the memfd holding the state.
pub(crate) const ENV_STATE: &str = "BATON_HANDOVER";
/// Set when a new image gave the state back: why.
pub(crate) const ENV_FAILED: &str = "BATON_HANDOVER_FAILED";

/// How long a new image has to adopt the state before the previous image
/// comes back.
pub(crate) const TAKE_OVER_WITHIN: Duration = Duration::from_secs(10);

/// The signals that end a new image's attempt and bring the previous image
/// back: a crash, or SIGALRM (taking over took too long).
const GIVE_UP_SIGNALS: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
    libc::SIGALRM,
];

/// Everything the next image needs. Descriptors are their numbers, valid
/// in the next image.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct State {
    pub format: u32,
    /// The version of the image that wrote it.
    pub from_version: String,
    /// The executable of the image that wrote it, to go back to.
    pub previous_program: RawFd,
    /// When the upgrade was asked for (milliseconds since the epoch).
    pub asked_at_ms: u64,
    pub listeners: Vec<HandedListener>,
    pub control: HandedSocketFile,
    pub admin: Option<RawFd>,
    pub agent: Option<RawFd>,
    pub keeper: Option<RawFd>,
    pub balance: Option<RawFd>,
    pub runtime_dir: Option<PathBuf>,
    pub supervisor: SupervisorState,
    pub workers: Vec<HandedWorker>,
    /// `baton upgrade --wait` clients, answered by whichever image ends up
    /// serving.
    pub waiters: Vec<RawFd>,
    /// Roll the workers to the new program once adopted.
    pub roll: bool,
    /// A fault to inject into the new image (tests only).
    #[serde(default)]
    pub fault: Option<UpgradeFault>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HandedSocketFile {
    pub fd: RawFd,
    pub file: Option<SocketFileId>,
}

/// One worker process's descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HandedWorker {
    pub id: u64,
    pub pid: u32,
    pub channel: RawFd,
    /// A COMMAND worker's notify socket and its path.
    pub notify: Option<(RawFd, PathBuf)>,
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
}

/// The supervisor's state (see [`super::supervisor`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SupervisorState {
    pub next_id: u64,
    pub generation: u64,
    pub slots: Vec<Slot>,
    pub workers: Vec<Numbered>,
    pub counters: crate::control::status::Counters,
    pub last_reload: Option<crate::control::reply::ReloadOutcome>,
    pub lame_duck: bool,
    /// When the master started (milliseconds since the epoch: the state
    /// may be read again later, by the previous image coming back).
    pub started_at_ms: u64,
}

/// A worker with its id, as it crosses the upgrade.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Numbered {
    pub id: u64,
    #[serde(flatten)]
    pub worker: Worker,
}

impl State {
    /// Writes the state into a memfd for the next image: the descriptor to
    /// keep across the exec.
    pub fn seal(&self) -> std::io::Result<OwnedFd> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        fd::memfd_with("baton-handover", &json)
    }

    /// Reads the state a previous image left in the memfd `raw`. The memfd
    /// stays open and inheritable, and is read from its start, so that the
    /// previous image can read it again if this one gives up.
    pub fn read(raw: RawFd) -> Result<State, String> {
        let bytes = HandedOver::read(raw).map_err(|e| format!("cannot read the state: {e}"))?;
        let state: State = serde_json::from_slice(&bytes)
            .map_err(|e| format!("cannot parse the state (format {FORMAT} expected): {e}"))?;
        if state.format != FORMAT {
            return Err(format!(
                "the state has format {}, this program reads format {FORMAT}",
                state.format
            ));
        }
        Ok(state)
    }

    /// Every descriptor the state names.
    pub fn descriptors(&self) -> Vec<RawFd> {
        let mut fds = vec![self.previous_program, self.control.fd];
        fds.extend(self.listeners.iter().map(|l| l.fd));
        fds.extend(self.admin);
        fds.extend(self.agent);
        fds.extend(self.keeper);
        fds.extend(self.balance);
        for worker in &self.workers {
            fds.push(worker.channel);
            fds.extend(worker.notify.as_ref().map(|(fd, _)| *fd));
            fds.extend(worker.stdout);
            fds.extend(worker.stderr);
        }
        fds.extend(&self.waiters);
        fds
    }
}

/// Takes descriptor `raw` from the state. It stays inheritable until
/// [`adopted`], so that the previous image gets it back if this
/// one gives up.
pub(crate) fn take(raw: RawFd) -> Result<OwnedFd, String> {
    HandedOver::take(raw)
        .map_err(|e| format!("descriptor {raw} named in the state is not usable: {e}"))
}

/// An image that started from a handed-over state, until it has adopted it.
#[derive(Debug)]
pub struct Incoming {
    /// The memfd holding the state.
    pub state_fd: RawFd,
    /// Set when this is the previous image coming back: why the new one
    /// gave up.
    pub failed: Option<String>,
    /// The previous image's executable, to go back to: `None` for the
    /// previous image itself, or when the state is unusable.
    previous_program: Option<RawFd>,
}

/// The way back to the previous image, prepared before anything can fail.
struct WayBack {
    crashed: Exec,
    timed_out: Exec,
}

static WAY_BACK: OnceLock<WayBack> = OnceLock::new();
static INCOMING: OnceLock<Incoming> = OnceLock::new();

/// Call first thing in `main`. When this process image was started by an
/// upgrade, prepares the way back to the previous image (for a crash, a
/// panic or a timeout) and returns what was handed over; `None` for a
/// normal start.
pub fn incoming() -> Option<&'static Incoming> {
    if let Some(incoming) = INCOMING.get() {
        return Some(incoming);
    }
    let raw: RawFd = std::env::var(ENV_STATE).ok()?.parse().ok()?;
    let failed = std::env::var(ENV_FAILED).ok();
    // (An unusable state is found again, and reported, by the adoption.)
    let previous_program = match failed {
        None => State::read(raw).ok().map(|state| state.previous_program),
        Some(_) => None,
    };
    let incoming = INCOMING.get_or_init(|| Incoming {
        state_fd: raw,
        failed,
        previous_program,
    });
    // Nothing the workers start may see these.
    std::env::remove_var(ENV_STATE);
    std::env::remove_var(ENV_FAILED);
    if let Some(program) = previous_program {
        prepare_way_back(program, raw);
    }
    Some(incoming)
}

/// Prepares and arms the way back to `program`: handlers for the crash
/// signals and SIGALRM, and a panic hook, that all `fexecve` it.
fn prepare_way_back(program: RawFd, state_fd: RawFd) {
    let build = |reason: &str| Exec::fd(program, &own_argv(), &env_back(state_fd, reason));
    let (Ok(crashed), Ok(timed_out)) = (
        build("the new program crashed while taking over"),
        build(&format!(
            "the new program did not take over within {}",
            humantime::format_duration(TAKE_OVER_WITHIN)
        )),
    ) else {
        return;
    };
    if WAY_BACK.set(WayBack { crashed, timed_out }).is_err() {
        return;
    }
    fd::set_fatal_handler(&GIVE_UP_SIGNALS, Some(give_up_on_signal));
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        go_back(&format!(
            "the new program panicked while taking over: {info}"
        ));
    }));
}

/// The signal handler: runs the previous image. Only async-signal-safe
/// calls (`execveat`, `_exit`).
extern "C" fn give_up_on_signal(signal: libc::c_int) {
    if let Some(way) = WAY_BACK.get() {
        let exec = if signal == libc::SIGALRM {
            &way.timed_out
        } else {
            &way.crashed
        };
        let _ = exec.run();
    }
    fd::exit_now(128 + signal)
}

/// Goes back to the previous image, which adopts the same state and says
/// `reason`. Returns only if there is no way back (this is the previous
/// image already, or the state was unusable from the start).
pub fn go_back(reason: &str) {
    let Some(incoming) = INCOMING.get() else {
        return;
    };
    let Some(program) = incoming.previous_program else {
        return;
    };
    fd::alarm(None);
    fd::set_fatal_handler(&GIVE_UP_SIGNALS, None);
    if let Ok(exec) = Exec::fd(program, &own_argv(), &env_back(incoming.state_fd, reason)) {
        let error = exec.run();
        eprintln!("baton: cannot go back to the previous program: {error}");
    }
}

/// This image has adopted everything (`handed`, from
/// [`State::descriptors`]): the way back is closed, and the handed-over
/// descriptors become close-on-exec again.
pub(crate) fn adopted(handed: &[RawFd], previous_program: RawFd, state_fd: RawFd) {
    fd::alarm(None);
    fd::set_fatal_handler(&GIVE_UP_SIGNALS, None);
    let _ = std::panic::take_hook();
    // The previous image's executable and the state itself are not needed
    // any more.
    HandedOver::close_way_back(handed, &[previous_program, state_fd]);
}

/// The argv this process was started with, to start the next image with.
pub(crate) fn own_argv() -> Vec<OsString> {
    std::env::args_os().collect()
}

/// The environment for the next image: this one's, plus where the state is.
pub(crate) fn env_forward(state_fd: RawFd) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != ENV_STATE && k != ENV_FAILED)
        .collect();
    env.push((ENV_STATE.into(), state_fd.to_string().into()));
    env
}

fn env_back(state_fd: RawFd, reason: &str) -> Vec<(OsString, OsString)> {
    let mut env = env_forward(state_fd);
    env.push((ENV_FAILED.into(), reason.into()));
    env
}

/// Descriptors to keep across the exec: each is made inheritable, and its
/// number recorded.
#[derive(Debug, Default)]
pub(crate) struct Keep {
    fds: Vec<OwnedFd>,
}

impl Keep {
    /// Keeps a copy of `fd` across the exec; its number in the next image.
    pub fn copy(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<RawFd> {
        self.own(fd.try_clone_to_owned()?)
    }

    /// [`Keep::copy`] for a descriptor that may be missing.
    pub fn copy_some(&mut self, fd: Option<BorrowedFd<'_>>) -> std::io::Result<Option<RawFd>> {
        fd.map(|fd| self.copy(fd)).transpose()
    }

    /// Keeps `fd` itself across the exec.
    pub fn own(&mut self, fd: OwnedFd) -> std::io::Result<RawFd> {
        fd::set_inherited(fd.as_fd(), true)?;
        let raw = fd.as_raw_fd();
        self.fds.push(fd);
        Ok(raw)
    }
}
