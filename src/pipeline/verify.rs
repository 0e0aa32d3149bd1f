//! The verify driver: every message of a source (one message, an mbox, a maildir or queue
//! directory, a pipe) checked on the pool, the verdicts handed back in input order. How a
//! message is checked (keys, policy, clock) is the caller's `check`; what is done with the
//! verdicts (text, JSON, counts) is the caller's `emit`.

use super::engine::{map_dir, map_mbox, Framing};
use super::input::{
    list_messages, open_mbox, owns_lone_message, shard_range, too_large_reason, InputKind, Shard, Source,
};
use super::mbox::MboxFormat;
use super::BulkError;
use crate::dkim::arc::ArcVerdict;
use crate::dkim::verify::{DkimResult, Reason, Verdict};

/// What checking one message found.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    /// One verdict per DKIM-Signature (none: unsigned).
    pub verdicts: Vec<Verdict>,
    /// The ARC chain result, when the run validates chains.
    pub arc: Option<ArcVerdict>,
}

impl Checks {
    /// A message that was not checked: one permerror verdict saying why, and no chain result.
    pub fn not_checked(reason: Reason) -> Checks {
        Checks { verdicts: vec![Verdict::new(DkimResult::PermError, reason)], arc: None }
    }
}

/// One checked message, in input order.
pub struct Checked<'a> {
    /// How reports name it: `FILE`, `FILE#N` for the N-th message of an mbox.
    pub name: &'a str,
    /// The input file (for a directory: the message file).
    pub file: &'a str,
    /// 1-based message number within the file.
    pub index: u64,
    /// Byte offset of the message in the file.
    pub offset: u64,
    /// What was found.
    pub checks: Checks,
}

/// How a verify run reads its sources.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// The mbox flavour.
    pub fmt: MboxFormat,
    /// This run's share of the inputs (`--shard K/N`), or all of them.
    pub shard: Option<Shard>,
    /// Who frames the messages of an mbox.
    pub framing: Framing,
    /// Largest message checked; a larger one gets a permerror verdict.
    pub max_message: u64,
}

/// Checks every message of `source`. `check` runs on the pool (a message larger than
/// `reading.max_message`, a directory entry that is not a message, or a panic in `check` gets one
/// `permerror` verdict saying why and no chain result, and the run goes on); `emit` runs on this thread in input
/// order.
pub fn verify_source(
    source: Source,
    reading: Reading,
    pool: &rayon::ThreadPool,
    check: &(dyn Fn(&[u8]) -> Checks + Sync),
    mut emit: impl FnMut(Checked<'_>) -> std::io::Result<()> + Send,
) -> Result<(), BulkError> {
    let Reading { fmt, shard, framing, max_message } = reading;
    let shown = source.path.display().to_string();
    let out_err = |error| BulkError::Output { path: "stdout".into(), error };
    let guarded = |m: &[u8]| -> Checks {
        if m.len() as u64 > max_message {
            return Checks::not_checked(Reason::NotChecked(too_large_reason(m.len() as u64, max_message)));
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(m)))
            .unwrap_or_else(|_| Checks::not_checked(Reason::Panic))
    };
    match source.kind {
        InputKind::Message if !owns_lone_message(shard) => Ok(()),
        InputKind::Message => {
            let checks = guarded(&source.read_message()?);
            emit(Checked { name: &shown, file: &shown, index: 1, offset: 0, checks }).map_err(out_err)
        }
        InputKind::Mbox => {
            let mapped = match source.spooled {
                Some(m) => m,
                None => open_mbox(&source.path)?,
            };
            let mut index = 0u64;
            let range = shard_range(shard, mapped.len());
            map_mbox(
                &mapped,
                fmt,
                range,
                pool,
                framing,
                true,
                |m| m.with_unquoted(guarded),
                |results| {
                    for (e, checks) in results {
                        index += 1;
                        let name = format!("{shown}#{index}");
                        let offset = e.from_line.start as u64;
                        emit(Checked { name: &name, file: &shown, index, offset, checks }).map_err(out_err)?;
                    }
                    Ok(())
                },
            )
            .map(|_| ())
        }
        InputKind::Maildir | InputKind::QueueDir => {
            let mut entries = list_messages(&source.path, source.kind)?;
            if let Some(shard) = shard {
                entries.retain(|e| shard.owns(&e.rel));
            }
            map_dir(
                &source.path,
                &entries,
                max_message,
                pool,
                |_, item| match item {
                    Ok((m, _)) => guarded(m),
                    Err(why) => Checks::not_checked(Reason::NotChecked(why.to_string())),
                },
                |rel, checks| {
                    let name = source.path.join(rel).display().to_string();
                    emit(Checked { name: &name, file: &name, index: 1, offset: 0, checks }).map_err(out_err)
                },
            )
            .map(|_| ())
        }
    }
}
