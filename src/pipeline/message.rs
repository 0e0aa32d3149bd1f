//! One message signed, in every mode: the policy that says how ([`SignPolicy`]), the one
//! signing step that parses, chooses the keys and signs ([`sign_message`], [`sign_stored`],
//! [`sign_parsed_message`]), what a failure means ([`MessageError::disposition`]) and the
//! panic guard around it ([`guarded`]). Where the messages come from and where they go is the
//! drivers' (sign.rs for archives; the command line for pipes, the milter for its sessions).

use super::mbox;
use crate::dkim::canon::Canon;
use crate::dkim::header::Message;
use crate::dkim::sign::{Body, Signer};
use std::io::Write;
use std::ops::Range;

/// How each message is signed, in every mode: which keys, chosen by what, at what time, and
/// what else changes.
pub struct SignPolicy {
    /// Which signatures each message gets.
    pub keys: crate::select::KeySource,
    /// The envelope sender that chooses the key instead of From (`--sender`).
    pub sender: Option<String>,
    /// Remove existing DKIM-Signature fields whose `d=` is one of our domains.
    pub strip_own: bool,
    /// Unix time for `t=`.
    pub now: u64,
    /// Largest message signed; larger ones are passed through and reported.
    pub max_message: u64,
    /// Add DKIM-Signature fields (`sign`); off when only an ARC set is added (`seal`).
    pub dkim: bool,
    /// Add the next ARC set (RFC 8617 §5.1), made with the first of the chosen keys.
    pub arc: Option<ArcSealing>,
}

/// The key of (selector, domain), shared by the threads of a run (a [`crate::lookup::KeyCache`]
/// behind a closure).
pub type KeyFetch = Box<dyn Fn(&str, &str) -> crate::dkim::keyrecord::KeyResult + Send + Sync>;

/// How a message is sealed: how its existing ARC chain is validated, and what its new
/// ARC-Authentication-Results say.
pub struct ArcSealing {
    /// Our authserv-id: the ARC-Authentication-Results carry the results of the
    /// Authentication-Results fields with this id (or, with `verify`, ours).
    pub authserv_id: String,
    /// Compute the DKIM and ARC results here and seal those, instead of the message's own
    /// Authentication-Results.
    pub verify: bool,
    /// The keys of the existing chain's (and with `verify`, the DKIM) signatures.
    pub keys: KeyFetch,
    /// The key rules those signatures are checked by.
    pub policy: crate::dkim::verify::Policy,
}

