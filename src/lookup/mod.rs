//! Where key records come from: DNS ([`Dns`]), zone files as `genkey` writes them
//! ([`ZoneKeys`]), key directories (one `NAME.txt` per record, the layout of the interop harness
//! and the test corpus: [`KeyDir`]), several of these in order ([`Chain`]), and a per-run cache
//! so that a bulk job asks once per selector and domain ([`KeyCache`]).
//!
//! Owns the [`crate::dkim::verify::KeyLookup`] implementations. Does not parse key records (that
//! is [`crate::dkim::verify::parse_key_record`]).

mod cache;
mod dns;
mod keydir;
mod zone;

pub use cache::{site_of, KeyCache, DEFAULT_DNS_CONCURRENCY};
pub use dns::Dns;
pub use keydir::KeyDir;
pub use zone::{ZoneError, ZoneKeys};

use crate::dkim::verify::{KeyLookup, LookupError};

/// Several sources asked in order: the first that knows the name answers.
pub struct Chain(pub Vec<Box<dyn KeyLookup + Send>>);

impl KeyLookup for Chain {
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        for s in &self.0 {
            match s.txt(name) {
                Err(LookupError::NotFound) => continue,
                other => return other,
            }
        }
        Err(LookupError::NotFound)
    }
}
