//! System calls the standard library does not wrap, each behind a safe function: memory maps
//! of inputs (with `madvise`), CPU prefetch hints, fcntl record locks, killing a process
//! group, asking whether a process exists and this host's name. The only `unsafe` outside the
//! line-end kernels.

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

/// Opens `path` to read without blocking on a FIFO and without following a symbolic link: a
/// directory entry listed as a regular file may have been replaced since (a mail user's own
/// maildir), and opening a FIFO would wait for a writer for ever. The caller checks that the
/// open file is regular (`metadata().is_file()`).
pub fn open_regular(path: &std::path::Path) -> std::io::Result<File> {
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

/// Signals caught by [`catch_signals`], one bit per signal number, until [`take_signals`].
static PENDING_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(unix)]
extern "C" fn note_signal(sig: libc::c_int) {
    // Async-signal-safe: one atomic OR, nothing else.
    if (0..64).contains(&sig) {
        PENDING_SIGNALS.fetch_or(1u64 << sig, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Catches `signals` (e.g. SIGHUP, SIGTERM): each delivery sets its bit for [`take_signals`],
/// and interrupts a blocking call (no SA_RESTART) so that a daemon's wait returns at once.
#[cfg(unix)]
pub fn catch_signals(signals: &[i32]) -> std::io::Result<()> {
    for &sig in signals {
        // SAFETY: `act` is a zeroed plain C struct we fill; the handler only does an atomic
        // store (async-signal-safe); sigaction copies `act` and does not keep the pointer.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = note_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = 0;
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signals caught since the last call (bit `1 << signum` each), cleared.
pub fn take_signals() -> u64 {
    PENDING_SIGNALS.swap(0, std::sync::atomic::Ordering::SeqCst)
}

/// Waits up to `timeout_ms` for `fd` to be readable (a listening socket: a connection is
/// waiting). `Ok(false)` on timeout or when a signal interrupted the wait.
#[cfg(unix)]
pub fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll(2) on one pollfd we own, for the given time; the descriptor is borrowed, so
    // it stays open for the call.
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(rc > 0)
}

/// Sets the process umask; returns the previous one.
#[cfg(unix)]
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask(2) cannot fail and touches no memory.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// The uid and gid of `user` (a name or a number), and of `group` when given instead of the
/// user's own group. Read before any thread starts (getpwnam is not thread-safe).
#[cfg(unix)]
pub fn lookup_user(user: &str, group: Option<&str>) -> std::io::Result<(u32, u32)> {
    use std::ffi::CString;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string());
    let name = CString::new(user).map_err(|_| bad("user name with a NUL"))?;
    // SAFETY: getpwnam returns null or a pointer to static storage valid until the next
    // getpw* call; we copy the two numbers out at once.
    let (uid, mut gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            match user.parse::<u32>() {
                Ok(n) => (n, n),
                Err(_) => return Err(bad(&format!("no such user {user:?}"))),
            }
        } else {
            ((*pw).pw_uid, (*pw).pw_gid)
        }
    };
    if let Some(g) = group {
        let gname = CString::new(g).map_err(|_| bad("group name with a NUL"))?;
        // SAFETY: as getpwnam above, for the group database.
        gid = unsafe {
            let gr = libc::getgrnam(gname.as_ptr());
            if gr.is_null() {
                g.parse::<u32>().map_err(|_| bad(&format!("no such group {g:?}")))?
            } else {
                (*gr).gr_gid
            }
        };
    }
    Ok((uid, gid))
}

/// Becomes `uid`/`gid` for good: supplementary groups dropped, group first, then user; checks
/// that root cannot be regained.
#[cfg(unix)]
pub fn drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: setgroups/setgid/setuid change process credentials only; the one-element
    // array lives across the call.
    unsafe {
        let groups = [gid as libc::gid_t];
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(err());
        }
        if libc::setgid(gid as libc::gid_t) != 0 {
            return Err(err());
        }
        if libc::setuid(uid as libc::uid_t) != 0 {
            return Err(err());
        }
        if uid != 0 && libc::setuid(0) == 0 {
            return Err(std::io::Error::other("could regain root after dropping privileges"));
        }
    }
    Ok(())
}

/// The effective user id.
#[cfg(unix)]
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() as u32 }
}

/// CPU seconds the calling thread has used (CLOCK_THREAD_CPUTIME_ID): how the pipeline measures
/// its serial part, the coordinating threads (issue 14).
#[cfg(unix)]
pub fn thread_cpu_seconds() -> f64 {
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
pub fn process_exists(pid: u64) -> Option<bool> {
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
pub fn process_exists(_pid: u64) -> Option<bool> {
    None
}

/// This host's name (gethostname(2)), or "localhost" when it cannot be read.
#[cfg(unix)]
pub fn host_name() -> String {
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
pub fn host_name() -> String {
    "localhost".to_string()
}

/// Makes large allocations (message buffers) each their own mapping, given back to the system
/// when freed. glibc otherwise raises its mmap threshold after the first such free (up to
/// 32 MB) and keeps later buffers in per-thread arenas it does not return: a milter with many
/// connection threads and a 64 MB buffer budget peaked at 432 MB of RSS (59 MB with this).
pub fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; any value is valid for it.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
