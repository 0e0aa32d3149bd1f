//! Line-end kernels for body canonicalization: finding a bare LF, and copying text with a CR
//! put before every bare LF (the wire form of a message stored with LF line ends, as mbox files
//! and maildirs on Unix keep them), also stopping where relaxed canonicalization has whitespace
//! to rewrite.
//!
//! Both run over every octet of a body next to SHA-256, so their speed decides how close
//! canonicalize-and-hash gets to hashing alone. Layout after memchr (STYLE.md): an AVX2 kernel
//! behind a token type that can only be made when the CPU has AVX2 ([`Avx2::new`]), a portable
//! word-at-a-time fallback, and a byte-at-a-time oracle in the tests that both are checked
//! against. The public functions pick the kernel at run time.
//!
//! The `unsafe` here is the AVX2 kernels and the calls into them, each with a `// SAFETY:` note;
//! the crate's other `unsafe` (prefetch hints, memory maps, locks) is in [`super::prefetch`] and
//! `pipeline::os`.

/// Whether `b` holds an LF not preceded by CR. `before` is the octet before `b` (anything but
/// CR when `b` starts the text).
pub fn has_bare_lf(b: &[u8], before: u8) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = Avx2::new() {
        return k.has_bare_lf(b, before);
    }
    portable::has_bare_lf(b, before)
}

/// Copies `input` into `out` with a CR put before every LF that has none, and returns the
/// number of octets written. `before` is the octet before `input` (anything but CR when there
/// is none).
///
/// # Panics
/// When `out` is shorter than [`expanded_capacity`]`(input.len())`: the kernels write whole
/// words and may write past the end of the output they return.
pub fn to_crlf(input: &[u8], before: u8, out: &mut [u8]) -> usize {
    assert!(out.len() >= expanded_capacity(input.len()), "to_crlf: output buffer too small");
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = Avx2::new() {
        return k.to_crlf(input, before, out);
    }
    portable::to_crlf(input, before, out)
}

/// [`to_crlf`] that stops at the first octet where relaxed body canonicalization (RFC 6376
/// §3.4.4) may have to rewrite: a tab, or a space followed by a space, a tab, CR or the end
/// of `input`. Returns how much of `input` was copied (the position of that octet, or
/// `input.len()`) and how many octets were written. Between such octets, text with its line
/// ends made CRLF is already relaxed-canonical, so LF-stored lines are expanded and checked in
/// one pass.
///
/// One rewrite is made on the way instead of stopping: a single space that ends an LF-stored
/// line (a space, then an LF, after an octet that is neither space nor tab, `before` counting
/// at the start) is written as the CR of that line end. Relaxed canonicalization drops the
/// space, and the CR the wire needs goes in its place, so the length stays. format=flowed mail
/// (RFC 3676) ends most lines that way. A space after a space or tab is never rewritten: the
/// run it belongs to is an event (at `before`'s side, a space then LF at the start of `input`
/// is reported as the event).
///
/// # Panics
/// When `out` is shorter than [`expanded_capacity`]`(input.len())`: like [`to_crlf`], the
/// kernels write whole words, past the octets they report.
pub fn to_crlf_relaxed(input: &[u8], before: u8, out: &mut [u8]) -> (usize, usize) {
    assert!(out.len() >= expanded_capacity(input.len()), "to_crlf: output buffer too small");
    #[cfg(target_arch = "x86_64")]
    if Avx2::new().is_some() {
        // SAFETY: the CPU has AVX2, BMI1 and POPCNT (`Avx2::new`), and `out` has the room
        // (asserted).
        return unsafe { avx2::to_crlf_relaxed(input, before, out) };
    }
    portable::to_crlf_relaxed(input, before, out)
}

