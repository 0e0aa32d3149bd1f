//! CPU prefetch hints: asking the cache to load data the next instructions will read, for the
//! first pass over input that comes cold from memory (a large mbox, read once).
//!
//! Owns [`prefetch`] and the pacing of it ([`in_prefetched_pieces`]); the memory maps that
//! produce such input are in `pipeline::os`.

/// Asks the CPU to start loading `bytes` into its caches, one prefetch per 64-byte line, and
/// returns at once. SHA-256 with SHA-NI reads its input too slowly for the hardware prefetcher
/// to run ahead of it, so a body that comes cold from memory (a large mbox, read once) stalls
/// the hasher on every line. Prefetching the next chunk while the current one is hashed overlaps
/// the two (benches/REPORT.md, 2026-11-22).
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: PREFETCHT0 is a hint: it never faults, does not change memory, and the
        // address is inside `bytes` anyway.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(off).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Octets handled between two prefetches, and how far ahead of the reader they reach. Spread
/// out like this (a few lines per piece) the requests overlap with the work; one burst per
/// large chunk fills the CPU's miss buffers and stalls it instead (benches/REPORT.md,
/// 2026-11-22).
pub const PREFETCH_PIECE: usize = 1024;
/// See [`PREFETCH_PIECE`].
pub const PREFETCH_DISTANCE: usize = 24 * 1024;

/// Hands `data[range]` to `f` a piece of [`PREFETCH_PIECE`] octets at a time, each after a
/// prefetch of the piece [`PREFETCH_DISTANCE`] further on: for the first pass over data that
/// comes cold from memory (unquoting a message of a large mbox, hashing in benchmarks).
pub fn in_prefetched_pieces(data: &[u8], range: std::ops::Range<usize>, mut f: impl FnMut(&[u8])) {
    let mut at = range.start;
    while at < range.end {
        let end = (at + PREFETCH_PIECE).min(range.end);
        let ahead = (at + PREFETCH_DISTANCE).min(data.len());
        prefetch(&data[ahead..(ahead + PREFETCH_PIECE).min(data.len())]);
        f(&data[at..end]);
        at = end;
    }
}
