//! Splitting an mbox into messages, and undoing its `>From ` quoting.
//!
//! Owns the storage artifacts of the mbox family: the `From ` separator line, the empty line a
//! writer puts before it, `>From ` quoting (mboxo, mboxrd, mboxcl) and `Content-Length`
//! (mboxcl, mboxcl2). None of these is part of the message (DESIGN.md: unquote before hashing;
//! the original bytes, quoting included, are what gets written back). Pure over `&[u8]`: the
//! caller maps or reads the file.
//!
//! Separator policy (see README "Mailboxes"): a line that starts with `From ` at the start of
//! the file or right after a line end starts a new message. That is the definition of mboxo
//! and mboxrd (any body line starting with `From ` was quoted on writing), and it is what
//! Python's `mailbox`, MimeKit and node-mbox do. We do not require an empty line before the
//! separator (qmail's writers do not write one) and we do not sniff headers after it, as
//! Thunderbird does. For mboxcl/mboxcl2, `Content-Length` is honoured when it ends exactly at
//! a separator or at the end of the file. Otherwise it is ignored, because such headers are
//! often wrong after line-end conversion.

use std::ops::Range;

/// The mbox flavour (see `mbox(5)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MboxFormat {
    /// mboxo: body lines `From ` are written `>From `; one `>` is removed on reading.
    Mboxo,
    /// mboxrd: `>*From ` lines get one more `>` on writing, one fewer on reading (the default:
    /// it is the only flavour whose quoting can be undone exactly).
    #[default]
    Mboxrd,
    /// mboxcl: mboxo quoting plus `Content-Length`.
    Mboxcl,
    /// mboxcl2: `Content-Length`, no quoting.
    Mboxcl2,
}

impl MboxFormat {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            MboxFormat::Mboxo => "mboxo",
            MboxFormat::Mboxrd => "mboxrd",
            MboxFormat::Mboxcl => "mboxcl",
            MboxFormat::Mboxcl2 => "mboxcl2",
        }
    }

    pub(crate) fn uses_content_length(self) -> bool {
        matches!(self, MboxFormat::Mboxcl | MboxFormat::Mboxcl2)
    }
}

impl std::str::FromStr for MboxFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mboxo" => Ok(MboxFormat::Mboxo),
            "mboxrd" => Ok(MboxFormat::Mboxrd),
            "mboxcl" => Ok(MboxFormat::Mboxcl),
            "mboxcl2" => Ok(MboxFormat::Mboxcl2),
            _ => Err(format!("unknown mbox format {s:?}: expected mboxo, mboxrd, mboxcl or mboxcl2")),
        }
    }
}

/// Why a file is not an mbox we can split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MboxError {
    /// The first line is not a `From ` separator.
    #[error("not an mbox: the first line does not start with \"From \"")]
    NoSeparator,
    /// Line ends are CR only (classic Mac OS), which no mbox reader splits.
    #[error("line ends are CR only (classic Mac OS); convert them first, e.g. tr '\\r' '\\n'")]
    CrOnly,
}

/// One message of an mbox, as offsets into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxEntry {
    /// The `From ` line with its line end.
    pub from_line: Range<usize>,
    /// Everything after it up to the next separator (or the end of the file): the stored
    /// message, still quoted, with the empty line a writer adds before the next separator.
    pub data: Range<usize>,
    /// `data` without that empty line: the message as stored (still quoted). When `data` does
    /// not end with an empty line (a truncated file, a writer that adds none), the same as
    /// `data`. Canonicalization drops trailing empty lines anyway, so this choice cannot change
    /// a signature; it matters for what "the message" means in tests and reports.
    pub message: Range<usize>,
    /// Whether the message may hold quoted `>From ` lines (false: [`unquote`] can be skipped).
    pub quoted: bool,
    /// Where the quoting `>`s are, relative to `message.start`, when the splitter's scan found
    /// them ([`quote_positions`] gives the same); empty when none were found, when there are more
    /// than [`QUOTES_KEPT`], or when the message was not scanned (Content-Length): then `quoted`
    /// says whether to look. A few are kept in place: most quoted messages have one or two.
    pub quotes: Quotes,
}

