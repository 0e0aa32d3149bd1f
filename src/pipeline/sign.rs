//! The sign driver: one message signed ([`sign_message`]), whole mboxes and directories
//! signed through the engine into their outputs, messages that cannot be signed passed through
//! and reported.

use super::engine::{map_dir, map_mbox, Framing, Item};
use super::input::{list_messages, shard_range, too_large_reason, DirEntry, InputKind, Shard};
use super::io;
use super::mbox::{self, MboxFormat};
use super::os::Mapped;
use super::report::{Problem, Progress, Summary};
use super::{interrupted, BulkError};
use crate::dkim::header::Message;
use crate::dkim::sign::Signer;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How each message is signed, in every mode: which keys, chosen by what, at what time, and
/// what else changes.
pub struct SignPolicy {
    /// Which signatures each message gets.
    pub keys: crate::select::KeySource,
    /// The envelope sender that chooses the key instead of From (`--sender`).
    pub sender: Option<String>,
    /// Remove existing DKIM-Signature fields whose `d=` is one of our domains.
    pub strip_own: bool,
    /// Unix time for `t=`.
    pub now: u64,
    /// Largest message signed; larger ones are passed through and reported.
    pub max_message: u64,
}

/// Settings of a bulk run: the policy of each message, and how the inputs are read.
pub struct BulkOptions {
    /// How each message is signed.
    pub policy: SignPolicy,
    /// The mbox flavour.
    pub mbox_format: MboxFormat,
    /// This run's share of the inputs (`--shard K/N`), or all of them.
    pub shard: Option<Shard>,
    /// Who frames the messages of an mbox (`--framing`, hidden: for measurements).
    pub framing: Framing,
}

/// What happened to one message.
pub(crate) enum Outcome {
    Signed {
        headers: Vec<u8>,
        drop: Vec<Range<usize>>,
    },
    /// Left unsigned: the message cannot be signed (the reason).
    Unsigned(String),
    /// Left unsigned because no key is configured for its author (the reason): written
    /// unchanged like `Unsigned`, but a normal outcome for list mail, not a failure.
    NoKey(String),
    /// The key store cannot be reached: the run stops (exit 75) without replacing anything,
    /// since passing the rest through unsigned would need a second run that double-signs.
    Temporary(String),
}

/// Signs one message.
pub(crate) fn process(policy: &SignPolicy, msg: mbox::Stored<'_>) -> Outcome {
    if msg.len() as u64 > policy.max_message {
        return Outcome::Unsigned(too_large_reason(msg.len() as u64, policy.max_message));
    }
    // One message that makes the signer panic must not end the run: it is passed through and
    // reported like any other message that cannot be signed.
    match guarded("signing", || sign_stored(policy, msg)) {
        Ok((headers, drop)) => Outcome::Signed { headers, drop },
        Err(e) => match e.disposition() {
            Disposition::NoKey => Outcome::NoKey(e.to_string()),
            Disposition::Temporary => Outcome::Temporary(e.to_string()),
            Disposition::Unsignable | Disposition::Broken => Outcome::Unsigned(e.to_string()),
        },
    }
}

