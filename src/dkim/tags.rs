//! Tag lists (RFC 6376 §3.2) and the name rules of `d=`, `s=` and `i=`: the one scanner that
//! signing, verification, key records, `--strip-own` and `testkey` all read tags with.
//!
//! `tag-list = tag-spec *( ";" tag-spec ) [ ";" ]`, `tag-spec = [FWS] tag-name [FWS] "=" [FWS]
//! tag-value [FWS]`. Whitespace inside a value (folding) is not part of it, except where the
//! caller needs the raw bytes (removing `b=`'s value for the header hash, §3.7).

use std::borrow::Cow;
use std::ops::Range;

/// One tag-spec of a list, as positions in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The tag name, without whitespace (an empty or odd name is the caller's to judge).
    pub name: Range<usize>,
    /// The raw value: from after the `=` to before the `;` (or the end), whitespace included.
    pub value: Range<usize>,
}

/// The tag-specs of `list` in order, skipping empty ones (`;;`, a trailing `;`). A spec
/// without `=` is `Err(range of the spec)`.
pub fn scan(list: &[u8]) -> impl Iterator<Item = Result<Spec, Range<usize>>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || loop {
        if start > list.len() {
            return None;
        }
        let end = memchr::memchr(b';', &list[start..]).map_or(list.len(), |e| start + e);
        let spec = start..end;
        start = end + 1;
        if list[spec.clone()].iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Some(eq) = memchr::memchr(b'=', &list[spec.clone()]).map(|e| spec.start + e) else {
            return Some(Err(spec));
        };
        let mut name = spec.start..eq;
        while name.start < name.end && list[name.start].is_ascii_whitespace() {
            name.start += 1;
        }
        while name.end > name.start && list[name.end - 1].is_ascii_whitespace() {
            name.end -= 1;
        }
        return Some(Ok(Spec { name, value: eq + 1..spec.end }));
    })
}