/// Why one message was not signed: the message itself, the choice of its keys, or signing.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The message cannot be signed (its header block, no From) or the backend failed.
    #[error(transparent)]
    Sign(#[from] crate::dkim::sign::SignError),
    /// No key could be chosen: none configured for the author, no usable From address, a
    /// broken table entry, or a key store that cannot be reached.
    #[error(transparent)]
    Select(#[from] crate::select::SelectError),
    /// The message's ARC chain cannot take another set, or sealing failed.
    #[error(transparent)]
    Seal(#[from] crate::dkim::arc::SealError),
    /// The signer panicked (a bug) while doing what is named.
    #[error("internal error (panic) while {0}; please report it")]
    Panic(&'static str),
}

/// What a message that was not signed means, in every mode. Each mode answers each
/// disposition its own way (an exit code, a milter reply, passed through and reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// No key is configured for its author: it goes on unsigned, as OpenDKIM passes it; not a
    /// failure. Also a message whose ARC chain is closed (`cv=fail`): RFC 8617 §5.1.1 says to
    /// add nothing.
    NoKey,
    /// The message itself cannot be signed (a header block that does not parse, no From, no
    /// usable author address, a control character in a field): retrying cannot help, so it
    /// goes on unsigned rather than being lost.
    Unsignable,
    /// The key store cannot be reached now: a retry later can sign it.
    Temporary,
    /// Our side is broken (a key or table entry that cannot be used, the crypto backend, a
    /// panic): the operator must act.
    Broken,
}

impl MessageError {
    /// What this failure means for the message.
    pub fn disposition(&self) -> Disposition {
        use crate::dkim::arc::SealError;
        use crate::dkim::sign::SignError;
        use crate::select::SelectError;
        match self {
            MessageError::Select(SelectError::NoKey(_)) | MessageError::Seal(SealError::Closed(_)) => {
                Disposition::NoKey
            }
            MessageError::Select(SelectError::NoAddress(_))
            | MessageError::Sign(SignError::Header(_) | SignError::NoFrom)
            | MessageError::Seal(SealError::Full(_) | SealError::Sign(SignError::Header(_) | SignError::NoFrom)) => {
                Disposition::Unsignable
            }
            MessageError::Select(SelectError::Temporary(_)) | MessageError::Seal(SealError::Temporary(_)) => {
                Disposition::Temporary
            }
            MessageError::Select(SelectError::Config(_))
            | MessageError::Sign(SignError::Key(_) | SignError::BodyNotHashed(_))
            | MessageError::Seal(SealError::Sign(SignError::Key(_) | SignError::BodyNotHashed(_)))
            | MessageError::Panic(_) => Disposition::Broken,
        }
    }

    /// Whether the only reason is that no key is configured for the author.
    pub fn is_no_key(&self) -> bool {
        self.disposition() == Disposition::NoKey
    }
}

/// Runs `f`, one step of signing named by `what`, turning a panic into
/// [`MessageError::Panic`]: one message that trips a bug must not take down a bulk run or a
/// daemon connection.
pub fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T, MessageError>) -> Result<T, MessageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(Err(MessageError::Panic(what)))
}

/// Signs one message: the header fields to add on top, and the byte ranges of old own
/// signatures to remove (empty unless `strip_own`).
pub fn sign_message(policy: &SignPolicy, msg: &[u8]) -> Result<(Vec<u8>, Vec<Range<usize>>), MessageError> {
    let parsed = Message::parse(msg).map_err(crate::dkim::sign::SignError::from)?;
    sign_parsed_message(policy, &parsed, crate::dkim::sign::Body::Whole(parsed.body))
}

/// The signing step every bulk and pipe mode shares: the keys `policy` chooses for `parsed`,
/// its header fields signed and `body` hashed; the new fields in the message's line ending,
/// and the old own signatures to remove (with `strip_own`). The milter takes the same steps
/// apart, choosing the keys when the header block ends and signing when the body has streamed
/// past.
pub(crate) fn sign_parsed_message(
    policy: &SignPolicy,
    parsed: &Message,
    body: crate::dkim::sign::Body<'_>,
) -> Result<(Vec<u8>, Vec<Range<usize>>), MessageError> {
    let signers = policy.keys.signers_for(parsed, policy.sender.as_deref())?;
    sign_with(policy, &signers, parsed, body)
}

/// [`sign_parsed_message`] with the keys chosen.
fn sign_with(
    policy: &SignPolicy,
    signers: &[Signer],
    parsed: &Message,
    body: crate::dkim::sign::Body<'_>,
) -> Result<(Vec<u8>, Vec<Range<usize>>), MessageError> {
    let mut headers = Vec::new();
    if let (Some(arc), Some(first)) = (&policy.arc, signers.first()) {
        let set = seal(arc, first, parsed, body, policy.now)?;
        crate::dkim::sign::push_line_ends(&mut headers, &set, parsed.crlf);
    }
    if policy.dkim {
        let fields = crate::dkim::sign::sign_parsed_body(signers, parsed, body, policy.now)?;
        if headers.is_empty() {
            headers = fields;
        } else {
            headers.extend_from_slice(&fields);
        }
    }
    with_drops(policy, signers, parsed, headers)
}

/// `headers` with the byte ranges of the old own signatures to remove (with `strip_own`).
fn with_drops(policy: &SignPolicy, signers: &[Signer], parsed: &Message, headers: Vec<u8>) -> Signed {
    let drop = if policy.strip_own { own_signatures(signers, parsed) } else { vec![] };
    Ok((headers, drop))
}

