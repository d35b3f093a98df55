//! The SMTP connection is the shared line-protocol connection of `postern-net`.

pub use postern_net::conn::{Line, LineConn as Conn, ReadError, SKIP_BUDGET};

/// SMTP reads up to 16 KiB at a time (DATA streams through the same buffer).
pub const READ_CHUNK: usize = 16 * 1024;
