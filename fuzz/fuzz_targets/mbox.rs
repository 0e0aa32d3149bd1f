//! The mbox splitter and unquoting, in every flavour (`check`, `Splitter`, `unquote`).
//!
//! The first octet picks the flavour (low two bits) and the mode (bit 2); the rest is data.
//!
//! Raw mode, the data is an mbox file: no panic; when `check` accepts it, the messages cover
//! the file in order with no gap and no overlap (BOM, then from-line, data, from-line, data,
//! ... to the end), each from-line starts with `From ` and ends at its first line end, the
//! message is the data or the data less one final empty line. Without Content-Length
//! (mboxo, mboxrd) a naive line-by-line oracle finds the same separators, and no data range
//! holds a separator. `unquote` agrees with a naive line-by-line unquoter, and returns the
//! data untouched when the splitter said the message holds no quoted line.
//!
//! Round-trip mode, the data is messages separated by NUL: each message is quoted as the
//! flavour's writer does (mboxrd: `>*From ` gains a `>`; mboxo and mboxcl: `From ` becomes
//! `>From `), written out with separators (LF or CRLF), then split and unquoted again: the
//! messages come back exactly (for mboxo, mboxcl only when no line of a message starts with
//! `>From `, which those flavours cannot tell from a quoted line). mboxcl2 (no quoting) is
//! not round-tripped.
#![no_main]

use dkimpress::pipeline::mbox::{check, unquote, MboxFormat, Splitter};
use libfuzzer_sys::fuzz_target;

const FORMATS: [MboxFormat; 4] = [MboxFormat::Mboxo, MboxFormat::Mboxrd, MboxFormat::Mboxcl, MboxFormat::Mboxcl2];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else { return };
    let format = FORMATS[(sel & 3) as usize];
    if sel & 4 == 0 {
        raw(format, data);
    } else {
        round_trip(format, sel & 8 != 0, data);
    }
});

/// Line starts of `data` (offsets), per the splitter's rule: the start, and after every LF.
fn line_starts(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(data.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1))
}

fn raw(format: MboxFormat, data: &[u8]) {
    if check(data).is_err() {
        return;
    }
    let bom = dkimpress::pipeline::mbox::bom_len(data);
    let entries: Vec<_> = Splitter::new(data, format).collect();
    let mut at = bom;
    for e in &entries {
        assert_eq!(e.from_line.start, at, "gap or overlap before a from-line");
        assert!(data[e.from_line.clone()].starts_with(b"From "), "from-line does not start with From");
        let nl = memchr_nl(&data[at..]).map_or(data.len(), |i| at + i + 1);
        assert_eq!(e.from_line.end, nl, "from-line does not end at its line end");
        assert_eq!(e.data.start, e.from_line.end);
        assert!(e.data.end >= e.data.start);
        assert_eq!(e.message.start, e.data.start);
        let d = &data[e.data.clone()];
        let m = &data[e.message.clone()];
        assert!(
            m == d
                || (d.ends_with(b"\n") && m == &d[..d.len() - 1])
                || (d.ends_with(b"\r\n") && m == &d[..d.len() - 2]),
            "message is not the data less its final empty line"
        );
        if m.len() < d.len() {
            assert!(m.ends_with(b"\n"), "the line dropped from the message was not an empty line");
        }
        at = e.data.end;
    }
    assert_eq!(at, data.len(), "the messages do not reach the end of the file");
    if data.len() > bom {
        assert!(!entries.is_empty());
    }
    if matches!(format, MboxFormat::Mboxo | MboxFormat::Mboxrd) {
        // Separators: every line start (or the start after a BOM) that begins with "From ".
        let want: Vec<usize> = line_starts(data)
            .map(|i| if i == 0 { bom } else { i })
            .filter(|&i| data[i..].starts_with(b"From "))
            .collect();
        let got: Vec<usize> = entries.iter().map(|e| e.from_line.start).collect();
        assert_eq!(got, want, "separators differ from the line-by-line oracle");
    }
    let mut scratch = Vec::new();
    for e in &entries {
        let m = &data[e.message.clone()];
        let got = unquote(format, m, &mut scratch).to_vec();
        assert_eq!(got, naive_unquote(format, m), "unquote differs from the line-by-line oracle");
        if !e.quoted {
            assert_eq!(got, m, "a message flagged unquoted changed when unquoted");
        }
    }
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// Whether a line (from a line start) is quoted in `format`: one `>` comes off.
fn naive_is_quoted(format: MboxFormat, line: &[u8]) -> bool {
    match format {
        MboxFormat::Mboxcl2 => false,
        MboxFormat::Mboxo | MboxFormat::Mboxcl => line.starts_with(b">From "),
        MboxFormat::Mboxrd => {
            let n = line.iter().take_while(|&&b| b == b'>').count();
            n > 0 && line[n..].starts_with(b"From ")
        }
    }
}

fn naive_unquote(format: MboxFormat, m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for line in m.split_inclusive(|&b| b == b'\n') {
        if naive_is_quoted(format, line) {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// What the flavour's writer does to a message line.
fn quote(format: MboxFormat, m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 16);
    for line in m.split_inclusive(|&b| b == b'\n') {
        let needs = match format {
            MboxFormat::Mboxrd => {
                let n = line.iter().take_while(|&&b| b == b'>').count();
                line[n..].starts_with(b"From ")
            }
            _ => line.starts_with(b"From "),
        };
        if needs {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    out
}

fn round_trip(format: MboxFormat, crlf: bool, data: &[u8]) {
    if format == MboxFormat::Mboxcl2 {
        return;
    }
    let le: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut messages: Vec<Vec<u8>> = data.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    for m in &mut messages {
        // A stored message ends with a line end.
        if !m.ends_with(b"\n") {
            m.extend_from_slice(le);
        }
    }
    if format != MboxFormat::Mboxrd && messages.iter().any(|m| line_starts(m).any(|i| m[i..].starts_with(b">From "))) {
        return;
    }
    // An mboxcl writer writes Content-Length itself. A message that brings its own can send the
    // reader, which trusts a Content-Length that lands on a separator, to a later message: input
    // no writer of that format makes, so not a round trip to check.
    let has_content_length =
        |m: &[u8]| line_starts(m).any(|i| m[i..].get(..15).is_some_and(|h| h.eq_ignore_ascii_case(b"content-length:")));
    if format == MboxFormat::Mboxcl && messages.iter().any(|m| has_content_length(m)) {
        return;
    }
    let mut mbox = Vec::new();
    let mut writes = Vec::new();
    for m in &messages {
        mbox.extend_from_slice(b"From sender@example.com Sat Jan  1 00:00:00 2000");
        mbox.extend_from_slice(le);
        let q = quote(format, m);
        let start = mbox.len();
        mbox.extend_from_slice(&q);
        // The empty line a writer puts before the next separator.
        mbox.extend_from_slice(le);
        writes.push(start..mbox.len());
    }
    check(&mbox).expect("a written mbox is an mbox");
    let entries: Vec<_> = Splitter::new(&mbox, format).collect();
    assert_eq!(entries.len(), messages.len(), "message count changed");
    let mut scratch = Vec::new();
    for ((e, m), w) in entries.iter().zip(&messages).zip(&writes) {
        assert_eq!(e.data, *w, "message boundaries moved");
        let got = unquote(format, &mbox[e.data.clone()], &mut scratch);
        let mut want = m.clone();
        want.extend_from_slice(le);
        assert_eq!(got, &want[..], "message changed by quote, split, unquote");
    }
}
