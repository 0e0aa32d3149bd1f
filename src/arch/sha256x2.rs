//! Two SHA-256 computations at once, with the CPU's SHA extensions (SHA-NI).
//!
//! SHA-256 of one stream is bound by the latency of `sha256rnds2`: every pair of rounds waits
//! for the previous one while the core's other units idle. Two independent streams whose
//! instructions alternate fill part of that time: on a Zen 3 core two streams hash at 1.42
//! times the rate of one (`cargo bench --bench sha_lanes`, benches/REPORT.md). Body hashes of
//! two messages are such streams; [`Sha256Pair`] takes their octets in any amounts, hashes
//! the blocks both lanes have together and, once one lane is closed, the other's alone.
//!
//! Owns the compression kernels (FIPS 180-4 §6.2, in the SHA-NI formulation: the state as
//! ABEF/CDGH, four rounds per message vector, `sha256msg1`/`sha256msg2` for the schedule) and
//! the padding (§5.1.1). What is hashed is the caller's business (see
//! `dkim::bodyhash::hash_two`). Tested against the `sha2` crate.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

/// The round constants (FIPS 180-4 §4.2.2).
#[cfg(target_arch = "x86_64")]
pub(super) static K: [u32; 64] = [
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
pub(super) const IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// Whether this CPU has what the kernels need (detected once, then a cached flag).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        super::detected_once(&HAS, || {
            std::is_x86_feature_detected!("sha")
                && std::is_x86_feature_detected!("ssse3")
                && std::is_x86_feature_detected!("sse4.1")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One stream: its chaining value, the octets not hashed yet (`pending[start..]`), and how many
/// were hashed.
struct Lane {
    state: [u32; 8],
    pending: Vec<u8>,
    start: usize,
    hashed: u64,
    closed: bool,
}

impl Lane {
    fn waiting(&self) -> &[u8] {
        &self.pending[self.start..]
    }

    /// Hashes this lane's whole waiting blocks on their own.
    fn hash_alone(&mut self) {
        let alone = self.waiting().len() / 64 * 64;
        if alone > 0 {
            // SAFETY: a lane exists only in a `Sha256Pair`, made only on a CPU with SHA-NI,
            // SSSE3 and SSE4.1.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                compress_one(&mut self.state, &self.pending[self.start..self.start + alone])
            };
            self.start += alone;
            self.hashed += alone as u64;
        }
    }
}

/// Octets a lane holds at most (about) while it waits for the other: beyond, it hashes alone.
/// Two bodies canonicalized in turn stay within a chunk or two of each other unless one turns
/// out much longer, so this bounds the memory of a pair without costing pairs.
pub const MAX_WAITING: usize = 64 * 1024;

/// Two SHA-256 computations fed independently and hashed together where both have blocks.
/// Made with [`Sha256Pair::new`] only on a CPU with SHA-NI.
pub struct Sha256Pair {
    lanes: [Lane; 2],
}

impl Sha256Pair {
    /// Two empty computations, or `None` when the CPU lacks SHA-NI (hash one at a time then).
    pub fn new() -> Option<Sha256Pair> {
        Sha256Pair::with_buffers([Vec::new(), Vec::new()])
    }

    /// [`Sha256Pair::new`] keeping the octets that wait in `buffers` (emptied first): a caller
    /// that hashes many pairs hands the buffers of one ([`Sha256Pair::finish_keeping`]) to the
    /// next instead of growing new ones.
    pub fn with_buffers(buffers: [Vec<u8>; 2]) -> Option<Sha256Pair> {
        available().then(|| Sha256Pair {
            lanes: buffers.map(|mut pending| {
                pending.clear();
                Lane { state: IV, pending, start: 0, hashed: 0, closed: false }
            }),
        })
    }

    /// Appends `bytes` to lane `lane` (0 or 1). Octets wait until the other lane has as many
    /// or is closed; call [`Sha256Pair::pump`] between writes to hash what can be hashed. A
    /// lane never holds much more than [`MAX_WAITING`]: past it, its whole blocks are hashed
    /// alone, whatever the other lane does (a body of a million empty lines and then a word
    /// comes out of the canonicalizer at once).
    pub fn write(&mut self, lane: usize, bytes: &[u8]) {
        let l = &mut self.lanes[lane];
        // Drop what is hashed once it is most of the buffer: amortized, each octet moves once.
        if l.start > 0 && l.start >= l.pending.len() / 2 {
            l.pending.drain(..l.start);
            l.start = 0;
        }
        l.pending.extend_from_slice(bytes);
        if l.waiting().len() > MAX_WAITING {
            l.hash_alone();
        }
    }

