//! The header parser (`Message::parse`) and `h=` selection (`Message::select`).
//!
//! Input: a message, then optionally a NUL and an `h=` list (names separated by `:`).
//! Properties: no panic; the fields tile the header block in order (each starts where the
//! previous one ended, the first at 0), each field's name is a valid name that its raw text
//! starts with, followed by optional WSP and a colon; every line of a field after the first is
//! a continuation (starts with WSP); the body is what follows the header block; and `select`
//! agrees with a naive oracle (n-th use of a name = n-th instance from the bottom) and never
//! hands out one field twice.
#![no_main]

use dkimpress::dkim::header::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (msg, list) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(m) = Message::parse(msg) else { return };
    check_layout(msg, &m);
    let names: Vec<String> = match list {
        Some(l) => String::from_utf8_lossy(l).split(':').map(str::to_string).collect(),
        // Without a list: every field name once, then all of them again (oversigning).
        None => {
            let mut v: Vec<String> = m.fields.iter().map(|f| String::from_utf8_lossy(f.name).into_owned()).collect();
            v.extend(v.clone());
            v.push("From".into());
            v
        }
    };
    check_select(&m, &names);
});

fn check_layout(msg: &[u8], m: &Message) {
    let mut at = 0;
    for f in &m.fields {
        assert_eq!(f.offset, at, "fields do not tile the header block");
        assert_eq!(&msg[f.offset..f.offset + f.raw.len()], f.raw);
        assert!(!f.name.is_empty() && f.name.iter().all(|b| (33..=126).contains(b)), "bad name {:?}", f.name);
        assert!(f.raw.starts_with(f.name));
        let after = &f.raw[f.name.len()..];
        let ws = after.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        assert_eq!(after.get(ws), Some(&b':'), "no colon after the name");
        // Every line after the first is a continuation.
        let mut lines = f.raw.split_inclusive(|&b| b == b'\n');
        lines.next();
        for l in lines {
            assert!(l[0] == b' ' || l[0] == b'\t', "a field line that is not a continuation: {l:?}");
        }
        // value() is a suffix of raw (minus the line end), starting after the colon.
        let v = f.value();
        let colon = f.name.len() + ws + 1;
        assert!(f.raw[colon..].starts_with(v));
        at += f.raw.len();
    }
    // After the fields: the empty line, then the body; or the end of the input.
    let rest = &msg[at..];
    if m.body_offset == msg.len() && !(rest == b"\n" || rest == b"\r\n") {
        assert!(rest.is_empty(), "bytes between the fields and the end: {rest:?}");
    } else {
        assert!(rest.starts_with(b"\n") || rest.starts_with(b"\r\n"));
        let sep = if rest.starts_with(b"\n") { 1 } else { 2 };
        assert_eq!(m.body_offset, at + sep);
    }
    assert_eq!(m.body, &msg[m.body_offset..]);
}

fn check_select(m: &Message, names: &[String]) {
    let got = m.select(names);
    assert_eq!(got.len(), names.len());
    let mut uses: Vec<(String, usize)> = vec![];
    let mut taken = vec![];
    for (name, g) in names.iter().zip(&got) {
        let lower = name.to_ascii_lowercase();
        let n = match uses.iter_mut().find(|(u, _)| *u == lower) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                uses.push((lower, 1));
                1
            }
        };
        let want = m.fields.iter().rev().filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes())).nth(n - 1);
        assert_eq!(g.map(|f| f.offset), want.map(|f| f.offset), "select({name:?}) use {n}");
        if let Some(f) = g {
            assert!(!taken.contains(&f.offset), "field at {} selected twice", f.offset);
            taken.push(f.offset);
        }
    }
}
