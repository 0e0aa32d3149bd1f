//! Body and header canonicalization against the byte-at-a-time oracle (`canon::naive`, behind
//! the `fuzzing` feature), and the line-end kernels they are built on (`crlf`).
//!
//! The first octet is a repeat count: from 0xc0 up, the rest is repeated until it is at least
//! (octet & 63) KiB long, so that inputs cross the 4 KiB and 16 KiB chunk boundaries of the
//! fast paths; below, the rest is used as it is. Properties, for simple and relaxed:
//! - body: fast == naive, for the input as is and with every bare LF turned into CRLF (the
//!   two must also give the same canonical form: a bare LF is a line end, as CRLF is);
//!   a counting sink counts what was written;
//! - header: fast == naive on a field built from the input (line ends followed by a space, so
//!   they are folds), terminated and unterminated;
//! - crlf kernels (the dispatched one, AVX2 when present, and the portable one) == naive,
//!   at every `before` octet that matters, the relaxed expansion included.
#![no_main]

use dkimpress::dkim::canon::{self, naive, Canon, CountingSink};
use dkimpress::arch::crlf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&rep, data)) = data.split_first() else { return };
    let mut input = data.to_vec();
    // A quarter of the inputs are repeated (the oracle is slow on long ones).
    let want = if rep >= 0xc0 { (rep as usize & 63) * 1024 } else { 0 };
    if !data.is_empty() {
        while input.len() < want {
            input.extend_from_slice(data);
        }
    }
    body(&input);
    header(&input[..input.len().min(4096)]);
    kernels(&input[..input.len().min(4096)]);
});

fn fast_body(c: Canon, b: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    canon::canonicalize_body(c, b, &mut v);
    v
}

fn body(input: &[u8]) {
    let wire = crlf::naive::to_crlf(input, 0);
    for c in [Canon::Simple, Canon::Relaxed] {
        let fast = fast_body(c, input);
        assert_eq!(fast, naive::body(c, input), "{c:?} body differs from the oracle");
        let fast_wire = fast_body(c, &wire);
        assert_eq!(fast_wire, naive::body(c, &wire), "{c:?} body (CRLF) differs from the oracle");
        assert_eq!(fast, fast_wire, "{c:?}: LF and CRLF storage canonicalize differently");
        let mut sink = vec![];
        let mut counting = CountingSink::new(&mut sink);
        canon::canonicalize_body(c, input, &mut counting);
        assert_eq!(counting.count, fast.len() as u64);
        assert_eq!(sink, fast);
    }
}

fn header(value: &[u8]) {
    // A realistic field: name, colon, a value whose inner line ends are folds.
    let mut raw = b"X-Test :".to_vec();
    for (i, &b) in value.iter().enumerate() {
        raw.push(b);
        if b == b'\n' && i + 1 < value.len() {
            raw.push(b' ');
        }
    }
    for c in [Canon::Simple, Canon::Relaxed] {
        let want = naive::header(c, &raw);
        let mut got = vec![];
        canon::canonicalize_header(c, &raw, &mut got);
        assert_eq!(got, want, "{c:?} header differs from the oracle");
        let mut un = vec![];
        canon::canonicalize_header_unterminated(c, &raw, &mut un);
        assert_eq!(un, want[..want.len() - 2], "{c:?} unterminated header");
    }
}

fn naive_relaxed_event(b: &[u8], from: usize, bare: bool) -> Option<usize> {
    (from..b.len()).find(|&i| {
        let next = b.get(i + 1).copied();
        b[i] == b'\t' || (b[i] == b' ' && matches!(next, None | Some(b' ' | b'\r' | b'\n'))) || (bare && b[i] == b'\n')
    })
}

fn kernels(input: &[u8]) {
    // The whole input, then short pieces at every offset within a vector (alignment), then
    // the second half.
    let pieces = std::iter::once((0, input.len()))
        .chain((1..input.len().min(33)).map(|off| (off, input.len().min(off + 200))))
        .chain([(input.len() / 2, input.len())]);
    let mut out = vec![0u8; crlf::expanded_capacity(input.len())];
    for (off, end) in pieces {
        let b = &input[off..end];
        for before in [0u8, b'\r', b'\n', b' ', b'\t'] {
            let want_bare =
                b.iter().enumerate().any(|(i, &c)| c == b'\n' && (if i == 0 { before } else { b[i - 1] }) != b'\r');
            assert_eq!(crlf::has_bare_lf(b, before), want_bare, "has_bare_lf at {off}, before {before}");
            assert_eq!(crlf::portable::has_bare_lf(b, before), want_bare, "portable has_bare_lf");
            let want = crlf::naive::to_crlf(b, before);
            let n = crlf::to_crlf(b, before, &mut out);
            assert_eq!(&out[..n], &want[..], "to_crlf at {off}, before {before}");
            let n = crlf::portable::to_crlf(b, before, &mut out);
            assert_eq!(&out[..n], &want[..], "portable to_crlf");
            let (want_used, want) = crlf::naive::to_crlf_relaxed(b, before);
            let (used, n) = crlf::to_crlf_relaxed(b, before, &mut out);
            assert_eq!((used, &out[..n]), (want_used, &want[..]), "to_crlf_relaxed at {off}, before {before}");
            let (used, n) = crlf::portable::to_crlf_relaxed(b, before, &mut out);
            assert_eq!((used, &out[..n]), (want_used, &want[..]), "portable to_crlf_relaxed");
        }
        for bare in [false, true] {
            for from in [0, 1, 7, b.len() / 3] {
                if from > b.len() {
                    continue;
                }
                let want = naive_relaxed_event(b, from, bare);
                assert_eq!(crlf::relaxed_event(b, from, bare), want, "relaxed_event at {off}+{from}");
                assert_eq!(crlf::portable::relaxed_event(b, from, bare), want, "portable relaxed_event");
            }
        }
    }
}
