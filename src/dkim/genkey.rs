//! Key generation and the DNS key record, in the habits of `opendkim-genkey`.
//!
//! Owns: making a new RSA or Ed25519 key pair, the PEM of the private key, and the key record
//! (RFC 6376 §3.6.1) as a zone-file TXT line whose value is cut into strings of at most 255
//! octets (RFC 1035 §3.3: a character-string holds at most 255 octets; one long string is what
//! breaks many hand-made records). It does not write files (the CLI does).

use crate::dkim::key::{KeyType, SigningKey};
use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use rsa::pkcs8::EncodePrivateKey as _;

/// Largest character-string in a TXT record (RFC 1035 §3.3).
pub const TXT_STRING_MAX: usize = 255;

/// What the key record says besides the key.
#[derive(Debug, Clone, Default)]
pub struct RecordOptions {
    /// `h=`: acceptable hash algorithms (e.g. `sha256`); none means any.
    pub hashes: Option<String>,
    /// `s=email`: the key may be used for email only (`-r` of opendkim-genkey).
    pub restrict_email: bool,
    /// `t=s`: the `i=` domain must equal `d=` (no subdomains).
    pub no_subdomains: bool,
    /// `t=y`: testing mode.
    pub testing: bool,
    /// `n=`: a note for humans.
    pub note: Option<String>,
}