    /// The octets waiting in lane `lane` (written, not hashed yet).
    pub fn waiting(&self, lane: usize) -> usize {
        self.lanes[lane].waiting().len()
    }

    /// Marks lane `lane` as complete: nothing more will be written to it, so the other lane
    /// stops waiting for it.
    pub fn close(&mut self, lane: usize) {
        self.lanes[lane].closed = true;
    }

    /// Hashes the whole blocks both lanes have, together; with one lane closed, the other's
    /// whole blocks alone. The rest waits.
    pub fn pump(&mut self) {
        let [a, b] = &mut self.lanes;
        let both = a.waiting().len().min(b.waiting().len()) / 64 * 64;
        if both > 0 {
            // SAFETY: `new` made this pair only on a CPU with SHA-NI, SSSE3 and SSE4.1.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                compress_two(
                    &mut a.state,
                    &mut b.state,
                    &a.pending[a.start..a.start + both],
                    &b.pending[b.start..b.start + both],
                )
            };
            for l in [&mut *a, &mut *b] {
                l.start += both;
                l.hashed += both as u64;
            }
        }
        let (a_closed, b_closed) = (a.closed, b.closed);
        for (l, other_closed) in [(a, b_closed), (b, a_closed)] {
            if other_closed {
                l.hash_alone();
            }
        }
    }

    /// The octets written to lane `lane` so far.
    pub fn len(&self, lane: usize) -> u64 {
        let l = &self.lanes[lane];
        l.hashed + l.waiting().len() as u64
    }

    /// Whether nothing was written to lane `lane` yet.
    pub fn is_empty(&self, lane: usize) -> bool {
        self.len(lane) == 0
    }

    /// The two digests.
    pub fn finish(self) -> [[u8; 32]; 2] {
        self.finish_keeping().0
    }

    /// The two digests, and the buffers for [`Sha256Pair::with_buffers`].
    pub fn finish_keeping(mut self) -> ([[u8; 32]; 2], [Vec<u8>; 2]) {
        self.close(0);
        self.close(1);
        self.pump();
        let digests = self.lanes.each_mut().map(|l| {
            // Both lanes are closed and pumped: under one block is left.
            let rest = l.waiting();
            let (last, end) = padded_tail(rest, l.hashed + rest.len() as u64);
            // SAFETY: as in `pump`.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                compress_one(&mut l.state, &last[..end])
            };
            digest_of(&l.state)
        });
        (digests, self.lanes.map(|l| l.pending))
    }
}

/// The last one or two blocks of a message of `total` octets that ends in `rest` (under 64
/// octets), padded (FIPS 180-4 §5.1.1: 0x80, zeros to 56 mod 64, the length in bits), and
/// how many octets of them to hash.
fn padded_tail(rest: &[u8], total: u64) -> ([u8; 128], usize) {
    let mut last = [0u8; 128];
    last[..rest.len()].copy_from_slice(rest);
    last[rest.len()] = 0x80;
    let end = if rest.len() < 56 { 64 } else { 128 };
    last[end - 8..end].copy_from_slice(&(total * 8).to_be_bytes());
    (last, end)
}

