//! CPU-specific code: the AVX2 line-end kernels with their portable fallbacks ([`crlf`]) and
//! the CPU's prefetch hints ([`prefetch`]), two SHA-256 computations at once with SHA-NI
//! ([`sha256x2`]), sixteen at once with AVX-512 ([`sha256x16`], measured by
//! `benches/sha_lanes.rs`, not yet on a signing path), and Ed25519 signing by a direct call into aws-lc ([`ed25519`]). System calls are not here: the pipeline's are in
//! [`crate::pipeline::os`], the commands' in the binary.

pub mod crlf;
pub mod ed25519;
pub mod prefetch;
pub mod sha256x16;
pub mod sha256x2;
