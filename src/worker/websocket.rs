//! The built-in worker's WebSocket: `GET /ws` upgraded (HTTP/1.1, RFC 6455)
//! echoes every text and binary message. It is what `baton check
//! --scenario websocket` talks to through reloads.
//!
//! A WebSocket outlives any drain grace, so a draining worker ends each one
//! the way the protocol provides: a close frame with 1001 (going away),
//! after which the client's own close frame is awaited for a moment and the
//! socket closes with the lingering close. A client reconnects on such a
//! close (to the new generation, since this worker no longer accepts); a
//! socket cut without it is what a client reports as an error. A message
//! the client sent as the close frame crossed it is not echoed (no data
//! may follow a close frame); the client sees the close before any echo,
//! so it knows the message went unanswered.
//!
//! WebSocket over HTTP/2 (RFC 8441's extended CONNECT) is not served: an
//! HTTP/2 request for `/ws` is answered 400, and says so.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::header::{
    HeaderMap, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use baton_worker::Drain;

/// The path the WebSocket is served on.
pub const PATH: &str = "/ws";

/// How long a draining worker waits for the client's close frame once it
/// sent its own.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// A WebSocket accepted on an HTTP/1 connection: its `101` is on its way;
/// once it is written, [`Accepted::echo`] takes the connection over. (The
/// server counts the connection open as long as the socket lives.)
pub struct Accepted {
    upgrade: OnUpgrade,
}

/// Whether `req` asks for the WebSocket.
pub fn is_asked<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET && req.uri().path() == PATH
}

/// Answers a request for the WebSocket: `101 Switching Protocols` and the
/// connection to take over once it is written, or `400` and why not.
pub fn accept<B>(mut req: Request<B>) -> (Response<Full<Bytes>>, Option<Accepted>) {
    let key = match handshake_key(&req) {
        Ok(key) => key,
        Err(problem) => return (bad_request(problem), None),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .expect("base64 is a valid header value");
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    let accepted = Accepted { upgrade };
    (response, Some(accepted))
}

/// The client's `Sec-WebSocket-Key`, if the request is a valid opening
/// handshake (RFC 6455 §4.2.1), or what is wrong with it.
fn handshake_key<B>(req: &Request<B>) -> Result<String, &'static str> {
    if req.version() != Version::HTTP_11 {
        return Err("WebSocket is served over HTTP/1.1 only (not over HTTP/2)");
    }
    let headers = req.headers();
    if !lists(headers, UPGRADE, "websocket") || !lists(headers, CONNECTION, "upgrade") {
        return Err("/ws is a WebSocket: send Upgrade: websocket and Connection: Upgrade");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("only WebSocket version 13 is served");
    }
    headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|key| key.to_str().ok())
        .map(str::to_owned)
        .ok_or("Sec-WebSocket-Key is missing")
}

/// Whether header `name` lists `token` (case-insensitive, comma-separated).
fn lists(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

fn bad_request(problem: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(format!("{problem}\n")));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

impl Accepted {
    /// Echoes messages until the client closes, or the drain starts: then
    /// sends a close frame (1001, going away), waits a moment for the
    /// client's, and closes the socket.
    pub async fn echo(self, drain: Drain) {
        let upgraded = match self.upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return debug!(cause = %e, "WebSocket upgrade failed"),
        };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let draining = async move { drain.started().await };
        tokio::pin!(draining);
        loop {
            tokio::select! {
                message = socket.next() => match message {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                        if socket.send(message).await.is_err() {
                            return;
                        }
                    }
                    // A ping's pong, or the reply to a client's close, is
                    // written on the next flush.
                    Some(Ok(_)) => {
                        if socket.flush().await.is_err() {
                            return;
                        }
                    }
                    Some(Err(_)) | None => return,
                },
                _ = &mut draining => break,
            }
        }
        let going_away = CloseFrame {
            code: CloseCode::Away,
            reason: "the server is restarting".into(),
        };
        if socket.close(Some(going_away)).await.is_err() {
            return;
        }
        // The client's close frame; anything it sent before it is dropped.
        let _ = timeout(CLOSE_REPLY_WAIT, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
        // The server closes the TCP connection first (RFC 6455 §7.1.1),
        // lingering, so that its close frame is not lost to a reset.
        let _ = socket.get_mut().shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get(PATH);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_opening_handshake_is_checked() {
        let good = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(
            handshake_key(&request(&good)).as_deref(),
            Ok("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert!(handshake_key(&request(&good[1..])).is_err(), "no Upgrade");
        assert!(handshake_key(&request(&good[..3])).is_err(), "no key");
        let mut http2 = request(&good);
        *http2.version_mut() = Version::HTTP_2;
        assert!(handshake_key(&http2).unwrap_err().contains("HTTP/2"));
        // RFC 6455 §1.3's example.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
