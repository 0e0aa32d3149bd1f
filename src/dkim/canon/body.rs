//! Body canonicalization (RFC 6376 §3.4.3, §3.4.4), for a body that is whole or stored in
//! pieces (an mbox body around its quoting `>`s), and for the middle of a streamed body.
//!
//! Owns the fast paths: CRLF-stored content checked for bare LFs and hashed a chunk at a time,
//! LF-stored content expanded to CRLF a piece at a time, relaxed rewriting only where the SIMD
//! scan finds something to rewrite, and the per-thread staging buffer that gathers short writes
//! and prefetches the input ahead of the hasher. The line-end rules are those of the parent
//! module; header fields are canonicalized there too. Tested against the byte-at-a-time oracle
//! (`canon::naive`) on generated bodies.

use super::{is_wsp, Canon, Sink, CRLF};
use crate::arch::crlf;
use crate::arch::prefetch::{PREFETCH_DISTANCE, PREFETCH_PIECE};
use std::ops::Range;

/// Writes the canonical form of `body` (everything after the empty line that ends the header
/// block) into `sink`.
pub fn canonicalize_body<S: Sink + ?Sized>(canon: Canon, body: &[u8], sink: &mut S) {
    let whole = 0..body.len();
    canonicalize_body_pieces(canon, body, std::slice::from_ref(&whole), sink);
}

/// [`canonicalize_body`] of a body stored in pieces: the body is `stored[pieces[0]]`,
/// `stored[pieces[1]]`, ... one after the other. This is how an mbox stores a body with quoted
/// `>From ` lines: each piece after the first starts right after a quoting `>` that is not part
/// of the message, so the body is hashed from the map without an unquoted copy.
///
/// The pieces must meet what makes them independent for both canonicalizations: every piece
/// but the last ends with an LF (canonicalization rewrites line by line), and every piece but
/// the first starts with a non-empty line (so no trailing empty lines end before the last
/// piece). When they do not, the pieces are joined and canonicalized as one body.
pub fn canonicalize_body_pieces<S: Sink + ?Sized>(canon: Canon, stored: &[u8], pieces: &[Range<usize>], sink: &mut S) {
    let independent = pieces.iter().enumerate().all(|(i, r)| {
        let p = &stored[r.clone()];
        (i + 1 == pieces.len() || p.last() == Some(&b'\n'))
            && (i == 0 || p.first().is_some_and(|&b| b != b'\n' && b != b'\r'))
    });
    let (Some(first), Some(last), true) = (pieces.first(), pieces.last(), independent) else {
        let mut joined = Vec::with_capacity(pieces.iter().map(|r| r.len()).sum());
        for r in pieces {
            joined.extend_from_slice(&stored[r.clone()]);
        }
        return canonicalize_body(canon, &joined, sink);
    };
    let mut bufs = BUFFERS.take().unwrap_or_else(Buffers::new);
    {
        let Buffers { stage } = &mut *bufs;
        let mut staged = Staged::new(sink, stage, &stored[first.start..last.end]);
        for (i, r) in pieces.iter().enumerate() {
            let piece = &stored[r.clone()];
            match (canon, i + 1 == pieces.len()) {
                (Canon::Simple, true) => body_simple(piece, &mut staged),
                (Canon::Relaxed, true) => body_relaxed(piece, &mut staged),
                // Whole lines in the middle of the body: nothing trailing to remove, no line end
                // to add.
                (Canon::Simple, false) => simple_content(piece, &mut staged),
                (Canon::Relaxed, false) => relaxed_content(piece, &mut staged),
            }
        }
        staged.flush();
    }
    BUFFERS.set(Some(bufs));
}

/// The canonical form of `piece`, a part of a body that starts and ends with an octet of
/// content (not a line-end character; in relaxed, not whitespace either), so that nothing in
/// it is trailing or depends on what comes before or after: lines rewritten, nothing removed
/// or added at its ends. Used by [`crate::dkim::bodyhash::StreamCanonicalizer`] for the bulk of
/// each chunk.
pub(crate) fn canonicalize_body_middle<S: Sink + ?Sized>(canon: Canon, piece: &[u8], sink: &mut S) {
    let mut bufs = BUFFERS.take().unwrap_or_else(Buffers::new);
    {
        let Buffers { stage } = &mut *bufs;
        let mut staged = Staged::new(sink, stage, piece);
        match canon {
            Canon::Simple => simple_content(piece, &mut staged),
            Canon::Relaxed => relaxed_content(piece, &mut staged),
        }
        staged.flush();
    }
    BUFFERS.set(Some(bufs));
}

