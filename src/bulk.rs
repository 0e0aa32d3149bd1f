//! Bulk signing of archives: mbox files (memory-mapped), maildirs and queue directories (one
//! message per file), through a parallel pipeline with ordered output.
//!
//! Owns: recognising the input kind, the window-by-window parallel signing (rayon), the single
//! ordered writer of an mbox, per-file atomic output for directories, counting and reporting
//! messages that stay unsigned, and the interrupt flag. Signing itself is [`crate::sign`];
//! splitting and unquoting mboxes is [`crate::mbox`].
//!
//! Memory is bounded by the messages in flight (at most [`IN_FLIGHT`] messages and about
//! [`IN_FLIGHT_BYTES`] of input): mbox messages are slices of the map, results are only the new
//! header fields, and the writer releases mapped pages it has written.

use crate::header::Message;
use crate::io::{self, AtomicFile};
use crate::mbox::{self, MboxEntry, MboxFormat};
use crate::sign::{self, Signer};

use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Most messages between the splitter and the writer.
pub const IN_FLIGHT: usize = 4096;
/// Most input bytes between the splitter and the writer (a new job waits beyond this).
pub const IN_FLIGHT_BYTES: usize = 32 << 20;
/// Most messages in one job.
const BATCH_MESSAGES: usize = 32;
/// Most input bytes in one job (a large message is a job of its own).
const BATCH_BYTES: usize = 256 << 10;
/// The writer hands mapped pages back to the kernel every this many bytes.
const RELEASE_STEP: usize = 8 << 20;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes SIGINT/SIGTERM stop a bulk run between windows, so that no partial output replaces
/// an original (temporary files are removed as the run unwinds).
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What an input path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// An mbox file.
    Mbox,
    /// A maildir (`cur/`, `new/`; `tmp/` ignored).
    Maildir,
    /// A directory of files holding one message each.
    QueueDir,
    /// One message in one file.
    Message,
}

impl std::str::FromStr for InputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mbox" => Ok(InputKind::Mbox),
            "maildir" => Ok(InputKind::Maildir),
            "queue" | "dir" => Ok(InputKind::QueueDir),
            "message" | "eml" => Ok(InputKind::Message),
            _ => Err(format!("unknown input format {s:?}: expected mbox, maildir, queue or message")),
        }
    }
}

/// Detects the kind of `path`: a directory with `cur/` or `new/` is a maildir, any other
/// directory a queue directory; a file starting with `From ` (after an optional UTF-8 BOM), or an
/// empty file, is an mbox; any other file is one message.
pub fn detect(path: &Path) -> std::io::Result<InputKind> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        if path.join("cur").is_dir() || path.join("new").is_dir() {
            return Ok(InputKind::Maildir);
        }
        return Ok(InputKind::QueueDir);
    }
    let mut head = [0u8; 8];
    let n = std::io::Read::read(&mut std::fs::File::open(path)?, &mut head)?;
    let head = &head[..n];
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    // An empty file is an empty mbox: nothing to sign, nothing lost.
    Ok(if head.is_empty() || head.starts_with(b"From ") { InputKind::Mbox } else { InputKind::Message })
}

/// Settings of a bulk run.
pub struct BulkOptions {
    /// Which signatures each message gets.
    pub keys: crate::select::KeySource,
    /// The envelope sender that chooses the key instead of From (`--sender`).
    pub sender: Option<String>,
    /// The mbox flavour.
    pub mbox_format: MboxFormat,
    /// Remove existing DKIM-Signature fields whose `d=` is one of our domains.
    pub strip_own: bool,
    /// Unix time for `t=`.
    pub now: u64,
}

/// One message left unsigned, with where it is and why.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The input file (for a directory: the message file).
    pub file: String,
    /// 1-based message number within the file (1 for one-message files).
    pub index: u64,
    /// Byte offset of the message in the file.
    pub offset: u64,
    /// Why it was not signed.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{} (byte offset {}): {}", sanitize(&self.file), self.index, self.offset, sanitize(&self.reason))
    }
}

