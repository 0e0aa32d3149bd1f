//! Canonicalization of header fields and bodies (RFC 6376 §3.4).
//!
//! This module owns the byte-level transforms `simple` and `relaxed`, for header fields and for
//! bodies, and writes their output into a [`Sink`] (a hasher in production, a `Vec<u8>` in
//! tests). Here are the names ([`Canon`], [`Canonicalization`], [`Sink`]), the header field
//! transforms and the byte-at-a-time oracle (`naive`, built for tests and fuzzing); the body
//! transforms, with the staging and prefetching that keep the hasher fed, are in
//! `canon/body.rs` and exported from here ([`canonicalize_body`], [`canonicalize_body_pieces`]).
//! It does not parse the header block (see [`crate::dkim::header`]) and knows nothing of keys.
//!
//! Line ends: messages are canonicalized as they appear on the wire, with CRLF line ends, even
//! when they are stored with bare LF. The rules for stray line-end characters, applied the same
//! way in every path of this crate:
//!
//! * a bare LF is a line end, exactly as CRLF is (RFC 6376 §5.3: the signer converts it to CRLF,
//!   which is what an MTA does when it puts a bare-LF message on the wire);
//! * a lone CR (not followed by LF) is an ordinary octet of the line. This is what dkimpy and
//!   Mail::DKIM do when verifying and what Postfix transmits; libopendkim's relaxed body
//!   canonicalization drops such a CR instead, so peers disagree on these messages whatever we
//!   pick. A lone CR is not whitespace (WSP is SP and HTAB only, RFC 5234 B.1).

use crate::arch::crlf;

pub(crate) mod body;
pub(crate) use body::canonicalize_body_middle;
pub use body::{canonicalize_body, canonicalize_body_pieces};

/// Where canonicalized bytes go: a hasher, a buffer, a counter.
///
/// Implementations receive whole runs of bytes; the canonicalizers never write byte by byte
/// on their fast paths.
pub trait Sink {
    /// Appends `bytes` to the canonical stream.
    fn write(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for sha2::Sha256 {
    fn write(&mut self, bytes: &[u8]) {
        sha2::Digest::update(self, bytes);
    }
}

/// A sink that forwards to another one and counts the octets (for the `l=` tag, RFC 6376 §3.5,
/// which counts canonicalized body octets, not raw ones).
pub struct CountingSink<'a, S: Sink + ?Sized> {
    inner: &'a mut S,
    /// Octets written so far.
    pub count: u64,
}

impl<'a, S: Sink + ?Sized> CountingSink<'a, S> {
    /// Wraps `inner`, starting the count at zero.
    pub fn new(inner: &'a mut S) -> Self {
        CountingSink { inner, count: 0 }
    }
}

impl<S: Sink + ?Sized> Sink for CountingSink<'_, S> {
    fn write(&mut self, bytes: &[u8]) {
        self.count += bytes.len() as u64;
        self.inner.write(bytes);
    }
}

/// One canonicalization algorithm (RFC 6376 §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Canon {
    /// `simple`: the bytes as they are (§3.4.1, §3.4.3).
    Simple,
    /// `relaxed`: whitespace folded and reduced (§3.4.2, §3.4.4).
    Relaxed,
}

impl Canon {
    /// The name used in the `c=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Canon::Simple => "simple",
            Canon::Relaxed => "relaxed",
        }
    }
}

/// The `c=` pair: header and body canonicalization, chosen independently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Canonicalization {
    /// For the header fields.
    pub header: Canon,
    /// For the body.
    pub body: Canon,
}

impl Default for Canonicalization {
    /// `relaxed/relaxed`: survives the header rewrapping that relays commonly do.
    fn default() -> Self {
        Canonicalization { header: Canon::Relaxed, body: Canon::Relaxed }
    }
}

impl std::fmt::Display for Canonicalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.header.as_str(), self.body.as_str())
    }
}

/// An unknown canonicalization name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown canonicalization {0:?}: expected simple or relaxed, as header/body (e.g. relaxed/simple)")]
pub struct ParseCanonError(pub String);

impl std::str::FromStr for Canon {
    type Err = ParseCanonError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("simple") {
            Ok(Canon::Simple)
        } else if t.eq_ignore_ascii_case("relaxed") {
            Ok(Canon::Relaxed)
        } else {
            Err(ParseCanonError(s.to_string()))
        }
    }
}

