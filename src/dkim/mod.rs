//! The DKIM core, pure over bytes: [`header`] splits a message into fields and body,
//! [`canon`] canonicalizes (RFC 6376 §3.4), [`bodyhash`] hashes bodies whole or as they
//! stream, [`tags`] reads tag lists and checks names, [`sign`] builds DKIM-Signature fields, [`verify`] checks them ([`keyrecord`]: the keys it checks with), [`arc`] validates ARC chains (RFC 8617) with the same checks, [`key`] loads keys and
//! picks the crypto backend, [`genkey`] makes keys and their DNS records. Nothing here opens a
//! file, reads the clock or starts a thread.

pub mod arc;
pub mod bodyhash;
pub mod canon;
pub mod genkey;
pub mod header;
pub mod key;
pub mod keyrecord;
pub mod sign;
pub mod tags;
pub mod verify;