/// Control characters in untrusted text (file names, parse errors) become `?` before printing.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Counts of a run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Messages read.
    pub messages: u64,
    /// Messages written with new signatures.
    pub signed: u64,
    /// Messages written unchanged (see `problems`).
    pub passed: u64,
    /// Input bytes.
    pub bytes: u64,
    /// Why messages were passed through.
    pub problems: Vec<Problem>,
}

/// What happened to one message.
enum Outcome {
    Signed { headers: Vec<u8>, drop: Vec<Range<usize>> },
    Unsigned(String),
}

/// Signs one message (already unquoted).
fn process(opts: &BulkOptions, msg: &[u8]) -> Outcome {
    match sign_message(opts, msg) {
        Ok((headers, drop)) => Outcome::Signed { headers, drop },
        Err(e) => Outcome::Unsigned(e.to_string()),
    }
}

/// Signs one message: the header fields to add on top, and the byte ranges of old own
/// signatures to remove (empty unless `strip_own`).
pub fn sign_message(opts: &BulkOptions, msg: &[u8]) -> Result<(Vec<u8>, Vec<Range<usize>>), sign::SignError> {
    let parsed = Message::parse(msg)?;
    let signers = opts.keys.signers_for(&parsed, opts.sender.as_deref())?;
    let headers = sign::sign_parsed(&signers, &parsed, opts.now)?;
    let drop = if opts.strip_own { own_signatures(&signers, &parsed) } else { vec![] };
    Ok((headers, drop))
}

/// Byte ranges of DKIM-Signature fields whose `d=` is a domain one of `signers` signs for
/// (key rotation). Other domains' signatures are never touched. Offsets lie in the header
/// block, which mbox quoting never changes, so they are valid in the stored bytes too.
fn own_signatures(signers: &[Signer], parsed: &Message) -> Vec<Range<usize>> {
    parsed
        .fields
        .iter()
        .filter(|f| f.is("dkim-signature"))
        .filter(|f| {
            tag_value(f.value(), "d").is_some_and(|d| signers.iter().any(|s| s.domain().eq_ignore_ascii_case(&d)))
        })
        .map(|f| f.offset..f.offset + f.raw.len())
        .collect()
}

/// The value of tag `name` in a tag-list (RFC 6376 §3.2), whitespace removed.
pub fn tag_value(list: &[u8], name: &str) -> Option<String> {
    for spec in list.split(|&b| b == b';') {
        let Some(eq) = spec.iter().position(|&b| b == b'=') else { continue };
        let tag: Vec<u8> = spec[..eq].iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        if tag == name.as_bytes() {
            let v: Vec<u8> = spec[eq + 1..].iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            return String::from_utf8(v).ok();
        }
    }
    None
}

/// Replaces (or creates) `dest` atomically with `headers` + `msg` minus `drop`.
pub fn write_signed_file(
    dest: &Path,
    mode: u32,
    headers: &[u8],
    msg: &[u8],
    drop: &[Range<usize>],
) -> std::io::Result<()> {
    let mut f = AtomicFile::create(dest, mode)?;
    {
        let mut w = BufWriter::new(&mut f);
        w.write_all(headers)?;
        write_without(&mut w, msg, drop)?;
        w.flush()?;
    }
    f.commit()
}

/// Writes `data` without the `drop` ranges.
pub fn write_without(w: &mut dyn Write, data: &[u8], drop: &[Range<usize>]) -> std::io::Result<()> {
    let mut pos = 0;
    for r in drop {
        w.write_all(&data[pos..r.start])?;
        pos = r.end;
    }
    w.write_all(&data[pos..])
}

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
}

fn input_err(path: &Path, reason: impl std::fmt::Display) -> BulkError {
    BulkError::Input { path: path.display().to_string(), reason: reason.to_string() }
}

