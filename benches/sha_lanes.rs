//! Whether hashing two bodies at once beats hashing them one after the other, on this CPU.
//!
//! SHA-256 with SHA-NI is bound by the latency of `sha256rnds2`: each pair of rounds waits for
//! the one before, and the core's other units idle. Two independent streams whose round
//! instructions alternate fill some of that idle time. This bench measures how much: one
//! stream (the `sha2` crate) against two streams hashed together by the workers' own
//! `arch::sha256x2::Sha256Pair` (written whole, then finished), over the same 4 KB messages,
//! in alternating rounds, and prints the median ratio of the rounds' own. The pair's digests
//! are checked against `sha2` before timing.
//!
//! The workers hash the bodies of consecutive mbox messages two at a time; this says what that
//! is worth on the CPU at hand (an SMT sibling busy with its own hashing takes part of it).
//! On a CPU with AVX-512 it also measures sixteen messages hashed at once in the vector lanes
//! (`arch::sha256x16::digest16`, checked against `sha2` too), the candidate for CPUs where two
//! SHA-NI streams gain little. See benches/REPORT.md.
//!
//! Run: `cargo bench --bench sha_lanes`.

use dkimpress::arch::sha256x16;
use dkimpress::arch::sha256x2::{available, Sha256Pair};
use sha2::Digest as _;
use std::time::{Duration, Instant};

fn main() {
    if !available() {
        println!("sha_lanes: this CPU has no SHA-NI; nothing to compare");
        return;
    }
    // Pairs of 4 KB messages, different contents.
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..64u32)
        .map(|p| {
            let a = (0..4096u32).map(|i| (i.wrapping_mul(7) ^ p) as u8).collect();
            let b = (0..4096u32).map(|i| (i.wrapping_mul(13) + p) as u8).collect();
            (a, b)
        })
        .collect();
    let together = |a: &[u8], b: &[u8]| {
        let mut pair = Sha256Pair::new().expect("SHA-NI checked above");
        pair.write(0, a);
        pair.write(1, b);
        pair.finish()
    };
    for (a, b) in &pairs {
        let want: [[u8; 32]; 2] = [sha2::Sha256::digest(a).into(), sha2::Sha256::digest(b).into()];
        assert_eq!(together(a, b), want, "two streams against sha2");
    }
    let bytes: usize = pairs.iter().map(|(a, b)| a.len() + b.len()).sum();
    let rate = |f: &dyn Fn()| {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_millis(200) {
            f();
            n += 1;
        }
        (n * bytes) as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let one = || {
        for (a, b) in &pairs {
            std::hint::black_box(sha2::Sha256::digest(a));
            std::hint::black_box(sha2::Sha256::digest(b));
        }
    };
    let two = || {
        for (a, b) in &pairs {
            std::hint::black_box(together(a, b));
        }
    };
    // The same 128 messages, sixteen at a time.
    let messages: Vec<&[u8]> = pairs.iter().flat_map(|(a, b)| [&a[..], &b[..]]).collect();
    let groups: Vec<[&[u8]; 16]> = messages.chunks_exact(16).map(|g| std::array::from_fn(|i| g[i])).collect();
    let sixteen_available = sha256x16::available();
    for g in groups.iter().filter(|_| sixteen_available) {
        let want: [[u8; 32]; 16] = std::array::from_fn(|i| sha2::Sha256::digest(g[i]).into());
        assert_eq!(sha256x16::digest16(g), Some(want), "sixteen lanes against sha2");
    }
    let sixteen = || {
        for g in &groups {
            std::hint::black_box(sha256x16::digest16(g));
        }
    };
    let (mut ones, mut twos, mut ratios) = (vec![], vec![], vec![]);
    let (mut sixteens, mut ratios16) = (vec![], vec![]);
    for _ in 0..9 {
        let (r1, r2) = (rate(&one), rate(&two));
        ones.push(r1);
        twos.push(r2);
        ratios.push(r2 / r1);
        if sixteen_available {
            let r16 = rate(&sixteen);
            sixteens.push(r16);
            ratios16.push(r16 / r1);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "sha_lanes: one stream (sha2) {:.0} MB/s, two together (Sha256Pair) {:.0} MB/s, ratio {:.2} (median of 9 rounds; min {:.2}, max {:.2})",
        median(&mut ones),
        median(&mut twos),
        median(&mut ratios),
        ratios[0],
        ratios[ratios.len() - 1],
    );
    if sixteen_available {
        println!(
            "sha_lanes: sixteen together (AVX-512, sha256x16) {:.0} MB/s, ratio to one stream {:.2} (median of 9 rounds; min {:.2}, max {:.2})",
            median(&mut sixteens),
            median(&mut ratios16),
            ratios16[0],
            ratios16[ratios16.len() - 1],
        );
        large_streamed();
    } else {
        println!("sha_lanes: this CPU has no AVX-512F/BW; sixteen lanes not measured");
    }
}

/// Sixteen 1 MB messages written to the lanes of `Sha256x16` 16 KB at a time, as the workers
/// stream large bodies, against one stream (sha2) over the same messages, in alternating
/// rounds. The data (16 MB) is larger than a core's L2 cache, as a large archive's bodies are.
fn large_streamed() {
    const PIECE: usize = 16 * 1024;
    let msgs: Vec<Vec<u8>> = (0..16u32)
        .map(|m| (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13 ^ m) as u8).collect())
        .collect();
    let lanes = || {
        let mut l = sha256x16::Sha256x16::with_buffers(Vec::new()).expect("AVX-512 checked by the caller");
        for lane in 0..16 {
            l.start(lane);
        }
        for at in (0..1 << 20).step_by(PIECE) {
            for (lane, m) in msgs.iter().enumerate() {
                l.write(lane, &m[at..at + PIECE]);
            }
            l.pump();
        }
        for lane in 0..16 {
            l.close(lane);
        }
        l.pump();
        std::array::from_fn::<_, 16, _>(|lane| l.take(lane).expect("closed and pumped").0)
    };
    let want: [[u8; 32]; 16] = std::array::from_fn(|i| sha2::Sha256::digest(&msgs[i]).into());
    assert_eq!(lanes(), want, "streamed lanes against sha2");
    let time = |f: &dyn Fn()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..9)
        .map(|_| {
            let one = time(&|| {
                for m in &msgs {
                    std::hint::black_box(sha2::Sha256::digest(m));
                }
            });
            one / time(&|| {
                std::hint::black_box(lanes());
            })
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "sha_lanes: sixteen 1 MB messages streamed through the lanes in 16 KB writes: {:.2} times one stream (median of 9 rounds; min {:.2}, max {:.2})",
        ratios[4], ratios[0], ratios[8],
    );
}
