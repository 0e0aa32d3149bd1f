//! The sign driver: [`sign_path`] signs every message of a source (an mbox, a maildir or
//! queue directory, a message file, a pipe read at open) through the engine into its
//! [`Destination`] (a stream, a file or directory, or the input itself, replaced atomically
//! under the mbox locks); messages that cannot be signed are passed through and reported.
//! [`write_message`] writes one message signed elsewhere to the same destinations.

use super::engine::{map_dir, map_mbox_grouped, Framing, Item, IN_FLIGHT_BYTES};
use super::input::{
    list_messages, map_mbox_file, open_mbox, owns_lone_message, shard_range, too_large_reason, DirEntry, InputKind,
    Shard, Source,
};
use super::io;
use super::lock::MboxLock;
use super::mbox::{self, MboxFormat};
use super::message::{
    guarded, sign_stored, sign_stored_group, without, write_without, Disposition, SignPolicy, Signed,
};
use super::os::Mapped;
use super::report::{Problem, Progress, Summary};
use super::{input_err, interrupted, BulkError};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    outcome(guarded("signing", || sign_stored(policy, msg)))
}

/// [`process`] of a group of messages, their bodies hashed together where they allow it
/// ([`sign_stored_group`]). Should signing them together panic, each is signed again on its
/// own, so that only a message that makes the signer panic is left unsigned; a group with a
/// message over the size limit is processed one message at a time.
pub(crate) fn process_group(policy: &SignPolicy, msgs: &[mbox::Stored<'_>]) -> Vec<Outcome> {
    let alone = || msgs.iter().map(|&m| process(policy, m)).collect();
    if msgs.iter().any(|m| m.len() as u64 > policy.max_message) {
        return alone();
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sign_stored_group(policy, msgs))) {
        Ok(results) => results.into_iter().map(outcome).collect(),
        Err(_) => alone(),
    }
}

/// What a signing result means for the run.
fn outcome(result: Signed) -> Outcome {
    match result {
        Ok((headers, drop)) => Outcome::Signed { headers, drop },
        Err(e) => match e.disposition() {
            Disposition::NoKey => Outcome::NoKey(e.to_string()),
            Disposition::Temporary => Outcome::Temporary(e.to_string()),
            Disposition::Unsignable | Disposition::Broken => Outcome::Unsigned(e.to_string()),
        },
    }
}

/// Where a sign run writes.
pub enum Destination<'a> {
    /// A stream the caller opened, such as stdout, named `name` in errors. Give it unbuffered:
    /// an mbox goes out in one vectored write per unit straight from the map. Not for a
    /// directory input.
    Stream {
        /// The stream.
        out: &'a mut (dyn Write + Send),
        /// Its name in errors (`stdout`).
        name: &'a str,
    },
    /// A file for a message or an mbox, created or replaced atomically with the permission bits
    /// of the input (a device or FIFO is written as a stream, a symbolic link refused); a
    /// directory for a maildir or queue directory, whose messages keep their file names.
    To(&'a Path),
    /// Each input replaced atomically, keeping its owner, mode and dates; an mbox under the
    /// locks mail delivery honours ([`MboxLock`]), each waited for at most `lock_timeout`.
    InPlace {
        /// How long to wait for each lock of an mbox.
        lock_timeout: Duration,
    },
}

