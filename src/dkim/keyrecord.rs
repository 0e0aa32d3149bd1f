//! Key records (RFC 6376 §3.6.1, Ed25519 per RFC 8463 §4) and where they come from: the
//! [`KeyLookup`] trait that DNS, zone files and key directories implement
//! ([`crate::lookup`]), the record parser, and [`fetch_key`], which turns a lookup into the
//! key or the verdict of its failure.

use crate::dkim::key::KeyType;
use crate::dkim::tags;
use crate::dkim::verify::{get, text, DkimResult, Reason};
use base64::Engine as _;
use std::sync::Arc;

/// Why a key record cannot be used (RFC 6376 §3.6.1, RFC 8463 §4): a permerror.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRecordError {
    /// The tag-list does not parse.
    #[error("key record syntax error: {0}")]
    Syntax(String),
    /// `v=` is not `DKIM1`.
    #[error("key record has v={0} (expected DKIM1)")]
    Version(String),
    /// `v=` is present but not first.
    #[error("key record v= is not the first tag (RFC 6376 §3.6.1)")]
    VersionNotFirst,
    /// No `p=`.
    #[error("key record has no p= tag")]
    NoKey,
    /// An empty `p=`: the key was revoked.
    #[error("key revoked (empty p=)")]
    Revoked,
    /// `p=` is not base64.
    #[error("key record p= is not valid base64")]
    Base64,
    /// `s=` does not allow email.
    #[error("key is not for email (s={0})")]
    NotForEmail(String),
    /// `k=rsa` and `p=` is not an RSA public key.
    #[error("key record p= is not an RSA public key")]
    NotRsa,
    /// An RSA key that the crypto backend refuses.
    #[error("key record p= is not a usable RSA public key")]
    UnusableRsa,
    /// An Ed25519 `p=` that is not 32 octets (RFC 8463 §4).
    #[error("Ed25519 key must be 32 octets, p= has {0} (RFC 8463 §4)")]
    Ed25519Length(usize),
    /// An Ed25519 `p=` the crypto backend refuses.
    #[error("key record p= is not an Ed25519 key")]
    NotEd25519,
    /// `k=` is neither `rsa` nor `ed25519`.
    #[error("unknown key type k={0}")]
    UnknownType(String),
}

/// A key-record lookup failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN or no TXT record: the key does not exist.
    NotFound,
    /// Could not get an answer now (timeout, SERVFAIL, network); try again later.
    Temporary(String),
}

/// Where key records come from: `name` is `selector._domainkey.domain` (no final dot); the
/// answer is each TXT record, its strings already concatenated.
pub trait KeyLookup: Sync {
    /// The TXT records at `name`.
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError>;
}

impl<T: KeyLookup + ?Sized> KeyLookup for &T {
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        (**self).txt(name)
    }
}

/// A public key from a key record, ready to verify.
#[derive(Debug)]
pub struct PublicKey {
    pub(crate) kind: PublicKeyData,
    /// RSA modulus bits (0 for Ed25519).
    pub bits: usize,
    /// `t=y`: the domain is testing DKIM.
    pub testing: bool,
    /// `t=s`: `i=` must be in `d=` exactly, not a subdomain.
    pub strict_domain: bool,
    /// `h=` of the record: allowed hashes (empty: all).
    pub(crate) hashes: Vec<String>,
}

#[derive(Debug)]
pub(crate) enum PublicKeyData {
    /// `sha256` is None for keys aws-lc-rs does not take (under 1024 bits), which are refused
    /// by size before any use.
    Rsa {
        der: Vec<u8>,
        sha256: Option<aws_lc_rs::signature::ParsedPublicKey>,
    },
    Ed25519(aws_lc_rs::signature::ParsedPublicKey),
}

impl PublicKeyData {
    pub(crate) fn key_type(&self) -> KeyType {
        match self {
            PublicKeyData::Rsa { .. } => KeyType::Rsa,
            PublicKeyData::Ed25519(_) => KeyType::Ed25519,
        }
    }
}