/// Why one message was not signed: the message itself, the choice of its keys, or signing.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The message cannot be signed (its header block, no From) or the backend failed.
    #[error(transparent)]
    Sign(#[from] crate::dkim::sign::SignError),
    /// No key could be chosen: none configured for the author, no usable From address, a
    /// broken table entry, or a key store that cannot be reached.
    #[error(transparent)]
    Select(#[from] crate::select::SelectError),
    /// The signer panicked (a bug) while doing what is named.
    #[error("internal error (panic) while {0}; please report it")]
    Panic(&'static str),
}

/// What a message that was not signed means, in every mode. Each mode answers each
/// disposition its own way (an exit code, a milter reply, passed through and reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// No key is configured for its author: it goes on unsigned, as OpenDKIM passes it; not a
    /// failure.
    NoKey,
    /// The message itself cannot be signed (a header block that does not parse, no From, no
    /// usable author address, a control character in a field): retrying cannot help, so it
    /// goes on unsigned rather than being lost.
    Unsignable,
    /// The key store cannot be reached now: a retry later can sign it.
    Temporary,
    /// Our side is broken (a key or table entry that cannot be used, the crypto backend, a
    /// panic): the operator must act.
    Broken,
}

impl MessageError {
    /// What this failure means for the message.
    pub fn disposition(&self) -> Disposition {
        use crate::dkim::sign::SignError;
        use crate::select::SelectError;
        match self {
            MessageError::Select(SelectError::NoKey(_)) => Disposition::NoKey,
            MessageError::Select(SelectError::NoAddress(_))
            | MessageError::Sign(SignError::Header(_) | SignError::NoFrom) => Disposition::Unsignable,
            MessageError::Select(SelectError::Temporary(_)) => Disposition::Temporary,
            MessageError::Select(SelectError::Config(_))
            | MessageError::Sign(SignError::Key(_) | SignError::BodyNotHashed(_))
            | MessageError::Panic(_) => Disposition::Broken,
        }
    }

    /// Whether the only reason is that no key is configured for the author.
    pub fn is_no_key(&self) -> bool {
        self.disposition() == Disposition::NoKey
    }
}

/// Runs `f`, one step of signing named by `what`, turning a panic into
/// [`MessageError::Panic`]: one message that trips a bug must not take down a bulk run or a
/// daemon connection.
pub fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T, MessageError>) -> Result<T, MessageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(Err(MessageError::Panic(what)))
}

/// Signs one message: the header fields to add on top, and the byte ranges of old own
/// signatures to remove (empty unless `strip_own`).
pub fn sign_message(policy: &SignPolicy, msg: &[u8]) -> Result<(Vec<u8>, Vec<Range<usize>>), MessageError> {
    let parsed = Message::parse(msg).map_err(crate::dkim::sign::SignError::from)?;
    sign_parsed_message(policy, &parsed, crate::dkim::sign::Body::Whole(parsed.body))
}

/// The signing step every bulk and pipe mode shares: the keys `policy` chooses for `parsed`,
/// its header fields signed and `body` hashed; the new fields in the message's line ending,
/// and the old own signatures to remove (with `strip_own`). The milter takes the same steps
/// apart, choosing the keys when the header block ends and signing when the body has streamed
/// past.
pub fn sign_parsed_message(
    policy: &SignPolicy,
    parsed: &Message,
    body: crate::dkim::sign::Body<'_>,
) -> Result<(Vec<u8>, Vec<Range<usize>>), MessageError> {
    let signers = policy.keys.signers_for(parsed, policy.sender.as_deref())?;
    let headers = crate::dkim::sign::sign_parsed_body(&signers, parsed, body, policy.now)?;
    let drop = if policy.strip_own { own_signatures(&signers, parsed) } else { vec![] };
    Ok((headers, drop))
}

/// [`sign_message`] for a message as an mbox stores it. The header block is parsed from the
/// stored octets and the body hashed in the pieces between the quoting `>`s, so a message with
/// quoted `>From ` lines is signed without an unquoted copy. Quoting is only ever in the body
/// of a well-formed message; otherwise (a quoted line in the header block, a header block that
/// does not parse) the message is unquoted and signed as a whole, with the same result.
pub fn sign_stored(policy: &SignPolicy, msg: mbox::Stored<'_>) -> Result<(Vec<u8>, Vec<Range<usize>>), MessageError> {
    let Some(&first_quote) = msg.quotes.first() else {
        return sign_message(policy, msg.bytes);
    };
    let parsed = match Message::parse(msg.bytes) {
        Ok(p) if first_quote >= p.body_offset => p,
        _ => return msg.with_unquoted(|m| sign_message(policy, m)),
    };
    // The header block is the same stored and unquoted: offsets in it hold for both.
    let pieces = msg.body_pieces(parsed.body_offset);
    sign_parsed_message(policy, &parsed, crate::dkim::sign::Body::Pieces(msg.bytes, &pieces))
}

