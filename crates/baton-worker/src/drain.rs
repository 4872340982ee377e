//! How the application learns that its worker drains.

use tokio::sync::watch;

use crate::connection::DrainPhase;

/// Tells the application when its worker starts to drain: it stopped
/// accepting, and its connections are closing as their requests end.
///
/// Long-lived work should end when it sees this: an event stream ends its
/// response (the client reconnects, to the new generation), a WebSocket
/// handler sends a close frame (1001, going away), a background task stops
/// taking new jobs. What is not done by the drain timeout is killed with
/// the worker.
///
/// Every request carries one in its extensions (with axum, take it as
/// `Extension<Drain>`); [`Builder::drain`](crate::Builder::drain) gives one
/// for tasks outside requests. Cloning is cheap.
///
/// ```
/// # async fn example(drain: baton_worker::Drain) {
/// drain.started().await;
/// // stop taking new jobs, tell long-lived clients to come back later
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Drain {
    phase: watch::Receiver<DrainPhase>,
}

impl Drain {
    pub(crate) fn new(phase: watch::Receiver<DrainPhase>) -> Self {
        Drain { phase }
    }

    /// Whether the drain has started.
    pub fn is_started(&self) -> bool {
        *self.phase.borrow() != DrainPhase::Serving
    }

    /// Resolves when the drain starts (at once if it has), or never if the
    /// server is gone without draining.
    pub async fn started(&self) {
        let mut phase = self.phase.clone();
        if phase
            .wait_for(|phase| *phase != DrainPhase::Serving)
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }
}
