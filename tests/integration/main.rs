//! Integration tests: every one runs the real `baton` binary in real
//! processes, on real loopback sockets, with real signals.

mod support;

mod bad_input;
mod check;
mod command;
mod control;
mod deploy;
mod docs;
mod fleet;
mod handoff;
mod hardening;
mod health;
mod http;
mod lame_duck;
mod lifecycle;
mod listener;
mod liveness;
mod native;
mod operators;
mod real_clients;
mod real_servers;
mod reaper;
mod rescue;
mod systemd;
mod upgrade;
mod zero_downtime;