/// The next ARC set of `parsed` (wire form), made with `signer`: the existing chain validated
/// with `arc`'s keys and rules, the ARC-Authentication-Results from the message's own results
/// or (with `verify`) from ours.
fn seal(
    arc: &ArcSealing,
    signer: &Signer,
    parsed: &Message,
    body: crate::dkim::sign::Body<'_>,
    now: u64,
) -> Result<String, MessageError> {
    use crate::dkim::arc;
    use crate::dkim::sign::Body;
    // Validation reads the body as one slice: an mbox body stored in pieces is joined (only
    // messages with quoted lines are stored so).
    let joined: Vec<u8>;
    let bytes = match body {
        Body::Whole(b) => b,
        Body::Pieces(stored, pieces) => {
            joined = pieces.iter().flat_map(|r| &stored[r.clone()]).copied().collect();
            &joined
        }
        Body::Hashed(_) => return Err(crate::dkim::sign::SignError::BodyNotHashed("ARC").into()),
    };
    let keys = |s: &str, d: &str| (arc.keys)(s, d);
    let (verdicts, chain) = if arc.verify {
        arc::verify_with_chain_body(parsed, bytes, &keys, now, &arc.policy)
    } else {
        (Vec::new(), arc::validate_body(parsed, bytes, &keys, now, &arc.policy))
    };
    let results = if arc.verify {
        arc::results_computed(&arc.authserv_id, &verdicts, &chain)
    } else {
        arc::results_of(parsed, &arc.authserv_id)
    };
    Ok(arc::seal(signer, parsed, Body::Whole(bytes), &chain, &results, now)?)
}

/// [`sign_message`] for a message as an mbox stores it. The header block is parsed from the
/// stored octets and the body hashed in the pieces between the quoting `>`s, so a message with
/// quoted `>From ` lines is signed without an unquoted copy. Quoting is only ever in the body
/// of a well-formed message; otherwise (a quoted line in the header block, a header block that
/// does not parse) the message is unquoted and signed as a whole, with the same result.
pub fn sign_stored(policy: &SignPolicy, msg: mbox::Stored<'_>) -> Result<(Vec<u8>, Vec<Range<usize>>), MessageError> {
    let Some(&first_quote) = msg.quotes.first() else {
        return sign_message(policy, msg.bytes);
    };
    let parsed = match Message::parse(msg.bytes) {
        Ok(p) if first_quote >= p.body_offset => p,
        _ => return msg.with_unquoted(|m| sign_message(policy, m)),
    };
    // The header block is the same stored and unquoted: offsets in it hold for both.
    let pieces = msg.body_pieces(parsed.body_offset);
    sign_parsed_message(policy, &parsed, crate::dkim::sign::Body::Pieces(msg.bytes, &pieces))
}

/// The result of signing one message: the header fields to add on top, and the byte ranges of
/// old own signatures to remove.
pub type Signed = Result<(Vec<u8>, Vec<Range<usize>>), MessageError>;

/// [`sign_stored`] of two messages, with the same results as two calls of it. Where both allow
/// it (DKIM signatures only, one body canonicalization among each message's keys, a CPU with
/// SHA-NI) their bodies are hashed together ([`crate::dkim::bodyhash::hash_two`]), which is
/// faster than one after the other; each message is otherwise signed on its own.
pub fn sign_stored_two<'a>(policy: &SignPolicy, a: mbox::Stored<'a>, b: mbox::Stored<'a>) -> [Signed; 2] {
    if !policy.dkim || policy.arc.is_some() || !crate::arch::sha256x2::available() {
        return [sign_stored(policy, a), sign_stored(policy, b)];
    }
    match (prepare(policy, a), prepare(policy, b)) {
        (Prepared::Ready(a), Prepared::Ready(b)) => {
            match crate::dkim::bodyhash::hash_two([(a.canon, a.slices()), (b.canon, b.slices())]) {
                Some([ha, hb]) => {
                    let two = [(&*a.signers, &a.parsed, &ha), (&*b.signers, &b.parsed, &hb)];
                    let [fa, fb] = crate::dkim::sign::sign_two_hashed(two, policy.now);
                    [a.signed(policy, fa), b.signed(policy, fb)]
                }
                None => [a.alone(policy), b.alone(policy)],
            }
        }
        (a, b) => [a.finish(policy), b.finish(policy)],
    }
}

