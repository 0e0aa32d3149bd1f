//! Private keys: loading (PEM, DER, bare base64), the one place that picks the crypto backend,
//! signing, and the public half as it goes into DNS.
//!
//! Backends (see DESIGN.md "Crypto choice"): aws-lc-rs signs RSA keys of 2048 bits and more and
//! Ed25519 (constant time, blinded, about 7x the `rsa` crate); the `rsa` crate, always with
//! blinding (`sign_with_rng`), signs 1024- to 2047-bit RSA keys, which aws-lc-rs refuses and
//! RFC 8301 §3.2 still allows. Keys under 1024 bits are refused (RFC 8301 §3.2).
//!
//! This module never prints key material: errors name the file and the problem only.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use rsa::traits::PublicKeyParts as _;
use sha2::Digest as _;
use std::path::Path;

/// The smallest RSA modulus accepted for signing (RFC 8301 §3.2).
pub const MIN_RSA_BITS: usize = 1024;

/// A private key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("{path}: cannot read key file: {error}")]
    Read {
        /// The key file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The data is not a private key in a format we read.
    #[error("{origin}: not a private key: {reason}")]
    Format {
        /// The key file, or a description of where the data came from.
        origin: String,
        /// What is wrong (never the key material).
        reason: String,
    },
    /// An RSA key shorter than RFC 8301 allows.
    #[error("{origin}: RSA key of {bits} bits is too short: RFC 8301 §3.2 requires at least {min} bits (generate a new one: dkimpress genkey -b 2048)")]
    TooShort {
        /// Where the key came from.
        origin: String,
        /// Its modulus length.
        bits: usize,
        /// The minimum in force.
        min: usize,
    },
    /// The key file can be read by group or others.
    #[error("{path}: private key is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The crypto backend failed to sign.
    #[error("signing failed in the crypto backend")]
    Sign,
}

/// The DKIM key type (`k=` in the key record, first half of `a=`): the one key-type enum of
/// the crate, for private keys, public keys and signatures alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// RSA (RFC 6376 §3.3.1).
    Rsa,
    /// Ed25519 (RFC 8463).
    Ed25519,
}

impl KeyType {
    /// The `k=` name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// The name people write: `RSA`, `Ed25519`.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA",
            KeyType::Ed25519 => "Ed25519",
        }
    }

    /// The `a=` value with SHA-256 (the only hash we sign with, RFC 8301 §3.1).
    pub fn algorithm(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa-sha256",
            KeyType::Ed25519 => "ed25519-sha256",
        }
    }
}

/// A loaded private key with its backend.
pub enum SigningKey {
    /// RSA of 2048 bits or more, signed by aws-lc-rs.
    RsaAwsLc(aws_lc_rs::signature::RsaKeyPair),
    /// RSA of 1024 to 2047 bits, signed by the `rsa` crate with blinding.
    RsaPure(Box<rsa::RsaPrivateKey>),
    /// Ed25519, signed by aws-lc ([`crate::arch::ed25519`]).
    Ed25519(Box<Ed25519Key>),
}

/// An Ed25519 key as aws-lc's `ED25519_sign` takes it, made from the key pair aws-lc-rs parsed
/// and checked.
pub struct Ed25519Key {
    secret: crate::arch::ed25519::Ed25519Secret,
}

impl Ed25519Key {
    fn new(pair: &aws_lc_rs::signature::Ed25519KeyPair) -> Option<Ed25519Key> {
        use aws_lc_rs::encoding::AsBigEndian as _;
        let seed = pair.seed().ok()?.as_be_bytes().ok()?;
        let secret = crate::arch::ed25519::Ed25519Secret::from_seed(seed.as_ref().try_into().ok()?);
        // aws-lc-rs checked a public key the PKCS#8 file carries against the seed; this is the
        // same expansion, checked once more so that the two halves can never sign apart.
        if secret.public() != pair.public_key().as_ref() {
            return None;
        }
        Some(Ed25519Key { secret })
    }
}

