//! Verifying DKIM signatures (RFC 6376 §6, RFC 8463, RFC 8301).
//!
//! Owns: parsing DKIM-Signature tag-lists and key records, the checks of §6.1, body and header
//! hashing for verification, and the outcome of each signature as data ([`Verdict`], with
//! RFC 8601 result names), never as an `Err`. Key records come through the [`KeyLookup`] trait
//! (DNS, zone files and key directories live in [`crate::lookup`]); the clock is an argument. Pure:
//! no files, no threads.

use crate::dkim::canon::{self, Canon, Canonicalization, Sink};
use crate::dkim::header::{Field, Message};
use crate::dkim::key::KeyType;
use crate::dkim::tags;
use base64::Engine as _;
use sha2::Digest as _;
use std::sync::Arc;

/// Default allowance for clocks that disagree, in seconds, applied to `t=` in the future and
/// to `x=` in the past.
pub const DEFAULT_CLOCK_SKEW: u64 = 300;

/// RFC 8601 §2.7.1 result of one signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DkimResult {
    /// The signature verified.
    Pass,
    /// The signature or body hash did not verify.
    Fail,
    /// Not checked, or checked with a result that means nothing (e.g. a key in testing mode
    /// that failed, when asked to treat it so).
    Neutral,
    /// Verified, but a local policy rejects it.
    Policy,
    /// A temporary failure, such as a DNS timeout: try again later.
    TempError,
    /// A permanent error: bad syntax, missing or revoked key, disallowed algorithm.
    PermError,
    /// No signature.
    None,
}

impl DkimResult {
    /// The RFC 8601 name.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimResult::Pass => "pass",
            DkimResult::Fail => "fail",
            DkimResult::Neutral => "neutral",
            DkimResult::Policy => "policy",
            DkimResult::TempError => "temperror",
            DkimResult::PermError => "permerror",
            DkimResult::None => "none",
        }
    }
}

impl std::fmt::Display for DkimResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one DKIM-Signature field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The result.
    pub result: DkimResult,
    /// Why (empty on a plain pass).
    pub reason: String,
    /// `d=` (may be empty when the field did not parse).
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `a=`.
    pub algorithm: String,
    /// `i=` (or `@d` by default), for Authentication-Results `header.i`.
    pub identity: String,
    /// The first 8 characters of `b=`, for Authentication-Results `header.b` (RFC 6008).
    pub b_prefix: String,
    /// Notes on a result that holds but deserves attention (`l=` used, key in testing mode).
    pub notes: Vec<String>,
}

impl Verdict {
    /// A verdict with only a result and a reason (the tags are filled in as they are read).
    pub fn new(result: DkimResult, reason: impl Into<String>) -> Verdict {
        Verdict {
            result,
            reason: reason.into(),
            domain: String::new(),
            selector: String::new(),
            algorithm: String::new(),
            identity: String::new(),
            b_prefix: String::new(),
            notes: vec![],
        }
    }
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

/// What the verifier accepts.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Verify `rsa-sha1` signatures (RFC 8301 §3.1 forbids it; for old archives).
    pub allow_sha1: bool,
    /// Smallest RSA key accepted (RFC 8301 §3.2: 1024).
    pub min_rsa_bits: usize,
    /// Clock skew allowance in seconds.
    pub clock_skew: u64,
    /// Most signatures examined per message (the rest get permerror), against resource
    /// exhaustion (RFC 6376 §8.4).
    pub max_signatures: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { allow_sha1: false, min_rsa_bits: 1024, clock_skew: DEFAULT_CLOCK_SKEW, max_signatures: 16 }
    }
}

/// Hash algorithms of `a=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
}

/// A parsed DKIM-Signature field.
struct Signature<'a> {
    kind: KeyType,
    hash: Hash,
    canon: Canonicalization,
    domain: String,
    selector: String,
    identity: Option<String>,
    headers: Vec<String>,
    bh: Vec<u8>,
    b: Vec<u8>,
    length: Option<u64>,
    timestamp: Option<u64>,
    expiry: Option<u64>,
    field: &'a Field<'a>,
}