/// Progress shown on stderr while a run goes (only when stderr is a terminal).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar over `total_bytes` when `show`, else nothing.
    pub fn new(show: bool, total_bytes: u64) -> Progress {
        if !show {
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}")
                .expect("valid template"),
        );
        Progress { bar: Some(bar) }
    }

    fn advance(&self, bytes: u64, messages: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
            b.set_message(format!("{messages} msgs"));
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Accounts for one message in `summary`, reporting a problem as it happens.
fn account(
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
        Outcome::Unsigned(reason) => {
            summary.passed += 1;
            let p = Problem { file: file.to_string(), index, offset, reason: reason.clone() };
            progress.println(&format!("dkimpress: left unsigned: {p}"));
            summary.problems.push(p);
        }
    }
    progress.advance(len, summary.messages);
}

/// Maps the mbox at `path` for one pass and checks that it is one.
pub fn open_mbox(path: &Path) -> Result<io::Mapped, BulkError> {
    let file = std::fs::File::open(path).map_err(|e| input_err(path, e))?;
    let mapped = io::map(&file).map_err(|e| input_err(path, e))?;
    mbox::check(&mapped).map_err(|e| BulkError::Format { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(mapped)
}

/// Runs `job` on every message of a mapped mbox on the pool, each message unquoted for `fmt`,
/// and hands the results to `emit` in input order, on one writer thread.
///
/// Ordered parallel output without barriers (the gzp pattern): the splitter, on this thread,
/// gives each batch of messages to the pool as a job with a one-shot result slot and queues
/// the slot for the writer; the writer takes slots in input order and waits for each. The bounded
/// queue holds at most [`IN_FLIGHT`] jobs (and about [`IN_FLIGHT_BYTES`] of input), which bounds
/// memory; the writer releases mapped pages behind it.
pub fn map_mbox<R, J, E>(
    mapped: &io::Mapped,
    fmt: MboxFormat,
    pool: &rayon::ThreadPool,
    job: J,
    mut emit: E,
) -> Result<(), BulkError>
where
    R: Send,
    J: Fn(&[u8]) -> R + Sync,
    E: FnMut(&MboxEntry, R) -> Result<(), BulkError> + Send,
{
    let data: &[u8] = mapped;
    // Jobs are batches of consecutive messages (up to BATCH_MESSAGES or BATCH_BYTES): one job,
    // one result slot and one wake-up per batch instead of per message, which matters for
    // small messages and cheap signatures (Ed25519).
    type Slot<R> = crossbeam_channel::Receiver<Vec<R>>;
    let (out_tx, out_rx) = crossbeam_channel::bounded::<(Vec<MboxEntry>, Slot<R>)>(IN_FLIGHT / BATCH_MESSAGES);
    let queued_bytes = std::sync::atomic::AtomicUsize::new(0);
    let queued_bytes = &queued_bytes;
    let job = &job;
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<(), BulkError> {
            let mut released = 0usize;
            for (batch, slot) in out_rx {
                let results = slot.recv().expect("job vanished");
                for (e, r) in batch.iter().zip(results) {
                    let len = e.data.end - e.from_line.start;
                    let end = e.data.end;
                    emit(e, r)?;
                    queued_bytes.fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
                    if end - released >= RELEASE_STEP {
                        mapped.release(released..end);
                        released = end;
                    }
                }
            }
            Ok(())
        });
        let mut result = Ok(());
        pool.in_place_scope(|scope| {
            let mut split = mbox::Splitter::new(data, fmt).peekable();
            while split.peek().is_some() {
                if interrupted() {
                    result = Err(BulkError::Interrupted);
                    break;
                }
                let mut batch = Vec::with_capacity(BATCH_MESSAGES);
                let mut batch_bytes = 0;
                while batch.len() < BATCH_MESSAGES && batch_bytes < BATCH_BYTES {
                    let Some(e) = split.next() else { break };
                    batch_bytes += e.data.end - e.from_line.start;
                    batch.push(e);
                }
                // Bytes in flight: wait for the writer when a run of huge messages piles up.
                while queued_bytes.load(std::sync::atomic::Ordering::Relaxed) > IN_FLIGHT_BYTES {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                queued_bytes.fetch_add(batch_bytes, std::sync::atomic::Ordering::Relaxed);
                let (slot_tx, slot_rx) = crossbeam_channel::bounded(1);
                let work: Vec<(std::ops::Range<usize>, bool)> =
                    batch.iter().map(|e| (e.message.clone(), e.quoted)).collect();
                scope.spawn(move |_| {
                    let results: Vec<R> = work
                        .into_iter()
                        .map(|(message, quoted)| {
                            if quoted {
                                SCRATCH.with(|scratch| {
                                    let mut scratch = scratch.borrow_mut();
                                    job(mbox::unquote(fmt, &data[message], &mut scratch))
                                })
                            } else {
                                job(&data[message])
                            }
                        })
                        .collect();
                    let _ = slot_tx.send(results);
                });
                if out_tx.send((batch, slot_rx)).is_err() {
                    break; // the writer failed; its error is returned below
                }
            }
        });
        drop(out_tx);
        let written = writer.join().expect("writer thread panicked");
        written.and(result)
    })
}