/// Signs every message of `source` into `dest`, in input order. A message that cannot be
/// signed is passed through unchanged and reported in `summary` (and on `progress`); what stops
/// the run is a [`BulkError`]: an input or output that fails, an interruption, a key store that
/// cannot be reached, an mbox whose locks are held or that changed under them. Nothing is
/// replaced unless the whole input was signed.
pub fn sign_path(
    source: &Source,
    dest: &mut Destination<'_>,
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let path = source.path.as_path();
    match (source.kind, dest) {
        (InputKind::Mbox, dest) => sign_mbox_source(source, dest, opts, pool, summary, progress),
        (kind @ (InputKind::Maildir | InputKind::QueueDir), Destination::To(out)) => {
            sign_dir(path, kind, opts, pool, &DirOutput::To(out.to_path_buf()), summary, progress)
        }
        (kind @ (InputKind::Maildir | InputKind::QueueDir), Destination::InPlace { .. }) => {
            sign_dir(path, kind, opts, pool, &DirOutput::InPlace, summary, progress)
        }
        (InputKind::Maildir | InputKind::QueueDir, Destination::Stream { .. }) => {
            Err(input_err(path, "a directory is signed into a directory or in place, not into a stream"))
        }
        (InputKind::Message, Destination::InPlace { .. }) if !source.is_stream() => {
            sign_file_in_place(path, opts, pool, summary, progress)
        }
        (InputKind::Message, dest) => {
            if !owns_lone_message(opts.shard) {
                return write_message(dest, Some(source), &[], &[], &[]);
            }
            let msg = source.read_message()?;
            let outcome = process(&opts.policy, mbox::Stored::plain(&msg));
            let shown = path.display().to_string();
            if let Outcome::Temporary(reason) = &outcome {
                return Err(BulkError::Temporary { path: shown, reason: reason.clone() });
            }
            match &outcome {
                Outcome::Signed { headers, drop } => write_message(dest, Some(source), headers, &msg, drop)?,
                _ => write_message(dest, Some(source), &[], &msg, &[])?,
            }
            account(summary, progress, &outcome, &shown, 1, 0, msg.len() as u64);
            progress.advance(msg.len() as u64, summary.messages);
            Ok(())
        }
    }
}

/// Writes one message, `headers` + `msg` minus `drop`, to `dest`; `input` is where it was read
/// from (needed for [`Destination::InPlace`], whose file it replaces keeping its owner, mode
/// and dates; a file named by [`Destination::To`] takes its permission bits). Nothing is
/// written to a file unless all of it is.
pub fn write_message(
    dest: &mut Destination<'_>,
    input: Option<&Source>,
    headers: &[u8],
    msg: &[u8],
    drop: &[Range<usize>],
) -> Result<(), BulkError> {
    match dest {
        Destination::Stream { out, name } => out
            .write_all(headers)
            .and_then(|()| write_without(*out, msg, drop))
            .and_then(|()| out.flush())
            .map_err(|error| BulkError::Output { path: name.to_string(), error }),
        Destination::To(p) => write_signed_file(p, &keep_for(false, input), true, headers, msg, drop),
        Destination::InPlace { .. } => match input {
            Some(src) if !src.is_stream() => {
                write_signed_file(&src.path, &keep_for(true, input), true, headers, msg, drop)
            }
            _ => Err(BulkError::Output {
                path: input.map_or_else(|| "stdin".into(), |s| s.path.display().to_string()),
                error: std::io::Error::other("a pipe or device cannot be replaced in place"),
            }),
        },
    }
}