/// A permanent error in a signature or key, with its reason.
struct PermError(String);

fn perm(reason: impl Into<String>) -> PermError {
    PermError(reason.into())
}

fn get<'t>(tags: &'t [(String, Vec<u8>)], name: &str) -> Option<&'t [u8]> {
    tags.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn number(tags: &[(String, Vec<u8>)], name: &str) -> Result<Option<u64>, PermError> {
    match get(tags, name) {
        None => Ok(None),
        Some(v) => {
            // RFC 6376 §3.5: at most 12 digits for t= and x=, 76 for l=; we accept what fits u64.
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(perm(format!("syntax error in tag {name}=")));
            }
            Ok(Some(text(v).parse().map_err(|_| perm(format!("syntax error in tag {name}=")))?))
        }
    }
}

fn b64(v: &[u8], tag: &str) -> Result<Vec<u8>, PermError> {
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .map_err(|_| perm(format!("syntax error in tag {tag}= (base64)")))
}

/// Decodes dkim-quoted-printable (RFC 6376 §2.11), used by `i=`.
fn qp_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'=' && i + 2 < v.len() {
            if let Ok(byte) = u8::from_str_radix(&String::from_utf8_lossy(&v[i + 1..i + 3]), 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

fn parse_signature<'a>(
    field: &'a Field<'a>,
    policy: &Policy,
    partial: &mut Verdict,
) -> Result<Signature<'a>, PermError> {
    let tags = tags::parse(field.value()).map_err(|e| perm(format!("syntax error: {e}")))?;
    // Fill what we can for the report before any check can fail.
    partial.domain = get(&tags, "d").map(text).unwrap_or_default();
    partial.selector = get(&tags, "s").map(text).unwrap_or_default();
    partial.algorithm = get(&tags, "a").map(text).unwrap_or_default();
    partial.b_prefix = get(&tags, "b").map(|b| text(&b[..b.len().min(8)])).unwrap_or_default();
    for required in ["v", "a", "b", "bh", "d", "h", "s"] {
        if get(&tags, required).is_none() {
            return Err(perm(format!("missing required tag {required}=")));
        }
    }
    if get(&tags, "v") != Some(b"1") {
        return Err(perm(format!("incompatible version v={}", text(get(&tags, "v").unwrap_or_default()))));
    }
    let algorithm = partial.algorithm.to_ascii_lowercase();
    let (kind, hash) = match algorithm.as_str() {
        "rsa-sha256" => (KeyType::Rsa, Hash::Sha256),
        "ed25519-sha256" => (KeyType::Ed25519, Hash::Sha256),
        "rsa-sha1" if policy.allow_sha1 => (KeyType::Rsa, Hash::Sha1),
        "rsa-sha1" => return Err(perm("algorithm not allowed: rsa-sha1 (RFC 8301 §3.1; --allow-sha1 accepts it)")),
        other => return Err(perm(format!("algorithm not allowed: {other}"))),
    };
    let canon = match get(&tags, "c") {
        None => Canonicalization { header: Canon::Simple, body: Canon::Simple },
        Some(c) => text(c).parse().map_err(|_| perm(format!("syntax error in tag c={}", text(c))))?,
    };
    let domain = partial.domain.trim_end_matches('.').to_ascii_lowercase();
    if !tags::is_dns_name(&domain) {
        return Err(perm(format!("syntax error in tag d={}", partial.domain)));
    }
    let selector = partial.selector.clone();
    if !tags::is_dns_name(&selector) {
        return Err(perm(format!("syntax error in tag s={selector}")));
    }
    let headers: Vec<String> =
        text(get(&tags, "h").unwrap_or_default()).split(':').map(|h| h.trim().to_ascii_lowercase()).collect();
    if headers.iter().any(|h| h.is_empty()) {
        return Err(perm("syntax error in tag h="));
    }
    if !headers.iter().any(|h| h == "from") {
        return Err(perm("h= lacks From (RFC 6376 §5.4)"));
    }
    let identity = match get(&tags, "i") {
        None => None,
        Some(i) => {
            let i = text(&qp_decode(i));
            if !tags::identity_in_domain(&i, &domain) {
                return Err(perm(format!("i={i} is not in the domain d={domain} (RFC 6376 §3.5)")));
            }
            Some(i)
        }
    };
    if let Some(q) = get(&tags, "q") {
        if !text(q).split(':').any(|m| m.eq_ignore_ascii_case("dns/txt")) {
            return Err(perm(format!("unsupported query method q={}", text(q))));
        }
    }
    let timestamp = number(&tags, "t")?;
    let expiry = number(&tags, "x")?;
    if let (Some(t), Some(x)) = (timestamp, expiry) {
        if x < t {
            return Err(perm("x= is before t= (RFC 6376 §3.5)"));
        }
    }
    let length = number(&tags, "l")?;
    let bh = b64(get(&tags, "bh").unwrap_or_default(), "bh")?;
    let b = b64(get(&tags, "b").unwrap_or_default(), "b")?;
    Ok(Signature { kind, hash, canon, domain, selector, identity, headers, bh, b, length, timestamp, expiry, field })
}

