//! `dkimpress bench`: throughput of each stage and of the whole pipeline, next to the limits
//! of the crypto backend on the same cores, measured in the same run.
//!
//! Owns the deterministic corpus generator (seeded; fixed or log-normal sizes, real-world
//! header blocks), the stage timers, and the report (text or JSON). Each measurement checks
//! its result (a benchmark of wrong output measures nothing).

use dkimpress::dkim::canon::{self, Canon};
use dkimpress::dkim::key::KeyType;
use dkimpress::dkim::sign::SignerBuilder;
use dkimpress::pipeline::mbox::{self, MboxFormat};
use dkimpress::pipeline::os::Mapped;
use dkimpress::pipeline::{self, BulkOptions};
use dkimpress::select::KeySource;
use sha2::Digest as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Threads used.
    pub threads: usize,
    /// Operations (messages, signatures) per second.
    pub per_second: f64,
    /// Bytes per second (0 where it means nothing).
    pub bytes_per_second: f64,
    /// The limit it is compared with (same unit as per_second or bytes_per_second), if any.
    pub limit: Option<f64>,
    /// per_second (or bytes) / limit.
    pub ratio: Option<f64>,
    /// CPU seconds per GB of input spent on the threads that see every message in turn (the
    /// splitter and the ordered writer): the serial part, which caps the rate on many cores at
    /// 1 GB / this (issue 14). Only for the end-to-end pipeline rows.
    pub serial_s_per_gb: Option<f64>,
}

impl Figure {
    /// The figure as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"name": self.name, "threads": self.threads, "per_second": self.per_second,
            "bytes_per_second": self.bytes_per_second, "limit": self.limit, "ratio": self.ratio,
            "serial_cpu_seconds_per_gb": self.serial_s_per_gb})
    }
}

/// Runs `f` repeatedly for at least `min` and returns (iterations, seconds).
fn timed(min: Duration, mut f: impl FnMut() -> u64) -> (u64, f64) {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < min || n == 0 {
        n += f();
    }
    (n, start.elapsed().as_secs_f64())
}

