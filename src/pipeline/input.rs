//! What a run reads: the kind of each input (mbox, maildir, queue directory, one message),
//! pipes and devices read once and spooled, mboxes mapped and checked, directory entries listed
//! with the ones that are not regular files named.

use super::mbox;
use super::os::{self, Mapped};
use super::{input_err, BulkError};
use std::io::Write;
use std::path::{Path, PathBuf};

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
pub(crate) fn detect(path: &Path) -> std::io::Result<InputKind> {
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

pub(crate) fn dir_kind(path: &Path) -> InputKind {
    if path.join("cur").is_dir() || path.join("new").is_dir() {
        InputKind::Maildir
    } else {
        InputKind::QueueDir
    }
}

pub(crate) fn kind_of_head(head: &[u8]) -> InputKind {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    // An empty file is an empty mbox: nothing to sign, nothing lost.
    if head.is_empty() || head.starts_with(b"From ") {
        InputKind::Mbox
    } else {
        InputKind::Message
    }
}

/// Reads until `buf` is full or the input ends (a pipe hands out short reads).
pub(crate) fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
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
    /// The contents of a non-seekable input, read at open and, for an mbox, checked (None: a
    /// regular file or directory, read when its turn comes).
    pub spooled: Option<Mapped>,
}

impl Source {
    /// Whether the input was a pipe, FIFO or device.
    pub fn is_stream(&self) -> bool {
        self.spooled.is_some()
    }

    /// The octets of a one-message input: those read at open, or the file read now.
    pub fn read_message(&self) -> Result<std::borrow::Cow<'_, [u8]>, BulkError> {
        match &self.spooled {
            Some(m) => Ok(std::borrow::Cow::Borrowed(m)),
            None => std::fs::read(&self.path).map(std::borrow::Cow::Owned).map_err(|e| input_err(&self.path, e)),
        }
    }
}

/// Opens `path` for a run. Regular files and directories are only
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
            check_mbox(os::map(&spool).map_err(|e| input_err(path, e))?, path)?
        }
        _ => {
            let mut data = head[..n].to_vec();
            std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, max_message + 1 - n as u64), &mut data)
                .map_err(|e| input_err(path, e))?;
            if data.len() as u64 > max_message {
                return Err(too_large(path, data.len() as u64, max_message));
            }
            Mapped::Owned(data)
        }
    };
    Ok(source(kind, Some(spooled)))
}

pub(crate) fn too_large(path: &Path, len: u64, max: u64) -> BulkError {
    BulkError::Format { path: path.display().to_string(), reason: too_large_reason(len, max) }
}

/// Why a message of `len` octets is not handled: the one wording of the size limit.
pub(crate) fn too_large_reason(len: u64, max: u64) -> String {
    format!("{len} octets: larger than the message size limit of {max} (--max-message-size)")
}

/// Default of `--max-message-size`: larger than any mail a server accepts (Postfix's
/// message_size_limit defaults to 10 MB, Exchange Online allows 150 MB).
pub const DEFAULT_MAX_MESSAGE: u64 = 512 << 20;

/// Maps the mbox at `path` for one pass and checks that it is one.
pub(crate) fn open_mbox(path: &Path) -> Result<Mapped, BulkError> {
    let file = std::fs::File::open(path).map_err(|e| input_err(path, e))?;
    map_mbox_file(&file, path)
}

/// Maps an open mbox file (one that is locked: see [`super::lock::MboxLock`]) and checks it.
pub(crate) fn map_mbox_file(file: &std::fs::File, path: &Path) -> Result<Mapped, BulkError> {
    let mapped = os::map(file).map_err(|e| input_err(path, e))?;
    check_mbox(mapped, path)
}

/// Checks that mapped (or spooled) bytes are an mbox.
pub(crate) fn check_mbox(mapped: Mapped, path: &Path) -> Result<Mapped, BulkError> {
    mbox::check(&mapped).map_err(|e| BulkError::Format { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(mapped)
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
/// without a word.
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
pub(crate) fn odd_kind(ft: &std::fs::FileType) -> Option<&'static str> {
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

/// One of N independent runs over the same inputs (`--shard K/N`, K from 1): together the N
/// runs handle every message exactly once, and their outputs concatenated in K order equal one
/// run's output.
///
/// - An mbox is cut into N byte ranges of equal size; a message belongs to the range its
///   `From ` line starts in. For mboxrd and mboxo a run reads only its range (and the rest of
///   its last message): a separator is any line starting with `From `, so a range's first
///   message is found from the range alone. mboxcl and mboxcl2 frame by Content-Length, which
///   only a scan from the start can follow: each run scans the whole file and signs its range.
/// - Files of a maildir or queue directory go by a hash of their path relative to the
///   directory (FNV-1a, 64 bits), which does not change when other files come or go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which run, 1..=n.
    pub k: u32,
    /// How many runs.
    pub n: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("{s:?}: expected K/N with 1 <= K <= N, e.g. 2/8");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (u32, u32) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if k == 0 || n == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard { k, n })
    }
}

impl Shard {
    /// The byte range of a file of `len` octets this run owns.
    pub fn byte_range(&self, len: usize) -> std::ops::Range<usize> {
        let at = |i: u32| (len as u128 * i as u128 / self.n as u128) as usize;
        at(self.k - 1)..at(self.k)
    }

    /// Whether this run owns the directory entry `rel`.
    pub fn owns(&self, rel: &Path) -> bool {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in rel.as_os_str().as_encoded_bytes() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h % self.n as u64 == (self.k - 1) as u64
    }
}

/// Whether `shard` owns an input that is one message, not an archive: the first shard does
/// (the others write an empty output, so that the shards' outputs still add up to the one-run
/// output), and a run without shards.
pub fn owns_lone_message(shard: Option<Shard>) -> bool {
    shard.is_none_or(|s| s.k == 1)
}

/// The byte range of a file of `len` octets that `shard` owns (all of it without one).
pub(crate) fn shard_range(shard: Option<Shard>, len: usize) -> std::ops::Range<usize> {
    shard.map_or(0..len, |s| s.byte_range(len))
}
