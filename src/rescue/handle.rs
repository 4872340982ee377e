//! The master's side of the rescuer: starts it when the first connections
//! need it (and again if it died), passes it the copies, and counts what it
//! reports.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::event::Lifecycle;
use crate::master::WorkerEvent;
use crate::procfs::ListenerId;
use crate::protocol::Channel;

use super::take::{TakeError, Taken};
use super::{Rescued, ToRescuer, BATCH};

/// Hands connections to the rescuer process.
#[derive(Debug, Clone)]
pub struct Rescuer {
    batches: mpsc::UnboundedSender<(ToRescuer, Vec<OwnedFd>)>,
}

impl Rescuer {
    /// A rescuer run from `program` (baton itself), started on first use
    /// as the workers' user (`identity`, as `--user`/`--group` give it):
    /// it parses what clients send, so it has no more rights than the
    /// workers; what it rescues is reported to the supervisor through
    /// `events`.
    pub fn new(
        program: PathBuf,
        identity: Option<(u32, u32)>,
        events: mpsc::UnboundedSender<WorkerEvent>,
    ) -> Self {
        let (batches, to_send) = mpsc::unbounded_channel();
        tokio::spawn(pass_on(program, identity, to_send, events));
        Rescuer { batches }
    }

    /// Gives the rescuer copies of `worker`'s connections to watch for at
    /// most `within`, with the `listeners` it accepts on. The master's
    /// copies close once they are sent.
    pub fn watch(
        &self,
        worker: u32,
        taken: Vec<Taken>,
        listeners: &[ListenerId],
        within: Duration,
    ) {
        let listeners: Vec<u64> = listeners.iter().map(|l| l.inode).collect();
        let mut taken = taken.into_iter().peekable();
        while taken.peek().is_some() {
            let (fds, connections): (Vec<OwnedFd>, Vec<_>) = taken
                .by_ref()
                .take(BATCH)
                .map(|t| (t.fd, t.baseline))
                .unzip();
            let message = ToRescuer::Watch {
                worker,
                connections,
                listeners: listeners.clone(),
                within,
            };
            let _ = self.batches.send((message, fds));
        }
    }
}

/// How often a draining worker's tree is looked at for connections it
/// accepted after the first copies were taken: every [`FOLLOW_FAST`] for
/// the first [`FOLLOW_FAST_FOR`] after the drain signal, while programs act
/// on it, and every [`FOLLOW_EVERY`] after that, for a program that keeps
/// a listener open to its end.
///
/// A connection accepted between two looks and closed before the next
/// (a keep-alive client's first request answered, then the connection
/// closed as idle) was never copied, and its client's next request meets
/// a reset. Clients reconnect in a burst just then: those whose held
/// requests the rescuer answered with `Connection: close`. Measured
/// unchanged (36 s of GETs and POSTs, a reload every 3 s, alternated runs),
/// failed requests looking every 10 ms against this: uvicorn 11, 15, 27, 3
/// against 0, 4, 1, 0; Go's `net/http` 4, 12, 15, 6 against 0, 1, 4, 0,
/// but six more runs of this gave Go 0, 9, 7, 8, 0, 1: what Go loses is
/// mostly something else (docs/how-it-works.md, Rescue).
/// The cost is the master's: its CPU time over one such uvicorn run (22
/// workers drained) was 310 and 280 ms looking every 10 ms, 420 and 450 ms
/// with this, about 7 ms more a drain.
const FOLLOW_FAST: Duration = Duration::from_millis(1);
const FOLLOW_FAST_FOR: Duration = Duration::from_millis(100);
const FOLLOW_EVERY: Duration = Duration::from_millis(10);

/// The pause before the next look at a draining worker's tree, `since`
/// the drain signal: see [`FOLLOW_FAST`].
fn follow_pause(since: Duration) -> Duration {
    if since < FOLLOW_FAST_FOR {
        FOLLOW_FAST
    } else {
        FOLLOW_EVERY
    }
}

impl Rescuer {
    /// One look at `worker`'s tree: copies of its client connections of
    /// `listeners` not in `copied` go to the rescuer, to watch for at most
    /// `within`, and join `copied`. Logged if it copied any, or with
    /// `log_none`. Says whether the tree still holds a listener (and may
    /// accept more).
    pub async fn copy(
        &self,
        worker: u32,
        listeners: &[ListenerId],
        copied: &mut HashSet<u64>,
        within: Duration,
        log_none: bool,
    ) -> Result<bool, TakeError> {
        let started = std::time::Instant::now();
        // /proc and a few system calls per socket: off the master's thread.
        let (all, skip) = (listeners.to_vec(), std::mem::take(copied));
        let (looked, skip) = tokio::task::spawn_blocking(move || {
            (super::take::connections(worker, &all, &skip), skip)
        })
        .await
        .map_err(|e| TakeError::Failed(e.to_string()))?;
        *copied = skip;
        let copies = looked?;
        if log_none || !copies.taken.is_empty() {
            Lifecycle::ConnectionsWatched {
                pid: worker,
                connections: copies.taken.len(),
                took_us: started.elapsed().as_micros() as u64,
            }
            .log();
        }
        copied.extend(copies.taken.iter().map(|t| t.baseline.inode));
        self.watch(worker, copies.taken, listeners, within);
        Ok(copies.holds_listener)
    }

