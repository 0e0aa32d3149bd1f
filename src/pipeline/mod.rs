//! The pipeline: archives and messages in, signed (or verified) messages out.
//!
//! ```text
//! input (mbox | maildir | queue dir | message | pipe)      input.rs, mbox.rs
//!   -> messages as slices of a map, or files read into per-worker buffers
//!   -> engine: units to the rayon pool, results back in input order      engine.rs
//!   -> job per message: parse, choose keys, sign (dkim::)                message.rs
//!   -> output in input order: a stream written by one writer; a file written by
//!      the workers, each unit at the offset the writer gives it; a directory;
//!      in place (atomic, owner and times kept, locked)                    sign.rs, io.rs, lock.rs
//!   -> summary, problems, progress                                       report.rs
//! ```
//!
//! Memory is bounded by the messages in flight (at most `IN_FLIGHT` (4096) messages and about
//! `IN_FLIGHT_BYTES` (32 MiB) of input, or with parallel framing two chunks of at most 8 MiB a
//! worker (16 MiB where bodies go through the AVX-512 lanes), and as much output waiting to be
//! written): mbox
//! messages are slices of the map, results are only the new header fields, and mapped pages
//! are released once written. One message that cannot be signed, or that makes the signer
//! panic, is passed through and reported; the run goes on.
//! What stops a run is [`BulkError`]: an input or output that fails, an interruption, a key
//! store that cannot be reached.

mod engine;
mod input;
pub mod io;
pub mod lock;
pub mod mbox;
mod message;
#[allow(unsafe_code)]
pub mod os;
mod report;
mod sign;
mod verify;

pub use engine::*;
pub use input::*;
pub use message::*;
pub use report::*;
pub use sign::*;
pub use verify::*;

use std::path::Path;

pub(crate) use io::interrupted;

/// A bulk-run failure that stops the run (as opposed to a message left unsigned).
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// An input cannot be read or is not what it should be.
    #[error("{path}: {reason}")]
    Input {
        /// The input.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An input is not in the format it should be (e.g. not an mbox).
    #[error("{path}: {reason}")]
    Format {
        /// The input.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An output cannot be written.
    #[error("{path}: cannot write: {error}")]
    Output {
        /// The output.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// SIGINT or SIGTERM arrived; outputs in progress were discarded.
    #[error("interrupted: no original was replaced by partial output")]
    Interrupted,
    /// The key store cannot be reached: the run stopped, outputs in progress were discarded.
    #[error("{path}: stopped, nothing replaced: {reason}; try again later")]
    Temporary {
        /// The input being signed.
        path: String,
        /// What failed.
        reason: String,
    },
    /// An mbox to rewrite in place cannot be locked.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// An output cannot be created (as opposed to failing while written).
    #[error(transparent)]
    Create(#[from] io::OutputError),
}

pub(crate) fn input_err(path: &Path, reason: impl std::fmt::Display) -> BulkError {
    BulkError::Input { path: path.display().to_string(), reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_display_strips_control_characters() {
        let p = Problem { file: "a.mbox".into(), index: 3, offset: 120, reason: "bad\x1b[31m".into(), no_key: false };
        assert_eq!(p.to_string(), "a.mbox#3 (byte offset 120): bad?[31m");
    }
}