impl std::fmt::Debug for SigningKey {
    /// Shows the type and size only, never key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} {} bits)", self.key_type().as_str(), self.bits())
    }
}

/// `text` with anything that looks like private key material replaced by
/// `[key material not shown]`: PEM blocks (and lone PEM armour lines) and runs of 40 or more
/// base64 characters mixing upper case, lower case and digits (a DER key in base64, a PEM body
/// line, a bare Ed25519 seed). Every error and log line passes through it before it is shown,
/// because configuration values (a key pasted where a path belongs) end up in messages.
pub fn redact_key_material(text: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: &str = "[key material not shown]";
    let b = text.as_bytes();
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=';
    let mut out = String::new();
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        // PEM armour: from "-----BEGIN" to the end of the matching "-----END ...-----", or just
        // the armour line when there is no end.
        if b[i..].starts_with(b"-----BEGIN") || b[i..].starts_with(b"-----END") {
            let end = match text[i..].find("-----END") {
                Some(e) => {
                    let after = i + e + 8;
                    text[after..].find("-----").map_or(b.len(), |k| after + k + 5)
                }
                None => text[i + 5..].find("-----").map_or(b.len(), |k| i + 5 + k + 5),
            };
            out.push_str(&text[last..i]);
            out.push_str(SHOWN);
            last = end;
            i = end;
            continue;
        }
        if is_b64(b[i]) {
            let start = i;
            while i < b.len() && is_b64(b[i]) {
                i += 1;
            }
            let run = &b[start..i];
            if run.len() >= 40
                && run.iter().any(u8::is_ascii_uppercase)
                && run.iter().any(u8::is_ascii_lowercase)
                && run.iter().any(u8::is_ascii_digit)
            {
                out.push_str(&text[last..start]);
                out.push_str(SHOWN);
                last = i;
            }
            continue;
        }
        i += 1;
    }
    if last == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[last.min(text.len())..]);
    std::borrow::Cow::Owned(out)
}

impl SigningKey {
    /// Reads a key file (PEM, DER or bare base64 of the DER), checking that it is not
    /// readable by group or others. With `strict`, such a file is refused; otherwise the
    /// problem is returned as a warning beside the key.
    pub fn from_path(path: &Path, strict: bool) -> Result<(SigningKey, Option<KeyError>), KeyError> {
        // A key pasted where a path belongs must not come back in an error.
        let shown = redact_key_material(&path.display().to_string()).into_owned();
        let data = std::fs::read(path).map_err(|error| KeyError::Read { path: shown.clone(), error })?;
        let warning = check_permissions(path);
        if strict {
            if let Some(w) = warning {
                return Err(w);
            }
            return Ok((SigningKey::from_bytes(&data, &shown)?, None));
        }
        Ok((SigningKey::from_bytes(&data, &shown)?, warning))
    }

