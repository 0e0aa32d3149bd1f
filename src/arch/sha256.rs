//! SHA-256 for body hashes, with the LF-to-CRLF expansion of LF-stored bodies done inside the
//! hashing loop.
//!
//! A body stored with LF line ends (mbox files, maildirs) is hashed in its wire form, a CR
//! before each bare LF. Expanding into a buffer and hashing that is two passes over every
//! octet. With SHA-NI, the rounds of a block are a chain of dependent instructions that leave
//! most of the core's ports idle, so the expansion of the next octets is nearly free when it
//! sits in the same loop as the hashing, with the hash state in registers:
//! [`Sha256::update_crlf`] spreads 32 input octets at a time into a small ring (as the AVX2
//! kernel of [`super::crlf`] does, in SSE registers) and hashes each whole 64-octet block of the ring one block
//! behind the writer (a block read right after the stores that wrote it waits for them).
//! [`Sha256::update_relaxed_lf`] does the same for relaxed canonicalization (RFC 6376
//! §3.4.4), rewriting its whitespace runs on the way.
//!
//! Plain updates and the fused kernels hash with SHA-NI where the CPU has it ([`Ni`], detected
//! once); elsewhere whole blocks go through sha2's compression function and the
//! fused calls return `None`, so that the caller expands through a buffer as before. Checked
//! against the `sha2` crate and the separate kernels in the tests below, and with the fuzz
//! targets' canonicalization oracle.

use super::crlf;
use sha2::digest::generic_array::GenericArray;

/// The SHA-256 initial hash value (FIPS 180-4 §5.3.3).
const H0: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// A running SHA-256 (FIPS 180-4).
#[derive(Clone, Debug)]
pub struct Sha256 {
    state: [u32; 8],
    /// The octets of the block not complete yet.
    buf: [u8; 64],
    buffered: usize,
    /// Octets hashed so far, for the padding.
    total: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl Sha256 {
    /// A hash of nothing yet.
    pub fn new() -> Sha256 {
        Sha256 { state: H0, buf: [0; 64], buffered: 0, total: 0 }
    }

    /// Hashes `data` next.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buffered > 0 {
            let take = (64 - self.buffered).min(data.len());
            self.buf[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < 64 {
                return;
            }
            let block = self.buf;
            compress(&mut self.state, &block);
            self.buffered = 0;
        }
        let whole = data.len() / 64 * 64;
        compress(&mut self.state, &data[..whole]);
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// The digest of everything hashed.
    pub fn finalize(mut self) -> [u8; 32] {
        // FIPS 180-4 §5.1.1: a 1 bit, zeros, and the length in bits as a 64-bit big-endian
        // number, to a whole number of blocks.
        let mut tail = [0u8; 128];
        tail[..self.buffered].copy_from_slice(&self.buf[..self.buffered]);
        tail[self.buffered] = 0x80;
        let n = if self.buffered + 9 <= 64 { 64 } else { 128 };
        tail[n - 8..n].copy_from_slice(&self.total.wrapping_mul(8).to_be_bytes());
        compress(&mut self.state, &tail[..n]);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// Hashes `input` with a CR put before every LF that has none (what [`crlf::to_crlf`]
    /// writes), and returns how many octets that was. `before` is the octet before `input`
    /// (anything but CR when there is none). `None`, with nothing hashed, when the CPU lacks
    /// SHA-NI.
    pub fn update_crlf(&mut self, input: &[u8], before: u8) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(ni) = Ni::new() {
            return Some(ni.update_crlf(self, input, before));
        }
        let _ = (input, before);
        None
    }

    /// Hashes the relaxed body canonicalization (RFC 6376 §3.4.4) of `content`, whole lines
    /// stored with (some) bare LFs, nothing trailing removed and no final line end added: a
    /// CR before each bare LF, each run of spaces and tabs inside a line made one space, and
    /// one before a line end (or ending `content`) dropped. Returns the octets hashed; `before`
    /// is the octet before `content`. `None`, with nothing hashed, when the CPU lacks SHA-NI or
    /// AVX2.
    pub fn update_relaxed_lf(&mut self, content: &[u8], before: u8) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(ni) = Ni::new() {
            return Some(ni.update_relaxed_lf(self, content, before));
        }
        let _ = (content, before);
        None
    }
}

