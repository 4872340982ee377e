//! The state machine driven by hand: events in, effects read back. No
//! process is started; worker ids stand for processes. Each test runs on
//! tokio's paused clock: time passes only when a test says so ([`pass`]),
//! and the supervisor's timers fire as the master's loop fires them.

use std::os::unix::process::ExitStatusExt;

use std::path::{Path, PathBuf};

use super::*;
use crate::control::reply::UpgradeOutcome;
use crate::master::health::{Healthy, Unhealthy};
use crate::master::state::{BACKOFF_CAP, BACKOFF_FIRST};

/// Records what the supervisor asks for.
#[derive(Debug, Default)]
struct Fake {
    /// (worker, slot, generation) for each worker started...
    spawned: Vec<(WorkerId, usize, u64)>,
    /// ...and the configuration it was started with.
    configs: Vec<MasterConfig>,
    drained: Vec<WorkerId>,
    /// Whether each drain (in `drained`'s order) hands connections over.
    handover: Vec<bool>,
    /// (to, from, batch) of each batch of connections passed on.
    adopted: Vec<(WorkerId, WorkerId, u64)>,
    /// How many connections each of `adopted` carried.
    adopted_counts: Vec<usize>,
    /// (from, batch, settlement) of each batch settled.
    settled: Vec<(WorkerId, u64, Settlement)>,
    hurried: Vec<WorkerId>,
    killed: Vec<WorkerId>,
    systemd: Vec<Systemd>,
    /// Starting a worker fails while set.
    refuse_spawns: bool,
    /// What the next look at the listeners finds.
    repairs: Vec<crate::listeners::Repair>,
    /// Upgrade checks asked for.
    upgrade_checks: usize,
    /// What each upgrade would have handed to the new program (the
    /// fake's exec always fails).
    handed_over: Vec<super::super::upgrade::Departure>,
    /// Kept programs written back, with their generation.
    restored: Vec<(PathBuf, u64)>,
    /// Writing a kept program back fails while set.
    refuse_restore: bool,
    /// Workers whose health probes were asked for.
    probed: Vec<WorkerId>,
    /// The steps of going quiet asked for, and the watchers told each.
    quiet: Vec<crate::master::worker::Quiet>,
    watchers: std::collections::BTreeSet<WorkerId>,
    /// Times the watchers were told to speak again.
    spoke: usize,
}

impl Effects for Fake {
    fn spawn(
        &mut self,
        id: WorkerId,
        slot: usize,
        generation: u64,
        config: &MasterConfig,
        _probed: bool,
    ) -> Result<u32, String> {
        if self.refuse_spawns {
            return Err("cannot start".to_owned());
        }
        self.spawned.push((id, slot, generation));
        self.configs.push(config.clone());
        Ok(1000 + id as u32)
    }
    fn drain(
        &mut self,
        id: WorkerId,
        _timeout: Duration,
        _grace: Option<Duration>,
        handover: bool,
    ) {
        self.drained.push(id);
        self.handover.push(handover);
    }
    fn adopt(&mut self, to: WorkerId, handed: crate::master::worker::Handed) {
        self.adopted.push((to, handed.from, handed.batch));
        self.adopted_counts.push(handed.fds.len());
    }
    fn settle(&mut self, from: WorkerId, batch: u64, settlement: Settlement) {
        self.settled.push((from, batch, settlement));
    }
    fn hurry(&mut self, id: WorkerId) {
        self.hurried.push(id);
    }
    fn quiet(
        &mut self,
        step: crate::master::worker::Quiet,
    ) -> std::collections::BTreeSet<WorkerId> {
        self.quiet.push(step);
        self.watchers.clone()
    }
    fn speak(&mut self) {
        self.spoke += 1;
    }
    fn kill(&mut self, id: WorkerId) {
        self.killed.push(id);
    }
    fn gone(&mut self, _id: WorkerId, _pid: u32) {}
    fn keep_listening(&mut self) -> Vec<crate::listeners::Repair> {
        std::mem::take(&mut self.repairs)
    }
    fn usage(&self, _pid: u32) -> crate::procfs::Usage {
        crate::procfs::Usage::default()
    }
    fn systemd(&mut self, message: Systemd) {
        self.systemd.push(message);
    }
    fn load_config(&self, _source: &crate::config::ConfigSource) -> Result<MasterConfig, String> {
        Err("no config file in these tests".to_owned())
    }
    /// A kept program is its path, as the fake never reads it.
    type Program = PathBuf;
    fn keep_program(&mut self, path: &Path) -> std::io::Result<PathBuf> {
        Ok(path.to_owned())
    }
    fn restore_program(&mut self, program: &PathBuf, generation: u64) -> Result<PathBuf, String> {
        if self.refuse_restore {
            return Err("disk full".to_owned());
        }
        self.restored.push((program.clone(), generation));
        Ok(PathBuf::from(format!("/run/baton/program-{generation}")))
    }
    fn probe(
        &mut self,
        id: WorkerId,
        _pid: u32,
        _check: &crate::config::HealthCheck,
        _start_allowance: Duration,
    ) {
        self.probed.push(id);
    }
    fn check_upgrade(&mut self) {
        self.upgrade_checks += 1;
    }
    fn hand_over(&mut self, departure: super::super::upgrade::Departure) -> String {
        self.handed_over.push(departure);
        "cannot run the new program (fake)".to_owned()
    }
}

/// The path of the workers' program.
const PROGRAM: &str = "/srv/app/server";

fn config(workers: usize, probation: Duration) -> MasterConfig {
    MasterConfig {
        listen: Vec::new(),
        unix_mode: None,
        source: None,
        worker_identity: None,
        control: None,
        workers,
        backlog: 16,
        ready_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(30),
        http: None,
        native_drain_grace: None,
        native_limits: None,
        native_threads: None,
        probation,
        reload_batch: 1,
        health: None,
        max_memory: None,
        admin: None,
        agent: None,
        shutdown_delay: Duration::ZERO,
        program: PathBuf::from(PROGRAM),
        worker_args: Vec::new(),
        foreign: None,
        prefix_output: false,
        handoff_connections: true,
    }
}

/// A master whose first `workers` workers are all ready.
fn running(workers: usize, probation: Duration) -> Supervisor<Fake> {
    let mut supervisor = Supervisor::new(config(workers, probation), Fake::default());
    supervisor.start();
    for id in started(&supervisor) {
        supervisor.on_event(WorkerEvent::Ready { id });
    }
    assert_eq!(supervisor.phase, Phase::Running);
    supervisor
}

