//! dkimpress against Stalwart's mail-auth 0.13.3 (aws-lc-rs backend) on the same messages:
//! signing 4 KB messages (RSA-2048 and Ed25519) on one thread and on all threads, and relaxed
//! body hashing. Targets (issue 7): at least 1.2x its signing rate and 2x its relaxed body
//! hashing rate. Both sides' signatures are checked with our verifier before timing.
//!
//! Run: `cargo bench --bench vs_mail_auth`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dkimpress::dkim::canon::{canonicalize_body, Canon};
use dkimpress::dkim::key::SigningKey;
use dkimpress::dkim::sign::{sign_slice, SignerBuilder};
use mail_auth::common::crypto::{Ed25519Key, HashAlgorithm, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rayon::prelude::*;
use std::sync::Arc;

/// A signing function returning the DKIM-Signature field.
type SignFn = Box<dyn Fn(&[u8]) -> Vec<u8> + Sync>;

const HEADERS: [&str; 5] = ["From", "To", "Subject", "Date", "Message-ID"];

fn messages(n: usize) -> Vec<Vec<u8>> {
    let archive = dkimpress::corpus::generate(n, dkimpress::corpus::SizeDist::Fixed(4096), 3, false);
    dkimpress::pipeline::mbox::Splitter::new(&archive, dkimpress::pipeline::mbox::MboxFormat::Mboxrd)
        .map(|e| {
            let mut scratch = vec![];
            let m = dkimpress::pipeline::mbox::unquote(
                dkimpress::pipeline::mbox::MboxFormat::Mboxrd,
                &archive[e.message],
                &mut scratch,
            );
            // The wire form: CRLF.
            String::from_utf8_lossy(m).replace('\n', "\r\n").into_bytes()
        })
        .collect()
}

fn pem(name: &str) -> String {
    std::fs::read_to_string(format!("{}/testdata/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

/// Our verifier on a signed message (key from the shipped record).
fn check(signed: &[u8], record: &str) {
    let public = Arc::new(dkimpress::dkim::verify::parse_key_record(record.as_bytes()).unwrap());
    let keys = |_: &str, _: &str| -> dkimpress::dkim::verify::KeyResult { Ok(public.clone()) };
    let v = dkimpress::dkim::verify::verify_slice(signed, &keys, 1_800_000_000, &Default::default()).unwrap();
    assert_eq!(dkimpress::dkim::verify::overall(&v), dkimpress::dkim::verify::DkimResult::Pass, "{v:?}");
}

fn record(txt: &str) -> String {
    let t = std::fs::read_to_string(format!("{}/testdata/keys/{txt}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    t.split('"').skip(1).step_by(2).collect()
}

fn bench_sign(c: &mut Criterion) {
    let msgs = messages(256);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (label, ours_key, record_file) in
        [("rsa2048", "test.private", "test.txt"), ("ed25519", "test-ed.private", "test-ed.txt")]
    {
        let rec = record(record_file);
        let key = Arc::new(SigningKey::from_bytes(pem(ours_key).as_bytes(), ours_key).unwrap());
        let signers = [SignerBuilder::new(key, "example.com", if label == "rsa2048" { "test" } else { "test-ed" })
            .signed_headers(HEADERS)
            .oversigned_headers(Vec::<String>::new())
            .build()
            .unwrap()];
        let ours = |m: &[u8]| sign_slice(&signers, m, 1_700_000_000).unwrap();
        let sel = if label == "rsa2048" { "test" } else { "test-ed" };
        let theirs_sign: SignFn = if label == "rsa2048" {
            let k = RsaKey::<Sha256>::from_key_der(rustls_pki_types::PrivateKeyDer::Pkcs8(der(&pem(ours_key)).into()))
                .unwrap();
            let s = DkimSigner::from_key(k).domain("example.com").selector(sel).headers(HEADERS);
            Box::new(move |m: &[u8]| s.sign(m).unwrap().to_header().into_bytes())
        } else {
            let k = Ed25519Key::from_pkcs8_maybe_unchecked_der(&der(&pem(ours_key))).unwrap();
            let s = DkimSigner::from_key(k).domain("example.com").selector(sel).headers(HEADERS);
            Box::new(move |m: &[u8]| s.sign(m).unwrap().to_header().into_bytes())
        };
        // Both produce signatures our verifier accepts.
        for m in &msgs[..4] {
            check(&[ours(m), m.clone()].concat(), &rec);
            check(&[theirs_sign(m), m.clone()].concat(), &rec);
        }
        let mut g = c.benchmark_group(format!("sign-4k-{label}"));
        g.throughput(Throughput::Elements(msgs.len() as u64));
        g.bench_function("dkimpress/1-thread", |b| b.iter(|| msgs.iter().map(|m| ours(m).len()).sum::<usize>()));
        g.bench_function("mail-auth/1-thread", |b| b.iter(|| msgs.iter().map(|m| theirs_sign(m).len()).sum::<usize>()));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        g.bench_function(format!("dkimpress/{threads}-threads"), |b| {
            b.iter(|| pool.install(|| msgs.par_iter().map(|m| ours(m).len()).sum::<usize>()))
        });
        g.bench_function(format!("mail-auth/{threads}-threads"), |b| {
            b.iter(|| pool.install(|| msgs.par_iter().map(|m| theirs_sign(m).len()).sum::<usize>()))
        });
        g.finish();
    }
}

fn bench_body(c: &mut Criterion) {
    let msgs = messages(64);
    let bodies: Vec<&[u8]> = msgs
        .iter()
        .map(|m| {
            let p = dkimpress::dkim::header::Message::parse(m).unwrap().body_offset;
            &m[p..]
        })
        .collect();
    let total: usize = bodies.iter().map(|b| b.len()).sum();
    // Same body hash from both.
    for b in &bodies[..4] {
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        canonicalize_body(Canon::Relaxed, b, &mut h);
        let ours = sha2::Digest::finalize(h);
        let theirs = HashAlgorithm::Sha256.hash(Canonicalization::Relaxed.canonical_body(b, 0));
        assert_eq!(ours.as_slice(), theirs.as_ref());
    }
    let mut g = c.benchmark_group("relaxed-body-4k");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("dkimpress", |b| {
        b.iter(|| {
            for body in &bodies {
                let mut h = <sha2::Sha256 as sha2::Digest>::new();
                canonicalize_body(Canon::Relaxed, body, &mut h);
                std::hint::black_box(sha2::Digest::finalize(h));
            }
        })
    });
    g.bench_function("mail-auth", |b| {
        b.iter(|| {
            for body in &bodies {
                std::hint::black_box(HashAlgorithm::Sha256.hash(Canonicalization::Relaxed.canonical_body(body, 0)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_sign, bench_body);
criterion_main!(benches);
