//! File plumbing of the pipeline: output files that appear atomically (temporary file beside
//! the destination, fsync, rename, fsync of the directory) and keep what the original had,
//! devices and FIFOs written as streams, the locks of an mbox rewritten in place, and the
//! interruption handler that cleans up after SIGINT/SIGTERM. Memory maps and the other system
//! calls are in [`crate::arch::sys`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What an output file keeps besides its bytes: permission bits always; with `--in-place`
/// also the owner, group and access/modification times of the file it replaces, so that a
/// mailbox stays its user's and a maildir message keeps its arrival date (issue 11, item 3).
#[derive(Clone, Debug)]
pub struct Keep {
    mode: u32,
    owner: Option<(u32, u32)>,
    times: Option<(std::time::SystemTime, std::time::SystemTime)>,
}

impl Keep {
    /// A new file with permission bits `mode`, owned by us, with the current time.
    pub fn mode(mode: u32) -> Keep {
        Keep { mode, owner: None, times: None }
    }

    /// Everything of an existing file: mode, owner, group, atime and mtime.
    #[cfg(unix)]
    pub fn all_of(meta: &std::fs::Metadata) -> Keep {
        use std::os::unix::fs::MetadataExt as _;
        let times = match (meta.accessed(), meta.modified()) {
            (Ok(a), Ok(m)) => Some((a, m)),
            _ => None,
        };
        Keep { mode: meta.mode() & 0o7777, owner: Some((meta.uid(), meta.gid())), times }
    }

    /// Mode and times of an existing file, not its owner (a copy to a new place).
    #[cfg(unix)]
    pub fn copy_of(meta: &std::fs::Metadata) -> Keep {
        Keep { owner: None, ..Keep::all_of(meta) }
    }

    /// Applies owner, mode and times to the open file `f` (after its last write: a write
    /// would change the modification time again).
    fn apply(&self, f: &File) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
            if let Some((uid, gid)) = self.owner {
                let now = f.metadata()?;
                if (now.uid(), now.gid()) != (uid, gid) {
                    std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot give the new file the owner {uid}:{gid} of the original ({e}); the original is left as it was"),
                        )
                    })?;
                }
            }
            // After chown, which clears set-id bits.
            f.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        }
        if let Some((atime, mtime)) = self.times {
            f.set_times(std::fs::FileTimes::new().set_accessed(atime).set_modified(mtime))?;
        }
        Ok(())
    }
}

/// Paths to remove if the process is stopped by a signal: temporary files in progress and
/// dot-locks held. An entry leaves the list when its owner commits or drops it.
static CLEANUP: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn register(p: &Path) {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).push(p.to_path_buf());
}