/// Byte ranges of DKIM-Signature fields whose `d=` is a domain one of `signers` signs for
/// (key rotation). Other domains' signatures are never touched. Offsets lie in the header
/// block, which mbox quoting never changes, so they are valid in the stored bytes too.
pub(crate) fn own_signatures(signers: &[Signer], parsed: &Message) -> Vec<Range<usize>> {
    parsed
        .fields
        .iter()
        .filter(|f| f.is("dkim-signature"))
        .filter(|f| {
            crate::dkim::tags::value(f.value(), "d").is_some_and(|d| {
                let d = crate::dkim::tags::to_a_labels(&d);
                signers.iter().any(|s| s.domain().eq_ignore_ascii_case(&d))
            })
        })
        .map(|f| f.offset..f.offset + f.raw.len())
        .collect()
}

/// Replaces (or creates) `dest` atomically with `headers` + `msg` minus `drop`, the new file
/// taking over what `keep` says. A link, device or FIFO at `dest` is refused.
pub fn write_signed_file(
    dest: &Path,
    keep: &io::Keep,
    headers: &[u8],
    msg: &[u8],
    drop: &[Range<usize>],
) -> Result<(), BulkError> {
    let mut f = io::Output::open(dest, keep, false)?;
    let out_err = |error| BulkError::Output { path: dest.display().to_string(), error };
    {
        let mut w = BufWriter::new(&mut f);
        w.write_all(headers).map_err(out_err)?;
        write_without(&mut w, msg, drop).map_err(out_err)?;
        w.flush().map_err(out_err)?;
    }
    f.commit().map_err(|error| match error.kind() {
        // SIGINT/SIGTERM arrived before the rename: the run stops as interrupted (exit 130).
        std::io::ErrorKind::Interrupted if interrupted() => BulkError::Interrupted,
        _ => out_err(error),
    })
}

/// Writes `data` without the `drop` ranges.
pub fn write_without(w: &mut dyn Write, data: &[u8], drop: &[Range<usize>]) -> std::io::Result<()> {
    without(data, drop).try_for_each(|p| w.write_all(p))
}

/// The pieces of `data` around the `drop` ranges (ascending, inside `data`), in order.
fn without<'a>(data: &'a [u8], drop: &'a [Range<usize>]) -> impl Iterator<Item = &'a [u8]> {
    let starts = std::iter::once(0).chain(drop.iter().map(|r| r.end));
    let ends = drop.iter().map(|r| r.start).chain(std::iter::once(data.len()));
    starts.zip(ends).map(move |(s, e)| &data[s..e])
}

/// Accounts for one message in `summary`, reporting a problem as it happens. The progress bar
/// is the caller's (once per unit: it formats and locks).
pub(crate) fn account(
    summary: &mut Summary,
    progress: &Progress,
    outcome: &Outcome,
    file: &str,
    index: u64,
    offset: u64,
    len: u64,
) {
    summary.messages += 1;
    summary.bytes += len;
    match outcome {
        Outcome::Signed { .. } => summary.signed += 1,
        Outcome::Unsigned(reason) | Outcome::NoKey(reason) | Outcome::Temporary(reason) => {
            let no_key = matches!(outcome, Outcome::NoKey(_));
            summary.passed_through += 1;
            summary.no_key += u64::from(no_key);
            let p = Problem { file: file.to_string(), index, offset, reason: reason.clone(), no_key };
            progress.problem(&p);
            summary.problems.push(p);
        }
    }
}