/// `v` without whitespace (folding is not part of a tag value): `v` itself when it has none,
/// as most values of a signature or a key record do.
fn squeeze(v: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = v.iter().position(u8::is_ascii_whitespace) else {
        return Cow::Borrowed(v);
    };
    // Sized once (a collected `b=` value, 344 octets for RSA-2048, grew through six
    // reallocations), and copied a run at a time between the folds.
    let mut out = Vec::with_capacity(v.len());
    out.extend_from_slice(&v[..first]);
    let mut rest = &v[first + 1..];
    while let Some(ws) = rest.iter().position(u8::is_ascii_whitespace) {
        out.extend_from_slice(&rest[..ws]);
        rest = &rest[ws + 1..];
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// One parsed tag: its name and its value without whitespace, borrowed from the list where the
/// value has no folding in it.
pub type Tag<'a> = (&'a str, Cow<'a, [u8]>);

/// A parsed tag-list, in order.
pub type Tags<'a> = Vec<Tag<'a>>;

/// Parses a tag-list into (name, value) pairs, whitespace removed from values. A spec without
/// `=`, a name that is not `ALPHA *(ALNUM / "_")`-ish, or a duplicate tag is an error
/// (RFC 6376 §3.2: "Tags with duplicate names MUST NOT occur").
pub fn parse(list: &[u8]) -> Result<Tags<'_>, String> {
    // A DKIM-Signature has about a dozen tags. Past SCAN_NAMES, duplicates are found with a
    // set: a hostile field of 40,000 tags cost 3 s a parse when each name was compared with
    // every earlier one.
    const SCAN_NAMES: usize = 32;
    let mut tags: Tags = Vec::with_capacity(16);
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for spec in scan(list) {
        let spec = spec.map_err(|_| "tag without '='".to_string())?;
        let raw = &list[spec.name];
        // ASCII letters, digits and '_' only, so the name is UTF-8 as it stands.
        let name = match std::str::from_utf8(raw) {
            Ok(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => n,
            _ => return Err(format!("bad tag name {:?}", String::from_utf8_lossy(raw))),
        };
        let duplicate = if tags.len() < SCAN_NAMES {
            tags.iter().any(|(n, _)| *n == name)
        } else {
            if seen.is_empty() {
                seen.extend(tags.iter().map(|(n, _)| *n));
            }
            !seen.insert(name)
        };
        if duplicate {
            return Err(format!("duplicate tag {name}="));
        }
        tags.push((name, squeeze(&list[spec.value])));
    }
    Ok(tags)
}

/// The value of the first tag `name`, whitespace removed; lenient (a malformed list still
/// gives the tags it has), for reading our own or others' signatures without judging them.
pub fn value(list: &[u8], name: &str) -> Option<String> {
    scan(list)
        .flatten()
        .find(|s| &list[s.name.clone()] == name.as_bytes())
        .and_then(|s| String::from_utf8(squeeze(&list[s.value]).into_owned()).ok())
}

/// The header field `raw` (`Name: tag-list`) with the value of its first tag `name` removed,
/// the rest byte for byte: a DKIM-Signature as it enters its own header hash (`b=`, RFC 6376
/// §3.7).
pub fn without_value(raw: &[u8], name: &str) -> Vec<u8> {
    let colon = memchr::memchr(b':', raw).map_or(0, |c| c + 1);
    let list = &raw[colon..];
    match scan(list).flatten().find(|s| &list[s.name.clone()] == name.as_bytes()) {
        Some(s) => {
            let mut out = raw[..colon + s.value.start].to_vec();
            out.extend_from_slice(&raw[colon + s.value.end..]);
            out
        }
        None => raw.to_vec(),
    }
}

/// Whether `s` can be a `d=` domain or an `s=` selector, and so part of the DNS name
/// `selector._domainkey.domain`: dot-separated labels of ASCII letters, digits, `-` and `_`
/// (RFC 6376 §3.5, `domain-name` and `selector`; underscores occur in real selectors), each
/// 1 to 63 octets, 253 in all. One rule for signing and verifying.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `name` (a domain or a selector) with its U-labels turned into A-labels (IDNA through UTS #46,
/// the `idna` crate), so `bücher.example` becomes `xn--bcher-kva.example`; an ASCII name is
/// returned as it is, and a name that is not a valid IDN too (the name rules then refuse it).
///
/// RFC 8616 §5 (the DKIM section; §4 is SPF) lets the `d=`, `i=` and `s=` of a signature in an
/// internationalized header (RFC 6532) be U-labels, A-labels staying valid, and the hash covers
/// the field as it is written. Keys are published in the DNS, where names are A-labels only
/// (RFC 8616 §3), so every name we look up or compare is taken in its A-label form, and what we
/// sign with is written as A-labels: valid in every message, EAI or not.
pub fn to_a_labels(name: &str) -> std::borrow::Cow<'_, str> {
    if name.is_ascii() {
        return std::borrow::Cow::Borrowed(name);
    }
    match idna::domain_to_ascii(name) {
        Ok(a) => std::borrow::Cow::Owned(a),
        Err(_) => std::borrow::Cow::Borrowed(name),
    }
}

/// An identity `local@domain` (`i=`, an author address) with its domain in A-labels (see
/// [`to_a_labels`]); the local part is kept as it is.
pub fn identity_to_a_labels(i: &str) -> std::borrow::Cow<'_, str> {
    match i.rsplit_once('@') {
        Some((local, d)) if !d.is_ascii() => std::borrow::Cow::Owned(format!("{local}@{}", to_a_labels(d))),
        _ => std::borrow::Cow::Borrowed(i),
    }
}

