//! Verification of whole messages (`verify::verify_slice`) with keys from memory, and the
//! Authentication-Results field built from the verdicts.
//!
//! Keys: `test` (RSA-2048) and `test-ed` (Ed25519) of example.com, read with the zone parser
//! from testdata/keys; every other (selector, domain) is "key not found". Seeds are messages
//! signed with those keys, so mutations reach the hashing and signature checks.
//!
//! Properties: no panic; one verdict per DKIM-Signature field; a pass only for d=example.com
//! with one of its two selectors; the same verdicts on a second run (no hidden state, such as
//! the per-thread canonicalization buffers, leaks between runs); `overall` is pass exactly
//! when some verdict is; the Authentication-Results field is one field: every line after the
//! first is a continuation, and no CR or LF appears except in the line ends.
#![no_main]

use dkimpress::lookup::ZoneKeys;
use dkimpress::dkim::header::Message;
use dkimpress::dkim::verify::{authentication_results, fetch_key, overall, verify_slice, DkimResult, KeyResult, Policy};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn zone() -> &'static ZoneKeys {
    static ZONE: OnceLock<ZoneKeys> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut z = ZoneKeys::default();
        z.add_zone(include_str!("../../testdata/keys/test.txt"), "test.txt").unwrap();
        z.add_zone(include_str!("../../testdata/keys/test-ed.txt"), "test-ed.txt").unwrap();
        assert_eq!(z.len(), 2);
        z
    })
}

fn keys(selector: &str, domain: &str) -> KeyResult {
    fetch_key(zone(), selector, domain)
}

/// The time of the seed signatures (`dkimpress sign --timestamp 1700000000`), a little later.
const NOW: u64 = 1_700_000_100;

fuzz_target!(|data: &[u8]| {
    let policy = Policy::default();
    let Ok(verdicts) = verify_slice(data, &keys, NOW, &policy) else { return };
    let parsed = Message::parse(data).expect("verify_slice parsed it");
    let sigs = parsed.fields.iter().filter(|f| f.is("dkim-signature")).count();
    assert_eq!(verdicts.len(), sigs, "one verdict per DKIM-Signature field");
    for v in &verdicts {
        if v.result == DkimResult::Pass {
            assert_eq!(v.domain, "example.com", "pass with a key we do not have");
            assert!(v.selector == "test" || v.selector == "test-ed", "pass with selector {:?}", v.selector);
        }
    }
    let again = verify_slice(data, &keys, NOW, &policy).expect("parsed once");
    assert_eq!(verdicts, again, "a second run differs");
    assert_eq!(overall(&verdicts) == DkimResult::Pass, verdicts.iter().any(|v| v.result == DkimResult::Pass));
    for le in ["\r\n", "\n"] {
        let ar = authentication_results("mx.example.net", &verdicts, le);
        let body = ar.strip_suffix(le).expect("the field ends with its line end");
        for (i, line) in body.split(le).enumerate() {
            assert!(!line.contains(['\r', '\n']), "stray line end in Authentication-Results: {ar:?}");
            if i > 0 {
                assert!(line.starts_with('\t'), "Authentication-Results line {i} is not a continuation: {ar:?}");
            }
        }
    }
});