fn unregister(p: &Path) {
    let mut list = CLEANUP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = list.iter().rposition(|q| q == p) {
        list.swap_remove(i);
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How long a run may take to notice an interruption and unwind by itself before the handler
/// removes the registered files and exits.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Exit status after SIGINT/SIGTERM (README: 130 for both).
pub const INTERRUPTED_EXIT: i32 = 130;

/// Makes SIGINT, SIGTERM and SIGHUP (unless ignored, as under `nohup`) stop the run: the flag is raised at once, so bulk runs
/// unwind between batches (dropping temporary files, releasing locks) and exit 130; a run
/// blocked elsewhere (reading a pipe) is ended after a grace of two seconds by the handler
/// itself, which first removes every registered temporary file and dot-lock (issue 11, item
/// 13). Either way no original is replaced by partial output.
pub fn install_interrupt_handler() {
    crate::arch::sys::keeping_ignored_sighup(install_handler);
}

fn install_handler() {
    let _ = ctrlc::set_handler(|| {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(INTERRUPT_GRACE);
        let list = CLEANUP.lock().unwrap_or_else(|e| e.into_inner());
        for p in list.iter() {
            let _ = std::fs::remove_file(p);
        }
        std::process::exit(INTERRUPTED_EXIT);
    });
}

/// Whether SIGINT/SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// An output file that replaces `dest` only when [`AtomicFile::commit`] is called; dropping it
/// before that removes the temporary file and leaves `dest` as it was.
pub struct AtomicFile {
    tmp: Option<tempfile::NamedTempFile>,
    dest: PathBuf,
    keep: Keep,
}

impl AtomicFile {
    /// Creates the temporary file in the directory of `dest`; `keep` says what it takes over
    /// at commit.
    pub fn create(dest: &Path, keep: &Keep) -> std::io::Result<AtomicFile> {
        let dir = parent_dir(dest);
        // tempfile's error names the temporary path; the user knows only `dest`.
        let tmp = tempfile::Builder::new()
            .prefix(".dkimpress-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("in {}: {}", dir.display(), strip_path_note(&e))))?;
        // tempfile creates it 0600: nobody else reads it while it is written; `keep.apply`
        // sets the final mode at commit.
        register(tmp.path());
        Ok(AtomicFile { tmp: Some(tmp), dest: dest.to_path_buf(), keep: keep.clone() })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_mut().expect("not committed").as_file_mut()
    }

    /// Owner, mode and times, fsync, rename over the destination, fsync the directory.
    pub fn commit(mut self) -> std::io::Result<()> {
        self.commit_checked(|| Ok(()))
    }

    /// As [`AtomicFile::commit`], with `check` run right before the rename: an error from it
    /// leaves the destination untouched (an mbox that changed under its locks).
    pub fn commit_checked(&mut self, check: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
        let tmp = self.tmp.take().expect("committed once");
        let path = tmp.path().to_path_buf();
        let result = (|| {
            self.keep.apply(tmp.as_file())?;
            tmp.as_file().sync_all()?;
            if interrupted() {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
            }
            check()?;
            tmp.persist(&self.dest).map_err(|e| e.error)?;
            Ok(())
        })();
        unregister(&path);
        result?;
        // The rename is durable once the directory is synced; not all file systems allow it.
        if let Ok(d) = File::open(parent_dir(&self.dest)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            unregister(tmp.path());
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file().write(buf)
    }
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.file().write_vectored(bufs)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file().flush()
    }
}

/// Where a named output goes (issue 11, item 2): a new or regular file is replaced atomically;
/// a device, FIFO or socket is written as a stream (`-o /dev/null` must stay a device); a
/// symbolic link is refused, so that a link planted where output is expected cannot send it
/// elsewhere, nor be replaced by a regular file.
pub enum Output {
    /// A regular file, replaced at commit.
    Atomic(AtomicFile),
    /// A device or FIFO, written in place.
    Stream(File),
}

/// Why an output cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// `-o` names a symbolic link.
    #[error("{0}: is a symbolic link to a file (or to nothing); dkimpress writes through links only to devices and pipes: give the path it points to")]
    Symlink(String),
    /// `-o` names a directory where a file is expected.
    #[error("{0}: is a directory")]
    Directory(String),
    /// Creating or opening failed.
    #[error("{path}: cannot create: {error}")]
    Create {
        /// The output.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

impl Output {
    /// Opens `dest` as its kind requires. `streams`: whether a device or FIFO may be written
    /// (false inside output directories, where one is refused like a link).
    pub fn open(dest: &Path, keep: &Keep, streams: bool) -> Result<Output, OutputError> {
        let shown = dest.display().to_string();
        match std::fs::symlink_metadata(dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(OutputError::Create { path: shown, error }),
            // A link to a device, FIFO or pipe (`-o /dev/stdout`) is written through as a
            // stream; a link to a regular file or to nothing is refused.
            Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(dest) {
                Ok(t) if streams && !t.is_file() && !t.is_dir() => {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(dest)
                        .map_err(|error| OutputError::Create { path: shown, error })?;
                    return Ok(Output::Stream(f));
                }
                _ => return Err(OutputError::Symlink(shown)),
            },
            Ok(m) if m.is_dir() => return Err(OutputError::Directory(shown)),
            Ok(m) if m.is_file() => {}
            Ok(_) if streams => {
                // No O_CREAT, no O_TRUNC: a device or FIFO is used as it is.
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dest)
                    .map_err(|error| OutputError::Create { path: shown, error })?;
                return Ok(Output::Stream(f));
            }
            Ok(_) => {
                return Err(OutputError::Create {
                    path: shown,
                    error: std::io::Error::other("not a regular file (device, FIFO or socket)"),
                })
            }
        }
        AtomicFile::create(dest, keep).map(Output::Atomic).map_err(|error| OutputError::Create { path: shown, error })
    }

    /// Makes the output final: rename for a file, flush for a stream.
    pub fn commit(self) -> std::io::Result<()> {
        match self {
            Output::Atomic(f) => f.commit(),
            Output::Stream(mut f) => f.flush(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Atomic(f) => f.write(buf),
            Output::Stream(f) => f.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Output::Atomic(f) => f.write_vectored(bufs),
            Output::Stream(f) => f.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Atomic(f) => f.flush(),
            Output::Stream(f) => f.flush(),
        }
    }
}

/// Most slices one `writev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// Writes all of `parts` in as few `writev` calls as the kernel allows, straight from where the
/// slices point (the map): no copy in user space. Empty slices are skipped; a short write goes
/// on where it stopped.
pub fn write_all_vectored(w: &mut dyn Write, mut parts: &mut [std::io::IoSlice<'_>]) -> std::io::Result<()> {
    std::io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match w.write_vectored(&parts[..parts.len().min(IOV_MAX)]) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "failed to write whole buffer")),
            Ok(n) => std::io::IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An I/O error's message without tempfile's ` at path "..."` note.
fn strip_path_note(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" at path \"") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `parts` to `dest` atomically.
pub fn write_atomic(dest: &Path, parts: &[&[u8]], mode: u32) -> std::io::Result<()> {
    let mut f = AtomicFile::create(dest, &Keep::mode(mode))?;
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

/// The locks an mbox is rewritten under (`--in-place`), as mail delivery agents and readers
/// honour them (issue 11, item 4): a dot-lock `FILE.lock` (procmail, Postfix local(8),
/// mutt), an fcntl write lock (Dovecot, mutt, Postfix) and an flock (Postfix, some LDAs) on
/// the file, all held until the new file has replaced the old one. The size, modification
/// time and inode seen after locking are checked again right before the rename, so mail that
/// arrives from a writer that ignores all three makes the run fail rather than vanish.
///
/// The file must be mapped through [`MboxLock::file`]: fcntl locks belong to the process and
/// close with *any* descriptor of the file, so opening and closing it elsewhere would drop them.
pub struct MboxLock {
    file: File,
    dotlock: Option<PathBuf>,
    seen: (u64, Option<std::time::SystemTime>, u64),
}

/// Why an mbox cannot be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another program holds a lock for longer than the timeout.
    #[error("{path}: {what} is held by another program (waited {secs} s); try again later{hint}")]
    Busy {
        /// The lock file or the mbox.
        path: String,
        /// Which lock.
        what: &'static str,
        /// How long we waited.
        secs: u64,
        /// What to do about a stale dot-lock.
        hint: &'static str,
    },
    /// Opening the mbox or creating the dot-lock failed.
    #[error("{path}: cannot lock: {error}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

fn file_state(meta: &std::fs::Metadata) -> (u64, Option<std::time::SystemTime>, u64) {
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let ino = 0;
    (meta.len(), meta.modified().ok(), ino)
}

impl MboxLock {
    /// Takes the three locks on `path`, waiting up to `timeout` for each.
    pub fn acquire(path: &Path, timeout: std::time::Duration) -> Result<MboxLock, LockError> {
        let shown = path.display().to_string();
        let io_err = |p: &str, error| LockError::Io { path: p.to_string(), error };
        let deadline = std::time::Instant::now() + timeout;
        let wait = || {
            if std::time::Instant::now() >= deadline || interrupted() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            true
        };
        // 1. The dot-lock: FILE.lock created exclusively, holding our pid.
        let mut dot = path.as_os_str().to_owned();
        dot.push(".lock");
        let dot = PathBuf::from(dot);
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&dot) {
                Ok(mut f) => {
                    register(&dot);
                    let _ = writeln!(f, "{}", std::process::id());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !wait() {
                        return Err(LockError::Busy {
                            path: dot.display().to_string(),
                            what: "the dot-lock",
                            secs: timeout.as_secs(),
                            hint: " (if no program holds it, it is stale: remove it)",
                        });
                    }
                }
                Err(e) => return Err(io_err(&dot.display().to_string(), e)),
            }
        }
        // From here on, dropping `lock` removes the dot-lock.
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&dot);
                unregister(&dot);
                return Err(io_err(&shown, e));
            }
        };
        let mut lock = MboxLock { file, dotlock: Some(dot), seen: (0, None, 0) };
        // 2. fcntl write lock on the whole file.
        loop {
            match crate::arch::sys::fcntl_write_lock(&lock.file) {
                Ok(true) => break,
                Ok(false) if wait() => {}
                Ok(false) => {
                    return Err(LockError::Busy {
                        path: shown,
                        what: "an fcntl lock",
                        secs: timeout.as_secs(),
                        hint: "",
                    })
                }
                Err(e) => return Err(io_err(&shown, e)),
            }
        }
        // 3. flock.
        loop {
            match lock.file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if wait() => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(LockError::Busy { path: shown, what: "an flock", secs: timeout.as_secs(), hint: "" })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&shown, e)),
            }
        }
        lock.seen = file_state(&lock.file.metadata().map_err(|e| io_err(&shown, e))?);
        Ok(lock)
    }

    /// The locked file, to map.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Fails unless `path` is still the file we locked, with the size and modification time
    /// it had then.
    pub fn check_unchanged(&self, path: &Path) -> std::io::Result<()> {
        let now = file_state(&std::fs::metadata(path)?);
        if now != self.seen {
            return Err(std::io::Error::other(format!(
                "changed during the run ({} -> {} octets): another program wrote to it without honouring the locks; the original was not replaced, run again",
                self.seen.0, now.0
            )));
        }
        Ok(())
    }
}

impl Drop for MboxLock {
    fn drop(&mut self) {
        if let Some(dot) = self.dotlock.take() {
            let _ = std::fs::remove_file(&dot);
            unregister(&dot);
        }
    }
}
