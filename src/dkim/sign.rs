//! Making DKIM-Signature header fields (RFC 6376 §3.5, §5).
//!
//! A [`Signer`] holds everything fixed for a run (key, domain, selector, canonicalization,
//! header list); [`sign_slice`] signs one message held in memory with one or more signers and
//! returns the header fields to put on top of it. The clock is passed in (`now`), never read
//! here, so that golden tests are exact. This module does not read files or write output.

use crate::dkim::bodyhash::{BodySpec, HashedBody};
use crate::dkim::canon::{self, Canon, Canonicalization, CountingSink};
use crate::dkim::header::{HeaderError, Message};
use crate::dkim::key::{KeyError, KeyType, SigningKey};
use base64::Engine as _;
use sha2::Digest as _;
use std::sync::Arc;

/// Header fields signed by default when present: the RFC 6376 §5.4.1 list, plus the fields
/// that carry the message's identity and MIME structure (Message-ID, MIME-Version,
/// Content-Type, Content-Transfer-Encoding), which a relay has no reason to change.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "resent-date",
    "resent-from",
    "resent-to",
    "resent-cc",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// Header fields signed once more than they occur by default ("oversigning", RFC 6376 §8.15),
/// so that a second instance added in transit breaks the signature.
pub const DEFAULT_OVERSIGNED_HEADERS: &[&str] = &["from"];

/// Lines of the DKIM-Signature field are kept at or below this many characters (RFC 5322
/// §2.1.1 recommends 78).
const LINE_LIMIT: usize = 76;

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The header block cannot be parsed, or a field holds a control character (see
    /// [`HeaderError::ControlCharacter`]).
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// There is no From field, which RFC 6376 §5.4 requires to be signed.
    #[error("no From header field (RFC 5322 §3.6 requires one; RFC 6376 §5.4 requires it to be signed)")]
    NoFrom,
    /// The crypto backend failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// [`Body::Hashed`] lacks the hash a signer needs (a caller's error).
    #[error("the {0} body hash was not computed")]
    BodyNotHashed(&'static str),
}

/// Settings for a [`Signer`] that are wrong together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerConfigError {
    /// `d=` is not a domain name.
    #[error("domain {0:?} is not a valid domain name")]
    BadDomain(String),
    /// `s=` is not a selector (RFC 6376 §3.1: dot-separated sub-domain labels).
    #[error("selector {0:?} is not valid (letters, digits, '-' and '.' only)")]
    BadSelector(String),
    /// `i=` is not in the `d=` domain or one of its subdomains (RFC 6376 §3.5).
    #[error("identity {identity:?} must be an address at {domain} or one of its subdomains (RFC 6376 §3.5 i=)")]
    BadIdentity {
        /// The `i=` asked for.
        identity: String,
        /// The `d=` domain.
        domain: String,
    },
    /// A header name with characters a field name cannot have.
    #[error("header name {0:?} is not a valid field name")]
    BadHeaderName(String),
    /// The signed header list lacks From (RFC 6376 §5.4).
    #[error("the signed header list must include From (RFC 6376 §5.4)")]
    NoFromInList,
    /// `a=` asked for does not match the key.
    #[error("algorithm {asked} does not match the key, which is {key}")]
    AlgorithmMismatch {
        /// What was asked for.
        asked: String,
        /// What the key can do.
        key: &'static str,
    },
}

/// One signature to make: key and tags. Built with [`SignerBuilder`].
#[derive(Debug, Clone)]
pub struct Signer {
    key: Arc<SigningKey>,
    domain: String,
    selector: String,
    canon: Canonicalization,
    /// The names to sign and to oversign, as [`signature_field`] matches them (made by
    /// `build`).
    names: Arc<HeaderNames>,
    /// The start of every DKIM-Signature it makes, up to `s=` (made by `build`).
    head: Arc<Head>,
    identity: Option<String>,
    body_length: bool,
    expire: Option<u64>,
}

/// Builds a [`Signer`]: `SignerBuilder::new(key, "example.com", "sel").canon(..).build()`.
pub struct SignerBuilder {
    signer: Signer,
    signed: Vec<String>,
    oversigned: Vec<String>,
    algorithm: Option<String>,
}

impl SignerBuilder {
    /// A signer with the defaults: relaxed/relaxed, the default header list, From oversigned.
    /// A domain or selector given as U-labels is signed as its A-labels (RFC 8616 §5; see
    /// [`crate::dkim::tags::to_a_labels`]).
    pub fn new(key: Arc<SigningKey>, domain: &str, selector: &str) -> SignerBuilder {
        use crate::dkim::tags::to_a_labels;
        SignerBuilder {
            signer: Signer {
                key,
                domain: to_a_labels(domain.trim_end_matches('.')).to_ascii_lowercase(),
                selector: to_a_labels(selector).into_owned(),
                canon: Canonicalization::default(),
                names: Arc::default(),
                head: Arc::default(),
                identity: None,
                body_length: false,
                expire: None,
            },
            signed: DEFAULT_SIGNED_HEADERS.iter().map(|s| s.to_string()).collect(),
            oversigned: DEFAULT_OVERSIGNED_HEADERS.iter().map(|s| s.to_string()).collect(),
            algorithm: None,
        }
    }

    /// The `c=` pair.
    pub fn canon(mut self, canon: Canonicalization) -> Self {
        self.signer.canon = canon;
        self
    }

    /// The names of the fields to sign (every instance present is signed).
    pub fn signed_headers<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, names: I) -> Self {
        self.signed = names.into_iter().map(|s| s.as_ref().trim().to_ascii_lowercase()).collect();
        self
    }

    /// The names of the fields to sign once more than they occur (empty: no oversigning).
    pub fn oversigned_headers<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, names: I) -> Self {
        self.oversigned = names.into_iter().map(|s| s.as_ref().trim().to_ascii_lowercase()).collect();
        self
    }

    /// The `i=` tag (a domain given as U-labels is written as A-labels, as `d=`).
    pub fn identity(mut self, identity: Option<String>) -> Self {
        self.signer.identity = identity.map(|i| crate::dkim::tags::identity_to_a_labels(&i).into_owned());
        self
    }

    /// Whether to add `l=` (the length of the canonicalized body; RFC 6376 §8.2 explains the
    /// risk, so it is off by default).
    pub fn body_length(mut self, on: bool) -> Self {
        self.signer.body_length = on;
        self
    }

    /// Seconds after `t=` at which the signature expires (`x=`).
    pub fn expire(mut self, seconds: Option<u64>) -> Self {
        self.signer.expire = seconds;
        self
    }

    /// The `a=` tag asked for; it must match the key type (checked in `build`).
    pub fn algorithm(mut self, algorithm: Option<String>) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Checks the settings and returns the signer.
    pub fn build(self) -> Result<Signer, SignerConfigError> {
        let mut s = self.signer;
        check_names(&s.domain, &s.selector)?;
        for name in self.signed.iter().chain(&self.oversigned) {
            if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
                return Err(SignerConfigError::BadHeaderName(name.clone()));
            }
        }
        if !self.signed.iter().any(|n| n == "from") {
            return Err(SignerConfigError::NoFromInList);
        }
        if let Some(i) = &s.identity {
            if !crate::dkim::tags::identity_in_domain(i, &s.domain) {
                return Err(SignerConfigError::BadIdentity { identity: i.clone(), domain: s.domain });
            }
        }
        if let Some(a) = self.algorithm {
            let want = s.key.key_type().algorithm();
            if !a.eq_ignore_ascii_case(want) {
                return Err(SignerConfigError::AlgorithmMismatch { asked: a, key: want });
            }
        }
        s.names = Arc::new(HeaderNames::new(&self.signed, &self.oversigned));
        s.head = Arc::new(Head::new(&s));
        Ok(s)
    }
}