/// A public key from a key record, ready to verify.
#[derive(Debug)]
pub struct PublicKey {
    kind: PublicKeyData,
    /// RSA modulus bits (0 for Ed25519).
    pub bits: usize,
    /// `t=y`: the domain is testing DKIM.
    pub testing: bool,
    /// `t=s`: `i=` must be in `d=` exactly, not a subdomain.
    pub strict_domain: bool,
    /// `h=` of the record: allowed hashes (empty: all).
    hashes: Vec<String>,
}

#[derive(Debug)]
enum PublicKeyData {
    /// `sha256` is None for keys aws-lc-rs does not take (under 1024 bits), which are refused
    /// by size before any use.
    Rsa {
        der: Vec<u8>,
        sha256: Option<aws_lc_rs::signature::ParsedPublicKey>,
    },
    Ed25519(aws_lc_rs::signature::ParsedPublicKey),
}

impl PublicKeyData {
    fn key_type(&self) -> KeyType {
        match self {
            PublicKeyData::Rsa { .. } => KeyType::Rsa,
            PublicKeyData::Ed25519(_) => KeyType::Ed25519,
        }
    }
}

/// Parses a key record (RFC 6376 §3.6.1; Ed25519 per RFC 8463 §4). Errors are the reasons of
/// a permerror.
pub fn parse_key_record(record: &[u8]) -> Result<PublicKey, String> {
    let tags = tags::parse(record).map_err(|e| format!("key record syntax error: {e}"))?;
    if let Some(v) = get(&tags, "v") {
        if v != b"DKIM1" {
            return Err(format!("key record has v={} (expected DKIM1)", text(v)));
        }
        if tags.first().map(|(n, _)| n.as_str()) != Some("v") {
            return Err("key record v= is not the first tag (RFC 6376 §3.6.1)".into());
        }
    }
    let p = get(&tags, "p").ok_or("key record has no p= tag")?;
    if p.is_empty() {
        return Err("key revoked (empty p=)".into());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(p)
        .map_err(|_| "key record p= is not valid base64".to_string())?;
    if let Some(s) = get(&tags, "s") {
        if !text(s).split(':').any(|x| x == "*" || x.eq_ignore_ascii_case("email")) {
            return Err(format!("key is not for email (s={})", text(s)));
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
            let bits = rsa_bits(&der).ok_or("key record p= is not an RSA public key")?;
            let sha256 = aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                &der,
            )
            .ok();
            if sha256.is_none() && bits >= 1024 {
                return Err("key record p= is not a usable RSA public key".into());
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
                return Err(format!("Ed25519 key must be 32 octets, p= has {} (RFC 8463 §4)", der.len()));
            }
            PublicKeyData::Ed25519(
                aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, &der)
                    .map_err(|_| "key record p= is not an Ed25519 key".to_string())?,
            )
        }
        other => return Err(format!("unknown key type k={other}")),
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
pub type KeyResult = Result<Arc<PublicKey>, (DkimResult, String)>;

/// Looks up and parses the key for `selector._domainkey.domain`.
pub fn fetch_key(lookup: &dyn KeyLookup, selector: &str, domain: &str) -> KeyResult {
    let name = format!("{selector}._domainkey.{domain}");
    match lookup.txt(&name) {
        Err(LookupError::NotFound) => Err((DkimResult::PermError, format!("key not found ({name})"))),
        Err(LookupError::Temporary(e)) => Err((DkimResult::TempError, format!("key lookup failed ({name}): {e}"))),
        Ok(records) if records.is_empty() => Err((DkimResult::PermError, format!("key not found ({name})"))),
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
            Err((DkimResult::PermError, first_err.unwrap_or_default()))
        }
    }
}

