//! What signing one small message costs beyond its limit, without the pipeline around it.
//!
//! `dkimpress bench` compares whole runs (framing, the worker pool, the ordered results)
//! with the Ed25519 limit: one signature plus SHA-256 of the message's octets. This bench takes
//! the pipeline away: on one thread it signs the messages of a generated 4 KB corpus in groups
//! of `pipeline::GROUP` with `pipeline::sign_stored_group` (what each worker does after
//! framing: bodies hashed two at a time, or sixteen at a time in the AVX-512 lanes where the
//! CPU prefers them) and, in the same round, runs the limit over the same messages. The rounds alternate the two, so the
//! machine's drift falls on both; it prints each side's median cost a message and the median
//! of the rounds' own ratios. Between two builds, this ratio moves with per-message work that
//! a whole run hides in its noise (benches/REPORT.md, 2026-12-04, session 16). The corpus is
//! split before the rounds, so the messages come from memory, where the pipeline's workers
//! find each one in the cache right after framing it: read its profile with that in mind.
//!
//! Run: `cargo bench --bench per_message` (`-- ROUNDS` for more than 21 rounds).

use dkimpress::dkim::key::KeyType;
use dkimpress::dkim::sign::SignerBuilder;
use dkimpress::pipeline::mbox::{self, MboxFormat};
use dkimpress::pipeline::{self, SignPolicy};
use dkimpress::select::KeySource;
use sha2::Digest as _;
use std::sync::Arc;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(21).max(1);
    let data = dkimpress::corpus::generate(3000, "4k".parse().expect("a size"), 1, false);
    let entries: Vec<mbox::MboxEntry> = mbox::Splitter::new(&data, MboxFormat::Mboxrd).collect();
    let stored: Vec<mbox::Stored> =
        entries.iter().map(|e| mbox::Stored { bytes: &data[e.message.clone()], quotes: &e.quotes }).collect();
    let key = Arc::new(dkimpress::dkim::genkey::generate(KeyType::Ed25519, 0).expect("a key").key);
    let signer = SignerBuilder::new(key.clone(), "example.com", "bench").build().expect("a signer");
    let policy = SignPolicy {
        keys: KeySource::Fixed(vec![signer]),
        sender: None,
        strip_own: false,
        now: 1_800_000_000,
        max_message: pipeline::DEFAULT_MAX_MESSAGE,
        dkim: true,
        arc: None,
    };
    // Every message signs (a benchmark of refusals measures nothing).
    for group in stored.chunks(pipeline::GROUP) {
        for r in pipeline::sign_stored_group(&policy, group) {
            assert!(r.expect("the generated messages sign").0.starts_with(b"DKIM-Signature:"));
        }
    }
    let n = (stored.len() / 2 * 2) as f64;
    let (mut limit, mut signing, mut ratio) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t = Instant::now();
        for s in &stored[..n as usize] {
            std::hint::black_box(key.sign(b"header data of a typical size, about three hundred bytes").ok());
            std::hint::black_box(sha2::Sha256::digest(s.bytes));
        }
        let l = t.elapsed().as_secs_f64() / n;
        let t = Instant::now();
        for group in stored[..n as usize].chunks(pipeline::GROUP) {
            std::hint::black_box(pipeline::sign_stored_group(&policy, group).iter().all(|r| r.is_ok()));
        }
        let e = t.elapsed().as_secs_f64() / n;
        limit.push(l * 1e6);
        signing.push(e * 1e6);
        ratio.push(l / e);
    }
    println!(
        "4 KB Ed25519, one thread, {rounds} rounds: limit {:.2} us a message, sign_stored_group {:.2} us; \
         limit / signing, median of the rounds: {:.3}",
        median(&mut limit),
        median(&mut signing),
        median(&mut ratio)
    );
}
