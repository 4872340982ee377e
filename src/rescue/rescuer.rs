//! The rescuer process (`baton rescuer`, started by the master): watches
//! the copies of draining workers' idle connections and serves those the
//! programs let go (see the module above for the whole rescue).
//!
//! One thread, one loop: every [`TICK`] or more each watched connection's
//! state is read (TCP_INFO, SIOCINQ) and each worker's descriptors listed once
//! (/proc), which costs a few system calls per connection per tick, for no
//! longer than a drain. When the master's end of the channel closes, the
//! rescuer finishes what it holds and exits.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::fd::{self, TcpState};
use crate::protocol::Channel;

use super::{forward, Baseline, Rescued, ToRescuer, AFTER_STOP, GRACE, HOLD};

/// How often watched connections are looked at, per [`LOOKS_PER_TICK`]
/// of them: each look costs a few system calls per connection and a read
/// of the worker's descriptors in /proc. 2,000 connections looked at every
/// 5 ms kept the rescuer busy 57 % of a core; the interval grows with
/// their number instead, up to [`LONGEST_TICK`].
const TICK: Duration = Duration::from_millis(5);
const LOOKS_PER_TICK: usize = 100;
const LONGEST_TICK: Duration = Duration::from_millis(100);

/// The time between two looks at `watched` connections.
fn tick_for(watched: usize) -> Duration {
    (TICK * (watched / LOOKS_PER_TICK + 1) as u32).min(LONGEST_TICK)
}

/// TCP_ESTABLISHED.
const ESTABLISHED: u8 = 1;

/// One copy of a connection a draining worker holds.
struct Watched {
    fd: OwnedFd,
    worker: u32,
    baseline: Baseline,
    until: Instant,
    /// Until then its next request is held back from the program (see
    /// [`HOLD`]); `None` once given back.
    held_back_until: Option<Instant>,
}

/// What the rescuer knows of a worker whose connections it watches.
#[derive(Debug, Default)]
struct Draining {
    /// The listeners' sockets (inodes) it accepts on.
    listeners: HashSet<u64>,
    /// When a look first found its processes holding none of them.
    stopped_accepting: Option<Instant>,
}

/// Whether a connection whose requests are held back from its program
/// (until `held_back_until`) gets them back `now`: see [`HOLD`].
fn give_back(held_back_until: Instant, stopped_accepting: Option<Instant>, now: Instant) -> bool {
    now >= held_back_until || stopped_accepting.is_some_and(|t| now >= t + AFTER_STOP)
}

/// What to do with a watched connection, from its counters now.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The program still holds it.
    Watch,
    /// The copy closes, as the program's did: nothing to save.
    LetGo,
    /// The program let it go with a request unread, or idle: it is the
    /// rescuer's, to wait this long for a request on.
    Rescue(Duration),
}

/// The program wrote this recently before letting a connection go with
/// nothing unread: either its client is about to send its next request, or
/// the program ended an answer by closing (a body that ends at the close).
/// The two look the same from outside, so such a connection waits only
/// [`JUST_ANSWERED_WAIT`] for a request: the most an answer ended by a
/// close is delayed.
const JUST_ANSWERED_MS: u32 = 50;
const JUST_ANSWERED_WAIT: Duration = Duration::from_millis(250);

fn next(state: &TcpState, held: bool, expired: bool) -> Next {
    if held {
        return if expired { Next::LetGo } else { Next::Watch };
    }
    if state.unread > 0 {
        return Next::Rescue(GRACE);
    }
    if state.state != ESTABLISHED {
        return Next::LetGo;
    }
    if state.since_sent_ms < JUST_ANSWERED_MS {
        return Next::Rescue(JUST_ANSWERED_WAIT);
    }
    Next::Rescue(GRACE)
}

/// `baton rescuer`: runs until the master is gone and nothing is held.
pub fn run() -> io::Result<()> {
    // SAFETY: the master starts the rescuer with its channel at fd 3, and
    // nothing else in this process uses that descriptor.
    let channel = unsafe { fd::take_handoff() }.ok_or_else(|| {
        io::Error::other("no channel at descriptor 3: the master starts the rescuer")
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let channel = Channel::new(std::os::unix::net::UnixDatagram::from(channel))?;
        serve(channel).await
    })
}

