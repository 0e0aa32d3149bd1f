//! Bulk signing of archives: mbox files (memory-mapped), maildirs and queue directories (one
//! message per file), through a parallel pipeline with ordered output.
//!
//! Owns: recognising the input kind, the window-by-window parallel signing (rayon), the single
//! ordered writer of an mbox, per-file atomic output for directories, counting and reporting
//! messages that stay unsigned, and the interrupt flag. Signing itself is [`crate::dkim::sign`];
//! splitting and unquoting mboxes is [`crate::pipeline::mbox`].
//!
//! Memory is bounded by the messages in flight (at most [`IN_FLIGHT`] messages and about
//! [`IN_FLIGHT_BYTES`] of input): mbox messages are slices of the map, results are only the new
//! header fields, and the writer releases mapped pages it has written.

pub mod io;
pub mod mbox;

use crate::dkim::header::Message;

use crate::dkim::sign::{self, Signer};
use mbox::{MboxEntry, MboxFormat};

use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

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

/// Makes SIGINT/SIGTERM stop a bulk run between batches, so that no partial output replaces
/// an original (see [`io::install_interrupt_handler`]).
pub fn install_interrupt_handler() {
    io::install_interrupt_handler();
}

fn interrupted() -> bool {
    io::interrupted()
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
/// empty file, is an mbox; any other file is one message. Reads the first octets of a regular
/// file only: a pipe or device must go through [`open_source`], which keeps what it reads.
pub fn detect(path: &Path) -> std::io::Result<InputKind> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Ok(dir_kind(path));
    }
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file (a pipe or device): open it with open_source"));
    }
    let mut head = [0u8; 8];
    let n = read_full(&mut std::fs::File::open(path)?, &mut head)?;
    Ok(kind_of_head(&head[..n]))
}

fn dir_kind(path: &Path) -> InputKind {
    if path.join("cur").is_dir() || path.join("new").is_dir() {
        InputKind::Maildir
    } else {
        InputKind::QueueDir
    }
}

fn kind_of_head(head: &[u8]) -> InputKind {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    // An empty file is an empty mbox: nothing to sign, nothing lost.
    if head.is_empty() || head.starts_with(b"From ") {
        InputKind::Mbox
    } else {
        InputKind::Message
    }
}

/// Reads until `buf` is full or the input ends (a pipe hands out short reads).
fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An input of a run: its path, its kind, and for a pipe, FIFO or device the bytes read from
/// it (it can be read only once).
pub struct Source {
    /// The path as given.
    pub path: PathBuf,
    /// What it holds.
    pub kind: InputKind,
    /// The contents of a non-seekable input, read at open (None: a regular file or directory,
    /// read when its turn comes).
    pub spooled: Option<crate::arch::sys::Mapped>,
}

impl Source {
    /// Whether the input was a pipe, FIFO or device.
    pub fn is_stream(&self) -> bool {
        self.spooled.is_some()
    }
}

