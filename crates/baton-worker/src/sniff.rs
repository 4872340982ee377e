//! Which protocol a new connection speaks. An HTTP/2 client with prior
//! knowledge (h2c) starts with a fixed 24-byte preface; anything else is
//! HTTP/1. The built-in server serves the two with different code (hyper for
//! HTTP/1, h2 itself for HTTP/2, whose drain it must control), so it reads
//! just enough to tell them apart and puts those bytes back in front of the
//! stream.
//!
//! The read is not timed here: the connection's task bounds it like any
//! other request head (see [`super::connection`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The first bytes an HTTP/2 client sends (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection turned out to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Reads until the bytes so far are the whole HTTP/2 preface or cannot be
/// its start, and returns the protocol with the stream, those bytes first.
pub async fn sniff<S>(mut stream: S) -> io::Result<(Protocol, Rewound<S>)>
where
    S: AsyncRead + Unpin,
{
    let mut read = Vec::with_capacity(HTTP2_PREFACE.len());
    let protocol = loop {
        let wanted = HTTP2_PREFACE.len() - read.len();
        let mut chunk = [0u8; HTTP2_PREFACE.len()];
        let n = stream.read(&mut chunk[..wanted]).await?;
        read.extend_from_slice(&chunk[..n]);
        if n == 0 || !HTTP2_PREFACE.starts_with(&read) {
            break Protocol::Http1;
        }
        if read.len() == HTTP2_PREFACE.len() {
            break Protocol::Http2;
        }
    };
    let rewound = Rewound {
        first: Bytes::from(read),
        stream,
    };
    Ok((protocol, rewound))
}

/// A stream whose first bytes, already read, are read again.
#[derive(Debug)]
pub struct Rewound<S> {
    first: Bytes,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.has_remaining() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn sniffed(sent: &[u8]) -> (Protocol, Vec<u8>) {
        let (mut client, ours) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        drop(client);
        let (protocol, mut rewound) = sniff(ours).await.unwrap();
        let mut again = Vec::new();
        rewound.read_to_end(&mut again).await.unwrap();
        (protocol, again)
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_every_byte_is_read_again() {
        let mut sent = HTTP2_PREFACE.to_vec();
        sent.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(sniffed(&sent).await, (Protocol::Http2, sent));
    }

    #[tokio::test]
    async fn a_request_line_is_http1_from_its_first_byte() {
        let sent = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        assert_eq!(sniffed(&sent).await, (Protocol::Http1, sent));
    }

    #[tokio::test]
    async fn half_a_preface_then_the_end_is_http1() {
        let sent = HTTP2_PREFACE[..10].to_vec();
        assert_eq!(sniffed(&sent).await, (Protocol::Http1, sent));
    }
}
