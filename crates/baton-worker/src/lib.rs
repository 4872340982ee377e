//! Serve a Rust HTTP application the way baton's built-in worker serves:
//! new connections spread evenly over the workers, every phase of a
//! connection bounded in time, HTTP/1 and HTTP/2 (h2c) on one port, and a
//! drain that fails no request: idle keep-alive connections are kept until
//! their clients' next requests (answered with `Connection: close`), HTTP/2
//! connections get one GOAWAY at a moment no stream is open, and every
//! close lingers so that the last response is read.
//!
//! Any tower `Service` of `http::Request<`[`Body`]`>` is an [`App`]; an axum `Router` is one as it is:
//!
//! ```no_run
//! # use std::convert::Infallible;
//! # use http::{Request, Response};
//! #[tokio::main]
//! async fn main() -> Result<(), baton_worker::Error> {
//!     let app = tower::service_fn(|_: Request<baton_worker::Body>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello\n")))
//!     });
//!     baton_worker::serve(app).await
//! }
//! ```
//!
//! Under `baton serve --native -- ./app` the program speaks baton's
//! protocol: it takes the listeners from the master, accepts its share as
//! the master's balance table says, reports its requests and connections
//! every second (`baton status`, `/metrics` and the liveness check see it as
//! they see a built-in worker), holds its accepts while the master probes it
//! (`--health`), and drains when the master says, with the master's grace.
//! Run on its own (`cargo run`) it serves the sockets systemd passed
//! (`LISTEN_FDS`), else the addresses in `BATON_LISTEN` (`HOST:PORT`,
//! several separated by commas), else `127.0.0.1:8080`, and drains on
//! SIGTERM or SIGINT. So development needs no baton.
//!
//! The application learns of the drain through [`Drain`]: each request
//! carries one in its extensions, and [`Builder::drain`] gives one to its
//! own tasks. [`serve`] returns once every connection has closed: what
//! follows it in `main` is the graceful-stop hook.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod accept;
mod alone;
mod app;
mod body;
mod builder;
mod connection;
mod drain;
mod error;
#[doc(hidden)]
pub mod handoff;
mod http2;
mod memory;
#[doc(hidden)]
pub mod server;
mod sniff;
mod worker;

use std::time::Duration;

pub use alone::LISTEN_ENV;
pub use app::{App, BoxError};
pub use body::{Body, BodyError};
#[doc(hidden)]
pub use builder::{runtime, Fault};
pub use builder::{Builder, HANDOFF_ENV};
pub use drain::Drain;
pub use error::Error;

/// Serves `app` with the default limits until it has drained: the same as
/// [`Builder::new`]`().`[`serve`](Builder::serve)`(app)`.
pub async fn serve(app: impl App) -> Result<(), Error> {
    Builder::new().serve(app).await
}

/// `from + after`, or as far as the clock goes: a limit too long to add is
/// no limit.
pub(crate) fn deadline(from: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    from.checked_add(after)
        .or_else(|| from.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(from)
}