/// Checks that `domain` and `selector` can be used in `d=` and `s=` (and in the DNS name
/// `selector._domainkey.domain`).
pub fn check_names(domain: &str, selector: &str) -> Result<(), SignerConfigError> {
    if !crate::dkim::tags::is_dns_name(domain) {
        return Err(SignerConfigError::BadDomain(domain.to_string()));
    }
    if !crate::dkim::tags::is_dns_name(selector) {
        return Err(SignerConfigError::BadSelector(selector.to_string()));
    }
    Ok(())
}

impl Signer {
    /// The `d=` domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The `s=` selector.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key.key_type()
    }

    /// The `c=` pair.
    pub fn canonicalization(&self) -> Canonicalization {
        self.canon
    }

    /// The private key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }
}

/// The body hash of one canonicalization, with the canonical length (for `l=`).
struct BodyHash {
    hash: [u8; 32],
    length: u64,
}

/// A body to hash: in one slice, or in pieces of a stored message (see
/// [`canon::canonicalize_body_pieces`]: an mbox body whose quoting `>`s are skipped).
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    /// The body's octets.
    Whole(&'a [u8]),
    /// `stored[pieces[0]]`, `stored[pieces[1]]`, ... one after the other.
    Pieces(&'a [u8], &'a [std::ops::Range<usize>]),
    /// Not held: hashed as it streamed past, with [`BodySpec::signing`] of each body
    /// canonicalization the signers use.
    Hashed(&'a HashedBody),
}

fn body_hash(canon: Canon, body: Body<'_>) -> Result<BodyHash, SignError> {
    let mut hasher = sha2::Sha256::new();
    let mut counter = CountingSink::new(&mut hasher);
    match body {
        Body::Whole(b) => canon::canonicalize_body(canon, b, &mut counter),
        Body::Pieces(stored, pieces) => canon::canonicalize_body_pieces(canon, stored, pieces, &mut counter),
        Body::Hashed(h) => {
            let d = h.get(BodySpec::signing(canon)).ok_or(SignError::BodyNotHashed(canon.as_str()))?;
            let hash = d.digest.as_slice().try_into().map_err(|_| SignError::BodyNotHashed(canon.as_str()))?;
            return Ok(BodyHash { hash, length: d.total });
        }
    }
    let length = counter.count;
    Ok(BodyHash { hash: hasher.finalize().into(), length })
}

/// Signs the message `msg` with each signer and returns the DKIM-Signature fields to add on
/// top of it, in the message's own line ending, first signer's field first. `now` is the Unix
/// time for `t=`. The body is hashed once per body canonicalization, however many signers.
pub fn sign_slice(signers: &[Signer], msg: &[u8], now: u64) -> Result<Vec<u8>, SignError> {
    sign_parsed(signers, &Message::parse(msg)?, now)
}

/// [`sign_slice`] for a message already split into fields and body.
pub fn sign_parsed(signers: &[Signer], parsed: &Message, now: u64) -> Result<Vec<u8>, SignError> {
    sign_parsed_body(signers, parsed, Body::Whole(parsed.body), now)
}

/// [`sign_parsed`] with the body given apart: `parsed`'s header fields are signed, `body` is
/// hashed (the pieces of an mbox body stored with quoted lines; `parsed.body` is not read).
pub fn sign_parsed_body(signers: &[Signer], parsed: &Message, body: Body<'_>, now: u64) -> Result<Vec<u8>, SignError> {
    // Room for an Ed25519 field and most RSA-2048 ones without growing.
    let mut out = field_buffer(640 * signers.len());
    each_field(signers, parsed, body, now, |field| push_line_ends(&mut out, field, parsed.crlf))?;
    Ok(out)
}

thread_local! {
    /// Buffers of new header fields given back ([`give_back_fields`]) for this thread's next
    /// messages. A bulk run holds a unit's fields until they are written, thousands of them,
    /// and then frees them on whichever thread is free: through the allocator, each of those
    /// buffers cost about as much as canonicalizing a 4 KB message's header block.
    static SPARE_OUT: std::cell::RefCell<SpareOut> = const { std::cell::RefCell::new(SpareOut { buffers: Vec::new(), bytes: 0 }) };
}

/// A thread's kept field buffers and their capacity in all.
struct SpareOut {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// What a thread keeps: at most this many octets of buffers (about 3,000 fields of a 4 KB
/// message signed with one key, more than the 2,000 of an 8 MB unit; the 16 MB units of the
/// AVX-512 lanes have 4,000, and their last quarter allocates anew), at most this many
/// buffers, and none larger than this. On 64 threads, at most 128 MiB in all, less than the
/// units in flight hold.
const SPARE_OUT_BYTES: usize = 2 << 20;
const SPARE_OUT_KEPT: usize = 4096;
const SPARE_OUT_LARGEST: usize = 2048;

/// An empty buffer for new header fields with room for `capacity` octets: one given back on
/// this thread if there is one.
fn field_buffer(capacity: usize) -> Vec<u8> {
    let spare = SPARE_OUT.try_with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let b = s.buffers.pop()?;
        s.bytes -= b.capacity();
        Some(b)
    });
    let mut out = spare.ok().flatten().unwrap_or_default();
    out.reserve(capacity);
    out
}