/// Whether [`sign_stored_group`] hashes the bodies of `policy`'s groups in the sixteen AVX-512
/// lanes: DKIM signatures only, on a CPU that prefers the lanes to SHA-NI pairs.
pub fn lanes_for(policy: &SignPolicy) -> bool {
    policy.dkim && policy.arc.is_none() && crate::arch::sha256x16::preferred()
}

/// [`sign_stored`] of a group of messages, with the same results as one call each, in order.
/// Where the CPU does better with sixteen AVX-512 lanes than with a pair of SHA-NI streams
/// ([`crate::arch::sha256x16::preferred`]), the bodies of the messages that allow it (as in
/// [`sign_stored_two`], of any size) are streamed through the lanes together by
/// [`crate::dkim::bodyhash::hash_many`], then signed two by two; where eight or fewer are
/// ready, each is signed alone. Elsewhere the messages go through [`sign_stored_two`] in
/// pairs.
pub fn sign_stored_group(policy: &SignPolicy, msgs: &[mbox::Stored<'_>]) -> Vec<Signed> {
    if !lanes_for(policy) {
        let mut signed = Vec::with_capacity(msgs.len());
        for c in msgs.chunks(2) {
            match *c {
                [a, b] => signed.extend(sign_stored_two(policy, a, b)),
                _ => signed.extend(c.iter().map(|&m| sign_stored(policy, m))),
            }
        }
        return signed;
    }
    let prepared: Vec<Prepared> = msgs.iter().map(|&m| prepare(policy, m)).collect();
    let ready: Vec<&Ready> = prepared
        .iter()
        .filter_map(|p| match p {
            Prepared::Ready(r) => Some(r),
            Prepared::Done(_) => None,
        })
        .collect();
    // A few bodies are hashed as fast one at a time, where they are stored, without the copy
    // into the lanes (`sha256x16::FEW`; two SHA-NI streams are no faster than one on these
    // CPUs). `None` too when the lanes are not there after all.
    let hashed = match ready.len() > crate::arch::sha256x16::FEW {
        true => crate::dkim::bodyhash::hash_many(ready.iter().map(|r| (r.canon, r.slices()))),
        false => None,
    };
    let mut signed: Vec<Signed> = Vec::with_capacity(ready.len());
    match hashed {
        Some(hashed) => {
            for (two, h) in ready.chunks(2).zip(hashed.chunks(2)) {
                match (two, h) {
                    ([a, b], [ha, hb]) => {
                        let pair = [(&*a.signers, &a.parsed, ha), (&*b.signers, &b.parsed, hb)];
                        let [fa, fb] = crate::dkim::sign::sign_two_hashed(pair, policy.now);
                        signed.push(a.signed(policy, fa));
                        signed.push(b.signed(policy, fb));
                    }
                    _ => signed.extend(two.iter().zip(h).map(|(r, h)| r.sign(policy, Body::Hashed(h)))),
                }
            }
        }
        None => signed.extend(ready.iter().map(|r| r.alone(policy))),
    }
    let mut signed = signed.into_iter();
    prepared
        .into_iter()
        .map(|p| match p {
            Prepared::Done(result) => result,
            Prepared::Ready(_) => signed.next().expect("one result for each message ready"),
        })
        .collect()
}

/// A message of [`sign_stored_two`] parsed and its keys chosen, or already dealt with.
enum Prepared<'a> {
    /// Ready for its body to be hashed with another's.
    Ready(Ready<'a>),
    /// Signed or refused on its own: its keys want more than one body canonicalization, its
    /// stored form needs unquoting, or it failed before its body mattered.
    Done(Signed),
}

/// A message whose body can be hashed with another's: the header block parsed, the keys
/// chosen (all with the body canonicalization `canon`), the body where it is stored.
struct Ready<'a> {
    parsed: Message<'a>,
    /// The message as stored: the body is `parsed.body` unless it holds quotes.
    stored: mbox::Stored<'a>,
    signers: std::borrow::Cow<'a, [Signer]>,
    canon: Canon,
}

