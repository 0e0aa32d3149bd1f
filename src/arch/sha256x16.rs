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
//! Owns the sixteen-lane compression kernel; [`Sha256x16`], messages streamed through the
//! lanes, each lane taking the next message when its own is done (the workers' body hashes:
//! `dkim::bodyhash::hash_many`); [`digest16`], sixteen whole messages of any lengths (the
//! `sha_lanes` bench); and [`preferred`], whether this CPU should use the
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

/// Appends the SHA-256 padding (FIPS 180-4 §5.1.1) of a message of `len` octets to `buf`: 0x80, zeros up to 56 modulo 64, the length in bits (big-endian).
pub fn pad(buf: &mut Vec<u8>, len: u64) {
    buf.push(0x80);
    let zeros = (119 - (len as usize % 64)) % 64;
    buf.resize(buf.len() + zeros, 0);
    buf.extend_from_slice(&(len * 8).to_be_bytes());
}

/// Busy lanes at or under which one stream at a time (SHA-NI) hashes as fast as the sixteen
/// lanes: a kernel call costs the same however many lanes are busy, and sixteen busy lanes run
/// at about twice one stream (`cargo bench --bench sha_lanes`).
pub const FEW: usize = 8;

/// Octets a lane of [`Sha256x16`] holds at most (about): past it, the lane's whole blocks are
/// hashed alone, whatever the other lanes do (a body of a million empty lines and then a word
/// comes out of the canonicalizer at once).
pub const MAX_WAITING: usize = 64 * 1024;

/// Sixteen SHA-256 computations fed independently, a message at a time in each lane, and
/// hashed together ([`Sha256x16::pump`]) over the whole blocks every busy lane has. A lane
/// whose message is done takes the next one ([`Sha256x16::start`]): a caller streams any
/// number of messages of any lengths through the lanes with a few dozen kilobytes a lane.
/// Made only on a CPU with AVX-512F/BW ([`available`]).
pub struct Sha256x16 {
    lanes: [Lane; 16],
}

/// One lane of [`Sha256x16`]: a chaining value and the octets written and not hashed yet.
struct Lane {
    state: [u32; 8],
    /// Octets written; those before `start` are hashed.
    pending: Vec<u8>,
    start: usize,
    /// Octets of the message written to this lane (the padding not counted).
    written: u64,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// No message: the lane's kernel work is thrown away.
    Idle,
    /// A message being written.
    Open,
    /// A message complete and padded (FIPS 180-4 §5.1.1), its last blocks waiting.
    Closed,
}

impl Lane {
    fn waiting(&self) -> &[u8] {
        &self.pending[self.start..]
    }

    /// Hashes the lane's whole waiting blocks one stream at a time (SHA-NI where the CPU has
    /// it).
    fn hash_alone(&mut self) {
        let whole = self.waiting().len() / 64 * 64;
        compress_rest(&mut self.state, &self.pending[self.start..self.start + whole]);
        self.start += whole;
    }
}

impl Sha256x16 {
    /// Sixteen idle lanes keeping the octets that wait in `buffers` (up to sixteen, emptied
    /// first; missing ones start empty): a caller that streams many batches hands the buffers
    /// of one ([`Sha256x16::into_buffers`]) to the next instead of growing new ones. `None`
    /// when the CPU lacks AVX-512F/BW.
    pub fn with_buffers(buffers: Vec<Vec<u8>>) -> Option<Sha256x16> {
        if !available() {
            return None;
        }
        let mut buffers = buffers.into_iter();
        Some(Sha256x16 {
            lanes: std::array::from_fn(|_| {
                let mut pending = buffers.next().unwrap_or_default();
                pending.clear();
                Lane { state: IV, pending, start: 0, written: 0, phase: Phase::Idle }
            }),
        })
    }

    /// Starts a message in idle lane `lane` (0..16).
    ///
    /// # Panics
    /// When the lane is not idle.
    pub fn start(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        assert_eq!(l.phase, Phase::Idle, "Sha256x16::start: lane {lane} is busy");
        l.pending.clear();
        (l.state, l.start, l.written, l.phase) = (IV, 0, 0, Phase::Open);
    }

