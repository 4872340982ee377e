//! baton: a zero-downtime process manager for network servers.
//!
//! This library is the `baton` binary's inside, shared with its tests and
//! benches; it is not an API (the package is not published). Applications
//! use `baton-worker`; the master and its workers share `baton-protocol`.
//!
//! A master process binds the listening sockets once and keeps them open for
//! its whole life. It starts worker processes and hands each of them the
//! *same* listening sockets over a Unix socketpair with SCM_RIGHTS. Workers
//! accept and serve; the master never touches a request. Because the listening
//! socket never closes, a client that connects while workers crash, restart or
//! reload waits in the kernel's accept queue instead of being refused.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`baton serve`, the hidden `baton worker`).
//! - [`settings`]: parsed flags (and the config file) into validated
//!   settings.
//! - [`config`]: the validated settings the master runs with.
//! - [`values`]: the grammar of option values, shared by the command line
//!   and the config file.
//! - [`http_options`]: the built-in worker's options, given on the command
//!   line or in the config file and handed to each worker in its hello.
//! - [`config_file`]: `--config FILE`, merged under the command line.
//! - [`control`]: the control socket and its client (`reload`, `status`,
//!   `stop`).
//! - [`error`]: one error enum per boundary, each saying what to do.
//! - [`fd`]: all `unsafe` descriptor handling: SCM_RIGHTS, close-on-exec,
//!   adopting inherited descriptors, the child's side of `fork`. Its
//!   `unsafe fn`s are called once each, at start, by [`systemd`] (the
//!   listeners systemd passed) and [`worker`] (the handoff socket); the
//!   only other `unsafe` maps the [`balance`] table.
//! - [`keeper`]: stops workers' process trees when the master is gone.
//! - [`listeners`]: binding the listening sockets, keyed by name.
//! - [`listen_state`]: a listener's state read back from the kernel
//!   (listening? its backlog, its queue) and put right where a worker
//!   changed it.
//! - [`protocol`]: the master ↔ worker messages and their framing.
//! - [`rlimit`]: the open-file limit, raised for the workers to inherit.
//! - [`signals`]: Unix signals mapped to the master's intents.
//! - [`systemd`]: socket activation and sd_notify.
//! - [`master`]: the supervisor: worker slots, crash replacement, rolling
//!   reloads, shutdown.
//! - [`balance`]: the shared table that spreads new connections evenly
//!   across workers.
//! - [`worker`]: the built-in worker: `baton_worker` serving the demo
//!   routes, and the stages that exec a COMMAND.
//! - [`load`]: an HTTP load generator that counts every failure by kind.
//! - [`logging`]: log lines as text or JSON, and a `RUST_LOG` that cannot
//!   silence errors.
//! - [`check`]: `baton check`, the zero-downtime check: load, reloads and
//!   kills on a schedule, a report, an exit code.
//! - [`procfs`]: the process tree as /proc shows it.
//! - [`process`]: a process watched through its pidfd, the subreaper and
//!   the orphans it reaps.
//! - [`event`]: the lifecycle events, as names and as logged JSON lines.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub use baton_protocol::balance;
pub mod check;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod control;
pub mod error;
pub mod event;
pub mod fd;
pub mod http_options;
pub mod keeper;
pub mod listen_state;
pub mod listeners;
pub mod load;
pub mod logging;
pub mod master;
pub mod process;
pub mod procfs;
pub mod rescue;
pub use baton_protocol as protocol;
pub mod rlimit;
pub mod settings;
pub mod signals;
pub mod sock_diag;
pub mod systemd;
pub mod values;
pub mod worker;