async fn serve(channel: Channel) -> io::Result<()> {
    let mut watched: Vec<Watched> = Vec::new();
    let mut draining: HashMap<u32, Draining> = HashMap::new();
    let mut rescues: JoinSet<Rescued> = JoinSet::new();
    let mut next_look = Instant::now();
    let mut master = true;
    // Workers whose descriptors the rescuer cannot read, warned about once.
    let mut hidden: HashSet<u32> = HashSet::new();
    while master || !watched.is_empty() || !rescues.is_empty() {
        tokio::select! {
            message = channel.recv::<ToRescuer>(), if master => match message {
                Ok(Some((ToRescuer::Watch { worker, connections, listeners, within }, fds))) => {
                    if fds.len() != connections.len() {
                        warn!(descriptors = fds.len(), connections = connections.len(), "the master sent a batch whose descriptors do not match; dropped");
                        continue;
                    }
                    draining.entry(worker).or_default().listeners.extend(listeners);
                    let now = Instant::now();
                    let (until, held_back_until) = (now + within, Some(now + HOLD));
                    watched.extend(fds.into_iter().zip(connections).map(|(fd, baseline)| Watched { fd, worker, baseline, until, held_back_until }));
                }
                Ok(None) => master = false,
                Err(e) => {
                    warn!(cause = %e, "the master's channel failed; finishing what is held");
                    master = false;
                }
            },
            _ = tokio::time::sleep_until(next_look), if !watched.is_empty() => {
                let now = Instant::now();
                next_look = now + tick_for(watched.len());
                let mut held: HashMap<u32, Option<HashSet<u64>>> = HashMap::new();
                let mut kept = Vec::with_capacity(watched.len());
                for w in watched.drain(..) {
                    let Ok(state) = fd::tcp_state(w.fd.as_fd()) else { continue };
                    let tree = held.entry(w.worker).or_insert_with(|| {
                        let held = crate::procfs::tree_held(w.worker);
                        if held.is_none() && hidden.insert(w.worker) {
                            warn!(worker = w.worker, "the worker hides its descriptors from the rescuer (another user, or not dumpable): its connections are left to it");
                        }
                        let worker = draining.entry(w.worker).or_default();
                        if let Some(held) = &held {
                            if worker.stopped_accepting.is_none() && worker.listeners.is_disjoint(held) {
                                worker.stopped_accepting = Some(now);
                            }
                        }
                        held
                    });
                    let holds = match tree {
                        Some(held) => held.contains(&w.baseline.inode),
                        // What it holds cannot be seen: it may still serve
                        // the connection.
                        None => true,
                    };
                    match next(&state, holds, now >= w.until) {
                        Next::Watch => {
                            let mut w = w;
                            let stopped = draining.get(&w.worker).and_then(|d| d.stopped_accepting);
                            if w.held_back_until.is_some_and(|t| give_back(t, stopped, now)) {
                                // The program serves it on: its requests
                                // are its own again.
                                let _ = fd::set_read_low_water(w.fd.as_fd(), 1);
                                w.held_back_until = None;
                            }
                            kept.push(w);
                        }
                        Next::LetGo => {}
                        Next::Rescue(wait) => {
                            rescues.spawn(forward::rescue(w.fd, w.baseline.forward_to, wait));
                        }
                    }
                }
                watched = kept;
                draining.retain(|worker, _| watched.iter().any(|w| w.worker == *worker));
            },
            Some(done) = rescues.join_next(), if !rescues.is_empty() => {
                let Ok(rescued) = done else { continue };
                if master {
                    if let Err(e) = channel.send(&rescued, &[]).await {
                        debug!(cause = %e, "cannot report a rescue");
                    }
                }
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(unread: u32, since_sent_ms: u32, tcp: u8) -> TcpState {
        TcpState {
            state: tcp,
            since_sent_ms,
            unread,
        }
    }

    #[test]
    fn held_requests_go_back_soon_after_the_program_stops_accepting_or_after_the_hold() {
        let start = Instant::now();
        let until = start + HOLD;
        assert!(!give_back(until, None, start + HOLD / 2));
        assert!(give_back(until, None, until));
        let stopped = Some(start + Duration::from_millis(5));
        assert!(!give_back(
            until,
            stopped,
            start + Duration::from_millis(10)
        ));
        assert!(give_back(
            until,
            stopped,
            start + Duration::from_millis(5) + AFTER_STOP
        ));
    }

    #[test]
    fn more_connections_are_looked_at_less_often() {
        assert_eq!(tick_for(1), TICK);
        assert_eq!(tick_for(250), TICK * 3);
        assert_eq!(tick_for(10_000), LONGEST_TICK);
    }

    #[test]
    fn a_connection_the_program_holds_is_its_own_until_the_deadline() {
        assert_eq!(
            next(&state(80, 1000, ESTABLISHED), true, false),
            Next::Watch
        );
        assert_eq!(next(&state(0, 1000, ESTABLISHED), true, true), Next::LetGo);
    }

    #[test]
    fn a_request_left_unread_is_rescued() {
        assert_eq!(
            next(&state(80, 0, ESTABLISHED), false, false),
            Next::Rescue(GRACE)
        );
        // The client sent its request and closed its side at once.
        assert_eq!(next(&state(80, 0, 8), false, false), Next::Rescue(GRACE));
    }

    #[test]
    fn a_connection_just_answered_waits_briefly_for_a_request() {
        // An answer the program may have ended by closing.
        assert_eq!(
            next(&state(0, 3, ESTABLISHED), false, false),
            Next::Rescue(JUST_ANSWERED_WAIT)
        );
        // The client closed too: nothing to save.
        assert_eq!(next(&state(0, 5000, 8), false, false), Next::LetGo);
    }

    #[test]
    fn an_idle_connection_waits_for_its_next_request() {
        assert_eq!(
            next(&state(0, 5000, ESTABLISHED), false, false),
            Next::Rescue(GRACE)
        );
    }
}
