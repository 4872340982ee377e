//! The built-in worker: `baton_worker`'s server with the demo application,
//! started by the master with the options of `baton serve`.
//!
//! - [`http`]: the demo application (the tutorial's routes).
//! - [`stream`]: its event stream and download.
//! - [`websocket`]: its WebSocket echo.
//! - [`exec`]: the stage that turns a COMMAND into a worker.
//! - [`guard`]: what keeps a COMMAND from shutting its listeners down.

pub mod exec;
pub mod guard;
pub mod http;
pub mod stream;
pub mod websocket;

use baton_worker::handoff::Welcome;
use baton_worker::{Builder, Fault};
use serde::Deserialize;
use tracing::warn;

use crate::error::{HandoffError, ProtocolError, WorkerError};
use crate::http_options::{AcceptMode, HttpArgs, WorkerFault};
use http::{Demo, HttpState};

/// Runs the built-in worker until it has drained, with the options the
/// master sent in its hello.
pub fn run() -> Result<(), WorkerError> {
    let welcome = Welcome::receive().map_err(|e| match e {
        baton_worker::Error::NoHandoff { fd } => WorkerError::NoHandoff {
            stage: "worker",
            fd,
        },
        other => other.into(),
    })?;
    let args = match welcome.options() {
        Some(options) => HttpArgs::deserialize(options)
            .map_err(|e| HandoffError::from(ProtocolError::from(e)))?,
        None => HttpArgs::default(),
    };
    let runtime = baton_worker::runtime(usize::from(args.threads))?;
    let mut state = HttpState::new(args.work);
    if args.fault == Some(WorkerFault::ServerError) {
        warn!("fault injected: every answer is 500");
        state.fail_every_request();
    }
    let serving = builder(&args).serve_welcome(welcome, Demo::new(state));
    Ok(runtime.block_on(serving)?)
}

/// The server with the built-in worker's options.
pub fn builder(args: &HttpArgs) -> Builder {
    let fault = match args.fault {
        Some(WorkerFault::ExitOnDrain) => Some(Fault::ExitOnDrain),
        Some(WorkerFault::TwoStepGoaway) => Some(Fault::TwoStepGoaway),
        Some(WorkerFault::ImmediateGoaway) => Some(Fault::ImmediateGoaway),
        Some(WorkerFault::NoLinger) => Some(Fault::NoLinger),
        Some(WorkerFault::ServerError) | None => None,
    };
    Builder::new()
        .header_timeout(args.header_timeout)
        .keepalive_timeout(args.keepalive_timeout)
        .body_timeout(args.body_timeout)
        .http2_ping(args.http2_ping)
        .drain_grace(args.drain_grace)
        .balanced_accept(args.accept == AcceptMode::Balanced)
        .fault(fault)
}

#[cfg(test)]
mod tests;
