//! The locks an mbox is rewritten in place under (dot-lock, fcntl, flock), as mail delivery
//! honours them, and the breaking of stale dot-locks and temporary files that killed runs
//! left. The atomic replacement itself is [`super::io::AtomicFile`]'s.

use super::interrupted;
use super::io::{
    host, host_tag, is_registered, parent_dir, register, tmp_maker, tmp_prefix, unregister, TmpMaker, TMP_SUFFIX,
};
use super::os;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A dot-lock, or a temporary file of ours, that has not changed for this long is stale
/// whatever process it names: Postfix's `stale_lock_time` default, by which local(8) already
/// breaks such a lock (procmail waits 17 minutes, liblockfile 5). The age is taken from the
/// inode change time (ctime), as Postfix does: it cannot be set back, and moves with every
/// write, chmod and touch. A run that holds a lock touches it every minute, so
/// its lock never looks stale however long the run takes.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(500);

/// How often a held dot-lock is touched (liblockfile's advice for long holders:
/// `lockfile_touch`), well inside [`STALE_AFTER`].
const LOCK_TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The process a dot-lock names: `PID` (liblockfile, old dkimpress) or `PID:HOST` (dkimpress
/// now, Dovecot); `(None, None)` for an empty lock (Postfix, procmail) or anything
/// else.
fn lock_holder(content: &[u8]) -> (Option<u64>, Option<&str>) {
    let text = std::str::from_utf8(content).unwrap_or("").trim();
    let (pid, host) = match text.split_once(':') {
        Some((p, h)) => (p.trim(), Some(h.trim()).filter(|h| !h.is_empty())),
        None => (text, None),
    };
    if pid.is_empty() || pid.len() > 10 || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return (None, None);
    }
    (pid.parse().ok(), host)
}