/// Hashes `blocks` (a whole number of 64-octet blocks) into `state`.
fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % 64, 0);
    if blocks.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(ni) = Ni::new() {
        ni.blocks(state, blocks);
        return;
    }
    for b in blocks.chunks_exact(64) {
        sha2::compress256(state, &[*GenericArray::from_slice(b)]);
    }
}

/// Proof that the CPU running us has SHA-NI and SSE4.1: the kernels that need them are
/// methods of this type.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Ni(());

#[cfg(target_arch = "x86_64")]
impl Ni {
    /// `Some` when the CPU has SHA-NI and SSE4.1 (detected once per process).
    #[inline]
    pub fn new() -> Option<Ni> {
        use std::sync::atomic::{AtomicU8, Ordering};
        static HAS: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
        let known = match HAS.load(Ordering::Relaxed) {
            0 => {
                let yes = std::is_x86_feature_detected!("sha")
                    && std::is_x86_feature_detected!("sse4.1")
                    && std::is_x86_feature_detected!("popcnt");
                HAS.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
            v => v == 2,
        };
        known.then_some(Ni(()))
    }

    fn blocks(self, state: &mut [u32; 8], blocks: &[u8]) {
        // SAFETY: a Ni value exists only when the CPU has the features (`new`).
        unsafe { ni::blocks(state, blocks) }
    }

    fn update_crlf(self, h: &mut Sha256, input: &[u8], before: u8) -> usize {
        // SAFETY: as in `blocks`.
        unsafe { ni::update_crlf(h, input, before) }
    }

    fn update_relaxed_lf(self, h: &mut Sha256, content: &[u8], before: u8) -> usize {
        // SAFETY: as in `blocks`.
        unsafe { ni::update_relaxed_lf(h, content, before) }
    }
}

#[cfg(target_arch = "x86_64")]
mod ni {
    use super::crlf::avx2::SPREAD;
    use super::crlf::portable;
    use super::Sha256;
    use core::arch::x86_64::*;

    /// The round constants (FIPS 180-4 §4.2.2).
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

    /// The state as SHA-NI's rounds take it: words A, B, E, F in one register and C, D, G, H
    /// in the other.
    #[derive(Clone, Copy)]
    struct State {
        abef: __m128i,
        cdgh: __m128i,
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    #[inline]
    fn load(state: &[u32; 8]) -> State {
        // SAFETY: `state` is 32 octets: two unaligned 16-octet loads inside it.
        let (dcba, efgh) = unsafe {
            let p = state.as_ptr().cast::<__m128i>();
            (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)))
        };
        let cdab = _mm_shuffle_epi32::<0xB1>(dcba);
        let efgh = _mm_shuffle_epi32::<0x1B>(efgh);
        State { abef: _mm_alignr_epi8::<8>(cdab, efgh), cdgh: _mm_blend_epi16::<0xF0>(efgh, cdab) }
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    #[inline]
    fn store(st: State, state: &mut [u32; 8]) {
        let feba = _mm_shuffle_epi32::<0x1B>(st.abef);
        let dchg = _mm_shuffle_epi32::<0xB1>(st.cdgh);
        let dcba = _mm_blend_epi16::<0xF0>(feba, dchg);
        let hgef = _mm_alignr_epi8::<8>(dchg, feba);
        // SAFETY: `state` is 32 octets: two unaligned 16-octet stores inside it.
        unsafe {
            let p = state.as_mut_ptr().cast::<__m128i>();
            _mm_storeu_si128(p, dcba);
            _mm_storeu_si128(p.add(1), hgef);
        }
    }

