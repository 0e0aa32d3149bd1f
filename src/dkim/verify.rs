//! Verifying DKIM signatures (RFC 6376 §6, RFC 8463, RFC 8301).
//!
//! Owns: parsing DKIM-Signature tag-lists and key records, the checks of §6.1, body and header
//! hashing for verification, and the outcome of each signature as data ([`Verdict`], with
//! RFC 8601 result names), never as an `Err`. Key records come through the [`KeyLookup`] trait
//! (DNS, zone files and key directories live in [`crate::lookup`]); the clock is an argument. Pure:
//! no files, no threads.

use crate::dkim::bodyhash::{self, BodyDigest, BodySpec, Hash, HashedBody};
use crate::dkim::canon::{self, Canon, Canonicalization};
use crate::dkim::header::{Field, Message};
use crate::dkim::key::KeyType;
use crate::dkim::keyrecord::PublicKeyData;
pub use crate::dkim::keyrecord::{
    fetch_key, parse_key_record, rsa_modulus, KeyLookup, KeyRecordError, KeyResult, LookupError, PublicKey,
};
use crate::dkim::tags;
use base64::Engine as _;
use sha2::Digest as _;

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

/// Why a signature did not pass, or was not checked: the `reason` of a [`Verdict`]. `Display`
/// gives the text of the reports and of Authentication-Results `reason=` (RFC 8601 §2.7.1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The tag-list does not parse (RFC 6376 §3.2).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A tag RFC 6376 §3.5 requires is missing.
    #[error("missing required tag {0}=")]
    MissingTag(&'static str),
    /// `v=` is not `1`.
    #[error("incompatible version v={0}")]
    Version(String),
    /// `a=rsa-sha1`, which RFC 8301 §3.1 forbids, without `--allow-sha1`.
    #[error("algorithm not allowed: rsa-sha1 (RFC 8301 §3.1; --allow-sha1 accepts it)")]
    Sha1,
    /// `a=` names an algorithm we do not verify.
    #[error("algorithm not allowed: {0}")]
    Algorithm(String),
    /// A tag value that does not parse (the value is shown where it helps, else empty).
    #[error("syntax error in tag {tag}={value}")]
    TagSyntax {
        /// The tag name.
        tag: &'static str,
        /// Its value, or empty.
        value: String,
    },
    /// `b=` or `bh=` is not base64.
    #[error("syntax error in tag {0}= (base64)")]
    Base64(&'static str),
    /// `h=` does not sign From (RFC 6376 §5.4).
    #[error("h= lacks From (RFC 6376 §5.4)")]
    NoFromInH,
    /// `i=` is outside `d=` (RFC 6376 §3.5).
    #[error("i={identity} is not in the domain d={domain} (RFC 6376 §3.5)")]
    IdentityOutsideDomain {
        /// `i=`, decoded.
        identity: String,
        /// `d=`.
        domain: String,
    },
    /// `q=` lacks `dns/txt`.
    #[error("unsupported query method q={0}")]
    QueryMethod(String),
    /// `x=` is before `t=` (RFC 6376 §3.5).
    #[error("x= is before t= (RFC 6376 §3.5)")]
    ExpiryBeforeTimestamp,
    /// More signatures than [`Policy::max_signatures`]: this one was not checked.
    #[error("more than {0} signatures: not checked")]
    TooManySignatures(usize),
    /// `x=` has passed (a PERMFAIL, RFC 6376 §6.1.1).
    #[error("signature expired (x={0})")]
    Expired(u64),
    /// No key record at the name.
    #[error("key not found ({0})")]
    KeyNotFound(String),
    /// The key lookup failed for now (a temperror).
    #[error("key lookup failed ({name}): {error}")]
    KeyLookup {
        /// `selector._domainkey.domain`.
        name: String,
        /// What the resolver said.
        error: String,
    },
    /// The key record is unusable.
    #[error(transparent)]
    KeyRecord(#[from] KeyRecordError),
    /// The key is not of the type `a=` names.
    #[error("key type does not match a= (key is not {})", .0.name())]
    KeyTypeMismatch(KeyType),
    /// An RSA key under [`Policy::min_rsa_bits`] (RFC 8301 §3.2).
    #[error("RSA key of {0} bits is too short (RFC 8301 §3.2)")]
    KeyTooShort(usize),
    /// The key record's `h=` does not list the hash of `a=`.
    #[error("key record h= does not allow {0}")]
    HashNotAllowed(&'static str),
    /// The key record has `t=s` and `i=` is in a subdomain.
    #[error("key t=s forbids a subdomain in i=")]
    SubdomainForbidden,
    /// `l=` is longer than the body.
    #[error("l={length} is longer than the body ({body} octets)")]
    LengthBeyondBody {
        /// `l=`.
        length: u64,
        /// The canonical body length.
        body: u64,
    },
    /// The body hash differs from `bh=` (RFC 6376 §6.1.3).
    #[error("body hash mismatch")]
    BodyHash,
    /// The signature over the header fields does not verify.
    #[error("signature did not verify (header fields changed, or wrong key)")]
    Signature,
    /// The header block of the message does not parse.
    #[error("message cannot be parsed: {0}")]
    Unparsable(crate::dkim::header::HeaderError),
    /// The message was not checked (too large, unreadable); the text says why.
    #[error("not checked: {0}")]
    NotChecked(String),
    /// The verifier panicked on this message (a bug; the run goes on).
    #[error("internal error (panic) while verifying; please report it")]
    Panic,
}

/// The outcome of one DKIM-Signature field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The result.
    pub result: DkimResult,
    /// Why (None on a plain pass).
    pub reason: Option<Reason>,
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
    pub fn new(result: DkimResult, reason: impl Into<Option<Reason>>) -> Verdict {
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

/// A parsed DKIM-Signature field.
pub(crate) struct Signature<'a> {
    kind: KeyType,
    hash: Hash,
    canon: Canonicalization,
    domain: String,
    selector: String,
    identity: Option<String>,
    /// The `h=` list, lower case, whitespace removed ([`header_names`] gives its names).
    headers: String,
    bh: Vec<u8>,
    b: Vec<u8>,
    length: Option<u64>,
    timestamp: Option<u64>,
    expiry: Option<u64>,
    field: &'a Field<'a>,
}

impl Signature<'_> {
    /// The body hash this signature names: its body canonicalization, hash and `l=`.
    pub(crate) fn body_spec(&self) -> BodySpec {
        BodySpec { canon: self.canon.body, hash: self.hash, limit: self.length }
    }
}

/// A permanent error in a signature or key, with its reason.
pub(crate) struct PermError(pub(crate) Reason);

fn perm(reason: Reason) -> PermError {
    PermError(reason)
}

/// The value of tag `name`, if present.
pub(crate) fn get<'t>(tags: &'t [tags::Tag], name: &str) -> Option<&'t [u8]> {
    tags.iter().find(|(n, _)| *n == name).map(|(_, v)| &**v)
}

