//! The command line's errors and exit codes: [`CliError`], the sysexits.h values, and
//! [`exit_code`], the one place that maps an error (ours or the library's) to a code. Does not
//! print anything: `main` does.

use dkimpress::dkim::header::HeaderError;
use dkimpress::dkim::key::KeyError;
use dkimpress::dkim::sign::{SignError, SignerConfigError};
use dkimpress::pipeline::{self, BulkError};
use std::path::PathBuf;

/// sysexits.h codes used by dkimpress.
pub mod sysexits {
    /// Command line usage error.
    pub const USAGE: u8 = 64;
    /// The input is not a message we can sign.
    pub const DATAERR: u8 = 65;
    /// An input file does not exist or cannot be read.
    pub const NOINPUT: u8 = 66;
    /// Internal software error.
    pub const SOFTWARE: u8 = 70;
    /// An output file cannot be created.
    pub const CANTCREAT: u8 = 73;
    /// An I/O error on output.
    pub const IOERR: u8 = 74;
    /// Temporary failure: try again later (Postfix defers).
    pub const TEMPFAIL: u8 = 75;
    /// Configuration error (keys, settings).
    pub const CONFIG: u8 = 78;
    /// Stopped by SIGINT/SIGTERM (128 + 2, the shell convention).
    pub const INTERRUPTED: u8 = 130;
}

/// The command line's own errors: what went wrong in its terms, each kind given its exit code
/// by [`exit_code`] and nowhere else (as rustls maps its errors to alerts in one place).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or argument is wrong or missing; the message names it and the fix (64).
    #[error("{0}")]
    Usage(String),
    /// A setting is wrong (a configuration file value, a resolver that cannot start) (78).
    #[error("{0}")]
    Config(String),
    /// An input file cannot be read (66).
    #[error("{}: {error}", .path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Reading stdin failed: the MTA may try again (75).
    #[error("stdin: read failed: {0}")]
    StdinRead(std::io::Error),
    /// The message on stdin is larger than `--max-message-size` (65).
    #[error("stdin: more than {max} octets: larger than the message size limit (--max-message-size)")]
    StdinTooLarge {
        /// The limit in octets.
        max: u64,
    },
    /// A file we would create exists and `--force` was not given (73).
    #[error("{}: already exists; keep it, or pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// The output directory does not exist (73).
    #[error("{}: no such directory ({flag})", .path.display())]
    NoDirectory {
        /// The directory.
        path: PathBuf,
        /// The flag that named it.
        flag: &'static str,
    },
    /// A file cannot be created or written (73).
    #[error("{}: cannot write: {error}", .path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Writing an output stream failed (a full disk, /dev/full) (74).
    #[error("{what}: write failed: {error}")]
    Write {
        /// The output: `stdout` or a file name.
        what: String,
        /// Why.
        error: std::io::Error,
    },
    /// The benchmark's corpus or keys do not work (65).
    #[error("{0}")]
    Bench(String),
    /// A resource is busy or unreachable for now (the milter's socket in use): try again (75).
    #[error("{0}")]
    Unavailable(String),
    /// The system refused something we need that no setting can fix (signal handlers) (70).
    #[error("{0}")]
    System(String),
}

pub(super) fn usage(message: impl Into<String>) -> anyhow::Error {
    CliError::Usage(message.into()).into()
}