    /// Appends `bytes` to the message of lane `lane`. Octets wait until every busy lane has
    /// a block; past [`MAX_WAITING`] octets the lane's whole blocks are hashed alone. Writing
    /// when little waits is cheap: what is hashed is dropped from the buffer's front, and
    /// whatever waits moves.
    ///
    /// # Panics
    /// When the lane's message is not open ([`Sha256x16::start`], not closed since).
    pub fn write(&mut self, lane: usize, bytes: &[u8]) {
        let l = &mut self.lanes[lane];
        assert_eq!(l.phase, Phase::Open, "Sha256x16::write: lane {lane} is not open");
        if l.start > 0 && l.start >= l.pending.len() / 2 {
            l.pending.drain(..l.start);
            l.start = 0;
        }
        l.pending.extend_from_slice(bytes);
        l.written += bytes.len() as u64;
        if l.waiting().len() > MAX_WAITING {
            l.hash_alone();
        }
    }

    /// The octets waiting in lane `lane` (written, not hashed yet).
    pub fn waiting(&self, lane: usize) -> usize {
        self.lanes[lane].waiting().len()
    }

    /// Ends the message of lane `lane`: its padding is appended, so that every octet it waits
    /// for is in whole blocks.
    ///
    /// # Panics
    /// When the lane's message is not open.
    pub fn close(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        assert_eq!(l.phase, Phase::Open, "Sha256x16::close: lane {lane} is not open");
        pad(&mut l.pending, l.written);
        l.phase = Phase::Closed;
    }

    /// Whether lane `lane` has no message (never started, or its digest taken).
    pub fn is_idle(&self, lane: usize) -> bool {
        self.lanes[lane].phase == Phase::Idle
    }

    /// Hashes, in the sixteen lanes together, the fewest whole blocks any busy lane has waiting;
    /// idle lanes read a busy lane's blocks and their results are thrown away. Returns the
    /// number of blocks (0 when no lane is busy, or a busy lane has less than a block waiting).
    pub fn pump(&mut self) -> usize {
        let busy = || self.lanes.iter().filter(|l| l.phase != Phase::Idle);
        let blocks = busy().map(|l| l.waiting().len() / 64).min().unwrap_or(0);
        if blocks == 0 {
            return 0;
        }
        let any = busy().next().map(|l| l.waiting()).unwrap_or_default();
        let reads: [&[u8]; 16] = std::array::from_fn(|i| match self.lanes[i].phase {
            Phase::Idle => any,
            _ => self.lanes[i].waiting(),
        });
        let mut states: [[u32; 8]; 16] = std::array::from_fn(|i| self.lanes[i].state);
        // SAFETY: lanes are made only on a CPU with AVX-512F and AVX-512BW (`with_buffers`),
        // and every lane reads octets with at least `blocks` whole blocks.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            compress16(&mut states, &reads, blocks, true)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = &reads;
        for (l, state) in self.lanes.iter_mut().zip(states) {
            if l.phase != Phase::Idle {
                l.state = state;
                l.start += 64 * blocks;
            }
        }
        blocks
    }

    /// Hashes the whole blocks waiting in lane `lane` on their own, one stream: for the last
    /// few messages of a batch, where sixteen lanes mostly idle would be slower.
    pub fn hash_alone(&mut self, lane: usize) {
        self.lanes[lane].hash_alone();
    }

    /// The digest of lane `lane`'s message and its length in octets, once it is closed and
    /// wholly hashed; the lane is then idle. `None` before.
    pub fn take(&mut self, lane: usize) -> Option<([u8; 32], u64)> {
        let l = &mut self.lanes[lane];
        if l.phase != Phase::Closed || !l.waiting().is_empty() {
            return None;
        }
        l.phase = Phase::Idle;
        Some((digest_of(&l.state), l.written))
    }

    /// The lanes' buffers, for [`Sha256x16::with_buffers`].
    pub fn into_buffers(self) -> Vec<Vec<u8>> {
        self.lanes.into_iter().map(|l| l.pending).collect()
    }
}

