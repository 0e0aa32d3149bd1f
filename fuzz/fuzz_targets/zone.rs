//! Zone-file parsing (`dns::ZoneKeys::add_zone`, the text behind `--dns-zone`).
//!
//! The first octet picks the mode. Raw mode, the rest is a zone file: no panic, and never more
//! names with records than lines. Round-trip mode, the rest is records separated by NUL, each
//! `owner-label \x01 value`: they are written as a zone (`$ORIGIN`, relative and absolute
//! owners, owner-less continuation records, TTL and class, values cut into quoted strings of
//! at most 255 octets with `\"`, `\\` and `\DDD` escapes, across parenthesised lines, comments
//! after them) and read back: each name gives exactly the values written for it, in order.
#![no_main]

use dkimpress::lookup::ZoneKeys;
use dkimpress::dkim::verify::{KeyLookup, LookupError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let text = String::from_utf8_lossy(data);
        let mut z = ZoneKeys::default();
        if z.add_zone(&text, "fuzz.zone").is_ok() {
            assert!(z.len() <= text.lines().count(), "more names than lines");
        }
    } else {
        round_trip(mode, data);
    }
});

/// A zone label from arbitrary octets: letters, digits, `-` and `_` only, never empty.
fn label(raw: &[u8]) -> String {
    let mut s: String = raw
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
        .map(|&b| (b as char).to_ascii_lowercase())
        .take(40)
        .collect();
    if s.is_empty() {
        s.push('x');
    }
    s
}

/// One TXT value as quoted strings of at most 255 octets (before escaping), one per line.
fn quoted(value: &[u8], mode: u8) -> String {
    let mut out = String::from("(");
    let piece = if mode & 2 != 0 { 255 } else { 7 };
    for chunk in value.chunks(piece) {
        out.push_str("\n\t  \"");
        for &b in chunk {
            match b {
                b'"' | b'\\' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x20..=0x7e => out.push(b as char),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('"');
    }
    if value.is_empty() {
        out.push_str(" \"\"");
    }
    out.push_str(" )  ; a comment; with \"quotes\"\n");
    out
}

fn round_trip(mode: u8, data: &[u8]) {
    let mut text = String::from("; written by the fuzz target\n$TTL 3600\n$ORIGIN Example.COM.\n");
    let mut want: Vec<(String, Vec<Vec<u8>>)> = vec![];
    let mut last: Option<String> = None;
    for (i, rec) in data.split(|&b| b == 0).enumerate() {
        let (owner, value) = match rec.iter().position(|&b| b == 1) {
            Some(p) => (&rec[..p], &rec[p + 1..]),
            None => (rec, &b""[..]),
        };
        let owner = label(owner);
        let name = format!("{owner}._domainkey.example.com");
        // Absolute, relative, or (same owner as before) no owner at all.
        let owner_field = match (i + mode as usize / 4) % 3 {
            0 => format!("{owner}._domainkey.example.com."),
            1 if last.as_deref() == Some(&name) => "\t".to_string(),
            _ => format!("{owner}._domainkey"),
        };
        let sep = if owner_field == "\t" { "" } else { "\t" };
        text.push_str(&format!("{owner_field}{sep}300 IN TXT {}", quoted(value, mode)));
        match want.iter_mut().find(|(n, _)| *n == name) {
            Some((_, vs)) => vs.push(value.to_vec()),
            None => want.push((name.clone(), vec![value.to_vec()])),
        }
        last = Some(name);
    }
    let mut z = ZoneKeys::default();
    z.add_zone(&text, "written.zone").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(z.len(), want.len(), "{text}");
    for (name, values) in &want {
        assert_eq!(z.txt(name).as_ref(), Ok(values), "{name}\n{text}");
        assert_eq!(z.txt(&name.to_ascii_uppercase()).as_ref(), Ok(values), "lookups ignore case");
    }
    if !want.iter().any(|(n, _)| n == "nothere._domainkey.example.com") {
        assert_eq!(z.txt("nothere._domainkey.example.com"), Err(LookupError::NotFound));
    }
}