/// The digest of a final chaining value (big-endian words).
fn digest_of(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// SHA-256 of two messages held in memory, their blocks hashed together (the longer one's
/// last alone), or `None` when the CPU lacks SHA-NI. For short messages, such as the header
/// data two DKIM signatures sign: no buffers, unlike [`Sha256Pair`].
pub fn digest_two(a: &[u8], b: &[u8]) -> Option<[[u8; 32]; 2]> {
    if !available() {
        return None;
    }
    let (full_a, full_b) = (a.len() / 64 * 64, b.len() / 64 * 64);
    let (tail_a, end_a) = padded_tail(&a[full_a..], a.len() as u64);
    let (tail_b, end_b) = padded_tail(&b[full_b..], b.len() as u64);
    let (mut sa, mut sb) = (IV, IV);
    let common = full_a.min(full_b);
    let mut rest_a = a[common..full_a].chunks_exact(64).chain(tail_a[..end_a].chunks_exact(64));
    let mut rest_b = b[common..full_b].chunks_exact(64).chain(tail_b[..end_b].chunks_exact(64));
    // SAFETY: `available()`: the CPU has SHA-NI, SSSE3 and SSE4.1; the slices given to the
    // kernels are whole blocks, the same length for both lanes in `compress_two`.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        compress_two(&mut sa, &mut sb, &a[..common], &b[..common]);
        loop {
            match (rest_a.next(), rest_b.next()) {
                (Some(x), Some(y)) => compress_two(&mut sa, &mut sb, x, y),
                (Some(x), None) => compress_one(&mut sa, x),
                (None, Some(y)) => compress_one(&mut sb, y),
                (None, None) => break,
            }
        }
    }
    Some([digest_of(&sa), digest_of(&sb)])
}

/// The state in the SHA-NI order (ABEF, CDGH) from the standard one (A..H).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2,ssse3,sse4.1")]
fn load_state(s: &[u32; 8]) -> (__m128i, __m128i) {
    // SAFETY: `s` is 32 octets: two unaligned 16-octet loads.
    let (dcba, efgh) = unsafe { (_mm_loadu_si128(s.as_ptr().cast()), _mm_loadu_si128(s.as_ptr().add(4).cast())) };
    let cdab = _mm_shuffle_epi32::<0xB1>(dcba);
    let efgh = _mm_shuffle_epi32::<0x1B>(efgh);
    (_mm_alignr_epi8::<8>(cdab, efgh), _mm_blend_epi16::<0xF0>(efgh, cdab))
}

/// The inverse of [`load_state`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2,ssse3,sse4.1")]
fn store_state(s: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
    let feba = _mm_shuffle_epi32::<0x1B>(abef);
    let dchg = _mm_shuffle_epi32::<0xB1>(cdgh);
    // SAFETY: `s` is 32 octets: two unaligned 16-octet stores.
    unsafe {
        _mm_storeu_si128(s.as_mut_ptr().cast(), _mm_blend_epi16::<0xF0>(feba, dchg));
        _mm_storeu_si128(s.as_mut_ptr().add(4).cast(), _mm_alignr_epi8::<8>(dchg, feba));
    }
}

/// The 16 message words of the 64-octet block at `p`, big-endian, as four vectors.
///
/// # Safety
/// `p` must be readable for 64 octets; the CPU must have SSSE3.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2,ssse3")]
#[inline]
unsafe fn words(p: *const u8) -> [__m128i; 4] {
    let bswap = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
    // SAFETY: four 16-octet loads inside the 64 octets the caller promises.
    std::array::from_fn(|i| unsafe { _mm_shuffle_epi8(_mm_loadu_si128(p.add(16 * i).cast()), bswap) })
}

/// The next message vector of the schedule from the four before it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3")]
#[inline]
fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
    let t = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8::<4>(w3, w2));
    _mm_sha256msg2_epu32(t, w3)
}

/// The round constants `4i..4i + 4` as a vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
#[inline]
fn k(i: usize) -> __m128i {
    let k = &K[4 * i..4 * i + 4];
    // SAFETY: `k` is 16 octets.
    unsafe { _mm_loadu_si128(k.as_ptr().cast()) }
}

