//! The protocol between baton's master and its workers: the messages on the
//! handoff socket, the descriptors that ride on them, and the accept-balance
//! table they share.
//!
//! A worker is started with one end of a `SOCK_SEQPACKET` socketpair at
//! descriptor [`fd::HANDOFF_FD`]. The master's first message, the hello
//! ([`ToWorker::Hello`]), carries the listening sockets; the worker answers
//! [`ToMaster::Ready`] when it accepts on them, sends [`ToMaster::Stats`]
//! every second, and drains when told ([`ToWorker::Drain`]).
//!
//! Applications do not use this crate: `baton-worker` speaks it for them.
//! It is a crate of its own so that the master and the worker library share
//! one definition of every message.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod balance;
pub mod error;
pub mod fd;
mod message;

pub use message::*;