/// Gives the buffers of new header fields that [`sign_parsed_body`] and [`sign_two_hashed`]
/// returned back to this thread, once written: its next messages' fields go into them. A
/// thread keeps up to 2 MiB of them, up to 4096, each of at most 2 KiB; the rest are freed.
/// The list is borrowed for one buffer at a time, so `buffers` may itself sign messages.
pub fn give_back_fields(buffers: impl IntoIterator<Item = Vec<u8>>) {
    for mut b in buffers {
        let _ = SPARE_OUT.try_with(|s| {
            let Ok(mut spare) = s.try_borrow_mut() else { return };
            let cap = b.capacity();
            if cap <= SPARE_OUT_LARGEST && spare.bytes + cap <= SPARE_OUT_BYTES && spare.buffers.len() < SPARE_OUT_KEPT
            {
                b.clear();
                spare.bytes += cap;
                spare.buffers.push(b);
            }
        });
    }
}

/// Appends `wire` (a field we built, CRLF line ends) to `out` with CRLF line ends, or with
/// `crlf` false with LF ones (every CR dropped), as a message stored that way keeps its lines.
pub fn push_line_ends(out: &mut Vec<u8>, wire: &str, crlf: bool) {
    let b = wire.as_bytes();
    if crlf {
        out.extend_from_slice(b);
        return;
    }
    let mut from = 0;
    for cr in memchr::memchr_iter(b'\r', b) {
        out.extend_from_slice(&b[from..cr]);
        from = cr + 1;
    }
    out.extend_from_slice(&b[from..]);
}

/// A DKIM-Signature field we made, in its wire form: folded with CRLF TAB, ending in CRLF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureField(String);

impl SignatureField {
    /// The field name.
    pub const NAME: &'static str = "DKIM-Signature";

    /// The value: after the colon (from its leading space), without the final CRLF; folded
    /// lines are joined by CRLF TAB.
    pub fn value(&self) -> &str {
        &self.0[Self::NAME.len() + 1..self.0.len() - 2]
    }

    /// The whole field as it goes on the wire.
    pub fn wire(&self) -> &str {
        &self.0
    }
}

/// [`sign_parsed_body`] giving each signer's field apart, in signer order.
pub fn sign_fields(
    signers: &[Signer],
    parsed: &Message,
    body: Body<'_>,
    now: u64,
) -> Result<Vec<SignatureField>, SignError> {
    let mut out = Vec::with_capacity(signers.len());
    each_field(signers, parsed, body, now, |field| out.push(SignatureField(field.to_string())))?;
    Ok(out)
}

/// Makes each signer's field for `parsed` in turn and hands it (wire form) to `take`.
fn each_field(
    signers: &[Signer],
    parsed: &Message,
    body: Body<'_>,
    now: u64,
    mut take: impl FnMut(&str),
) -> Result<(), SignError> {
    check_signable(parsed)?;
    // One hash per body canonicalization (there are two), made when a signer first wants it.
    let mut hashes: [Option<BodyHash>; 2] = [None, None];
    with_scratch(|scratch| {
        for signer in signers {
            let slot = &mut hashes[usize::from(signer.canon.body == Canon::Relaxed)];
            let bh = match slot {
                Some(h) => h,
                None => slot.insert(body_hash(signer.canon.body, body)?),
            };
            signature_field(signer, parsed, bh, now, None, scratch)?;
            take(&scratch.text);
        }
        Ok(())
    })
}

/// Whether `parsed`'s header block can be signed: it has a From field, and no control
/// character in a field (RFC 5322 §2.2 forbids them and verifiers disagree on them, so a
/// signature over one would fail at some receivers).
fn check_signable(parsed: &Message) -> Result<(), SignError> {
    if !parsed.fields.iter().any(|f| f.is("from")) {
        return Err(SignError::NoFrom);
    }
    Ok(parsed.check_field_octets()?)
}

/// [`sign_parsed_body`] of two messages whose bodies are hashed, with the same results as two
/// calls of it. When each has one signer, with an Ed25519 key, the two messages' signed data
/// are hashed together ([`crate::arch::sha256x2::digest_two`]): about 900 octets a message,
/// which one SHA-256 stream hashes in a tenth of what the rest of a 4 KB message costs.
pub fn sign_two_hashed<'m>(two: [HashedMessage<'m>; 2], now: u64) -> [Result<Vec<u8>, SignError>; 2] {
    /// The one Ed25519 signer of a message that can be signed, and its body hash.
    fn single<'m>((signers, parsed, body): HashedMessage<'m>) -> Option<(&'m Signer, &'m Message<'m>, BodyHash)> {
        match signers {
            [s] if s.key.key_type() == KeyType::Ed25519 && check_signable(parsed).is_ok() => {
                body_hash(s.canon.body, Body::Hashed(body)).ok().map(|bh| (s, parsed, bh))
            }
            _ => None,
        }
    }
    /// The field of a message, its data's digest given.
    fn finish(
        (signer, parsed, _): (&Signer, &Message, BodyHash),
        f: Folder,
        digest: &[u8; 32],
        scratch: &mut Scratch,
    ) -> Result<Vec<u8>, SignError> {
        let sig = signer.key.sign_prehashed(digest).unwrap_or(Err(KeyError::Sign))?;
        signed_field(f, &sig, scratch);
        let mut out = field_buffer(640);
        push_line_ends(&mut out, &scratch.text, parsed.crlf);
        Ok(out)
    }
    let (Some(a), Some(b), true) = (single(two[0]), single(two[1]), crate::arch::sha256x2::available()) else {
        return two.map(|(signers, parsed, body)| sign_parsed_body(signers, parsed, Body::Hashed(body), now));
    };
    with_scratch_pair(|sa, sb| {
        let fa = unsigned_field(a.0, a.1, &a.2, now, None, sa);
        let fb = unsigned_field(b.0, b.1, &b.2, now, None, sb);
        let Some([da, db]) = crate::arch::sha256x2::digest_two(&sa.data, &sb.data) else {
            unreachable!("SHA-NI was found above")
        };
        [finish(a, fa, &da, sa), finish(b, fb, &db, sb)]
    })
}

/// A message for [`sign_two_hashed`]: its signers, its parsed header block and its hashed body.
pub type HashedMessage<'m> = (&'m [Signer], &'m Message<'m>, &'m HashedBody);

/// The ARC-Message-Signature of instance `instance` (RFC 8617 §4.1.2) that `signer` makes for
/// `parsed`: a DKIM-Signature in all but its name, `i=` (the instance) instead of `v=`, and no
/// `i=` identity, `x=` or `l=`. In wire form (CRLF folds, final CRLF).
pub fn arc_message_signature(
    signer: &Signer,
    parsed: &Message,
    body: Body<'_>,
    instance: u32,
    now: u64,
) -> Result<String, SignError> {
    if !parsed.fields.iter().any(|f| f.is("from")) {
        return Err(SignError::NoFrom);
    }
    parsed.check_field_octets()?;
    let bh = body_hash(signer.canon.body, body)?;
    with_scratch(|scratch| {
        signature_field(signer, parsed, &bh, now, Some(instance), scratch)?;
        Ok(scratch.text.clone())
    })
}