/// The names of an `h=` list (colon-separated; each trimmed, so an empty one shows as "").
fn header_names(list: &str) -> impl Iterator<Item = &str> {
    list.split(':').map(str::trim)
}

/// A tag value as text (lossy).
pub(crate) fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn number(tags: &[tags::Tag], name: &'static str) -> Result<Option<u64>, PermError> {
    match get(tags, name) {
        None => Ok(None),
        Some(v) => {
            // RFC 6376 §3.5: at most 12 digits for t= and x=, 76 for l=; we accept what fits u64.
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(perm(Reason::TagSyntax { tag: name, value: String::new() }));
            }
            // 19 digits always fit in a u64.
            Ok(Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))))
        }
    }
}

pub(crate) fn b64(v: &[u8], tag: &'static str) -> Result<Vec<u8>, PermError> {
    base64::engine::general_purpose::STANDARD.decode(v).map_err(|_| perm(Reason::Base64(tag)))
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

/// Which field [`parse_signature`] reads: a DKIM-Signature, or an ARC-Message-Signature (RFC
/// 8617 §4.1.2: the same tags, but `i=` is the instance, there is no `v=`, and ARC-Seal fields
/// may not be signed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignatureKind {
    Dkim,
    ArcMessage,
}

pub(crate) fn parse_signature<'a>(
    field: &'a Field<'a>,
    policy: &Policy,
    partial: &mut Verdict,
    kind: SignatureKind,
) -> Result<Signature<'a>, PermError> {
    let dkim = kind == SignatureKind::Dkim;
    let tags = tags::parse(field.value()).map_err(|e| perm(Reason::Syntax(e)))?;
    // Fill what we can for the report before any check can fail.
    partial.domain = get(&tags, "d").map(text).unwrap_or_default();
    partial.selector = get(&tags, "s").map(text).unwrap_or_default();
    partial.algorithm = get(&tags, "a").map(text).unwrap_or_default();
    partial.b_prefix = get(&tags, "b").map(|b| text(&b[..b.len().min(8)])).unwrap_or_default();
    for required in ["v", "a", "b", "bh", "d", "h", "s"] {
        if get(&tags, required).is_none() && (dkim || required != "v") {
            return Err(perm(Reason::MissingTag(required)));
        }
    }
    if dkim && get(&tags, "v") != Some(b"1") {
        return Err(perm(Reason::Version(text(get(&tags, "v").unwrap_or_default()))));
    }
    let algorithm = partial.algorithm.as_str();
    let (kind, hash) = if algorithm.eq_ignore_ascii_case("rsa-sha256") {
        (KeyType::Rsa, Hash::Sha256)
    } else if algorithm.eq_ignore_ascii_case("ed25519-sha256") {
        (KeyType::Ed25519, Hash::Sha256)
    } else if algorithm.eq_ignore_ascii_case("rsa-sha1") {
        if !policy.allow_sha1 {
            return Err(perm(Reason::Sha1));
        }
        (KeyType::Rsa, Hash::Sha1)
    } else {
        return Err(perm(Reason::Algorithm(algorithm.to_ascii_lowercase())));
    };
    let canon = match get(&tags, "c") {
        None => Canonicalization { header: Canon::Simple, body: Canon::Simple },
        Some(c) => std::str::from_utf8(c)
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| perm(Reason::TagSyntax { tag: "c", value: text(c) }))?,
    };
    // RFC 8616 §5: d= and s= may be U-labels in an internationalized header; the key is looked
    // up, and i= compared, under the A-label name (the hash still covers the field as written).
    let domain = tags::to_a_labels(partial.domain.trim_end_matches('.')).to_ascii_lowercase();
    if !tags::is_dns_name(&domain) {
        return Err(perm(Reason::TagSyntax { tag: "d", value: partial.domain.clone() }));
    }
    let selector = tags::to_a_labels(&partial.selector).into_owned();
    if !tags::is_dns_name(&selector) {
        return Err(perm(Reason::TagSyntax { tag: "s", value: selector }));
    }
    let mut headers = text(get(&tags, "h").unwrap_or_default());
    headers.make_ascii_lowercase();
    if header_names(&headers).any(str::is_empty) {
        return Err(perm(Reason::TagSyntax { tag: "h", value: String::new() }));
    }
    if dkim && !header_names(&headers).any(|h| h == "from") {
        return Err(perm(Reason::NoFromInH));
    }
    if !dkim && header_names(&headers).any(|h| h == "arc-seal") {
        return Err(perm(Reason::TagSyntax { tag: "h", value: "ARC-Seal may not be signed".into() }));
    }
    let identity = match get(&tags, "i") {
        Some(i) if dkim => {
            let i = tags::identity_to_a_labels(&text(&qp_decode(i))).into_owned();
            if !tags::identity_in_domain(&i, &domain) {
                return Err(perm(Reason::IdentityOutsideDomain { identity: i, domain }));
            }
            Some(i)
        }
        // No i=, or the instance of an ARC-Message-Signature.
        _ => None,
    };
    if let Some(q) = get(&tags, "q") {
        if !text(q).split(':').any(|m| m.eq_ignore_ascii_case("dns/txt")) {
            return Err(perm(Reason::QueryMethod(text(q))));
        }
    }
    let timestamp = number(&tags, "t")?;
    let expiry = number(&tags, "x")?;
    if let (Some(t), Some(x)) = (timestamp, expiry) {
        if x < t {
            return Err(perm(Reason::ExpiryBeforeTimestamp));
        }
    }
    let length = number(&tags, "l")?;
    let bh = b64(get(&tags, "bh").unwrap_or_default(), "bh")?;
    let b = b64(get(&tags, "b").unwrap_or_default(), "b")?;
    Ok(Signature { kind, hash, canon, domain, selector, identity, headers, bh, b, length, timestamp, expiry, field })
}

