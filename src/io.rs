//! File plumbing for the adapters: memory maps of large inputs, and output files that appear
//! atomically (temporary file beside the destination, fsync, rename, fsync of the directory).
//!
//! All `unsafe` of the crate lives here.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// An output file that replaces `dest` only when [`AtomicFile::commit`] is called; dropping it
/// before that removes the temporary file and leaves `dest` as it was.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary file in the directory of `dest`, with permission bits `mode`.
    pub fn create(dest: &Path, mode: u32) -> std::io::Result<AtomicFile> {
        let dir = parent_dir(dest);
        let tmp = tempfile::Builder::new().prefix(".dkimpress-").suffix(".tmp").tempfile_in(dir)?;
        set_mode(tmp.path(), mode)?;
        Ok(AtomicFile { tmp, dest: dest.to_path_buf() })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// fsync, rename over the destination, fsync the directory.
    pub fn commit(self) -> std::io::Result<()> {
        self.tmp.as_file().sync_all()?;
        let dest = self.dest;
        self.tmp.persist(&dest).map_err(|e| e.error)?;
        // The rename is durable once the directory is synced; not all file systems allow it.
        if let Ok(d) = File::open(parent_dir(&dest)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Permission bits of an existing file (0o644 where they cannot be read).
pub fn mode_of(path: &Path) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        0o644
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Writes `parts` to `dest` atomically.
pub fn write_atomic(dest: &Path, parts: &[&[u8]], mode: u32) -> std::io::Result<()> {
    let mut f = AtomicFile::create(dest, mode)?;
    for p in parts {
        f.write_all(p)?;
    }
    f.commit()
}

/// Standard output as an unbuffered `File` (fd 1), for large sequential output.
#[cfg(unix)]
pub fn stdout_raw() -> impl Write + Send {
    use std::os::fd::AsFd as _;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(File::from(fd)) as Box<dyn Write + Send>,
        Err(_) => Box::new(std::io::stdout()),
    }
}

/// Standard output (non-Unix: std's own).
#[cfg(not(unix))]
pub fn stdout_raw() -> impl Write + Send {
    std::io::stdout()
}
