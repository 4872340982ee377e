//! A COMMAND cannot shut the shared listeners down.
//!
//! `shutdown()` acts on a socket, not on a descriptor: a worker that calls
//! it on the listener it was given (sanic's stop does, with SHUT_RDWR)
//! stops the listening socket for the master and every other worker, so
//! that connections are refused, and those waiting in the queue reset,
//! until the master listens on it again (see `crate::master`'s listening
//! watch, which does within milliseconds). The exec stage prevents it in
//! the first place: a seccomp filter, installed just before the exec and
//! kept by the program and its children, answers `shutdown(fd, SHUT_RD)`
//! and `shutdown(fd, SHUT_RDWR)` on the listeners' descriptor numbers
//! (3, 4, …) with success and does nothing. A worker that is stopping loses
//! nothing by it: it stops accepting all the same when it closes the
//! descriptor or exits. `SHUT_WR`, which ends a connection's sending side,
//! and every other descriptor are untouched.
//!
//! What the filter cannot see: a copy of a listener under another number
//! (`dup()`, as uvicorn's `--fd` makes one). The master's watch covers
//! those.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The filter for listeners at descriptors `first .. first + count`.
pub fn filter(first: i32, count: usize) -> Result<BpfProgram, String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("{e}"))?;
    let rules = (0..count)
        .map(|i| {
            let fd = (first + i as i32) as u64;
            SeccompRule::new(vec![
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, fd)?,
                SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    libc::SHUT_WR as u64,
                )?,
            ])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(
        [(libc::SYS_shutdown, rules)].into_iter().collect(),
        SeccompAction::Allow,
        // errno 0: the call returns 0, "done".
        SeccompAction::Errno(0),
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Installs [`filter`] for this process and what it execs.
pub fn install(first: i32, count: usize) -> Result<(), String> {
    if count == 0 {
        return Ok(());
    }
    let program: Vec<libc::sock_filter> = filter(first, count)?
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    crate::fd::install_seccomp(&program, true).map_err(|e| e.to_string())
}