/// Size of the staging buffer.
const STAGE: usize = 16 * 1024;
/// Writes at least this long go to the sink without staging.
const PASS_THROUGH: usize = 512;
/// Input octets per LF-to-CRLF expansion; the output of one fits the staging buffer.
const EXPAND_CHUNK: usize = 4096;
/// CRLF-stored content is checked for bare LFs and hashed this many octets at a time.
const FUSE_CHUNK: usize = 16 * 1024;

/// The buffers of [`canonicalize_body`], made once per thread: zeroing them on every call cost
/// as much as hashing a few hundred octets of a small body.
struct Buffers {
    stage: [u8; STAGE],
}

impl Buffers {
    fn new() -> Box<Buffers> {
        Box::new(Buffers { stage: [0; STAGE] })
    }
}

thread_local! {
    static BUFFERS: std::cell::Cell<Option<Box<Buffers>>> = const { std::cell::Cell::new(None) };
}

/// Gathers the short writes of line-by-line rewriting (a line, then CRLF) into one buffer, so
/// that the hasher sees a few large updates instead of two per line; long runs pass straight
/// through.
///
/// It also keeps the input coming: SHA-256 reads too slowly for the hardware prefetcher to run
/// ahead of it, so a body that comes cold from memory (a large mbox) would stall the hasher on
/// every cache line. Before each piece of [`PREFETCH_PIECE`] octets goes to the sink, the same
/// amount of input [`PREFETCH_DISTANCE`] further on is prefetched. Spread out like this the
/// requests overlap with hashing (one burst per chunk filled the CPU's miss buffers and
/// stalled it instead); canonical output is about as long as the input, so the prefetches stay
/// about that far ahead of the reader.
struct Staged<'a, S: Sink + ?Sized> {
    inner: &'a mut S,
    buf: &'a mut [u8; STAGE],
    len: usize,
    /// The input not prefetched yet.
    ahead: &'a [u8],
}

/// Writes `bytes` to `sink` a piece at a time, each after a prefetch of as much of `ahead`
/// (which it then consumes).
fn emit_prefetching<S: Sink + ?Sized>(sink: &mut S, ahead: &mut &[u8], bytes: &[u8]) {
    for piece in bytes.chunks(PREFETCH_PIECE) {
        let (now, later) = ahead.split_at(piece.len().min(ahead.len()));
        crate::arch::prefetch::prefetch(now);
        *ahead = later;
        sink.write(piece);
    }
}

impl<'a, S: Sink + ?Sized> Staged<'a, S> {
    fn new(inner: &'a mut S, buf: &'a mut [u8; STAGE], input: &'a [u8]) -> Self {
        Staged { inner, buf, len: 0, ahead: input.get(PREFETCH_DISTANCE..).unwrap_or_default() }
    }

    /// Hands `bytes` to the sink, prefetching as described above.
    fn emit(&mut self, bytes: &[u8]) {
        emit_prefetching(self.inner, &mut self.ahead, bytes);
    }

    fn flush(&mut self) {
        if self.len > 0 {
            emit_prefetching(self.inner, &mut self.ahead, &self.buf[..self.len]);
            self.len = 0;
        }
    }

    /// Stages `input` with a CR put before every bare LF ([`crlf::to_crlf`]); `before` is the
    /// octet before it. `input` is at most [`EXPAND_CHUNK`] long.
    fn expand(&mut self, input: &[u8], before: u8) {
        if self.len + crlf::expanded_capacity(input.len()) > STAGE {
            self.flush();
        }
        self.len += crlf::to_crlf(input, before, &mut self.buf[self.len..]);
    }

    /// Stages `input` as [`crlf::to_crlf_relaxed`] copies it, up to the first whitespace that
    /// relaxed canonicalization may have to rewrite, and returns how much of `input` that was.
    /// `input` is at most [`EXPAND_CHUNK`] long.
    fn expand_relaxed(&mut self, input: &[u8], before: u8) -> usize {
        if self.len + crlf::expanded_capacity(input.len()) > STAGE {
            self.flush();
        }
        let (used, wrote) = crlf::to_crlf_relaxed(input, before, &mut self.buf[self.len..]);
        self.len += wrote;
        used
    }
}