    /// One block (FIPS 180-4 §6.2.2) with the SHA-NI instructions: four rounds per
    /// constant vector, the message schedule four words at a time.
    ///
    /// # Safety
    /// `data` must be readable for 64 octets.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    #[inline]
    unsafe fn block(st: &mut State, data: *const u8) {
        let mask = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
        let (abef0, cdgh0) = (st.abef, st.cdgh);
        let k = K.as_ptr().cast::<__m128i>();
        macro_rules! rounds4 {
            ($w:expr, $i:expr) => {{
                // SAFETY: K has 16 vectors of 4 words; $i < 16.
                let t = _mm_add_epi32($w, unsafe { _mm_loadu_si128(k.add($i)) });
                st.cdgh = _mm_sha256rnds2_epu32(st.cdgh, st.abef, t);
                st.abef = _mm_sha256rnds2_epu32(st.abef, st.cdgh, _mm_shuffle_epi32::<0x0E>(t));
            }};
        }
        macro_rules! schedule_rounds4 {
            ($w0:ident, $w1:ident, $w2:ident, $w3:ident, $i:expr) => {{
                let t = _mm_add_epi32(_mm_sha256msg1_epu32($w0, $w1), _mm_alignr_epi8::<4>($w3, $w2));
                $w0 = _mm_sha256msg2_epu32(t, $w3);
                rounds4!($w0, $i);
            }};
        }
        // SAFETY: `data` is readable for 64 octets (the caller's contract).
        let load = |i: usize| unsafe { _mm_shuffle_epi8(_mm_loadu_si128(data.add(16 * i).cast()), mask) };
        let mut w0 = load(0);
        rounds4!(w0, 0);
        let mut w1 = load(1);
        rounds4!(w1, 1);
        let mut w2 = load(2);
        rounds4!(w2, 2);
        let mut w3 = load(3);
        rounds4!(w3, 3);
        schedule_rounds4!(w0, w1, w2, w3, 4);
        schedule_rounds4!(w1, w2, w3, w0, 5);
        schedule_rounds4!(w2, w3, w0, w1, 6);
        schedule_rounds4!(w3, w0, w1, w2, 7);
        schedule_rounds4!(w0, w1, w2, w3, 8);
        schedule_rounds4!(w1, w2, w3, w0, 9);
        schedule_rounds4!(w2, w3, w0, w1, 10);
        schedule_rounds4!(w3, w0, w1, w2, 11);
        schedule_rounds4!(w0, w1, w2, w3, 12);
        schedule_rounds4!(w1, w2, w3, w0, 13);
        schedule_rounds4!(w2, w3, w0, w1, 14);
        schedule_rounds4!(w3, w0, w1, w2, 15);
        st.abef = _mm_add_epi32(st.abef, abef0);
        st.cdgh = _mm_add_epi32(st.cdgh, cdgh0);
    }

    /// # Safety
    /// The CPU must have SHA-NI, SSE4.1 and POPCNT; `data.len()` is a multiple of 64.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    pub unsafe fn blocks(state: &mut [u32; 8], data: &[u8]) {
        let mut st = load(state);
        for b in data.chunks_exact(64) {
            // SAFETY: `b` is 64 octets.
            unsafe { block(&mut st, b.as_ptr()) };
        }
        store(st, state);
    }

    /// 32 input octets as two SSE vectors. The kernels here use no 256-bit vectors: the SHA
    /// instructions have no VEX form, and with the upper halves of the vector registers dirty
    /// each would wait on them (measured about 100 times slower).
    #[derive(Clone, Copy)]
    struct Octets32 {
        lo: __m128i,
        hi: __m128i,
    }

    impl Octets32 {
        /// # Safety
        /// `p` must be readable for 32 octets.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
        #[inline]
        unsafe fn load(p: *const u8) -> Octets32 {
            // SAFETY: 32 readable octets (the caller's contract).
            unsafe { Octets32 { lo: _mm_loadu_si128(p.cast()), hi: _mm_loadu_si128(p.add(16).cast()) } }
        }