/// Where the body hashes of one message come from: its body, each hash computed when first
/// needed, or the hashes computed while it streamed past.
pub(crate) enum Bodies<'a> {
    Bytes(&'a [u8], Vec<BodyDigest>),
    Hashed(&'a HashedBody),
}

impl Bodies<'_> {
    /// The body hash of `spec` and the full canonical length; `None` when the body was
    /// hashed as it streamed and `spec` was not among the hashes computed.
    fn get(&mut self, spec: BodySpec) -> Option<(&[u8], u64)> {
        match self {
            Bodies::Hashed(h) => h.get(spec).map(|d| (d.digest.as_slice(), d.total)),
            Bodies::Bytes(body, done) => {
                let i = match done.iter().position(|d| d.spec == spec) {
                    Some(i) => i,
                    None => {
                        done.push(bodyhash::hash_body(spec, body));
                        done.len() - 1
                    }
                };
                Some((done[i].digest.as_slice(), done[i].total))
            }
        }
    }
}

/// The body hashes that verifying `msg` needs (one per distinct canonicalization, hash and
/// `l=` among its first [`Policy::max_signatures`] DKIM-Signature fields that parse): what a
/// caller that streams the body computes with [`bodyhash::BodyHashes`] for [`verify_hashed`].
pub fn wanted_body_hashes(msg: &Message, policy: &Policy) -> Vec<BodySpec> {
    let mut out: Vec<BodySpec> = Vec::new();
    for field in msg.fields.iter().filter(|f| f.is("dkim-signature")).take(policy.max_signatures) {
        let mut v = Verdict::new(DkimResult::PermError, None);
        if let Ok(sig) = parse_signature(field, policy, &mut v, SignatureKind::Dkim) {
            let spec = sig.body_spec();
            if !out.contains(&spec) {
                out.push(spec);
            }
        }
    }
    out
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
    Ok(verify_parsed(&parsed, &mut Bodies::Bytes(parsed.body, Vec::new()), keys, now, policy))
}

