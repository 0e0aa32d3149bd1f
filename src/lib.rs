//! dkimpress: a fast DKIM signer (RFC 6376, Ed25519 per RFC 8463, key rules of RFC 8301).
//!
//! The DKIM core is pure: [`canon`] (canonicalization into a [`canon::Sink`]), [`header`]
//! (splitting a message into fields and body without copying), [`sign`] (building the
//! DKIM-Signature field) and [`key`] (loading keys, the one place that picks the crypto
//! backend). They work on `&[u8]`, take the clock as an argument, and never open files or spawn
//! threads. [`mbox`] splits and unquotes mailboxes, [`bulk`] runs archives through the parallel
//! pipeline, [`io`] holds the memory maps and atomic output files. [`io`] and [`crlf`] (the
//! AVX2 line-end kernels) hold the only `unsafe`.
//! [`genkey`] makes keys and DNS records; [`cli`] is the command-line adapter.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod bulk;
pub mod canon;
pub mod cli;
pub mod conf;
#[allow(unsafe_code)]
pub mod crlf;
pub mod dns;
pub mod genkey;
pub mod header;
#[allow(unsafe_code)]
pub mod io;
pub mod key;
pub mod mbox;
pub mod mta;
pub mod select;
pub mod sign;
pub mod tables;
pub mod verify;
