//! File plumbing of the pipeline: output files that appear atomically (temporary file beside
//! the destination, fsync, rename, fsync of the directory) and keep what the original had,
//! devices and FIFOs written as streams, the names of our temporary files, and the
//! interruption handler that cleans up after SIGINT/SIGTERM. The locks of an mbox rewritten in
//! place are in [`super::lock`]; memory maps and the other system calls in [`super::os`].

use super::os;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What an output file keeps besides its bytes: permission bits always; with `--in-place`
/// also the owner, group and access/modification times of the file it replaces, so that a
/// mailbox stays its user's and a maildir message keeps its arrival date.
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

    /// Owner, group and mode of an existing file, with the current time (a new version of
    /// it, or a file made to sit beside it).
    #[cfg(unix)]
    pub fn owner_and_mode(meta: &std::fs::Metadata) -> Keep {
        Keep { times: None, ..Keep::all_of(meta) }
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

pub(super) fn register(p: &Path) {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).push(p.to_path_buf());
}

pub(super) fn unregister(p: &Path) {
    let mut list = CLEANUP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = list.iter().rposition(|q| q == p) {
        list.swap_remove(i);
    }
}

/// Whether `p` is a temporary file or dot-lock this process holds.
pub(super) fn is_registered(p: &Path) -> bool {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|q| q == p)
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
/// itself, which first removes every registered temporary file and dot-lock. Either way no
/// original is replaced by partial output.
pub fn install_interrupt_handler() {
    os::keeping_ignored_sighup(install_handler);
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
    /// at commit. Its name, `.dkimpress-PID-HOST-RANDOM.tmp`, says which process made it, so
    /// that a later run can tell a leftover of a killed run from a file still being written
    /// (see [`super::lock::MboxLock::acquire`]).
    pub fn create(dest: &Path, keep: &Keep) -> std::io::Result<AtomicFile> {
        let dir = parent_dir(dest);
        // tempfile's error names the temporary path; the user knows only `dest`.
        let tmp = tempfile::Builder::new()
            .prefix(&tmp_prefix())
            .suffix(TMP_SUFFIX)
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

/// Where a named output goes: a new or regular file is replaced atomically;
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

/// Writes all of `parts` in as few `writev` calls as the kernel allows, straight from where the
/// slices point (the map): no copy in user space. Empty slices are skipped; a short write goes
/// on where it stopped.
pub fn write_all_vectored(w: &mut dyn Write, mut parts: &mut [std::io::IoSlice<'_>]) -> std::io::Result<()> {
    std::io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match w.write_vectored(&parts[..parts.len().min(os::IOV_MAX)]) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "failed to write whole buffer")),
            Ok(n) => std::io::IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Output units written at their final offsets in one file by pool threads, in any order: the
/// thread that knows the offsets (the ordered writer) reserves room for a unit, a pool job
/// writes it. At most `max` bytes are reserved and not yet written, which bounds what the
/// waiting jobs hold; the first failure is kept, and stops further reservations.
pub(crate) struct WritesAt<'f> {
    file: &'f File,
    /// Bytes reserved and not yet written; the first failure.
    state: std::sync::Mutex<(usize, Option<std::io::Error>)>,
    written: std::sync::Condvar,
    max: usize,
}

impl<'f> WritesAt<'f> {
    pub(crate) fn new(file: &'f File, max: usize) -> WritesAt<'f> {
        WritesAt { file, state: std::sync::Mutex::new((0, None)), written: std::sync::Condvar::new(), max }
    }

    /// Waits while more than `max` bytes would be in flight (one unit larger than that goes
    /// alone), then reserves `bytes`. A write that failed so far is returned instead.
    pub(crate) fn reserve(&self, bytes: usize) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 > 0 && s.0 + bytes > self.max && s.1.is_none() {
            s = self.written.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = &s.1 {
            return Err(std::io::Error::new(e.kind(), e.to_string()));
        }
        s.0 += bytes;
        Ok(())
    }

    /// Writes `parts` at `offset` (on any thread) and gives back the `bytes` reserved for
    /// them. Nothing is written once a write has failed: the output is discarded anyway.
    pub(crate) fn write(&self, parts: &mut [std::io::IoSlice<'_>], offset: u64, bytes: usize) {
        let failed = self.state.lock().unwrap_or_else(|e| e.into_inner()).1.is_some();
        let result = if failed { Ok(()) } else { os::pwritev_all(self.file, parts, offset) };
        if result.is_ok() {
            os::start_writeback(self.file, offset, bytes);
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= bytes;
        if let (Err(e), None) = (result, &s.1) {
            s.1 = Some(e);
        }
        self.written.notify_all();
    }

    /// Once every reserved unit has been written: the first failure, if any.
    pub(crate) fn finish(self) -> std::io::Result<()> {
        let (pending, failed) = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        debug_assert!(pending == 0 || failed.is_some(), "{pending} bytes reserved and never written");
        failed.map_or(Ok(()), Err)
    }
}

/// An I/O error's message without tempfile's ` at path "..."` note.
fn strip_path_note(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" at path \"") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

pub(super) fn parent_dir(p: &Path) -> &Path {
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

/// Start of every temporary file name of ours.
const TMP_START: &str = ".dkimpress-";
/// End of every temporary file name of ours.
pub(super) const TMP_SUFFIX: &str = ".tmp";

/// This host's name, read once.
pub(super) fn host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(os::host_name)
}

/// This host's name as it goes into a file name: letters, digits, `.` and `_` kept, anything
/// else (`-` included, which separates the parts of the name) made `_`, at most 64 octets.
pub(super) fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        host()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '_' })
            .take(64)
            .collect()
    })
}

