//! System calls the standard library does not wrap, each behind a safe function: memory maps
//! of inputs (with `madvise`), CPU prefetch hints, fcntl record locks, and killing a process
//! group. The only `unsafe` outside the line-end kernels.

use std::fs::File;

/// A read-only view of a whole file: a memory map, or nothing for an empty file (which cannot
/// be mapped).
pub enum Mapped {
    /// A mapped non-empty file.
    Map(memmap2::Mmap),
    /// An empty file.
    Empty,
    /// Bytes already in memory (generated benchmark corpora, tests).
    Owned(Vec<u8>),
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Empty => &[],
            Mapped::Owned(v) => v,
        }
    }
}

impl Mapped {
    /// Tells the kernel that `range` will not be read again, so its pages leave this process's
    /// resident set (they stay in the page cache). Keeps the RSS of a pass over a multi-GB mbox
    /// at the size of the windows in flight. Advice only: errors are ignored.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let Mapped::Map(m) = self else { return };
        let page = 4096;
        // Whole pages inside the range only: a page shared with unreleased data stays.
        let start = range.start.div_ceil(page) * page;
        let end = (range.end / page) * page;
        if end <= start || end > m.len() {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only, file-backed mapping discards our page table
        // entries only; a later read of the range faults the same file contents back in, so
        // slices into it stay valid. The caller passes ranges it has finished with anyway.
        #[cfg(unix)]
        unsafe {
            let _ = m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
        }
    }
}

/// Asks the CPU to start loading `bytes` into its caches, one prefetch per 64-byte line, and
/// returns at once. SHA-256 with SHA-NI reads its input too slowly for the hardware prefetcher
/// to run ahead of it, so a body that comes cold from memory (a large mbox, read once) stalls
/// the hasher on every line. Prefetching the next chunk while the current one is hashed overlaps
/// the two (benches/REPORT.md, 2026-11-22).
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: PREFETCHT0 is a hint: it never faults, does not change memory, and the
        // address is inside `bytes` anyway.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(off).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Octets handled between two prefetches, and how far ahead of the reader they reach. Spread
/// out like this (a few lines per piece) the requests overlap with the work; one burst per
/// large chunk fills the CPU's miss buffers and stalls it instead (benches/REPORT.md,
/// 2026-11-22, session 2).
pub const PREFETCH_PIECE: usize = 1024;
/// See [`PREFETCH_PIECE`].
pub const PREFETCH_DISTANCE: usize = 24 * 1024;

/// Hands `data[range]` to `f` a piece of [`PREFETCH_PIECE`] octets at a time, each after a
/// prefetch of the piece [`PREFETCH_DISTANCE`] further on: for the first pass over data that
/// comes cold from memory (unquoting a message of a large mbox, hashing in benchmarks).
pub fn in_prefetched_pieces(data: &[u8], range: std::ops::Range<usize>, mut f: impl FnMut(&[u8])) {
    let mut at = range.start;
    while at < range.end {
        let end = (at + PREFETCH_PIECE).min(range.end);
        let ahead = (at + PREFETCH_DISTANCE).min(data.len());
        prefetch(&data[ahead..(ahead + PREFETCH_PIECE).min(data.len())]);
        f(&data[at..end]);
        at = end;
    }
}

/// Maps `file` for one sequential pass.
pub fn map(file: &File) -> std::io::Result<Mapped> {
    if file.metadata()?.len() == 0 {
        return Ok(Mapped::Empty);
    }
    // SAFETY: the map is read-only and private to this process. The one hazard is another
    // process truncating or rewriting the file while we read it, which would make the slice
    // change under us (or SIGBUS on truncation). Like ripgrep and every mmap-based mail tool,
    // we require that an archive is not modified while it is being signed (README). With
    // --in-place we replace the file by rename, which leaves the mapped inode intact.
    let map = unsafe { memmap2::Mmap::map(file)? };
    // Advice only; failure is harmless.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Mapped::Map(map))
}

/// Tries an fcntl write lock on the whole of `f`: Ok(false) when another process holds one.
#[cfg(unix)]
pub fn fcntl_write_lock(f: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `flock` is a plain C struct, fully initialised (zeroed, then the fields fcntl
    // reads are set); F_SETLK only reads it, and the descriptor is open for the call.
    let rc = unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = 0;
        fl.l_len = 0; // to the end of the file, however it grows
        libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl)
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(unix))]
pub fn fcntl_write_lock(_f: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// Sends SIGKILL to the process group `pgid` (a child started with `process_group(0)`, whose
/// group id is its pid): a hung re-injection command and what it started end together.
#[cfg(unix)]
pub fn kill_process_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    if pgid <= 1 {
        return; // never "every process" (-1) or our own group (0)
    }
    // SAFETY: kill(2) with a negative pid signals that process group; it touches no memory
    // of ours. The group is the one our child was placed in.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// No process groups: nothing to do.
#[cfg(not(unix))]
pub fn kill_process_group(_pgid: u32) {}

/// Runs `install` (which sets signal handlers), then puts SIGHUP back to "ignored" if it was
/// ignored before: a run started under `nohup` must survive the terminal going away, as the
/// user asked, even though SIGINT/SIGTERM/SIGHUP handlers are installed for clean interruption.
#[cfg(unix)]
pub fn keeping_ignored_sighup(install: impl FnOnce()) {
    // SAFETY: sigaction with a null new action only reads the current disposition into `old`,
    // a zeroed plain C struct we own.
    let ignored = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    };
    install();
    if ignored {
        // SAFETY: setting SIGHUP to SIG_IGN installs no code of ours; it only restores the
        // disposition the process was started with.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
    }
}

/// No signals to keep: just install.
#[cfg(not(unix))]
pub fn keeping_ignored_sighup(install: impl FnOnce()) {
    install();
}
