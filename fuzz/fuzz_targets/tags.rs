//! DKIM tag-lists (`dkim::tags::parse`, RFC 6376 §3.2), key records
//! (`verify::parse_key_record`, §3.6.1) and `verify::rsa_modulus`.
//!
//! Properties: no panic; a tag-list that parses has unique, non-empty names of letters, digits
//! and `_`, and values with no whitespace and no `;`; written back as `name=value;` it parses
//! to the same list. A key record that parses has a tag-list with a non-empty `p=`, and `v=`
//! (if any) is `DKIM1` and comes first.
#![no_main]

use dkimpress::dkim::tags::parse as parse_tags;
use dkimpress::dkim::verify::{parse_key_record, rsa_modulus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tags) = parse_tags(data) {
        let mut written = Vec::new();
        for (i, (name, value)) in tags.iter().enumerate() {
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "name {name:?}");
            assert!(!tags[..i].iter().any(|(n, _)| n == name), "duplicate {name}");
            assert!(!value.iter().any(|b| b.is_ascii_whitespace() || *b == b';'), "value of {name}: {value:?}");
            written.extend_from_slice(name.as_bytes());
            written.push(b'=');
            written.extend_from_slice(value);
            written.push(b';');
        }
        assert_eq!(parse_tags(&written).as_ref(), Ok(&tags), "written back: {:?}", String::from_utf8_lossy(&written));
    }
    if let Ok(key) = parse_key_record(data) {
        let tags = parse_tags(data).expect("a key record that parses is a tag-list");
        let p = tags.iter().find(|(n, _)| *n == "p").expect("a key record that parses has p=");
        assert!(!p.1.is_empty(), "revoked key accepted");
        if let Some(i) = tags.iter().position(|(n, _)| *n == "v") {
            assert_eq!((i, &*tags[i].1), (0, &b"DKIM1"[..]));
        }
        let _ = key.bits;
    }
    let _ = rsa_modulus(data);
});
