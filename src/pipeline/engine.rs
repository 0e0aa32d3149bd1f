//! The ordered parallel engine: messages of a mapped mbox, or files of a directory, go to the
//! worker pool in units (a batch of messages, a byte range of an mbox, a few directory
//! entries) and come back to one writer in input order, with memory bounded by the units and
//! bytes in flight. Knows nothing of signing: it runs a job per message.
//!
//! One engine ([`ordered`]) runs all of them; [`map_mbox`] and [`map_dir`] only say what a
//! unit is and how its results are handed on.

use super::input::{too_large_reason, DirEntry};
use super::mbox::{self, MboxEntry, MboxFormat};
use super::os::{self, Mapped};
use super::{interrupted, BulkError};
use std::path::Path;

/// Most messages between the splitter and the writer (serial framing).
pub(crate) const IN_FLIGHT: usize = 4096;
/// Most input bytes between the splitter and the writer (a new unit waits beyond this).
pub(crate) const IN_FLIGHT_BYTES: usize = 32 << 20;
/// Most messages in one job.
pub(crate) const BATCH_MESSAGES: usize = 32;
/// Most input bytes in one job (a large message is a job of its own).
pub(crate) const BATCH_BYTES: usize = 256 << 10;
/// The writer hands mapped pages back to the kernel every this many bytes.
pub(crate) const RELEASE_STEP: usize = 8 << 20;
/// Directory entries in one job.
const DIR_BATCH: usize = 16;
/// Smallest byte range one worker frames and processes as one job (but for what is left).
const CHUNK_MIN: usize = 256 << 10;

/// Largest byte range one worker frames and processes as one job, and with `wide` (the group
/// job hashes bodies in the sixteen AVX-512 lanes: [`map_mbox_grouped`]). Wide units hold
/// sixteen 1 MB messages, so that large bodies fill the lanes too (with 8 MB a group of 1 MB
/// messages was at most eight, hashed one at a time). Parallel framing keeps about two units a
/// worker in flight (mapped input).
const CHUNK_MAX: usize = 8 << 20;
const CHUNK_MAX_WIDE: usize = 16 << 20;

/// CPU seconds of the threads that see every message one after the other: the coordinating
/// thread (serial framing, batching, dispatch) and the writer (ordering, output). What they
/// cost per GB bounds the rate any number of workers can reach.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SerialCpu {
    /// The coordinating (splitting) thread.
    pub splitter: f64,
    /// The ordered writer.
    pub writer: f64,
}

impl SerialCpu {
    /// Both.
    pub fn total(&self) -> f64 {
        self.splitter + self.writer
    }
}

impl std::ops::AddAssign for SerialCpu {
    fn add_assign(&mut self, o: SerialCpu) {
        self.splitter += o.splitter;
        self.writer += o.writer;
    }
}

/// Who finds the message boundaries of an mboxrd or mboxo file. Measured side by side
/// (benches/REPORT.md, "one engine"), parallel framing is as fast as serial framing on one
/// worker and needs about a fifth of the serial CPU; serial stays for measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// The coordinating thread frames every message (the only way for mboxcl/mboxcl2, whose
    /// Content-Length may jump over separators, whatever is asked).
    Serial,
    /// Each worker frames the messages whose separator starts in its own byte range.
    #[default]
    Parallel,
}

impl std::str::FromStr for Framing {
    type Err = String;
    fn from_str(s: &str) -> Result<Framing, String> {
        match s {
            "serial" => Ok(Framing::Serial),
            "parallel" => Ok(Framing::Parallel),
            _ => Err(format!("{s:?}: framing is serial or parallel")),
        }
    }
}

impl Framing {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Serial => "serial",
            Framing::Parallel => "parallel",
        }
    }

    /// Whether `fmt` is framed in parallel.
    pub fn parallel(self, fmt: MboxFormat) -> bool {
        self == Framing::Parallel && !fmt.uses_content_length()
    }
}

