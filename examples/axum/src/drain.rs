//! Serving an axum app as a baton worker, draining without failing a request.
//!
//! axum's own graceful shutdown (`with_graceful_shutdown`) closes every idle
//! keep-alive connection at once, racing each client about to reuse one: that
//! client sees a reset or an early EOF. On baton's drain signal (SIGTERM),
//! [`serve`] instead:
//! - stops accepting (the other workers take the shared queue), without
//!   touching open connections;
//! - answers every later request with `Connection: close`, so each client
//!   leaves after its next answer;
//! - keeps idle keep-alive connections for the grace, or until every client
//!   has left, and only then starts axum's graceful shutdown, which closes
//!   those still idle and waits for requests in flight.

use std::io;
use std::os::fd::FromRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::header::{HeaderValue, CONNECTION};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The first listening socket baton passed, the systemd way (descriptor 3,
/// `LISTEN_FDS`, `LISTEN_PID`).
pub fn listener() -> io::Result<TcpListener> {
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let count: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !ours || count < 1 {
        return Err(io::Error::other(
            "no listening socket was passed: run me as `baton serve -- PROGRAM`",
        ));
    }
    // SAFETY: LISTEN_FDS says descriptor 3 was passed to this process, and
    // nothing else in it owns descriptor 3.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Serves `app` on `listener` until SIGTERM, then drains as the module says.
pub async fn serve(listener: TcpListener, app: Router, grace: Duration) -> io::Result<()> {
    let state = Arc::new(Drain::default());
    let app = app.layer(middleware::from_fn_with_state(
        state.clone(),
        close_when_draining,
    ));
    let (stopped_tx, stopped) = watch::channel(false);
    let listener = DrainingListener {
        inner: listener,
        state: state.clone(),
        stopped,
    };

    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        term.recv().await;
        state.draining.store(true, Ordering::SeqCst);
        let _ = stopped_tx.send(true);
        let end = tokio::time::Instant::now() + grace;
        while state.open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Default)]
struct Drain {
    draining: AtomicBool,
    open: AtomicUsize,
}

async fn close_when_draining(
    axum::extract::State(state): axum::extract::State<Arc<Drain>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if state.draining.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The listener axum serves: it stops handing out connections once the drain
/// starts, and counts the connections still open.
struct DrainingListener {
    inner: TcpListener,
    state: Arc<Drain>,
    stopped: watch::Receiver<bool>,
}

impl axum::serve::Listener for DrainingListener {
    type Io = Counted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if *self.stopped.borrow() {
                std::future::pending::<()>().await;
            }
            tokio::select! {
                accepted = self.inner.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let _ = stream.set_nodelay(true);
                        self.state.open.fetch_add(1, Ordering::SeqCst);
                        return (Counted { stream, state: self.state.clone() }, addr);
                    }
                    // Out of descriptors and the like: wait, as axum's own listener does.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                },
                _ = self.stopped.changed() => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection, counted while open.
struct Counted {
    stream: TcpStream,
    state: Arc<Drain>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.state.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
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
