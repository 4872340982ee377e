//! The GOAWAY frames a server sends on one HTTP/2 connection, read from the
//! bytes as they pass on their way to the client. HTTP/2 clients keep these
//! to themselves, and which GOAWAYs came, in which order, is what tells a
//! drain that real clients survive (one GOAWAY naming the last stream) from
//! one they may not (GOAWAY(2^31−1), then the last stream).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The last-stream id that announces a shutdown without naming a stream.
pub const ANY_STREAM: u32 = (1 << 31) - 1;

const HEADER_LEN: usize = 9;
const GOAWAY: u8 = 7;
/// A GOAWAY's last-stream id and error code.
const GOAWAY_FIXED_LEN: usize = 8;

/// One GOAWAY frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoawayFrame {
    pub last_stream: u32,
    pub error_code: u32,
}

/// How a server's frames, read so far, are laid out.
#[derive(Debug, Default)]
struct Scanner {
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The current frame is a GOAWAY: its fixed part so far.
    goaway: Option<Vec<u8>>,
    frames: Vec<GoawayFrame>,
}

impl Scanner {
    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left == 0 && self.header.len() < HEADER_LEN {
                let n = (HEADER_LEN - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.header.len() == HEADER_LEN {
                    let h = &self.header;
                    self.payload_left =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.goaway = (h[3] == GOAWAY).then(Vec::new);
                    self.header.clear();
                    if self.payload_left == 0 {
                        self.goaway = None;
                    }
                }
                continue;
            }
            let n = self.payload_left.min(bytes.len());
            if let Some(fixed) = &mut self.goaway {
                let wanted = GOAWAY_FIXED_LEN.saturating_sub(fixed.len()).min(n);
                fixed.extend_from_slice(&bytes[..wanted]);
                if fixed.len() == GOAWAY_FIXED_LEN {
                    let word =
                        |at: usize| u32::from_be_bytes(fixed[at..at + 4].try_into().unwrap());
                    self.frames.push(GoawayFrame {
                        last_stream: word(0) & ANY_STREAM,
                        error_code: word(4),
                    });
                    self.goaway = None;
                }
            }
            self.payload_left -= n;
            bytes = &bytes[n..];
            if self.payload_left == 0 {
                self.goaway = None;
            }
        }
    }
}

/// The GOAWAY frames seen on one connection, shared with the stream that
/// records them.
#[derive(Debug, Clone, Default)]
pub struct GoawayLog(Arc<Mutex<Scanner>>);

impl GoawayLog {
    /// The GOAWAY frames so far, in order.
    pub fn frames(&self) -> Vec<GoawayFrame> {
        self.0.lock().expect("not poisoned").frames.clone()
    }
}

/// A client's stream that records the server's GOAWAY frames as they are
/// read. The server sends no preface, so its bytes are frames from the
/// first.
#[derive(Debug)]
pub struct Recorded<S> {
    stream: S,
    log: GoawayLog,
}

impl<S> Recorded<S> {
    pub fn new(stream: S) -> (Self, GoawayLog) {
        let log = GoawayLog::default();
        let recorded = Recorded {
            stream,
            log: log.clone(),
        };
        (recorded, log)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            self.log.0.lock().expect("not poisoned").scan(read);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
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
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut bytes = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn goaway(last: u32) -> Vec<u8> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.extend_from_slice(b"debug data");
        frame(GOAWAY, 0, &payload)
    }

    #[test]
    fn goaways_are_found_among_other_frames_however_the_bytes_are_cut() {
        let mut bytes = frame(4, 0, &[]);
        bytes.extend(frame(1, 1, &[0x88]));
        bytes.extend(goaway(ANY_STREAM));
        bytes.extend(frame(0, 1, b"hello"));
        bytes.extend(goaway(1));
        let expected = vec![
            GoawayFrame {
                last_stream: ANY_STREAM,
                error_code: 0,
            },
            GoawayFrame {
                last_stream: 1,
                error_code: 0,
            },
        ];
        for cut in [1, 2, 5, 9, 13, bytes.len()] {
            let mut scanner = Scanner::default();
            for piece in bytes.chunks(cut) {
                scanner.scan(piece);
            }
            assert_eq!(scanner.frames, expected, "read {cut} bytes at a time");
        }
    }
}