/// Maps an error to its exit code: the one place that does (STYLE.md).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::Usage(_) => sysexits::USAGE,
                CliError::Config(_) => sysexits::CONFIG,
                CliError::Input { .. } => sysexits::NOINPUT,
                CliError::StdinRead(_) => sysexits::TEMPFAIL,
                CliError::StdinTooLarge { .. } | CliError::Bench(_) => sysexits::DATAERR,
                CliError::Exists(_) | CliError::NoDirectory { .. } | CliError::Create { .. } => sysexits::CANTCREAT,
                CliError::Write { .. } => sysexits::IOERR,
                CliError::Unavailable(_) => sysexits::TEMPFAIL,
                CliError::System(_) => sysexits::SOFTWARE,
            };
        }
        if cause.is::<HeaderError>() {
            return sysexits::DATAERR;
        }
        if let Some(e) = cause.downcast_ref::<SignError>() {
            return sign_code(e);
        }
        if let Some(e) = cause.downcast_ref::<pipeline::MessageError>() {
            return match e {
                pipeline::MessageError::Sign(e) => sign_code(e),
                pipeline::MessageError::Select(s) => select_code(s),
                pipeline::MessageError::Seal(dkimpress::dkim::arc::SealError::Sign(e)) => sign_code(e),
                pipeline::MessageError::Seal(dkimpress::dkim::arc::SealError::Temporary(_)) => sysexits::TEMPFAIL,
                pipeline::MessageError::Seal(
                    dkimpress::dkim::arc::SealError::Closed(_) | dkimpress::dkim::arc::SealError::Full(_),
                ) => sysexits::DATAERR,
                pipeline::MessageError::Panic(_) => sysexits::SOFTWARE,
            };
        }
        if let Some(s) = cause.downcast_ref::<dkimpress::select::SelectError>() {
            return select_code(s);
        }
        if let Some(e) = cause.downcast_ref::<KeyError>() {
            return match e {
                KeyError::Sign => sysexits::SOFTWARE,
                _ => sysexits::CONFIG,
            };
        }
        if let Some(e) = cause.downcast_ref::<BulkError>() {
            return match e {
                BulkError::Input { .. } => sysexits::NOINPUT,
                BulkError::Format { .. } => sysexits::DATAERR,
                BulkError::Output { .. } => sysexits::IOERR,
                BulkError::Interrupted => sysexits::INTERRUPTED,
                BulkError::Temporary { .. } => sysexits::TEMPFAIL,
                BulkError::Lock(dkimpress::pipeline::lock::LockError::Busy { .. }) => sysexits::TEMPFAIL,
                BulkError::Lock(dkimpress::pipeline::lock::LockError::Io { .. }) => sysexits::CANTCREAT,
                BulkError::Create(_) => sysexits::CANTCREAT,
            };
        }
        if cause.is::<dkimpress::pipeline::io::OutputError>() {
            return sysexits::CANTCREAT;
        }
        if let Some(e) = cause.downcast_ref::<dkimpress::select::TableError>() {
            return match e {
                dkimpress::select::TableError::Database { .. } => sysexits::TEMPFAIL,
                _ => sysexits::CONFIG,
            };
        }
        if cause.is::<dkimpress::lookup::ZoneError>() || cause.is::<crate::cli::conf::ConfError>() {
            return sysexits::CONFIG;
        }
        if cause.is::<SignerConfigError>()
            || cause.is::<dkimpress::select::BuildError>()
            || cause.is::<dkimpress::dkim::genkey::GenKeyError>()
        {
            return sysexits::CONFIG;
        }
    }
    // An I/O error nothing above claimed is an output that failed (a full disk, /dev/full).
    if err.chain().any(|c| c.is::<std::io::Error>()) {
        return sysexits::IOERR;
    }
    sysexits::SOFTWARE
}

fn sign_code(e: &SignError) -> u8 {
    match e {
        SignError::Header(_) | SignError::NoFrom => sysexits::DATAERR,
        SignError::Key(_) | SignError::BodyNotHashed(_) => sysexits::SOFTWARE,
    }
}

fn select_code(e: &dkimpress::select::SelectError) -> u8 {
    use dkimpress::select::SelectError;
    match e {
        SelectError::Temporary(_) => sysexits::TEMPFAIL,
        SelectError::Config(_) => sysexits::CONFIG,
        SelectError::NoKey(_) | SelectError::NoAddress(_) => sysexits::DATAERR,
    }
}

/// Whether the error is a closed output pipe (the reader went away), also when a bulk run
/// carries it in [`BulkError::Output`] (`sign ... | head` exits 74 quietly).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let is_epipe = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    err.chain().any(|c| match c.downcast_ref::<BulkError>() {
        Some(BulkError::Output { error, .. }) => is_epipe(error),
        _ => c.downcast_ref::<std::io::Error>().is_some_and(is_epipe),
    })
}

/// A failed write: exit 74 with a message. A closed pipe stays a bare `io::Error`, so that
/// `main` exits 74 without one (the reader chose to stop).
pub(super) fn write_failed(what: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return anyhow::Error::new(e);
    }
    if e.kind() == std::io::ErrorKind::Interrupted && dkimpress::pipeline::io::interrupted() {
        return BulkError::Interrupted.into();
    }
    CliError::Write { what: what.to_string(), error: e }.into()
}