/// The engine. `units` is pulled on this thread (the coordinator), each with the input bytes it
/// stands for; `work` runs each unit on the pool; `emit` gets the results on one writer thread,
/// in the order of `units`. At most `max_units` units and about `max_bytes` bytes are in flight
/// (a unit waits for the writer beyond them), which bounds memory.
///
/// Ordered parallel output without barriers (the gzp pattern): each unit becomes a pool job
/// with a one-shot result slot, and the slot is queued for the writer, which takes the slots
/// in order and waits for each.
pub(crate) fn ordered<U, O, W, E>(
    pool: &rayon::ThreadPool,
    units: impl Iterator<Item = (U, usize)>,
    max_units: usize,
    max_bytes: usize,
    work: W,
    mut emit: E,
) -> Result<SerialCpu, BulkError>
where
    U: Send,
    O: Send,
    W: Fn(U) -> O + Sync,
    E: FnMut(O) -> Result<(), BulkError> + Send,
{
    let (out_tx, out_rx) = crossbeam_channel::bounded::<(crossbeam_channel::Receiver<O>, usize)>(max_units.max(1));
    let budget = &Budget::new(max_bytes);
    let work = &work;
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<f64, BulkError> {
            let cpu_start = os::thread_cpu_seconds();
            // However the writer ends (an output error, a panic), the coordinator must not wait
            // for it to drain the byte budget, which it never will.
            struct Gone<'a>(&'a Budget);
            impl Drop for Gone<'_> {
                fn drop(&mut self) {
                    self.0.close();
                }
            }
            let _gone = Gone(budget);
            for (slot, bytes) in out_rx {
                let Ok(results) = slot.recv() else {
                    return Err(BulkError::Input {
                        path: "worker".into(),
                        reason: "internal error: a worker thread failed; nothing was replaced".into(),
                    });
                };
                emit(results)?;
                budget.give(bytes);
            }
            Ok(os::thread_cpu_seconds() - cpu_start)
        });
        let mut result = Ok(());
        let mut coordinator_cpu = 0.0;
        pool.in_place_scope(|scope| {
            let cpu_start = os::thread_cpu_seconds();
            for (unit, bytes) in units {
                if interrupted() {
                    result = Err(BulkError::Interrupted);
                    break;
                }
                // Bytes in flight: wait for the writer when a run of huge units piles up.
                budget.take(bytes);
                let (slot_tx, slot_rx) = crossbeam_channel::bounded(1);
                scope.spawn(move |_| {
                    let _ = slot_tx.send(work(unit));
                });
                if out_tx.send((slot_rx, bytes)).is_err() {
                    break; // the writer failed; its error is returned below
                }
            }
            coordinator_cpu = os::thread_cpu_seconds() - cpu_start;
        });
        drop(out_tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(BulkError::Input { path: "writer".into(), reason: "internal error: the writer thread failed".into() })
        });
        // An interruption explains whatever else failed meanwhile (a file not renamed).
        if result.is_err() || interrupted() {
            result?;
            return Err(BulkError::Interrupted);
        }
        let writer_cpu = written?;
        result.map(|()| SerialCpu { splitter: coordinator_cpu, writer: writer_cpu })
    })
}

/// The input bytes in flight between the coordinator and the writer. The coordinator blocks
/// (no polling: on a sandboxed kernel every wake-up costs microseconds of its CPU) while more
/// than `max` are queued; the writer gives bytes back as it emits.
struct Budget {
    /// Bytes queued, and whether the writer has stopped.
    state: std::sync::Mutex<(usize, bool)>,
    freed: std::sync::Condvar,
    max: usize,
}

impl Budget {
    fn new(max: usize) -> Budget {
        Budget { state: std::sync::Mutex::new((0, false)), freed: std::sync::Condvar::new(), max }
    }

    /// Waits until at most `max` bytes are queued (or the writer is gone), then queues `bytes`.
    fn take(&self, bytes: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 > self.max && !s.1 {
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0 += bytes;
    }

    /// `bytes` have been written.
    fn give(&self, bytes: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= bytes;
        if s.0 <= self.max {
            self.freed.notify_one();
        }
    }

    /// The writer stopped: nobody will give bytes back.
    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.freed.notify_all();
    }
}

/// What one mbox unit is: a batch of messages framed by the coordinator, or a byte range whose
/// messages the worker frames itself.
enum MboxUnit {
    Batch(Vec<MboxEntry>),
    Range(std::ops::Range<usize>),
}