/// What a new output file takes over from the input it was signed from: in place everything
/// (owner, group, mode, times); else the permission bits of a regular file; else 0644.
fn keep_for(in_place: bool, input: Option<&Source>) -> io::Keep {
    let meta = input.filter(|s| !s.is_stream()).map(|s| std::fs::metadata(&s.path));
    match meta {
        Some(Ok(m)) if in_place => io::Keep::all_of(&m),
        Some(Ok(m)) if m.is_file() => {
            io::Keep::mode(std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        }
        _ => io::Keep::mode(0o644),
    }
}

/// An mbox signed into `dest`; in place, under its locks, held until the new file has
/// replaced it and checked unchanged right before.
fn sign_mbox_source(
    source: &Source,
    dest: &mut Destination<'_>,
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let path = source.path.as_path();
    let lock = match dest {
        Destination::InPlace { lock_timeout } if !source.is_stream() => Some(MboxLock::acquire(path, *lock_timeout)?),
        _ => None,
    };
    let mapped_here;
    let mapped: &Mapped = match (&source.spooled, &lock) {
        (Some(m), _) => m,
        (None, Some(l)) => {
            mapped_here = map_mbox_file(l.file(), path)?;
            &mapped_here
        }
        (None, None) => {
            mapped_here = open_mbox(path)?;
            &mapped_here
        }
    };
    let (target, keep) = match dest {
        Destination::Stream { out, name } => {
            return sign_mbox(mapped, path, opts, pool, UnitSink::Stream(*out), name, summary, progress)
        }
        Destination::To(d) => (*d, keep_for(false, Some(source))),
        Destination::InPlace { .. } if lock.is_some() => (path, keep_for(true, Some(source))),
        Destination::InPlace { .. } => {
            return Err(input_err(path, "is a pipe or device, which cannot be replaced in place"));
        }
    };
    let shown = target.display().to_string();
    let mut f = io::Output::open(target, &keep, true)?;
    let sink = match &mut f {
        io::Output::Atomic(a) => UnitSink::File(a.file()),
        io::Output::Stream(s) => UnitSink::Stream(s),
    };
    sign_mbox(mapped, path, opts, pool, sink, &shown, summary, progress)?;
    let committed = match (f, &lock) {
        (io::Output::Atomic(mut a), Some(l)) => a.commit_checked(|| l.check_unchanged(path)),
        (f, _) => f.commit(),
    };
    committed.map_err(|error| match error.kind() {
        std::io::ErrorKind::Interrupted => BulkError::Interrupted,
        // The mbox changed under its locks (check_unchanged): nothing replaced, run again.
        std::io::ErrorKind::Other if lock.is_some() => BulkError::Temporary { path: shown, reason: error.to_string() },
        _ => BulkError::Output { path: shown, error },
    })
}

/// Replaces (or creates) `dest` atomically with `headers` + `msg` minus `drop`, the new file
/// taking over what `keep` says. A link is refused; a device or FIFO is refused too unless
/// `streams`, when it is written as it is.
fn write_signed_file(
    dest: &Path,
    keep: &io::Keep,
    streams: bool,
    headers: &[u8],
    msg: &[u8],
    drop: &[Range<usize>],
) -> Result<(), BulkError> {
    let mut f = io::Output::open(dest, keep, streams)?;
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

/// Where [`sign_mbox`] puts each unit of signed messages.
enum UnitSink<'a> {
    /// A stream: the ordered writer writes each unit in one vectored write straight from the
    /// map (give it unbuffered).
    Stream(&'a mut (dyn Write + Send)),
    /// A regular file: the ordered writer only adds up where each unit goes, and a pool thread
    /// writes it there (`pwritev`), so that no one thread copies every output byte into the
    /// page cache.
    File(&'a std::fs::File),
}

/// Signs every message of the mapped mbox `mapped` (shown as `path`) into `out` (named
/// `out_name` in errors): the output is the input with the new header fields inserted after
/// each `From ` line (and own old signatures removed with `strip_own`), byte for byte
/// otherwise.
#[allow(clippy::too_many_arguments)]
fn sign_mbox(
    mapped: &Mapped,
    path: &Path,
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    out: UnitSink<'_>,
    out_name: &str,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let data: &[u8] = mapped;
    let shown = path.display().to_string();
    let out_err = |error| BulkError::Output { path: out_name.to_string(), error };
    let range = shard_range(opts.shard, data.len());
    // A byte order mark belongs to the first shard's output.
    let bom = if range.start == 0 { &data[..mbox::bom_len(data)] } else { &[][..] };
    let mut index = 0u64;
    // Each unit in order, before it is written: a key store that cannot be reached stops the
    // run; else every message is counted and its problem reported.
    let mut accept = |summary: &mut Summary, results: &[(mbox::MboxEntry, Outcome)]| {
        let temporary = results.iter().enumerate().find_map(|(i, (_, o))| match o {
            Outcome::Temporary(reason) => Some((index + 1 + i as u64, reason)),
            _ => None,
        });
        if let Some((at, reason)) = temporary {
            return Err(BulkError::Temporary { path: format!("{shown}#{at}"), reason: reason.clone() });
        }
        let mut bytes = 0;
        for (e, o) in results {
            index += 1;
            let len = (e.data.end - e.from_line.start) as u64;
            account(summary, progress, o, &shown, index, e.from_line.start as u64, len);
            bytes += len;
        }
        progress.advance(bytes, summary.messages);
        Ok(())
    };
    let work = |msg: mbox::Stored<'_>| process(&opts.policy, msg);
    let work_group = |msgs: &[mbox::Stored<'_>]| process_group(&opts.policy, msgs);
    let wide = super::message::lanes_for(&opts.policy);
    let cpu = match out {
        UnitSink::Stream(out) => {
            out.write_all(bom).map_err(out_err)?;
            let cpu = map_mbox_grouped(
                mapped,
                opts.mbox_format,
                range,
                pool,
                opts.framing,
                true,
                work,
                work_group,
                wide,
                |results| {
                    accept(summary, &results)?;
                    // One allocation per unit (up to a few thousand slices), not per message.
                    let mut iov = unit_slices(data, &results);
                    io::write_all_vectored(out, &mut iov).map_err(out_err)?;
                    // The new header fields were allocated on the workers: freeing them here, one
                    // by one, was the writer's largest cost per small message. A worker takes
                    // them back for its next messages.
                    drop(iov);
                    pool.spawn(move || give_back(results));
                    Ok(())
                },
            )?;
            out.flush().map_err(out_err)?;
            cpu
        }
        UnitSink::File(file) => {
            let all_writes = io::WritesAt::new(file, IN_FLIGHT_BYTES);
            all_writes.reserve(bom.len()).map_err(out_err)?;
            all_writes.write(&mut [std::io::IoSlice::new(bom)], 0, bom.len());
            let mut at = bom.len() as u64;
            let writes = &all_writes;
            let cpu = pool.in_place_scope(|jobs| {
                map_mbox_grouped(
                    mapped,
                    opts.mbox_format,
                    range,
                    pool,
                    opts.framing,
                    false,
                    work,
                    work_group,
                    wide,
                    |results| {
                        accept(summary, &results)?;
                        let len: usize = results.iter().map(|(e, o)| unit_len(e, o)).sum();
                        writes.reserve(len).map_err(out_err)?;
                        let unit_at = at;
                        at += len as u64;
                        jobs.spawn(move |_| {
                            let mut iov = unit_slices(data, &results);
                            writes.write(&mut iov, unit_at, len);
                            drop(iov);
                            // Its input is not read again: its pages leave our resident set.
                            if let (Some((first, _)), Some((last, _))) = (results.first(), results.last()) {
                                mapped.release(first.from_line.start..last.data.end);
                            }
                            give_back(results);
                        });
                        Ok(())
                    },
                )
            });
            // The scope has waited for every write.
            let written = all_writes.finish();
            let cpu = cpu?;
            written.map_err(out_err)?;
            cpu
        }
    };
    summary.serial_cpu += cpu;
    Ok(())
}

/// Gives the new header fields of a written unit back to this worker thread, for the fields
/// of its next messages ([`crate::dkim::sign::give_back_fields`]).
fn give_back(results: Vec<(mbox::MboxEntry, Outcome)>) {
    crate::dkim::sign::give_back_fields(results.into_iter().filter_map(|(_, o)| match o {
        Outcome::Signed { headers, .. } => Some(headers),
        _ => None,
    }));
}

/// The output slices of one unit: each message's `From ` line, its new header fields and its
/// stored bytes (without own old signatures, when they go); a message left unsigned as it was.
fn unit_slices<'a>(data: &'a [u8], results: &'a [(mbox::MboxEntry, Outcome)]) -> Vec<std::io::IoSlice<'a>> {
    let mut iov = Vec::with_capacity(results.len() * 3);
    for (e, o) in results {
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
    iov
}

/// The output length of one message: what [`unit_slices`] gives for it.
fn unit_len(e: &mbox::MboxEntry, o: &Outcome) -> usize {
    let stored = e.from_line.len() + e.data.len();
    match o {
        Outcome::Signed { headers, drop } => stored + headers.len() - drop.iter().map(|r| r.len()).sum::<usize>(),
        _ => stored,
    }
}

/// Where directory outputs go.
#[derive(Debug, Clone)]
enum DirOutput {
    /// The same relative paths under this directory.
    To(PathBuf),
    /// Each file replaced atomically.
    InPlace,
}

/// Signs each message file of a maildir or queue directory. Each output file appears
/// atomically; a message left unsigned is copied unchanged (`To`) or left alone (`InPlace`).
/// With `To`, a maildir's output gets `cur/`, `new/` and `tmp/`, so that mail readers open it.
fn sign_dir(
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
fn sign_file_in_place(
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

fn sign_file(
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
        (Outcome::Signed { headers, drop }, _) => write_signed_file(&dest, &keep, false, headers, buf, drop),
        (Outcome::Unsigned(_) | Outcome::NoKey(_), DirOutput::To(_)) => {
            write_signed_file(&dest, &keep, false, &[], buf, &[])
        }
        (_, DirOutput::InPlace) | (Outcome::Temporary(_), _) => Ok(()),
    };
    res?;
    Ok((outcome, buf.len() as u64))
}

/// Copies a directory entry that is not read as a message to the output directory, where that
/// is safe: a symbolic link as the same link, a regular file (too large to sign) byte for byte.
/// FIFOs, devices and sockets are not copied. Returns what was done, for the report.
fn copy_through(src: &Path, dest: &Path) -> std::io::Result<&'static str> {
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