/// The offsets of a message's quoting `>`s ([`MboxEntry::quotes`]).
pub type Quotes = smallvec::SmallVec<[usize; 4]>;

/// Length of a UTF-8 byte order mark at the start of `data` (0 or 3). A BOM is tolerated
/// before the first separator and kept in the output.
pub fn bom_len(data: &[u8]) -> usize {
    if data.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    }
}

/// Checks that `data` is an mbox. An empty file is an mbox with no messages.
pub fn check(data: &[u8]) -> Result<(), MboxError> {
    let start = bom_len(data);
    if data.len() == start {
        return Ok(());
    }
    if !data[start..].starts_with(b"From ") {
        return Err(MboxError::NoSeparator);
    }
    if memchr::memchr(b'\n', data).is_none() && memchr::memchr(b'\r', data).is_some() {
        return Err(MboxError::CrOnly);
    }
    Ok(())
}

/// The separator scan reads this many octets at a time, prefetching this far ahead.
const SCAN_WINDOW: usize = 4 << 10;
const SCAN_AHEAD: usize = 32 << 10;

/// Iterates over the messages of an mbox (call [`check`] first).
pub struct Splitter<'a> {
    data: &'a [u8],
    pos: usize,
    /// Messages whose `From ` line starts here or later are not ours (a shard's range).
    end: usize,
    format: MboxFormat,
    finder: memchr::memmem::Finder<'static>,
    /// The ends of a header block, LF and CRLF: built once, as a search of each message's
    /// start for them (see `next`) cost more to set up than to run.
    blank_lf: memchr::memmem::Finder<'static>,
    blank_crlf: memchr::memmem::Finder<'static>,
}