/// [`verify_slice`] of a message already parsed.
pub fn verify_message(
    msg: &Message,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> Vec<Verdict> {
    verify_parsed(msg, &mut Bodies::Bytes(msg.body, Vec::new()), keys, now, policy)
}

/// [`verify_slice`] for a message whose body was hashed as it streamed past: `header` holds
/// its header fields (its body, if any, is not read), `body` the hashes
/// [`wanted_body_hashes`] named.
pub fn verify_hashed(
    header: &Message,
    body: &HashedBody,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> Vec<Verdict> {
    verify_parsed(header, &mut Bodies::Hashed(body), keys, now, policy)
}

pub(crate) fn verify_parsed(
    parsed: &Message,
    bodies: &mut Bodies<'_>,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> Vec<Verdict> {
    let mut out = vec![];
    let mut scratch = Vec::with_capacity(2048);
    for (n, field) in parsed.fields.iter().filter(|f| f.is("dkim-signature")).enumerate() {
        let mut v = Verdict::new(DkimResult::PermError, None);
        if n >= policy.max_signatures {
            v.reason = Some(Reason::TooManySignatures(policy.max_signatures));
            out.push(v);
            continue;
        }
        let checked = match parse_signature(field, policy, &mut v, SignatureKind::Dkim) {
            Err(e) => Err((DkimResult::PermError, e.0)),
            Ok(sig) => {
                v.domain = sig.domain.clone();
                v.identity = sig.identity.clone().unwrap_or_else(|| format!("@{}", sig.domain));
                check_signature(parsed, &sig, keys, now, policy, bodies, &mut scratch, &mut v)
            }
        };
        match checked {
            Ok(()) => v.result = DkimResult::Pass,
            Err((r, reason)) => {
                v.result = r;
                v.reason = Some(reason);
            }
        }
        out.push(v);
    }
    out
}

/// The checks of a parsed signature (DKIM-Signature or ARC-Message-Signature, RFC 8617
/// §4.1.2 uses the same rules): its times, its key, the body hash, then the signature over the
/// h= fields and the field itself without its b= value.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_signature(
    msg: &Message,
    sig: &Signature,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
    bodies: &mut Bodies<'_>,
    scratch: &mut Vec<u8>,
    v: &mut Verdict,
) -> Result<(), (DkimResult, Reason)> {
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
            return Err((DkimResult::PermError, Reason::Expired(x)));
        }
    }
    let key = usable_key(keys, sig.kind, sig.hash, &sig.selector, &sig.domain, policy)?;
    if key.strict_domain {
        if let Some(i) = &sig.identity {
            let idom = i.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
            if idom != sig.domain {
                return Err((DkimResult::PermError, Reason::SubdomainForbidden));
            }
        }
    }
    if key.testing {
        v.notes.push("key in testing mode (t=y)".into());
    }

    // Body hash (RFC 6376 §6.1.3), with l= if present.
    let spec = sig.body_spec();
    let (bh, total) = bodies
        .get(spec)
        .ok_or_else(|| (DkimResult::TempError, Reason::NotChecked("the body hash was not computed".into())))?;
    if let Some(l) = sig.length {
        if l > total {
            return Err((DkimResult::PermError, Reason::LengthBeyondBody { length: l, body: total }));
        }
        v.notes.push(format!("l={l}: only the first {l} of {total} body octets are signed"));
    }
    if bh != sig.bh {
        return Err((DkimResult::Fail, Reason::BodyHash));
    }

    // Header hash: h= fields bottom-up, then this field without its b= value.
    scratch.clear();
    let names: Vec<&str> = header_names(&sig.headers).collect();
    for f in msg.select(&names).into_iter().flatten() {
        canon::canonicalize_header(sig.canon.header, f.raw, scratch);
    }
    canon::canonicalize_header_unterminated(sig.canon.header, &tags::without_value(sig.field.raw, "b"), scratch);
    if !key_verifies(&key, sig.hash, scratch, &sig.b) {
        return Err((DkimResult::Fail, Reason::Signature));
    }
    Ok(())
}