    /// After the drain signal: copies of the connections `worker` accepts
    /// until it no longer holds any of `listeners` (a program takes a
    /// moment to act on its signal, and accepts meanwhile), for at most
    /// `within`. Sockets in `copied` were copied already.
    pub fn follow(
        &self,
        worker: u32,
        listeners: Vec<ListenerId>,
        mut copied: HashSet<u64>,
        within: Duration,
    ) {
        let rescuer = self.clone();
        tokio::spawn(async move {
            let signalled = tokio::time::Instant::now();
            let until = signalled + within;
            loop {
                let left = until - tokio::time::Instant::now();
                let accepting = rescuer
                    .copy(worker, &listeners, &mut copied, left, false)
                    .await;
                let pause = follow_pause(signalled.elapsed());
                if accepting.ok() != Some(true) || left <= pause {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
        });
    }
}

/// Sends each batch to the rescuer, starting it first if it is not
/// running.
async fn pass_on(
    program: PathBuf,
    identity: Option<(u32, u32)>,
    mut to_send: mpsc::UnboundedReceiver<(ToRescuer, Vec<OwnedFd>)>,
    events: mpsc::UnboundedSender<WorkerEvent>,
) {
    let mut running: Option<Arc<Channel>> = None;
    while let Some((message, fds)) = to_send.recv().await {
        for _attempt in 0..2 {
            let channel = match &running {
                Some(channel) => channel.clone(),
                None => match start(&program, identity, events.clone()) {
                    Ok(channel) => running.insert(channel).clone(),
                    Err(e) => {
                        warn!(cause = %e, "cannot start the rescuer; idle connections drain as the program closes them");
                        break;
                    }
                },
            };
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            match channel.send(&message, &borrowed).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(cause = %e, "the rescuer is gone; starting another");
                    running = None;
                }
            }
        }
    }
}

/// Starts `program rescuer` with its channel at descriptor 3, and the task
/// that reads its reports. Like a worker, it runs as `identity`, in a
/// process group of its own, and dies with the master
/// (`PR_SET_PDEATHSIG`); it exits by itself once the master's end of the
/// channel is closed and what it holds is done.
fn start(
    program: &std::path::Path,
    identity: Option<(u32, u32)>,
    events: mpsc::UnboundedSender<WorkerEvent>,
) -> std::io::Result<Arc<Channel>> {
    let (ours, theirs) = crate::fd::seqpacket_pair()?;
    let mut command = std::process::Command::new(program);
    crate::systemd::scrub_env(&mut command)
        .arg("rescuer")
        .stdin(std::process::Stdio::null())
        .process_group(0);
    crate::fd::prepare_child(&mut command, theirs.as_fd(), identity);
    let child = command.spawn()?;
    drop(theirs);
    Lifecycle::RescuerStarted { pid: child.id() }.log();
    let channel = Arc::new(Channel::new(std::os::unix::net::UnixDatagram::from(ours))?);
    let reports = channel.clone();
    tokio::spawn(async move {
        let pid = child.id();
        while let Ok(Some(rescued)) = reports.recv_plain::<Rescued>().await {
            let _ = events.send(WorkerEvent::Rescued {
                connections: rescued.connections,
                requests: rescued.requests,
            });
            Lifecycle::Rescued {
                connections: rescued.connections,
                requests: rescued.requests,
            }
            .log();
        }
        // Gone: reap it (the master reaps what it does not know as well).
        if let Ok(mut process) = crate::process::Process::watch(pid) {
            let _ = process.wait().await;
        }
        drop(child);
    });
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draining_tree_is_looked_at_often_while_it_acts_on_its_signal() {
        assert_eq!(follow_pause(Duration::ZERO), FOLLOW_FAST);
        assert_eq!(follow_pause(FOLLOW_FAST_FOR / 2), FOLLOW_FAST);
        assert_eq!(follow_pause(FOLLOW_FAST_FOR), FOLLOW_EVERY);
        assert_eq!(follow_pause(Duration::from_secs(20)), FOLLOW_EVERY);
    }
}
