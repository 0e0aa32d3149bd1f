//! CPU-specific code: the AVX2 line-end kernels with their portable fallbacks ([`crlf`]) and
//! the CPU's prefetch hints ([`prefetch`]), two SHA-256 computations at once with SHA-NI
//! ([`sha256x2`]), sixteen at once with AVX-512 ([`sha256x16`], the workers'
//! body hashes on Intel CPUs that have it), and Ed25519 signing by a direct call into aws-lc ([`ed25519`]). System calls are not here: the pipeline's are in
//! [`crate::pipeline::os`], the commands' in the binary.

pub mod crlf;
pub mod ed25519;
pub mod prefetch;
pub mod sha256x16;
pub mod sha256x2;

/// A CPU property detected once per process, then read from `flag` (0 unknown, 1 no, 2 yes).
pub(crate) fn detected_once(flag: &std::sync::atomic::AtomicU8, detect: impl FnOnce() -> bool) -> bool {
    use std::sync::atomic::Ordering;
    match flag.load(Ordering::Relaxed) {
        0 => {
            let yes = detect();
            flag.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
        v => v == 2,
    }
}