/// Opens `path` for a run (issue 11, items 1 and 15). Regular files and directories are only
/// classified. A pipe, FIFO or device (`/dev/stdin`, `<(cat a.mbox)`) can be read once, so it
/// is read now and its kind told from the bytes read: one message is held in memory up to
/// `max_message` octets (more is an error, so `/dev/zero` ends), an mbox is spooled to an
/// unlinked temporary file and mapped, keeping memory bounded. An input that gives no bytes is
/// refused: a run over nothing must not report success.
pub fn open_source(path: &Path, forced: Option<InputKind>, max_message: u64) -> Result<Source, BulkError> {
    let meta = std::fs::metadata(path).map_err(|e| input_err(path, e))?;
    let source = |kind, spooled| Source { path: path.to_path_buf(), kind, spooled };
    if meta.is_dir() {
        return Ok(source(forced.unwrap_or_else(|| dir_kind(path)), None));
    }
    if meta.is_file() {
        let kind = match forced {
            Some(k) => k,
            None => detect(path).map_err(|e| input_err(path, e))?,
        };
        if kind == InputKind::Message && meta.len() > max_message {
            return Err(too_large(path, meta.len(), max_message));
        }
        return Ok(source(kind, None));
    }
    let mut f = std::fs::File::open(path).map_err(|e| input_err(path, e))?;
    let mut head = [0u8; 8];
    let n = read_full(&mut f, &mut head).map_err(|e| input_err(path, e))?;
    if n == 0 {
        return Err(BulkError::Format {
            path: path.display().to_string(),
            reason: "empty input (a pipe or device that gave no bytes): nothing to do".into(),
        });
    }
    let kind = forced.unwrap_or_else(|| kind_of_head(&head[..n]));
    let spooled = match kind {
        InputKind::Mbox => {
            let mut spool = tempfile::tempfile().map_err(|e| input_err(path, format!("cannot spool: {e}")))?;
            let copied = Write::write_all(&mut spool, &head[..n])
                .and_then(|()| std::io::copy(&mut f, &mut spool))
                .and_then(|_| spool.flush());
            copied.map_err(|e| input_err(path, format!("reading into the spool file failed: {e}")))?;
            crate::arch::sys::map(&spool).map_err(|e| input_err(path, e))?
        }
        _ => {
            let mut data = head[..n].to_vec();
            std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, max_message + 1 - n as u64), &mut data)
                .map_err(|e| input_err(path, e))?;
            if data.len() as u64 > max_message {
                return Err(too_large(path, data.len() as u64, max_message));
            }
            crate::arch::sys::Mapped::Owned(data)
        }
    };
    Ok(source(kind, Some(spooled)))
}

fn too_large(path: &Path, len: u64, max: u64) -> BulkError {
    BulkError::Format {
        path: path.display().to_string(),
        reason: format!("{len} octets or more: larger than the message size limit of {max} (--max-message-size)"),
    }
}

/// Default of `--max-message-size`: larger than any mail a server accepts (Postfix's
/// message_size_limit defaults to 10 MB, Exchange Online allows 150 MB).
pub const DEFAULT_MAX_MESSAGE: u64 = 512 << 20;

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
    /// Largest message signed; larger ones are passed through and reported.
    pub max_message: u64,
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
    Signed {
        headers: Vec<u8>,
        drop: Vec<Range<usize>>,
    },
    Unsigned(String),
    /// The key store cannot be reached: the run stops (exit 75) without replacing anything,
    /// since passing the rest through unsigned would need a second run that double-signs.
    Temporary(String),
}