/// Whether the identity `i` (`local@domain`, local part optional) is in `domain` or one of
/// its subdomains, as `i=` must be (RFC 6376 §3.5). `domain` is lower case, without a final dot.
pub fn identity_in_domain(i: &str, domain: &str) -> bool {
    match i.rsplit_once('@') {
        Some((_, d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == domain || d.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idn_names_become_a_labels() {
        for (name, want) in [
            ("bücher.example", "xn--bcher-kva.example"),
            ("Bücher.Example", "xn--bcher-kva.example"),
            ("mail.xn--bcher-kva.example", "mail.xn--bcher-kva.example"),
            ("example.com", "example.com"),
            ("sélecteur", "xn--slecteur-b1a"),
        ] {
            assert_eq!(to_a_labels(name), want, "{name}");
        }
        // What IDNA lets through, the name rules still judge.
        assert!(!is_dns_name(&to_a_labels("bad\u{0}.ü")));
        assert_eq!(identity_to_a_labels("jörg@bücher.example"), "jörg@xn--bcher-kva.example");
        assert_eq!(identity_to_a_labels("@example.com"), "@example.com");
    }

    #[test]
    fn parse_table() {
        let t = parse(b" v = 1 ; a=rsa-sha256;\r\n\tb=ab\r\n cd; ").unwrap();
        let plain: Vec<(&str, &[u8])> = t.iter().map(|(n, v)| (*n, &**v)).collect();
        assert_eq!(plain, [("v", &b"1"[..]), ("a", b"rsa-sha256"), ("b", b"abcd")]);
        // A value without whitespace is the list's own octets; a folded one is a copy.
        let borrowed: Vec<bool> = t.iter().map(|(_, v)| matches!(v, Cow::Borrowed(_))).collect();
        assert_eq!(borrowed, [false, true, false]);
        assert!(parse(b"v=1; v=1").unwrap_err().contains("duplicate"));
        assert!(parse(b"\xff=1").unwrap_err().contains("bad tag name"));
        // Many tags (found through a set past the first 32): duplicates are still found, the
        // first one named.
        let many: String = (0..40_000).map(|i| format!("t{i}=x;")).collect();
        assert_eq!(parse(many.as_bytes()).unwrap().len(), 40_000);
        assert_eq!(parse(format!("{many}t5=y;t7=y").as_bytes()).unwrap_err(), "duplicate tag t5=");
        assert_eq!(parse(format!("a=1;b=2;{many}a=3").as_bytes()).unwrap_err(), "duplicate tag a=");
        assert!(parse(b"v=1; novalue").is_err());
        assert!(parse(b"v=1; x-y=2").unwrap_err().contains("bad tag name"));
        assert_eq!(parse(b"").unwrap(), []);
        assert_eq!(parse(b";;").unwrap(), []);
    }

    #[test]
    fn values() {
        for (list, tag, want) in [
            (&b"v=1; a=rsa-sha256; d=Example.COM; s=x"[..], "d", Some("Example.COM")),
            (b"v=1;\r\n\td = example.org ;", "d", Some("example.org")),
            (b"v=1; dd=x", "d", None),
            (b"garbage; d=x.example", "d", Some("x.example")),
        ] {
            assert_eq!(value(list, tag).as_deref(), want);
        }
    }

    #[test]
    fn b_value_removed() {
        for (raw, want) in [
            (&b"DKIM-Signature: v=1; bh=abc; b=xyz\r\n"[..], &b"DKIM-Signature: v=1; bh=abc; b="[..]),
            (b"DKIM-Signature: v=1; b = x y\r\n z ; d=e\r\n", b"DKIM-Signature: v=1; b =; d=e\r\n"),
            (b"DKIM-Signature: bh=1; b=2", b"DKIM-Signature: bh=1; b="),
            (b"DKIM-Signature: v=1; bh=1", b"DKIM-Signature: v=1; bh=1"),
        ] {
            assert_eq!(without_value(raw, "b"), want, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn names_and_identities() {
        for (s, ok) in
            [("example.com", true), ("s_1-a.b", true), ("", false), ("a..b", false), ("a b", false), ("ä.de", false)]
        {
            assert_eq!(is_dns_name(s), ok, "{s}");
        }
        assert!(is_dns_name(&format!("{}.com", "a".repeat(63))));
        assert!(!is_dns_name(&format!("{}.com", "a".repeat(64))));
        for (i, d, ok) in [
            ("u@example.com", "example.com", true),
            ("@mail.Example.com.", "example.com", true),
            ("u@badexample.com", "example.com", false),
            ("u@example.com.evil", "example.com", false),
            ("nodomain", "example.com", false),
        ] {
            assert_eq!(identity_in_domain(i, d), ok, "{i} {d}");
        }
    }
}