/// The key of (selector, domain) when it may check a signature of `kind` and `hash`: of that
/// type, long enough (RFC 8301 §3.2), and allowing the hash (its h= tag, RFC 6376 §3.6.1).
pub(crate) fn usable_key(
    keys: &dyn Fn(&str, &str) -> KeyResult,
    kind: KeyType,
    hash: Hash,
    selector: &str,
    domain: &str,
    policy: &Policy,
) -> Result<std::sync::Arc<crate::dkim::keyrecord::PublicKey>, (DkimResult, Reason)> {
    let key = keys(selector, domain)?;
    if kind != key.kind.key_type() {
        return Err((DkimResult::PermError, Reason::KeyTypeMismatch(kind)));
    }
    if kind == KeyType::Rsa && key.bits < policy.min_rsa_bits {
        return Err((DkimResult::PermError, Reason::KeyTooShort(key.bits)));
    }
    let hash_name = match hash {
        Hash::Sha1 => "sha1",
        Hash::Sha256 => "sha256",
    };
    if !key.hashes.is_empty() && !key.hashes.iter().any(|h| h == hash_name) {
        return Err((DkimResult::PermError, Reason::HashNotAllowed(hash_name)));
    }
    Ok(key)
}

/// Whether `b` is `key`'s signature of the header data `data` under `hash`.
pub(crate) fn key_verifies(key: &crate::dkim::keyrecord::PublicKey, hash: Hash, data: &[u8], b: &[u8]) -> bool {
    match (&key.kind, hash) {
        (PublicKeyData::Rsa { sha256: Some(k), .. }, Hash::Sha256) => k.verify_sig(data, b).is_ok(),
        (PublicKeyData::Rsa { der, .. }, hash) => rsa_verify_legacy(der, hash, data, b),
        (PublicKeyData::Ed25519(k), _) => {
            // RFC 8463 §3: Ed25519 over the SHA-256 of the header data.
            let digest = sha2::Sha256::digest(data);
            k.verify_sig(&digest, b).is_ok()
        }
    }
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

/// The authserv-id of an Authentication-Results value (RFC 8601 §2.2): after any comments
/// and folding white space, unquoted if it is a quoted-string, without a final dot.
pub fn authserv_id_of(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut rest = text.as_ref();
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        if let Some(r) = rest.strip_prefix('(') {
            // A comment, nested ones included.
            let mut depth = 1;
            let mut end = r.len();
            let mut escaped = false;
            for (i, c) in r.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &r[end.min(r.len())..];
            continue;
        }
        break;
    }
    let id = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next().unwrap_or_default().replace('\\', ""),
        None => rest.split([';', ' ', '\t', '\r', '\n', '(']).next().unwrap_or_default().to_string(),
    };
    id.trim_end_matches('.').to_string()
}

/// Whether the Authentication-Results field value `value` claims the authserv-id `ours`
/// (compared as host names: case and a final dot do not matter). Such a field that arrives
/// with a message is a forgery to remove (RFC 8601 §5).
pub fn claims_authserv_id(value: &[u8], ours: &str) -> bool {
    authserv_id_of(value).eq_ignore_ascii_case(ours.trim_end_matches('.'))
}