impl<'a> Ready<'a> {
    /// The body as the slices that make it, in order: the pieces around the quotes (one piece,
    /// `parsed.body`, when there are none). Nothing is allocated.
    fn slices(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.stored.body_slices(self.parsed.body_offset)
    }

    fn sign(&self, policy: &SignPolicy, body: Body<'_>) -> Signed {
        sign_with(policy, &self.signers, &self.parsed, body)
    }

    /// What [`Ready::sign`] returns for DKIM signatures only, given the fields made.
    fn signed(&self, policy: &SignPolicy, fields: Result<Vec<u8>, crate::dkim::sign::SignError>) -> Signed {
        with_drops(policy, &self.signers, &self.parsed, fields?)
    }

    /// The result of signing this message on its own, its body hashed where it is stored.
    fn alone(&self, policy: &SignPolicy) -> Signed {
        if self.stored.quotes.is_empty() {
            return self.sign(policy, Body::Whole(self.parsed.body));
        }
        let pieces = self.stored.body_pieces(self.parsed.body_offset);
        self.sign(policy, Body::Pieces(self.stored.bytes, &pieces))
    }
}

impl Prepared<'_> {
    /// The result of signing this message on its own.
    fn finish(self, policy: &SignPolicy) -> Signed {
        match self {
            Prepared::Ready(r) => r.alone(policy),
            Prepared::Done(result) => result,
        }
    }
}

/// Parses `msg` and chooses its keys as [`sign_stored`] does, stopping short of its body.
fn prepare<'a>(policy: &'a SignPolicy, msg: mbox::Stored<'a>) -> Prepared<'a> {
    let parsed = match Message::parse(msg.bytes) {
        Ok(p) if msg.quotes.first().is_none_or(|&q| q >= p.body_offset) => p,
        // A quoted line in the header block, or a header block that does not parse: as
        // `sign_stored` deals with them.
        _ => return Prepared::Done(sign_stored(policy, msg)),
    };
    let signers = match policy.keys.signers_for(&parsed, policy.sender.as_deref()) {
        Ok(s) => s,
        Err(e) => return Prepared::Done(Err(e.into())),
    };
    let canon = signers.first().map(|s| s.canonicalization().body);
    let ready = Ready { parsed, stored: msg, signers, canon: canon.unwrap_or(Canon::Relaxed) };
    match canon {
        Some(c) if ready.signers.iter().all(|s| s.canonicalization().body == c) => Prepared::Ready(ready),
        _ => Prepared::Done(ready.alone(policy)),
    }
}

/// Byte ranges of DKIM-Signature fields whose `d=` is a domain one of `signers` signs for
/// (key rotation). Other domains' signatures are never touched. Offsets lie in the header
/// block, which mbox quoting never changes, so they are valid in the stored bytes too.
pub(crate) fn own_signatures(signers: &[Signer], parsed: &Message) -> Vec<Range<usize>> {
    parsed
        .fields
        .iter()
        .filter(|f| f.is("dkim-signature"))
        .filter(|f| {
            crate::dkim::tags::value(f.value(), "d").is_some_and(|d| {
                let d = crate::dkim::tags::to_a_labels(&d);
                signers.iter().any(|s| s.domain().eq_ignore_ascii_case(&d))
            })
        })
        .map(|f| f.offset..f.offset + f.raw.len())
        .collect()
}