/// Parses a key record (RFC 6376 §3.6.1; Ed25519 per RFC 8463 §4). Errors are the reasons of
/// a permerror.
pub fn parse_key_record(record: &[u8]) -> Result<PublicKey, KeyRecordError> {
    let tags = tags::parse(record).map_err(KeyRecordError::Syntax)?;
    if let Some(v) = get(&tags, "v") {
        if v != b"DKIM1" {
            return Err(KeyRecordError::Version(text(v)));
        }
        if tags.first().map(|(n, _)| *n) != Some("v") {
            return Err(KeyRecordError::VersionNotFirst);
        }
    }
    let p = get(&tags, "p").ok_or(KeyRecordError::NoKey)?;
    if p.is_empty() {
        return Err(KeyRecordError::Revoked);
    }
    let der = base64::engine::general_purpose::STANDARD.decode(p).map_err(|_| KeyRecordError::Base64)?;
    if let Some(s) = get(&tags, "s") {
        if !text(s).split(':').any(|x| x == "*" || x.eq_ignore_ascii_case("email")) {
            return Err(KeyRecordError::NotForEmail(text(s)));
        }
    }
    let flags: Vec<String> =
        get(&tags, "t").map(|t| text(t).split(':').map(str::to_string).collect()).unwrap_or_default();
    let hashes: Vec<String> = get(&tags, "h")
        .map(|h| text(h).split(':').map(|x| x.to_ascii_lowercase()).filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    let k = get(&tags, "k").map(text).unwrap_or_else(|| "rsa".into()).to_ascii_lowercase();
    let kind = match k.as_str() {
        "rsa" => {
            let bits = rsa_bits(&der).ok_or(KeyRecordError::NotRsa)?;
            let sha256 = aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                &der,
            )
            .ok();
            if sha256.is_none() && bits >= 1024 {
                return Err(KeyRecordError::UnusableRsa);
            }
            return Ok(PublicKey {
                kind: PublicKeyData::Rsa { der, sha256 },
                bits,
                testing: flags.iter().any(|f| f == "y"),
                strict_domain: flags.iter().any(|f| f == "s"),
                hashes,
            });
        }
        "ed25519" => {
            if der.len() != 32 {
                return Err(KeyRecordError::Ed25519Length(der.len()));
            }
            PublicKeyData::Ed25519(
                aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, &der)
                    .map_err(|_| KeyRecordError::NotEd25519)?,
            )
        }
        other => return Err(KeyRecordError::UnknownType(other.to_string())),
    };
    Ok(PublicKey {
        kind,
        bits: 0,
        testing: flags.iter().any(|f| f == "y"),
        strict_domain: flags.iter().any(|f| f == "s"),
        hashes,
    })
}

/// The modulus of an RSA public key given as SubjectPublicKeyInfo or PKCS#1, leading zeros
/// removed (to compare keys whatever their encoding).
pub fn rsa_modulus(der: &[u8]) -> Option<Vec<u8>> {
    use rsa::pkcs1::der::Decode as _;
    let pkcs1 = match rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(der) {
        Ok(spki) => spki.subject_public_key.raw_bytes().to_vec(),
        Err(_) => der.to_vec(),
    };
    let key = rsa::pkcs1::RsaPublicKey::from_der(&pkcs1).ok()?;
    let n = key.modulus.as_bytes();
    Some(n[n.iter().position(|&b| b != 0)?..].to_vec())
}

/// The modulus length of an RSA public key given as SubjectPublicKeyInfo or as a bare PKCS#1
/// RSAPublicKey (which some signers publish; RFC 6376 says SPKI).
fn rsa_bits(der: &[u8]) -> Option<usize> {
    use rsa::pkcs1::der::Decode as _;
    let pkcs1 = match rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(der) {
        Ok(spki) => spki.subject_public_key.raw_bytes().to_vec(),
        Err(_) => der.to_vec(),
    };
    let key = rsa::pkcs1::RsaPublicKey::from_der(&pkcs1).ok()?;
    let n = key.modulus.as_bytes();
    let first = n.iter().position(|&b| b != 0)?;
    let n = &n[first..];
    Some(n.len() * 8 - n[0].leading_zeros() as usize)
}

/// Results of key lookups, shared by the signatures of a run.
pub type KeyResult = Result<Arc<PublicKey>, (DkimResult, Reason)>;

/// Looks up and parses the key for `selector._domainkey.domain`.
pub fn fetch_key(lookup: &dyn KeyLookup, selector: &str, domain: &str) -> KeyResult {
    let name = format!("{selector}._domainkey.{domain}");
    match lookup.txt(&name) {
        Err(LookupError::NotFound) => Err((DkimResult::PermError, Reason::KeyNotFound(name))),
        Err(LookupError::Temporary(error)) => Err((DkimResult::TempError, Reason::KeyLookup { name, error })),
        Ok(records) if records.is_empty() => Err((DkimResult::PermError, Reason::KeyNotFound(name))),
        Ok(records) => {
            // RFC 6376 §6.1.2: several records: use the first that parses.
            let mut first_err = None;
            for r in &records {
                match parse_key_record(r) {
                    Ok(k) => return Ok(Arc::new(k)),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            Err((DkimResult::PermError, first_err.map_or(Reason::KeyNotFound(name), Reason::KeyRecord)))
        }
    }
}