impl<S: Sink + ?Sized> Sink for Staged<'_, S> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= PASS_THROUGH {
            // Long enough for the hasher to take whole blocks from it: no copy.
            self.flush();
            self.emit(bytes);
        } else if self.len + bytes.len() <= STAGE {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            self.flush();
            self.buf[..bytes.len()].copy_from_slice(bytes);
            self.len = bytes.len();
        }
    }
}

/// The octet before `at` in `content`, or NUL (not CR) at its start.
fn octet_before(content: &[u8], at: usize) -> u8 {
    if at > 0 {
        content[at - 1]
    } else {
        0
    }
}

/// Simple body canonicalization (RFC 6376 §3.4.3): trailing empty lines removed, a missing
/// final line end added, an empty body becomes a single CRLF.
///
/// Content stored with CRLF (the wire form) is already canonical and goes to the sink as it
/// is. Once a bare LF turns up, the rest is copied through [`crlf::to_crlf`], which puts in the
/// CRs the wire would carry.
fn body_simple<S: Sink + ?Sized>(body: &[u8], sink: &mut Staged<'_, S>) {
    let end = simple_content_end(body);
    if end == 0 {
        sink.write(CRLF);
        return;
    }
    let content = &body[..end];
    simple_content(content, sink);
    // `end` cuts right after the last line end of a non-empty line, or at the end of an
    // unterminated last line, which then gets its CRLF here.
    if content.last() != Some(&b'\n') {
        sink.write(CRLF);
    }
}

/// The simple form of `content`, as it is: CRLF line ends, nothing removed or added.
fn simple_content<S: Sink + ?Sized>(content: &[u8], sink: &mut Staged<'_, S>) {
    // Check and hash a chunk at a time, prefetching the next: the check pulls the chunk into
    // the cache and the hasher reads it there, while the next one is on its way. A body that
    // comes cold from memory (a large mbox) is then read from memory once, and not by the
    // hasher, which is too slow a reader for the hardware prefetcher.
    let mut at = 0;
    while at < content.len() {
        let chunk_end = (at + FUSE_CHUNK).min(content.len());
        if crlf::has_bare_lf(&content[at..chunk_end], octet_before(content, at)) {
            break;
        }
        sink.write(&content[at..chunk_end]);
        at = chunk_end;
    }
    // Bare LFs from here on (stored with LF, as mbox files are).
    while at < content.len() {
        let end = (at + EXPAND_CHUNK).min(content.len());
        sink.expand(&content[at..end], octet_before(content, at));
        at = end;
    }
}

/// Where the content of `body` ends once trailing empty lines are dropped: just after the line
/// end of the last non-empty line (or `body.len()` when the last line has no line end).
/// Returns 0 when every line is empty.
fn simple_content_end(body: &[u8]) -> usize {
    let mut end = body.len();
    // An unterminated last line is content (even if it is a lone CR: an ordinary octet).
    if end > 0 && body[end - 1] != b'\n' {
        return end;
    }
    // Strip empty lines from the back: each is "\n" or "\r\n" preceded by another line end.
    loop {
        // body[..end] ends with '\n' here, or is empty.
        if end == 0 {
            return 0;
        }
        let line_end_start = if end >= 2 && body[end - 2] == b'\r' { end - 2 } else { end - 1 };
        if line_end_start == 0 {
            // The whole remaining body is one empty line.
            return 0;
        }
        if body[line_end_start - 1] == b'\n' {
            // The line ending here is empty: drop its line end.
            end = line_end_start;
        } else {
            return end;
        }
    }
}

/// Relaxed body canonicalization (RFC 6376 §3.4.4): WSP runs become one SP, WSP at line end
/// is removed, trailing empty lines are removed, an empty body stays empty, a missing final
/// line end is added to a non-empty body.
///
/// Most of a text body is already canonical: lines that end in CRLF, with single spaces between
/// words. Only a few places need rewriting: a tab, two spaces in a row, whitespace before a line
/// end, and a bare LF. One SIMD scan ([`crlf::relaxed_event`]) finds those places, and the
/// bytes between them go to the sink unchanged, in runs that span many lines. Content stored
/// with bare LFs is copied to CRLF and checked for those places in the same pass
/// ([`crlf::to_crlf_relaxed`]). Trailing empty
/// and whitespace-only lines are cut off before the scan begins.
fn body_relaxed<S: Sink + ?Sized>(body: &[u8], sink: &mut Staged<'_, S>) {
    let content = &body[..relaxed_content_end(body)];
    if content.is_empty() {
        return;
    }
    relaxed_content(content, sink);
    sink.write(CRLF);
}