/// Signs one message (already unquoted).
fn process(opts: &BulkOptions, msg: &[u8]) -> Outcome {
    if msg.len() as u64 > opts.max_message {
        return Outcome::Unsigned(format!(
            "{} octets: larger than the message size limit of {} (--max-message-size)",
            msg.len(),
            opts.max_message
        ));
    }
    // One message that makes the signer panic must not end the run: it is passed through and
    // reported like any other message that cannot be signed.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sign_message(opts, msg))) {
        Ok(Ok((headers, drop))) => Outcome::Signed { headers, drop },
        Ok(Err(sign::SignError::Select(crate::select::SelectError::Temporary(why)))) => Outcome::Temporary(why),
        Ok(Err(e)) => Outcome::Unsigned(e.to_string()),
        Err(_) => Outcome::Unsigned("internal error (panic) while signing; please report it".into()),
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
    f.commit().map_err(out_err)
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
    Lock(#[from] io::LockError),
    /// An output cannot be created (as opposed to failing while written).
    #[error(transparent)]
    Create(#[from] io::OutputError),
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
        Outcome::Unsigned(reason) | Outcome::Temporary(reason) => {
            summary.passed += 1;
            let p = Problem { file: file.to_string(), index, offset, reason: reason.clone() };
            progress.println(&format!("dkimpress: left unsigned: {p}"));
            summary.problems.push(p);
        }
    }
    progress.advance(len, summary.messages);
}

/// Maps the mbox at `path` for one pass and checks that it is one.
pub fn open_mbox(path: &Path) -> Result<crate::arch::sys::Mapped, BulkError> {
    let file = std::fs::File::open(path).map_err(|e| input_err(path, e))?;
    map_mbox_file(&file, path)
}

/// Maps an open mbox file (one that is locked: see [`io::MboxLock`]) and checks it.
pub fn map_mbox_file(file: &std::fs::File, path: &Path) -> Result<crate::arch::sys::Mapped, BulkError> {
    let mapped = crate::arch::sys::map(file).map_err(|e| input_err(path, e))?;
    check_mbox(mapped, path)
}

/// Checks that mapped (or spooled) bytes are an mbox.
pub fn check_mbox(mapped: crate::arch::sys::Mapped, path: &Path) -> Result<crate::arch::sys::Mapped, BulkError> {
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
    mapped: &crate::arch::sys::Mapped,
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
    // Set when the writer stops early (an output error): the splitter must not wait for it
    // to drain the byte budget, which it never will.
    let writer_gone = std::sync::atomic::AtomicBool::new(false);
    let writer_gone = &writer_gone;
    let job = &job;
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<(), BulkError> {
            struct Gone<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Gone<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let _gone = Gone(writer_gone);
            let mut released = 0usize;
            for (batch, slot) in out_rx {
                let Ok(results) = slot.recv() else {
                    return Err(BulkError::Input {
                        path: "worker".into(),
                        reason: "internal error: a worker thread failed; nothing was replaced".into(),
                    });
                };
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
                while queued_bytes.load(std::sync::atomic::Ordering::Relaxed) > IN_FLIGHT_BYTES
                    && !writer_gone.load(std::sync::atomic::Ordering::SeqCst)
                {
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
        let written = writer.join().unwrap_or_else(|_| {
            Err(BulkError::Input { path: "writer".into(), reason: "internal error: the writer thread failed".into() })
        });
        written.and(result)
    })
}

/// Signs every message of the mapped mbox `mapped` (shown as `path`) into `out`: the output is
/// the input with the new header fields inserted after each `From ` line (and own old
/// signatures removed with `strip_own`), byte for byte otherwise.
pub fn sign_mbox(
    mapped: &crate::arch::sys::Mapped,
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
    out.write_all(&data[..mbox::bom_len(data)]).map_err(out_err)?;
    let mut index = 0u64;
    map_mbox(
        mapped,
        opts.mbox_format,
        pool,
        |msg| process(opts, msg),
        |e, o| {
            index += 1;
            if let Outcome::Temporary(reason) = &o {
                return Err(BulkError::Temporary { path: format!("{shown}#{index}"), reason: reason.clone() });
            }
            out.write_all(&data[e.from_line.clone()]).map_err(out_err)?;
            let stored = &data[e.data.clone()];
            match &o {
                Outcome::Signed { headers, drop } => {
                    out.write_all(headers).map_err(out_err)?;
                    write_without(out, stored, drop).map_err(out_err)?;
                }
                _ => out.write_all(stored).map_err(out_err)?,
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

/// One entry of a maildir (`cur/`, `new/`) or queue directory.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The path relative to the directory.
    pub rel: PathBuf,
    /// Why the entry cannot be read as a message file (a link, FIFO, device, directory), or
    /// None for a regular file.
    pub odd: Option<&'static str>,
}

/// The entries of a maildir (`cur/`, `new/`) or queue directory, as paths relative to `dir`,
/// sorted so that runs are repeatable. Dot files and `tmp/` are skipped (they are not
/// messages); every other entry is listed, regular files or not, so that none is dropped
/// without a word (issue 11, item 6).
pub fn list_messages(dir: &Path, kind: InputKind) -> Result<Vec<DirEntry>, BulkError> {
    let subdirs: Vec<PathBuf> = match kind {
        InputKind::Maildir => ["cur", "new"].iter().map(PathBuf::from).filter(|s| dir.join(s).is_dir()).collect(),
        _ => vec![PathBuf::new()],
    };
    let mut entries = vec![];
    for sub in subdirs {
        let rd = std::fs::read_dir(dir.join(&sub)).map_err(|e| input_err(&dir.join(&sub), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| input_err(dir, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry.file_type().map_err(|e| input_err(&entry.path(), e))?;
            entries.push(DirEntry { rel: sub.join(name), odd: odd_kind(&ft) });
        }
    }
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(entries)
}

/// What a non-regular directory entry is, in words.
fn odd_kind(ft: &std::fs::FileType) -> Option<&'static str> {
    #[cfg(unix)]
    use std::os::unix::fs::FileTypeExt as _;
    if ft.is_file() {
        return None;
    }
    Some(if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory (not descended into)"
    } else {
        #[cfg(unix)]
        if ft.is_fifo() {
            return Some("a FIFO");
        } else if ft.is_char_device() || ft.is_block_device() {
            return Some("a device");
        } else if ft.is_socket() {
            return Some("a socket");
        }
        "not a regular file"
    })
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
    let entries = list_messages(dir, kind)?;
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
    map_dir(
        dir,
        &entries,
        opts.max_message,
        pool,
        |rel, item| sign_file(dir, rel, opts, output, item),
        |rel, r| {
            let (outcome, len) = r?;
            if let Outcome::Temporary(reason) = &outcome {
                return Err(BulkError::Temporary { path: dir.join(rel).display().to_string(), reason: reason.clone() });
            }
            account(summary, progress, &outcome, &dir.join(rel).display().to_string(), 1, 0, len);
            Ok(())
        },
    )
}

/// A directory entry as a worker sees it: the message bytes and the file's metadata, or why
/// it cannot be read as a message.
pub type Item<'a> = Result<(&'a [u8], &'a std::fs::Metadata), String>;

/// Runs `job` on every entry of `entries` (relative to `dir`) on the pool, each regular file
/// read into a reused per-worker buffer, and hands the results to `emit` in input order.
/// Entries that are not regular files, cannot be read, or are larger than `max_message`
/// reach `job` as `Err(reason)`.
pub fn map_dir<R, J, E>(
    dir: &Path,
    entries: &[DirEntry],
    max_message: u64,
    pool: &rayon::ThreadPool,
    job: J,
    mut emit: E,
) -> Result<(), BulkError>
where
    R: Send,
    J: Fn(&Path, Item<'_>) -> R + Sync,
    E: FnMut(&Path, R) -> Result<(), BulkError>,
{
    for window in entries.chunks(256) {
        if interrupted() {
            return Err(BulkError::Interrupted);
        }
        let results: Vec<R> = pool.install(|| {
            window
                .par_iter()
                .map_init(Vec::new, |buf: &mut Vec<u8>, entry| {
                    let rel = entry.rel.as_path();
                    if let Some(odd) = entry.odd {
                        return job(rel, Err(odd.to_string()));
                    }
                    let src = dir.join(rel);
                    buf.clear();
                    let read = (|| {
                        let mut f = std::fs::File::open(&src).map_err(|e| format!("cannot read: {e}"))?;
                        let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
                        if meta.len() > max_message {
                            return Err(format!(
                                "{} octets: larger than the message size limit of {max_message} (--max-message-size)",
                                meta.len()
                            ));
                        }
                        std::io::Read::read_to_end(&mut f, buf).map_err(|e| format!("cannot read: {e}"))?;
                        Ok(meta)
                    })();
                    match read {
                        Ok(meta) => job(rel, Ok((buf, &meta))),
                        Err(why) => job(rel, Err(why)),
                    }
                })
                .collect()
        });
        for (entry, r) in window.iter().zip(results) {
            emit(&entry.rel, r)?;
        }
    }
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
    let outcome = process(opts, buf);
    #[cfg(unix)]
    let keep = match output {
        // In place: the file stays its owner's, with its mode and its dates (the arrival date
        // IMAP clients show is the maildir file's mtime).
        DirOutput::InPlace => io::Keep::all_of(meta),
        DirOutput::To(_) => io::Keep::copy_of(meta),
    };
    let res = match (&outcome, output) {
        (Outcome::Signed { headers, drop }, _) => write_signed_file(&dest, &keep, headers, buf, drop),
        (Outcome::Unsigned(_), DirOutput::To(_)) => write_signed_file(&dest, &keep, &[], buf, &[]),
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