impl<'a> Splitter<'a> {
    /// Starts at the first separator (after a BOM, if any).
    pub fn new(data: &'a [u8], format: MboxFormat) -> Splitter<'a> {
        Splitter::range(data, format, 0..data.len())
    }

    /// The messages whose `From ` line starts in `range` (see [`super::Shard`]): the same
    /// messages, with the same bounds, as [`Splitter::new`] gives in that range.
    pub fn range(data: &'a [u8], format: MboxFormat, range: std::ops::Range<usize>) -> Splitter<'a> {
        let mut s = Splitter {
            data,
            pos: bom_len(data),
            end: range.end.min(data.len()),
            format,
            finder: memchr::memmem::Finder::new(b"From "),
            blank_lf: memchr::memmem::Finder::new(b"\n\n"),
            blank_crlf: memchr::memmem::Finder::new(b"\n\r\n"),
        };
        if range.start > s.pos {
            if format.uses_content_length() {
                // Content-Length may jump over separators: only a scan from the start knows
                // where messages begin.
                while s.pos < range.start {
                    if s.next().is_none() {
                        break;
                    }
                }
                s.end = range.end.min(data.len());
            } else {
                // Any line starting with "From " is a separator (body lines are quoted). Only
                // this range is searched: a range inside one huge message costs its own length.
                let window = &data[range.start - 1..(range.end + 5).min(data.len())];
                s.pos = match memchr::memmem::find(window, b"\nFrom ") {
                    Some(i) if range.start + i < range.end => range.start + i,
                    _ => data.len(),
                };
            }
        }
        s
    }

    /// Start of the next separator line at or after `from` (which is a line start), or the end
    /// of the data; and whether a quoted `>+From ` line comes before it, with the offsets
    /// (from `from`) of the quoting `>`s in `quotes`. One scan for `From ` finds all of it, so
    /// the workers need no second pass over a message, quoted or not.
    fn next_separator(&self, from: usize, quotes: &mut Quotes) -> (usize, bool) {
        let mut quoted = false;
        let mut at = from;
        let mut prefetched = from;
        loop {
            // A window at a time, each after a prefetch of the window SCAN_AHEAD further on. The
            // splitter is the first to read a large mbox, cold from memory; the prefetches keep
            // those reads overlapped across page boundaries, where the hardware prefetcher
            // stops (cold splitting 6.2 -> 7.5 GB/s; benches/REPORT.md, 2026-11-22).
            let wend = (at + SCAN_WINDOW).min(self.data.len());
            let want = (wend + SCAN_AHEAD).min(self.data.len());
            if want > prefetched {
                crate::arch::prefetch::prefetch(&self.data[prefetched.max(want.saturating_sub(SCAN_WINDOW))..want]);
                prefetched = want;
            }
            let Some(i) = self.finder.find(&self.data[at..wend]) else {
                if wend == self.data.len() {
                    break;
                }
                // A match may start in the last four octets and end in the next window.
                at = wend - 4;
                continue;
            };
            let p = at + i;
            if p == 0 || self.data[p - 1] == b'\n' {
                if p >= from {
                    return (p, quoted);
                }
            } else if self.data[p - 1] == b'>' {
                let mut q = p - 1;
                while q > 0 && self.data[q - 1] == b'>' {
                    q -= 1;
                }
                if q == 0 || self.data[q - 1] == b'\n' {
                    quoted = true;
                    if q >= from && quotes.len() <= QUOTES_KEPT && is_quoted(self.format, &self.data[q..]) {
                        quotes.push(q - from);
                    }
                }
            }
            at = p + 1;
        }
        (self.data.len(), quoted)
    }

    /// End of the message by its Content-Length, when that lands on a separator or the end.
    fn by_content_length(&self, start: usize) -> Option<usize> {
        let msg = &self.data[start..];
        let parsed = crate::dkim::header::Message::parse(msg).ok()?;
        let cl = parsed.fields.iter().find(|f| f.is("content-length"))?;
        let n: usize = std::str::from_utf8(cl.value()).ok()?.trim().parse().ok()?;
        let end = start.checked_add(parsed.body_offset)?.checked_add(n)?;
        if end > self.data.len() {
            return None;
        }
        let rest = &self.data[end..];
        // Allow the writer's empty line between the body and the next separator.
        let skip = if rest.starts_with(b"\r\n") {
            2
        } else if rest.starts_with(b"\n") {
            1
        } else {
            0
        };
        let after = &rest[skip..];
        let at_line_start = skip > 0 || (end > 0 && self.data[end - 1] == b'\n');
        if after.is_empty() {
            Some(self.data.len())
        } else if after.starts_with(b"From ") && at_line_start {
            Some(end + skip)
        } else {
            None
        }
    }
}

impl Iterator for Splitter<'_> {
    type Item = MboxEntry;

    fn next(&mut self) -> Option<MboxEntry> {
        if self.pos >= self.data.len() || self.pos >= self.end {
            return None;
        }
        let start = self.pos;
        let from_end = memchr::memchr(b'\n', &self.data[start..]).map_or(self.data.len(), |i| start + i + 1);
        let mut quotes = Quotes::new();
        let (end, quoted) = match self.format.uses_content_length().then(|| self.by_content_length(from_end)).flatten()
        {
            // Not scanned: let the unquoting look for itself.
            Some(end) => (end, true),
            None => self.next_separator(from_end, &mut quotes),
        };
        // A From line with no line end at the end of the file: an empty message.
        let end = end.max(from_end);
        self.pos = end;
        let d = &self.data[from_end..end];
        let framing = if d.ends_with(b"\r\n\r\n") {
            2
        } else if d.ends_with(b"\n\n") {
            1
        } else {
            0
        };
        // Unless that empty line is the one that ends the header block (a message with no
        // body), which belongs to the message.
        let rest = &d[..d.len() - framing];
        let framing = if framing > 0 && self.blank_lf.find(rest).is_none() && self.blank_crlf.find(rest).is_none() {
            0
        } else {
            framing
        };
        // Quotes in the framing empty line cannot be (it is empty); keep those of the message.
        quotes.retain(|q| from_end + *q < end - framing);
        if quotes.len() > QUOTES_KEPT {
            // Too many to keep: `quoted` stays set, and the worker unquotes into a copy.
            quotes = Quotes::new();
        }
        Some(MboxEntry {
            from_line: start..from_end,
            data: from_end..end,
            message: from_end..end - framing,
            quoted,
            quotes,
        })
    }
}

/// Whether `line` (starting at a line start) is quoted for `format`, i.e. one `>` must go.
fn is_quoted(format: MboxFormat, line: &[u8]) -> bool {
    match format {
        MboxFormat::Mboxcl2 => false,
        MboxFormat::Mboxo | MboxFormat::Mboxcl => line.starts_with(b">From "),
        MboxFormat::Mboxrd => {
            let gts = line.iter().take_while(|&&b| b == b'>').count();
            gts > 0 && line[gts..].starts_with(b"From ")
        }
    }
}

/// Most quoting `>`s whose offsets are kept for one message. Each costs 24 octets while the
/// message is signed (its offset and its piece) against the 7 of a `>From \n` line, so a
/// hostile message of nothing but quoted lines would need several times its size; beyond this
/// many the message is unquoted into one copy instead.
pub const QUOTES_KEPT: usize = 1024;

/// Offsets in `data` (a stored message) of the quoting `>`s: one per quoted line, which the
/// message itself does not have. Empty when nothing is quoted. Returns false (and `out` empty)
/// when there are more than `limit`.
pub fn quote_positions(format: MboxFormat, data: &[u8], out: &mut Vec<usize>, limit: usize) -> bool {
    out.clear();
    if format == MboxFormat::Mboxcl2 {
        return true;
    }
    if !data.is_empty() && is_quoted(format, data) {
        out.push(0);
    }
    for i in memchr::memmem::find_iter(data, b"\n>").map(|i| i + 1).filter(|&i| is_quoted(format, &data[i..])) {
        if out.len() == limit {
            out.clear();
            return false;
        }
        out.push(i);
    }
    true
}

/// The message as it was before the mbox writer quoted it. Returns `data` itself when nothing
/// is quoted (the common case, no copy), else fills `scratch` and returns it.
pub fn unquote<'a>(format: MboxFormat, data: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if format == MboxFormat::Mboxcl2 {
        return data;
    }
    // The quotes are found and skipped as the copy goes: no list of them (a message may have
    // millions).
    let first = (!data.is_empty() && is_quoted(format, data)).then_some(0);
    let mut quotes = first
        .into_iter()
        .chain(memchr::memmem::find_iter(data, b"\n>").map(|i| i + 1).filter(|&i| is_quoted(format, &data[i..])))
        .peekable();
    if quotes.peek().is_none() {
        return data;
    }
    copy_without(data, quotes, scratch);
    scratch
}