/// Signs every message of the mbox at `path` into `out`: the output is the input with the new
/// header fields inserted after each `From ` line (and own old signatures removed with
/// `strip_own`), byte for byte otherwise.
pub fn sign_mbox(
    path: &Path,
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    out: &mut (dyn Write + Send),
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let mapped = open_mbox(path)?;
    let data: &[u8] = &mapped;
    let shown = path.display().to_string();
    let out_err = |error| BulkError::Output { path: "output".to_string(), error };
    out.write_all(&data[..mbox::bom_len(data)]).map_err(out_err)?;
    let mut index = 0u64;
    map_mbox(
        &mapped,
        opts.mbox_format,
        pool,
        |msg| process(opts, msg),
        |e, o| {
            index += 1;
            out.write_all(&data[e.from_line.clone()]).map_err(out_err)?;
            let stored = &data[e.data.clone()];
            match &o {
                Outcome::Signed { headers, drop } => {
                    out.write_all(headers).map_err(out_err)?;
                    write_without(out, stored, drop).map_err(out_err)?;
                }
                Outcome::Unsigned(_) => out.write_all(stored).map_err(out_err)?,
            }
            let len = (e.data.end - e.from_line.start) as u64;
            account(summary, progress, &o, &shown, index, e.from_line.start as u64, len);
            Ok(())
        },
    )?;
    out.flush().map_err(out_err)
}

