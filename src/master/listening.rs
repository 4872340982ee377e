//! The master keeps its listeners listening.
//!
//! Every worker holds the master's listening sockets, and what a worker does
//! to a socket it does for all: a `shutdown()` (sanic's stop does it) stops
//! the socket for the master and every other worker, so that connections
//! are refused until something listens again; a `listen()` with another
//! backlog (Node, uvicorn, hypercorn) changes the queue everyone shares.
//! Closing its descriptor, by contrast, harms nobody.
//!
//! So the master looks:
//! - at once when a listener hangs up: a [`HangupWatch`] (epoll asking for
//!   hang-ups only, so new connections never wake the master) reports a
//!   `shutdown()` within the master's next turn of its loop;
//! - whenever a worker becomes ready or exits (the moments a program calls
//!   `listen()` or shuts down);
//! - every [`LOOK_EVERY`], for whatever a serving worker does later.
//!
//! Each look reads every listener's state from the kernel and puts right
//! what is wrong (see [`crate::listeners::ListenerSet::keep_listening`]);
//! this module says who probably did it, counts it, and remembers the
//! listeners that could not be put right, for `status` and `/healthz`.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::warn;

use crate::control::status::Counters;
use crate::event::Lifecycle;
use crate::fd::HangupWatch;
use crate::listeners::{ListenerFault, ListenerSet, Repair};

/// How often the listeners are read back without a reason to.
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(200);

/// How long a worker that exited stays a suspect for a listener found shut
/// down (the periodic look may find it up to [`LOOK_EVERY`] later).
const EXITED_SUSPECT_FOR: Duration = Duration::from_secs(2);

/// Why the listeners are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// A listener hung up.
    HungUp,
    /// The periodic look.
    Periodic,
    /// Worker `pid` became ready.
    WorkerReady(u32),
    /// Worker `pid` exited.
    WorkerExited(u32),
}

/// What the supervisor knows of its listeners' health.
#[derive(Debug, Default)]
pub(super) struct Listening {
    /// Listeners that could not be put right, by name, until a later look
    /// finds them well; each is reported once.
    broken: BTreeSet<String>,
    /// Workers that exited lately: a shutdown found after a worker left was
    /// most likely its last act.
    recent_exits: VecDeque<(u32, Instant)>,
}

/// The workers that may have done what a look finds.
#[derive(Debug, Default)]
pub(super) struct Suspects {
    /// Workers draining now.
    pub draining: Vec<u32>,
    /// Every live worker.
    pub all: Vec<u32>,
}

impl Listening {
    /// Names the listeners that are not listening and could not be put
    /// right: while there is one, the master is not `running`.
    pub fn broken(&self) -> impl Iterator<Item = &str> {
        self.broken.iter().map(String::as_str)
    }

    /// Takes what a look found (`repairs`) and reports it, naming the
    /// likely culprits.
    pub fn record(
        &mut self,
        look: Look,
        repairs: Vec<Repair>,
        suspects: Suspects,
        counters: &mut Counters,
    ) {
        let now = Instant::now();
        if let Look::WorkerExited(pid) = look {
            self.recent_exits.push_back((pid, now));
        }
        while self
            .recent_exits
            .front()
            .is_some_and(|&(_, at)| now.duration_since(at) > EXITED_SUSPECT_FOR)
        {
            self.recent_exits.pop_front();
        }
        let mut still_broken = BTreeSet::new();
        for repair in repairs {
            let listener = repair.listener.as_str();
            let pids = match (repair.fault, look) {
                (ListenerFault::Backlog { .. }, Look::WorkerReady(pid)) => vec![pid],
                (ListenerFault::Backlog { .. }, _) => suspects.all.clone(),
                _ => {
                    let mut pids = suspects.draining.clone();
                    pids.extend(self.recent_exits.iter().map(|&(pid, _)| pid));
                    pids.sort_unstable();
                    pids.dedup();
                    pids
                }
            };
            let pids = format!("{pids:?}");
            match (repair.fault, repair.result) {
                (ListenerFault::ShutDown, Ok(())) => {
                    counters.listener_restores += 1;
                    Lifecycle::ListenerRestored {
                        listener: listener.to_owned(),
                        suspects: pids,
                    }
                    .log();
                }
                (ListenerFault::Backlog { found, wanted }, Ok(())) => {
                    counters.backlog_restores += 1;
                    Lifecycle::BacklogRestored {
                        listener: listener.to_owned(),
                        found,
                        backlog: wanted,
                        suspects: pids,
                    }
                    .log();
                }
                (fault, Err(cause)) => {
                    if !self.broken.contains(listener) {
                        Lifecycle::ListenerDown {
                            listener: listener.to_owned(),
                            fault: format!("{fault:?}"),
                            suspects: pids,
                            cause: cause.to_string(),
                        }
                        .log();
                    }
                    still_broken.insert(repair.listener);
                }
            }
        }
        self.broken = still_broken;
    }
}

/// Wakes the master's loop when its listeners should be looked at: at once
/// on a hang-up, else every [`LOOK_EVERY`].
#[derive(Debug)]
pub(super) struct Watch {
    /// `None` if the epoll set could not be made: the periodic look remains.
    hangups: Option<HangupWatch>,
    /// Listeners (by index) reported hung up and not armed again yet.
    unarmed: BTreeSet<usize>,
    periodic: Interval,
}

impl Watch {
    pub fn new(listeners: &ListenerSet) -> Self {
        let hangups = HangupWatch::new().and_then(|watch| {
            for (index, listener) in listeners.iter().enumerate() {
                watch.add(listener.as_fd(), index as u64)?;
            }
            Ok(watch)
        });
        let hangups = hangups
            .inspect_err(|e| warn!(cause = %e, "cannot watch the listeners for hang-ups; looking at them every 200 ms only"))
            .ok();
        let mut periodic = tokio::time::interval(LOOK_EVERY);
        periodic.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Watch {
            hangups,
            unarmed: BTreeSet::new(),
            periodic,
        }
    }

    /// Waits until the listeners should be looked at.
    pub async fn next(&mut self) -> Look {
        let hung_up = async {
            match &self.hangups {
                Some(watch) => watch.hung_up().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            hung_up = hung_up => match hung_up {
                Ok(indexes) => {
                    self.unarmed.extend(indexes.into_iter().map(|i| i as usize));
                    Look::HungUp
                }
                Err(e) => {
                    warn!(cause = %e, "cannot watch the listeners for hang-ups any more; looking at them every 200 ms only");
                    self.hangups = None;
                    Look::Periodic
                }
            },
            _ = self.periodic.tick() => Look::Periodic,
        }
    }

    /// Watches again the listeners that were reported and listen again
    /// (one still down would be reported again at once).
    pub fn rearm(&mut self, listeners: &ListenerSet) {
        let Some(watch) = &self.hangups else {
            return;
        };
        self.unarmed
            .retain(|&index| match listeners.iter().nth(index) {
                Some(listener) if listener.is_listening() => {
                    watch.arm(listener.as_fd(), index as u64).is_err()
                }
                Some(_) => true,
                None => false,
            });
    }
}
