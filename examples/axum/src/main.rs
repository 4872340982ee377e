//! The tutorial's server in axum, as a baton worker:
//!
//!     cargo build --release && baton serve --workers 2 -- target/release/baton-axum-example
//!
//! `drain.rs` gives it the socket baton passes and a drain that fails no
//! request; DRAIN_GRACE_MS (default 5000) sets the grace. With
//! `--axum-shutdown` it stops the way axum's documentation shows instead
//! (`with_graceful_shutdown` on SIGTERM), to compare.

mod drain;

use std::time::Duration;

use axum::routing::any;
use axum::Router;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let grace = std::env::var("DRAIN_GRACE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_millis);
    let pid = std::process::id();
    let app = Router::new().route(
        "/",
        any(move || async move { format!("Process handled by pid: {pid}") }),
    );
    let listener = drain::listener()?;
    if std::env::args().any(|arg| arg == "--axum-shutdown") {
        let mut term = signal(SignalKind::terminate())?;
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                term.recv().await;
            })
            .await;
    }
    drain::serve(listener, app, grace).await
}