/// The relaxed rewriting of `content` line by line, without removing trailing lines or adding
/// a final line end.
fn relaxed_content<S: Sink + ?Sized>(content: &[u8], sink: &mut Staged<'_, S>) {
    // A chunk of whole lines at a time (relaxed rewriting never crosses a line end, so such
    // chunks are independent; trailing empty lines are already cut off above), prefetching the
    // next, as in `body_simple`.
    let mut at = 0;
    while at < content.len() {
        let limit = (at + FUSE_CHUNK).min(content.len());
        let end = line_chunk_end(content, at, limit);
        let chunk = &content[at..end];
        if crlf::has_bare_lf(chunk, octet_before(content, at)) {
            relaxed_expanding(chunk, octet_before(content, at), sink);
        } else {
            relaxed_runs(chunk, false, sink);
        }
        at = end;
    }
}

/// Where a chunk of whole lines that starts at `at` (a line start) and should end near `limit`
/// ends: after the last LF before `limit`, or after the first LF past it when one line is
/// longer than that, or at the end of `content`.
fn line_chunk_end(content: &[u8], at: usize, limit: usize) -> usize {
    if limit == content.len() {
        return limit;
    }
    match memchr::memrchr(b'\n', &content[at..limit]) {
        Some(i) => at + i + 1,
        None => memchr::memchr(b'\n', &content[limit..]).map_or(content.len(), |i| limit + i + 1),
    }
}

/// Relaxed rewriting of whole lines stored with (some) bare LFs, in one pass: a piece at a
/// time is copied into the staging buffer with CRLF line ends up to the first whitespace that
/// may need rewriting ([`crlf::to_crlf_relaxed`], which itself drops a single space that ends
/// a line); that whitespace run is rewritten here, and the copy goes on after it. `before` is
/// the octet before `content`.
fn relaxed_expanding<S: Sink + ?Sized>(content: &[u8], before: u8, sink: &mut Staged<'_, S>) {
    let mut at = 0;
    while at < content.len() {
        let end = (at + EXPAND_CHUNK).min(content.len());
        let prev = if at == 0 { before } else { content[at - 1] };
        at += sink.expand_relaxed(&content[at..end], prev);
        if at == end {
            continue;
        }
        // A whitespace run that may need rewriting starts at `at` (the whole run: the copy
        // stopped at its first octet).
        let mut run_end = at + 1;
        while run_end < content.len() && is_wsp(content[run_end]) {
            run_end += 1;
        }
        let ends_line = run_end == content.len()
            || content[run_end] == b'\n'
            || (content[run_end] == b'\r' && content.get(run_end + 1) == Some(&b'\n'));
        // Dropped at a line end, else one SP.
        if !ends_line {
            sink.write(b" ");
        }
        at = run_end;
    }
}

/// The relaxed rewriting of `content` (whole lines, or the end of the content), without the
/// final CRLF. `bare`: whether `content` may hold bare LFs (then every LF gets a look, as a CR
/// must go in); otherwise all its line ends are CRLF.
///
/// One scan ([`crlf::relaxed_event`]) finds the few places that may need rewriting: a tab, a
/// space before a space or a line end, and bare LFs. The text between them is canonical and
/// goes to the sink in one write, across as many lines as it spans.
fn relaxed_runs<S: Sink + ?Sized>(content: &[u8], bare: bool, sink: &mut S) {
    // content[run..] has not been written yet; events before `from` are dealt with.
    let mut run = 0;
    let mut from = 0;
    while let Some(at) = crlf::relaxed_event(content, from, bare) {
        if content[at] == b'\n' {
            // A line end (bare mode): a CR goes in before a bare LF. Whitespace before it went
            // with the event of its first octet.
            if at == 0 || content[at - 1] != b'\r' {
                sink.write(&content[run..at]);
                sink.write(CRLF);
                run = at + 1;
            }
            from = at + 1;
        } else {
            // A whitespace run that is not a single SP within a line: find its whole extent.
            let mut start = at;
            while start > run && is_wsp(content[start - 1]) {
                start -= 1;
            }
            let mut end = at + 1;
            while end < content.len() && is_wsp(content[end]) {
                end += 1;
            }
            let ends_line = end == content.len()
                || content[end] == b'\n'
                || (content[end] == b'\r' && content.get(end + 1) == Some(&b'\n'));
            if ends_line || end - start > 1 || content[start] != b' ' {
                // Dropped at a line end, else one SP.
                sink.write(&content[run..start]);
                if !ends_line {
                    sink.write(b" ");
                }
                // The line end, if any, starts the next run.
                run = end;
            }
            from = end;
        }
    }
    sink.write(&content[run..]);
}