impl std::str::FromStr for Canonicalization {
    type Err = ParseCanonError;
    /// `header/body`, or a single name, which (RFC 6376 §3.5 `c=`) sets the header algorithm
    /// and leaves the body `simple`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((h, b)) => Ok(Canonicalization {
                header: h.parse().map_err(|_| ParseCanonError(s.to_string()))?,
                body: b.parse().map_err(|_| ParseCanonError(s.to_string()))?,
            }),
            None => Ok(Canonicalization {
                header: s.parse().map_err(|_| ParseCanonError(s.to_string()))?,
                body: Canon::Simple,
            }),
        }
    }
}

const CRLF: &[u8] = b"\r\n";

#[inline]
fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Writes the canonical form of one header field, given its name and its whole raw text
/// (`Name: value` with folding, and with or without its final line end), followed by CRLF.
pub fn canonicalize_header<S: Sink + ?Sized>(canon: Canon, raw_field: &[u8], sink: &mut S) {
    match canon {
        Canon::Simple => header_simple(raw_field, sink),
        Canon::Relaxed => header_relaxed(raw_field, sink),
    }
    sink.write(CRLF);
}

/// Writes one header field canonicalized, without the final CRLF: the form in which the
/// DKIM-Signature field being created or verified enters the hash (RFC 6376 §3.7).
pub fn canonicalize_header_unterminated<S: Sink + ?Sized>(canon: Canon, raw_field: &[u8], sink: &mut S) {
    match canon {
        Canon::Simple => header_simple(raw_field, sink),
        Canon::Relaxed => header_relaxed(raw_field, sink),
    }
}

/// Strips the final line end of a raw header field.
fn strip_line_end(raw: &[u8]) -> &[u8] {
    match raw.strip_suffix(b"\n") {
        Some(r) => r.strip_suffix(b"\r").unwrap_or(r),
        None => raw,
    }
}

/// Simple header canonicalization (RFC 6376 §3.4.1): unchanged, but folding line ends are put
/// in their wire form (CRLF) when stored as bare LF.
fn header_simple<S: Sink + ?Sized>(raw: &[u8], sink: &mut S) {
    let raw = strip_line_end(raw);
    let mut run_start = 0;
    for nl in memchr::memchr_iter(b'\n', raw) {
        if nl > 0 && raw[nl - 1] == b'\r' {
            continue;
        }
        sink.write(&raw[run_start..nl]);
        sink.write(CRLF);
        run_start = nl + 1;
    }
    sink.write(&raw[run_start..]);
}

/// Relaxed header canonicalization (RFC 6376 §3.4.2): name lower-cased; value unfolded, WSP
/// runs reduced to one SP, WSP removed at both ends of the value and around the colon.
fn header_relaxed<S: Sink + ?Sized>(raw: &[u8], sink: &mut S) {
    let raw = strip_line_end(raw);
    let colon = memchr::memchr(b':', raw).unwrap_or(raw.len());
    // Whitespace before the colon (obsolete syntax, RFC 5322 §4.5) is dropped.
    let mut name_end = colon;
    while name_end > 0 && is_wsp(raw[name_end - 1]) {
        name_end -= 1;
    }
    let name = &raw[..name_end];
    // The name lower-cased and its colon, in one write (a signed field is a few dozen octets:
    // each write is a call).
    let mut lower = [0u8; 64];
    if let Some(buf) = lower.get_mut(..name.len() + 1) {
        buf[..name.len()].copy_from_slice(name);
        buf.make_ascii_lowercase();
        buf[name.len()] = b':';
        sink.write(buf);
    } else {
        sink.write(&name.to_ascii_lowercase());
        sink.write(b":");
    }
    if colon >= raw.len() {
        return;
    }
    // Unfolding: a CRLF (or bare LF) followed by WSP is removed; since it is always followed by
    // WSP it merges into a WSP run. Any line end is therefore treated as part of a WSP run,
    // which becomes one SP inside the value and nothing at its ends. A lone CR stays an
    // ordinary octet.
    let value = &raw[colon + 1..];
    let in_run = |i: usize| match value[i] {
        b' ' | b'\t' | b'\n' => true,
        b'\r' => value.get(i + 1) == Some(&b'\n'),
        _ => false,
    };
    let mut start = 0;
    while start < value.len() && in_run(start) {
        start += 1;
    }
    let mut end = value.len();
    while end > start && in_run(end - 1) {
        end -= 1;
    }
    let value = &value[..end];
    // Between single spaces the words are canonical: only the places found by the relaxed
    // scan (a tab, a space before whitespace or a line end, a line end) need rewriting.
    let mut run = start;
    let mut from = start;
    while let Some(at) = crlf::relaxed_event(value, from, true) {
        let mut ws = at;
        while ws > run && in_run(ws - 1) {
            ws -= 1;
        }
        let mut next = at + 1;
        while next < value.len() && in_run(next) {
            next += 1;
        }
        sink.write(&value[run..ws]);
        sink.write(b" ");
        run = next;
        from = next;
    }
    sink.write(&value[run..]);
}