    /// Parses key data: PEM (`RSA PRIVATE KEY` = PKCS#1, `PRIVATE KEY` = PKCS#8, RSA or
    /// Ed25519), DER (PKCS#8 or PKCS#1), or the base64 of the DER without armour (as OpenDKIM
    /// key tables hold it). `origin` names the data in errors.
    pub fn from_bytes(data: &[u8], origin: &str) -> Result<SigningKey, KeyError> {
        let fmt_err = |reason: &str| KeyError::Format { origin: origin.to_string(), reason: reason.to_string() };
        let text = std::str::from_utf8(data).ok();
        let der = match text {
            Some(t) if t.contains("-----BEGIN") => {
                let (label, der) = decode_pem(t).map_err(|r| fmt_err(&r))?;
                match label.as_str() {
                    "RSA PRIVATE KEY" | "PRIVATE KEY" => der,
                    "ENCRYPTED PRIVATE KEY" => {
                        return Err(fmt_err("the key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)"))
                    }
                    other => return Err(fmt_err(&format!("PEM block is {other:?}, expected a private key"))),
                }
            }
            Some(t) if !t.trim().is_empty() && t.trim().bytes().all(|b| is_b64(b) || b.is_ascii_whitespace()) => {
                let compact: String = t.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|_| fmt_err("neither PEM nor DER, and not valid base64"))?
            }
            _ => data.to_vec(),
        };
        SigningKey::from_der(&der, origin)
    }

    /// Parses a DER private key: PKCS#8 (RSA or Ed25519) or PKCS#1 (RSA).
    pub fn from_der(der: &[u8], origin: &str) -> Result<SigningKey, KeyError> {
        // RSA first: asking for Ed25519 first parses and checks a whole RSA key only to reject
        // it for its type (about 0.3 ms for 2048 bits, once per process in pipe mode), while
        // trying RSA on an Ed25519 key costs nothing.
        if let Ok(k) = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der) {
            return Ok(SigningKey::RsaAwsLc(k));
        }
        if let Ok(k) = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let key = Ed25519Key::new(&k).ok_or_else(|| KeyError::Format {
                origin: origin.to_string(),
                reason: "the Ed25519 key's seed cannot be read, or does not give its public key".to_string(),
            })?;
            return Ok(SigningKey::Ed25519(Box::new(key)));
        }
        if let Ok(k) = aws_lc_rs::signature::RsaKeyPair::from_der(der) {
            return Ok(SigningKey::RsaAwsLc(k));
        }
        // aws-lc-rs takes 2048 to 8192 bits; look at what else it is.
        let pure = rsa::RsaPrivateKey::from_pkcs8_der(der).or_else(|_| rsa::RsaPrivateKey::from_pkcs1_der(der));
        match pure {
            Ok(k) => {
                let bits = k.n().bits();
                if bits < MIN_RSA_BITS {
                    Err(KeyError::TooShort { origin: origin.to_string(), bits, min: MIN_RSA_BITS })
                } else if bits < 2048 {
                    Ok(SigningKey::RsaPure(Box::new(k)))
                } else {
                    Err(KeyError::Format {
                        origin: origin.to_string(),
                        reason: format!("RSA key of {bits} bits rejected (supported: 1024 to 8192 bits)"),
                    })
                }
            }
            Err(_) => Err(KeyError::Format {
                origin: origin.to_string(),
                reason: "not an RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key".to_string(),
            }),
        }
    }

    /// RSA or Ed25519.
    pub fn key_type(&self) -> KeyType {
        match self {
            SigningKey::RsaAwsLc(_) | SigningKey::RsaPure(_) => KeyType::Rsa,
            SigningKey::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// Modulus length for RSA; 256 for Ed25519.
    pub fn bits(&self) -> usize {
        match self {
            SigningKey::RsaAwsLc(k) => k.public_modulus_len() * 8,
            SigningKey::RsaPure(k) => k.n().bits(),
            SigningKey::Ed25519(_) => 256,
        }
    }

    /// The signature over `data`, the canonicalized header fields (RFC 6376 §3.7): RSASSA-
    /// PKCS1-v1_5 with SHA-256 for RSA, and for Ed25519 PureEdDSA over the SHA-256 digest of
    /// `data` (RFC 8463 §3).
    pub fn sign(&self, data: &[u8]) -> Result<Signature, KeyError> {
        match self {
            SigningKey::RsaAwsLc(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), data, &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                Ok(Signature::Rsa(sig))
            }
            SigningKey::RsaPure(_) | SigningKey::Ed25519(_) => {
                let digest: [u8; 32] = sha2::Sha256::digest(data).into();
                self.sign_prehashed(&digest).unwrap_or(Err(KeyError::Sign))
            }
        }
    }

    /// [`SigningKey::sign`] of data whose SHA-256 digest is `digest`, for the keys that sign
    /// the digest (Ed25519, RFC 8463 §3; the pure-Rust RSA); `None` for aws-lc's RSA, which
    /// hashes the data itself.
    pub fn sign_prehashed(&self, digest: &[u8; 32]) -> Option<Result<Signature, KeyError>> {
        match self {
            SigningKey::RsaAwsLc(_) => None,
            SigningKey::RsaPure(k) => Some(
                // Blinded: sign_with_rng, never plain sign (RUSTSEC-2023-0071 is about timing).
                k.sign_with_rng(&mut rand::thread_rng(), rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), digest)
                    .map(Signature::Rsa)
                    .map_err(|_| KeyError::Sign),
            ),
            SigningKey::Ed25519(k) => Some(k.secret.sign(digest).map(Signature::Ed25519).ok_or(KeyError::Sign)),
        }
    }

    /// The public key as the `p=` tag of the key record wants it: SubjectPublicKeyInfo DER for
    /// RSA (what opendkim-genkey publishes; RFC 6376 erratum 3017), the raw 32 octets for
    /// Ed25519 (RFC 8463 §4).
    pub fn public_key_record_bytes(&self) -> Vec<u8> {
        match self {
            SigningKey::RsaAwsLc(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()).unwrap_or_default(),
            SigningKey::RsaPure(k) => {
                k.to_public_key().to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default()
            }
            SigningKey::Ed25519(k) => k.secret.public().to_vec(),
        }
    }
}