fn started(supervisor: &Supervisor<Fake>) -> Vec<WorkerId> {
    supervisor.effects.spawned.iter().map(|s| s.0).collect()
}

/// The worker started last.
fn newest(supervisor: &Supervisor<Fake>) -> WorkerId {
    *started(supervisor).last().expect("a worker was started")
}

fn current(supervisor: &Supervisor<Fake>, slot: usize) -> Option<WorkerId> {
    supervisor.slots[slot].current
}

fn ready(supervisor: &mut Supervisor<Fake>, id: WorkerId) {
    supervisor.on_event(WorkerEvent::Ready { id });
}

fn exited(supervisor: &mut Supervisor<Fake>, id: WorkerId) {
    let killed = ExitStatus::from_raw(libc::SIGKILL);
    supervisor.on_event(WorkerEvent::Exited { id, status: killed });
}

/// Asks for a reload as `baton reload --wait` does.
fn reload_waiting(supervisor: &mut Supervisor<Fake>) -> oneshot::Receiver<Reply> {
    let (reply, answer) = oneshot::channel();
    supervisor.on_control(control::Request {
        command: control::Command::Reload { wait: true },
        reply,
        connection: None,
    });
    answer
}

/// The reply `waiter` got, if any yet.
fn answer(waiter: &mut oneshot::Receiver<Reply>) -> Option<Reply> {
    waiter.try_recv().ok()
}

/// The generation a `reload --wait` reply says is in, if it says so.
fn is_in(reply: Option<Reply>) -> Option<u64> {
    match reply {
        Some(Reply::Reload(ReloadOutcome::Ok { generation, .. })) => Some(generation),
        _ => None,
    }
}

/// Lets `time` pass on the paused clock, firing each of the supervisor's
/// timers when it falls due, as the master's loop does.
async fn pass(supervisor: &mut Supervisor<Fake>, time: Duration) {
    let end = Instant::now() + time;
    while let Some((at, timer)) = supervisor.next_timer().filter(|&(at, _)| at <= end) {
        tokio::time::advance(at - Instant::now()).await;
        supervisor.on_timer(timer);
    }
    tokio::time::advance(end - Instant::now()).await;
}

/// The restart the supervisor waits for, as a time from now.
fn restart_in(supervisor: &Supervisor<Fake>) -> Option<Duration> {
    match supervisor.next_timer() {
        Some((at, Timer::Restart)) => Some(at - Instant::now()),
        _ => None,
    }
}

