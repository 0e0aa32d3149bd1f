//! dkimpress: a fast DKIM signer and verifier (RFC 6376, Ed25519 per RFC 8463, key rules of
//! RFC 8301).
//!
//! The library is the DKIM core and the pipeline that drives it; the command line (argument
//! parsing, configuration files, MTA integration, the benchmark harness) lives in the binary.
//!
//! - [`dkim`]: the pure core. Header splitting, canonicalization, tag lists, signing,
//!   verification, keys. Works on `&[u8]`, takes the clock as an argument, never opens files
//!   or spawns threads.
//! - [`pipeline`]: inputs (mbox, maildir, queue directory, pipes) split into messages, run
//!   through the parallel ordered engine, written to one destination atomically; reports.
//! - [`select`]: which signatures a message gets (fixed keys, OpenDKIM Domain/KeyFile,
//!   KeyTable/SigningTable data sets including PostgreSQL).
//! - [`lookup`]: where verification keys come from (DNS, zone files, key directories).
//! - [`warnings`]: where warnings go (the library never prints).
//!
//! `unsafe` code is allowed in two modules only, each block with a `// SAFETY:` note: `arch`
//! (the CPU-specific line-end kernels and prefetching under `dkim::canon`, and the one call
//! into aws-lc that signs with Ed25519) and [`pipeline::os`]
//! (memory maps, locks and the other system calls of the pipeline). The binary's own system
//! calls (the milter's users, privileges and signals) are in its `cli::os`.

#![deny(unsafe_code)]
#![warn(missing_docs)]

// CPU-specific kernels behind canonicalization: public for the binary and the fuzz targets,
// not part of the library's interface.
#[allow(unsafe_code)]
#[doc(hidden)]
pub mod arch;
/// Generated benchmark archives, for `dkimpress bench` and `benches/`: a test fixture, not part
/// of the library's interface.
#[doc(hidden)]
pub mod corpus;
pub mod dkim;
pub mod lookup;
pub mod pipeline;
pub mod select;
pub mod warnings;