/// Runs `job` on every message of a mapped mbox whose `From ` line starts in `range` (all of
/// them with `0..len`; see [`Shard`](super::Shard)) on the pool, each with its quoting for `fmt` found
/// ([`mbox::Stored`]: the job may unquote or hash around it), and hands
/// the results to `emit` on one writer thread, in input order, a unit's messages at a time.
/// With `release_behind`, the writer releases the mapped pages behind it (without: `emit`
/// hands the input on, and whoever is last to read it releases it).
///
/// `framing` says who finds the messages ([`Framing`]): with parallel framing this thread only
/// hands out chunk bounds, and the serial part is the writer alone. The output is the same
/// either way and for any number of threads.
#[allow(clippy::too_many_arguments)]
pub fn map_mbox<R, J, E>(
    mapped: &Mapped,
    fmt: MboxFormat,
    range: std::ops::Range<usize>,
    pool: &rayon::ThreadPool,
    framing: Framing,
    release_behind: bool,
    job: J,
    emit: E,
) -> Result<SerialCpu, BulkError>
where
    R: Send,
    J: Fn(mbox::Stored<'_>) -> R + Sync,
    E: FnMut(Vec<(MboxEntry, R)>) -> Result<(), BulkError> + Send,
{
    map_mbox_with(mapped, fmt, range, pool, framing, release_behind, job, None::<GroupByOne<R>>, false, emit)
}

/// A job for a group of messages that is never called: [`map_mbox`] runs its job on each alone.
type GroupByOne<R> = fn(&[mbox::Stored<'_>]) -> Vec<R>;

/// [`map_mbox`] with a job for a group of messages at once (`job_group`, given up to [`GROUP`]
/// consecutive messages of a unit, returning the results of `job` on each, in order): a worker
/// hands its messages to it in groups, so that it can do part of their work together (hashing
/// two or sixteen bodies at once). A message whose quoting must be found again after the split
/// (see [`mbox::with_stored`]) goes to `job`, alone, as does a group of one. With `wide`
/// (the group job hashes in the sixteen AVX-512 lanes), parallel framing hands out units of up
/// to 16 MB instead of 8, so that a group of large messages can fill the lanes.
#[allow(clippy::too_many_arguments)]
pub fn map_mbox_grouped<R, J, P, E>(
    mapped: &Mapped,
    fmt: MboxFormat,
    range: std::ops::Range<usize>,
    pool: &rayon::ThreadPool,
    framing: Framing,
    release_behind: bool,
    job: J,
    job_group: P,
    wide: bool,
    emit: E,
) -> Result<SerialCpu, BulkError>
where
    R: Send,
    J: Fn(mbox::Stored<'_>) -> R + Sync,
    P: Fn(&[mbox::Stored<'_>]) -> Vec<R> + Sync,
    E: FnMut(Vec<(MboxEntry, R)>) -> Result<(), BulkError> + Send,
{
    map_mbox_with(mapped, fmt, range, pool, framing, release_behind, job, Some(job_group), wide, emit)
}

/// Consecutive messages a worker hands to the group job of [`map_mbox_grouped`] at most: two
/// sets of the sixteen AVX-512 lanes, so that a lane whose message is done has a next one.
pub const GROUP: usize = 32;

#[allow(clippy::too_many_arguments)]
fn map_mbox_with<R, J, P, E>(
    mapped: &Mapped,
    fmt: MboxFormat,
    range: std::ops::Range<usize>,
    pool: &rayon::ThreadPool,
    framing: Framing,
    release_behind: bool,
    job: J,
    job_group: Option<P>,
    wide: bool,
    mut emit: E,
) -> Result<SerialCpu, BulkError>
where
    R: Send,
    J: Fn(mbox::Stored<'_>) -> R + Sync,
    P: Fn(&[mbox::Stored<'_>]) -> Vec<R> + Sync,
    E: FnMut(Vec<(MboxEntry, R)>) -> Result<(), BulkError> + Send,
{
    let data: &[u8] = mapped;
    let threads = pool.current_num_threads().max(1);
    let run = |e: MboxEntry| -> (MboxEntry, R) {
        let r = mbox::with_stored(fmt, data, &e, &job);
        (e, r)
    };
    // Messages are given to `job_group` only when none uses the per-thread buffers of
    // `with_stored` (quoting found again after the split), which cannot be lent twice: their
    // stored form is where the map has them, with the quotes the splitter found.
    let groupable = |e: &MboxEntry| !e.quoted || !e.quotes.is_empty();
    let run_all = |entries: &mut dyn Iterator<Item = MboxEntry>| -> Vec<(MboxEntry, R)> {
        let Some(job_group) = &job_group else { return entries.map(run).collect() };
        let mut out = Vec::new();
        let mut group: Vec<MboxEntry> = Vec::with_capacity(GROUP);
        let flush = |group: &mut Vec<MboxEntry>, out: &mut Vec<(MboxEntry, R)>| match group.len() {
            0 => {}
            1 => out.extend(group.drain(..).map(run)),
            _ => {
                let stored: Vec<mbox::Stored> =
                    group.iter().map(|e| mbox::Stored { bytes: &data[e.message.clone()], quotes: &e.quotes }).collect();
                let results = job_group(&stored);
                assert_eq!(results.len(), group.len(), "one result for each message of a group");
                out.extend(group.drain(..).zip(results));
            }
        };
        for e in entries {
            if groupable(&e) {
                group.push(e);
                if group.len() == GROUP {
                    flush(&mut group, &mut out);
                }
            } else {
                flush(&mut group, &mut out);
                out.push(run(e));
            }
        }
        flush(&mut group, &mut out);
        out
    };
    let work = |unit: MboxUnit| -> Vec<(MboxEntry, R)> {
        match unit {
            MboxUnit::Batch(batch) => run_all(&mut batch.into_iter()),
            MboxUnit::Range(bounds) => run_all(&mut mbox::Splitter::range(data, fmt, bounds)),
        }
    };
    let mut released = 0usize;
    let emit = |results: Vec<(MboxEntry, R)>| -> Result<(), BulkError> {
        let end = results.last().map(|(e, _)| e.data.end);
        emit(results)?;
        if let Some(end) = end.filter(|_| release_behind) {
            if end - released >= RELEASE_STEP {
                mapped.release(released..end);
                released = end;
            }
        }
        Ok(())
    };
    if framing.parallel(fmt) {
        let max = if wide { CHUNK_MAX_WIDE } else { CHUNK_MAX };
        let first = chunk_size(range.len(), threads, max);
        let units = guided_chunks(range, threads, max).map(|r| {
            let len = r.len();
            (MboxUnit::Range(r), len)
        });
        ordered(pool, units, threads * 4, IN_FLIGHT_BYTES.max(threads * 2 * first), work, emit)
    } else {
        // Batches of consecutive messages (up to BATCH_MESSAGES or BATCH_BYTES): one job, one
        // result slot and one wake-up per batch instead of per message, which matters for
        // small messages and cheap signatures (Ed25519).
        let mut split = mbox::Splitter::range(data, fmt, range).peekable();
        let units = std::iter::from_fn(move || {
            split.peek()?;
            let mut batch = Vec::with_capacity(BATCH_MESSAGES);
            let mut batch_bytes = 0;
            while batch.len() < BATCH_MESSAGES && batch_bytes < BATCH_BYTES {
                let Some(e) = split.next() else { break };
                batch_bytes += e.data.end - e.from_line.start;
                batch.push(e);
            }
            Some((MboxUnit::Batch(batch), batch_bytes))
        });
        ordered(pool, units, IN_FLIGHT / BATCH_MESSAGES, IN_FLIGHT_BYTES, work, emit)
    }
}

/// The size of the next chunk when `left` bytes are still to be handed out to `threads` workers.
fn chunk_size(left: usize, threads: usize, max: usize) -> usize {
    (left / (threads * 4)).clamp(CHUNK_MIN, max).min(left)
}

/// Consecutive byte ranges covering `range`, each a quarter of a worker's share of what is left
/// (guided scheduling): large first, so that a big archive costs few chunks, and down to
/// CHUNK_MIN at the end, so that no worker idles long while another finishes a large last chunk.
fn guided_chunks(
    range: std::ops::Range<usize>,
    threads: usize,
    max: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut at = range.start;
    std::iter::from_fn(move || {
        let size = chunk_size(range.end.checked_sub(at).filter(|&n| n > 0)?, threads, max);
        at += size;
        Some(at - size..at)
    })
}

thread_local! {
    /// Per-worker buffer for directory entries.
    static FILE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A directory entry as a worker sees it: the message bytes and the file's metadata, or why
/// it cannot be read as a message.
pub(crate) type Item<'a> = Result<(&'a [u8], &'a std::fs::Metadata), String>;

/// Runs `job` on every entry of `entries` (relative to `dir`) on the pool, each regular file
/// read into a reused per-worker buffer, and hands the results to `emit` on one writer thread,
/// in input order. Entries that are not regular files, cannot be read, or are larger than
/// `max_message` reach `job` as `Err(reason)`.
pub(crate) fn map_dir<R, J, E>(
    dir: &Path,
    entries: &[DirEntry],
    max_message: u64,
    pool: &rayon::ThreadPool,
    job: J,
    mut emit: E,
) -> Result<SerialCpu, BulkError>
where
    R: Send,
    J: Fn(&Path, Item<'_>) -> R + Sync,
    E: FnMut(&Path, R) -> Result<(), BulkError> + Send,
{
    let one = |entry: &DirEntry| -> R {
        let rel = entry.rel.as_path();
        if let Some(odd) = entry.odd {
            return job(rel, Err(odd.to_string()));
        }
        FILE_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            let read = (|| {
                let mut f = os::open_regular(&dir.join(rel)).map_err(|e| format!("cannot read: {e}"))?;
                let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
                if !meta.is_file() {
                    // Listed as a file, replaced since by a FIFO or device: reading it could
                    // block for ever.
                    return Err("not a regular file any more (replaced during the run)".to_string());
                }
                if meta.len() > max_message {
                    return Err(too_large_reason(meta.len(), max_message));
                }
                std::io::Read::read_to_end(&mut f, &mut buf).map_err(|e| format!("cannot read: {e}"))?;
                Ok(meta)
            })();
            match read {
                Ok(meta) => job(rel, Ok((&buf, &meta))),
                Err(why) => job(rel, Err(why)),
            }
        })
    };
    fn batch_work<'e, R>(one: impl Fn(&DirEntry) -> R) -> impl Fn(&'e [DirEntry]) -> (&'e [DirEntry], Vec<R>) {
        move |batch| (batch, batch.iter().map(&one).collect())
    }
    let work = batch_work(one);
    // Files are read into per-worker buffers, not held in flight: only units are bounded.
    let units = entries.chunks(DIR_BATCH).map(|batch| (batch, 0));
    let threads = pool.current_num_threads().max(1);
    ordered(pool, units, threads * 8, usize::MAX, work, |(batch, results)| {
        for (entry, r) in batch.iter().zip(results) {
            emit(&entry.rel, r)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Every message, its bounds and its job's result, in the order `emit` got them.
    fn run(data: &[u8], fmt: MboxFormat, framing: Framing, threads: usize) -> Vec<(MboxEntry, Vec<u8>)> {
        let mapped = Mapped::Owned(data.to_vec());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut got = vec![];
        map_mbox(
            &mapped,
            fmt,
            0..data.len(),
            &pool,
            framing,
            true,
            |m: mbox::Stored| m.with_unquoted(<[u8]>::to_vec),
            |results| {
                got.extend(results);
                Ok(())
            },
        )
        .unwrap();
        got
    }

    /// Signing the messages of an mbox in groups (two bodies at a time, or sixteen in the
    /// AVX-512 lanes where the CPU prefers them) gives, message by message, what signing each
    /// alone gives, and what signing them in pairs gives: bodies of every size and line end,
    /// quoted `>From ` lines, messages that cannot be signed, an odd count, keys in one and in
    /// two body canonicalizations.
    #[test]
    fn signing_in_pairs_is_signing_each() {
        use crate::dkim::canon::{Canon, Canonicalization};
        use crate::dkim::key::SigningKey;
        use crate::dkim::sign::SignerBuilder;
        use crate::pipeline::{sign_stored, sign_stored_group, sign_stored_two, SignPolicy};
        use std::sync::Arc;
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keys/test-ed.private")).unwrap();
        let key = Arc::new(SigningKey::from_bytes(&pem, "test-ed.private").unwrap());
        let signer = |header, body| {
            SignerBuilder::new(key.clone(), "example.com", "test")
                .canon(Canonicalization { header, body })
                .build()
                .unwrap()
        };
        let mut mbox = Vec::new();
        let line = b"the quarterly report is attached, please review it by friday  \n";
        for i in 0..41usize {
            mbox.extend_from_slice(format!("From sender{i}@example.com Sat Nov 21 10:00:00 2026\n").as_bytes());
            if i % 11 == 5 {
                // No From: cannot be signed.
                mbox.extend_from_slice(b"Subject: no author\n\nbody\n\n");
                continue;
            }
            let nl: &[u8] = if i % 3 == 0 { b"\r\n" } else { b"\n" };
            mbox.extend_from_slice(format!("From: <s{i}@example.com>").as_bytes());
            mbox.extend_from_slice(nl);
            mbox.extend_from_slice(b"Subject: pairs");
            mbox.extend_from_slice(nl);
            mbox.extend_from_slice(nl);
            for l in 0..(i * i * 7) % 1500 {
                if l % 97 == 3 {
                    mbox.extend_from_slice(b">From the quoted line\n");
                }
                let text = &line[..line.len() - 1 - l % 5];
                mbox.extend_from_slice(text);
                mbox.extend_from_slice(nl);
            }
            if i % 4 == 1 {
                mbox.extend_from_slice(b"\n\n\n");
            }
            mbox.extend_from_slice(b"\n");
        }
        let mapped = Mapped::Owned(mbox);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let policies = [
            vec![signer(Canon::Relaxed, Canon::Relaxed)],
            vec![signer(Canon::Simple, Canon::Simple)],
            vec![signer(Canon::Relaxed, Canon::Relaxed), signer(Canon::Relaxed, Canon::Simple)],
        ];
        for signers in policies {
            let policy = SignPolicy {
                keys: crate::select::KeySource::Fixed(signers),
                sender: None,
                strip_own: false,
                now: 1_800_000_000,
                max_message: 1 << 20,
                dkim: true,
                arc: None,
            };
            let shown = |r: crate::pipeline::Signed| format!("{:?}", r.map_err(|e| e.to_string()));
            for framing in [Framing::Serial, Framing::Parallel] {
                let mut alone = vec![];
                map_mbox(
                    &mapped,
                    MboxFormat::Mboxrd,
                    0..mapped.len(),
                    &pool,
                    framing,
                    false,
                    |m| shown(sign_stored(&policy, m)),
                    |r| {
                        alone.extend(r.into_iter().map(|(_, s)| s));
                        Ok(())
                    },
                )
                .unwrap();
                let mut paired = vec![];
                let (pairs, quoted_pairs) =
                    (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
                map_mbox_grouped(
                    &mapped,
                    MboxFormat::Mboxrd,
                    0..mapped.len(),
                    &pool,
                    framing,
                    false,
                    |m| shown(sign_stored(&policy, m)),
                    |group| {
                        pairs.fetch_add(group.len() / 2, std::sync::atomic::Ordering::Relaxed);
                        if group.iter().any(|m| !m.quotes.is_empty()) {
                            quoted_pairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Pairs as the CPU's choice would not make them, and the group signer.
                        let two: Vec<String> = group
                            .chunks(2)
                            .flat_map(|c| match *c {
                                [a, b] => sign_stored_two(&policy, a, b).map(shown).to_vec(),
                                _ => c.iter().map(|&m| shown(sign_stored(&policy, m))).collect(),
                            })
                            .collect();
                        let grouped: Vec<String> = sign_stored_group(&policy, group).into_iter().map(shown).collect();
                        assert_eq!(grouped, two, "group against pairs");
                        grouped
                    },
                    crate::pipeline::lanes_for(&policy),
                    |r| {
                        paired.extend(r.into_iter().map(|(_, s)| s));
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(alone.len(), 41);
                assert!(alone.iter().any(|s| s.starts_with("Err")) && alone.iter().any(|s| s.starts_with("Ok")));
                assert_eq!(paired, alone, "{framing:?}");
                // Most messages went in pairs, some of them stored around quoting `>`s.
                assert!(pairs.into_inner() >= 10 && quoted_pairs.into_inner() > 0);
            }
        }
    }

    /// Parallel framing over many chunks (2.5 MB: 6 to 10 chunks of 256 KB or more) finds exactly the
    /// messages the serial splitter finds, unquoted the same, in the same order, for any number
    /// of threads; so do mboxo and, framed serially whatever is asked, mboxcl2.
    #[test]
    fn framings_and_thread_counts_agree() {
        let data = crate::corpus::generate(600, crate::corpus::SizeDist::LogNormal(4096), 7, true);
        assert!(data.len() > 8 * CHUNK_MIN, "{}", data.len());
        for fmt in [MboxFormat::Mboxrd, MboxFormat::Mboxo, MboxFormat::Mboxcl2] {
            let want = run(&data, fmt, Framing::Serial, 1);
            assert_eq!(want.len(), 600);
            assert!(want.iter().any(|(e, _)| e.quoted) || fmt == MboxFormat::Mboxcl2);
            for threads in [1, 3] {
                let got = run(&data, fmt, Framing::Parallel, threads);
                assert!(got.len() == want.len(), "{fmt:?} {threads}: {} messages", got.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (&g.0.from_line, &g.0.data, &g.0.message, g.0.quoted, &g.0.quotes, &g.1)
                            == (&w.0.from_line, &w.0.data, &w.0.message, w.0.quoted, &w.0.quotes, &w.1),
                        "{fmt:?}, {threads} threads: message {i} differs"
                    );
                }
            }
        }
    }

    /// The chunks cover the range exactly, in order, shrink as it is used up, and end at
    /// CHUNK_MIN (or what is left), whatever the thread count.
    #[test]
    fn guided_chunks_partition_and_shrink() {
        for (range, threads) in [
            (0..1, 1),
            (5..(300 << 20) + 7, 2),
            (0..(600 << 20), 2),
            (0..(3 << 30), 8),
            (0..(3 << 20), 64),
            (1000..1000, 4),
            (0..CHUNK_MIN * 3, 1),
        ] {
            for max in [CHUNK_MAX, CHUNK_MAX_WIDE] {
                let chunks: Vec<_> = guided_chunks(range.clone(), threads, max).collect();
                assert_eq!(chunks.first().map_or(range.end, |c| c.start), range.start);
                assert_eq!(chunks.last().map_or(range.start, |c| c.end), range.end);
                assert!(chunks.windows(2).all(|w| w[0].end == w[1].start && w[0].len() >= w[1].len()), "{range:?}");
                assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= max));
                assert!(chunks.last().is_none_or(|c| c.len() <= CHUNK_MIN));
                if range.len() > 4 * threads * max {
                    assert_eq!(chunks[0].len(), max, "{range:?}, {threads} threads");
                }
            }
        }
    }

    /// An error from the writer ends the run with that error, even while units are still queued.
    #[test]
    fn writer_error_stops_the_run() {
        let data = crate::corpus::generate(600, crate::corpus::SizeDist::Fixed(4096), 3, false);
        let mapped = Mapped::Owned(data.clone());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for framing in [Framing::Serial, Framing::Parallel] {
            let r = map_mbox(
                &mapped,
                MboxFormat::Mboxrd,
                0..data.len(),
                &pool,
                framing,
                true,
                |m: mbox::Stored| m.len(),
                |_| Err(BulkError::Output { path: "x".into(), error: std::io::Error::other("disk full") }),
            );
            assert!(matches!(r, Err(BulkError::Output { .. })), "{framing:?}");
        }
    }

    /// A directory entry listed as a regular file and replaced by a FIFO (or a link) before it
    /// is read is reported, not waited on for ever.
    #[cfg(unix)]
    #[test]
    fn entry_replaced_by_a_fifo_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"From: a@example.com\n\nbody\n").unwrap();
        assert!(std::process::Command::new("mkfifo").arg(dir.path().join("b")).status().unwrap().success());
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("c")).unwrap();
        let entries: Vec<DirEntry> =
            ["a", "b", "c"].iter().map(|n| DirEntry { rel: PathBuf::from(n), odd: None }).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut got = vec![];
        map_dir(
            dir.path(),
            &entries,
            1 << 20,
            &pool,
            |_, item| item.map(|(m, _)| m.len()),
            |rel, r| {
                got.push((rel.to_path_buf(), r));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got[0], (PathBuf::from("a"), Ok(26)));
        assert!(matches!(&got[1].1, Err(why) if why.contains("not a regular file")), "{got:?}");
        assert!(matches!(&got[2].1, Err(why) if why.contains("cannot read")), "{got:?}");
    }
}
