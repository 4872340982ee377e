//! The built-in worker's HTTP handler, the tutorial's server: `/` answers
//! `Process handled by pid: <pid>`, `/healthz` answers 200, a request body is
//! read to its end and its size reported, and `--work N` burns N iterations of
//! CPU per request. While the worker drains, every HTTP/1 response carries
//! `Connection: close`, so that busy keep-alive clients leave on their own.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Version};

/// What the handler shares across connections.
#[derive(Debug)]
pub struct HttpState {
    pid: u32,
    work: u64,
    /// Set when the drain starts: later HTTP/1 responses close their connection.
    pub draining: AtomicBool,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

impl HttpState {
    pub fn new(work: u64) -> Self {
        HttpState {
            pid: std::process::id(),
            work,
            draining: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
        }
    }
}

pub async fn handle(
    req: Request<Incoming>,
    state: &HttpState,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let http1 = req.version() < Version::HTTP_2;
    let mut response = route(req, state).await;
    state.requests.fetch_add(1, Ordering::Relaxed);
    if http1 && state.draining.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

async fn route(req: Request<Incoming>, state: &HttpState) -> Response<Full<Bytes>> {
    let pid = state.pid;
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n".to_owned()),
        (&Method::GET | &Method::HEAD, "/") => {
            burn_cpu(state.work);
            text(StatusCode::OK, format!("Process handled by pid: {pid}"))
        }
        (&Method::POST | &Method::PUT, _) => match body_len(req.into_body()).await {
            Ok(received) => {
                burn_cpu(state.work);
                text(
                    StatusCode::OK,
                    format!("Process handled by pid: {pid}, received {received} bytes"),
                )
            }
            Err(e) => text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

/// Reads a body to its end without keeping it, returning its length.
async fn body_len(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            len += data.len() as u64;
        }
    }
    Ok(len)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The tutorial's simulated CPU cost: a loop the optimiser cannot remove.
pub fn burn_cpu(iterations: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..iterations {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    x
}
