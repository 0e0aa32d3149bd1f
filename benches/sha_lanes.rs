//! Whether hashing two bodies at once beats hashing them one after the other, on this CPU.
//!
//! SHA-256 with SHA-NI is bound by the latency of `sha256rnds2`: each pair of rounds waits for
//! the one before, and the core's other units idle. Two independent streams whose round
//! instructions alternate fill some of that idle time. This bench measures how much: one
//! stream (the `sha2` crate, what we hash with) against two streams interleaved by
//! [`compress_two`] over the same 4 KB messages padded beforehand (the padding is a block of
//! 64, hashed by both sides), in alternating rounds, and prints the median ratio
//! of the rounds' own. The two-stream kernel is checked against `sha2` before timing.
//!
//! Nothing in the signing path uses two streams yet; this is the measurement that decides
//! whether pairing messages (or the chunks of two large bodies) in the workers is worth it.
//! See benches/REPORT.md.
//!
//! Run: `cargo bench --bench sha_lanes`.

use sha2::Digest as _;
use std::time::{Duration, Instant};

/// The SHA-256 round constants (FIPS 180-4 §4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// The initial hash value (FIPS 180-4 §5.3.3).
const IV: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// Runs the compression function over `a` in `sa` and over `b` in `sb` (as many blocks each),
/// the instructions of the two streams alternating. The SHA-NI sequence is the usual one
/// (the state as ABEF/CDGH, four rounds per message word vector, `sha256msg1`/`msg2` for
/// the schedule), once per stream.
///
/// # Safety
/// The CPU must have SHA, SSSE3 and SSE4.1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn compress_two(sa: &mut [u32; 8], sb: &mut [u32; 8], a: &[[u8; 64]], b: &[[u8; 64]]) {
    use core::arch::x86_64::*;
    assert_eq!(a.len(), b.len());
    // Big-endian words: reverse the octets of each 32-bit lane.
    let bswap = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
    let load_state = |s: &[u32; 8]| {
        // SAFETY: `s` is 32 octets; unaligned loads.
        let (dcba, efgh) = unsafe { (_mm_loadu_si128(s.as_ptr().cast()), _mm_loadu_si128(s.as_ptr().add(4).cast())) };
        let cdab = _mm_shuffle_epi32::<0xB1>(dcba);
        let efgh = _mm_shuffle_epi32::<0x1B>(efgh);
        (_mm_alignr_epi8::<8>(cdab, efgh), _mm_blend_epi16::<0xF0>(efgh, cdab))
    };
    let store_state = |s: &mut [u32; 8], abef: __m128i, cdgh: __m128i| {
        let feba = _mm_shuffle_epi32::<0x1B>(abef);
        let dchg = _mm_shuffle_epi32::<0xB1>(cdgh);
        // SAFETY: `s` is 32 octets; unaligned stores.
        unsafe {
            _mm_storeu_si128(s.as_mut_ptr().cast(), _mm_blend_epi16::<0xF0>(feba, dchg));
            _mm_storeu_si128(s.as_mut_ptr().add(4).cast(), _mm_alignr_epi8::<8>(dchg, feba));
        }
    };
    let words = |block: &[u8; 64]| {
        // SAFETY: four 16-octet loads inside the 64-octet block.
        std::array::from_fn::<__m128i, 4, _>(|i| unsafe {
            _mm_shuffle_epi8(_mm_loadu_si128(block.as_ptr().add(16 * i).cast()), bswap)
        })
    };
    let schedule = |w0, w1, w2, w3| {
        let t = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8::<4>(w3, w2));
        _mm_sha256msg2_epu32(t, w3)
    };
    let (mut abef_a, mut cdgh_a) = load_state(sa);
    let (mut abef_b, mut cdgh_b) = load_state(sb);
    for (block_a, block_b) in a.iter().zip(b) {
        let saved = (abef_a, cdgh_a, abef_b, cdgh_b);
        let (mut wa, mut wb) = (words(block_a), words(block_b));
        for i in 0..16 {
            let (xa, xb) = if i < 4 {
                (wa[i], wb[i])
            } else {
                wa[i % 4] = schedule(wa[i % 4], wa[(i + 1) % 4], wa[(i + 2) % 4], wa[(i + 3) % 4]);
                wb[i % 4] = schedule(wb[i % 4], wb[(i + 1) % 4], wb[(i + 2) % 4], wb[(i + 3) % 4]);
                (wa[i % 4], wb[i % 4])
            };
            // SAFETY: 4i + 4 <= 64 constants.
            let k = unsafe { _mm_loadu_si128(K.as_ptr().add(4 * i).cast()) };
            let (ta, tb) = (_mm_add_epi32(xa, k), _mm_add_epi32(xb, k));
            cdgh_a = _mm_sha256rnds2_epu32(cdgh_a, abef_a, ta);
            cdgh_b = _mm_sha256rnds2_epu32(cdgh_b, abef_b, tb);
            abef_a = _mm_sha256rnds2_epu32(abef_a, cdgh_a, _mm_shuffle_epi32::<0x0E>(ta));
            abef_b = _mm_sha256rnds2_epu32(abef_b, cdgh_b, _mm_shuffle_epi32::<0x0E>(tb));
        }
        abef_a = _mm_add_epi32(abef_a, saved.0);
        cdgh_a = _mm_add_epi32(cdgh_a, saved.1);
        abef_b = _mm_add_epi32(abef_b, saved.2);
        cdgh_b = _mm_add_epi32(cdgh_b, saved.3);
    }
    store_state(sa, abef_a, cdgh_a);
    store_state(sb, abef_b, cdgh_b);
}

