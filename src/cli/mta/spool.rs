//! Reading a message the MTA hands us, in bounded memory: into memory up to [`IN_MEMORY`],
//! else into an unlinked temporary file, stopping at the size cap with the rest left unread;
//! and reading a spooled message back through a memory map whose pages leave the resident set
//! as they are read.
//!
//! Does not sign or re-inject.

use std::io::{Read, Write};
use std::time::Duration;

/// Messages up to this size are read into memory; a larger one is spooled to an unlinked
/// temporary file, so that what the MTA paths hold in memory stays about
/// this size whatever the message's.
pub const IN_MEMORY: usize = 1 << 20;

/// A message as read: in memory, or spooled.
pub enum Spool {
    /// In memory (at most [`IN_MEMORY`] octets, and one more when more follows).
    Memory(Vec<u8>),
    /// In an unlinked temporary file of our own ($TMPDIR, else /tmp; mode 0600), from its start.
    File(std::fs::File),
}

/// Why [`read_message`] stopped before the end of the message.
#[derive(Debug)]
pub enum Unread {
    /// The message is longer than the limit it was read with.
    OverLimit,
    /// It is longer than [`IN_MEMORY`] and no temporary file can be created to spool it.
    NoSpool(std::io::Error),
}

/// A message read by [`read_message`]: all of it, or its start and why the rest is left in the
/// input.
pub struct Received {
    /// What was read.
    pub spool: Spool,
    /// `Some`: the input holds more of the message.
    pub unread: Option<Unread>,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading the input failed.
    #[error("reading the message failed: {0}")]
    Input(std::io::Error),
    /// Writing the spool file failed (a full disk).
    #[error("writing the message to a temporary file in {} failed: {error}", .dir.display())]
    Spool {
        /// The temporary directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
}

/// Reads a message from `input`, up to `limit` octets: into memory up to [`IN_MEMORY`], else
/// into a spool file. Over `limit`, the first `limit + 1` octets are kept and the rest is left
/// in `input` (`Unread::OverLimit`). Memory used: [`IN_MEMORY`] and a copy buffer.
pub fn read_message(input: &mut dyn Read, limit: u64) -> Result<Received, ReadError> {
    let first = limit.min(IN_MEMORY as u64) + 1;
    let mut head = Vec::with_capacity(64 * 1024);
    input.take(first).read_to_end(&mut head).map_err(ReadError::Input)?;
    let read = head.len() as u64;
    if read < first || read > limit {
        let unread = (read > limit).then_some(Unread::OverLimit);
        return Ok(Received { spool: Spool::Memory(head), unread });
    }
    let mut file = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => return Ok(Received { spool: Spool::Memory(head), unread: Some(Unread::NoSpool(e)) }),
    };
    let spool_err = |error| ReadError::Spool { dir: std::env::temp_dir(), error };
    file.write_all(&head).map_err(spool_err)?;
    drop(head);
    let mut buf = vec![0; COPY_BUFFER];
    let copied = match pump(&mut input.take(limit + 1 - read), &mut file, &mut buf) {
        Ok(n) => n,
        Err(Feed::Read(e)) => return Err(ReadError::Input(e)),
        Err(Feed::Write(e)) => return Err(spool_err(e)),
    };
    let unread = (read + copied > limit).then_some(Unread::OverLimit);
    Ok(Received { spool: Spool::File(file), unread })
}

/// Runs `f` on the octets of `spool`. A spooled message is mapped, and its pages leave our
/// resident set as `f` reads them (see [`with_pages_released`]).
pub(super) fn with_message<T>(spool: &Spool, f: impl FnOnce(&[u8]) -> T) -> std::io::Result<T> {
    match spool {
        Spool::Memory(m) => Ok(f(m)),
        Spool::File(file) => {
            // pipeline::os::map's one hazard, another process changing the file while it is
            // mapped, cannot happen here: the file is ours, unlinked, and never written again.
            let map = dkimpress::pipeline::os::map(file)?;
            Ok(with_pages_released(&map, f))
        }
    }
}