        /// Bit j set where octet j equals `c`.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
        #[inline]
        fn eq(self, c: u8) -> u32 {
            let c = _mm_set1_epi8(c as i8);
            let lo = _mm_movemask_epi8(_mm_cmpeq_epi8(self.lo, c)) as u32;
            let hi = _mm_movemask_epi8(_mm_cmpeq_epi8(self.hi, c)) as u32;
            lo | hi << 16
        }
    }

    /// The bare LFs of a block as a bit mask: an LF not after a CR, the octet before the block
    /// counting through `prev_cr` (bit 0), which then becomes whether the block ends in a CR.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    #[inline]
    fn bare_lfs(v: Octets32, prev_cr: &mut u32) -> u32 {
        let crs = v.eq(b'\r');
        let bare = v.eq(b'\n') & !((crs << 1) | *prev_cr);
        *prev_cr = crs >> 31;
        bare
    }

    /// Writes the 32 octets at `src` (`v`) to `dst` with a CR put before each octet flagged
    /// in `bare`, and returns the number written: as the AVX2 kernel of `crlf` does it, four
    /// 8-octet groups each spread by one `pshufb`.
    ///
    /// # Safety
    /// `src` must be readable for 32 octets and `dst` writable for 64.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    #[inline]
    unsafe fn spread(v: Octets32, bare: u32, src: *const u8, dst: *mut u8) -> usize {
        if bare == 0 {
            // SAFETY: `dst` is writable for 32 octets.
            unsafe {
                _mm_storeu_si128(dst.cast(), v.lo);
                _mm_storeu_si128(dst.add(16).cast(), v.hi);
            }
            return 32;
        }
        let cr_slot = _mm_insert_epi8::<15>(_mm_setzero_si128(), b'\r' as i32);
        for g in 0..4 {
            let m = ((bare >> (8 * g)) & 0xff) as usize;
            // Each group's place from a count of the flags before it, not from the previous
            // group's length: the four stores do not wait on each other.
            let o = 8 * g + (bare & ((1u32 << (8 * g)) - 1)).count_ones() as usize;
            // SAFETY: octets 8g .. 8g + 8 of `src` are readable; the store ends at
            // o + 16 <= 2 * 8g + 16 <= 64, inside what `dst` allows.
            unsafe {
                let x = _mm_or_si128(_mm_loadl_epi64(src.add(8 * g).cast()), cr_slot);
                let y = _mm_shuffle_epi8(x, _mm_loadu_si128(SPREAD[m].as_ptr().cast()));
                _mm_storeu_si128(dst.add(o).cast(), y);
            }
        }
        32 + bare.count_ones() as usize
    }

    /// Octets of canonical output in the ring before the oldest is moved to its start.
    const WRAP: usize = 1024;
    /// The ring's size: [`WRAP`] plus room for one more step (an expanded 32-octet block, 64
    /// octets, or a portable kernel's output with its whole-word slack, 2 × 32 + 32).
    const RING: usize = WRAP + 128;
    /// A block is hashed once this many octets follow it in the ring.
    const LAG: usize = 128;
    /// How far ahead of the reader the input is prefetched (see [`super::super::prefetch`]).
    const AHEAD: usize = super::super::prefetch::PREFETCH_DISTANCE;

    /// Canonical output on its way into the hash: written into a buffer of [`RING`] octets
    /// at `fill`, hashed up to `hashed`. The buffer is a separate local of the kernels, so
    /// that these counters and the state stay in registers (the compiler cannot tell the
    /// kernels' stores into a buffer inside this struct from writes to its other fields).
    struct Ring {
        fill: usize,
        hashed: usize,
        st: State,
        /// Octets written into the ring in this call (the caller's count).
        wrote: usize,
    }

    impl Ring {
        /// A ring holding the octets `h` has waiting for a whole block.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
        #[inline]
        fn new(h: &Sha256, buf: &mut [u8; RING]) -> Ring {
            buf[..h.buffered].copy_from_slice(&h.buf[..h.buffered]);
            Ring { fill: h.buffered, hashed: 0, st: load(&h.state), wrote: 0 }
        }