/// Why the dot-lock with `content`, unchanged for `age`, is stale; `None` while it may be held.
/// `me` is this process and host, `exists` asks whether a process of this host is alive.
///
/// Stale: older than [`STALE_AFTER`] (whoever it names, as Postfix and procmail judge; this
/// also covers a dead process's PID given to another one since); or naming this host (or no
/// host) and a PID that no process has (kill(pid, 0) fails with ESRCH), or our own PID (an
/// earlier process that had it: in a container every run can be PID 1; the caller never asks
/// about a lock this process holds). A lock naming another host is judged by its age only:
/// its PID means nothing here.
fn stale_lock_reason(
    content: &[u8],
    age: Option<std::time::Duration>,
    me: (u64, &str),
    exists: impl Fn(u64) -> Option<bool>,
) -> Option<String> {
    if let Some(age) = age.filter(|a| *a > STALE_AFTER) {
        return Some(format!("unchanged for {} s, more than {} s", age.as_secs(), STALE_AFTER.as_secs()));
    }
    match lock_holder(content) {
        (Some(pid), host) if host.is_none_or(|h| h == me.1) => {
            if pid == me.0 {
                Some(format!("it names process {pid}, which is this one: left by an earlier process with the same PID"))
            } else if exists(pid) == Some(false) {
                Some(format!("process {pid} is not running on this host"))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// When `meta` last changed (ctime), if the system says.
fn changed_at(meta: &std::fs::Metadata) -> Option<std::time::SystemTime> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let secs = u64::try_from(meta.ctime()).ok()?;
        let nanos = u32::try_from(meta.ctime_nsec()).unwrap_or(0);
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
    }
    #[cfg(not(unix))]
    {
        meta.modified().ok()
    }
}

/// The age of a file that last changed at `changed`. Only an age past [`STALE_AFTER`] by the
/// local clock is checked against the file system's own clock (the ctime of a file we create
/// in `dir` now): an NFS server whose clock is behind ours must not make a fresh lock look old.
fn age_of(changed: Option<std::time::SystemTime>, dir: &Path) -> Option<std::time::Duration> {
    let changed = changed?;
    let local = std::time::SystemTime::now().duration_since(changed).unwrap_or_default();
    if local <= STALE_AFTER {
        return Some(local);
    }
    let probe = tempfile::Builder::new().prefix(&tmp_prefix()).suffix(TMP_SUFFIX).tempfile_in(dir).ok()?;
    let now = changed_at(&probe.as_file().metadata().ok()?)?;
    Some(now.duration_since(changed).unwrap_or_default())
}

/// Whether `a` and `b` are the same file (device and inode).
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// Opens a file we only read to judge it: never through a link, never blocking on a FIFO.
fn open_to_judge(p: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = o.open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Why the dot-lock at `dot` is stale, with the open lock judged; `None` when it is held (or
/// gone, or cannot be judged: a link, a FIFO, unreadable).
fn judge_dotlock(dot: &Path) -> Option<(File, String)> {
    if is_registered(dot) {
        return None; // ours: held by this process
    }
    let mut f = open_to_judge(dot).ok()?;
    let meta = f.metadata().ok()?;
    let mut content = Vec::with_capacity(80);
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, 256), &mut content).ok()?;
    let age = age_of(changed_at(&meta), parent_dir(dot));
    let reason = stale_lock_reason(&content, age, (u64::from(std::process::id()), host()), os::process_exists)?;
    Some((f, reason))
}

/// Removes the stale dot-lock `dot`, which is the file `judged` (kept open, so its inode
/// cannot be reused meanwhile). Race-safe against another process breaking the same lock and
/// taking a new one: the lock is first renamed aside, and only removed if what was moved is
/// the file judged; a new lock moved by mistake is put back (unless yet another was taken in
/// the meantime). Returns whether the judged lock was removed by us.
fn break_dotlock(dot: &Path, judged: &File) -> std::io::Result<bool> {
    let aside = parent_dir(dot).join(format!("{}stale{TMP_SUFFIX}", tmp_prefix()));
    match std::fs::rename(dot, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false), // broken by another
        Err(e) => return Err(e),
    }
    let moved = std::fs::symlink_metadata(&aside)?;
    if same_file(&moved, &judged.metadata()?) {
        std::fs::remove_file(&aside)?;
        return Ok(true);
    }
    // Someone else broke it and locked again between our judgement and the rename.
    let _ = std::fs::hard_link(&aside, dot);
    let _ = std::fs::remove_file(&aside);
    Ok(false)
}

/// Removes the temporary files of ours in `dir` that dead runs left: those named after a
/// process of this host that is not running, and any (another host's, an older dkimpress's,
/// one whose PID was given to another process since) that has not changed for
/// [`STALE_AFTER`]: a file being written changes all the time, and a commit sets its ctime
/// too. Never one this process is writing, nor anything whose name is not exactly ours.
/// Returns a line for each file removed.
fn remove_dead_runs_files(dir: &Path) -> Vec<String> {
    let mut removed = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    let me = u64::from(std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(maker) = tmp_maker(name) else { continue };
        let path = entry.path();
        if is_registered(&path) {
            continue; // ours, in progress
        }
        let dead = match maker {
            TmpMaker::Process(pid, tag) if tag == host_tag() && pid != me => os::process_exists(pid) == Some(false),
            _ => false,
        };
        let reason = match maker {
            TmpMaker::Process(pid, _) if dead => format!("process {pid} is not running on this host"),
            _ => {
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                if !meta.is_file() {
                    continue;
                }
                match age_of(changed_at(&meta), dir) {
                    Some(age) if age > STALE_AFTER => {
                        format!("unchanged for {} s, more than {} s", age.as_secs(), STALE_AFTER.as_secs())
                    }
                    _ => continue,
                }
            }
        };
        if std::fs::remove_file(&path).is_ok() {
            removed
                .push(format!("{}: removed a temporary file left by a run that was killed ({reason})", path.display()));
        }
    }
    removed
}

/// Keeps a held dot-lock fresh: touches it every [`LOCK_TOUCH_EVERY`] until dropped.
struct Toucher {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Toucher {
    fn start(lock: File) -> Toucher {
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dkimpress-lock".into())
            .spawn(move || {
                let (m, cv) = &*flag;
                let mut stopped = m.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    let (s, timeout) = cv.wait_timeout(stopped, LOCK_TOUCH_EVERY).unwrap_or_else(|e| e.into_inner());
                    stopped = s;
                    if timeout.timed_out() && !*stopped {
                        // Sets mtime, and ctime with it (what lock breakers look at).
                        let _ = lock.set_modified(std::time::SystemTime::now());
                    }
                }
            })
            .ok();
        Toucher { stop, thread }
    }
}

impl Drop for Toucher {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The locks an mbox is rewritten under (`--in-place`), as mail delivery agents and readers
/// honour them: a dot-lock `FILE.lock` (procmail, Postfix local(8),
/// mutt), an fcntl write lock (Dovecot, mutt, Postfix) and an flock (Postfix, some LDAs) on
/// the file, all held until the new file has replaced the old one. The size, modification
/// time and inode seen after locking are checked again right before the rename, so mail that
/// arrives from a writer that ignores all three makes the run fail rather than vanish.
///
/// A killed run (SIGKILL: the OOM killer, systemd's final kill) cannot remove its dot-lock and
/// temporary file; the next run breaks such a stale lock and removes those files, as the mail
/// tools do (see [`MboxLock::acquire`]). fcntl locks and flocks die with
/// their process and need nothing.
///
/// The file must be mapped through [`MboxLock::file`]: fcntl locks belong to the process and
/// close with *any* descriptor of the file, so opening and closing it elsewhere would drop them.
pub struct MboxLock {
    file: File,
    dotlock: Option<PathBuf>,
    /// The dot-lock we created, open: its inode tells whether `FILE.lock` is still ours.
    dot_file: Option<File>,
    toucher: Option<Toucher>,
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
    ///
    /// The dot-lock holds `PID:HOST`. One left by a run that cannot hold it any more is broken
    /// at once (see `stale_lock_reason`: its process is gone from this host, or it has not
    /// changed for [`STALE_AFTER`]), and once all three locks are ours the temporary files of
    /// dead runs beside the mbox are removed (see `remove_dead_runs_files`). Each is reported
    /// as a warning.
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
        // 1. The dot-lock: FILE.lock created exclusively, holding our pid and host.
        let mut dot = path.as_os_str().to_owned();
        dot.push(".lock");
        let dot = PathBuf::from(dot);
        let dot_file = loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&dot) {
                Ok(mut f) => {
                    register(&dot);
                    let _ = writeln!(f, "{}:{}", std::process::id(), host());
                    break f;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if let Some((judged, reason)) = judge_dotlock(&dot) {
                        // Not removed (another process broke it first, or it cannot be
                        // removed): wait as for a held lock, then look again.
                        if let Ok(true) = break_dotlock(&dot, &judged) {
                            let lockname = dot.display();
                            crate::warnings::warn(&format!("{lockname}: removed a stale dot-lock ({reason})"));
                            continue;
                        }
                    }
                    if !wait() {
                        return Err(LockError::Busy {
                            path: dot.display().to_string(),
                            what: "the dot-lock",
                            secs: timeout.as_secs(),
                            hint: " (dkimpress breaks it by itself once the process it names is gone, or after 500 s without change)",
                        });
                    }
                }
                Err(e) => return Err(io_err(&dot.display().to_string(), e)),
            }
        };
        // From here on, dropping `lock` removes the dot-lock.
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&dot);
                unregister(&dot);
                return Err(io_err(&shown, e));
            }
        };
        let toucher = dot_file.try_clone().ok().map(Toucher::start);
        let mut lock = MboxLock { file, dotlock: Some(dot), dot_file: Some(dot_file), toucher, seen: (0, None, 0) };
        // 2. fcntl write lock on the whole file.
        loop {
            match os::fcntl_write_lock(&lock.file) {
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
        // 4. What killed runs left beside the mbox (our temporary files only).
        for line in remove_dead_runs_files(parent_dir(path)) {
            crate::warnings::warn(&line);
        }
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
        self.toucher.take();
        if let Some(dot) = self.dotlock.take() {
            // Only our own lock: if another program judged ours stale and took FILE.lock over,
            // that lock is its, not ours to remove.
            let ours = match (&self.dot_file, std::fs::symlink_metadata(&dot)) {
                (Some(f), Ok(now)) => f.metadata().is_ok_and(|m| same_file(&m, &now)),
                _ => false,
            };
            if ours {
                let _ = std::fs::remove_file(&dot);
            }
            unregister(&dot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_contents_name_their_holder() {
        for (content, want) in [
            (&b"4242\n"[..], (Some(4242), None)),
            (b"4242:mx1.example.com\n", (Some(4242), Some("mx1.example.com"))),
            (b"  17 \n", (Some(17), None)),
            (b"4242:\n", (Some(4242), None)),
            (b"", (None, None)),
            (b"0", (Some(0), None)),
            (b"-1\n", (None, None)),
            (b"12345678901\n", (None, None)),
            (b"pid 12\n", (None, None)),
            (b"\xff\xfe", (None, None)),
        ] {
            assert_eq!(lock_holder(content), want, "{:?}", String::from_utf8_lossy(content));
        }
    }

    #[test]
    fn stale_locks_are_told_from_held_ones() {
        let me = (100, "here");
        // Process 7 is alive, 8 is gone, 9 cannot be told.
        let exists = |pid: u64| match pid {
            7 => Some(true),
            8 => Some(false),
            _ => None,
        };
        let fresh = Some(std::time::Duration::from_secs(10));
        let old = Some(STALE_AFTER + std::time::Duration::from_secs(1));
        for (content, age, stale) in [
            (&b"7\n"[..], fresh, false),
            (b"7:here\n", fresh, false),
            (b"8\n", fresh, true),
            (b"8:here\n", fresh, true),
            (b"8:elsewhere\n", fresh, false), // another host's PID means nothing here
            (b"9\n", fresh, false),
            (b"100\n", fresh, true), // our PID, not held by us: an earlier process had it
            (b"100:elsewhere\n", fresh, false),
            (b"", fresh, false), // Postfix's and procmail's empty locks: age only
            (b"", None, false),
            (b"", old, true),
            (b"7\n", old, true), // a living PID is no excuse after STALE_AFTER (reused PIDs)
            (b"8:elsewhere\n", old, true),
        ] {
            let got = stale_lock_reason(content, age, me, exists);
            assert_eq!(got.is_some(), stale, "{:?} {age:?}: {got:?}", String::from_utf8_lossy(content));
        }
    }
}
