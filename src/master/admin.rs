//! The admin listener (`--admin ADDR`): `/metrics` for Prometheus, and
//! `/healthz` and `/readyz` for load balancers and orchestrators, over
//! plain HTTP/1. It asks the supervisor through the same channel as the
//! control socket, so the master's state has one owner.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::control;

/// The content type of the OpenMetrics text format.
const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers admin requests until the master exits.
pub(super) async fn serve(
    listener: TcpListener,
    requests: mpsc::UnboundedSender<control::Request>,
) {
    accept_each(listener, "admin", move |stream| {
        let requests = requests.clone();
        async move {
            let service = service_fn(move |request| answer(request, requests.clone()));
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(cause = %e, "admin client");
            }
        }
    })
    .await
}

/// Accepts connections on `listener` for ever, each handled on its own
/// task; an accept error (out of descriptors) is logged and retried.
pub(super) async fn accept_each<F, Fut>(listener: TcpListener, name: &'static str, handle: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream));
            }
            Err(e) => {
                warn!(cause = %e, listener = name, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    supervisor: mpsc::UnboundedSender<control::Request>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    let command = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => control::Command::Metrics,
        (&Method::GET | &Method::HEAD, "/healthz") => control::Command::Health,
        (&Method::GET | &Method::HEAD, "/readyz") => control::Command::Ready,
        _ => {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "baton's admin listener serves GET /metrics, /healthz and /readyz\n".to_owned(),
            ))
        }
    };
    let (tx, rx) = oneshot::channel();
    let asked = supervisor.send(control::Request {
        command,
        reply: tx,
        connection: None,
    });
    let Ok(answer) = asked.map_err(drop).and(rx.await.map_err(drop)) else {
        return Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining: baton is exiting\n".to_owned(),
        ));
    };
    let status = if answer.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The body of a health check is the state: `serving`, `lame_duck`,
    // `draining`; `ready`, `starting`, `stopping`.
    let (content_type, body) = match answer {
        control::Reply::Metrics { text } => (METRICS_TYPE, text),
        control::Reply::Health { state } => ("text/plain", format!("{state}\n")),
        control::Reply::Readiness { .. } if status == StatusCode::OK => {
            ("text/plain", "ready\n".to_owned())
        }
        control::Reply::Readiness { phase } => ("text/plain", format!("{phase}\n")),
        other => ("text/plain", other.to_string()),
    };
    Ok(reply(status, content_type, body))
}
