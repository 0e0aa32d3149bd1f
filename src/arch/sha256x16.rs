//! Sixteen SHA-256 computations at once, one in each 32-bit lane of the AVX-512 registers
//! (multi-buffer SHA-256).
//!
//! SHA-NI hashes one stream at the rate its round instruction allows. On CPUs whose SHA-NI
//! instructions share one execution port with the shuffles around them (Intel cores up to now),
//! a second interleaved stream gains little: `cargo bench --bench sha_lanes` measured two
//! streams at 1.1 times one on such a Xeon, against 1.42 times on a Zen 3 core. The same
//! compression function written with plain AVX-512 integer instructions runs sixteen
//! independent messages side by side on the vector units instead (FIPS 180-4 §6.2.2, each
//! step a lane-wise operation: rotations `vprord`, the Ch, Maj and three-way XOR functions one
//! `vpternlogd` each). Where sixteen bodies are at hand (a bulk run has thousands), that is
//! more hashed octets per cycle than SHA-NI gives one stream (benches/REPORT.md).
//!
//! Owns the sixteen-lane compression kernel and [`digest16`], sixteen whole messages of any
//! lengths: their common whole blocks go through the kernel together, each one's remaining
//! blocks and padding (§5.1.1) through the `sha2` crate's compression function. Tested against
//! the `sha2` crate.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