/// The octets of a signature ([`SigningKey::sign`]): an Ed25519 one held in place (a message
/// signed with Ed25519 costs only a few microseconds, and a heap allocation for its 64 octets
/// showed in the profile), an RSA one as long as the modulus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// RSASSA-PKCS1-v1_5, the modulus's length.
    Rsa(Vec<u8>),
    /// Ed25519 (RFC 8032 §5.1.6).
    Ed25519([u8; 64]),
}

impl std::ops::Deref for Signature {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Signature::Rsa(v) => v,
            Signature::Ed25519(a) => a,
        }
    }
}

impl AsRef<[u8]> for Signature {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

/// Extracts the first PEM block: its label and decoded contents. Text around the block and
/// CRLF line ends are tolerated; encapsulated headers (`Proc-Type:`) mean an encrypted legacy key.
fn decode_pem(text: &str) -> Result<(String, Vec<u8>), String> {
    let begin = text.find("-----BEGIN ").ok_or("no PEM BEGIN line")?;
    let rest = &text[begin + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or("malformed PEM BEGIN line")?;
    let label = rest[..label_end].to_string();
    let body_start = &rest[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let end = body_start.find(&end_marker).ok_or_else(|| format!("no PEM END line for {label:?}"))?;
    let body = &body_start[..end];
    if body.contains("Proc-Type:") {
        return Err(
            "the key is encrypted (legacy PEM encryption); decrypt it first (openssl pkey -in KEY -out PLAIN)".into()
        );
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| format!("PEM block {label:?} is not valid base64"))?;
    Ok((label, der))
}

/// A warning when the key file can be read by group or others.
#[cfg(unix)]
fn check_permissions(path: &Path) -> Option<KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        Some(KeyError::Permissions { path: path.display().to_string(), mode })
    } else {
        None
    }
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Option<KeyError> {
    None
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// An Ed25519 test key (PKCS#8 v1, as `openssl genpkey -algorithm ed25519` writes it).
    /// It signs nothing real.
    pub(crate) const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+8MDlNd6sX+CAcT9fuKdG8HdVR/FfwTsf3Uo3Q5gnG\n-----END PRIVATE KEY-----\n";
}

#[cfg(test)]
mod tests {

    /// No key format survives in an error or log line.
    #[test]
    fn key_material_is_redacted() {
        let rsa = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keys/test.private")).unwrap();
        let ed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keys/test-ed.private")).unwrap();
        let body = |pem: &str| pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
        let seed = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
        for secret in
            [rsa.clone(), ed.clone(), body(&rsa), body(&ed), seed.to_string(), rsa.lines().nth(1).unwrap().to_string()]
        {
            for msg in [
                format!("{secret}: cannot read key file: No such file or directory (os error 2)"),
                format!("conf:3: unknown key {secret:?} (not an opendkim.conf key)"),
                format!("KeyTable entry x: {secret}"),
            ] {
                let shown = redact_key_material(&msg);
                for line in secret.lines().filter(|l| l.len() > 8 && !l.starts_with("-----")) {
                    assert!(!shown.contains(line), "leaked {line:?} in {shown}");
                }
                assert!(shown.contains("[key material not shown]"), "{shown}");
            }
        }
        for fine in [
            "/etc/opendkim/keys/example.com/mail.private: cannot read key file",
            "database dsn:pgsql://dkim:****@host/db/table=t?keycol=k?datacol=d: refused",
            "bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        ] {
            // A body hash is not secret, but it looks like one: only paths and DSNs must survive.
            if !fine.starts_with("bh=") {
                assert_eq!(redact_key_material(fine), fine);
            }
        }
    }

    use super::tests_support::ED25519_PEM;
    use super::*;

    #[test]
    fn ed25519_pem_loads_and_signs() {
        let k = SigningKey::from_bytes(ED25519_PEM.as_bytes(), "test").unwrap();
        assert_eq!(k.key_type(), KeyType::Ed25519);
        assert_eq!(k.public_key_record_bytes().len(), 32);
        assert_eq!(k.sign(b"x").unwrap().len(), 64);
        // Deterministic (RFC 8032).
        assert_eq!(k.sign(b"x").unwrap(), k.sign(b"x").unwrap());
    }

    #[test]
    fn ed25519_direct_signature_is_aws_lc_rs_signature() {
        let whole = SigningKey::from_bytes(ED25519_PEM.as_bytes(), "test").unwrap();
        let SigningKey::Ed25519(k) = &whole else { panic!("an Ed25519 key") };
        let (_, der) = decode_pem(ED25519_PEM).unwrap();
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap();
        assert_eq!(whole.public_key_record_bytes(), pair.public_key().as_ref());
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, pair.public_key());
        for msg in [&b""[..], b"x", &[7u8; 32], &[0xa5; 1000]] {
            let direct = k.secret.sign(msg).unwrap();
            assert_eq!(direct.as_slice(), pair.sign(msg).as_ref());
            public.verify(msg, &direct).unwrap();
        }
        // And through SigningKey: PureEdDSA over the SHA-256 of the data (RFC 8463 §3).
        let digest = sha2::Sha256::digest(b"header data");
        assert_eq!(&whole.sign(b"header data").unwrap()[..], pair.sign(&digest).as_ref());
    }

    #[test]
    fn bare_base64_and_der_load() {
        let (_, der) = decode_pem(ED25519_PEM).unwrap();
        assert!(matches!(SigningKey::from_bytes(&der, "t").unwrap(), SigningKey::Ed25519(_)));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        assert!(matches!(SigningKey::from_bytes(b64.as_bytes(), "t").unwrap(), SigningKey::Ed25519(_)));
    }

    #[test]
    fn rsa_sizes_pick_backend_or_refuse() {
        use rsa::pkcs8::EncodePrivateKey as _;
        let mut rng = rand::thread_rng();
        for (bits, want) in [(512usize, "short"), (1024, "pure"), (2048, "awslc")] {
            let k = rsa::RsaPrivateKey::new(&mut rng, bits).unwrap();
            let der = k.to_pkcs8_der().unwrap();
            let got = match SigningKey::from_der(der.as_bytes(), "t") {
                Err(KeyError::TooShort { bits: b, .. }) => {
                    assert_eq!(b, bits);
                    "short"
                }
                Ok(SigningKey::RsaPure(_)) => "pure",
                Ok(SigningKey::RsaAwsLc(_)) => "awslc",
                other => panic!("{bits}: {other:?}"),
            };
            assert_eq!(got, want, "{bits}");
        }
    }

    #[test]
    fn garbage_and_encrypted_are_clear_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"hello", "not a private key"),
            (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "encrypted"),
            (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "expected a private key"),
        ];
        for (data, want) in cases {
            let e = SigningKey::from_bytes(data, "k.pem").unwrap_err().to_string();
            assert!(e.contains(want) && e.starts_with("k.pem"), "{e}");
        }
    }
}
