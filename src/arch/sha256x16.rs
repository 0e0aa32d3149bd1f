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
//! Owns the sixteen-lane compression kernel; [`digest_padded`], a queue of padded messages
//! ([`pad`]) through the lanes, each lane taking the next message when its own is done (the
//! workers' body hashes: `dkim::bodyhash::hash_many`); [`digest16`], sixteen whole messages of
//! any lengths (the `sha_lanes` bench); and [`preferred`], whether this CPU should use the
//! lanes rather than a pair of SHA-NI streams. Tested against the `sha2` crate.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use super::sha256x2::IV;
#[cfg(target_arch = "x86_64")]
use super::sha256x2::K;

/// Whether this CPU has what the kernel needs: AVX-512 Foundation (rotations, ternary logic,
/// gathers) and Byte/Word (the byte swap). Detected once, then a cached flag.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        super::detected_once(&HAS, || {
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether bodies should go through the sixteen lanes rather than a pair of SHA-NI streams
/// (`arch::sha256x2`) on this CPU: it has AVX-512 and is an Intel one. Measured with `cargo
/// bench --bench sha_lanes`: on an Intel Xeon two SHA-NI streams ran at 0.83-0.97 of one and
/// sixteen lanes at 1.84-1.91; on an AMD Zen 3 core (no AVX-512) two streams at 1.42. AMD cores
/// with AVX-512 (Zen 4 on, which runs 512-bit operations in two halves) are not measured and
/// keep the pair.
pub fn preferred() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static INTEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        // CPUID leaf 0: the vendor string in EBX, EDX, ECX ("GenuineIntel").
        let intel = super::detected_once(&INTEL, || {
            let id = __cpuid(0);
            [id.ebx, id.edx, id.ecx] == [0x756e_6547, 0x4965_6e69, 0x6c65_746e]
        });
        intel && available()
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

/// Octets of SHA-256 padding (FIPS 180-4 §5.1.1) that [`digest_padded`] wants after a message
/// of `len` octets: 0x80, zeros up to 56 modulo 64, the length in bits (big-endian).
pub fn pad(buf: &mut Vec<u8>, len: u64) {
    buf.push(0x80);
    let zeros = (119 - (len as usize % 64)) % 64;
    buf.resize(buf.len() + zeros, 0);
    buf.extend_from_slice(&(len * 8).to_be_bytes());
}

/// The SHA-256 digests of any number of messages, each given padded ([`pad`]: a whole number of
/// blocks), or `None` when the CPU lacks AVX-512. The messages go through the sixteen lanes as
/// a queue: each call of the kernel runs over the fewest blocks any busy lane has left, then a
/// lane whose message is done takes the next one. Once the queue is empty and half the lanes or
/// fewer are busy, their rests are hashed one stream at a time (SHA-NI where the CPU has it),
/// which is then faster than sixteen lanes mostly idle.
///
/// # Panics
/// When a message is not a whole number of blocks, or empty.
pub fn digest_padded(msgs: &[&[u8]]) -> Option<Vec<[u8; 32]>> {
    if !available() {
        return None;
    }
    assert!(msgs.iter().all(|m| !m.is_empty() && m.len() % 64 == 0), "digest_padded: messages must be padded");
    let mut out = vec![[0u8; 32]; msgs.len()];
    let mut states = [IV; 16];
    // The message of each lane and how far it is hashed.
    let mut lanes: [Option<(usize, usize)>; 16] = [None; 16];
    let mut next = 0;
    loop {
        for (lane, state) in lanes.iter_mut().zip(states.iter_mut()) {
            if lane.is_none() && next < msgs.len() {
                *lane = Some((next, 0));
                *state = IV;
                next += 1;
            }
        }
        let busy = lanes.iter().flatten().count();
        if busy == 0 {
            break;
        }
        if next == msgs.len() && busy <= 8 {
            for (lane, state) in lanes.iter_mut().zip(states.iter_mut()) {
                if let Some((i, at)) = lane.take() {
                    compress_rest(state, &msgs[i][at..]);
                    out[i] = digest_of(state);
                }
            }
            break;
        }
        let blocks = lanes.iter().flatten().map(|&(i, at)| (msgs[i].len() - at) / 64).min().unwrap_or(0);
        // An idle lane reads a busy lane's blocks; its state is thrown away.
        let any = lanes.iter().flatten().next().map(|&(i, at)| &msgs[i][at..]).unwrap_or_default();
        let reads: [&[u8]; 16] = std::array::from_fn(|l| lanes[l].map_or(any, |(i, at)| &msgs[i][at..]));
        // SAFETY: the CPU has AVX-512F and AVX-512BW (`available`), and every lane reads a
        // message with at least `blocks` whole blocks left.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            compress16(&mut states, &reads, blocks, true)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (&reads, blocks);
        for (lane, state) in lanes.iter_mut().zip(states.iter()) {
            if let Some((i, at)) = lane {
                *at += 64 * blocks;
                if *at == msgs[*i].len() {
                    out[*i] = digest_of(state);
                    *lane = None;
                }
            }
        }
    }
    Some(out)
}