/// The ARC-Seal of instance `instance` (RFC 8617 §4.1.3): `i=`, `a=`, `cv=`, `d=`, `s=`, `t=`,
/// then `b=`, the signature of `sets` (the canonical form of every ARC set below this seal and
/// of this set's other two fields, relaxed, each with its CRLF) followed by this field without
/// its `b=` value and without a final CRLF. In wire form.
pub fn arc_seal(signer: &Signer, instance: u32, cv: &str, sets: &[u8], now: u64) -> Result<String, SignError> {
    let mut f = Folder::new(String::new(), "ARC-Seal:");
    f.tag_fmt(format_args!("i={instance};"));
    f.tag_fmt(format_args!("a={};", signer.key.key_type().algorithm()));
    f.tag_fmt(format_args!("cv={cv};"));
    f.tag_fmt(format_args!("d={};", signer.domain));
    f.tag_fmt(format_args!("s={};", signer.selector));
    f.tag_fmt(format_args!("t={now};"));
    f.fold();
    f.push("b=");
    let mut input = Vec::with_capacity(sets.len() + f.text.len());
    input.extend_from_slice(sets);
    canon::canonicalize_header_unterminated(Canon::Relaxed, f.text.as_bytes(), &mut input);
    let sig = signer.key.sign(&input)?;
    f.chunked(&base64::engine::general_purpose::STANDARD.encode(sig));
    f.text.push_str("\r\n");
    Ok(f.text)
}

/// The names a [`Signer`] may list in `h=`, in the order it lists them: the signed names, then
/// the oversigned names that are not also signed. [`HeaderNames::find`] looks a field name up
/// in a small hash table keyed by [`name_key`], so that a field costs one probe and not a
/// comparison with every name (the default list has about twenty).
#[derive(Debug)]
struct HeaderNames {
    names: Vec<HeaderName>,
    /// Open addressing, linear probing: 1 + the index in `names`, or 0 for an empty slot. A
    /// power of two, at least twice `names.len()` (so a probe ends at an empty slot).
    table: Vec<u32>,
}

#[derive(Debug)]
struct HeaderName {
    /// Lower-cased.
    name: String,
    /// Listed once more than it occurs (RFC 6376 §8.15).
    oversigned: bool,
    key: (usize, u64),
}

/// A field name's length and its first eight octets with bit 5 set in each (zero-padded): two
/// names equal without ASCII case have the same key, and most unequal ones differ in it.
fn name_key(name: &[u8]) -> (usize, u64) {
    // Whole words where there are eight octets, octet by octet under that: a copy of a
    // variable length into a buffer was a call to memcpy per field.
    let word = match name.first_chunk::<8>() {
        Some(w) => u64::from_le_bytes(*w),
        None => name.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
    };
    (name.len(), word | 0x2020_2020_2020_2020)
}

impl Default for HeaderNames {
    fn default() -> HeaderNames {
        HeaderNames::new(&[], &[])
    }
}

