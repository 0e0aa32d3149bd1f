//! CPU-specific code: the AVX2 line-end kernels with their portable fallbacks ([`crlf`]) and
//! the CPU's prefetch hints ([`prefetch`]). System calls are not here: the pipeline's are in
//! [`crate::pipeline::os`], the commands' in the binary.

pub mod crlf;
pub mod prefetch;