/// A freshly made key: the private key as PEM and the key as loaded for signing.
pub struct GeneratedKey {
    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`), what `openssl genpkey` writes and OpenDKIM reads.
    pub pem: String,
    /// The same key, ready to sign and to give its public half.
    pub key: SigningKey,
}

/// A key generation that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum GenKeyError {
    /// RSA size outside what we generate.
    #[error("RSA key size {0} is not supported: use 1024 to 8192 bits (2048 recommended; RFC 8301 §3.2 requires at least 1024)")]
    BadSize(usize),
    /// The backend failed.
    #[error("key generation failed: {0}")]
    Backend(String),
}

/// Makes a new key. RSA sizes aws-lc-rs has (2048, 3072, 4096, 8192) come from it; other sizes
/// from 1024 up come from the `rsa` crate.
pub fn generate(kind: KeyType, bits: usize) -> Result<GeneratedKey, GenKeyError> {
    let der: Vec<u8> = match kind {
        KeyType::Ed25519 => {
            let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(&aws_lc_rs::rand::SystemRandom::new())
                .map_err(|e| GenKeyError::Backend(e.to_string()))?;
            doc.as_ref().to_vec()
        }
        KeyType::Rsa => {
            if !(1024..=8192).contains(&bits) {
                return Err(GenKeyError::BadSize(bits));
            }
            use aws_lc_rs::rsa::KeySize;
            let size = match bits {
                2048 => Some(KeySize::Rsa2048),
                3072 => Some(KeySize::Rsa3072),
                4096 => Some(KeySize::Rsa4096),
                8192 => Some(KeySize::Rsa8192),
                _ => None,
            };
            match size {
                Some(size) => {
                    let kp =
                        aws_lc_rs::rsa::KeyPair::generate(size).map_err(|e| GenKeyError::Backend(e.to_string()))?;
                    let der: aws_lc_rs::encoding::Pkcs8V1Der =
                        kp.as_der().map_err(|e| GenKeyError::Backend(e.to_string()))?;
                    der.as_ref().to_vec()
                }
                None => {
                    let k = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits)
                        .map_err(|e| GenKeyError::Backend(e.to_string()))?;
                    k.to_pkcs8_der().map_err(|e| GenKeyError::Backend(e.to_string()))?.as_bytes().to_vec()
                }
            }
        }
    };
    let key = SigningKey::from_der(&der, "generated key").map_err(|e| GenKeyError::Backend(e.to_string()))?;
    Ok(GeneratedKey { pem: pem_encode("PRIVATE KEY", &der), key })
}

/// PEM armour with 64-character lines (RFC 7468 §2).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The key record value (RFC 6376 §3.6.1; `k=ed25519` and raw `p=` per RFC 8463 §4), as one
/// string: `v=DKIM1; h=sha256; k=rsa; s=email; t=y:s; n=...; p=...`.
pub fn record_value(key: &SigningKey, opts: &RecordOptions) -> String {
    let mut tags = vec!["v=DKIM1".to_string()];
    if let Some(h) = &opts.hashes {
        tags.push(format!("h={h}"));
    }
    tags.push(format!("k={}", key.key_type().as_str()));
    if let Some(n) = &opts.note {
        tags.push(format!("n={}", qp_note(n)));
    }
    if opts.restrict_email {
        tags.push("s=email".to_string());
    }
    let flags: Vec<&str> =
        [(opts.testing, "y"), (opts.no_subdomains, "s")].iter().filter(|(on, _)| *on).map(|(_, f)| *f).collect();
    if !flags.is_empty() {
        tags.push(format!("t={}", flags.join(":")));
    }
    tags.push(format!("p={}", base64::engine::general_purpose::STANDARD.encode(key.public_key_record_bytes())));
    tags.join("; ")
}

/// `n=` is qp-section (RFC 6376 §3.6.1): `;`, `=`, and anything outside printable ASCII,
/// and whitespace, encoded as `=XX`.
fn qp_note(n: &str) -> String {
    let mut out = String::new();
    for b in n.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b';' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Cuts a record value into quoted strings of at most [`TXT_STRING_MAX`] octets. The value is
/// ASCII (tags and base64), so any cut is a valid place.
pub fn split_txt(value: &str) -> Vec<&str> {
    let mut parts = vec![];
    let mut rest = value;
    while rest.len() > TXT_STRING_MAX {
        let (a, b) = rest.split_at(TXT_STRING_MAX);
        parts.push(a);
        rest = b;
    }
    parts.push(rest);
    parts
}

/// The zone-file line, as opendkim-genkey writes it:
/// `SELECTOR._domainkey IN TXT ( "..." "..." )  ; ----- DKIM key SELECTOR for DOMAIN`.
/// With `fqdn`, the owner name is the absolute `SELECTOR._domainkey.DOMAIN.`.
pub fn zone_record(selector: &str, domain: &str, value: &str, fqdn: bool) -> String {
    let owner = if fqdn { format!("{selector}._domainkey.{domain}.") } else { format!("{selector}._domainkey") };
    // Tags before p= on the first line, then the key in strings of at most 255 octets.
    let (head, key) = match value.find("p=") {
        Some(i) => value.split_at(i),
        None => ("", value),
    };
    let mut strings: Vec<&str> = vec![];
    if !head.is_empty() {
        strings.push(head);
    }
    strings.extend(split_txt(key));
    let mut out = format!("{owner}\tIN\tTXT\t( ");
    for (i, s) in strings.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\t  ");
        }
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
    out.push_str(&format!(" )  ; ----- DKIM key {selector} for {domain}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_record_and_split() {
        let g = generate(KeyType::Ed25519, 0).unwrap();
        assert!(g.pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = SigningKey::from_bytes(g.pem.as_bytes(), "t").unwrap();
        assert_eq!(back.public_key_record_bytes(), g.key.public_key_record_bytes());
        let v = record_value(
            &g.key,
            &RecordOptions {
                hashes: Some("sha256".into()),
                restrict_email: true,
                no_subdomains: true,
                testing: true,
                note: Some("a; b".into()),
            },
        );
        assert!(v.starts_with("v=DKIM1; h=sha256; k=ed25519; n=a=3B=20b; s=email; t=y:s; p="), "{v}");
        let z = zone_record("sel", "example.com", &v, false);
        assert!(z.starts_with("sel._domainkey\tIN\tTXT\t( \"v=DKIM1; h=sha256;"));
        assert!(z.ends_with("; ----- DKIM key sel for example.com\n"));
    }

    #[test]
    fn long_rsa_record_is_split_at_255() {
        let g = generate(KeyType::Rsa, 4096).unwrap();
        assert_eq!(g.key.bits(), 4096);
        let v = record_value(&g.key, &RecordOptions::default());
        let parts = split_txt(&v);
        assert!(parts.len() >= 3);
        assert!(parts.iter().all(|p| p.len() <= TXT_STRING_MAX));
        assert_eq!(parts.concat(), v);
        let z = zone_record("s", "example.com", &v, true);
        assert!(z.starts_with("s._domainkey.example.com.\tIN\tTXT"));
        for q in z.split('"').skip(1).step_by(2) {
            assert!(q.len() <= TXT_STRING_MAX);
        }
    }

    #[test]
    fn bad_sizes_refused() {
        for bits in [512, 768, 16384] {
            assert!(matches!(generate(KeyType::Rsa, bits), Err(GenKeyError::BadSize(_))));
        }
    }
}