        /// After a write: hashes the oldest block once [`LAG`] octets follow it, and moves the
        /// unhashed octets to the start when the ring is past [`WRAP`].
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
        #[inline]
        fn step(&mut self, buf: &mut [u8; RING]) {
            if self.fill >= self.hashed + 64 + LAG {
                // SAFETY: hashed + 64 <= fill <= RING: the block is inside the ring.
                unsafe { block(&mut self.st, buf.as_ptr().add(self.hashed)) };
                self.hashed += 64;
            }
            if self.fill > WRAP {
                self.drain(buf);
                buf.copy_within(self.hashed..self.fill, 0);
                self.fill -= self.hashed;
                self.hashed = 0;
            }
        }

        /// Hashes every whole block in the ring.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
        #[inline]
        fn drain(&mut self, buf: &[u8; RING]) {
            while self.fill >= self.hashed + 64 {
                // SAFETY: as in `step`.
                unsafe { block(&mut self.st, buf.as_ptr().add(self.hashed)) };
                self.hashed += 64;
            }
        }

        /// Writes `octets` (a few) into the ring.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
        #[inline]
        fn push(&mut self, buf: &mut [u8; RING], octets: &[u8]) {
            buf[self.fill..self.fill + octets.len()].copy_from_slice(octets);
            self.fill += octets.len();
            self.wrote += octets.len();
            self.step(buf);
        }

        /// Writes `input` with a CR before each bare LF through the portable kernel (a piece
        /// of at most 32 octets).
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
        #[inline]
        fn push_crlf(&mut self, buf: &mut [u8; RING], input: &[u8], before: u8) {
            debug_assert!(input.len() <= 32);
            let n = portable::to_crlf(input, before, &mut buf[self.fill..]);
            self.fill += n;
            self.wrote += n;
            self.step(buf);
        }

        /// Everything whole hashed, the rest handed back to `h`, the state stored.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
        #[inline]
        fn finish(mut self, buf: &[u8; RING], h: &mut Sha256) -> usize {
            self.drain(buf);
            let rest = self.fill - self.hashed;
            h.buf[..rest].copy_from_slice(&buf[self.hashed..self.fill]);
            h.buffered = rest;
            h.total += self.wrote as u64;
            store(self.st, &mut h.state);
            self.wrote
        }
    }

    /// Prefetches the cache line [`AHEAD`] octets past `at` in `input` (nothing past its end).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    #[inline]
    fn prefetch_ahead(input: &[u8], at: usize) {
        if let Some(p) = input.get(at + AHEAD..) {
            if !p.is_empty() {
                // A hint: it never faults, and the address is inside `input` anyway.
                _mm_prefetch::<_MM_HINT_T0>(p.as_ptr().cast());
            }
        }
    }

    /// Hashes `input[from..to]` with a CR before each bare LF (`before` is the octet before
    /// `input`): 32 octets at a time spread into the ring, the rest through the portable
    /// kernel.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    #[inline]
    fn copy_crlf(r: &mut Ring, buf: &mut [u8; RING], input: &[u8], from: usize, to: usize, before: u8) {
        let src = input[..to].as_ptr();
        let mut i = from;
        let mut prev_cr = u32::from(if i == 0 { before } else { input[i - 1] } == b'\r');
        while i + 32 <= to {
            if i.is_multiple_of(64) {
                prefetch_ahead(input, i);
            }
            // SAFETY: i + 32 <= to <= input.len(): the load is inside `input`. The spread
            // writes at most 64 octets at `fill`, and fill <= WRAP leaves RING - WRAP = 128.
            let k = unsafe {
                let v = Octets32::load(src.add(i));
                let bare = bare_lfs(v, &mut prev_cr);
                spread(v, bare, src.add(i), buf.as_mut_ptr().add(r.fill))
            };
            r.fill += k;
            r.wrote += k;
            i += 32;
            r.step(buf);
        }
        if i < to {
            let prev = if i == 0 { before } else { input[i - 1] };
            r.push_crlf(buf, &input[i..to], prev);
        }
    }

