//! Keys from a key directory: one `NAME.txt` file per record, the layout of the interop
//! harness and the test corpus.

use super::zone::{tokenize, Token};
use crate::dkim::verify::{KeyLookup, LookupError};
use std::path::Path;

/// Keys from a directory of `SELECTOR._domainkey.DOMAIN.txt` files, each holding the TXT value
/// (plain, or as zone-style quoted strings that are joined). A missing file is NXDOMAIN.
pub struct KeyDir {
    dir: std::path::PathBuf,
}

impl KeyDir {
    /// Keys in `dir`.
    pub fn new(dir: &Path) -> KeyDir {
        KeyDir { dir: dir.to_path_buf() }
    }
}

impl KeyLookup for KeyDir {
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        if name.contains('/') || name.starts_with('.') {
            return Err(LookupError::NotFound);
        }
        let path = self.dir.join(format!("{name}.txt"));
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LookupError::NotFound),
            Err(e) => return Err(LookupError::Temporary(format!("{}: {e}", path.display()))),
        };
        let text = String::from_utf8_lossy(&data);
        if text.contains('"') {
            let joined: Vec<u8> = match tokenize(&text.replace('\n', " ")) {
                Ok(tokens) => tokens
                    .into_iter()
                    .filter_map(|t| match t {
                        Token::Quoted(v) => Some(v),
                        Token::Word(_) => None,
                    })
                    .flatten()
                    .collect(),
                Err(e) => return Err(LookupError::Temporary(format!("{}: {e}", path.display()))),
            };
            return Ok(vec![joined]);
        }
        Ok(vec![text.trim_end_matches(['\r', '\n']).replace(['\r', '\n'], "").into_bytes()])
    }
}