/// A padded message as SHA-256 blocks.
type Blocks = Vec<[u8; 64]>;

/// `m` with SHA-256's padding (FIPS 180-4 §5.1.1), as blocks.
fn padded(m: &[u8]) -> Blocks {
    let mut v = m.to_vec();
    v.push(0x80);
    while v.len() % 64 != 56 {
        v.push(0);
    }
    v.extend_from_slice(&(m.len() as u64 * 8).to_be_bytes());
    v.chunks(64).map(|c| c.try_into().expect("64-octet chunks")).collect()
}

fn digest_of(state: [u32; 8]) -> Vec<u8> {
    state.iter().flat_map(|w| w.to_be_bytes()).collect()
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !std::is_x86_feature_detected!("sha") || !std::is_x86_feature_detected!("sse4.1") {
        println!("sha_lanes: this CPU has no SHA-NI; nothing to compare");
        return;
    }
    // Pairs of 4 KB-ish messages (4,032 octets: 64 blocks once padded), different contents.
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..64u32)
        .map(|p| {
            let a = (0..4032u32).map(|i| (i.wrapping_mul(7) ^ p) as u8).collect();
            let b = (0..4032u32).map(|i| (i.wrapping_mul(13) + p) as u8).collect();
            (a, b)
        })
        .collect();
    let blocks: Vec<(Blocks, Blocks)> = pairs.iter().map(|(a, b)| (padded(a), padded(b))).collect();
    for ((a, b), (pa, pb)) in pairs.iter().zip(&blocks) {
        let (mut sa, mut sb) = (IV, IV);
        // SAFETY: the CPU has SHA and SSE4.1 (checked above).
        unsafe { compress_two(&mut sa, &mut sb, pa, pb) };
        assert_eq!(digest_of(sa), sha2::Sha256::digest(a).to_vec(), "two streams, first");
        assert_eq!(digest_of(sb), sha2::Sha256::digest(b).to_vec(), "two streams, second");
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
        for (pa, pb) in &blocks {
            let (mut sa, mut sb) = (IV, IV);
            // SAFETY: the CPU has SHA and SSE4.1 (checked above).
            unsafe { compress_two(&mut sa, &mut sb, pa, pb) };
            std::hint::black_box((sa, sb));
        }
    };
    let (mut ones, mut twos, mut ratios) = (vec![], vec![], vec![]);
    for _ in 0..9 {
        let (r1, r2) = (rate(&one), rate(&two));
        ones.push(r1);
        twos.push(r2);
        ratios.push(r2 / r1);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "sha_lanes: one stream (sha2) {:.0} MB/s, two interleaved {:.0} MB/s, ratio {:.2} (median of 9 rounds; min {:.2}, max {:.2})",
        median(&mut ones),
        median(&mut twos),
        median(&mut ratios),
        ratios[0],
        ratios[ratios.len() - 1],
    );
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("sha_lanes: x86_64 only");
}
