//! Integration tests: one binary (STYLE.md, after ripgrep's tests/), running the built
//! `dkimpress` in temporary directories.

#[macro_use]
mod util;

mod bulk;
mod dnsserver;
mod genkey;
mod interop;
mod man;
mod milter;
mod mta;
mod pg;
mod safety;
mod sign;
mod tables;
mod verify;