/// Signs every message of the mapped mbox `mapped` (shown as `path`) into `out`: the output is
/// the input with the new header fields inserted after each `From ` line (and own old
/// signatures removed with `strip_own`), byte for byte otherwise.
///
/// `out` should be unbuffered: each unit of messages goes out in one vectored write straight
/// from the map (the new header fields between the slices), with no copy in user space.
pub fn sign_mbox(
    mapped: &Mapped,
    path: &Path,
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    out: &mut (dyn Write + Send),
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let data: &[u8] = mapped;
    let shown = path.display().to_string();
    let out_err = |error| BulkError::Output { path: "output".to_string(), error };
    let range = shard_range(opts.shard, data.len());
    // A byte order mark belongs to the first shard's output.
    if range.start == 0 {
        out.write_all(&data[..mbox::bom_len(data)]).map_err(out_err)?;
    }
    let mut index = 0u64;
    let cpu = map_mbox(
        mapped,
        opts.mbox_format,
        range,
        pool,
        opts.framing,
        |msg| process(&opts.policy, msg),
        |results| {
            let temporary = results.iter().enumerate().find_map(|(i, (_, o))| match o {
                Outcome::Temporary(reason) => Some((index + 1 + i as u64, reason)),
                _ => None,
            });
            if let Some((at, reason)) = temporary {
                return Err(BulkError::Temporary { path: format!("{shown}#{at}"), reason: reason.clone() });
            }
            // One allocation per unit (up to a few thousand slices), not per message.
            let mut iov = Vec::with_capacity(results.len() * 3);
            for (e, o) in &results {
                iov.push(std::io::IoSlice::new(&data[e.from_line.clone()]));
                let stored = &data[e.data.clone()];
                match o {
                    Outcome::Signed { headers, drop } => {
                        iov.push(std::io::IoSlice::new(headers));
                        iov.extend(without(stored, drop).map(std::io::IoSlice::new));
                    }
                    _ => iov.push(std::io::IoSlice::new(stored)),
                }
            }
            io::write_all_vectored(out, &mut iov).map_err(out_err)?;
            let mut bytes = 0;
            for (e, o) in &results {
                index += 1;
                let len = (e.data.end - e.from_line.start) as u64;
                account(summary, progress, o, &shown, index, e.from_line.start as u64, len);
                bytes += len;
            }
            progress.advance(bytes, summary.messages);
            // The new header fields were allocated on the workers: freeing them here, one by
            // one, was the writer's largest cost per small message. A worker frees them.
            drop(iov);
            pool.spawn(move || drop(results));
            Ok(())
        },
    )?;
    summary.serial_cpu += cpu;
    out.flush().map_err(out_err)
}

/// Where directory outputs go.
#[derive(Debug, Clone)]
pub enum DirOutput {
    /// The same relative paths under this directory.
    To(PathBuf),
    /// Each file replaced atomically.
    InPlace,
}

/// Signs each message file of a maildir or queue directory. Each output file appears
/// atomically; a message left unsigned is copied unchanged (`To`) or left alone (`InPlace`).
/// With `To`, a maildir's output gets `cur/`, `new/` and `tmp/`, so that mail readers open it.
pub fn sign_dir(
    dir: &Path,
    kind: InputKind,
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    output: &DirOutput,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let mut entries = list_messages(dir, kind)?;
    if let Some(shard) = opts.shard {
        entries.retain(|e| shard.owns(&e.rel));
    }
    if let DirOutput::To(out) = output {
        let mut parents: Vec<PathBuf> = entries.iter().filter_map(|f| f.rel.parent().map(|p| out.join(p))).collect();
        if kind == InputKind::Maildir {
            parents.extend(["cur", "new", "tmp"].iter().map(|d| out.join(d)));
        }
        parents.sort();
        parents.dedup();
        parents.push(out.clone());
        for p in parents {
            std::fs::create_dir_all(&p).map_err(|error| BulkError::Output { path: p.display().to_string(), error })?;
        }
    }
    sign_entries(dir, &entries, opts, pool, output, summary, progress)
}