thread_local! {
    /// Per-worker buffer for unquoting mbox messages.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where directory outputs go.
#[derive(Debug, Clone)]
pub enum DirOutput {
    /// The same relative paths under this directory.
    To(PathBuf),
    /// Each file replaced atomically.
    InPlace,
}

/// The message files of a maildir (`cur/`, `new/`) or queue directory, as paths relative to
/// `dir`, sorted so that runs are repeatable. Dot files and `tmp/` are skipped.
pub fn list_messages(dir: &Path, kind: InputKind) -> Result<Vec<PathBuf>, BulkError> {
    let subdirs: Vec<PathBuf> = match kind {
        InputKind::Maildir => ["cur", "new"].iter().map(PathBuf::from).filter(|s| dir.join(s).is_dir()).collect(),
        _ => vec![PathBuf::new()],
    };
    let mut files = vec![];
    for sub in subdirs {
        let rd = std::fs::read_dir(dir.join(&sub)).map_err(|e| input_err(&dir.join(&sub), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| input_err(dir, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry.file_type().map_err(|e| input_err(&entry.path(), e))?;
            if ft.is_file() {
                files.push(sub.join(name));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Signs each message file of a maildir or queue directory. Each output file appears
/// atomically; a message left unsigned is copied unchanged (`To`) or left alone (`InPlace`).
pub fn sign_dir(
    dir: &Path,
    kind: InputKind,
    opts: &BulkOptions,
    pool: &rayon::ThreadPool,
    output: &DirOutput,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), BulkError> {
    let files = list_messages(dir, kind)?;
    if let DirOutput::To(out) = output {
        let mut parents: Vec<PathBuf> = files.iter().filter_map(|f| f.parent().map(|p| out.join(p))).collect();
        parents.dedup();
        parents.push(out.clone());
        for p in parents {
            std::fs::create_dir_all(&p).map_err(|error| BulkError::Output { path: p.display().to_string(), error })?;
        }
    }
    map_dir(
        dir,
        &files,
        pool,
        |rel, buf| sign_file(dir, rel, opts, output, buf),
        |rel, r| {
            let (outcome, len) = r??;
            account(summary, progress, &outcome, &dir.join(rel).display().to_string(), 1, 0, len);
            Ok(())
        },
    )
}

/// Runs `job` on every file of `files` (relative to `dir`) on the pool, each read into a
/// reused per-worker buffer, and hands the results to `emit` in input order.
pub fn map_dir<R, J, E>(
    dir: &Path,
    files: &[PathBuf],
    pool: &rayon::ThreadPool,
    job: J,
    mut emit: E,
) -> Result<(), BulkError>
where
    R: Send,
    J: Fn(&Path, &[u8]) -> R + Sync,
    E: FnMut(&Path, Result<R, BulkError>) -> Result<(), BulkError>,
{
    for window in files.chunks(256) {
        if interrupted() {
            return Err(BulkError::Interrupted);
        }
        let results: Vec<Result<R, BulkError>> = pool.install(|| {
            window
                .par_iter()
                .map_init(Vec::new, |buf: &mut Vec<u8>, rel| {
                    let src = dir.join(rel);
                    buf.clear();
                    let read = std::fs::File::open(&src).and_then(|mut f| std::io::Read::read_to_end(&mut f, buf));
                    read.map_err(|e| input_err(&src, e))?;
                    Ok(job(rel, buf))
                })
                .collect()
        });
        for (rel, r) in window.iter().zip(results) {
            emit(rel, r)?;
        }
    }
    Ok(())
}

fn sign_file(
    dir: &Path,
    rel: &Path,
    opts: &BulkOptions,
    output: &DirOutput,
    buf: &[u8],
) -> Result<(Outcome, u64), BulkError> {
    let src = dir.join(rel);
    let outcome = process(opts, buf);
    let dest = match output {
        DirOutput::To(out) => out.join(rel),
        DirOutput::InPlace => src.clone(),
    };
    let mode = io::mode_of(&src);
    let res = match (&outcome, output) {
        (Outcome::Signed { headers, drop }, _) => write_signed_file(&dest, mode, headers, buf, drop),
        (Outcome::Unsigned(_), DirOutput::To(_)) => write_signed_file(&dest, mode, &[], buf, &[]),
        (Outcome::Unsigned(_), DirOutput::InPlace) => Ok(()),
    };
    res.map_err(|error| BulkError::Output { path: dest.display().to_string(), error })?;
    Ok((outcome, buf.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_values() {
        for (list, tag, want) in [
            (&b"v=1; a=rsa-sha256; d=Example.COM; s=x"[..], "d", Some("Example.COM")),
            (b"v=1;\r\n\td = example.org ;", "d", Some("example.org")),
            (b"v=1; dd=x", "d", None),
        ] {
            assert_eq!(tag_value(list, tag).as_deref(), want);
        }
    }

    #[test]
    fn problem_display_strips_control_characters() {
        let p = Problem { file: "a.mbox".into(), index: 3, offset: 120, reason: "bad\x1b[31m".into() };
        assert_eq!(p.to_string(), "a.mbox#3 (byte offset 120): bad?[31m");
    }
}