/// The round constants (FIPS 180-4 §4.2.2).
#[cfg(target_arch = "x86_64")]
static K: [u32; 64] = [
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

/// Whether this CPU has what the kernel needs: AVX-512 Foundation (rotations, ternary logic,
/// gathers) and Byte/Word (the byte swap). Detected once, then a cached flag.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::atomic::{AtomicU8, Ordering};
        static HAS: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
        match HAS.load(Ordering::Relaxed) {
            0 => {
                let yes = std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw");
                HAS.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
            v => v == 2,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The SHA-256 digests of sixteen messages, or `None` when the CPU lacks AVX-512
/// ([`available`]).
pub fn digest16(msgs: &[&[u8]; 16]) -> Option<[[u8; 32]; 16]> {
    digest16_reading(msgs, true)
}

/// [`digest16`], the lanes' blocks gathered by offsets from lane 0's where `near_allowed` and
/// they fit ([`Lanes`]), else by whole addresses (the tests take both ways).
fn digest16_reading(msgs: &[&[u8]; 16], near_allowed: bool) -> Option<[[u8; 32]; 16]> {
    if !available() {
        return None;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = near_allowed;
    let mut states = [IV; 16];
    let common = msgs.iter().map(|m| m.len() / 64).min().unwrap_or(0);
    if common > 0 {
        // SAFETY: the CPU has AVX-512F and AVX-512BW (`available`), and every message holds at
        // least `common` whole blocks.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            compress16(&mut states, msgs, common, near_allowed)
        };
    }
    Some(std::array::from_fn(|i| finish(&mut states[i], msgs[i], 64 * common)))
}

/// The digest of `msg` whose first `done` octets (whole blocks) are hashed into `state`: the
/// rest of its blocks and the padding (FIPS 180-4 §5.1.1) one lane at a time.
fn finish(state: &mut [u32; 8], msg: &[u8], done: usize) -> [u8; 32] {
    use sha2::digest::generic_array::GenericArray;
    let rest = &msg[done..];
    let whole = rest.len() / 64 * 64;
    for block in rest[..whole].chunks_exact(64) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
    let tail = &rest[whole..];
    let mut last = [0u8; 128];
    last[..tail.len()].copy_from_slice(tail);
    last[tail.len()] = 0x80;
    let end = if tail.len() < 56 { 64 } else { 128 };
    last[end - 8..end].copy_from_slice(&(msg.len() as u64 * 8).to_be_bytes());
    for block in last[..end].chunks_exact(64) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state.iter()) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Where [`compress16`] reads the lanes' blocks: their addresses as offsets from lane 0's
/// when all fit in 32 bits (one gather of sixteen loads per word: lanes of one mbox, or of
/// one heap), else whole (two gathers of eight).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Lanes {
    Near { base: *const u8, offsets: __m512i },
    Far { lo: __m512i, hi: __m512i },
}

#[cfg(target_arch = "x86_64")]
impl Lanes {
    #[target_feature(enable = "avx512f")]
    fn new(msgs: &[&[u8]; 16], near_allowed: bool) -> Lanes {
        let base = msgs[0].as_ptr();
        let offsets: Option<Vec<i32>> =
            msgs.iter().map(|m| i32::try_from((m.as_ptr() as i64).wrapping_sub(base as i64)).ok()).collect();
        match offsets.filter(|_| near_allowed) {
            // SAFETY: 16 i32 are 64 octets.
            Some(o) => Lanes::Near { base, offsets: unsafe { _mm512_loadu_si512(o.as_ptr().cast()) } },
            None => {
                let addr = |i: usize| msgs[i].as_ptr() as i64;
                Lanes::Far {
                    lo: _mm512_set_epi64(addr(7), addr(6), addr(5), addr(4), addr(3), addr(2), addr(1), addr(0)),
                    hi: _mm512_set_epi64(addr(15), addr(14), addr(13), addr(12), addr(11), addr(10), addr(9), addr(8)),
                }
            }
        }
    }

    /// On to the next block of every lane.
    #[target_feature(enable = "avx512f")]
    fn advance(&mut self) {
        match self {
            Lanes::Near { base, .. } => *base = base.wrapping_add(64),
            Lanes::Far { lo, hi } => {
                *lo = _mm512_add_epi64(*lo, _mm512_set1_epi64(64));
                *hi = _mm512_add_epi64(*hi, _mm512_set1_epi64(64));
            }
        }
    }

    /// The message word `t` (0..16) of the current block of each lane, big-endian.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW; octets `4 t..4 t + 4` of each lane's current
    /// block must be readable.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn word(self, t: usize, bswap: __m512i) -> __m512i {
        let v = match self {
            // SAFETY: each lane's address is base + its offset, readable as the caller promises.
            Lanes::Near { base, offsets } => unsafe {
                _mm512_i32gather_epi32::<1>(offsets, base.wrapping_add(4 * t).cast())
            },
            Lanes::Far { lo, hi } => {
                let off = _mm512_set1_epi64(4 * t as i64);
                // SAFETY: absolute addresses (base null, scale 1), readable as the caller promises.
                let (a, b) = unsafe {
                    (
                        _mm512_i64gather_epi32::<1>(_mm512_add_epi64(lo, off), std::ptr::null()),
                        _mm512_i64gather_epi32::<1>(_mm512_add_epi64(hi, off), std::ptr::null()),
                    )
                };
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
            }
        };
        _mm512_shuffle_epi8(v, bswap)
    }
}

/// Runs the compression function over the first `blocks` blocks of each message, lane `i`
/// in `states[i]`, reading them as [`Lanes::new`] says.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW; every message holds at least `blocks` whole
/// blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn compress16(states: &mut [[u32; 8]; 16], msgs: &[&[u8]; 16], blocks: usize, near_allowed: bool) {
    debug_assert!(msgs.iter().all(|m| m.len() >= 64 * blocks));
    let bswap = _mm512_set4_epi32(0x0c0d_0e0f, 0x0809_0a0b, 0x0405_0607, 0x0001_0203);
    let mut lanes = Lanes::new(msgs, near_allowed);
    // The state transposed: vector j holds word j of every lane.
    let mut s: [__m512i; 8] = std::array::from_fn(|j| {
        let column: [u32; 16] = std::array::from_fn(|i| states[i][j]);
        // SAFETY: 64 octets.
        unsafe { _mm512_loadu_si512(column.as_ptr().cast()) }
    });
    for _ in 0..blocks {
        // SAFETY: the current block of each lane is inside its message (the caller's promise).
        let mut w: [__m512i; 16] = std::array::from_fn(|t| unsafe { lanes.word(t, bswap) });
        lanes.advance();
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = s;
        for (t, &k) in K.iter().enumerate() {
            if t >= 16 {
                // W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16] (§6.2.2 step 1).
                let (w15, w2) = (w[(t - 15) % 16], w[(t - 2) % 16]);
                let s0 = _mm512_ternarylogic_epi32::<0x96>(
                    _mm512_ror_epi32::<7>(w15),
                    _mm512_ror_epi32::<18>(w15),
                    _mm512_srli_epi32::<3>(w15),
                );
                let s1 = _mm512_ternarylogic_epi32::<0x96>(
                    _mm512_ror_epi32::<17>(w2),
                    _mm512_ror_epi32::<19>(w2),
                    _mm512_srli_epi32::<10>(w2),
                );
                w[t % 16] = _mm512_add_epi32(_mm512_add_epi32(w[t % 16], s0), _mm512_add_epi32(w[(t - 7) % 16], s1));
            }
            let kw = _mm512_add_epi32(w[t % 16], _mm512_set1_epi32(k as i32));
            // T1 = h + Σ1(e) + Ch(e, f, g) + K[t] + W[t]; T2 = Σ0(a) + Maj(a, b, c).
            let big_s1 = _mm512_ternarylogic_epi32::<0x96>(
                _mm512_ror_epi32::<6>(e),
                _mm512_ror_epi32::<11>(e),
                _mm512_ror_epi32::<25>(e),
            );
            let ch = _mm512_ternarylogic_epi32::<0xCA>(e, f, g);
            let t1 = _mm512_add_epi32(_mm512_add_epi32(h, big_s1), _mm512_add_epi32(ch, kw));
            let big_s0 = _mm512_ternarylogic_epi32::<0x96>(
                _mm512_ror_epi32::<2>(a),
                _mm512_ror_epi32::<13>(a),
                _mm512_ror_epi32::<22>(a),
            );
            let t2 = _mm512_add_epi32(big_s0, _mm512_ternarylogic_epi32::<0xE8>(a, b, c));
            h = g;
            g = f;
            f = e;
            e = _mm512_add_epi32(d, t1);
            d = c;
            c = b;
            b = a;
            a = _mm512_add_epi32(t1, t2);
        }
        for (x, y) in s.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *x = _mm512_add_epi32(*x, y);
        }
    }
    for (j, v) in s.iter().enumerate() {
        let mut column = [0u32; 16];
        // SAFETY: 64 octets.
        unsafe { _mm512_storeu_si512(column.as_mut_ptr().cast(), *v) };
        for (state, word) in states.iter_mut().zip(column) {
            state[j] = word;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn reference(b: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(b).into()
    }

    /// Sixteen messages of the same and of different lengths (around the padding's edges, and
    /// far apart in memory) hash as `sha2` hashes them one at a time.
    #[test]
    fn digest16_matches_sha2() {
        if !available() {
            eprintln!("SKIPPED digest16_matches_sha2: this CPU has no AVX-512F/BW");
            return;
        }
        let lengths: [&[usize]; 4] = [
            &[0; 16],
            &[55; 16],
            &[4096; 16],
            &[0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4095, 4096, 4097, 70_000, 1 << 20],
        ];
        for (set, lens) in lengths.iter().enumerate() {
            let msgs: Vec<Vec<u8>> =
                lens.iter().enumerate().map(|(i, &n)| (0..n).map(|j| (j * 31 + i * 7 + set) as u8).collect()).collect();
            let refs: [&[u8]; 16] = std::array::from_fn(|i| &msgs[i][..]);
            for near in [true, false] {
                let got = digest16_reading(&refs, near).expect("AVX-512 checked above");
                for i in 0..16 {
                    assert_eq!(
                        got[i],
                        reference(&msgs[i]),
                        "set {set}, near {near}, lane {i}, {} octets",
                        msgs[i].len()
                    );
                }
            }
        }
    }

    /// Lanes that start at any alignment, overlapping and in one buffer.
    #[test]
    fn digest16_unaligned_and_overlapping_lanes() {
        if !available() {
            eprintln!("SKIPPED digest16_unaligned_and_overlapping_lanes: this CPU has no AVX-512F/BW");
            return;
        }
        let buf: Vec<u8> = (0..10_000u32).map(|i| ((i * 131) >> 3) as u8).collect();
        let refs: [&[u8]; 16] = std::array::from_fn(|i| &buf[i * 3..i * 3 + 700 + 64 * i]);
        for near in [true, false] {
            let got = digest16_reading(&refs, near).expect("AVX-512 checked above");
            for i in 0..16 {
                assert_eq!(got[i], reference(refs[i]), "near {near}, lane {i}");
            }
        }
    }
}