/// How often the pages of a mapped spool are dropped from the resident set while it is read.
const RELEASE_EVERY: Duration = Duration::from_millis(10);

/// Runs `f` on `map` while a second thread drops the map's pages from our resident set every
/// [`RELEASE_EVERY`]. The signer reads the message once from start to end in one call, with no
/// point at which to release what it has finished with; without this, every page it touched
/// would count in our RSS until the end (a 300 MB message: 300 MB). Dropped pages stay in the
/// page cache, and a page read again is mapped again from the same file ([`Mapped::release`]),
/// so `f` sees the same octets; the resident set stays at what is read in one interval.
///
/// [`Mapped::release`]: dkimpress::pipeline::os::Mapped::release
fn with_pages_released<T>(map: &dkimpress::pipeline::os::Mapped, f: impl FnOnce(&[u8]) -> T) -> T {
    use std::sync::{Condvar, Mutex};
    /// Tells the releasing thread to stop, also when `f` panics (the scope waits for it).
    struct Stop<'a>(&'a (Mutex<bool>, Condvar));
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.0 .1.notify_all();
        }
    }
    let stop = (Mutex::new(false), Condvar::new());
    std::thread::scope(|s| {
        s.spawn(|| loop {
            let done = stop.0.lock().unwrap_or_else(|e| e.into_inner());
            let (done, _) = stop.1.wait_timeout(done, RELEASE_EVERY).unwrap_or_else(|e| e.into_inner());
            if *done {
                return;
            }
            drop(done);
            map.release(0..map.len());
        });
        let _stop = Stop(&stop);
        f(map)
    })
}

/// Why a copy stopped: the side that failed.
#[derive(Debug)]
pub(super) enum Feed {
    /// Reading the source (our stdin, the spool file) failed.
    Read(std::io::Error),
    /// Writing failed (the command closed its stdin, the spool's disk is full).
    Write(std::io::Error),
}

/// Copies `src` to `dst` through `buf`; the number of octets copied.
pub(super) fn pump(src: &mut dyn Read, dst: &mut dyn Write, buf: &mut [u8]) -> Result<u64, Feed> {
    let mut total = 0;
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Feed::Read(e)),
        };
        dst.write_all(&buf[..n]).map_err(Feed::Write)?;
        total += n as u64;
    }
}

/// The buffer of a copy to the re-injection command or into the spool.
pub(super) const COPY_BUFFER: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek as _;

    /// Small messages stay in memory, larger ones are spooled, and over the
    /// limit the first `limit + 1` octets are read and the rest is left in the input.
    #[test]
    fn read_message_spools_and_stops_at_the_limit() {
        let big = IN_MEMORY + 5;
        for (len, limit, spooled, over) in [
            (0, 100, false, false),
            (100, 100, false, false),
            (101, 100, false, true),
            (IN_MEMORY, u64::MAX, false, false),
            (big, big as u64, true, false),
            (big, big as u64 - 1, true, true),
            (3 * IN_MEMORY, 2 * IN_MEMORY as u64, true, true),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut input = &data[..];
            let got = read_message(&mut input, limit).unwrap();
            let kept = match got.spool {
                Spool::Memory(m) => {
                    assert!(!spooled, "{len} {limit}: in memory");
                    m
                }
                Spool::File(mut f) => {
                    assert!(spooled, "{len} {limit}: spooled");
                    let mut m = vec![];
                    f.rewind().unwrap();
                    f.read_to_end(&mut m).unwrap();
                    m
                }
            };
            assert_eq!(matches!(got.unread, Some(Unread::OverLimit)), over, "{len} {limit}");
            let n = if over { limit as usize + 1 } else { len };
            assert!(kept == data[..n] && input == &data[n..], "{len} {limit}: kept {}", kept.len());
        }
    }
}