/// Makes each new worker ready until no rollout is left.
fn finish_rollouts(supervisor: &mut Supervisor<Fake>) {
    while let Some(pending) = supervisor.pending_new_worker() {
        ready(supervisor, pending);
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_replaces_one_slot_at_a_time_and_answers_when_all_are_in() {
    let mut supervisor = running(2, Duration::ZERO);
    let (old0, old1) = (
        current(&supervisor, 0).unwrap(),
        current(&supervisor, 1).unwrap(),
    );
    let mut waiter = reload_waiting(&mut supervisor);
    assert_eq!(
        supervisor.effects.spawned.len(),
        3,
        "one new worker at a time"
    );
    let new0 = newest(&supervisor);
    assert_eq!(supervisor.effects.spawned[2], (new0, 0, 2));
    assert!(
        supervisor.effects.drained.is_empty(),
        "nothing drains before its successor is ready"
    );

    ready(&mut supervisor, new0);
    assert_eq!(supervisor.effects.drained, vec![old0]);
    assert_eq!(current(&supervisor, 0), Some(new0));
    assert_eq!(answer(&mut waiter), None, "one slot is still old");
    let new1 = newest(&supervisor);
    ready(&mut supervisor, new1);
    assert_eq!(supervisor.effects.drained, vec![old0, old1]);
    let said = answer(&mut waiter);
    assert_eq!(is_in(said), Some(2), "answered once every slot is in");
    assert!(matches!(
        supervisor.effects.systemd[1..],
        [Systemd::Reloading(_), Systemd::Ready(_)]
    ));
}

/// `--reload-batch 2` over 5 slots: two new workers start at once, each
/// ready one drains its slot's old worker and starts the next slot, and
/// a new worker that fails fails the reload, killed, while the other new
/// one, which may already serve, drains.
#[tokio::test(start_paused = true)]
async fn a_reload_batch_starts_that_many_new_workers_at_once() {
    let mut supervisor = running(5, Duration::ZERO);
    supervisor.config.reload_batch = 2;
    let old: Vec<WorkerId> = (0..5)
        .map(|slot| current(&supervisor, slot).unwrap())
        .collect();
    let mut waiter = reload_waiting(&mut supervisor);
    assert_eq!(
        supervisor.effects.spawned.len(),
        7,
        "two new workers at once"
    );
    let (new0, new1) = (
        supervisor.effects.spawned[5].0,
        supervisor.effects.spawned[6].0,
    );
    assert_eq!(supervisor.effects.spawned[6], (new1, 1, 2));
    ready(&mut supervisor, new1);
    assert_eq!(supervisor.effects.drained, vec![old[1]]);
    assert_eq!(
        supervisor.effects.spawned.len(),
        8,
        "slot 2 starts as slot 1 is in"
    );
    ready(&mut supervisor, new0);
    assert_eq!(supervisor.effects.drained, vec![old[1], old[0]]);
    finish_rollouts(&mut supervisor);
    assert_eq!(is_in(answer(&mut waiter)), Some(2));
    assert_eq!(
        supervisor.effects.spawned.len(),
        10,
        "one new worker per slot"
    );
    assert_eq!(supervisor.effects.drained.len(), 5);

    let mut waiter = reload_waiting(&mut supervisor);
    let (a, b) = (
        supervisor.effects.spawned[10].0,
        supervisor.effects.spawned[11].0,
    );
    supervisor.on_event(WorkerEvent::Failed {
        id: a,
        reason: "broken".into(),
    });
    assert!(matches!(
        answer(&mut waiter),
        Some(Reply::Reload(ReloadOutcome::Failed { .. }))
    ));
    assert!(supervisor.effects.killed.contains(&a));
    assert_eq!(supervisor.effects.drained.last(), Some(&b));
    assert_eq!(
        supervisor
            .slots
            .iter()
            .filter(|s| s.generation == 2)
            .count(),
        5
    );
}

#[tokio::test(start_paused = true)]
async fn reloads_asked_for_during_a_reload_run_once_after_it() {
    let mut supervisor = running(1, Duration::ZERO);
    let mut first = reload_waiting(&mut supervisor);
    let mut second = reload_waiting(&mut supervisor);
    let mut third = reload_waiting(&mut supervisor);
    assert_eq!(supervisor.effects.spawned.len(), 2, "queued, not started");

    let gen2 = newest(&supervisor);
    ready(&mut supervisor, gen2);
    assert_eq!(is_in(answer(&mut first)), Some(2));
    assert_eq!(answer(&mut second), None, "covered by the queued reload");
    assert_eq!(
        supervisor.effects.spawned.len(),
        3,
        "the queued reload started"
    );
    assert_eq!(supervisor.effects.spawned[2].2, 3);

    finish_rollouts(&mut supervisor);
    assert_eq!(is_in(answer(&mut second)), Some(3));
    assert_eq!(is_in(answer(&mut third)), Some(3));
    assert_eq!(
        supervisor.effects.spawned.len(),
        3,
        "two requests, one reload"
    );
    assert!(supervisor.reloads.rollout.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_failing_mid_rollout_fails_the_reload_and_old_workers_go_on() {
    let mut supervisor = running(2, Duration::ZERO);
    let old1 = current(&supervisor, 1).unwrap();
    let mut waiter = reload_waiting(&mut supervisor);
    let mut queued = reload_waiting(&mut supervisor);
    let new0 = newest(&supervisor);
    ready(&mut supervisor, new0);
    let new1 = newest(&supervisor);
    supervisor.on_event(WorkerEvent::Failed {
        id: new1,
        reason: "not ready within 10s".to_owned(),
    });

    let said = answer(&mut waiter).expect("the failure is answered at once");
    assert!(
        matches!(&said, Reply::Reload(ReloadOutcome::Failed { generation: 2, reason })
            if reason == "the new worker failed: not ready within 10s"),
        "{said:?}"
    );
    assert_eq!(supervisor.effects.killed, vec![new1]);
    assert_eq!(
        current(&supervisor, 1),
        Some(old1),
        "the old worker keeps its slot"
    );
    assert!(!supervisor.effects.drained.contains(&old1));
    assert!(supervisor
        .effects
        .systemd
        .iter()
        .any(|m| matches!(m, Systemd::Ready(s) if s.contains("FAILED"))));
    // The queued reload runs next, from the top.
    let retry = newest(&supervisor);
    assert_eq!(supervisor.effects.spawned.last(), Some(&(retry, 0, 3)));

    // The failed worker's exit is not a crash: nothing restarts.
    let before = supervisor.effects.spawned.len();
    exited(&mut supervisor, new1);
    assert_eq!(supervisor.effects.spawned.len(), before);
    finish_rollouts(&mut supervisor);
    assert_eq!(is_in(answer(&mut queued)), Some(3));
}

#[tokio::test(start_paused = true)]
async fn a_crash_of_the_new_release_during_its_rollout_rolls_back() {
    let mut supervisor = running(2, Duration::from_secs(5));
    let old1 = current(&supervisor, 1).unwrap();
    let mut waiter = reload_waiting(&mut supervisor);
    let new0 = newest(&supervisor);
    ready(&mut supervisor, new0);
    let pending1 = newest(&supervisor);

    exited(&mut supervisor, new0);
    let said = answer(&mut waiter).expect("answered at the crash");
    assert!(
        matches!(&said, Reply::Reload(ReloadOutcome::RolledBack { rollback_to: 1, reason, .. })
            if reason.contains("worker 10")),
        "{said:?}"
    );
    assert!(
        supervisor.effects.killed.is_empty() && supervisor.effects.drained.contains(&pending1),
        "the rollout in progress stops: its starting worker drains (it may serve clients already)"
    );
    assert_eq!(
        supervisor.generation, 3,
        "the rollback is a generation of its own"
    );
    // The crashed slot restarts at once in the rollback's generation;
    // the other slot's old worker is replaced by the rollout.
    let restarted = current(&supervisor, 0).unwrap();
    assert_eq!(supervisor.workers[&restarted].generation, 3);
    assert_eq!(
        supervisor.effects.spawned.last().map(|s| (s.1, s.2)),
        Some((1, 3))
    );

    exited(&mut supervisor, pending1);
    ready(&mut supervisor, restarted);
    finish_rollouts(&mut supervisor);
    assert!(supervisor.effects.drained.contains(&old1));
    assert!(supervisor.reloads.rollout.is_none());
    assert!(
        supervisor.reloads.probation.is_none(),
        "a rollback is not on probation"
    );
    assert!(matches!(
        supervisor.reloads.last,
        Some(ReloadOutcome::RolledBack {
            generation: 2,
            rollback_to: 1,
            ..
        })
    ));
    assert!(supervisor.slots.iter().all(|s| s.generation == 3));
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_probation_rolls_back_and_passing_it_answers_ok() {
    let mut supervisor = running(1, Duration::from_secs(5));
    let mut waiter = reload_waiting(&mut supervisor);
    finish_rollouts(&mut supervisor);
    assert_eq!(
        answer(&mut waiter),
        None,
        "answered when the probation ends"
    );
    pass(
        &mut supervisor,
        Duration::from_secs(5) - Duration::from_millis(1),
    )
    .await;
    assert_eq!(answer(&mut waiter), None, "still on probation");
    pass(&mut supervisor, Duration::from_millis(1)).await;
    assert_eq!(is_in(answer(&mut waiter)), Some(2));

    let mut waiter = reload_waiting(&mut supervisor);
    finish_rollouts(&mut supervisor);
    let on_probation = current(&supervisor, 0).unwrap();
    exited(&mut supervisor, on_probation);
    assert!(matches!(
        answer(&mut waiter),
        Some(Reply::Reload(ReloadOutcome::RolledBack {
            rollback_to: 2,
            ..
        }))
    ));
    assert_eq!(
        supervisor.workers[&current(&supervisor, 0).unwrap()].generation,
        4
    );
}

#[tokio::test(start_paused = true)]
async fn stop_during_a_reload_answers_every_waiter_and_drains_every_worker() {
    let mut supervisor = running(2, Duration::ZERO);
    let mut waiter = reload_waiting(&mut supervisor);
    let mut queued = reload_waiting(&mut supervisor);
    supervisor.on_signal(Intent::Shutdown, "SIGTERM");

    for waiter in [&mut waiter, &mut queued] {
        assert_eq!(answer(waiter), Some(Reply::Error(Problem::ShuttingDown)));
    }
    let mut drained = supervisor.effects.drained.clone();
    drained.sort_unstable();
    assert_eq!(drained, started(&supervisor), "old and new workers alike");
    assert!(supervisor.reloads.rollout.is_none());
    assert!(matches!(
        supervisor.effects.systemd.last(),
        Some(Systemd::Stopping { .. })
    ));

    let mut late = reload_waiting(&mut supervisor);
    assert_eq!(answer(&mut late), Some(Reply::Error(Problem::ShuttingDown)));
    for id in started(&supervisor) {
        assert!(!supervisor.is_done());
        exited(&mut supervisor, id);
    }
    assert_eq!(
        supervisor.effects.spawned.len(),
        3,
        "nothing restarts while stopping"
    );
    assert!(supervisor.is_done());
    assert!(supervisor.finish().is_ok());
}

#[tokio::test(start_paused = true)]
async fn quick_crashes_back_off_and_a_worker_that_lived_resets_the_backoff() {
    let mut supervisor = running(1, Duration::ZERO);
    let crash = |supervisor: &mut Supervisor<Fake>| {
        let id = current(supervisor, 0).expect("the slot has a worker");
        exited(supervisor, id);
    };
    crash(&mut supervisor);
    crash(&mut supervisor);
    assert_eq!(
        supervisor.effects.spawned.len(),
        3,
        "two quick deaths restart at once"
    );
    assert_eq!(supervisor.slots[0].restarts, 2);

    crash(&mut supervisor);
    assert_eq!(supervisor.effects.spawned.len(), 3, "the third backs off");
    assert_eq!(restart_in(&supervisor), Some(BACKOFF_FIRST));
    pass(&mut supervisor, BACKOFF_FIRST - Duration::from_millis(1)).await;
    assert_eq!(supervisor.effects.spawned.len(), 3, "not before it is due");
    pass(&mut supervisor, Duration::from_millis(1)).await;
    assert_eq!(supervisor.effects.spawned.len(), 4);

    crash(&mut supervisor);
    assert_eq!(
        restart_in(&supervisor),
        Some(BACKOFF_FIRST * 2),
        "the backoff doubles"
    );
    pass(&mut supervisor, BACKOFF_FIRST * 2).await;
    assert_eq!(supervisor.effects.spawned.len(), 5);

    // A worker that was ready and lived past STABLE_LIFETIME crashes:
    // restarted at once, the count of quick deaths back to zero.
    let id = current(&supervisor, 0).unwrap();
    ready(&mut supervisor, id);
    pass(&mut supervisor, STABLE_LIFETIME).await;
    crash(&mut supervisor);
    assert_eq!(supervisor.effects.spawned.len(), 6);
    assert_eq!(supervisor.slots[0].quick_failures, 0);
    assert_eq!(supervisor.next_timer(), None);
}

#[test]
fn the_backoff_doubles_from_the_third_quick_death_up_to_its_cap_and_resets() {
    let mut slot = Slot::default();
    let delays: Vec<Option<u64>> = (0..12)
        .map(|_| slot.backoff(true).map(|d| d.as_millis() as u64))
        .collect();
    assert_eq!(
        delays,
        [
            None,
            None,
            Some(100),
            Some(200),
            Some(400),
            Some(800),
            Some(1600),
            Some(3200),
            Some(6400),
            Some(10_000),
            Some(10_000),
            Some(10_000)
        ]
    );
    assert_eq!(slot.backoff(false), None, "a worker that lived resets it");
    assert_eq!(slot.quick_failures, 0);
    assert_eq!(slot.backoff(true), None);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_cannot_be_started_is_retried_with_backoff() {
    let mut supervisor = running(1, Duration::ZERO);
    supervisor.effects.refuse_spawns = true;
    let id = current(&supervisor, 0).unwrap();
    exited(&mut supervisor, id);
    assert!(restart_in(&supervisor).is_some(), "failed starts back off");
    supervisor.effects.refuse_spawns = false;
    pass(&mut supervisor, BACKOFF_CAP).await;
    assert!(current(&supervisor, 0).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_first_worker_that_dies_before_ready_fails_the_start() {
    let mut supervisor = Supervisor::new(config(2, Duration::ZERO), Fake::default());
    supervisor.start();
    let first = started(&supervisor)[0];
    exited(&mut supervisor, first);
    assert_eq!(supervisor.phase, Phase::Stopping);
    let second = started(&supervisor)[1];
    assert_eq!(supervisor.effects.killed, vec![second]);
    exited(&mut supervisor, second);
    assert!(supervisor.is_done());
    let error = supervisor.finish().unwrap_err();
    assert!(
        error.to_string().contains("exited before it was ready"),
        "{error}"
    );
}

/// A master of one ready worker with a 10 s `--shutdown-delay`, after a
/// SIGTERM; and that worker.
fn sigterm_with_a_shutdown_delay() -> (Supervisor<Fake>, WorkerId) {
    let mut config = config(1, Duration::ZERO);
    config.shutdown_delay = Duration::from_secs(10);
    let mut supervisor = Supervisor::new(config, Fake::default());
    supervisor.start();
    let first = newest(&supervisor);
    ready(&mut supervisor, first);
    assert_eq!(supervisor.host_state(), "serving");
    supervisor.on_signal(Intent::Shutdown, "SIGTERM");
    (supervisor, first)
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_delay_is_a_lame_duck_first_and_a_second_sigterm_drains_at_once() {
    let (mut supervisor, _) = sigterm_with_a_shutdown_delay();
    assert_eq!(supervisor.host_state(), "lame_duck");
    assert!(supervisor.shutdown_at.is_some());
    assert!(supervisor.effects.drained.is_empty(), "still serving");
    let mut undrain = oneshot::channel();
    supervisor.on_control(control::Request {
        command: control::Command::Undrain,
        reply: undrain.0,
        connection: None,
    });
    assert!(
        !undrain.1.try_recv().unwrap().is_ok(),
        "no way back from a shutdown"
    );

    supervisor.on_signal(Intent::Shutdown, "SIGTERM");
    assert_eq!(supervisor.host_state(), "draining");
    assert_eq!(supervisor.effects.drained.len(), 1);
    assert_eq!(supervisor.shutdown_at, None);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_delay_ends_in_a_drain_when_it_is_over() {
    let (mut supervisor, first) = sigterm_with_a_shutdown_delay();
    pass(
        &mut supervisor,
        Duration::from_secs(10) - Duration::from_millis(1),
    )
    .await;
    assert_eq!(supervisor.host_state(), "lame_duck");
    assert!(supervisor.effects.drained.is_empty(), "still serving");
    pass(&mut supervisor, Duration::from_millis(1)).await;
    assert_eq!(supervisor.host_state(), "draining");
    assert_eq!(supervisor.effects.drained, vec![first]);
}

/// A release on probation whose worker crashes: the rollback is under way.
fn roll_back_from_generation_2(supervisor: &mut Supervisor<Fake>) {
    reload_waiting(supervisor);
    finish_rollouts(supervisor);
    let on_probation = current(supervisor, 0).unwrap();
    exited(supervisor, on_probation);
    assert!(matches!(
        supervisor.reloads.last,
        Some(ReloadOutcome::RolledBack { rollback_to: 1, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_rollback_starts_the_previous_release_from_its_kept_program_and_configuration() {
    let mut supervisor = running(1, Duration::from_secs(5));
    // The release of generation 2 runs with other arguments.
    supervisor.config.worker_args = vec!["--new-release".into()];
    roll_back_from_generation_2(&mut supervisor);

    assert_eq!(
        supervisor.effects.restored,
        vec![(PathBuf::from(PROGRAM), 1)],
        "generation 1's program, kept when it started, is written back"
    );
    let restarted = supervisor.effects.configs.last().unwrap();
    assert_eq!(restarted.program, Path::new("/run/baton/program-1"));
    assert!(
        restarted.worker_args.is_empty(),
        "generation 1's configuration comes back with it"
    );

    // The next reload starts from the program path again.
    finish_rollouts(&mut supervisor);
    reload_waiting(&mut supervisor);
    let reloaded = supervisor.effects.configs.last().unwrap();
    assert_eq!(reloaded.program, Path::new(PROGRAM));
}

#[tokio::test(start_paused = true)]
async fn a_rollback_whose_program_cannot_be_written_back_rolls_back_the_configuration() {
    let mut supervisor = running(1, Duration::from_secs(5));
    supervisor.effects.refuse_restore = true;
    supervisor.config.worker_args = vec!["--new-release".into()];
    roll_back_from_generation_2(&mut supervisor);

    let restarted = supervisor.effects.configs.last().unwrap();
    assert_eq!(restarted.program, Path::new(PROGRAM), "from the path");
    assert!(restarted.worker_args.is_empty());
    assert_eq!(
        supervisor.workers[&current(&supervisor, 0).unwrap()].generation,
        3
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_storm_hurries_all_but_the_newest_draining_generations() {
    let mut supervisor = running(1, Duration::ZERO);
    let first = current(&supervisor, 0).unwrap();
    for _ in 0..MAX_DRAINING_GENERATIONS + 1 {
        reload_waiting(&mut supervisor);
        finish_rollouts(&mut supervisor);
    }
    assert_eq!(supervisor.effects.hurried, vec![first]);
}

/// Asks for an upgrade as `baton upgrade --wait` does.
fn upgrade_waiting(supervisor: &mut Supervisor<Fake>) -> oneshot::Receiver<Reply> {
    let (reply, answer) = oneshot::channel();
    supervisor.on_control(control::Request {
        command: control::Command::Upgrade {
            wait: true,
            keep_workers: false,
            fault: None,
        },
        reply,
        connection: None,
    });
    answer
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_during_a_reload_is_refused_and_reloads_during_an_upgrade_are_not_raced() {
    let mut supervisor = running(2, Duration::ZERO);
    let mut reload = reload_waiting(&mut supervisor);
    let mut refused = upgrade_waiting(&mut supervisor);
    let refused = answer(&mut refused).expect("answered at once");
    assert!(
        matches!(&refused, Reply::Upgrade(UpgradeOutcome::Refused { reason })
            if reason.starts_with("a reload is in progress")),
        "{refused:?}"
    );
    assert_eq!(supervisor.effects.upgrade_checks, 0);
    finish_rollouts(&mut supervisor);
    assert!(answer(&mut reload).unwrap().is_ok());

    // The program is being checked: a second upgrade waits for the
    // first, `baton reload` is told to come back, SIGHUP joins the roll.
    let mut first = upgrade_waiting(&mut supervisor);
    let mut second = upgrade_waiting(&mut supervisor);
    assert_eq!(supervisor.effects.upgrade_checks, 1, "one check for both");
    let mut reload = reload_waiting(&mut supervisor);
    assert_eq!(
        answer(&mut reload),
        Some(Reply::Error(Problem::UpgradeInProgress))
    );
    supervisor.on_signal(Intent::Reload, "SIGHUP");
    assert!(
        supervisor.reloads.rollout.is_none(),
        "no reload races the upgrade"
    );
    assert_eq!(answer(&mut first), None);

    // The check passes, the exec fails: both waiters hear it, and the
    // master goes on with its workers.
    supervisor.on_upgrade_checked(Ok("9.9.9".to_owned()));
    let departure = &supervisor.effects.handed_over[0];
    let states = |state: WorkerState| {
        let workers = &departure.supervisor.workers;
        workers.iter().filter(|w| w.worker.state == state).count()
    };
    // The old generation still drains: it is handed over too.
    assert_eq!(
        (states(WorkerState::Ready), states(WorkerState::Draining)),
        (2, 2)
    );
    assert_eq!(departure.supervisor.generation, 2);
    assert!(departure.roll);
    for waiter in [&mut first, &mut second] {
        let said = answer(waiter).expect("answered");
        assert!(
            matches!(&said, Reply::Upgrade(UpgradeOutcome::ExecFailed { reason })
                if reason.starts_with("cannot run")),
            "{said:?}"
        );
    }
    assert!(supervisor.upgrade.is_none());
    assert_eq!(supervisor.ready_slots(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_new_program_that_fails_its_check_is_refused_and_stop_cancels_an_upgrade() {
    let mut supervisor = running(1, Duration::ZERO);
    let mut waiter = upgrade_waiting(&mut supervisor);
    supervisor.on_upgrade_checked(Err("it exited with 3".to_owned()));
    let said = answer(&mut waiter).expect("answered");
    assert!(
        matches!(&said, Reply::Upgrade(UpgradeOutcome::CheckFailed { reason, .. })
            if reason == "it exited with 3"),
        "{said:?}"
    );
    assert!(supervisor.effects.handed_over.is_empty());

    let mut waiter = upgrade_waiting(&mut supervisor);
    supervisor.on_signal(Intent::Shutdown, "SIGTERM");
    let said = answer(&mut waiter).expect("answered");
    assert_eq!(said, Reply::Upgrade(UpgradeOutcome::Cancelled));
    supervisor.on_upgrade_checked(Ok("9.9.9".to_owned()));
    assert!(
        supervisor.effects.handed_over.is_empty(),
        "no exec while stopping"
    );
}

#[tokio::test(start_paused = true)]
async fn an_adopted_state_keeps_slots_workers_and_history() {
    let mut supervisor = running(2, Duration::ZERO);
    let mut reload = reload_waiting(&mut supervisor);
    finish_rollouts(&mut supervisor);
    assert!(answer(&mut reload).unwrap().is_ok());
    let mut waiter = upgrade_waiting(&mut supervisor);
    supervisor.on_upgrade_checked(Ok("9.9.9".to_owned()));
    assert!(answer(&mut waiter).is_some());
    let state = supervisor.effects.handed_over.remove(0).supervisor;
    let json = serde_json::to_string(&state).unwrap();
    let state = serde_json::from_str(&json).unwrap();
    let adopted = Supervisor::adopt(config(2, Duration::ZERO), Fake::default(), state);
    assert_eq!(adopted.phase, Phase::Running);
    assert_eq!(adopted.generation, supervisor.generation);
    assert_eq!(adopted.next_id, supervisor.next_id);
    assert_eq!(adopted.counters.reloads_ok, 1);
    let ids = |s: &Supervisor<Fake>| s.slots.iter().map(|slot| slot.current).collect::<Vec<_>>();
    assert_eq!(ids(&adopted), ids(&supervisor));
    for (id, worker) in &supervisor.workers {
        let kept = &adopted.workers[id];
        assert_eq!(
            (kept.pid, kept.slot, kept.state),
            (worker.pid, worker.slot, worker.state)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_listener_put_right_is_counted_and_one_that_cannot_be_is_down_until_it_listens() {
    use crate::listeners::{ListenerFault, Repair};
    let mut supervisor = running(2, Duration::ZERO);
    let repair = |fault, result| Repair {
        listener: "http".to_owned(),
        fault,
        result,
    };
    supervisor.effects.repairs = vec![
        repair(ListenerFault::ShutDown, Ok(())),
        repair(
            ListenerFault::Backlog {
                found: 1,
                wanted: 1024,
            },
            Ok(()),
        ),
    ];
    supervisor.keep_listening(Look::HungUp);
    assert_eq!(supervisor.counters.listener_restores, 1);
    assert_eq!(supervisor.counters.backlog_restores, 1);
    assert_eq!(supervisor.host_state(), "serving");

    supervisor.effects.repairs = vec![repair(
        ListenerFault::ShutDown,
        Err(std::io::Error::other("cannot")),
    )];
    supervisor.keep_listening(Look::Periodic);
    assert_eq!(supervisor.host_state(), "listener_down");
    assert_eq!(supervisor.listening.broken().collect::<Vec<_>>(), ["http"]);
    // A later look that finds it well: serving again.
    supervisor.keep_listening(Look::Periodic);
    assert_eq!(supervisor.host_state(), "serving");
}

/// A master of two ready workers whose reloads probe new workers.
fn running_with_health() -> Supervisor<Fake> {
    let mut config = config(2, Duration::ZERO);
    config.health = Some(crate::config::HealthCheck {
        path: "/healthz".into(),
        status: crate::values::StatusRange::SUCCESS,
        timeout: Duration::from_secs(5),
        count: 3,
        interval: None,
        fall: 3,
    });
    let mut supervisor = Supervisor::new(config, Fake::default());
    supervisor.start();
    for id in started(&supervisor) {
        ready(&mut supervisor, id);
    }
    assert!(
        supervisor.effects.probed.is_empty(),
        "the first workers are not probed"
    );
    supervisor
}

fn probed(supervisor: &mut Supervisor<Fake>, id: WorkerId, outcome: Result<Healthy, Unhealthy>) {
    supervisor.on_event(WorkerEvent::Probed { id, outcome });
}

fn healthy() -> Result<Healthy, Unhealthy> {
    Ok(Healthy {
        probes: 3,
        connections: 4,
        window_ms: 12,
        clients_held: 0,
    })
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_takes_its_slot_only_once_its_probes_pass() {
    let mut supervisor = running_with_health();
    let old0 = current(&supervisor, 0).unwrap();
    let mut waiter = reload_waiting(&mut supervisor);
    let new0 = newest(&supervisor);
    assert_eq!(
        supervisor.effects.probed,
        vec![new0],
        "probed from its start, as soon as it listens"
    );
    ready(&mut supervisor, new0);
    assert_eq!(supervisor.workers[&new0].state, WorkerState::Probing);
    assert!(
        supervisor.effects.drained.is_empty(),
        "the old worker serves on"
    );
    assert_eq!(current(&supervisor, 0), Some(old0));

    probed(&mut supervisor, new0, healthy());
    assert_eq!(current(&supervisor, 0), Some(new0));
    assert_eq!(supervisor.effects.drained, vec![old0]);
    // Passed before it said it was ready: it takes its slot when it does.
    let new1 = newest(&supervisor);
    probed(&mut supervisor, new1, healthy());
    assert_eq!(supervisor.workers[&new1].state, WorkerState::Starting);
    ready(&mut supervisor, new1);
    assert_eq!(current(&supervisor, 1), Some(new1));
    assert_eq!(is_in(answer(&mut waiter)), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_that_fails_its_probe_fails_the_reload_and_the_old_workers_go_on() {
    let mut supervisor = running_with_health();
    let old = [
        current(&supervisor, 0).unwrap(),
        current(&supervisor, 1).unwrap(),
    ];
    let mut waiter = reload_waiting(&mut supervisor);
    // Failed before it said it was ready: the verdict does not wait.
    let new0 = newest(&supervisor);
    let pid = supervisor.workers[&new0].pid;
    probed(
        &mut supervisor,
        new0,
        Err(Unhealthy {
            status: Some(500),
            body: "database is down".into(),
            reason: "GET /healthz answered 500, not 2xx".into(),
            window_ms: Some(3),
            connections: 2,
            clients_held: 1,
        }),
    );
    assert_eq!(
        supervisor.effects.drained,
        vec![new0],
        "it may serve clients already: it drains"
    );
    assert_eq!(
        answer(&mut waiter),
        None,
        "answered once the refused worker is gone, not before"
    );
    exited(&mut supervisor, new0);
    let said = answer(&mut waiter).expect("answered when the refused worker exited");
    assert!(
        matches!(&said, Reply::Reload(ReloadOutcome::Unhealthy { generation: 2, pid: p, status: Some(500), body, .. })
            if *p == pid && body == "database is down"),
        "{said:?}"
    );
    assert!(!said.is_ok(), "reload --wait exits 1");
    assert_eq!(
        [current(&supervisor, 0), current(&supervisor, 1)],
        old.map(Some)
    );
    assert_eq!(supervisor.counters.reloads_unhealthy, 1);

    // The next release, healthy, goes in.
    let mut waiter = reload_waiting(&mut supervisor);
    let next = newest(&supervisor);
    ready(&mut supervisor, next);
    probed(&mut supervisor, next, healthy());
    let next = newest(&supervisor);
    ready(&mut supervisor, next);
    probed(&mut supervisor, next, healthy());
    assert_eq!(
        is_in(answer(&mut waiter)),
        Some(3),
        "the next reload goes in"
    );
}

fn handed(from: WorkerId, batch: u64, count: usize) -> crate::master::worker::Handed {
    let fds = (0..count)
        .map(|_| {
            std::fs::File::open("/dev/null")
                .expect("/dev/null opens")
                .into()
        })
        .collect();
    crate::master::worker::Handed::whole(
        from,
        batch,
        vec![
            crate::protocol::MovedConnection {
                idle_ms: 5,
                fresh: false,
            };
            count
        ],
        fds,
    )
}

/// The worker given the connections at `positions` of `from`'s `batch`
/// took them, or did not.
fn part_settled(
    supervisor: &mut Supervisor<Fake>,
    from: WorkerId,
    batch: u64,
    positions: &[u32],
    taken: bool,
) {
    supervisor.on_event(WorkerEvent::Settled {
        from,
        batch,
        positions: positions.to_vec(),
        taken,
    });
}

/// The workers given each part of the batches handed over so far.
fn adopters(supervisor: &Supervisor<Fake>) -> Vec<WorkerId> {
    supervisor.effects.adopted.iter().map(|a| a.0).collect()
}

#[tokio::test(start_paused = true)]
async fn a_reloads_old_workers_spread_their_connections_over_the_new_generation() {
    let mut supervisor = running(2, Duration::ZERO);
    let old0 = current(&supervisor, 0).unwrap();
    let _waiter = reload_waiting(&mut supervisor);
    finish_rollouts(&mut supervisor);
    let new: Vec<WorkerId> = (0..2).map(|s| current(&supervisor, s).unwrap()).collect();
    assert_eq!(
        supervisor.effects.handover,
        [true, true],
        "each old worker hands over"
    );
    supervisor.on_event(WorkerEvent::Handover(handed(old0, 1, 3)));
    assert_eq!(
        supervisor.effects.adopted,
        [(new[0], old0, 1), (new[1], old0, 1)],
        "one part for each new worker"
    );
    // The next connection goes to the new worker that got one fewer.
    supervisor.on_event(WorkerEvent::Handover(handed(old0, 2, 1)));
    assert_eq!(adopters(&supervisor)[2], new[1]);

    // The batch is settled once both its parts are, naming the connection
    // that came back.
    part_settled(&mut supervisor, old0, 1, &[0, 2], true);
    assert!(supervisor.effects.settled.is_empty(), "one part is out");
    part_settled(&mut supervisor, old0, 1, &[1], false);
    assert_eq!(
        supervisor.effects.settled,
        [(old0, 1, Settlement::Partly(vec![1]))]
    );
    assert_eq!(supervisor.counters.connections_handed_over, 2);
    assert_eq!(supervisor.counters.connections_fell_back, 1);
}

/// Where a rollout has replaced one slot of two, the old worker's keep-alive
/// clients do not all go to the one new worker: the old worker of the other
/// slot takes its share, to hand it on when its own turn comes. However
/// many of the host's clients the first old worker had, the two new
/// workers end with as many each.
#[tokio::test(start_paused = true)]
async fn in_a_rollout_connections_spread_over_every_serving_worker_not_only_the_first_new_one() {
    let mut supervisor = running(2, Duration::ZERO);
    let (old0, old1) = (
        current(&supervisor, 0).unwrap(),
        current(&supervisor, 1).unwrap(),
    );
    let _waiter = reload_waiting(&mut supervisor);
    let new0 = newest(&supervisor);
    ready(&mut supervisor, new0);
    assert_eq!(supervisor.effects.drained, [old0]);
    // Every keep-alive client of the host was on the first old worker.
    supervisor.on_event(WorkerEvent::Handover(handed(old0, 1, 32)));
    let to = |supervisor: &Supervisor<Fake>, id| {
        let parts = supervisor
            .effects
            .adopted
            .iter()
            .zip(&supervisor.effects.adopted_counts);
        parts
            .filter(|(a, _)| a.0 == id)
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    assert_eq!((to(&supervisor, new0), to(&supervisor, old1)), (16, 16));

    let new1 = newest(&supervisor);
    ready(&mut supervisor, new1);
    assert_eq!(supervisor.effects.drained, [old0, old1]);
    supervisor.on_event(WorkerEvent::Handover(handed(old1, 1, 16)));
    assert_eq!((to(&supervisor, new0), to(&supervisor, new1)), (16, 16));
}

#[tokio::test(start_paused = true)]
async fn a_report_sent_before_handed_connections_arrived_does_not_hide_them() {
    let mut supervisor = running(2, Duration::ZERO);
    let old0 = current(&supervisor, 0).unwrap();
    let _waiter = reload_waiting(&mut supervisor);
    finish_rollouts(&mut supervisor);
    let new: Vec<WorkerId> = (0..2).map(|s| current(&supervisor, s).unwrap()).collect();
    supervisor.on_event(WorkerEvent::Handover(handed(old0, 1, 16)));
    let report = |id, open_connections, received| WorkerEvent::Stats {
        id,
        stats: crate::protocol::WorkerStats {
            open_connections,
            received,
            ..Default::default()
        },
    };
    // The first new worker's once-a-second report was written before its
    // eight arrived; the second's after.
    supervisor.on_event(report(new[0], 0, 0));
    supervisor.on_event(report(new[1], 8, 8));
    supervisor.on_event(WorkerEvent::Handover(handed(old0, 2, 2)));
    assert_eq!(
        adopters(&supervisor)[2..],
        new,
        "the first new worker still has its eight"
    );
    // Once its reports count what it received, they are its open ones.
    supervisor.on_event(report(new[0], 9, 9));
    supervisor.on_event(report(new[1], 10, 9));
    supervisor.on_event(WorkerEvent::Handover(handed(old0, 3, 1)));
    assert_eq!(adopters(&supervisor)[4], new[0], "9 against 10");
}

#[tokio::test(start_paused = true)]
async fn nothing_is_handed_over_on_a_stop_or_with_the_handoff_off() {
    let mut supervisor = running(1, Duration::ZERO);
    let old = current(&supervisor, 0).unwrap();
    supervisor.config.handoff_connections = false;
    let _waiter = reload_waiting(&mut supervisor);
    finish_rollouts(&mut supervisor);
    assert_eq!(supervisor.effects.handover, [false]);
    // A batch that comes anyway goes back to its worker.
    supervisor.on_event(WorkerEvent::Handover(handed(old, 1, 2)));
    assert!(supervisor.effects.adopted.is_empty());
    assert_eq!(supervisor.effects.settled, [(old, 1, Settlement::Returned)]);
    assert_eq!(supervisor.counters.connections_fell_back, 2);

    supervisor.config.handoff_connections = true;
    supervisor.on_signal(Intent::Shutdown, "SIGTERM");
    assert_eq!(
        supervisor.effects.handover,
        [false, false],
        "a stop hands nothing over"
    );
}

#[tokio::test(start_paused = true)]
async fn connections_leaving_before_the_newest_generation_is_ready_go_to_the_newest_ready_one() {
    let mut supervisor = running(1, Duration::ZERO);
    let first = current(&supervisor, 0).unwrap();
    let _waiter = reload_waiting(&mut supervisor);
    finish_rollouts(&mut supervisor);
    let second = current(&supervisor, 0).unwrap();
    // The first generation still drains (a long upload) when the next
    // reload starts a worker that is not ready yet.
    let _next = reload_waiting(&mut supervisor);
    let third = newest(&supervisor);
    assert_ne!(third, second);
    supervisor.on_event(WorkerEvent::Handover(handed(first, 1, 2)));
    assert_eq!(
        supervisor.effects.adopted[0].0, second,
        "to the newest generation with a ready worker, not back to the drain"
    );
    // Once the third is ready and the second drains, the second's
    // connections go to the third; never to its own generation.
    finish_rollouts(&mut supervisor);
    supervisor.on_event(WorkerEvent::Handover(handed(second, 1, 1)));
    assert_eq!(supervisor.effects.adopted[1].0, third);
    assert_eq!(supervisor.counters.connections_fell_back, 0);
}

/// An upgrade's exec waits until no handed-over connection is in the
/// master's hands: first every watcher settles what it passed on (a batch
/// handed over meanwhile goes back), then every watcher writes what it was
/// told and stops reading; a gone worker counts as quiet. A failed exec
/// lets the watchers speak again; quiet or not, the exec goes ahead after
/// QUIET_WITHIN.
#[tokio::test(start_paused = true)]
async fn an_upgrade_execs_once_no_connection_is_in_transit() {
    use crate::master::worker::Quiet;
    let mut supervisor = running(2, Duration::ZERO);
    let old = current(&supervisor, 0).unwrap();
    let _reload = reload_waiting(&mut supervisor);
    finish_rollouts(&mut supervisor);
    let new: Vec<WorkerId> = (0..2).map(|s| current(&supervisor, s).unwrap()).collect();
    supervisor.effects.watchers = supervisor.workers.keys().copied().collect();
    let mut waiter = upgrade_waiting(&mut supervisor);
    // While the program is checked, connections still move.
    supervisor.on_event(WorkerEvent::Handover(handed(old, 1, 1)));
    assert_eq!(supervisor.effects.adopted.len(), 1);

    supervisor.on_upgrade_checked(Ok("9.9.9".to_owned()));
    assert_eq!(supervisor.effects.quiet, [Quiet::Settled]);
    // Going quiet: a batch handed over now goes back.
    supervisor.on_event(WorkerEvent::Handover(handed(old, 2, 1)));
    assert_eq!(supervisor.effects.adopted.len(), 1);
    assert_eq!(supervisor.effects.settled, [(old, 2, Settlement::Returned)]);
    let quiet = |supervisor: &mut Supervisor<Fake>, id, step| {
        supervisor.on_event(WorkerEvent::Quiet { id, step });
    };
    for &id in supervisor
        .effects
        .watchers
        .clone()
        .iter()
        .filter(|&&id| id != new[0])
    {
        quiet(&mut supervisor, id, Quiet::Settled);
    }
    assert_eq!(
        supervisor.effects.quiet,
        [Quiet::Settled],
        "one watcher is not settled"
    );
    // The batch passed on before is taken: its worker hears it.
    part_settled(&mut supervisor, old, 1, &[0], true);
    assert_eq!(
        supervisor.effects.settled,
        [(old, 2, Settlement::Returned), (old, 1, Settlement::Taken)]
    );
    quiet(&mut supervisor, new[0], Quiet::Settled);
    assert_eq!(supervisor.effects.quiet, [Quiet::Settled, Quiet::Hushed]);
    for &id in &supervisor.effects.watchers.clone() {
        if id == old {
            supervisor.on_event(WorkerEvent::Exited {
                id,
                status: std::process::ExitStatus::from_raw(0),
            });
        } else {
            assert!(supervisor.effects.handed_over.is_empty());
            quiet(&mut supervisor, id, Quiet::Hushed);
        }
    }
    assert_eq!(supervisor.effects.handed_over.len(), 1, "the exec");
    assert_eq!(supervisor.effects.spoke, 1, "the exec failed: speak again");
    assert!(matches!(
        answer(&mut waiter),
        Some(Reply::Upgrade(UpgradeOutcome::ExecFailed { .. }))
    ));

    // Watchers that never go quiet hold the exec for QUIET_WITHIN only.
    let _waiter = upgrade_waiting(&mut supervisor);
    supervisor.on_upgrade_checked(Ok("9.9.9".to_owned()));
    pass(&mut supervisor, crate::master::upgrade::QUIET_WITHIN / 2).await;
    assert_eq!(supervisor.effects.handed_over.len(), 1);
    pass(&mut supervisor, crate::master::upgrade::QUIET_WITHIN).await;
    assert_eq!(supervisor.effects.handed_over.len(), 2);
}
