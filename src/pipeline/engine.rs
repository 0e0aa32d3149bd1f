//! The ordered parallel engine: messages of a mapped mbox, or files of a directory, go to the
//! worker pool in batches and come back to one writer in input order, with memory bounded by
//! the messages and bytes in flight. Knows nothing of signing: it runs a job per message.

use super::*;

/// Most messages between the splitter and the writer.
pub const IN_FLIGHT: usize = 4096;
/// Most input bytes between the splitter and the writer (a new job waits beyond this).
pub const IN_FLIGHT_BYTES: usize = 32 << 20;
/// Most messages in one job.
pub(crate) const BATCH_MESSAGES: usize = 32;
/// Most input bytes in one job (a large message is a job of its own).
pub(crate) const BATCH_BYTES: usize = 256 << 10;
/// The writer hands mapped pages back to the kernel every this many bytes.
pub(crate) const RELEASE_STEP: usize = 8 << 20;

/// CPU seconds of the threads that see every message one after the other: the splitter (this
/// thread: framing, batching, dispatch) and the writer (ordering, output). What they cost per
/// GB bounds the rate any number of workers can reach (issue 14).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SerialCpu {
    /// The splitting thread.
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

/// Runs `job` on every message of a mapped mbox whose `From ` line starts in `range` (all of
/// them with `0..len`; see [`Shard`]) on the pool, each message unquoted for `fmt`, and hands
/// the results to `emit` in input order, on one writer thread.
///
/// Ordered parallel output without barriers (the gzp pattern): the splitter, on this thread,
/// gives each batch of messages to the pool as a job with a one-shot result slot and queues
/// the slot for the writer; the writer takes slots in input order and waits for each. The bounded
/// queue holds at most [`IN_FLIGHT`] jobs (and about [`IN_FLIGHT_BYTES`] of input), which bounds
/// memory; the writer releases mapped pages behind it.
pub fn map_mbox<R, J, E>(
    mapped: &crate::arch::sys::Mapped,
    fmt: MboxFormat,
    range: std::ops::Range<usize>,
    pool: &rayon::ThreadPool,
    job: J,
    mut emit: E,
) -> Result<SerialCpu, BulkError>
where
    R: Send,
    J: Fn(&[u8]) -> R + Sync,
    E: FnMut(&MboxEntry, R) -> Result<(), BulkError> + Send,
{
    if !fmt.uses_content_length() {
        return map_mbox_framed_in_parallel(mapped, fmt, range, pool, job, emit);
    }
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
        let writer = s.spawn(move || -> Result<f64, BulkError> {
            let cpu_start = crate::arch::sys::thread_cpu_seconds();
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
            Ok(crate::arch::sys::thread_cpu_seconds() - cpu_start)
        });
        let mut result = Ok(());
        let mut splitter_cpu = 0.0;
        pool.in_place_scope(|scope| {
            let cpu_start = crate::arch::sys::thread_cpu_seconds();
            let mut split = mbox::Splitter::range(data, fmt, range).peekable();
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
            splitter_cpu = crate::arch::sys::thread_cpu_seconds() - cpu_start;
        });
        drop(out_tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(BulkError::Input { path: "writer".into(), reason: "internal error: the writer thread failed".into() })
        });
        let writer_cpu = written?;
        result.map(|()| SerialCpu { splitter: splitter_cpu, writer: writer_cpu })
    })
}

/// Smallest and largest byte range one worker frames and processes as one job.
const CHUNK_MIN: usize = 256 << 10;
const CHUNK_MAX: usize = 8 << 20;

/// [`map_mbox`] for mboxrd and mboxo, where a separator is any line starting with `From `:
/// the workers frame the messages themselves (issue 14). The range is cut into chunks; each
/// job finds the messages whose `From ` line starts in its chunk ([`mbox::Splitter::range`])
/// and runs `job` on them; the writer takes the chunks' results in order. This thread only
/// hands out chunk bounds, so the serial part is the writer alone. Memory: at most
/// `4 × threads` chunks of results in flight, the input being the map.
fn map_mbox_framed_in_parallel<R, J, E>(
    mapped: &crate::arch::sys::Mapped,
    fmt: MboxFormat,
    range: std::ops::Range<usize>,
    pool: &rayon::ThreadPool,
    job: J,
    mut emit: E,
) -> Result<SerialCpu, BulkError>
where
    R: Send,
    J: Fn(&[u8]) -> R + Sync,
    E: FnMut(&MboxEntry, R) -> Result<(), BulkError> + Send,
{
    let data: &[u8] = mapped;
    let threads = pool.current_num_threads().max(1);
    // Enough chunks to keep every worker busy and balanced, few enough to cost nothing.
    let chunk = ((range.end - range.start) / (threads * 8)).clamp(CHUNK_MIN, CHUNK_MAX);
    type Slot<R> = crossbeam_channel::Receiver<Vec<(MboxEntry, R)>>;
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Slot<R>>(threads * 4);
    let job = &job;
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<f64, BulkError> {
            let cpu_start = crate::arch::sys::thread_cpu_seconds();
            let mut released = 0usize;
            for slot in out_rx {
                let Ok(results) = slot.recv() else {
                    return Err(BulkError::Input {
                        path: "worker".into(),
                        reason: "internal error: a worker thread failed; nothing was replaced".into(),
                    });
                };
                for (e, r) in results {
                    let end = e.data.end;
                    emit(&e, r)?;
                    if end - released >= RELEASE_STEP {
                        mapped.release(released..end);
                        released = end;
                    }
                }
            }
            Ok(crate::arch::sys::thread_cpu_seconds() - cpu_start)
        });
        let mut result = Ok(());
        let mut splitter_cpu = 0.0;
        pool.in_place_scope(|scope| {
            let cpu_start = crate::arch::sys::thread_cpu_seconds();
            let mut at = range.start;
            while at < range.end {
                if interrupted() {
                    result = Err(BulkError::Interrupted);
                    break;
                }
                let end = (at + chunk).min(range.end);
                let (slot_tx, slot_rx) = crossbeam_channel::bounded(1);
                let bounds = at..end;
                scope.spawn(move |_| {
                    let results: Vec<(MboxEntry, R)> = mbox::Splitter::range(data, fmt, bounds)
                        .map(|e| {
                            let r = if e.quoted {
                                SCRATCH.with(|scratch| {
                                    let mut scratch = scratch.borrow_mut();
                                    job(mbox::unquote(fmt, &data[e.message.clone()], &mut scratch))
                                })
                            } else {
                                job(&data[e.message.clone()])
                            };
                            (e, r)
                        })
                        .collect();
                    let _ = slot_tx.send(results);
                });
                if out_tx.send(slot_rx).is_err() {
                    break; // the writer failed; its error is returned below
                }
                at = end;
            }
            splitter_cpu = crate::arch::sys::thread_cpu_seconds() - cpu_start;
        });
        drop(out_tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(BulkError::Input { path: "writer".into(), reason: "internal error: the writer thread failed".into() })
        });
        let writer_cpu = written?;
        result.map(|()| SerialCpu { splitter: splitter_cpu, writer: writer_cpu })
    })
}

thread_local! {
    /// Per-worker buffer for unquoting mbox messages.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
                            return Err(too_large_reason(meta.len(), max_message));
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