/// The first position at or after `from` where relaxed body canonicalization (RFC 6376
/// §3.4.4) may have to rewrite `b`: a tab; a space followed by a space, CR or LF, or ending
/// `b`; and with `bare`, every LF. Between such positions the text is already canonical, as
/// long as its line ends are CRLF (hence `bare` for text that may hold bare LFs). A space
/// before a CR that starts no CRLF is reported too; the caller finds nothing to change there.
pub fn relaxed_event(b: &[u8], from: usize, bare: bool) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = Avx2::new() {
        return k.relaxed_event(b, from, bare);
    }
    portable::relaxed_event(b, from, bare)
}

/// The output room [`to_crlf`] needs for `n` input octets: each may gain a CR, plus one vector
/// of slack for whole-word writes.
pub const fn expanded_capacity(n: usize) -> usize {
    2 * n + 32
}

/// Word-at-a-time kernels for any CPU (crate-internal; public to the fuzz targets).
#[cfg(not(feature = "fuzzing"))]
#[path = "crlf_portable.rs"]
pub(crate) mod portable;
/// Word-at-a-time kernels for any CPU (public here for the fuzz targets only).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "crlf_portable.rs"]
pub mod portable;

/// Proof that the CPU running us has AVX2: the AVX2 kernels are methods of this type.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// `Some` when the CPU has AVX2, and with it BMI1 and POPCNT, which every AVX2 CPU has and
    /// the kernels use for bit counts (detected once per process, then a cached flag).
    #[inline]
    pub fn new() -> Option<Avx2> {
        // Detected once; later calls read one relaxed atomic (memchr caches the same way).
        use std::sync::atomic::{AtomicU8, Ordering};
        static HAS_AVX2: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
        let known = match HAS_AVX2.load(Ordering::Relaxed) {
            0 => {
                let yes = std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("bmi1")
                    && std::is_x86_feature_detected!("popcnt");
                HAS_AVX2.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
            v => v == 2,
        };
        known.then_some(Avx2(()))
    }

    /// See [`has_bare_lf`].
    #[inline]
    pub fn has_bare_lf(self, b: &[u8], before: u8) -> bool {
        // SAFETY: an Avx2 value exists only when the CPU has AVX2 (`new`).
        unsafe { avx2::has_bare_lf(b, before) }
    }

    /// See [`relaxed_event`].
    #[inline]
    pub fn relaxed_event(self, b: &[u8], from: usize, bare: bool) -> Option<usize> {
        // SAFETY: an Avx2 value exists only when the CPU has AVX2 (`new`).
        unsafe { avx2::relaxed_event(b, from, bare) }
    }

    /// See [`to_crlf`].
    ///
    /// # Panics
    /// When `out` is shorter than [`expanded_capacity`]`(input.len())`.
    #[inline]
    pub fn to_crlf(self, input: &[u8], before: u8, out: &mut [u8]) -> usize {
        assert!(out.len() >= expanded_capacity(input.len()), "to_crlf: output buffer too small");
        // SAFETY: the CPU has AVX2, BMI1 and POPCNT (`new`), and `out` has the room the kernel
        // needs (asserted).
        unsafe { avx2::to_crlf(input, before, out) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn has_bare_lf(b: &[u8], before: u8) -> bool {
        let n = b.len();
        if n == 0 {
            return false;
        }
        if b[0] == b'\n' && before != b'\r' {
            return true;
        }
        let lf = _mm256_set1_epi8(b'\n' as i8);
        let cr = _mm256_set1_epi8(b'\r' as i8);
        let p = b.as_ptr();
        let mut i = 1;
        // Two vectors per round: octets i.. and the octets before them, i-1...
        while i + 64 <= n {
            // SAFETY: i - 1 >= 0 and i + 64 <= n: all four loads are inside `b`.
            let (c0, c1, p0, p1) = unsafe {
                (
                    _mm256_loadu_si256(p.add(i).cast()),
                    _mm256_loadu_si256(p.add(i + 32).cast()),
                    _mm256_loadu_si256(p.add(i - 1).cast()),
                    _mm256_loadu_si256(p.add(i + 31).cast()),
                )
            };
            let b0 = _mm256_andnot_si256(_mm256_cmpeq_epi8(p0, cr), _mm256_cmpeq_epi8(c0, lf));
            let b1 = _mm256_andnot_si256(_mm256_cmpeq_epi8(p1, cr), _mm256_cmpeq_epi8(c1, lf));
            let any = _mm256_or_si256(b0, b1);
            if _mm256_testz_si256(any, any) == 0 {
                return true;
            }
            i += 64;
        }
        // The rest, with the octet before it.
        super::portable::has_bare_lf(&b[i..], b[i - 1])
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn relaxed_event(b: &[u8], from: usize, bare: bool) -> Option<usize> {
        let n = b.len();
        let p = b.as_ptr();
        let (tab, sp, cr, lf) = (
            _mm256_set1_epi8(b'\t' as i8),
            _mm256_set1_epi8(b' ' as i8),
            _mm256_set1_epi8(b'\r' as i8),
            _mm256_set1_epi8(b'\n' as i8),
        );
        // All ones when every LF is an event, else zero.
        let lf_events = _mm256_set1_epi8(if bare { -1 } else { 0 });
        let mut i = from;
        // Each round looks at octets i..i+32 and, for the space rule, at the octet after each.
        while i + 33 <= n {
            // SAFETY: i + 33 <= n: both loads are inside `b`.
            let (v, next) = unsafe { (_mm256_loadu_si256(p.add(i).cast()), _mm256_loadu_si256(p.add(i + 1).cast())) };
            let next_ends_or_spaces = _mm256_or_si256(
                _mm256_or_si256(_mm256_cmpeq_epi8(next, sp), _mm256_cmpeq_epi8(next, cr)),
                _mm256_cmpeq_epi8(next, lf),
            );
            let events = _mm256_or_si256(
                _mm256_or_si256(
                    _mm256_cmpeq_epi8(v, tab),
                    _mm256_and_si256(_mm256_cmpeq_epi8(v, sp), next_ends_or_spaces),
                ),
                _mm256_and_si256(_mm256_cmpeq_epi8(v, lf), lf_events),
            );
            let m = _mm256_movemask_epi8(events) as u32;
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i += 32;
        }
        super::portable::relaxed_event(b, i, bare)
    }

    /// For each pattern of bare LFs among eight input octets (bit j: octet j), the `pshufb`
    /// indices that spread the eight octets out with a CR before each flagged one. Index 15
    /// picks the CR that the kernel keeps in the top octet of its source vector; the octets
    /// past the output (8 + the count of flags) are don't-care, as the next store covers them.
    static SPREAD: [[u8; 16]; 256] = {
        let mut t = [[0x80u8; 16]; 256];
        let mut m = 0;
        while m < 256 {
            let mut p = 0;
            let mut j = 0;
            while j < 8 {
                if m & (1 << j) != 0 {
                    t[m][p] = 15;
                    p += 1;
                }
                t[m][p] = j as u8;
                p += 1;
                j += 1;
            }
            m += 1;
        }
        t
    };

    /// The bare LFs of a 32-octet block as a bit mask, from its LF and CR comparisons: an LF
    /// not after a CR, the octet before the block counting through `prev_cr` (bit 0), which
    /// then becomes whether the block ends in a CR.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn bare_lfs(is_lf: __m256i, is_cr: __m256i, prev_cr: &mut u32) -> u32 {
        let lfs = _mm256_movemask_epi8(is_lf) as u32;
        let crs = _mm256_movemask_epi8(is_cr) as u32;
        let bare = lfs & !((crs << 1) | *prev_cr);
        *prev_cr = crs >> 31;
        bare
    }

    /// Writes the 32-octet block `v` to `dst` with a CR put before each octet flagged in
    /// `bare`, and returns the number written (32 plus the flags), without a branch on the
    /// flags: the block goes out as four 8-octet groups, each spread by one `pshufb` from
    /// [`SPREAD`] and stored as 16 octets at an offset counted by `popcnt`. Mail lines are
    /// 40-80 octets, so whether a block holds an LF is a coin toss that a branch mispredicts
    /// about every other block.
    ///
    /// # Safety
    /// The CPU must have AVX2 and POPCNT; `dst` must be writable for 64 octets (each group's
    /// store reaches 16 octets past where its output starts).
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn spread_block(v: __m256i, bare: u32, dst: *mut u8) -> usize {
        // The CR the spread indices pick (octet 15), over a group moved into the low half.
        let cr_slot = _mm_insert_epi8::<15>(_mm_setzero_si128(), b'\r' as i32);
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let groups = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        // Where each group's output starts: 8 per group before it, plus the CRs they gain.
        let starts = [
            0,
            8 + (bare & 0xff).count_ones() as usize,
            16 + (bare & 0xffff).count_ones() as usize,
            24 + (bare & 0xff_ffff).count_ones() as usize,
        ];
        for (g, (&x, &at)) in groups.iter().zip(&starts).enumerate() {
            let m = ((bare >> (8 * g)) & 0xff) as usize;
            let x = _mm_or_si128(_mm_move_epi64(x), cr_slot);
            let y = _mm_shuffle_epi8(x, _mm_loadu_si128(SPREAD[m].as_ptr().cast()));
            // SAFETY: at + 16 <= 24 + 8 + 16 + 16 = 64, inside what `dst` allows.
            unsafe { _mm_storeu_si128(dst.add(at).cast(), y) };
        }
        32 + bare.count_ones() as usize
    }

    /// [`spread_block`] for a block with at most one bare LF, the common case in text (lines
    /// longer than a block): the block is stored as it is, a CR over the LF's place, and the
    /// input from the LF on stored again one octet further, which reads up to 32 octets past
    /// the block. Three stores and no table. A block with no LF (`bare == 0`) writes a
    /// harmless shifted copy past its output: past the output reported in the end, or covered
    /// by the next block's, always inside the capacity.
    ///
    /// # Safety
    /// The CPU must have AVX2 and BMI1; `bare` has at most one bit set; `src` (the block) must
    /// be readable for 64 octets and `dst` writable for 65.
    #[target_feature(enable = "avx2,bmi1")]
    #[inline]
    unsafe fn one_lf_block(v: __m256i, bare: u32, src: *const u8, dst: *mut u8) -> usize {
        // 32 when there is no LF.
        let p = bare.trailing_zeros() as usize;
        // SAFETY: p <= 32, so the load ends at src + 64 and the last store at dst + 65, both
        // inside what the caller allows.
        unsafe {
            _mm256_storeu_si256(dst.cast(), v);
            *dst.add(p) = b'\r';
            _mm256_storeu_si256(dst.add(p + 1).cast(), _mm256_loadu_si256(src.add(p).cast()));
        }
        32 + usize::from(bare != 0)
    }

    /// One 32-octet block: [`one_lf_block`] when it has at most one bare LF, 64 octets of
    /// input are left from `i`, and no octet the caller rewrote in `v` (the flags of
    /// `rewritten`) lies at or after that LF, since `one_lf_block` stores the input from the LF
    /// again as it is; else [`spread_block`]. Returns the octets written.
    ///
    /// # Safety
    /// The CPU must have AVX2, BMI1 and POPCNT; `i + 32 <= input.len()`, `v` is the block at
    /// `i` (rewritten where `rewritten` says), and `dst` is writable for 65 octets.
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    #[inline]
    unsafe fn expand_block(v: __m256i, bare: u32, rewritten: u32, input: &[u8], i: usize, dst: *mut u8) -> usize {
        // At or after the LF: shifted by its position (32, shifting everything out, when the
        // block has no bare LF).
        let rewritten_from_lf = u64::from(rewritten) >> bare.trailing_zeros();
        if bare & bare.wrapping_sub(1) == 0 && i + 64 <= input.len() && rewritten_from_lf == 0 {
            // SAFETY: 64 octets from i are inside `input`; `dst` as the caller promises.
            unsafe { one_lf_block(v, bare, input.as_ptr().add(i), dst) }
        } else {
            // SAFETY: as the caller promises.
            unsafe { spread_block(v, bare, dst) }
        }
    }

    /// # Safety
    /// The CPU must have AVX2, BMI1 and POPCNT, and
    /// `out.len() >= expanded_capacity(input.len())`.
    ///
    /// Without a branch per line: mail lines are short (40-80 octets), and a kernel that
    /// stopped at each LF mispredicted about once a line. Each 32-octet block goes out through
    /// [`expand_block`], whose one branch (two bare LFs in a block, or the last 64 octets of
    /// the input) is rare in text.
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub unsafe fn to_crlf(input: &[u8], before: u8, out: &mut [u8]) -> usize {
        let n = input.len();
        let src = input.as_ptr();
        let dst = out.as_mut_ptr();
        let (lf, cr) = (_mm256_set1_epi8(b'\n' as i8), _mm256_set1_epi8(b'\r' as i8));
        let mut i = 0;
        let mut o = 0;
        // Bit 0: whether the octet before the current block is a CR.
        let mut prev_cr = u32::from(before == b'\r');
        while i + 32 <= n {
            // SAFETY: i + 32 <= n, so the load is inside `input`.
            let v = unsafe { _mm256_loadu_si256(src.add(i).cast()) };
            let bare = bare_lfs(_mm256_cmpeq_epi8(v, lf), _mm256_cmpeq_epi8(v, cr), &mut prev_cr);
            // SAFETY: i + 32 <= n. Each input octet becomes at most two, so o <= 2 * i and
            // o + 65 <= 2 * (i + 32) + 1 <= 2 * n + 1 < out.len().
            o += unsafe { expand_block(v, bare, 0, input, i, dst.add(o)) };
            i += 32;
        }
        let prev = if i == 0 { before } else { input[i - 1] };
        o + super::portable::to_crlf(&input[i..], prev, &mut out[o..])
    }

    /// # Safety
    /// The CPU must have AVX2, BMI1 and POPCNT, and
    /// `out.len() >= expanded_capacity(input.len())`.
    ///
    /// [`super::to_crlf_relaxed`]: [`to_crlf`] with the test of [`relaxed_event`] (a tab also
    /// counting as what may follow a space, an LF not) on each block; the first block with an
    /// event is expanded whole and counted up to it. A space before an LF becomes a CR in the
    /// block before it is expanded, and counts as a CR for the LF after it: a bare LF no more.
    /// (Its octet before is never a space or tab there: that would be an event first, or
    /// `before`, checked at the start.)
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub unsafe fn to_crlf_relaxed(input: &[u8], before: u8, out: &mut [u8]) -> (usize, usize) {
        let n = input.len();
        if matches!(before, b' ' | b'\t') && input.starts_with(b" \n") {
            // The space continues a run the caller is rewriting.
            return (0, 0);
        }
        let src = input.as_ptr();
        let dst = out.as_mut_ptr();
        let (tab, sp, cr, lf) = (
            _mm256_set1_epi8(b'\t' as i8),
            _mm256_set1_epi8(b' ' as i8),
            _mm256_set1_epi8(b'\r' as i8),
            _mm256_set1_epi8(b'\n' as i8),
        );
        let mut i = 0;
        let mut o = 0;
        let mut prev_cr = u32::from(before == b'\r');
        // Each round looks at octets i..i+32 and, for the space rule, at the octet after each.
        while i + 33 <= n {
            // SAFETY: i + 33 <= n: both loads are inside `input`.
            let (v, next) =
                unsafe { (_mm256_loadu_si256(src.add(i).cast()), _mm256_loadu_si256(src.add(i + 1).cast())) };
            let (is_tab, is_sp) = (_mm256_cmpeq_epi8(v, tab), _mm256_cmpeq_epi8(v, sp));
            let next_ws_or_cr = _mm256_or_si256(
                _mm256_or_si256(_mm256_cmpeq_epi8(next, sp), _mm256_cmpeq_epi8(next, tab)),
                _mm256_cmpeq_epi8(next, cr),
            );
            let events = _mm256_or_si256(is_tab, _mm256_and_si256(is_sp, next_ws_or_cr));
            let ev = _mm256_movemask_epi8(events) as u32;
            // Spaces that end an LF line, rewritten as the CR of that line end.
            let trailing = _mm256_and_si256(is_sp, _mm256_cmpeq_epi8(next, lf));
            let v = _mm256_blendv_epi8(v, cr, trailing);
            let bare = bare_lfs(_mm256_cmpeq_epi8(v, lf), _mm256_cmpeq_epi8(v, cr), &mut prev_cr);
            let rewritten = _mm256_movemask_epi8(trailing) as u32;
            // SAFETY: as in `to_crlf` (i + 32 <= n here too).
            let wrote = unsafe { expand_block(v, bare, rewritten, input, i, dst.add(o)) };
            if ev != 0 {
                // The whole block went out, but only its octets before the event count: the
                // caller writes from there on again.
                let k = ev.trailing_zeros() as usize;
                return (i + k, o + k + (bare & ((1u32 << k) - 1)).count_ones() as usize);
            }
            o += wrote;
            i += 32;
        }
        // The octet before the rest as written: a CR where a space was rewritten.
        let prev = match i {
            0 => before,
            _ if prev_cr == 1 => b'\r',
            _ => input[i - 1],
        };
        let (used, wrote) = super::portable::to_crlf_relaxed(&input[i..], prev, &mut out[o..]);
        (i + used, o + wrote)
    }
}

// Also the oracle of the fuzz targets (fuzz/fuzz_targets/canon.rs), which reach it through the
// `fuzzing` feature. Not an API: slow on purpose.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod naive {
    //! Byte-at-a-time references for the kernels, written from their contracts.

    /// [`super::to_crlf`]: every LF without a CR before it gets one.
    pub fn to_crlf(b: &[u8], before: u8) -> Vec<u8> {
        let mut v = vec![];
        let mut prev = before;
        for &c in b {
            if c == b'\n' && prev != b'\r' {
                v.push(b'\r');
            }
            v.push(c);
            prev = c;
        }
        v
    }

    /// [`super::to_crlf_relaxed`]: how much is copied and the copy, up to the first octet a
    /// relaxed rewrite may touch; a single space that ends an LF line is written as its CR.
    pub fn to_crlf_relaxed(b: &[u8], before: u8) -> (usize, Vec<u8>) {
        let mut out = vec![];
        let mut prev = before;
        for (i, &c) in b.iter().enumerate() {
            let next = b.get(i + 1).copied();
            if c == b'\t' || (c == b' ' && matches!(next, None | Some(b' ' | b'\t' | b'\r' | b'\n'))) {
                if c == b' ' && next == Some(b'\n') && !matches!(prev, b' ' | b'\t') {
                    out.push(b'\r');
                    prev = b'\r';
                    continue;
                }
                return (i, out);
            }
            if c == b'\n' && prev != b'\r' {
                out.push(b'\r');
            }
            out.push(c);
            prev = c;
        }
        (b.len(), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_has_bare_lf(b: &[u8], before: u8) -> bool {
        (0..b.len()).any(|i| b[i] == b'\n' && (if i == 0 { before } else { b[i - 1] }) != b'\r')
    }

    /// Inputs of every length up to a few vectors, at every offset, made of the octets that
    /// matter (CR, LF, text) in pseudo-random order; plus long LF-only and CRLF-only texts.
    fn inputs() -> Vec<Vec<u8>> {
        let mut v = vec![];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = [b'\n', b'\r', b'a', b'a', b'a', b'a', b' ', 0x8a];
        for len in 0..200 {
            for _ in 0..6 {
                let mut x = Vec::with_capacity(len);
                for _ in 0..len {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    x.push(alphabet[(seed % alphabet.len() as u64) as usize]);
                }
                v.push(x);
            }
        }
        for line_end in [&b"\n"[..], b"\r\n"] {
            let mut x = vec![];
            for i in 0..300 {
                x.extend(std::iter::repeat_n(b'x', i % 97));
                x.extend_from_slice(line_end);
            }
            v.push(x);
        }
        // A single bare LF at every position of a CRLF text.
        let crlf: Vec<u8> = b"abcdefg\r\n".repeat(30);
        for at in 0..crlf.len() {
            let mut x = crlf.clone();
            x.insert(at, b'\n');
            v.push(x);
        }
        v
    }

    type Kernels = Vec<(&'static str, fn(&[u8], u8) -> bool, fn(&[u8], u8, &mut [u8]) -> usize)>;

    fn kernels() -> Kernels {
        let mut k: Kernels = vec![("portable", portable::has_bare_lf, portable::to_crlf)];
        #[cfg(target_arch = "x86_64")]
        if Avx2::new().is_some() {
            k.push((
                "avx2",
                |b, p| Avx2::new().unwrap().has_bare_lf(b, p),
                |b, p, o| Avx2::new().unwrap().to_crlf(b, p, o),
            ));
        }
        k.push(("dispatch", has_bare_lf, to_crlf));
        k
    }

    /// `input` copied to the end of a mapping whose next page is inaccessible, so that a
    /// kernel reading past the end of its input faults instead of passing.
    #[cfg(unix)]
    struct Guarded {
        base: *mut libc::c_void,
        len: usize,
        at: usize,
        n: usize,
    }

    #[cfg(unix)]
    impl Guarded {
        fn new(input: &[u8]) -> Guarded {
            let page = 4096;
            let data_pages = input.len().div_ceil(page).max(1);
            let len = (data_pages + 1) * page;
            // SAFETY: a fresh anonymous private mapping; the guard page is its last one, and
            // the copy goes into the pages before it.
            unsafe {
                let base = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(base, libc::MAP_FAILED);
                assert_eq!(libc::mprotect(base.cast::<u8>().add(data_pages * page).cast(), page, libc::PROT_NONE), 0);
                let at = data_pages * page - input.len();
                std::ptr::copy_nonoverlapping(input.as_ptr(), base.cast::<u8>().add(at), input.len());
                Guarded { base, len, at, n: input.len() }
            }
        }

        fn bytes(&self) -> &[u8] {
            // SAFETY: `at..at + n` lies in the readable pages, filled by `new`.
            unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.at), self.n) }
        }
    }

    #[cfg(unix)]
    impl Drop for Guarded {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, not used after this.
            unsafe { libc::munmap(self.base, self.len) };
        }
    }

    #[test]
    fn kernels_match_the_oracle() {
        let kernels = kernels();
        for input in inputs() {
            // Input that ends where memory does, and output followed by a sentinel: the
            // kernels read and write whole vectors, never past their bounds.
            #[cfg(unix)]
            let guarded = Guarded::new(&input);
            #[cfg(unix)]
            let input = guarded.bytes();
            let cap = expanded_capacity(input.len());
            for before in [0u8, b'\r', b'\n'] {
                let want_bare = naive_has_bare_lf(input, before);
                let want = naive::to_crlf(input, before);
                for (name, has, expand) in &kernels {
                    assert_eq!(has(input, before), want_bare, "{name} has_bare_lf {input:?} {before}");
                    let mut out = vec![0xee; cap + 64];
                    let n = expand(input, before, &mut out[..cap]);
                    assert_eq!(&out[..n], &want[..], "{name} to_crlf {input:?} {before}");
                    assert!(out[cap..].iter().all(|&b| b == 0xee), "{name} wrote past its output {input:?}");
                }
            }
        }
    }

    fn naive_relaxed_events(b: &[u8], bare: bool) -> Vec<usize> {
        let mut v = vec![];
        for i in 0..b.len() {
            let next = b.get(i + 1).copied();
            let event = b[i] == b'\t'
                || (b[i] == b' '
                    && (next.is_none() || next == Some(b' ') || next == Some(b'\r') || next == Some(b'\n')))
                || (bare && b[i] == b'\n');
            if event {
                v.push(i);
            }
        }
        v
    }

    #[test]
    fn relaxed_events_match_the_oracle() {
        type Finder = fn(&[u8], usize, bool) -> Option<usize>;
        let mut finders: Vec<(&str, Finder)> = vec![("portable", portable::relaxed_event)];
        #[cfg(target_arch = "x86_64")]
        if Avx2::new().is_some() {
            finders.push(("avx2", |b, f, bare| Avx2::new().unwrap().relaxed_event(b, f, bare)));
        }
        finders.push(("dispatch", relaxed_event));
        let mut more = inputs();
        // Tabs and space pairs at every position of longer text.
        let text = b"abcdefgh ijklmnop qrstuvwx yz\r\n".repeat(4);
        for ws in [&b"\t"[..], b"  ", b" \r", b" \n", b" \t"] {
            for at in 0..text.len() {
                let mut x = text.clone();
                x.splice(at..at, ws.iter().copied());
                more.push(x);
            }
        }
        for input in more {
            for bare in [false, true] {
                let want = naive_relaxed_events(&input, bare);
                for (name, find) in &finders {
                    let mut got = vec![];
                    let mut from = 0;
                    while let Some(i) = find(&input, from, bare) {
                        got.push(i);
                        from = i + 1;
                    }
                    assert_eq!(got, want, "{name} bare={bare} {input:?}");
                }
            }
        }
    }

    #[test]
    fn relaxed_expansion_matches_the_oracle() {
        type Expand = fn(&[u8], u8, &mut [u8]) -> (usize, usize);
        let mut kernels: Vec<(&str, Expand)> = vec![("portable", portable::to_crlf_relaxed)];
        #[cfg(target_arch = "x86_64")]
        if Avx2::new().is_some() {
            // SAFETY: the CPU has AVX2, BMI1 and POPCNT; the output below has expanded_capacity.
            kernels.push(("avx2", |b, p, o| unsafe { avx2::to_crlf_relaxed(b, p, o) }));
        }
        kernels.push(("dispatch", to_crlf_relaxed));
        let mut more = inputs();
        // Whitespace (and tab) at every position of LF text longer than a few vectors.
        let text = b"abcdefgh ijklmnop qrstuvwx yz\n".repeat(5);
        for ws in [&b"\t"[..], b"  ", b" \r", b" \n", b" \t", b" "] {
            for at in 0..text.len() {
                let mut x = text.clone();
                x.splice(at..at, ws.iter().copied());
                more.push(x);
            }
        }
        // format=flowed text: lines of every length ending in a space, several to a block,
        // some of them a space only, some with two spaces or a CRLF.
        for ending in [&b" \n"[..], b"  \n", b" \r\n", b"\t\n"] {
            let mut x = vec![];
            for i in 0..120 {
                x.extend(std::iter::repeat_n(b'w', i % 37));
                x.extend_from_slice(if i % 11 == 5 { ending } else { b" \n" });
            }
            for at in [0, 1, 31, 32, 33, 63, 64, 65] {
                more.push(x[at..].to_vec());
            }
        }
        for input in more {
            #[cfg(unix)]
            let guarded = Guarded::new(&input);
            #[cfg(unix)]
            let input = guarded.bytes();
            let cap = expanded_capacity(input.len());
            for before in [0u8, b'\r', b'\n', b' ', b'\t'] {
                let (want_used, want) = naive::to_crlf_relaxed(input, before);
                for (name, expand) in &kernels {
                    let mut out = vec![0xee; cap + 64];
                    let (used, n) = expand(input, before, &mut out[..cap]);
                    assert_eq!((used, &out[..n]), (want_used, &want[..]), "{name} {input:?} {before}");
                    assert!(out[cap..].iter().all(|&b| b == 0xee), "{name} wrote past its output {input:?}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "output buffer too small")]
    fn short_output_is_refused() {
        let mut out = [0u8; 40];
        to_crlf(&[b'\n'; 10], 0, &mut out);
    }
}