/// `data` without the octets at `skip` (ascending), into `out`.
fn copy_without(data: &[u8], skip: impl IntoIterator<Item = usize>, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(data.len());
    let mut copied = 0;
    for at in skip {
        // Unquoting may be the first pass over a message of a large mbox: prefetch ahead of it.
        crate::arch::prefetch::in_prefetched_pieces(data, copied..at, |p| out.extend_from_slice(p));
        copied = at + 1;
    }
    crate::arch::prefetch::in_prefetched_pieces(data, copied..data.len(), |p| out.extend_from_slice(p));
}

/// A message as an mbox stores it: its octets, and where quoting put in a `>` that is not part
/// of the message. Jobs that need the message in one slice take [`Stored::with_unquoted`]; the
/// signer hashes the body in the pieces between the quotes ([`Stored::body_pieces`]) and copies
/// nothing.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    /// The stored octets, quoting included.
    pub bytes: &'a [u8],
    /// Offsets in `bytes` of the quoting `>`s, ascending ([`quote_positions`]).
    pub quotes: &'a [usize],
}

thread_local! {
    /// Per-thread buffer for unquoted copies ([`Stored::with_unquoted`], [`with_stored`]).
    static UNQUOTED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread list of quotes found after the split ([`with_stored`]).
    static QUOTES: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on the message `entry` of `data` as stored, with its quotes: those the splitter
/// recorded; else, when the message may be quoted (Content-Length framing, or more than the
/// splitter keeps), found now; and when there are more than [`QUOTES_KEPT`], `f` gets one
/// unquoted copy instead (plain), which costs less memory than a list of them. `f` must not
/// call [`Stored::with_unquoted`] on a quoted message (the copy's buffer is in use).
pub fn with_stored<T>(format: MboxFormat, data: &[u8], entry: &MboxEntry, f: impl FnOnce(Stored<'_>) -> T) -> T {
    let bytes = &data[entry.message.clone()];
    if !entry.quotes.is_empty() {
        return f(Stored { bytes, quotes: &entry.quotes });
    }
    if !entry.quoted {
        return f(Stored::plain(bytes));
    }
    QUOTES.with(|quotes| {
        let mut quotes = quotes.borrow_mut();
        if quote_positions(format, bytes, &mut quotes, QUOTES_KEPT) {
            return f(Stored { bytes, quotes: &quotes });
        }
        UNQUOTED.with(|scratch| f(Stored::plain(unquote(format, bytes, &mut scratch.borrow_mut()))))
    })
}

impl<'a> Stored<'a> {
    /// A message stored as it is (a file of its own, a pipe, an mbox message without quoting).
    pub fn plain(bytes: &'a [u8]) -> Stored<'a> {
        Stored { bytes, quotes: &[] }
    }

    /// Octets of the message itself.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.quotes.len()
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on the message itself: `bytes` when nothing is quoted, else a copy without the
    /// quotes in a per-thread buffer. `f` must not call `with_unquoted` again.
    pub fn with_unquoted<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        if self.quotes.is_empty() {
            return f(self.bytes);
        }
        UNQUOTED.with(|buf| {
            let mut buf = buf.borrow_mut();
            copy_without(self.bytes, self.quotes.iter().copied(), &mut buf);
            f(&buf)
        })
    }

    /// The ranges of `bytes` from `from` on between the quotes (`from` at or before the first
    /// quote): the message's octets from `from` on, in pieces.
    pub fn body_pieces(&self, from: usize) -> Vec<Range<usize>> {
        self.piece_ranges(from).collect()
    }

    /// [`Stored::body_pieces`] as the octets of each piece, made as they are taken (the pair
    /// hasher reads a quoted body this way without a list per message).
    pub fn body_slices(&self, from: usize) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        self.piece_ranges(from).map(move |r| &bytes[r])
    }

    /// The ranges of [`Stored::body_pieces`], one at a time.
    fn piece_ranges(&self, from: usize) -> impl Iterator<Item = Range<usize>> + 'a {
        let mut start = from;
        // Nothing before a quoted first line: no empty piece (an empty first piece would make
        // the pieces look dependent, and cost a copy).
        let first_empty = self.quotes.first() == Some(&from);
        let between = self.quotes.iter().map(move |&q| {
            let piece = start..q;
            start = q + 1;
            piece
        });
        let end = self.bytes.len();
        let last = self.quotes.last().map_or(from, |&q| q + 1)..end;
        between.skip(usize::from(first_empty)).chain(std::iter::once(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(data: &[u8], f: MboxFormat) -> Vec<(&[u8], &[u8])> {
        Splitter::new(data, f).map(|e| (&data[e.from_line], &data[e.data])).collect()
    }

    #[test]
    fn split_table() {
        let m = MboxFormat::Mboxrd;
        type Split<'a> = &'a [(&'a [u8], &'a [u8])];
        let cases: &[(&[u8], Split)] = &[
            (b"", &[]),
            (
                b"From a\nX: 1\n\nbody\n\nFrom b\nX: 2\n\nb2\n",
                &[(b"From a\n", b"X: 1\n\nbody\n\n"), (b"From b\n", b"X: 2\n\nb2\n")],
            ),
            // No empty line before the separator (qmail).
            (b"From a\nX: 1\nFrom b\nX: 2\n", &[(b"From a\n", b"X: 1\n"), (b"From b\n", b"X: 2\n")]),
            // CRLF, no final newline.
            (b"From a\r\nX: 1\r\n\r\nbody", &[(b"From a\r\n", b"X: 1\r\n\r\nbody")]),
            // From line without line end.
            (b"From ", &[(b"From ", b"")]),
            // Quoted lines and look-alikes are not separators.
            (
                b"From a\nX: 1\n\n>From x\n From y\nFrom\nFromage\n",
                &[(b"From a\n", b"X: 1\n\n>From x\n From y\nFrom\nFromage\n")],
            ),
            // BOM before the first separator.
            (b"\xEF\xBB\xBFFrom a\nX: 1\n", &[(b"From a\n", b"X: 1\n")]),
        ];
        for (input, want) in cases {
            assert!(check(input).is_ok());
            assert_eq!(split(input, m), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    /// Separators and quoted lines at every offset around the scan windows, against a
    /// line-by-line oracle.
    #[test]
    fn separators_across_scan_windows() {
        for shift in 0..16 {
            for quoted_too in [false, true] {
                let mut data = b"From first\nA: b\n\n".to_vec();
                let mut want_starts = vec![0];
                let mut want_quoted = vec![];
                let mut q = false;
                for k in 1..6 {
                    // Body lines up to just before the k-th window boundary, give or take.
                    while data.len() < k * SCAN_WINDOW - 10 + shift {
                        data.extend_from_slice(b"filler\n");
                    }
                    if quoted_too && k % 2 == 0 {
                        data.extend_from_slice(b">From quoted\n");
                        q = true;
                    }
                    want_quoted.push(q);
                    q = false;
                    want_starts.push(data.len());
                    data.extend_from_slice(b"From next\nA: b\n\nbody\n");
                }
                want_quoted.push(false);
                let got: Vec<MboxEntry> = Splitter::new(&data, MboxFormat::Mboxrd).collect();
                let starts: Vec<usize> = got.iter().map(|e| e.from_line.start).collect();
                let flags: Vec<bool> = got.iter().map(|e| e.quoted).collect();
                assert_eq!(starts, want_starts, "shift {shift}");
                assert_eq!(flags, want_quoted, "shift {shift}");
            }
        }
    }

    /// A shard's splitter gives exactly the messages whose From line starts in its range, with
    /// the bounds the whole-file splitter gives them: cut anywhere, the two halves make the
    /// whole (every flavour; Content-Length ones by their scan from the start).
    #[test]
    fn ranges_partition_the_messages() {
        let data: &[u8] = b"From a@b Mon Jan  1 00:00:00 2024\nFrom: a@b\nContent-Length: 12\n\nbody\nFrom x\n\n\
From c@d Mon Jan  1 00:00:00 2024\r\nSubject: s\r\n\r\n>From quoted\r\n\r\n\
From e@f Mon Jan  1 00:00:00 2024\nX: y\n\nFromage\n\nFrom g@h x\n\nlast";
        for f in [MboxFormat::Mboxrd, MboxFormat::Mboxo, MboxFormat::Mboxcl, MboxFormat::Mboxcl2] {
            let whole: Vec<MboxEntry> = Splitter::new(data, f).collect();
            for cut in 0..=data.len() {
                let mut parts: Vec<MboxEntry> = Splitter::range(data, f, 0..cut).collect();
                parts.extend(Splitter::range(data, f, cut..data.len()));
                assert_eq!(parts, whole, "{f:?} cut at {cut}");
            }
            for n in 1..=7u32 {
                let mut parts = vec![];
                for k in 1..=n {
                    let r = crate::pipeline::Shard { k, n }.byte_range(data.len());
                    parts.extend(Splitter::range(data, f, r));
                }
                assert_eq!(parts, whole, "{f:?} in {n} shards");
            }
        }
    }

    #[test]
    fn quoted_flag() {
        let mbox =
            b"From a\nX: 1\n\nplain From here\n\nFrom b\nX: 2\n\n>From q\n>>From r\n\nFrom c\nX: 3\n\nFrom_not\n";
        let flags: Vec<bool> = Splitter::new(mbox, MboxFormat::Mboxrd).map(|e| e.quoted).collect();
        assert_eq!(flags, [false, true, false]);
    }

    #[test]
    fn content_length_protects_body_from_lines_when_it_fits() {
        let mbox = b"From a\nContent-Length: 12\n\nFrom inside\n\nFrom b\nX: 2\n\nb\n";
        let got = split(mbox, MboxFormat::Mboxcl2);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, b"Content-Length: 12\n\nFrom inside\n\n");
        // Wrong length: fall back to separators.
        let lies = b"From a\nContent-Length: 5\n\nFrom inside\n\nFrom b\nX: 2\n\nb\n";
        assert_eq!(split(lies, MboxFormat::Mboxcl2).len(), 3);
        // Same file read as mboxrd ignores Content-Length.
        assert_eq!(split(mbox, MboxFormat::Mboxrd).len(), 3);
    }

    #[test]
    fn not_an_mbox() {
        assert_eq!(check(b"Subject: x\n\nbody\n"), Err(MboxError::NoSeparator));
        assert_eq!(check(b"From a\rX: 1\r"), Err(MboxError::CrOnly));
    }

    /// The quotes the splitter's scan records are exactly those [`quote_positions`] finds, for
    /// generated archives (quoted lines in about every message) and hand-made edge cases.
    #[test]
    fn splitter_records_the_quotes() {
        let generated = crate::corpus::generate(300, crate::corpus::SizeDist::LogNormal(4096), 5, true);
        // The last message has more quotes than an entry keeps in place.
        let edges: &[u8] =
            b"From a\n>From first\n\n>>From x\nmid >From no\n>Fro\n>From last\n\nFrom b\nX: 1\n\n>From\n\n\
            From c\nX: 2\n\n>From 1\n>From 2\n>>From 3\n>From 4\n>From 5\n>From 6\n";
        assert!(Splitter::new(edges, MboxFormat::Mboxrd).any(|e| e.quotes.spilled()));
        for data in [&generated[..], edges] {
            for fmt in [MboxFormat::Mboxrd, MboxFormat::Mboxo] {
                let mut seen = 0;
                for e in Splitter::new(data, fmt) {
                    let mut want = vec![];
                    quote_positions(fmt, &data[e.message.clone()], &mut want, usize::MAX);
                    assert_eq!(e.quotes[..], want[..], "{fmt:?} at {}", e.from_line.start);
                    assert!(e.quoted || want.is_empty());
                    seen += want.len();
                }
                assert!(seen > 0, "{fmt:?}: no quoted lines to check");
            }
        }
    }

    /// A stored body's pieces, from any start at or before the first quote, join into the
    /// unquoted message from that start on; no piece is empty but the last, and the slices are
    /// the ranges' octets.
    #[test]
    fn body_pieces_join_into_the_unquoted_body() {
        let cases: &[&[u8]] = &[
            b"A: b\n\n>From x\nmid\n>>From y\nend\n",
            b"A: b\n\n>From x\n",
            b"A: b\n\n>From x\n>From y\n",
            b"A: b\n\nplain\n",
            b">From top\n",
            b"",
        ];
        for &bytes in cases {
            let mut quotes = vec![];
            quote_positions(MboxFormat::Mboxrd, bytes, &mut quotes, usize::MAX);
            let stored = Stored { bytes, quotes: &quotes };
            let unquoted = unquote(MboxFormat::Mboxrd, bytes, &mut vec![]).to_vec();
            for from in 0..=quotes.first().copied().unwrap_or(bytes.len()) {
                let pieces = stored.body_pieces(from);
                let joined: Vec<u8> = pieces.iter().flat_map(|r| &bytes[r.clone()]).copied().collect();
                assert_eq!(joined, unquoted[from..], "{:?} from {from}", String::from_utf8_lossy(bytes));
                assert!(pieces[..pieces.len() - 1].iter().all(|r| !r.is_empty()), "{pieces:?}");
                let slices: Vec<&[u8]> = stored.body_slices(from).collect();
                assert_eq!(slices, pieces.iter().map(|r| &bytes[r.clone()]).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn unquote_table() {
        let cases: &[(MboxFormat, &[u8], &[u8])] = &[
            (MboxFormat::Mboxrd, b"A: b\n\n>From x\n>>From y\n>Fro\n", b"A: b\n\nFrom x\n>From y\n>Fro\n"),
            (MboxFormat::Mboxo, b"A: b\n\n>From x\n>>From y\n", b"A: b\n\nFrom x\n>>From y\n"),
            (MboxFormat::Mboxcl2, b"A: b\n\n>From x\n", b"A: b\n\n>From x\n"),
            (MboxFormat::Mboxrd, b"A: b\n\nplain\n", b"A: b\n\nplain\n"),
            (MboxFormat::Mboxrd, b"A: b\r\n\r\n>>>From z", b"A: b\r\n\r\n>>From z"),
        ];
        for (f, input, want) in cases {
            let mut scratch = vec![];
            assert_eq!(unquote(*f, input, &mut scratch), *want, "{f:?}");
        }
    }
}
