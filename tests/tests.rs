//! Integration tests: one binary (STYLE.md, after ripgrep's tests/), running the built
//! `dkimpress` in temporary directories.

#[macro_use]
mod util;

mod arc;
mod bulk;
mod dnsserver;
mod genkey;
mod headers;
mod inplace;
mod input;
mod interop;
mod man;
mod milter;
mod milter_arc;
mod mta;
mod output;
mod pg;
mod rotate;
mod sign;
mod tables;
mod verify;