/// Writes `data` without the `drop` ranges.
pub fn write_without(w: &mut dyn Write, data: &[u8], drop: &[Range<usize>]) -> std::io::Result<()> {
    without(data, drop).try_for_each(|p| w.write_all(p))
}

/// The pieces of `data` around the `drop` ranges (ascending, inside `data`), in order.
pub(crate) fn without<'a>(data: &'a [u8], drop: &'a [Range<usize>]) -> impl Iterator<Item = &'a [u8]> {
    let starts = std::iter::once(0).chain(drop.iter().map(|r| r.end));
    let ends = drop.iter().map(|r| r.start).chain(std::iter::once(data.len()));
    starts.zip(ends).map(move |(s, e)| &data[s..e])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group of more messages than the lanes, with large bodies of every line end (up to
    /// 1.1 MB, so that they stream through the lanes in many chunks and the last few are hashed
    /// alone) and one that cannot be signed, signed together, gives what signing each alone
    /// gives, in both body canonicalizations and in groups of several sizes.
    #[test]
    fn group_of_large_bodies_is_signing_each() {
        use crate::dkim::canon::Canonicalization;
        use crate::dkim::sign::SignerBuilder;
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keys/test-ed.private")).unwrap();
        let key = std::sync::Arc::new(crate::dkim::key::SigningKey::from_bytes(&pem, "test-ed.private").unwrap());
        let messages: Vec<Vec<u8>> = (0..21usize)
            .map(|i| {
                if i == 9 {
                    return b"Subject: no author\r\n\r\nbody\r\n".to_vec();
                }
                let nl: &[u8] = if i % 3 == 0 { b"\r\n" } else { b"\n" };
                let mut m = format!("From: <s{i}@example.com>").into_bytes();
                m.extend_from_slice(nl);
                m.extend_from_slice(b"Subject: a large one");
                m.extend_from_slice(nl);
                m.extend_from_slice(nl);
                let line: &[u8] =
                    [&b"words in a line that ends in spaces   "[..], b"a\tline with\ttabs and  double  spaces"][i % 2];
                for l in 0..(i * i * 997) % 30_000 + 50 {
                    m.extend_from_slice(&line[..line.len() - l % 4]);
                    m.extend_from_slice(nl);
                }
                m.extend_from_slice(&nl.repeat(i % 5));
                m
            })
            .collect();
        let stored: Vec<mbox::Stored> = messages.iter().map(|m| mbox::Stored { bytes: m, quotes: &[] }).collect();
        assert!(messages.iter().filter(|m| m.len() > 1 << 19).count() >= 10);
        for canon in [Canon::Relaxed, Canon::Simple] {
            let signer = SignerBuilder::new(key.clone(), "example.com", "test")
                .canon(Canonicalization { header: Canon::Relaxed, body: canon })
                .build()
                .unwrap();
            let policy = SignPolicy {
                keys: crate::select::KeySource::Fixed(vec![signer]),
                sender: None,
                strip_own: false,
                now: 1_800_000_000,
                max_message: 1 << 24,
                dkim: true,
                arc: None,
            };
            if !lanes_for(&policy) {
                eprintln!("NOTE group_of_large_bodies_is_signing_each: no AVX-512 lanes here; groups go in pairs");
            }
            let shown = |r: Signed| format!("{:?}", r.map_err(|e| e.to_string()));
            let alone: Vec<Signed> = stored.iter().map(|&m| sign_stored(&policy, m)).collect();
            assert_eq!(alone.iter().filter(|r| r.is_ok()).count(), 20, "every message but the one without From");
            let alone: Vec<String> = alone.into_iter().map(shown).collect();
            // Groups with over eight signable messages go through the lanes (all but the
            // second of 9 and the short last ones), the others one message at a time.
            for size in [21, 17, 10, 9] {
                let grouped: Vec<String> =
                    stored.chunks(size).flat_map(|g| sign_stored_group(&policy, g)).map(shown).collect();
                assert_eq!(grouped, alone, "{canon:?}, groups of {size}");
            }
        }
    }
}