/// Signs one message file, replaced atomically with its owner, mode and dates kept, or left as
/// it is and reported (too large, not a regular file, not signable): one entry of
/// [`sign_dir`]'s kind.
pub fn sign_file_in_place(
    path: &Path,
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(BulkError::Input { path: path.display().to_string(), reason: "not a file name".into() });
    };
    let entry = DirEntry { rel: PathBuf::from(name), odd: None };
    sign_entries(dir, std::slice::from_ref(&entry), opts, pool, &DirOutput::InPlace, summary, progress)
}

/// Signs the listed message files of `dir` into `output`.
fn sign_entries(
    dir: &Path,
    entries: &[DirEntry],
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    output: &DirOutput,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let cpu = map_dir(
        dir,
        entries,
        opts.policy.max_message,
        pool,
        |rel, item| sign_file(dir, rel, opts, output, item),
        |rel, r| {
            let (outcome, len) = r?;
            if let Outcome::Temporary(reason) = &outcome {
                return Err(BulkError::Temporary { path: dir.join(rel).display().to_string(), reason: reason.clone() });
            }
            account(summary, progress, &outcome, &dir.join(rel).display().to_string(), 1, 0, len);
            progress.advance(len, summary.messages);
            Ok(())
        },
    )?;
    summary.serial_cpu += cpu;
    Ok(())
}

pub(crate) fn sign_file(
    dir: &Path,
    rel: &Path,
    opts: &BulkOptions,
    output: &DirOutput,
    item: Item<'_>,
) -> Result<(Outcome, u64), BulkError> {
    let src = dir.join(rel);
    let dest = match output {
        DirOutput::To(out) => out.join(rel),
        DirOutput::InPlace => src.clone(),
    };
    let out_err = |error| BulkError::Output { path: dest.display().to_string(), error };
    let (buf, meta) = match item {
        Ok(x) => x,
        Err(why) => {
            // Not read as a message: copied through where that is safe, else left where it is;
            // reported either way.
            let note = match output {
                DirOutput::InPlace => "left as it is",
                DirOutput::To(_) => copy_through(&src, &dest).map_err(out_err)?,
            };
            return Ok((Outcome::Unsigned(format!("{why}: {note}")), 0));
        }
    };
    let outcome = process(&opts.policy, mbox::Stored::plain(buf));
    #[cfg(unix)]
    let keep = match output {
        // In place: the file stays its owner's, with its mode and its dates (the arrival date
        // IMAP clients show is the maildir file's mtime).
        DirOutput::InPlace => io::Keep::all_of(meta),
        DirOutput::To(_) => io::Keep::copy_of(meta),
    };
    let res = match (&outcome, output) {
        (Outcome::Signed { headers, drop }, _) => write_signed_file(&dest, &keep, headers, buf, drop),
        (Outcome::Unsigned(_) | Outcome::NoKey(_), DirOutput::To(_)) => write_signed_file(&dest, &keep, &[], buf, &[]),
        (_, DirOutput::InPlace) | (Outcome::Temporary(_), _) => Ok(()),
    };
    res?;
    Ok((outcome, buf.len() as u64))
}

/// Copies a directory entry that is not read as a message to the output directory, where that
/// is safe: a symbolic link as the same link, a regular file (too large to sign) byte for byte.
/// FIFOs, devices and sockets are not copied. Returns what was done, for the report.
pub(crate) fn copy_through(src: &Path, dest: &Path) -> std::io::Result<&'static str> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        #[cfg(unix)]
        {
            let target = std::fs::read_link(src)?;
            if std::fs::symlink_metadata(dest).is_ok() {
                std::fs::remove_file(dest)?;
            }
            std::os::unix::fs::symlink(target, dest)?;
            return Ok("copied as the same link, not signed");
        }
    }
    if meta.is_file() {
        let mut from = std::fs::File::open(src)?;
        #[cfg(unix)]
        let keep = io::Keep::copy_of(&meta);
        let mut out = io::AtomicFile::create(dest, &keep)?;
        std::io::copy(&mut from, &mut out)?;
        out.commit()?;
        return Ok("copied unchanged");
    }
    Ok("not copied")
}