    /// See [`Sha256::update_crlf`].
    ///
    /// # Safety
    /// The CPU must have SHA-NI, SSE4.1 and POPCNT.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    pub unsafe fn update_crlf(h: &mut Sha256, input: &[u8], before: u8) -> usize {
        let mut buf = [0u8; RING];
        let mut r = Ring::new(h, &mut buf);
        copy_crlf(&mut r, &mut buf, input, 0, input.len(), before);
        r.finish(&buf, h)
    }

    /// See [`Sha256::update_relaxed_lf`]: [`copy_crlf`] that also stops where relaxed
    /// canonicalization may have to rewrite (as [`super::crlf::to_crlf_relaxed`] does: a tab,
    /// or a space followed by a space, a tab, CR or LF), with each such whitespace run
    /// rewritten here and the copy going on after it. The test is made on the four masks of
    /// each block (space, tab, CR, LF), the last two needed for the bare LFs anyway.
    ///
    /// # Safety
    /// The CPU must have SHA-NI, SSE4.1 and POPCNT.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,popcnt")]
    pub unsafe fn update_relaxed_lf(h: &mut Sha256, content: &[u8], before: u8) -> usize {
        let mut buf = [0u8; RING];
        let mut r = Ring::new(h, &mut buf);
        let n = content.len();
        let src = content.as_ptr();
        let mut i = 0;
        while i < n {
            let mut prev_cr = u32::from(if i == 0 { before } else { content[i - 1] } == b'\r');
            // Copy, expanding, up to the first octet that may need rewriting.
            let mut stop = n;
            while i + 33 <= n {
                if i.is_multiple_of(64) {
                    prefetch_ahead(content, i);
                }
                // SAFETY: i + 33 <= n: the load is inside `content`.
                let v = unsafe { Octets32::load(src.add(i)) };
                let (sp, tab, cr, lf) = (v.eq(b' '), v.eq(b'\t'), v.eq(b'\r'), v.eq(b'\n'));
                // Whether the octet after each is a space, tab, CR or LF.
                let after = matches!(content[i + 32], b' ' | b'\t' | b'\r' | b'\n');
                let next_ws = (sp | tab | cr | lf) >> 1 | u32::from(after) << 31;
                let events = tab | (sp & next_ws);
                if events != 0 {
                    stop = i + events.trailing_zeros() as usize;
                    break;
                }
                let bare = lf & !((cr << 1) | prev_cr);
                prev_cr = cr >> 31;
                // SAFETY: as in `copy_crlf`.
                let k = unsafe { spread(v, bare, src.add(i), buf.as_mut_ptr().add(r.fill)) };
                r.fill += k;
                r.wrote += k;
                i += 32;
                r.step(&mut buf);
            }
            let at = if stop < n {
                copy_crlf(&mut r, &mut buf, content, i, stop, before);
                stop
            } else {
                // Fewer than 33 octets left: the portable kernel, which stops the same way.
                let prev = if i == 0 { before } else { content[i - 1] };
                let (used, wrote) = portable::to_crlf_relaxed(&content[i..], prev, &mut buf[r.fill..]);
                r.fill += wrote;
                r.wrote += wrote;
                r.step(&mut buf);
                i + used
            };
            if at == n {
                break;
            }
            // A whitespace run that may need rewriting starts at `at` (the copy stopped at its
            // first octet): one SP inside a line, nothing before a line end.
            let mut end = at + 1;
            while end < n && matches!(content[end], b' ' | b'\t') {
                end += 1;
            }
            let ends_line =
                end == n || content[end] == b'\n' || (content[end] == b'\r' && content.get(end + 1) == Some(&b'\n'));
            if !ends_line {
                r.push(&mut buf, b" ");
            }
            i = end;
        }
        r.finish(&buf, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::Digest as _;

    fn reference(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }

    /// Text with the octets that matter here: line ends of both kinds, spaces and tabs.
    fn texts() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                6 => proptest::sample::select(b"abcdefghij".to_vec()),
                2 => Just(b' '),
                1 => Just(b'\t'),
                2 => Just(b'\n'),
                1 => Just(b'\r'),
            ],
            0..3000,
        )
    }

    #[test]
    fn known_answers() {
        // FIPS 180-4 examples (NIST CSRC), and the two-block padding case.
        let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut h = Sha256::new();
        h.update(b"abc");
        assert_eq!(hex(h.finalize()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let mut h = Sha256::new();
        h.update(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq");
        assert_eq!(hex(h.finalize()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
        assert_eq!(hex(Sha256::new().finalize()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    proptest! {
        #[test]
        fn updates_in_any_pieces_match_sha2(data in proptest::collection::vec(any::<u8>(), 0..2000), cuts in proptest::collection::vec(0usize..2000, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = Sha256::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                h.update(&data[at..c]);
                at = c;
            }
            prop_assert_eq!(h.finalize(), reference(&data));
        }

        #[test]
        fn crlf_matches_expanding_then_hashing(prefix in proptest::collection::vec(any::<u8>(), 0..100), text in texts(), before_cr in any::<bool>()) {
            let before = if before_cr { b'\r' } else { b'x' };
            let mut expanded = vec![0u8; crlf::expanded_capacity(text.len())];
            let n = crlf::to_crlf(&text, before, &mut expanded);
            let mut h = Sha256::new();
            h.update(&prefix);
            let Some(wrote) = h.update_crlf(&text, before) else { return Ok(()) };
            prop_assert_eq!(wrote, n);
            let mut want = prefix.clone();
            want.extend_from_slice(&expanded[..n]);
            prop_assert_eq!(h.finalize(), reference(&want));
        }

        #[test]
        fn relaxed_matches_the_canonicalizer(prefix in proptest::collection::vec(any::<u8>(), 0..100), text in texts(), before_cr in any::<bool>()) {
            let before = if before_cr { b'\r' } else { b'x' };
            // The naive relaxed rewriting of these octets (RFC 6376 §3.4.4), lines kept as they
            // are cut, a CR before each bare LF (one after a CR `before` is not bare).
            let mut want = Vec::new();
            let mut i = 0;
            while i < text.len() {
                let c = text[i];
                if c == b' ' || c == b'\t' {
                    let mut end = i;
                    while end < text.len() && matches!(text[end], b' ' | b'\t') {
                        end += 1;
                    }
                    let ends_line = end == text.len() || text[end] == b'\n' || (text[end] == b'\r' && text.get(end + 1) == Some(&b'\n'));
                    if !ends_line {
                        want.push(b' ');
                    }
                    i = end;
                    continue;
                }
                let prev = if i == 0 { before } else { text[i - 1] };
                if c == b'\n' && prev != b'\r' {
                    want.push(b'\r');
                }
                want.push(c);
                i += 1;
            }
            let mut h = Sha256::new();
            h.update(&prefix);
            let Some(wrote) = h.update_relaxed_lf(&text, before) else { return Ok(()) };
            prop_assert_eq!(wrote, want.len());
            let mut all = prefix.clone();
            all.extend_from_slice(&want);
            prop_assert_eq!(h.finalize(), reference(&all));
        }
    }

    #[test]
    fn large_input_through_every_ring_position() {
        // Long enough to wrap the ring many times, with every alignment of the pending octets.
        let line = b"a line of mail text with words\n";
        let text: Vec<u8> = line.iter().cycle().take(100_000).copied().collect();
        let mut expanded = vec![0u8; crlf::expanded_capacity(text.len())];
        let n = crlf::to_crlf(&text, 0, &mut expanded);
        for pre in 0..64 {
            let prefix = vec![b'p'; pre];
            let mut h = Sha256::new();
            h.update(&prefix);
            if h.update_crlf(&text, 0).is_none() {
                return;
            }
            let mut want = prefix.clone();
            want.extend_from_slice(&expanded[..n]);
            assert_eq!(h.finalize(), reference(&want), "prefix {pre}");
        }
    }
}