/// The first slot of `key` in a table of `mask + 1` slots.
fn name_slot((len, word): (usize, u64), mask: usize) -> usize {
    // Fibonacci hashing of the key's two parts; the top bits are the best mixed.
    let h = (word ^ (len as u64).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize & mask
}

impl HeaderNames {
    /// `signed` and `oversigned` lower-cased; a name given twice counts once (`--headers
    /// from,subject,from` signs From once per instance, and once more if oversigned, not
    /// twice more).
    fn new(signed: &[String], oversigned: &[String]) -> HeaderNames {
        let mut names: Vec<HeaderName> = Vec::new();
        for name in signed.iter().chain(oversigned) {
            if !names.iter().any(|n| n.name == *name) {
                names.push(HeaderName {
                    name: name.clone(),
                    oversigned: oversigned.contains(name),
                    key: name_key(name.as_bytes()),
                });
            }
        }
        let mask = (2 * names.len()).next_power_of_two().max(16) - 1;
        let mut table = vec![0u32; mask + 1];
        for (i, n) in names.iter().enumerate() {
            let mut slot = name_slot(n.key, mask);
            while table[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            table[slot] = u32::try_from(i + 1).expect("fewer than 2^32 header names");
        }
        HeaderNames { names, table }
    }

    /// The index of the name `field` matches (case-blind), if any.
    fn find(&self, field: &[u8]) -> Option<usize> {
        let key = name_key(field);
        let mask = self.table.len() - 1;
        let mut slot = name_slot(key, mask);
        loop {
            let i = (self.table[slot] as usize).checked_sub(1)?;
            let n = &self.names[i];
            if n.key == key && n.name.as_bytes().eq_ignore_ascii_case(field) {
                return Some(i);
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// The `h=` list of `names` for `msg` into `list`, as (name index, field index) in `h=` order:
/// each name once per instance present, instances taken from the bottom up (RFC 6376 §5.4.2),
/// then for an oversigned name once more with no field (`usize::MAX`: a nonexistent field,
/// which an instance added in transit would fill, breaking the signature). `found` is scratch.
fn select_signed(names: &HeaderNames, msg: &Message, found: &mut Vec<(usize, usize)>, list: &mut Vec<(usize, usize)>) {
    // One pass over the fields, bottom-up: each field that has a name on the list.
    found.clear();
    for (i, f) in msg.fields.iter().enumerate().rev() {
        if let Some(n) = names.find(f.name) {
            found.push((n, i));
        }
    }
    // Grouped by name; the sort is stable, so each name's instances stay bottom-up.
    found.sort_by_key(|&(n, _)| n);
    list.clear();
    let mut next = found.iter().copied().peekable();
    for (n, name) in names.names.iter().enumerate() {
        while let Some(hit) = next.next_if(|&(m, _)| m == n) {
            list.push(hit);
        }
        if name.oversigned {
            list.push((n, usize::MAX));
        }
    }
}

/// The tags a signer writes the same into every DKIM-Signature, `v=` to `s=`, folded as
/// [`signature_field`] would fold them: written once, not formatted again for each message.
#[derive(Debug, Default)]
struct Head {
    text: String,
    /// The column at its end.
    col: usize,
}

impl Head {
    fn new(signer: &Signer) -> Head {
        let mut f = Folder::new(String::new(), "DKIM-Signature:");
        f.tag("v=1;");
        head_tags(&mut f, signer);
        Head { text: f.text, col: f.col }
    }
}

/// `a=`, `c=`, `d=` and `s=` of `signer`.
fn head_tags(f: &mut Folder, signer: &Signer) {
    f.tag_fmt(format_args!("a={};", signer.key.key_type().algorithm()));
    f.tag_fmt(format_args!("c={}/{};", signer.canon.header.as_str(), signer.canon.body.as_str()));
    f.tag_fmt(format_args!("d={};", signer.domain));
    f.tag_fmt(format_args!("s={};", signer.selector));
}

/// A thread's buffers for [`signature_field`], kept from one message to the next: signing a
/// small message costs only a few microseconds with Ed25519, and growing them anew for each
/// one showed up in its profile.
#[derive(Default)]
struct Scratch {
    /// The field being built.
    text: String,
    /// What is signed: the canonicalized fields and the new field.
    data: Vec<u8>,
    found: Vec<(usize, usize)>,
    list: Vec<(usize, usize)>,
}

thread_local! {
    /// Two, for the two messages [`sign_two_hashed`] signs at once.
    static SCRATCH: std::cell::RefCell<[Scratch; 2]> = std::cell::RefCell::default();
}

/// What a thread keeps of its [`Scratch`] buffers between messages: ordinary messages fit,
/// and one with thousands of signed fields does not leave megabytes behind in every thread of
/// a daemon.
const SCRATCH_KEPT: usize = 64 * 1024;

/// Runs `f` with this thread's [`Scratch`] (or new buffers, should it already be in use).
fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    with_scratch_pair(|s, _| f(s))
}

/// Runs `f` with this thread's two [`Scratch`]es (or new buffers, should they be in use).
fn with_scratch_pair<T>(f: impl FnOnce(&mut Scratch, &mut Scratch) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut pair) => {
            let [a, b] = &mut *pair;
            let out = f(a, b);
            // Nothing in them is needed once `f` is done.
            for s in pair.iter_mut() {
                s.text.clear();
                s.data.clear();
                s.found.clear();
                s.list.clear();
                s.text.shrink_to(SCRATCH_KEPT);
                s.data.shrink_to(SCRATCH_KEPT);
                s.found.shrink_to(SCRATCH_KEPT / 16);
                s.list.shrink_to(SCRATCH_KEPT / 16);
            }
            out
        }
        Err(_) => f(&mut Scratch::default(), &mut Scratch::default()),
    })
}

/// Builds one complete DKIM-Signature field (with CRLF folds and a final CRLF), or with
/// `arc_instance` the ARC-Message-Signature of that instance, into `scratch.text`.
fn signature_field(
    signer: &Signer,
    msg: &Message,
    bh: &BodyHash,
    now: u64,
    arc_instance: Option<u32>,
    scratch: &mut Scratch,
) -> Result<(), SignError> {
    let f = unsigned_field(signer, msg, bh, now, arc_instance, scratch);
    let sig = signer.key.sign(&scratch.data)?;
    signed_field(f, &sig, scratch);
    Ok(())
}

/// The first part of [`signature_field`]: the field up to its empty `b=` (returned), and what
/// is signed in `scratch.data`.
fn unsigned_field(
    signer: &Signer,
    msg: &Message,
    bh: &BodyHash,
    now: u64,
    arc_instance: Option<u32>,
    scratch: &mut Scratch,
) -> Folder {
    let b64 = &base64::engine::general_purpose::STANDARD;
    select_signed(&signer.names, msg, &mut scratch.found, &mut scratch.list);

    // Built without a heap allocation per tag: with Ed25519 a signature costs only ~7 µs, and
    // formatting each tag into its own String showed up at ~10% of a 4 KB message.
    let mut f = match arc_instance {
        None => Folder::from_head(std::mem::take(&mut scratch.text), &signer.head),
        Some(i) => {
            let mut f = Folder::new(std::mem::take(&mut scratch.text), "ARC-Message-Signature:");
            f.tag_fmt(format_args!("i={i};"));
            head_tags(&mut f, signer);
            f
        }
    };
    f.tag_fmt(format_args!("t={now};"));
    if arc_instance.is_none() {
        if let Some(x) = signer.expire {
            f.tag_fmt(format_args!("x={};", now + x));
        }
        if let Some(i) = &signer.identity {
            f.tag_fmt(format_args!("i={i};"));
        }
        if signer.body_length {
            f.tag_fmt(format_args!("l={};", bh.length));
        }
    }
    f.list("h=", scratch.list.iter().map(|&(n, _)| signer.names.names[n].name.as_str()), ':', ";");
    let mut bh64 = [0u8; 44];
    let n = b64.encode_slice(bh.hash, &mut bh64).expect("44 octets hold 32 in base64");
    f.tag_fmt(format_args!("bh={};", std::str::from_utf8(&bh64[..n]).expect("base64 is ASCII")));
    f.fold();
    f.push("b=");

    // RFC 6376 §3.7: the signed fields in h= order, each selected bottom-up, then this field
    // with an empty b= and no final CRLF.
    let data = &mut scratch.data;
    data.clear();
    for &(_, i) in &scratch.list {
        if let Some(field) = msg.fields.get(i) {
            canon::canonicalize_header(signer.canon.header, field.raw, data);
        }
    }
    canon::canonicalize_header_unterminated(signer.canon.header, f.text.as_bytes(), data);
    f
}

/// The second part of [`signature_field`]: `f` completed with the signature `sig`, into
/// `scratch.text`.
fn signed_field(mut f: Folder, sig: &[u8], scratch: &mut Scratch) {
    // The longest signature we make (RSA-8192, 1024 octets) is 1368 in base64.
    let mut sig64 = [0u8; 1368];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(sig, &mut sig64)
        .expect("room for an RSA-8192 signature");
    f.chunked(std::str::from_utf8(&sig64[..n]).expect("base64 is ASCII"));
    f.text.push_str("\r\n");
    scratch.text = f.text;
}

/// Writes `tag=value;` items separated by spaces, folding (CRLF TAB) before an item that
/// would pass [`LINE_LIMIT`].
struct Folder {
    text: String,
    col: usize,
}

impl Folder {
    /// A field that starts as `head` does, written into `text` (emptied first).
    fn from_head(text: String, head: &Head) -> Folder {
        let mut f = Folder::new(text, "");
        f.push(&head.text);
        f.col = head.col;
        f
    }

    /// A field named `name` (with its colon), written into `text` (emptied first).
    fn new(mut text: String, name: &str) -> Folder {
        // Room for a typical field with an RSA-2048 signature, so that it never reallocates.
        text.clear();
        text.reserve(768);
        text.push_str(name);
        Folder { text, col: name.len() }
    }

    fn fold(&mut self) {
        self.text.push_str("\r\n\t");
        self.col = 8;
    }

    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.col += s.len();
    }

    /// One unbreakable item, after a space or a fold.
    fn tag(&mut self, item: &str) {
        if self.col + 1 + item.len() > LINE_LIMIT {
            self.fold();
        } else {
            self.push(" ");
        }
        self.push(item);
    }

    /// [`Folder::tag`] for an item given as format arguments: formatted straight into the
    /// text, and the space or fold put in before it once its length is known (the item is
    /// short, so moving it costs little).
    fn tag_fmt(&mut self, args: std::fmt::Arguments) {
        use std::fmt::Write as _;
        let start = self.text.len();
        self.text.write_fmt(args).expect("formatting into a String does not fail");
        let len = self.text.len() - start;
        if self.col + 1 + len > LINE_LIMIT {
            self.text.insert_str(start, "\r\n\t");
            self.col = 8 + len;
        } else {
            self.text.insert(start, ' ');
            self.col += 1 + len;
        }
    }

    /// `prefix` then the items joined by `sep`, folding after a separator where needed
    /// (FWS is allowed around the colons of h=, RFC 6376 §3.5), then `end`.
    fn list<'i>(&mut self, prefix: &str, mut items: impl Iterator<Item = &'i str>, sep: char, end: &str) {
        self.tag_fmt(format_args!("{prefix}{}", items.next().unwrap_or("")));
        let mut sep_buf = [0u8; 4];
        let sep: &str = sep.encode_utf8(&mut sep_buf);
        for item in items {
            if self.col + 1 + item.len() + 1 > LINE_LIMIT {
                self.push(sep);
                self.fold();
                self.push(item);
            } else {
                self.push(sep);
                self.push(item);
            }
        }
        self.push(end);
    }

    /// A long value cut into pieces at the line limit (base64 may contain FWS anywhere, RFC
    /// 6376 §3.5 b=).
    fn chunked(&mut self, value: &str) {
        let mut rest = value;
        while !rest.is_empty() {
            let room = LINE_LIMIT.saturating_sub(self.col).max(1);
            let take = room.min(rest.len());
            self.push(&rest[..take]);
            rest = &rest[take..];
            if !rest.is_empty() {
                self.fold();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed_key() -> Arc<SigningKey> {
        Arc::new(SigningKey::from_bytes(crate::dkim::key::tests_support::ED25519_PEM.as_bytes(), "t").unwrap())
    }

    /// A field buffer given back is the next one this thread signs into (emptied); one larger
    /// than a thread keeps is freed, and a thread keeps at most its bound.
    #[test]
    fn field_buffers_given_back_are_reused_within_bounds() {
        std::thread::spawn(|| {
            let msg = b"From: a@example.com\nSubject: s\n\nbody\n";
            let signers = [SignerBuilder::new(ed_key(), "example.com", "s").build().unwrap()];
            let first = sign_slice(&signers, msg, 1_700_000_000).unwrap();
            let kept = || SPARE_OUT.with(|s| s.borrow().buffers.len());
            let (buffer, want) = (first.as_ptr(), first.clone());
            give_back_fields([first]);
            assert_eq!(kept(), 1);
            let again = sign_slice(&signers, msg, 1_700_000_000).unwrap();
            assert_eq!((kept(), again.as_ptr()), (0, buffer), "the buffer given back was not reused");
            assert_eq!(again, want, "a reused buffer changed the field");

            // The largest kept is kept; one octet more is freed.
            give_back_fields([Vec::with_capacity(SPARE_OUT_LARGEST + 1), Vec::with_capacity(SPARE_OUT_LARGEST)]);
            assert_eq!(kept(), 1);
            assert_eq!(field_buffer(1).capacity(), SPARE_OUT_LARGEST);
            give_back_fields((0..SPARE_OUT_KEPT + 10).map(|_| Vec::with_capacity(16)));
            assert_eq!(kept(), SPARE_OUT_KEPT);
            // A lazy iterator that signs as it goes takes buffers between the ones it gives.
            give_back_fields((0..3).map(|_| sign_slice(&signers, msg, 1_700_000_000).unwrap()));
            assert_eq!(kept(), SPARE_OUT_KEPT);
            // The octets kept are bounded too, and accounted as buffers come and go.
            while kept() > 0 {
                field_buffer(0);
            }
            assert_eq!(SPARE_OUT.with(|s| s.borrow().bytes), 0);
            give_back_fields((0..SPARE_OUT_KEPT).map(|_| Vec::with_capacity(SPARE_OUT_LARGEST)));
            assert_eq!(kept(), SPARE_OUT_BYTES / SPARE_OUT_LARGEST);
            assert_eq!(SPARE_OUT.with(|s| s.borrow().bytes), SPARE_OUT_BYTES);
        })
        .join()
        .unwrap();
    }

    /// The h= list [`select_signed`] makes, each name with the line of the field it signs
    /// (0 for none).
    fn header_list(s: &Signer, m: &Message) -> Vec<(String, usize)> {
        let (mut found, mut list) = (vec![], vec![]);
        select_signed(&s.names, m, &mut found, &mut list);
        list.iter().map(|&(n, i)| (s.names.names[n].name.clone(), i.wrapping_add(1))).collect()
    }

    fn named(list: &[(&str, usize)]) -> Vec<(String, usize)> {
        list.iter().map(|&(n, i)| (n.to_string(), i)).collect()
    }

    #[test]
    fn header_list_counts_instances_bottom_up_and_oversigns() {
        let msg =
            b"From: a@example.com\r\nTo: b@x\r\nTO: c@x\r\nReceived: x\r\nSubject: s\r\nReply-To: r@x\r\n\r\nbody\r\n";
        let m = Message::parse(msg).unwrap();
        let s = SignerBuilder::new(ed_key(), "example.com", "sel").build().unwrap();
        let want = [("from", 1), ("from", 0), ("reply-to", 6), ("subject", 5), ("to", 3), ("to", 2)];
        assert_eq!(header_list(&s, &m), named(&want));
        // Names given twice count once (builds before 2026-12-04 listed a duplicated name's
        // extra instance once per copy); an oversigned name not signed otherwise still lists
        // its instances; case does not matter.
        let s = SignerBuilder::new(ed_key(), "example.com", "sel")
            .signed_headers(["From", "To", "from", "reply-to-x"])
            .oversigned_headers(["to", "SUBJECT", "subject", "received-x"])
            .build()
            .unwrap();
        let want = [("from", 1), ("to", 3), ("to", 2), ("to", 0), ("subject", 5), ("subject", 0), ("received-x", 0)];
        assert_eq!(header_list(&s, &m), named(&want));
    }

    proptest::proptest! {
        /// `select_signed` against the definition: for each name of the list in order, its
        /// instances from the bottom up, then one more for an oversigned name.
        #[test]
        fn selection_is_instances_bottom_up_per_name(
            picks in proptest::collection::vec(0usize..8, 1..40),
            signed in proptest::collection::vec(0usize..8, 0..6),
            oversigned in proptest::collection::vec(0usize..8, 0..4),
        ) {
            const POOL: [&str; 8] = ["From", "to", "TO", "Subject", "x-list-id-long", "X-List-Id-Long", "cc", "x_"];
            let mut msg = String::from("From: a@example.com\r\n");
            for &p in &picks {
                msg.push_str(&format!("{}: v{p}\r\n", POOL[p]));
            }
            msg.push_str("\r\nbody\r\n");
            let m = Message::parse(msg.as_bytes()).unwrap();
            let s = SignerBuilder::new(ed_key(), "example.com", "sel")
                .signed_headers(std::iter::once("from").chain(signed.iter().map(|&i| POOL[i])))
                .oversigned_headers(oversigned.iter().map(|&i| POOL[i]))
                .build()
                .unwrap();
            // The names in h= order, from the lists as given: signed then oversigned, lower-cased,
            // each once.
            let given: Vec<String> = std::iter::once("from")
                .chain(signed.iter().map(|&i| POOL[i]))
                .chain(oversigned.iter().map(|&i| POOL[i]))
                .map(str::to_ascii_lowercase)
                .collect();
            let mut want = vec![];
            for (k, name) in given.iter().enumerate() {
                if given[..k].contains(name) {
                    continue;
                }
                let mut hits: Vec<usize> = (0..m.fields.len()).filter(|&i| m.fields[i].is(name)).collect();
                hits.reverse();
                want.extend(hits.into_iter().map(|i| (name.clone(), i + 1)));
                if oversigned.iter().any(|&i| POOL[i].eq_ignore_ascii_case(name)) {
                    want.push((name.clone(), 0));
                }
            }
            proptest::prop_assert_eq!(header_list(&s, &m), want);
        }
    }

    #[test]
    fn a_huge_header_leaves_no_huge_buffers_in_the_thread() {
        // 5,000 signed fields of a long name: the h= list alone is over 200 KB, the signed
        // data over 400 KB, and the selection 5,000 entries.
        const NAME: &str = "X-A-Header-Name-Of-Forty-Octets-Exactly";
        let mut msg = String::from("From: a@example.com\r\n");
        for i in 0..5000 {
            msg.push_str(&format!("{NAME}: someone-with-a-long-address-{i}@example.org\r\n"));
        }
        msg.push_str("\r\nbody\r\n");
        let s = SignerBuilder::new(ed_key(), "example.com", "sel").signed_headers(["from", NAME]).build().unwrap();
        let fields = sign_slice(&[s], msg.as_bytes(), 1_700_000_000).unwrap();
        assert!(fields.len() > 5000 * NAME.len(), "h= names every instance");
        SCRATCH.with(|cell| {
            for s in cell.borrow().iter() {
                assert!(s.data.capacity() <= SCRATCH_KEPT && s.text.capacity() <= SCRATCH_KEPT);
                assert!(s.found.capacity() <= SCRATCH_KEPT / 16 && s.list.capacity() <= SCRATCH_KEPT / 16);
            }
        });
    }

    /// Two messages signed together give what each signed alone gives: Ed25519 pairs (their
    /// data hashed together), and every case that falls back (RSA, two signers, no From, a
    /// control character, a body hashed in the other canonicalization).
    #[test]
    fn signing_two_hashed_is_signing_each() {
        let rsa_key = || {
            let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keys/test.private")).unwrap();
            Arc::new(SigningKey::from_bytes(&pem, "test.private").unwrap())
        };
        let ed = SignerBuilder::new(ed_key(), "example.com", "ed").build().unwrap();
        let ed_simple = SignerBuilder::new(ed_key(), "example.com", "eds")
            .canon(Canonicalization { header: Canon::Simple, body: Canon::Simple })
            .build()
            .unwrap();
        // Simple header canonicalization, relaxed body: paired like `ed`.
        let ed_simple_header = SignerBuilder::new(ed_key(), "example.com", "edh")
            .canon(Canonicalization { header: Canon::Simple, body: Canon::Relaxed })
            .build()
            .unwrap();
        let rsa = SignerBuilder::new(rsa_key(), "example.com", "rsa").build().unwrap();
        if !crate::arch::sha256x2::available() {
            eprintln!("this CPU has no SHA-NI: only the unpaired path is compared");
        }
        let long: String = (0..40).map(|i| format!("To: someone-{i}@example.org\r\n")).collect();
        let messages: Vec<String> = vec![
            "From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n".into(),
            format!("From: b@example.com\r\n{long}\r\nanother body\r\n"),
            "From: c@example.com\nSubject: LF\n\nbody\n".into(),
            "Subject: no from\r\n\r\nbody\r\n".into(),
            "From: d@example.com\r\nSubject: a \x01 control\r\n\r\nbody\r\n".into(),
        ];
        let signer_sets: Vec<Vec<Signer>> =
            vec![vec![ed.clone()], vec![ed_simple_header], vec![ed_simple], vec![rsa.clone()], vec![ed.clone(), rsa]];
        for (i, ma) in messages.iter().enumerate() {
            for mb in &messages[i..] {
                for sa in &signer_sets {
                    for sb in &signer_sets {
                        let (pa, pb) = (Message::parse(ma.as_bytes()).unwrap(), Message::parse(mb.as_bytes()).unwrap());
                        // Each body hashed in the relaxed canonicalization only, as the pair
                        // hasher does for signers that all want it.
                        let hashed = |p: &Message| {
                            let mut h = crate::dkim::bodyhash::BodyHashes::new([BodySpec::signing(Canon::Relaxed)]);
                            h.update(p.body);
                            h.finish()
                        };
                        let (ha, hb) = (hashed(&pa), hashed(&pb));
                        let got = sign_two_hashed([(sa, &pa, &ha), (sb, &pb, &hb)], 1_700_000_000);
                        let want = [
                            sign_parsed_body(sa, &pa, Body::Hashed(&ha), 1_700_000_000),
                            sign_parsed_body(sb, &pb, Body::Hashed(&hb), 1_700_000_000),
                        ];
                        for (g, w) in got.iter().zip(&want) {
                            match (g, w) {
                                // RSA signatures are deterministic too (PKCS #1 v1.5).
                                (Ok(g), Ok(w)) => assert_eq!(String::from_utf8_lossy(g), String::from_utf8_lossy(w)),
                                (Err(g), Err(w)) => assert_eq!(g.to_string(), w.to_string()),
                                _ => panic!("{g:?} against {w:?}"),
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn name_key_is_blind_to_case_only() {
        assert_eq!(name_key(b"Content-Transfer-Encoding"), name_key(b"content-TRANSFER-encoding"));
        assert_eq!(name_key(b"TO"), name_key(b"to"));
        assert_ne!(name_key(b"to"), name_key(b"cc"));
        assert_ne!(name_key(b"from"), name_key(b"from2"));
        // Equal keys, unequal names: `find` compares the names too.
        assert_eq!(name_key(b"x_"), name_key(b"x\x7f"));
        let names = HeaderNames::new(&["x_".to_string()], &[]);
        assert_eq!(names.find(b"X_"), Some(0));
        assert_eq!(names.find(b"x\x7f"), None);
    }

    /// The table finds every listed name, in any case, at its own index, and nothing else:
    /// short and long names, many of them (the table grows), and none at all.
    #[test]
    fn header_names_table_finds_each_name() {
        for count in [0usize, 1, 7, 8, 9, 300] {
            let names: Vec<String> = (0..count).map(|i| format!("x-{}", "n".repeat(i % 12)) + &i.to_string()).collect();
            let table = HeaderNames::new(&names, &[]);
            assert!(table.table.len() >= 2 * count && table.table.len().is_power_of_two());
            for (i, n) in names.iter().enumerate() {
                assert_eq!(table.find(n.as_bytes()), Some(i), "{n}");
                assert_eq!(table.find(n.to_ascii_uppercase().as_bytes()), Some(i), "{n}");
                assert_eq!(table.find(format!("{n}-not").as_bytes()), None, "{n}");
            }
            assert_eq!(table.find(b""), None);
            assert_eq!(table.find(b"from"), None);
        }
        assert_eq!(name_key(b"abc"), (3, u64::from_le_bytes(*b"abc\0\0\0\0\0") | 0x2020_2020_2020_2020));
    }

    #[test]
    fn lines_stay_under_limit_and_b_is_last() {
        let msg = b"From: a@example.com\nTo: b@example.org\nSubject: hi\nDate: x\nMessage-ID: <a@b>\nMIME-Version: 1.0\nContent-Type: text/plain\n\nhello\n";
        let s = SignerBuilder::new(ed_key(), "example.com", "selector-with-a-long-name")
            .identity(Some("user@mail.example.com".into()))
            .body_length(true)
            .expire(Some(3600))
            .build()
            .unwrap();
        let out = sign_slice(&[s], msg, 1_700_000_000).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\r'), "LF message gets LF header");
        for line in text.lines() {
            assert!(line.len() <= LINE_LIMIT + 8, "{line:?}");
        }
        assert!(text.contains("t=1700000000;") && text.contains("x=1700003600;"));
        assert!(text.contains("l=7;"));
        assert!(text.trim_end().rsplit_once(';').unwrap().1.trim_start().starts_with("b="));
    }

    #[test]
    fn builder_refuses_bad_settings() {
        let b = || SignerBuilder::new(ed_key(), "example.com", "sel");
        let cases: Vec<(SignerBuilder, &str)> = vec![
            (SignerBuilder::new(ed_key(), "exa mple.com", "sel"), "not a valid domain"),
            (SignerBuilder::new(ed_key(), "example.com", "s/el"), "selector"),
            (b().identity(Some("u@other.com".into())), "must be an address"),
            (b().signed_headers(["to"]), "must include From"),
            (b().signed_headers(["from", "bad:name"]), "not a valid field name"),
            (b().algorithm(Some("rsa-sha256".into())), "does not match"),
        ];
        for (builder, want) in cases {
            let e = builder.build().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert!(b().identity(Some("@sub.example.com".into())).build().is_ok());
    }

    #[test]
    fn no_from_is_refused() {
        let s = SignerBuilder::new(ed_key(), "example.com", "sel").build().unwrap();
        assert!(matches!(sign_slice(&[s], b"To: x\n\nbody\n", 0), Err(SignError::NoFrom)));
    }

    /// RFC 8463 Appendix A: the example message, its keys and its two signatures (Ed25519 and
    /// a 1024-bit RSA key, so both aws-lc-rs Ed25519 and the `rsa` crate path). Deterministic
    /// signature schemes: recomputing `b=` over the same header data must give the RFC's bytes.
    #[test]
    fn rfc8463_appendix_a_known_answers() {
        const MSG: &str = "From: Joe SixPack <joe@football.example.com>\r\n\
            To: Suzie Q <suzie@shopping.example.net>\r\n\
            Subject: Is dinner ready?\r\n\
            Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n\
            Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n\
            \r\n\
            Hi.\r\n\
            \r\n\
            We lost the game.  Are you hungry yet?\r\n\
            \r\n\
            Joe.\r\n";
        const ED_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
        const RSA_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi
Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM
KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB
AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm
6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe
zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy
6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc
uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy
WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd
WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a
licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst
o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe
uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL
-----END RSA PRIVATE KEY-----
";
        // The signature fields up to and including "b=", and the b= values (RFC 8463 A.3).
        const ED_SIG: &str = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n \
            d=football.example.com; i=@football.example.com;\r\n \
            q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n \
            subject : date : message-id : from : subject : date;\r\n \
            bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n b=";
        const ED_B: &str = "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==";
        const RSA_SIG: &str = "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n \
            d=football.example.com; i=@football.example.com;\r\n \
            q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n \
            date : message-id : from : subject : date;\r\n \
            bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n b=";
        const RSA_B: &str = "F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2JzdA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=";

        let b64 = &base64::engine::general_purpose::STANDARD;
        let m = Message::parse(MSG.as_bytes()).unwrap();
        assert_eq!(
            b64.encode(body_hash(Canon::Relaxed, Body::Whole(m.body)).unwrap().hash),
            "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
        );

        // PKCS#8 v1 wrapping of the raw seed (RFC 8410 §7).
        let mut ed_der =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        ed_der.extend(b64.decode(ED_SEED).unwrap());
        let ed = SigningKey::from_der(&ed_der, "rfc8463").unwrap();
        let rsa = SigningKey::from_bytes(RSA_PEM.as_bytes(), "rfc8463").unwrap();
        assert!(matches!(rsa, SigningKey::RsaPure(_)), "1024-bit key goes to the rsa crate");

        for (key, sig, want) in [(&ed, ED_SIG, ED_B), (&rsa, RSA_SIG, RSA_B)] {
            let mut data = vec![];
            let h = ["from", "to", "subject", "date", "message-id", "from", "subject", "date"];
            let mut used = std::collections::HashMap::new();
            for name in h {
                let n = used.entry(name).or_insert(0usize);
                *n += 1;
                if let Some(f) = m.fields.iter().rev().filter(|f| f.is(name)).nth(*n - 1) {
                    canon::canonicalize_header(Canon::Relaxed, f.raw, &mut data);
                }
            }
            canon::canonicalize_header_unterminated(Canon::Relaxed, sig.as_bytes(), &mut data);
            assert_eq!(b64.encode(key.sign(&data).unwrap()), want);
        }
    }
}
