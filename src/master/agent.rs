//! The HAProxy agent-check responder (`--agent ADDR`): each connection gets
//! one line saying what this host wants from the load balancer, and is
//! closed. `up ready` while serving; `drain` in lame duck and while
//! shutting down (no new connections, those open go on). HAProxy's
//! `agent-check` reads it every `agent-inter`.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::control;

/// Answers agent checks until the master exits.
pub(super) async fn serve(
    listener: TcpListener,
    requests: mpsc::UnboundedSender<control::Request>,
) {
    super::admin::accept_each(listener, "agent", move |mut stream| {
        let requests = requests.clone();
        async move {
            let line = agent_line(&requests).await;
            if let Err(e) = stream.write_all(line.as_bytes()).await {
                debug!(cause = %e, "agent check client");
            }
            let _ = stream.shutdown().await;
        }
    })
    .await
}

/// The agent protocol's words for the host's state.
async fn agent_line(requests: &mpsc::UnboundedSender<control::Request>) -> &'static str {
    let (reply, answer) = oneshot::channel();
    let asked = requests.send(control::Request {
        command: control::Command::Health,
        reply,
        connection: None,
    });
    match (asked, answer.await) {
        (Ok(()), Ok(health)) if health.is_ok() => "up ready\n",
        _ => "drain\n",
    }
}