/// Hashes the whole blocks of `blocks` into `state`, one stream.
fn compress_rest(state: &mut [u32; 8], blocks: &[u8]) {
    use sha2::digest::generic_array::GenericArray;
    for block in blocks.chunks_exact(64) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}

/// A chaining value as the digest's octets.
fn digest_of(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state.iter()) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The digest of `msg` whose first `done` octets (whole blocks) are hashed into `state`: the
/// rest of its blocks and the padding (FIPS 180-4 §5.1.1) one lane at a time.
fn finish(state: &mut [u32; 8], msg: &[u8], done: usize) -> [u8; 32] {
    let rest = &msg[done..];
    let whole = rest.len() / 64 * 64;
    compress_rest(state, &rest[..whole]);
    let mut last = Vec::with_capacity(128);
    last.extend_from_slice(&rest[whole..]);
    pad(&mut last, msg.len() as u64);
    compress_rest(state, &last);
    digest_of(state)
}

/// Where [`compress16`] reads the lanes' blocks: each lane's address as its offset from lane
/// 0's current block (`base`), 32-bit when all fit (one gather of sixteen loads per word:
/// lanes of one mbox, or of one heap), else 64-bit (two gathers of eight).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Lanes {
    base: *const u8,
    offsets: Offsets,
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Offsets {
    Near(__m512i),
    Far { lo: __m512i, hi: __m512i },
}

#[cfg(target_arch = "x86_64")]
impl Lanes {
    #[target_feature(enable = "avx512f")]
    fn new(msgs: &[&[u8]; 16], near_allowed: bool) -> Lanes {
        let base = msgs[0].as_ptr();
        let far: [i64; 16] = std::array::from_fn(|i| (msgs[i].as_ptr() as i64).wrapping_sub(base as i64));
        let near: [i32; 16] = std::array::from_fn(|i| far[i] as i32);
        let offsets = if near_allowed && far.iter().zip(&near).all(|(&f, &n)| i64::from(n) == f) {
            // SAFETY: 16 i32 are 64 octets.
            Offsets::Near(unsafe { _mm512_loadu_si512(near.as_ptr().cast()) })
        } else {
            // SAFETY: twice 8 i64, 64 octets each.
            unsafe {
                Offsets::Far {
                    lo: _mm512_loadu_si512(far.as_ptr().cast()),
                    hi: _mm512_loadu_si512(far[8..].as_ptr().cast()),
                }
            }
        };
        Lanes { base, offsets }
    }

    /// On to the next block of every lane.
    fn advance(&mut self) {
        self.base = self.base.wrapping_add(64);
    }

    /// The message word `t` (0..16) of the current block of each lane, big-endian.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW; octets `4 t..4 t + 4` of each lane's current
    /// block must be readable.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn word(self, t: usize, bswap: __m512i) -> __m512i {
        let at = self.base.wrapping_add(4 * t);
        // SAFETY: each lane's word is at `at` plus its offset, readable as the caller promises.
        let v = unsafe {
            match self.offsets {
                Offsets::Near(offsets) => _mm512_i32gather_epi32::<1>(offsets, at.cast()),
                Offsets::Far { lo, hi } => _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm512_i64gather_epi32::<1>(lo, at.cast())),
                    _mm512_i64gather_epi32::<1>(hi, at.cast()),
                ),
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

    /// A queue of messages of many lengths, more and fewer than the lanes, padded by `pad`,
    /// hashes as `sha2` hashes each.
    #[test]
    fn digest_padded_matches_sha2() {
        if !available() {
            eprintln!("SKIPPED digest_padded_matches_sha2: this CPU has no AVX-512F/BW");
            return;
        }
        for count in [1, 7, 16, 17, 40, 100] {
            let msgs: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let n = [0, 1, 55, 56, 63, 64, 65, 700, 4096, 9000, 20_000][(i * 7 + count) % 11] + i;
                    (0..n).map(|j| (j * 13 + i) as u8).collect()
                })
                .collect();
            let padded: Vec<Vec<u8>> = msgs
                .iter()
                .map(|m| {
                    let mut p = m.clone();
                    pad(&mut p, m.len() as u64);
                    assert_eq!(p.len() % 64, 0);
                    p
                })
                .collect();
            let refs: Vec<&[u8]> = padded.iter().map(|p| &p[..]).collect();
            let got = digest_padded(&refs).expect("AVX-512 checked above");
            for (i, m) in msgs.iter().enumerate() {
                assert_eq!(got[i], reference(m), "{count} messages: message {i}, {} octets", m.len());
            }
        }
        assert_eq!(digest_padded(&[]), Some(vec![]));
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