/// `.dkimpress-PID-HOST-`: the start of this process's temporary file names.
pub(super) fn tmp_prefix() -> String {
    format!("{TMP_START}{}-{}-", std::process::id(), host_tag())
}

/// Who made a temporary file, as its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TmpMaker<'a> {
    /// `.dkimpress-PID-HOST-RANDOM.tmp`.
    Process(u64, &'a str),
    /// `.dkimpress-RANDOM.tmp`: older dkimpress, which did not record its process.
    Unknown,
}

/// Whether `name` is one of our temporary file names, and who made it. Nothing else matches:
/// the name must be exactly one of the two forms, with the random part tempfile makes
/// (letters and digits).
pub(super) fn tmp_maker(name: &str) -> Option<TmpMaker<'_>> {
    let inner = name.strip_prefix(TMP_START)?.strip_suffix(TMP_SUFFIX)?;
    let is_random = |r: &str| (1..=16).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric());
    let mut parts = inner.split('-');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(r), None, None, None) if is_random(r) => Some(TmpMaker::Unknown),
        (Some(pid), Some(host), Some(r), None)
            if !pid.is_empty()
                && pid.len() <= 10
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
                && is_random(r) =>
        {
            Some(TmpMaker::Process(pid.parse().ok()?, host))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_names_tell_their_maker() {
        for (name, want) in [
            (".dkimpress-1234-mail.example.com-Ab3dE9.tmp", Some(TmpMaker::Process(1234, "mail.example.com"))),
            (".dkimpress-1-box_1-stale.tmp", Some(TmpMaker::Process(1, "box_1"))),
            (".dkimpress-Ab3dE9.tmp", Some(TmpMaker::Unknown)),
            // Not ours, or not exactly our form: never touched.
            (".dkimpress-Ab3dE9.tmp.bak", None),
            ("dkimpress-Ab3dE9.tmp", None),
            (".dkimpress-.tmp", None),
            (".dkimpress-12x4-host-abc.tmp", None),
            (".dkimpress-1234-host-with-dash-abc.tmp", None),
            (".dkimpress-1234--abc.tmp", None),
            (".dkimpress-1234-host-a.b.tmp", None),
            (".dkimpress-12345678901-host-abc.tmp", None),
            ("a.mbox.lock", None),
        ] {
            assert_eq!(tmp_maker(name), want, "{name}");
        }
        let ours = format!("{}Xy12Zq{TMP_SUFFIX}", tmp_prefix());
        assert_eq!(tmp_maker(&ours), Some(TmpMaker::Process(u64::from(std::process::id()), host_tag())));
    }
}
