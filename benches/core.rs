//! Criterion benches of the signing core: body canonicalization fused with SHA-256 against raw
//! SHA-256 of the same bytes, signing per key type, and whole-message signing. Each bench
//! checks its result once before timing (a bench of wrong output measures nothing).
//!
//! Run: `cargo bench --bench core`. Ratios matter more than absolute numbers on a shared
//! machine: compare `body/relaxed` with `body/sha256-raw` from the same run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dkimpress::dkim::canon::{canonicalize_body, Canon};
use dkimpress::dkim::key::SigningKey;
use dkimpress::dkim::sign::{sign_slice, SignerBuilder};
use sha2::Digest as _;
use std::sync::Arc;

/// A text body of about `size` bytes: mail-like lines of single-spaced words with a blank
/// line now and then (typical text); with `hard`, also a tab every 17 words and trailing
/// whitespace on every fifth line, which relaxed canonicalization must rewrite.
fn text_body(size: usize, crlf: bool) -> Vec<u8> {
    text_body_kind(size, crlf, true)
}

fn text_body_kind(size: usize, crlf: bool, hard: bool) -> Vec<u8> {
    let words = ["the", "quarterly", "report", "is", "attached", "please", "review", "numbers", "by", "friday"];
    let mut out = Vec::with_capacity(size + 100);
    let mut i = 0usize;
    while out.len() < size {
        let mut line = String::new();
        while line.len() < 66 {
            line.push_str(words[i % words.len()]);
            line.push(if hard && i.is_multiple_of(17) { '\t' } else { ' ' });
            i += 1;
        }
        if !hard || !i.is_multiple_of(5) {
            line.pop();
        }
        if !hard && i.is_multiple_of(13) {
            line.push_str(if crlf { "\r\n" } else { "\n" });
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    }
    out
}

fn key(name: &str) -> Arc<SigningKey> {
    let path = format!("{}/testdata/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    Arc::new(SigningKey::from_bytes(&std::fs::read(path).unwrap(), name).unwrap())
}

fn bench_body(c: &mut Criterion) {
    let mut g = c.benchmark_group("body");
    for (label, size) in [("4k", 4096), ("1m", 1 << 20)] {
        let body = text_body(size, true);
        // The check: canonicalized output hashed equals the naive expectation for CRLF text
        // with no trailing whitespace lines (simple is the identity here).
        let mut out = vec![];
        canonicalize_body(Canon::Simple, &body, &mut out);
        assert_eq!(out, body);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("sha256-raw", label), &body, |b, body| {
            b.iter(|| sha2::Sha256::digest(body))
        });
        let typical = text_body_kind(size, true, false);
        let typical_lf = text_body_kind(size, false, false);
        for (name, input) in
            [("relaxed-typical", &typical), ("relaxed-typical-lf", &typical_lf), ("simple-typical-lf", &typical_lf)]
        {
            let c = if name.starts_with("simple") { Canon::Simple } else { Canon::Relaxed };
            g.bench_with_input(BenchmarkId::new(name, label), input, |b, body| {
                b.iter(|| {
                    let mut h = sha2::Sha256::new();
                    canonicalize_body(c, body, &mut h);
                    h.finalize()
                })
            });
        }
        for canon in [Canon::Simple, Canon::Relaxed] {
            g.bench_with_input(BenchmarkId::new(canon.as_str(), label), &body, |b, body| {
                b.iter(|| {
                    let mut h = sha2::Sha256::new();
                    canonicalize_body(canon, body, &mut h);
                    h.finalize()
                })
            });
        }
    }
    g.finish();
}

fn bench_sign(c: &mut Criterion) {
    let mut g = c.benchmark_group("sign");
    let rsa4096 = Arc::new(dkimpress::dkim::genkey::generate(dkimpress::dkim::key::KeyType::Rsa, 4096).unwrap().key);
    for k in [key("test.private"), rsa4096, key("test-ed.private")] {
        assert!(!k.sign(b"check").unwrap().is_empty());
        g.bench_function(format!("{:?}", k), |b| b.iter(|| k.sign(b"header data of a typical size").unwrap()));
    }
    g.finish();
}

fn bench_split_and_headers(c: &mut Criterion) {
    use dkimpress::pipeline::mbox::{MboxFormat, Splitter};
    let archive = dkimpress::corpus::generate(2000, dkimpress::corpus::SizeDist::Fixed(4096), 1, false);
    assert_eq!(Splitter::new(&archive, MboxFormat::Mboxrd).count(), 2000);
    let mut g = c.benchmark_group("split");
    g.throughput(Throughput::Bytes(archive.len() as u64));
    g.bench_function("mboxrd-2000x4k", |b| b.iter(|| Splitter::new(&archive, MboxFormat::Mboxrd).count()));
    g.finish();

    // Header hash: parse the header block, canonicalize the signed fields, SHA-256.
    let first = Splitter::new(&archive, MboxFormat::Mboxrd).next().unwrap();
    let msg = &archive[first.message];
    let parsed = dkimpress::dkim::header::Message::parse(msg).unwrap();
    assert!(parsed.fields.len() >= 8);
    let header_bytes: usize = parsed.fields.iter().map(|f| f.raw.len()).sum();
    let mut g = c.benchmark_group("header-hash");
    g.throughput(Throughput::Bytes(header_bytes as u64));
    for canon in [Canon::Simple, Canon::Relaxed] {
        g.bench_function(canon.as_str(), |b| {
            b.iter(|| {
                let m = dkimpress::dkim::header::Message::parse(msg).unwrap();
                let mut h = sha2::Sha256::new();
                for f in &m.fields {
                    dkimpress::dkim::canon::canonicalize_header(canon, f.raw, &mut h);
                }
                h.finalize()
            })
        });
    }
    g.finish();
}

fn bench_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("message-4k");
    let mut msg = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: report\r\n\
Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
        .to_vec();
    msg.extend(text_body(4000, true));
    g.throughput(Throughput::Elements(1));
    for (name, sel) in [("test.private", "test"), ("test-ed.private", "test-ed")] {
        let s = SignerBuilder::new(key(name), "example.com", sel).build().unwrap();
        let signers = [s];
        let hdr = sign_slice(&signers, &msg, 1_700_000_000).unwrap();
        assert!(hdr.starts_with(b"DKIM-Signature: v=1;"));
        g.bench_function(sel, |b| b.iter(|| sign_slice(&signers, &msg, 1_700_000_000).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench_body, bench_sign, bench_split_and_headers, bench_message);
criterion_main!(benches);