/// Whether `id` can stand as our authserv-id: a host name (letters, digits, `.`, `-`, `_`),
/// the token form of RFC 8601 §2.2. A CR or LF would let it inject header fields.
pub fn is_authserv_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
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
    // Values from the message go in only when they are what their property can be (RFC 8601
    // §2.3: a domain, a selector, an algorithm, base64): a hostile d= or b= must not break the
    // quoting of our own field. Signatures past the verification cap are reported once.
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    // header.i is `[local-part] "@" domain-name` (RFC 8601 §2.3). i= is dkim-quoted-printable
    // and its decoded local part may hold any octet (CR LF, a '(' that opens a comment, a ';'),
    // so only letters, digits, '@' and the atext specials of RFC 5322 §3.2.3 go in.
    let address = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.@".contains(&b))
    };
    let mut capped = false;
    for v in verdicts {
        if matches!(v.reason, Some(Reason::TooManySignatures(_))) {
            if capped {
                continue;
            }
            capped = true;
        }
        out.push_str(&format!(";{le}\tdkim={}", v.result));
        if let Some(reason) = &v.reason {
            let reason: String =
                reason.to_string().chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
            out.push_str(&format!(" reason=\"{reason}\""));
        }
        if token(&v.domain) {
            out.push_str(&format!("{le}\theader.d={}", v.domain));
        }
        if address(&v.identity) {
            out.push_str(&format!(" header.i={}", v.identity));
        }
        if token(&v.selector) {
            out.push_str(&format!(" header.s={}", v.selector));
        }
        if token(&v.algorithm) {
            out.push_str(&format!(" header.a={}", v.algorithm));
        }
        if !v.b_prefix.is_empty() && v.b_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) {
            out.push_str(&format!(" header.b=\"{}\"", v.b_prefix));
        }
    }
    out.push_str(le);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn authserv_ids_as_rfc_8601_writes_them() {
        for (v, want) in [
            (" mx.example.com; dkim=pass", "mx.example.com"),
            (" \"mx.example.com\"; dkim=pass", "mx.example.com"),
            (" (forged (nested)) mx.example.com; dkim=pass", "mx.example.com"),
            (" mx.example.com.; dkim=pass", "mx.example.com"),
            ("\n\tmx.example.com 1; none", "mx.example.com"),
            (" other.example; dkim=pass", "other.example"),
        ] {
            assert_eq!(authserv_id_of(v.as_bytes()), want, "{v:?}");
        }
    }

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
            let e = parse_key_record(rec.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{rec}: {e}");
        }
    }

    #[test]
    fn reasons_read_as_the_reports_always_showed_them() {
        for (reason, want) in [
            (Reason::TagSyntax { tag: "t", value: String::new() }, "syntax error in tag t="),
            (Reason::TagSyntax { tag: "d", value: "-x".into() }, "syntax error in tag d=-x"),
            (Reason::KeyTypeMismatch(KeyType::Ed25519), "key type does not match a= (key is not Ed25519)"),
            (Reason::KeyRecord(KeyRecordError::Revoked), "key revoked (empty p=)"),
            (Reason::LengthBeyondBody { length: 9, body: 2 }, "l=9 is longer than the body (2 octets)"),
            (Reason::BodyHash, "body hash mismatch"),
        ] {
            assert_eq!(reason.to_string(), want);
        }
    }

    /// RFC 8616 §5: in an internationalized header d= (and i=) may be U-labels. The hash covers
    /// the field as written; the key is fetched under the A-label name, and i= is compared in
    /// A-labels too.
    #[test]
    fn u_label_d_is_looked_up_as_its_a_label() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/keys/test-ed.private");
        let key = crate::dkim::key::SigningKey::from_path(&path, false).unwrap().0;
        let body = b"Hallo.\r\n";
        let bh = bodyhash::hash_body(BodySpec::signing(Canon::Relaxed), body).digest;
        let bh = base64::engine::general_purpose::STANDARD.encode(bh);
        let from = "From: J\u{f6}rg <j@b\u{fc}cher.example>\r\n";
        let field = format!(
            "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=b\u{fc}cher.example;\r\n\t\
             i=j@mail.b\u{fc}cher.example; s=test-ed; h=from; bh={bh}; b="
        );
        let mut data = vec![];
        canon::canonicalize_header(Canon::Relaxed, from.as_bytes(), &mut data);
        canon::canonicalize_header_unterminated(Canon::Relaxed, field.as_bytes(), &mut data);
        let b = base64::engine::general_purpose::STANDARD.encode(key.sign(&data).unwrap());
        let msg = format!("{field}{b}\r\n{from}\r\n{}", String::from_utf8_lossy(body));
        let record = format!(
            "v=DKIM1; k=ed25519; p={}",
            base64::engine::general_purpose::STANDARD.encode(key.public_key_record_bytes())
        );
        let asked = std::sync::Mutex::new(vec![]);
        let keys = |s: &str, d: &str| -> KeyResult {
            asked.lock().unwrap().push(format!("{s}._domainkey.{d}"));
            Ok(Arc::new(parse_key_record(record.as_bytes()).unwrap()))
        };
        let vs = verify_slice(msg.as_bytes(), &keys, 0, &Policy::default()).unwrap();
        assert_eq!(vs[0].result, DkimResult::Pass, "{:?}", vs[0].reason);
        assert_eq!(vs[0].domain, "xn--bcher-kva.example");
        assert_eq!(vs[0].identity, "j@mail.xn--bcher-kva.example");
        assert_eq!(*asked.lock().unwrap(), ["test-ed._domainkey.xn--bcher-kva.example"]);
    }

    #[test]
    fn qp_identity() {
        assert_eq!(qp_decode(b"joe=40football.example.com"), b"joe@football.example.com");
        assert_eq!(qp_decode(b"a=3Db"), b"a=b");
        assert_eq!(qp_decode(b"plain=zz"), b"plain=zz");
    }

    /// Hostile tag values stay out of our Authentication-Results; past the cap, one entry.
    #[test]
    fn authentication_results_keep_their_quoting() {
        let mut v = Verdict::new(DkimResult::Fail, Reason::Signature);
        v.domain = "example.com".into();
        v.selector = "x\"y(z".into();
        v.b_prefix = "AA\"AA)dk".into();
        v.algorithm = "rsa-sha256".into();
        let capped = Verdict::new(DkimResult::PermError, Reason::TooManySignatures(16));
        let ar = authentication_results("mx.example.com", &[v, capped.clone(), capped], "\r\n");
        assert!(ar.contains("header.d=example.com") && ar.contains("header.a=rsa-sha256"), "{ar}");
        assert!(!ar.contains("header.s=") && !ar.contains("header.b="), "{ar}");
        assert_eq!(ar.matches("more than 16").count(), 1, "{ar}");
    }

    /// A decoded i= carrying CR LF (a header line of its own), a comment or a ';' stays out of
    /// header.i; an ordinary address goes in as it is.
    #[test]
    fn authentication_results_identity_is_an_address() {
        for (identity, shown) in [
            ("user+tag@example.com", true),
            ("@example.com", true),
            ("o'brien.j@mail.example.com", true),
            ("\r\nX-Injected: yes@example.com", false),
            ("\nX-Injected:yes@example.com", false),
            ("a(b@example.com", false),
            ("a;dkim=pass@example.com", false),
            ("a\x1b[31m@example.com", false),
            ("a\u{85}@example.com", false),
            ("", false),
        ] {
            let mut v = Verdict::new(DkimResult::Pass, None);
            v.domain = "example.com".into();
            v.identity = identity.into();
            let ar = authentication_results("mx.example.com", &[v], "\r\n");
            assert_eq!(ar.contains(" header.i="), shown, "{identity:?}: {ar:?}");
            if shown {
                assert!(ar.contains(&format!(" header.i={identity}")), "{ar:?}");
            }
            // Every line break is one of our folds.
            assert_eq!(ar.matches('\n').count(), ar.matches("\r\n").count(), "{ar:?}");
            assert!(ar.trim_end().split("\r\n").skip(1).all(|l| l.starts_with('\t')), "{identity:?}: {ar:?}");
        }
    }

    #[test]
    fn overall_result() {
        let v = |r| Verdict::new(r, None);
        assert_eq!(overall(&[]), DkimResult::None);
        assert_eq!(overall(&[v(DkimResult::Fail), v(DkimResult::Pass)]), DkimResult::Pass);
        assert_eq!(overall(&[v(DkimResult::PermError), v(DkimResult::TempError)]), DkimResult::TempError);
    }
}
