//! Serving one rescued connection: the client's next request is forwarded
//! to the listener it came in on, where the new generation accepts it, and
//! the answer goes back with `Connection: close`.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::Rescued;

/// How long a lingering close reads what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Serves `connection`, whose program let it go: at most one request, if
/// its client starts one within `wait`.
pub async fn rescue(connection: OwnedFd, forward_to: SocketAddr, wait: Duration) -> Rescued {
    let mut rescued = Rescued {
        connections: 1,
        requests: 0,
    };
    // Its next request was held back from the program; the rescuer's own
    // reads must be woken by it.
    let _ = crate::fd::set_read_low_water(connection.as_fd(), 1);
    let stream = std::net::TcpStream::from(connection);
    let Ok(stream) = stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream))
    else {
        return rescued;
    };
    match tokio::time::timeout(wait, begins_a_request(&stream)).await {
        Err(_) => {
            linger(stream).await;
            return rescued;
        }
        Ok(false) => return rescued,
        Ok(true) => {}
    }
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = answered.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let flag = flag.clone();
        async move {
            let response = forward(request, forward_to).await;
            if response.status() != StatusCode::BAD_GATEWAY {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        debug!(cause = %e, "a rescued connection");
    }
    if answered.load(std::sync::atomic::Ordering::Relaxed) {
        rescued.requests = 1;
    }
    rescued
}

/// What the first unread bytes say.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// Not enough yet.
    Unknown,
    /// The start of an HTTP/1 request line (`METHOD SP /…`).
    Request,
    /// Anything else: the rest of a request the program read in part, TLS,
    /// HTTP/2's preface.
    Other,
}

fn start_of(bytes: &[u8]) -> Start {
    const LONGEST_METHOD: usize = 20;
    if bytes.is_empty() {
        return Start::Unknown;
    }
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        let method_so_far = bytes.iter().all(|b| b.is_ascii_uppercase() || *b == b'-');
        return if method_so_far && bytes.len() <= LONGEST_METHOD {
            Start::Unknown
        } else {
            Start::Other
        };
    };
    let method = &bytes[..space];
    if method.is_empty()
        || method.len() > LONGEST_METHOD
        || !method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-')
    {
        return Start::Other;
    }
    if method == b"PRI" {
        // HTTP/2's preface: "PRI * HTTP/2.0".
        return Start::Other;
    }
    match bytes.get(space + 1) {
        None => Start::Unknown,
        Some(b'/' | b'*' | b'h' | b'H') => Start::Request,
        Some(_) => Start::Other,
    }
}

/// Whether the first bytes the client sends begin an HTTP/1 request; false
/// if it closes first.
async fn begins_a_request(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 32];
    loop {
        let Ok(n) = stream.peek(&mut buf).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        match start_of(&buf[..n]) {
            Start::Request => return true,
            Start::Other => return false,
            Start::Unknown if n == buf.len() => return false,
            // More is on its way: look again in a moment.
            Start::Unknown => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The lingering close: no more writes, read what comes for a moment, so
/// that a request in flight is not answered with a reset.
async fn linger(mut stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// One request through the listener, answered with `Connection: close`.
async fn forward(request: Request<Incoming>, to: SocketAddr) -> Response<Body> {
    let answer = async {
        let stream = TcpStream::connect(to).await?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)
    };
    match answer.await {
        Ok(response) => {
            let mut response = response.map(BodyExt::boxed_unsync);
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Err(e) => {
            debug!(cause = %e, "a rescued request could not be forwarded");
            let mut response = Response::new(
                Full::new(Bytes::from_static(b"bad gateway\n"))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_start_of_an_http1_request_line_is_a_request() {
        assert_eq!(start_of(b"GET / HTTP/1.1\r\n"), Start::Request);
        assert_eq!(start_of(b"POST /upload HTTP/1.1"), Start::Request);
        assert_eq!(start_of(b"OPTIONS * HTTP/1.1"), Start::Request);
        assert_eq!(start_of(b"GET http://example/ HTTP/1.1"), Start::Request);
        assert_eq!(start_of(b"PO"), Start::Unknown);
        assert_eq!(start_of(b"POST "), Start::Unknown);
        assert_eq!(start_of(b"PRI * HTTP/2.0\r\n\r\nSM"), Start::Other);
        assert_eq!(start_of(&[0x16, 0x03, 0x01, 0x02]), Start::Other);
        assert_eq!(start_of(b"name=value&more"), Start::Other);
        assert_eq!(start_of(b"{\"json\": 1}"), Start::Other);
        assert_eq!(start_of(b"abc def"), Start::Other);
    }
}
