//! System calls of the pipeline that the standard library does not wrap, each behind a safe
//! function: memory maps of inputs (with `madvise`), opening a file without following a link
//! or blocking on a FIFO, positional vectored writes, fcntl record locks, keeping an ignored SIGHUP ignored, asking whether
//! a process exists, this host's name and a thread's CPU time.
//!
//! Does not own the daemon's and the MTA commands' OS calls (users, privileges, signals,
//! process groups): those are in the binary, next to their only users.

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

/// Opens `path` to read without blocking on a FIFO and without following a symbolic link: a
/// directory entry listed as a regular file may have been replaced since (a mail user's own
/// maildir), and opening a FIFO would wait for a writer for ever. The caller checks that the
/// open file is regular (`metadata().is_file()`).
pub(crate) fn open_regular(path: &std::path::Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NONBLOCK | libc::O_NOFOLLOW);
    o.open(path)
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

/// Most slices one `writev`/`pwritev` takes (Linux's IOV_MAX).
pub(crate) const IOV_MAX: usize = 1024;

/// Writes all of `parts` to `file` at `offset` in as few `pwritev` calls as the kernel allows,
/// straight from where the slices point; a short write goes on where it stopped. Several
/// threads may write disjoint ranges of one file at once (the file position is not used).
#[cfg(unix)]
pub(crate) fn pwritev_all(file: &File, mut parts: &mut [std::io::IoSlice<'_>], mut offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    std::io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = parts.len().min(IOV_MAX);
        let at = libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("file offset out of range"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` (std guarantees it on Unix),
        // the first `n` slices are valid for the call and only read; the descriptor is open.
        let rc = unsafe { libc::pwritev(file.as_raw_fd(), parts.as_ptr().cast::<libc::iovec>(), n as libc::c_int, at) };
        match rc {
            0 => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "failed to write whole buffer")),
            n if n > 0 => {
                offset += n as u64;
                std::io::IoSlice::advance_slices(&mut parts, n as usize);
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// `pwritev_all` without `pwritev`: one positional write per slice.
#[cfg(not(unix))]
pub(crate) fn pwritev_all(file: &File, parts: &mut [std::io::IoSlice<'_>], mut offset: u64) -> std::io::Result<()> {
    for p in parts.iter() {
        std::os::windows::fs::FileExt::seek_write(file, p, offset)?;
        offset += p.len() as u64;
    }
    Ok(())
}

/// Starts writing `len` bytes of `file` at `offset` back to the disk without waiting for it
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`), so that the fsync before an output's
/// rename finds most of it written already: the disk works while the workers still sign.
/// Advice only: errors are ignored, and the fsync that makes the file durable comes later.
pub(crate) fn start_writeback(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let (Ok(at), Ok(n)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else { return };
        // SAFETY: a plain system call on an open descriptor; it reads no memory of ours.
        let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), at, n, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Tries an fcntl write lock on the whole of `f`: Ok(false) when another process holds one.
#[cfg(unix)]
pub(crate) fn fcntl_write_lock(f: &File) -> std::io::Result<bool> {
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
pub(crate) fn fcntl_write_lock(_f: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// Runs `install` (which sets signal handlers), then puts SIGHUP back to "ignored" if it was
/// ignored before: a run started under `nohup` must survive the terminal going away, as the
/// user asked, even though SIGINT/SIGTERM/SIGHUP handlers are installed for clean interruption.
#[cfg(unix)]
pub(crate) fn keeping_ignored_sighup(install: impl FnOnce()) {
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
pub(crate) fn keeping_ignored_sighup(install: impl FnOnce()) {
    install();
}

/// CPU seconds the calling thread has used (CLOCK_THREAD_CPUTIME_ID): how the pipeline measures
/// its serial part, the coordinating threads.
#[cfg(unix)]
pub(crate) fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Whether process `pid` exists on this host, as kill(pid, 0) tells: `Some(true)` when it does
/// (also when it belongs to another user: EPERM), `Some(false)` when there is no such process
/// (ESRCH), `None` when it cannot be told (pid 0, negative or out of range: never asked, as
/// kill would then address a process group). Used to judge the PID in a dot-lock.
#[cfg(unix)]
pub(crate) fn process_exists(pid: u64) -> Option<bool> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    // SAFETY: kill(2) with signal 0 sends nothing: it only checks that `pid` (> 0, one
    // process, never a group) exists and may be signalled; it touches no memory of ours.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return Some(true);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Some(false),
        Some(libc::EPERM) => Some(true),
        _ => None,
    }
}

/// Without kill(2): never known.
#[cfg(not(unix))]
pub(crate) fn process_exists(_pid: u64) -> Option<bool> {
    None
}

/// This host's name (gethostname(2)), or "localhost" when it cannot be read.
#[cfg(unix)]
pub(crate) fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` octets into `buf`, which we own; the
    // result is read only up to the first NUL (or the whole buffer, if truncated without one).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = &buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())];
    if rc != 0 || name.is_empty() {
        return "localhost".to_string();
    }
    String::from_utf8_lossy(name).into_owned()
}

/// Without gethostname(2).
#[cfg(not(unix))]
pub(crate) fn host_name() -> String {
    "localhost".to_string()
}
