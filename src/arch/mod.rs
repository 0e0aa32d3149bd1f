//! CPU- and OS-specific code: the AVX2 line-end kernels with their portable fallbacks
//! ([`crlf`]), and the system calls the pipeline needs that the standard library does not
//! wrap ([`sys`]: memory maps, prefetching, fcntl locks, process groups). All of the crate's
//! `unsafe` lives here; everything else is safe Rust.

pub mod crlf;
pub mod sys;
