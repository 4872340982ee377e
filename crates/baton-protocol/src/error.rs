//! The protocol's errors. Each side treats the other as untrusted: whatever
//! breaks the protocol is one of these, for the receiver to report.

use std::io;

/// A message on a handoff socket broke the protocol. The peer is treated as failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message of {len} bytes or more exceeds the limit of {limit} bytes")]
    Oversized { len: usize, limit: usize },
    #[error("control message truncated: more descriptors were sent than the limit of {limit}")]
    ControlTruncated { limit: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("protocol version {got} is not supported (this baton speaks version {supported})")]
    Version { got: u32, supported: u32 },
    #[error("message carried {got} descriptors, expected {expected}")]
    DescriptorCount { got: usize, expected: usize },
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

/// The handoff socket between master and worker failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("handoff socket: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}