/// Where the relaxed content of `body` ends: after its last octet that is neither WSP nor part
/// of a line end (a lone CR is content). Everything after it is trailing whitespace and empty
/// lines, which relaxed canonicalization removes.
fn relaxed_content_end(body: &[u8]) -> usize {
    let mut i = body.len();
    while i > 0 {
        let b = body[i - 1];
        let strip = match b {
            b' ' | b'\t' | b'\n' => true,
            b'\r' => body.get(i) == Some(&b'\n'),
            _ => false,
        };
        if !strip {
            break;
        }
        i -= 1;
    }
    i
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dkim::canon::naive;
    use crate::dkim::canon::tests::message_bytes;
    use proptest::prelude::*;

    fn body(c: Canon, b: &[u8]) -> Vec<u8> {
        let mut v = vec![];
        canonicalize_body(c, b, &mut v);
        v
    }

    #[test]
    fn body_table() {
        use Canon::*;
        let cases: &[(Canon, &[u8], &[u8])] = &[
            // Empty body: simple gives CRLF, relaxed nothing (§3.4.3, §3.4.4).
            (Simple, b"", b"\r\n"),
            (Relaxed, b"", b""),
            (Simple, b"\r\n\r\n", b"\r\n"),
            (Relaxed, b"\r\n\r\n", b""),
            (Relaxed, b" \t \r\n\r\n", b""),
            // Trailing empty lines go.
            (Simple, b"a\r\n\r\n\r\n", b"a\r\n"),
            (Relaxed, b"a\r\n \r\n\t\r\n", b"a\r\n"),
            // Whitespace-only line is not empty for simple.
            (Simple, b"a\r\n \r\n", b"a\r\n \r\n"),
            // Missing final line break.
            (Simple, b"a", b"a\r\n"),
            (Relaxed, b"a  ", b"a\r\n"),
            // Bare LF as CRLF.
            (Simple, b"a\nb\n\n", b"a\r\nb\r\n"),
            (Relaxed, b"a \nb\t\n\n", b"a\r\nb\r\n"),
            // Inner empty lines stay.
            (Relaxed, b"a\r\n\r\n \r\nb\r\n", b"a\r\n\r\n\r\nb\r\n"),
            // WSP runs reduced, leading WSP kept as one SP.
            (Relaxed, b" \t a \t b \r\n", b" a b\r\n"),
            // Lone CR is an ordinary octet.
            (Simple, b"a\rb\r\n", b"a\rb\r\n"),
            (Relaxed, b"a \r b \r\n", b"a \r b\r\n"),
            (Relaxed, b"\r\n\r", b"\r\n\r\r\n"),
            (Simple, b"a\r", b"a\r\r\n"),
        ];
        for &(c, input, want) in cases {
            assert_eq!(body(c, input), want, "{c:?} {:?}", String::from_utf8_lossy(input));
        }
    }

    /// Bodies longer than the check-and-hash chunks, with a bare LF (or a lone CR, or a
    /// CRLF split by the boundary) placed around every chunk boundary.
    #[test]
    fn large_bodies_across_chunk_boundaries() {
        let line = b"the quarterly report is attached  please\treview \r\n";
        let mut base = vec![];
        while base.len() < 3 * FUSE_CHUNK + 100 {
            base.extend_from_slice(line);
        }
        for boundary in [FUSE_CHUNK, 2 * FUSE_CHUNK, 3 * FUSE_CHUNK] {
            for delta in 0..4 {
                let at = boundary - 2 + delta;
                for insert in [&b"\n"[..], b"\r", b"\r\n", b"x\n"] {
                    let mut b = base.clone();
                    b.splice(at..at, insert.iter().copied());
                    for c in [Canon::Simple, Canon::Relaxed] {
                        assert_eq!(body(c, &b), naive::body(c, &b), "{c:?}, {insert:?} at {at}");
                    }
                }
            }
        }
        for c in [Canon::Simple, Canon::Relaxed] {
            assert_eq!(body(c, &base), naive::body(c, &base));
        }
    }

    /// Mail-like bodies of many lines, mostly LF-terminated (as mbox files store them), some
    /// longer than the expansion chunk, with whitespace of every kind around the line ends.
    pub(crate) fn long_bodies() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            8 => Just(&b"word"[..]),
            4 => Just(&b" "[..]),
            1 => Just(&b"  "[..]),
            1 => Just(&b"\t"[..]),
            1 => Just(&b"\r"[..]),
            1 => Just(&[b'y'; 5000][..]),
        ];
        let line =
            (proptest::collection::vec(token, 0..40), prop_oneof![4 => Just(&b"\n"[..]), 1 => Just(&b"\r\n"[..])]);
        proptest::collection::vec(line, 0..600).prop_map(|lines| {
            let mut v = vec![];
            for (tokens, end) in lines {
                tokens.iter().for_each(|t| v.extend_from_slice(t));
                v.extend_from_slice(end);
            }
            v
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn long_bodies_match_naive(input in long_bodies()) {
            for c in [Canon::Simple, Canon::Relaxed] {
                prop_assert_eq!(body(c, &input), naive::body(c, &input));
            }
        }
    }

    /// A body as an mbox stores it: the lines of `body` with `quote` lines turned into
    /// `>From ` lines (a quoting `>` before `From `). Returns the stored bytes, the pieces that
    /// skip each quoting `>`, and the unquoted body.
    fn quoted(body: &[u8], quote: &[bool]) -> (Vec<u8>, Vec<Range<usize>>, Vec<u8>) {
        let (mut stored, mut pieces, mut unquoted) = (vec![], vec![], vec![]);
        let mut piece_start = 0;
        let lines = body.split_inclusive(|&b| b == b'\n');
        for (line, &q) in lines.zip(quote.iter().chain(std::iter::repeat(&false))) {
            if q {
                pieces.push(piece_start..stored.len());
                stored.push(b'>');
                piece_start = stored.len();
                stored.extend_from_slice(b"From ");
                unquoted.extend_from_slice(b"From ");
            }
            stored.extend_from_slice(line);
            unquoted.extend_from_slice(line);
        }
        if quote.get(body.split_inclusive(|&b| b == b'\n').count()) == Some(&true) {
            // A quoted line after the last line of `body`.
            pieces.push(piece_start..stored.len());
            stored.push(b'>');
            piece_start = stored.len();
            stored.extend_from_slice(b"From x\n");
            unquoted.extend_from_slice(b"From x\n");
        }
        pieces.push(piece_start..stored.len());
        (stored, pieces, unquoted)
    }

    fn pieces_canon(c: Canon, stored: &[u8], pieces: &[Range<usize>]) -> Vec<u8> {
        let mut out = vec![];
        canonicalize_body_pieces(c, stored, pieces, &mut out);
        out
    }

    /// Bodies hashed in pieces around quoting `>`s equal the unquoted body's canonical form:
    /// quoted lines first, last, next to empty and whitespace-only lines, and pieces that break
    /// the rules (joined instead).
    #[test]
    fn pieces_table() {
        let bodies: &[&[u8]] = &[b"a\n\nb\n", b"\n\n", b"  \n\t\n", b"x \r\n\r\n \n", b"line\n", b"no end"];
        for body in bodies {
            let n = body.split_inclusive(|&b| b == b'\n').count() + 1;
            for mask in 0u32..(1 << n) {
                let quote: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
                let (stored, pieces, unquoted) = quoted(body, &quote);
                for c in [Canon::Simple, Canon::Relaxed] {
                    assert_eq!(
                        pieces_canon(c, &stored, &pieces),
                        naive::body(c, &unquoted),
                        "{c:?} {:?} {quote:?}",
                        String::from_utf8_lossy(body)
                    );
                }
            }
        }
        // Pieces that are not independent: joined, same result.
        let stored = b"a\n\n>\n\nb";
        let pieces = [0..3, 4..7];
        for c in [Canon::Simple, Canon::Relaxed] {
            assert_eq!(pieces_canon(c, stored, &pieces), naive::body(c, b"a\n\n\n\nb"));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn quoted_pieces_match_naive(input in long_bodies(), quote in proptest::collection::vec(proptest::bool::weighted(0.1), 0..600)) {
            let (stored, pieces, unquoted) = quoted(&input, &quote);
            for c in [Canon::Simple, Canon::Relaxed] {
                prop_assert_eq!(pieces_canon(c, &stored, &pieces), naive::body(c, &unquoted));
            }
        }
    }

    proptest! {
        #[test]
        fn body_matches_naive(input in message_bytes()) {
            for c in [Canon::Simple, Canon::Relaxed] {
                prop_assert_eq!(body(c, &input), naive::body(c, &input));
            }
        }
    }
}
