//! Listeners for a worker run without baton (`cargo run`, a test, systemd
//! itself): the sockets systemd's socket activation passed (`LISTEN_FDS`),
//! else the addresses in `BATON_LISTEN`, else the builder's address.

use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use baton_protocol::fd;
use socket2::{Domain, SockRef};

use crate::error::Error;
use crate::handoff::{NamedListener, ReceivedListener};

/// The environment variable naming the addresses to listen on when no
/// sockets were passed: `HOST:PORT`, several separated by commas.
pub const LISTEN_ENV: &str = "BATON_LISTEN";

/// `LISTEN_FDS` are taken once: a second server in the process binds.
static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// The listeners to serve: inherited ones if any, else bound here.
pub fn listeners(default_address: &str) -> Result<Vec<NamedListener>, Error> {
    let inherited = inherited()?;
    if !inherited.is_empty() {
        return Ok(inherited);
    }
    let addresses = std::env::var(LISTEN_ENV).unwrap_or_else(|_| default_address.to_owned());
    addresses
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(bind)
        .collect()
}

fn bind(address: &str) -> Result<NamedListener, Error> {
    let failed = |source| Error::Listen {
        address: address.to_owned(),
        source,
    };
    let listener = TcpListener::bind(address).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    tracing::info!(address, "listening");
    Ok(NamedListener {
        name: address.to_owned(),
        listener: ReceivedListener::Tcp(listener),
    })
}

/// The sockets passed by socket activation to this process, adopted.
fn inherited() -> Result<Vec<NamedListener>, Error> {
    let passed = sd_notify::listen_fds_with_names().map_err(|e| Error::BadListener {
        name: "LISTEN_FDS".into(),
        reason: format!(
            "bad socket activation variables (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES): {e}"
        ),
    })?;
    if passed.len() == 0 || INHERITED_TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let mut listeners = Vec::new();
    for (raw, name) in passed {
        let bad = |reason: String| Error::BadListener {
            name: name.clone(),
            reason,
        };
        // SAFETY: LISTEN_PID names this process, so these descriptors were
        // passed to it alone; the flag above makes this the only place that
        // adopts them.
        let fd: OwnedFd = unsafe { fd::adopt_inherited(raw) }.map_err(|e| bad(e.to_string()))?;
        let domain = fd::check_listening_socket(fd.as_fd()).map_err(bad)?;
        // This process is the only one serving them: O_NONBLOCK is its to set.
        SockRef::from(&fd)
            .set_nonblocking(true)
            .map_err(|e| bad(e.to_string()))?;
        let listener = if domain == Domain::UNIX {
            ReceivedListener::Unix(UnixListener::from(fd))
        } else {
            ReceivedListener::Tcp(TcpListener::from(fd))
        };
        tracing::info!(name = %name, "serving an inherited socket");
        listeners.push(NamedListener { name, listener });
    }
    Ok(listeners)
}
