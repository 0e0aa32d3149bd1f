//! dkimpress: a fast DKIM signer (RFC 6376, Ed25519 per RFC 8463, key rules of RFC 8301).
//!
//! The DKIM core is pure: [`canon`] (canonicalization into a [`canon::Sink`]), [`header`]
//! (splitting a message into fields and body without copying), [`sign`] (building the
//! DKIM-Signature field) and [`key`] (loading keys, the one place that picks the crypto
//! backend). They work on `&[u8]`, take the clock as an argument, and never open files or spawn
//! threads. [`genkey`] makes keys and DNS records; [`cli`] is the command-line adapter.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod canon;
pub mod cli;
pub mod genkey;
pub mod header;
pub mod key;
pub mod sign;
