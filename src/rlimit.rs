//! The open-file limit. Every connection a worker holds is a descriptor, and
//! systemd starts services with a soft `RLIMIT_NOFILE` of 1024: a worker
//! would refuse work near a thousand connections while the hard limit allows
//! hundreds of times more. The master raises its soft limit to the hard one
//! at start, before any worker exists, so that every worker (and every
//! program a COMMAND worker runs) inherits it.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The open-file limit the master runs with, after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit before baton raised it.
    pub was: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit. A failure leaves the
/// limit as it was and says why: the master runs on with fewer descriptors.
pub fn raise_open_files() -> Result<OpenFiles, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFiles {
        was: soft,
        soft: now,
        hard,
    })
}
