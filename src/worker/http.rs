//! The built-in worker's HTTP handler, the tutorial's server: `/` answers
//! `Process handled by pid: <pid>`, `/healthz` answers 200 (and `/stream`,
//! which must watch the drain, is [`super::stream`]'s), a request body is
//! read to its end and its size reported, and `--work N` burns N iterations of
//! CPU per request. A request body that pauses longer than the body timeout
//! between two chunks is answered 408.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use baton_worker::{Body as RequestBody, Drain};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode, Version};

use super::{stream, websocket};

/// What the handler shares across connections.
#[derive(Debug)]
pub struct HttpState {
    pid: u32,
    work: u64,
    /// Every answer is 500 (a fault injected on purpose).
    failing: bool,
}

impl HttpState {
    pub fn new(work: u64) -> Self {
        HttpState {
            pid: std::process::id(),
            work,
            failing: false,
        }
    }

    /// Answers every request 500 from now on, like a release that is up but
    /// broken.
    pub fn fail_every_request(&mut self) {
        self.failing = true;
    }
}

/// What the built-in worker answers with.
pub type AnswerBody = BoxBody<Bytes, Infallible>;

/// The built-in worker's application, as `baton_worker` serves it.
#[derive(Debug, Clone)]
pub struct Demo {
    state: Arc<HttpState>,
}

impl Demo {
    pub fn new(state: HttpState) -> Self {
        Demo {
            state: Arc::new(state),
        }
    }
}

impl tower_service::Service<Request<RequestBody>> for Demo {
    type Response = Response<AnswerBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<AnswerBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(answer(req, &state).await) })
    }
}

/// Answers one request, HTTP/1 or HTTP/2.
async fn answer(req: Request<RequestBody>, state: &HttpState) -> Response<AnswerBody> {
    let drain = req
        .extensions()
        .get::<Drain>()
        .cloned()
        .expect("baton_worker gives every request its Drain");
    if req.method() == Method::GET && req.uri().path() == "/stream" {
        let seconds = stream::seconds(req.uri().query());
        stream::respond(seconds, drain).map(BodyExt::boxed)
    } else if req.method() == Method::GET && req.uri().path() == "/download" {
        stream::download(req.uri().query()).map(BodyExt::boxed)
    } else if websocket::is_asked(&req) {
        let (response, accepted) = websocket::accept(req);
        if let Some(accepted) = accepted {
            tokio::spawn(accepted.echo(drain));
        }
        response.map(BodyExt::boxed)
    } else {
        route(req, state).await.map(BodyExt::boxed)
    }
}

async fn route(req: Request<RequestBody>, state: &HttpState) -> Response<Full<Bytes>> {
    let pid = state.pid;
    if let Some(problem) = host_problem(&req) {
        let mut response = text(StatusCode::BAD_REQUEST, format!("{problem}\n"));
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    if state.failing {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "fault injected: every answer is 500\n".to_owned(),
        );
    }
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
            Err(BodyError::Stalled) => {
                let mut response = text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body stalled\n".to_owned(),
                );
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                response
            }
            Err(BodyError::Broken(e)) => text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

/// What is wrong with a request's `Host` (RFC 9112 §3.2: an HTTP/1.1
/// request without one, and any request with more than one, is answered
/// 400). HTTP/2 names its authority in `:authority` instead; HTTP/1.0 may
/// leave it out.
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let hosts = req.headers().get_all(HOST).iter().count();
    match hosts {
        0 if req.version() == Version::HTTP_11 => Some("an HTTP/1.1 request needs a Host header"),
        0 | 1 => None,
        _ => Some("a request may have one Host header, not several"),
    }
}

/// Why a request body could not be read.
enum BodyError {
    /// No chunk came within the body timeout.
    Stalled,
    Broken(String),
}

/// Reads a body to its end without keeping it, returning its length.
async fn body_len(mut body: RequestBody) -> Result<u64, BodyError> {
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.is_timeout() {
            true => BodyError::Stalled,
            false => BodyError::Broken(e.to_string()),
        })?;
        if let Some(data) = frame.data_ref() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::get("/").version(version);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn host_is_required_once_in_http_1_1_and_never_twice() {
        assert!(host_problem(&request(Version::HTTP_11, &[])).is_some());
        assert!(host_problem(&request(Version::HTTP_11, &["a", "b"])).is_some());
        assert!(host_problem(&request(Version::HTTP_10, &["a", "a"])).is_some());
        assert!(host_problem(&request(Version::HTTP_11, &["a"])).is_none());
        assert!(host_problem(&request(Version::HTTP_10, &[])).is_none());
        assert!(host_problem(&request(Version::HTTP_2, &[])).is_none());
    }
}