/// Runs the compression function over the blocks of `a` in `sa` and those of `b` in `sb`,
/// the two streams' instructions alternating.
///
/// # Safety
/// The CPU must have SHA, SSSE3 and SSE4.1; `a` and `b` are as long, a multiple of 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn compress_two(sa: &mut [u32; 8], sb: &mut [u32; 8], a: &[u8], b: &[u8]) {
    debug_assert!(a.len() == b.len() && a.len().is_multiple_of(64));
    let (mut abef_a, mut cdgh_a) = load_state(sa);
    let (mut abef_b, mut cdgh_b) = load_state(sb);
    for (block_a, block_b) in a.chunks_exact(64).zip(b.chunks_exact(64)) {
        let saved = (abef_a, cdgh_a, abef_b, cdgh_b);
        // SAFETY: each block is 64 octets.
        let (mut wa, mut wb) = unsafe { (words(block_a.as_ptr()), words(block_b.as_ptr())) };
        for i in 0..16 {
            if i >= 4 {
                wa[i % 4] = schedule(wa[i % 4], wa[(i + 1) % 4], wa[(i + 2) % 4], wa[(i + 3) % 4]);
                wb[i % 4] = schedule(wb[i % 4], wb[(i + 1) % 4], wb[(i + 2) % 4], wb[(i + 3) % 4]);
            }
            let (ta, tb) = (_mm_add_epi32(wa[i % 4], k(i)), _mm_add_epi32(wb[i % 4], k(i)));
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

/// [`compress_two`] for one stream.
///
/// # Safety
/// The CPU must have SHA, SSSE3 and SSE4.1; `data.len()` is a multiple of 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn compress_one(s: &mut [u32; 8], data: &[u8]) {
    debug_assert!(data.len().is_multiple_of(64));
    let (mut abef, mut cdgh) = load_state(s);
    for block in data.chunks_exact(64) {
        let saved = (abef, cdgh);
        // SAFETY: the block is 64 octets.
        let mut w = unsafe { words(block.as_ptr()) };
        for i in 0..16 {
            if i >= 4 {
                w[i % 4] = schedule(w[i % 4], w[(i + 1) % 4], w[(i + 2) % 4], w[(i + 3) % 4]);
            }
            let t = _mm_add_epi32(w[i % 4], k(i));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, t);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32::<0x0E>(t));
        }
        abef = _mm_add_epi32(abef, saved.0);
        cdgh = _mm_add_epi32(cdgh, saved.1);
    }
    store_state(s, abef, cdgh);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn reference(b: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(b).into()
    }

    /// `digest_two` of every pair of lengths around the block and padding boundaries, either
    /// one the longer.
    #[test]
    fn digest_two_matches_sha2() {
        if !available() {
            eprintln!("skipped: this CPU has no SHA-NI");
            return;
        }
        let data: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        let lens = [0usize, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 700, 900, 2999];
        for &la in &lens {
            for &lb in &lens {
                let (a, b) = (&data[..la], &data[3000 - lb..]);
                assert_eq!(digest_two(a, b), Some([reference(a), reference(b)]), "lengths {la} and {lb}");
            }
        }
    }

    /// Two inputs of every length around the block and padding boundaries, written in
    /// pieces of various sizes in alternation, one lane closed early or late.
    #[test]
    fn pairs_match_sha2() {
        if !available() {
            eprintln!("skipped: this CPU has no SHA-NI");
            return;
        }
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let lens = [0usize, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4096, 4999];
        for &la in &lens {
            for &lb in &lens {
                for piece in [1usize, 7, 64, 500, 5000] {
                    let (a, b) = (&data[..la], &data[5000 - lb..]);
                    let mut p = Sha256Pair::new().unwrap();
                    let (mut ia, mut ib) = (a.chunks(piece), b.chunks(piece.max(3) - 2));
                    loop {
                        let (na, nb) = (ia.next(), ib.next());
                        if na.is_none() && nb.is_none() {
                            break;
                        }
                        match na {
                            Some(x) => p.write(0, x),
                            None => p.close(0),
                        }
                        match nb {
                            Some(x) => p.write(1, x),
                            None => p.close(1),
                        }
                        p.pump();
                    }
                    assert_eq!((p.len(0), p.len(1)), (la as u64, lb as u64));
                    assert_eq!(p.finish(), [reference(a), reference(b)], "lengths {la} {lb}, pieces {piece}");
                }
            }
        }
    }

    /// A lane written far ahead of the other holds at most about `MAX_WAITING` octets, and
    /// the digests are still right.
    #[test]
    fn a_lane_far_ahead_waits_within_its_bound() {
        if !available() {
            eprintln!("skipped: this CPU has no SHA-NI");
            return;
        }
        let long: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut p = Sha256Pair::new().unwrap();
        p.write(1, b"short");
        for piece in long.chunks(16 * 1024) {
            p.write(0, piece);
            p.pump();
            assert!(p.waiting(0) <= MAX_WAITING + 16 * 1024, "{}", p.waiting(0));
        }
        assert_eq!(p.finish(), [reference(&long), reference(b"short")]);
    }
}