// Also the oracle of the fuzz targets (fuzz/fuzz_targets/canon.rs), which reach it through the
// `fuzzing` feature. Not an API: slow on purpose.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod naive {
    //! Byte-at-a-time reference canonicalizers, written straight from the RFC text, used as
    //! oracles for the fast ones.
    use super::Canon;

    /// Splits into lines per the crate's rules (LF or CRLF ends a line; lone CR is data).
    /// Returns the lines and whether the last one had a line end.
    fn lines(body: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![];
        let mut cur = vec![];
        for &b in body {
            if b == b'\n' {
                if cur.last() == Some(&b'\r') {
                    cur.pop();
                }
                out.push(std::mem::take(&mut cur));
            } else {
                cur.push(b);
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// The canonical form of `body`, one line at a time.
    pub fn body(canon: Canon, body: &[u8]) -> Vec<u8> {
        let mut ls = lines(body);
        if canon == Canon::Relaxed {
            for l in ls.iter_mut() {
                let mut o = vec![];
                let mut in_ws = false;
                for &b in l.iter() {
                    if b == b' ' || b == b'\t' {
                        in_ws = true;
                    } else {
                        if in_ws {
                            o.push(b' ');
                        }
                        in_ws = false;
                        o.push(b);
                    }
                }
                *l = o;
            }
        }
        while ls.last().is_some_and(|l| l.is_empty()) {
            ls.pop();
        }
        let mut out = vec![];
        for l in &ls {
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
        if canon == Canon::Simple && out.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// The canonical form of one raw header field, one octet at a time.
    pub fn header(canon: Canon, raw: &[u8]) -> Vec<u8> {
        let mut raw = raw.to_vec();
        if raw.last() == Some(&b'\n') {
            raw.pop();
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
        }
        let mut out = vec![];
        match canon {
            Canon::Simple => {
                for (i, &b) in raw.iter().enumerate() {
                    if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                        out.push(b'\r');
                    }
                    out.push(b);
                }
            }
            Canon::Relaxed => {
                let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
                let name: Vec<u8> = raw[..colon].iter().map(|b| b.to_ascii_lowercase()).collect::<Vec<_>>();
                let name: Vec<u8> = {
                    let mut n = name;
                    while n.last().is_some_and(|&b| b == b' ' || b == b'\t') {
                        n.pop();
                    }
                    n
                };
                out.extend_from_slice(&name);
                out.push(b':');
                let value = if colon < raw.len() { &raw[colon + 1..] } else { &[][..] };
                // Unfold: delete CRLF / LF (a CR directly before LF goes with it).
                let mut unfolded = vec![];
                for (i, &b) in value.iter().enumerate() {
                    if b == b'\n' {
                        continue;
                    }
                    if b == b'\r' && value.get(i + 1) == Some(&b'\n') {
                        continue;
                    }
                    unfolded.push(if b == b'\t' { b' ' } else { b });
                }
                let mut v = vec![];
                for &b in &unfolded {
                    if b == b' ' && v.last() == Some(&b' ') {
                        continue;
                    }
                    v.push(b);
                }
                while v.last() == Some(&b' ') {
                    v.pop();
                }
                while v.first() == Some(&b' ') {
                    v.remove(0);
                }
                out.extend_from_slice(&v);
            }
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(c: Canon, b: &[u8]) -> Vec<u8> {
        let mut v = vec![];
        canonicalize_header(c, b, &mut v);
        v
    }

    /// RFC 6376 §3.4.5 example.
    #[test]
    fn rfc6376_3_4_5_example() {
        let hdrs: &[&[u8]] = &[b"A: X\r\n", b"B : Y\t\r\n\tZ  \r\n"];
        let mut relaxed = vec![];
        for h in hdrs {
            canonicalize_header(Canon::Relaxed, h, &mut relaxed);
        }
        assert_eq!(relaxed, b"a:X\r\nb:Y Z\r\n");
        let mut simple = vec![];
        for h in hdrs {
            canonicalize_header(Canon::Simple, h, &mut simple);
        }
        assert_eq!(simple, b"A: X\r\nB : Y\t\r\n\tZ  \r\n");
        let b = b" C \r\nD \t E\r\n\r\n\r\n";
        for (c, want) in [(Canon::Relaxed, &b" C\r\nD E\r\n"[..]), (Canon::Simple, b" C \r\nD \t E\r\n")] {
            let mut got = vec![];
            canonicalize_body(c, b, &mut got);
            assert_eq!(got, want, "{c:?}");
        }
    }

    #[test]
    fn header_table() {
        use Canon::*;
        let cases: &[(Canon, &[u8], &[u8])] = &[
            (Relaxed, b"SUBJECT:  Hello   World  \r\n", b"subject:Hello World\r\n"),
            (Relaxed, b"Subject:\r\n\tfolded\r\n  more\r\n", b"subject:folded more\r\n"),
            (Relaxed, b"Subject:folded\n more\n", b"subject:folded more\r\n"),
            (Relaxed, b"X-Empty:\r\n", b"x-empty:\r\n"),
            (Relaxed, b"X-Empty:   \r\n", b"x-empty:\r\n"),
            (Relaxed, b"X-Cr: a\rb\r\n", b"x-cr:a\rb\r\n"),
            (Simple, b"Subject: a\n b\n", b"Subject: a\r\n b\r\n"),
            (Simple, b"Subject: a", b"Subject: a\r\n"),
        ];
        for &(c, input, want) in cases {
            assert_eq!(header(c, input), want, "{c:?} {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn parse_canon() {
        for (s, want) in [
            ("relaxed/simple", Some((Canon::Relaxed, Canon::Simple))),
            ("simple", Some((Canon::Simple, Canon::Simple))),
            ("relaxed", Some((Canon::Relaxed, Canon::Simple))),
            ("Relaxed/Relaxed", Some((Canon::Relaxed, Canon::Relaxed))),
            ("nofws", None),
            ("relaxed/", None),
        ] {
            let got = s.parse::<Canonicalization>().ok().map(|c| (c.header, c.body));
            assert_eq!(got, want, "{s}");
        }
    }

    #[test]
    fn counting_sink_counts_canonical_octets() {
        let mut v = vec![];
        let mut c = CountingSink::new(&mut v);
        canonicalize_body(Canon::Relaxed, b"a  b\n\n\n", &mut c);
        assert_eq!(c.count, 5);
    }

    /// Any octets, weighted toward those canonicalization treats specially (also for the body
    /// tests).
    pub(super) fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b' '),
                Just(b'\t'),
                Just(b'\r'),
                Just(b'\n'),
                Just(b'a'),
                Just(b'z'),
                Just(b':'),
                any::<u8>()
            ],
            0..200,
        )
    }

    proptest! {
        #[test]
        fn header_matches_naive(value in message_bytes()) {
            // A realistic field: name, colon, value whose line ends are folds.
            let mut raw = b"X-Test :".to_vec();
            for (i, &b) in value.iter().enumerate() {
                raw.push(b);
                if b == b'\n' && i + 1 < value.len() {
                    raw.push(b' ');
                }
            }
            for c in [Canon::Simple, Canon::Relaxed] {
                prop_assert_eq!(header(c, &raw), naive::header(c, &raw));
            }
        }
    }

    /// Relaxed names lower-cased with their colon on either side of the in-place buffer's
    /// length (63 octets and the colon fit in it; longer names are written apart).
    #[test]
    fn header_names_of_every_length_match_naive() {
        for len in 1..80 {
            let name: Vec<u8> = (0..len).map(|i| if i % 2 == 0 { b'X' } else { b'y' }).collect();
            for sep in [&b":"[..], b" :", b": ", b"\t:\t"] {
                let raw = [&name[..], sep, b"Va  lue\r\n"].concat();
                assert_eq!(header(Canon::Relaxed, &raw), naive::header(Canon::Relaxed, &raw), "{len} {sep:?}");
            }
        }
    }
}