/// Hashes the whole blocks of `blocks` into `state`, one stream.
fn compress_rest(state: &mut [u32; 8], blocks: &[u8]) {
    use sha2::digest::generic_array::{typenum::U64, GenericArray};
    type Block = GenericArray<u8, U64>;
    const _: () = assert!(std::mem::size_of::<Block>() == 64 && std::mem::align_of::<Block>() == 1);
    // SAFETY: a block is 64 octets with the alignment of one (checked above), so the whole
    // blocks of `blocks` are that many blocks; one call lets sha2 keep its state in registers.
    let whole = unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<Block>(), blocks.len() / 64) };
    sha2::compress256(state, whole);
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

    /// Any number of messages of many lengths (more and fewer than the lanes, around the
    /// padding's edges, past `MAX_WAITING`) streamed through the lanes in pieces of several
    /// sizes, a lane taking the next message when its own is done, and the last few hashed
    /// alone: each digest and length is `sha2`'s.
    #[test]
    fn streamed_lanes_match_sha2() {
        if !available() {
            eprintln!("SKIPPED streamed_lanes_match_sha2: this CPU has no AVX-512F/BW");
            return;
        }
        let sizes = [0, 1, 55, 56, 63, 64, 65, 700, 4096, 9000, 20_000, 70_000, 200_000];
        for (count, piece) in [(1, 1000), (7, 64), (16, 4096), (17, 777), (40, 16 * 1024), (100, 100_000)] {
            let msgs: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let n = sizes[(i * 7 + count) % sizes.len()] + i;
                    (0..n).map(|j| (j * 13 + i) as u8).collect()
                })
                .collect();
            let mut lanes = Sha256x16::with_buffers(Vec::new()).expect("AVX-512 checked above");
            // What a lane holds at most: up to `MAX_WAITING` plus one write waiting (past that
            // it is hashed), as much again already hashed (dropped once it is half the buffer),
            // and the padding; the buffer's capacity at most twice that.
            let bound = 2 * (MAX_WAITING + piece) + 128;
            // Per lane: the message and how much of it is written.
            let mut feeds: [Option<(usize, usize)>; 16] = [None; 16];
            let mut next = 0;
            let mut got = vec![None; count];
            loop {
                for (lane, feed) in feeds.iter_mut().enumerate() {
                    if feed.is_none() && next < count {
                        lanes.start(lane);
                        *feed = Some((next, 0));
                        next += 1;
                    }
                    if let Some((i, at)) = feed {
                        // Written until a few blocks wait, as `hash_many` does.
                        while lanes.waiting(lane) < 256 && *at < msgs[*i].len() {
                            let end = (*at + piece).min(msgs[*i].len());
                            lanes.write(lane, &msgs[*i][*at..end]);
                            *at = end;
                            assert!(lanes.lanes[lane].pending.capacity() <= 2 * bound, "lane {lane} holds too much");
                        }
                        if *at == msgs[*i].len() && lanes.waiting(lane) < 256 {
                            lanes.close(lane);
                            *at = usize::MAX;
                        }
                    }
                }
                let busy = feeds.iter().flatten().count();
                if busy == 0 {
                    break;
                }
                if next == count && busy <= 3 {
                    for (lane, feed) in feeds.iter().enumerate() {
                        if let Some((i, at)) = *feed {
                            if at != usize::MAX {
                                for rest in msgs[i][at..].chunks(piece) {
                                    lanes.write(lane, rest);
                                    assert!(
                                        lanes.lanes[lane].pending.capacity() <= 2 * bound,
                                        "lane {lane} holds too much"
                                    );
                                }
                                lanes.close(lane);
                            }
                            lanes.hash_alone(lane);
                        }
                    }
                } else {
                    // Every open lane has blocks waiting, every closed one at least its last.
                    assert!(lanes.pump() > 0);
                }
                for (lane, feed) in feeds.iter_mut().enumerate() {
                    if let Some((i, _)) = *feed {
                        if let Some(done) = lanes.take(lane) {
                            assert!(lanes.is_idle(lane));
                            got[i] = Some(done);
                            *feed = None;
                        }
                    }
                }
            }
            for (i, m) in msgs.iter().enumerate() {
                assert_eq!(
                    got[i],
                    Some((reference(m), m.len() as u64)),
                    "{count} messages: message {i}, {} octets",
                    m.len()
                );
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