/// A sink feeding either SHA-1 or SHA-256.
enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(h: Hash) -> Hasher {
        match h {
            Hash::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Hash::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

impl Sink for Hasher {
    fn write(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha1(h) => sha1::Digest::update(h, bytes),
            Hasher::Sha256(h) => sha2::Digest::update(h, bytes),
        }
    }
}

/// A sink that stops after `limit` octets (the `l=` tag) and counts what it was offered.
struct Limited<'a> {
    inner: &'a mut Hasher,
    left: u64,
    offered: u64,
}

impl Sink for Limited<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.offered += bytes.len() as u64;
        let take = (bytes.len() as u64).min(self.left) as usize;
        if take > 0 {
            self.inner.write(&bytes[..take]);
            self.left -= take as u64;
        }
    }
}

/// Body hashes already computed for a message, per (canonicalization, hash, length limit).
#[derive(Default)]
pub struct BodyCache {
    entries: Vec<BodyEntry>,
}

/// One computed body hash: (canonicalization, hash, l=) -> (digest, full canonical length).
struct BodyEntry {
    canon: Canon,
    hash: Hash,
    limit: Option<u64>,
    digest: Vec<u8>,
    total: u64,
}

impl BodyCache {
    /// The body hash and the full canonical length.
    fn get(&mut self, canon: Canon, hash: Hash, limit: Option<u64>, body: &[u8]) -> (Vec<u8>, u64) {
        if let Some(e) = self.entries.iter().find(|e| e.canon == canon && e.hash == hash && e.limit == limit) {
            return (e.digest.clone(), e.total);
        }
        let mut h = Hasher::new(hash);
        let mut lim = Limited { inner: &mut h, left: limit.unwrap_or(u64::MAX), offered: 0 };
        canon::canonicalize_body(canon, body, &mut lim);
        let total = lim.offered;
        let digest = h.finish();
        self.entries.push(BodyEntry { canon, hash, limit, digest: digest.clone(), total });
        (digest, total)
    }
}