/// Runs `f` on `threads` threads for `min` each; returns total operations per second.
fn parallel(threads: usize, min: Duration, f: impl Fn() -> u64 + Sync) -> f64 {
    let total = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let t0 = Instant::now();
                let mut n = 0;
                while t0.elapsed() < min {
                    n += f();
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// SHA-256 of `b` fed a piece at a time, each piece after a prefetch of the input further on:
/// hashing at the rate memory allows when `b` is not in the cache (see `canon`'s `Staged`).
fn sha256_streaming(b: &[u8]) -> impl AsRef<[u8]> {
    let mut h = sha2::Sha256::new();
    dkimpress::arch::prefetch::in_prefetched_pieces(b, 0..b.len(), |p| h.update(p));
    h.finalize()
}

/// Benchmark settings.
pub struct BenchOptions {
    /// The archive to measure (generated or read).
    pub corpus: Vec<u8>,
    /// Thread counts for the end-to-end runs and limits.
    pub threads: Vec<usize>,
    /// Key types for signing and verifying.
    pub keys: Vec<KeyType>,
    /// Canonicalization of the end-to-end runs.
    pub canon: dkimpress::dkim::canon::Canonicalization,
    /// Minimum time per measurement.
    pub min: Duration,
    /// No progress lines on stderr.
    pub quiet: bool,
    /// One end-to-end signing row per framing (see [`pipeline::Framing`]).
    pub framings: Vec<pipeline::Framing>,
}

/// Runs every measurement and returns the figures, printing progress lines to stderr.
pub fn run(o: &BenchOptions) -> Result<Vec<Figure>, String> {
    let data = &o.corpus;
    mbox::check(data).map_err(|e| e.to_string())?;
    let entries: Vec<mbox::MboxEntry> = mbox::Splitter::new(data, MboxFormat::Mboxrd).collect();
    let count = entries.len();
    if count == 0 {
        return Err("the corpus holds no messages".into());
    }
    let bytes = data.len() as f64;
    let mut figs = vec![];
    let mut push = |f: Figure| {
        if o.quiet {
            figs.push(f);
            return;
        }
        // MB/s: 10^6 octets a second, as `openssl speed` counts (the block sizes in names are
        // binary: "1 MiB" is 1048576 octets).
        eprintln!(
            "  {:<42} {:>2} thr {:>12.0}/s {:>10.1} MB/s{}",
            f.name,
            f.threads,
            f.per_second,
            f.bytes_per_second / 1e6,
            f.ratio.map_or(String::new(), |r| format!("  ratio {r:.2}"))
                + &f.serial_s_per_gb.map_or(String::new(), |s| format!("  serial {s:.3} s/GB"))
        );
        figs.push(f);
    };
    let min = o.min;

    // Split.
    let (n, secs) = timed(min, || {
        let c = mbox::Splitter::new(data, MboxFormat::Mboxrd).count();
        assert_eq!(c, count);
        1
    });
    push(Figure {
        name: "split (mboxrd)".into(),
        threads: 1,
        per_second: n as f64 * count as f64 / secs,
        bytes_per_second: n as f64 * bytes / secs,
        limit: None,
        ratio: None,
        serial_s_per_gb: None,
    });

    // Bodies, unquoted, for the hashing stages.
    let bodies: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| {
            let mut scratch = vec![];
            let m = mbox::unquote(MboxFormat::Mboxrd, &data[e.message.clone()], &mut scratch).to_vec();
            let p = dkimpress::dkim::header::Message::parse(&m).map(|p| p.body_offset).unwrap_or(0);
            m[p..].to_vec()
        })
        .collect();
    let body_bytes: f64 = bodies.iter().map(|b| b.len() as f64).sum();
    // The hashing limit for these bodies as they are, read from memory: SHA-256 of each body
    // with the same prefetching as the canonicalizers, so that on a corpus larger than the
    // caches the limit pays for memory as they do.
    let (n, secs) = timed(min, || {
        for b in &bodies {
            std::hint::black_box(sha256_streaming(b));
        }
        1
    });
    let sha_rate = n as f64 * body_bytes / secs;
    push(Figure {
        name: "SHA-256 of the bodies (limit)".into(),
        threads: 1,
        per_second: n as f64 * count as f64 / secs,
        bytes_per_second: sha_rate,
        limit: None,
        ratio: None,
        serial_s_per_gb: None,
    });
    for c in [Canon::Simple, Canon::Relaxed] {
        // Check: the fused hash equals hashing the canonical bytes.
        let mut v = vec![];
        canon::canonicalize_body(c, &bodies[0], &mut v);
        let mut h = sha2::Sha256::new();
        canon::canonicalize_body(c, &bodies[0], &mut h);
        assert_eq!(h.finalize().as_slice(), sha2::Sha256::digest(&v).as_slice());
        let (n, secs) = timed(min, || {
            for b in &bodies {
                let mut h = sha2::Sha256::new();
                canon::canonicalize_body(c, b, &mut h);
                std::hint::black_box(h.finalize());
            }
            1
        });
        let rate = n as f64 * body_bytes / secs;
        push(Figure {
            name: format!("canonicalize+hash body ({})", c.as_str()),
            threads: 1,
            per_second: n as f64 * count as f64 / secs,
            bytes_per_second: rate,
            limit: Some(sha_rate),
            ratio: Some(rate / sha_rate),
            serial_s_per_gb: None,
        });
    }

    // SHA-256 limits on 1..N threads, for the large-message targets: the hashing rate of the
    // backend on cached data (what `openssl speed` measures), and the rate for these bodies
    // read from memory, shared among the threads.
    let mut hot_sha = std::collections::HashMap::new();
    for &t in &o.threads {
        let block = vec![0x61u8; 1 << 20];
        let rate = parallel(t, min, || {
            std::hint::black_box(sha2::Sha256::digest(&block));
            1
        }) * block.len() as f64;
        hot_sha.insert(t, rate);
        push(Figure {
            name: "SHA-256 1 MiB blocks (limit)".into(),
            threads: t,
            per_second: rate / block.len() as f64,
            bytes_per_second: rate,
            limit: None,
            ratio: None,
            serial_s_per_gb: None,
        });
        if t == 1 {
            continue; // measured above
        }
        let next = AtomicU64::new(0);
        let start = Instant::now();
        let mut rounds = 0u64;
        while start.elapsed() < min || rounds == 0 {
            next.store(0, Ordering::Relaxed);
            std::thread::scope(|s| {
                for _ in 0..t {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(b) = bodies.get(i) else { break };
                        std::hint::black_box(sha256_streaming(b));
                    });
                }
            });
            rounds += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        push(Figure {
            name: "SHA-256 of the bodies (limit)".into(),
            threads: t,
            per_second: rounds as f64 * count as f64 / secs,
            bytes_per_second: rounds as f64 * body_bytes / secs,
            limit: Some(rate),
            ratio: Some(rounds as f64 * body_bytes / secs / rate),
            serial_s_per_gb: None,
        });
    }

    let max_threads = o.threads.iter().copied().max().unwrap_or(1);
    for &kt in &o.keys {
        let g = dkimpress::dkim::genkey::generate(kt, 2048).map_err(|e| e.to_string())?;
        let key = Arc::new(g.key);
        let label = match kt {
            KeyType::Rsa => "RSA-2048",
            KeyType::Ed25519 => "Ed25519",
        };
        let record = dkimpress::dkim::genkey::record_value(&key, &Default::default());
        let public = dkimpress::dkim::verify::parse_key_record(record.as_bytes()).map_err(|e| e.to_string())?;
        let public = Arc::new(public);
        assert!(!key.sign(b"check").map_err(|e| e.to_string())?.is_empty());
        for &t in &o.threads {
            // The backend's own signing rate on these threads: the limit for end-to-end.
            let limit = parallel(t, min, || {
                std::hint::black_box(key.sign(b"header data of a typical size, about three hundred bytes").ok());
                1
            });
            push(Figure {
                name: format!("sign {label} (backend limit)"),
                threads: t,
                per_second: limit,
                bytes_per_second: 0.0,
                limit: None,
                ratio: None,
                serial_s_per_gb: None,
            });
            let signer = SignerBuilder::new(key.clone(), "example.com", "bench")
                .canon(o.canon)
                .build()
                .map_err(|e| e.to_string())?;
            let opts = BulkOptions {
                keys: KeySource::Fixed(vec![signer]),
                sender: None,
                mbox_format: MboxFormat::Mboxrd,
                strip_own: false,
                now: 1_800_000_000,
                max_message: dkimpress::pipeline::DEFAULT_MAX_MESSAGE,
                shard: None,
                framing: pipeline::Framing::Parallel,
            };
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().map_err(|e| e.to_string())?;
            let mapped = Mapped::Owned(data.clone());
            for &framing in &o.framings {
                let serial = std::cell::Cell::new(0.0f64);
                let run_once = || -> u64 {
                    let mut signed = 0u64;
                    let cpu = pipeline::map_mbox(
                        &mapped,
                        MboxFormat::Mboxrd,
                        0..mapped.len(),
                        &pool,
                        framing,
                        |m| pipeline::sign_stored(&opts, m).is_ok(),
                        |results| {
                            signed += results.iter().filter(|(_, ok)| *ok).count() as u64;
                            Ok(())
                        },
                    )
                    .expect("pipeline");
                    serial.set(serial.get() + cpu.total());
                    assert_eq!(signed, count as u64, "every generated message signs");
                    1
                };
                let (n, secs) = timed(min, run_once);
                let rate = n as f64 * count as f64 / secs;
                // The limit on the same threads. RSA: the backend's signing rate (the issue's
                // target compares with `openssl speed rsa2048`). Ed25519 signs so fast that hashing
                // matters as much: the limit is one signature plus hashing each message's octets
                // once at the SHA-256 rate, per message (for 1 MB messages, the SHA-256 limit).
                let lim = match kt {
                    KeyType::Rsa => limit,
                    KeyType::Ed25519 => 1.0 / (1.0 / limit + bytes / count as f64 / hot_sha[&t]),
                };
                let (lim, ratio) = (Some(lim), Some(rate / lim));
                let how = match o.framings.len() {
                    1 => String::new(),
                    _ => format!(" ({} framing)", framing.as_str()),
                };
                push(Figure {
                    name: format!("end-to-end sign {label}{how}"),
                    threads: t,
                    per_second: rate,
                    bytes_per_second: n as f64 * bytes / secs,
                    limit: lim,
                    ratio,
                    serial_s_per_gb: Some(serial.get() / (n as f64 * bytes / 1e9)),
                });
            }
            if t == max_threads {
                // Verify: sign once, then verify the signed archive.
                let mut signed_archive = Vec::with_capacity(data.len() * 11 / 10);
                pipeline::map_mbox(
                    &mapped,
                    MboxFormat::Mboxrd,
                    0..mapped.len(),
                    &pool,
                    pipeline::Framing::Parallel,
                    |m| pipeline::sign_stored(&opts, m).map(|r| r.0).unwrap_or_default(),
                    |results| {
                        for (e, h) in results {
                            signed_archive.extend_from_slice(&data[e.from_line.clone()]);
                            signed_archive.extend_from_slice(&h);
                            signed_archive.extend_from_slice(&data[e.data.clone()]);
                        }
                        Ok(())
                    },
                )
                .expect("pipeline");
                let signed_mapped = Mapped::Owned(signed_archive);
                let keys = |_: &str, _: &str| -> dkimpress::dkim::verify::KeyResult { Ok(public.clone()) };
                let policy = dkimpress::dkim::verify::Policy::default();
                let (n, secs) = timed(min, || {
                    let mut pass = 0u64;
                    pipeline::map_mbox(
                        &signed_mapped,
                        MboxFormat::Mboxrd,
                        0..signed_mapped.len(),
                        &pool,
                        pipeline::Framing::Parallel,
                        |m| {
                            m.with_unquoted(|m| dkimpress::dkim::verify::verify_slice(m, &keys, 1_800_000_000, &policy))
                                .map(|v| {
                                    dkimpress::dkim::verify::overall(&v) == dkimpress::dkim::verify::DkimResult::Pass
                                })
                                .unwrap_or(false)
                        },
                        |results| {
                            pass += results.iter().filter(|(_, ok)| *ok).count() as u64;
                            Ok(())
                        },
                    )
                    .expect("pipeline");
                    assert_eq!(pass, count as u64, "every signature verifies");
                    1
                });
                push(Figure {
                    name: format!("end-to-end verify {label}"),
                    threads: t,
                    per_second: n as f64 * count as f64 / secs,
                    bytes_per_second: n as f64 * signed_mapped.len() as f64 / secs,
                    limit: None,
                    ratio: None,
                    serial_s_per_gb: None,
                });
            }
        }
    }
    Ok(figs)
}