/// Verifies every DKIM-Signature of `msg` (top to bottom). `now` is the Unix time; `keys`
/// gives the key of (selector, domain), typically [`fetch_key`] behind a cache.
pub fn verify_slice(
    msg: &[u8],
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> Result<Vec<Verdict>, crate::dkim::header::HeaderError> {
    let parsed = Message::parse(msg)?;
    let mut bodies = BodyCache::default();
    let mut out = vec![];
    let mut scratch = Vec::with_capacity(2048);
    for (n, field) in parsed.fields.iter().filter(|f| f.is("dkim-signature")).enumerate() {
        let mut v = Verdict::new(DkimResult::PermError, "");
        if n >= policy.max_signatures {
            v.reason = format!("more than {} signatures: not checked", policy.max_signatures);
            out.push(v);
            continue;
        }
        match verify_one(&parsed, field, keys, now, policy, &mut bodies, &mut scratch, &mut v) {
            Ok(()) => v.result = DkimResult::Pass,
            Err((r, reason)) => {
                v.result = r;
                v.reason = reason;
            }
        }
        out.push(v);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn verify_one(
    msg: &Message,
    field: &Field,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
    bodies: &mut BodyCache,
    scratch: &mut Vec<u8>,
    v: &mut Verdict,
) -> Result<(), (DkimResult, String)> {
    let pe = |e: PermError| (DkimResult::PermError, e.0);
    let sig = parse_signature(field, policy, v).map_err(pe)?;
    v.domain = sig.domain.clone();
    v.identity = sig.identity.clone().unwrap_or_else(|| format!("@{}", sig.domain));
    // RFC 6376 §3.5 t=: verifiers MAY ignore a signature from the future. A signer's clock
    // that runs hours ahead (time zone bugs) is common enough that we note it and go on.
    if let Some(t) = sig.timestamp {
        if t > now + policy.clock_skew {
            v.notes.push(format!("t= is {} s in the future", t - now));
        }
    }
    // RFC 6376 §6.1.1 counts an expired signature among the PERMFAILs.
    if let Some(x) = sig.expiry {
        if x + policy.clock_skew < now {
            return Err((DkimResult::PermError, format!("signature expired (x={x})")));
        }
    }
    let key = keys(&sig.selector, &sig.domain)?;
    if sig.kind != key.kind.key_type() {
        return Err((DkimResult::PermError, format!("key type does not match a= (key is not {})", sig.kind.name())));
    }
    if sig.kind == KeyType::Rsa && key.bits < policy.min_rsa_bits {
        return Err((DkimResult::PermError, format!("RSA key of {} bits is too short (RFC 8301 §3.2)", key.bits)));
    }
    let hash_name = match sig.hash {
        Hash::Sha1 => "sha1",
        Hash::Sha256 => "sha256",
    };
    if !key.hashes.is_empty() && !key.hashes.iter().any(|h| h == hash_name) {
        return Err((DkimResult::PermError, format!("key record h= does not allow {hash_name}")));
    }
    if key.strict_domain {
        if let Some(i) = &sig.identity {
            let idom = i.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
            if idom != sig.domain {
                return Err((DkimResult::PermError, "key t=s forbids a subdomain in i=".into()));
            }
        }
    }
    if key.testing {
        v.notes.push("key in testing mode (t=y)".into());
    }

    // Body hash (RFC 6376 §6.1.3), with l= if present.
    let (bh, total) = bodies.get(sig.canon.body, sig.hash, sig.length, msg.body);
    if let Some(l) = sig.length {
        if l > total {
            return Err((DkimResult::PermError, format!("l={l} is longer than the body ({total} octets)")));
        }
        v.notes.push(format!("l={l}: only the first {l} of {total} body octets are signed"));
    }
    if bh != sig.bh {
        return Err((DkimResult::Fail, "body hash mismatch".into()));
    }

    // Header hash: h= fields bottom-up, then this field without its b= value.
    scratch.clear();
    for f in msg.select(&sig.headers).into_iter().flatten() {
        canon::canonicalize_header(sig.canon.header, f.raw, scratch);
    }
    canon::canonicalize_header_unterminated(sig.canon.header, &tags::without_value(sig.field.raw, "b"), scratch);
    let ok = match (&key.kind, sig.hash) {
        (PublicKeyData::Rsa { sha256: Some(k), .. }, Hash::Sha256) => k.verify_sig(scratch, &sig.b).is_ok(),
        (PublicKeyData::Rsa { der, .. }, hash) => rsa_verify_legacy(der, hash, scratch, &sig.b),
        (PublicKeyData::Ed25519(k), _) => {
            // RFC 8463 §3: Ed25519 over the SHA-256 of the header data.
            let digest = sha2::Sha256::digest(&scratch[..]);
            k.verify_sig(&digest, &sig.b).is_ok()
        }
    };
    if !ok {
        return Err((DkimResult::Fail, "signature did not verify (header fields changed, or wrong key)".into()));
    }
    Ok(())
}

/// RSA verification outside aws-lc-rs's range: SHA-1, or keys under 1024 bits (both only
/// when the policy allows them), with the `rsa` crate.
fn rsa_verify_legacy(der: &[u8], hash: Hash, data: &[u8], sig: &[u8]) -> bool {
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    use rsa::pkcs8::DecodePublicKey as _;
    let Ok(key) = rsa::RsaPublicKey::from_public_key_der(der).or_else(|_| rsa::RsaPublicKey::from_pkcs1_der(der))
    else {
        return false;
    };
    match hash {
        Hash::Sha1 => key.verify(rsa::Pkcs1v15Sign::new::<sha1::Sha1>(), &sha1::Sha1::digest(data), sig).is_ok(),
        Hash::Sha256 => key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &sha2::Sha256::digest(data), sig).is_ok(),
    }
}

/// The overall result of a message: pass if any signature passed, else the most telling
/// failure (fail > temperror > permerror > neutral), none without signatures.
pub fn overall(verdicts: &[Verdict]) -> DkimResult {
    if verdicts.is_empty() {
        return DkimResult::None;
    }
    for want in [DkimResult::Pass, DkimResult::Fail, DkimResult::TempError, DkimResult::PermError, DkimResult::Policy] {
        if verdicts.iter().any(|v| v.result == want) {
            return want;
        }
    }
    DkimResult::Neutral
}

/// An Authentication-Results field (RFC 8601) for `verdicts`, with line end `le`.
pub fn authentication_results(authserv_id: &str, verdicts: &[Verdict], le: &str) -> String {
    let mut out = format!("Authentication-Results: {authserv_id}");
    if verdicts.is_empty() {
        out.push_str(&format!(";{le}\tdkim=none"));
    }
    for v in verdicts {
        out.push_str(&format!(";{le}\tdkim={}", v.result));
        if !v.reason.is_empty() {
            let reason: String = v.reason.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
            out.push_str(&format!(" reason=\"{reason}\""));
        }
        if !v.domain.is_empty() {
            out.push_str(&format!("{le}\theader.d={}", v.domain));
        }
        if !v.identity.is_empty() && v.identity.is_ascii() && !v.identity.contains([' ', ';', '"']) {
            out.push_str(&format!(" header.i={}", v.identity));
        }
        if !v.selector.is_empty() {
            out.push_str(&format!(" header.s={}", v.selector));
        }
        if !v.algorithm.is_empty() {
            out.push_str(&format!(" header.a={}", v.algorithm));
        }
        if !v.b_prefix.is_empty() {
            out.push_str(&format!(" header.b=\"{}\"", v.b_prefix));
        }
    }
    out.push_str(le);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_records() {
        let ed = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let k = parse_key_record(ed.as_bytes()).unwrap();
        assert!(matches!(k.kind, PublicKeyData::Ed25519(_)));
        for (rec, want) in [
            ("v=DKIM1; p=", "revoked"),
            ("v=DKIM1; k=ed25519; p=AAAA", "32 octets"),
            ("k=rsa; v=DKIM1; p=AAAA", "first tag"),
            ("v=DKIM2; p=AAAA", "v=DKIM2"),
            ("v=DKIM1; k=dsa; p=AAAA", "unknown key type"),
            ("v=DKIM1; s=web; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", "not for email"),
            ("v=DKIM1; h=sha1", "no p="),
        ] {
            let e = parse_key_record(rec.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{rec}: {e}");
        }
    }

    #[test]
    fn qp_identity() {
        assert_eq!(qp_decode(b"joe=40football.example.com"), b"joe@football.example.com");
        assert_eq!(qp_decode(b"a=3Db"), b"a=b");
        assert_eq!(qp_decode(b"plain=zz"), b"plain=zz");
    }

    #[test]
    fn overall_result() {
        let v = |r| Verdict::new(r, "");
        assert_eq!(overall(&[]), DkimResult::None);
        assert_eq!(overall(&[v(DkimResult::Fail), v(DkimResult::Pass)]), DkimResult::Pass);
        assert_eq!(overall(&[v(DkimResult::PermError), v(DkimResult::TempError)]), DkimResult::TempError);
    }
}
