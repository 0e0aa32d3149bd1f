//! ARC chain validation (RFC 8617 §5.2): the Authenticated Received Chain a forwarder adds so
//! that a later receiver can trust the authentication results it saw before it changed the
//! message.
//!
//! Owns the structure rules (sets, instances, `cv=`), the ARC-Seal signature input (§5.1.1)
//! and the chain result. The ARC-Message-Signature is checked with the DKIM verifier's rules
//! (`verify::check_signature`): it is a DKIM-Signature with an instance in `i=` and no
//! `v=` (§4.1.2). Keys, key sizes and algorithms are those of DKIM (RFC 8301, RFC 8463).

use crate::dkim::bodyhash::{BodySpec, Hash, HashedBody};
use crate::dkim::canon::{self, Canon};
use crate::dkim::header::{Field, Message};
use crate::dkim::key::KeyType;
use crate::dkim::keyrecord::KeyResult;
use crate::dkim::sign::{self as dkim_sign, Body, SignError, Signer};
use crate::dkim::tags;
use crate::dkim::verify::{self, get, text, Bodies, Policy, Verdict};

/// The most ARC sets a message may carry (RFC 8617 §4.2.1).
pub const MAX_INSTANCES: u32 = 50;

/// The chain validation status (RFC 8617 §4.4): the `arc=` result of Authentication-Results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArcResult {
    /// No ARC sets.
    None,
    /// Every set present, in order, every seal and the newest message signature valid.
    Pass,
    /// Anything else.
    Fail,
}

impl ArcResult {
    /// The word of Authentication-Results and the reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ArcResult::None => "none",
            ArcResult::Pass => "pass",
            ArcResult::Fail => "fail",
        }
    }
}

impl std::fmt::Display for ArcResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of validating a message's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArcVerdict {
    /// The chain validation status.
    pub result: ArcResult,
    /// The highest instance any ARC field names (the number of sets when the chain is well
    /// formed; 0 without ARC): the next set a sealer adds is one higher.
    pub instances: u32,
    /// Why the chain failed.
    pub reason: Option<String>,
    /// `d=` of the newest ARC-Seal (who sealed last), when it parsed.
    pub sealer: String,
    /// The failure may not hold: a key lookup failed for now (DNS temperror). A sealer retries
    /// later rather than seal the chain as failed for good.
    pub temporary: bool,
    /// The newest ARC-Seal already says `cv=fail`: nobody may add a set (RFC 8617 §5.1.1).
    pub closed: bool,
    /// For a passing chain, the oldest instance from which every ARC-Message-Signature up to
    /// the newest still validates, 0 when all of them do (RFC 8617 §5.2 step 5, reported as
    /// `header.oldest-pass`); `None` when not known (a failed chain, an older signature whose
    /// key or body hash was not at hand).
    pub oldest_pass: Option<u32>,
    /// `d=` of each ARC-Seal, newest first, as far as they parse (the chain of custody).
    pub custody: Vec<String>,
    /// The chain failed only because its newest ARC-Message-Signature does not match the
    /// message: every set is well formed and every seal validates. A message changed after it
    /// arrived (by a mailing list of the same site) fails so; see [`received_override`].
    pub message_changed: bool,
}

impl ArcVerdict {
    /// The chain of a message whose header does not parse: failed, as nothing in it can be
    /// checked.
    pub fn unparsable(e: &crate::dkim::header::HeaderError) -> ArcVerdict {
        ArcVerdict::fail(0, "", format!("the message does not parse: {e}"))
    }

    fn fail(instances: u32, sealer: &str, reason: impl Into<String>) -> ArcVerdict {
        ArcVerdict {
            result: ArcResult::Fail,
            instances,
            reason: Some(reason.into()),
            sealer: sealer.to_string(),
            temporary: false,
            closed: false,
            oldest_pass: None,
            custody: Vec::new(),
            message_changed: false,
        }
    }
}

/// Why a message was not sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The newest ARC-Seal says `cv=fail`: nobody may add a set after it.
    #[error("the ARC chain already failed (cv=fail at i={0}): no set may be added (RFC 8617 §5.1.1)")]
    Closed(u32),
    /// There are already 50 sets (or a field claims an instance past 50).
    #[error("the message already has ARC instance {0}; instances end at 50 (RFC 8617 §4.2.1)")]
    Full(u32),
    /// A key of the existing chain could not be looked up now: sealing the chain as failed
    /// would be for good, so the message waits.
    #[error("the ARC chain cannot be validated now: {0}")]
    Temporary(String),
    /// Making the new signatures failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// The next ARC set for `parsed` (RFC 8617 §5.1): ARC-Seal, ARC-Message-Signature and
/// ARC-Authentication-Results of instance N + 1, top to bottom, in wire form (CRLF). `chain` is
/// the message's chain as validated now ([`validate`]; its result becomes `cv=`), `results` the
/// ARC-Authentication-Results payload after `i=N;` (an authserv-id and its results, see
/// [`results_of`] and [`results_computed`]). `signer` makes the ARC-Message-Signature (its
/// header list and canonicalization) and the seal (its key, `d=`, `s=`). The seal of a
/// passing chain (or of the first set) covers every set; one with `cv=fail` covers its own set
/// only (§5.1.1).
pub fn seal(
    signer: &Signer,
    parsed: &Message,
    body: Body<'_>,
    chain: &ArcVerdict,
    results: &str,
    now: u64,
) -> Result<String, SealError> {
    if chain.closed {
        return Err(SealError::Closed(chain.instances));
    }
    if chain.temporary {
        return Err(SealError::Temporary(chain.reason.clone().unwrap_or_default()));
    }
    if chain.instances >= MAX_INSTANCES {
        return Err(SealError::Full(chain.instances));
    }
    let n = chain.instances + 1;
    let aar = format!("ARC-Authentication-Results: i={n}; {results}\r\n");
    let ams = dkim_sign::arc_message_signature(signer, parsed, body, n, now)?;
    let mut input = Vec::with_capacity(4096);
    if chain.result == ArcResult::Pass {
        seal_input(&collect_sets(parsed).0, true, &mut input);
    }
    canon::canonicalize_header(Canon::Relaxed, aar.as_bytes(), &mut input);
    canon::canonicalize_header(Canon::Relaxed, ams.as_bytes(), &mut input);
    let seal = dkim_sign::arc_seal(signer, n, chain.result.as_str(), &input, now)?;
    Ok(format!("{seal}{ams}{aar}"))
}

/// The ARC-Authentication-Results payload from the message itself: the results of every
/// Authentication-Results field that `authserv_id` wrote, in their order, after that id
/// (`id; none` when there is none). Line ends in them become CRLF.
pub fn results_of(parsed: &Message, authserv_id: &str) -> String {
    let mut results: Vec<String> = Vec::new();
    for f in parsed.fields.iter().filter(|f| f.is("authentication-results")) {
        if !verify::claims_authserv_id(f.value(), authserv_id) {
            continue;
        }
        let value = String::from_utf8_lossy(f.value()).replace("\r\n", "\n").replace('\n', "\r\n");
        // After the authserv-id (and its optional version): the `;`-separated results.
        if let Some((_, rest)) = value.split_once(';') {
            let rest = rest.trim();
            if !rest.is_empty() && !rest.eq_ignore_ascii_case("none") {
                results.push(rest.to_string());
            }
        }
    }
    if results.is_empty() {
        format!("{authserv_id}; none")
    } else {
        format!("{authserv_id};\r\n\t{}", results.join(";\r\n\t"))
    }
}

/// Whether `parsed` has an Authentication-Results field that `authserv_id` wrote with results
/// in it (not just `none`): what [`results_of`] would carry.
pub fn has_results_of(parsed: &Message, authserv_id: &str) -> bool {
    !results_of(parsed, authserv_id).ends_with("; none")
}

/// The ARC-Authentication-Results payload of results computed here: the `dkim=` of each
/// verdict and the `arc=` of `chain`, as [`authentication_results`] writes them.
pub fn results_computed(authserv_id: &str, verdicts: &[Verdict], chain: &ArcVerdict) -> String {
    results_computed_with(authserv_id, verdicts, chain, &[])
}

/// [`results_computed`] with properties after `arc=`, as [`authentication_results_with`].
pub fn results_computed_with(
    authserv_id: &str,
    verdicts: &[Verdict],
    chain: &ArcVerdict,
    props: &[(&str, String)],
) -> String {
    let field = authentication_results_with(authserv_id, verdicts, chain, props, "\r\n");
    field.trim_start_matches("Authentication-Results: ").trim_end_matches("\r\n").to_string()
}

/// The three fields of one ARC set.
#[derive(Default)]
struct Set<'m, 'a> {
    aar: Vec<&'m Field<'a>>,
    ams: Vec<&'m Field<'a>>,
    seal: Vec<&'m Field<'a>>,
}

/// The instance of an ARC-Authentication-Results value: `i=N;` before the authserv-id
/// (RFC 8617 §4.1.1), with optional white space around the `=`.
fn aar_instance(value: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(value).ok()?.trim_start();
    let rest = s.strip_prefix('i').or_else(|| s.strip_prefix('I'))?.trim_start().strip_prefix('=')?.trim_start();
    let digits = rest.find(|c: char| !c.is_ascii_digit()).map_or(rest, |end| &rest[..end]);
    let after = rest[digits.len()..].trim_start();
    if digits.is_empty() || digits.len() > 3 || !after.starts_with(';') {
        return None;
    }
    digits.parse().ok()
}

/// The instance in the `i=` tag of an ARC-Seal or ARC-Message-Signature.
fn tag_instance(value: &[u8]) -> Option<u32> {
    let tags = tags::parse(value).ok()?;
    let i = get(&tags, "i")?;
    if i.is_empty() || i.len() > 3 || !i.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text(i).parse().ok()
}

/// Verifies every DKIM-Signature of `msg` and validates its ARC chain, each body hash computed
/// once for both.
pub fn verify_with_chain(
    msg: &Message,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> (Vec<Verdict>, ArcVerdict) {
    verify_with_chain_body(msg, msg.body, keys, now, policy)
}

/// [`verify_with_chain`] with the body given apart (`msg.body` is not read).
pub fn verify_with_chain_body(
    msg: &Message,
    body: &[u8],
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> (Vec<Verdict>, ArcVerdict) {
    let mut bodies = Bodies::Bytes(body, Vec::new());
    let verdicts = verify::verify_parsed(msg, &mut bodies, keys, now, policy);
    let chain = validate_with(msg, &mut bodies, keys, now, policy);
    (verdicts, chain)
}

/// [`verify::authentication_results`] with the chain result after the DKIM results: `arc=`,
/// the method RFC 8617 registers for Authentication-Results, with `reason=` when it failed
/// (quotes, backslashes and control characters left out, as for DKIM reasons).
pub fn authentication_results(authserv_id: &str, verdicts: &[Verdict], chain: &ArcVerdict, le: &str) -> String {
    authentication_results_with(authserv_id, verdicts, chain, &[], le)
}

/// [`authentication_results`] with more properties after the `arc=` result (RFC 8601 §2.2
/// `propspec`, such as `smtp.remote-ip`), each `ptype.property` and its value. A passing
/// chain carries `header.oldest-pass` when it is known (RFC 8617 §5.2 step 5).
pub fn authentication_results_with(
    authserv_id: &str,
    verdicts: &[Verdict],
    chain: &ArcVerdict,
    props: &[(&str, String)],
    le: &str,
) -> String {
    let mut out = verify::authentication_results(authserv_id, verdicts, le);
    out.truncate(out.len() - le.len());
    out.push_str(&format!(";{le}	arc={}", chain.result));
    if let Some(reason) = &chain.reason {
        let reason: String = reason.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
        out.push_str(&format!(" reason=\"{reason}\""));
    }
    if let (ArcResult::Pass, Some(n)) = (chain.result, chain.oldest_pass) {
        out.push_str(&format!(" header.oldest-pass={n}"));
    }
    for (name, value) in props {
        out.push_str(&format!(" {name}={value}"));
    }
    out.push_str(le);
    out
}

/// The ARC sets of `msg` by instance (index 0 is i=1), the highest instance any ARC field
/// names (0: none), and the first field whose instance is missing or outside 1..50 (§4.2.1).
fn collect_sets<'m, 'a>(msg: &'m Message<'a>) -> (Vec<Set<'m, 'a>>, u32, Option<String>) {
    let mut sets: Vec<Set> = Vec::new();
    let mut highest = 0;
    let mut bad = None;
    for f in &msg.fields {
        let (kind, instance) = if f.is("arc-authentication-results") {
            (0, aar_instance(f.value()))
        } else if f.is("arc-message-signature") {
            (1, tag_instance(f.value()))
        } else if f.is("arc-seal") {
            (2, tag_instance(f.value()))
        } else {
            continue;
        };
        let name =
            || String::from_utf8_lossy(&f.raw[..f.raw.iter().position(|&b| b == b':').unwrap_or(0)]).into_owned();
        let i = match instance {
            Some(i) if (1..=MAX_INSTANCES).contains(&i) => i,
            Some(i) => {
                highest = highest.max(i);
                bad.get_or_insert_with(|| format!("{} instance i={i} outside 1..{MAX_INSTANCES}", name()));
                continue;
            }
            None => {
                bad.get_or_insert_with(|| format!("{} has no valid instance (i=)", name()));
                continue;
            }
        };
        highest = highest.max(i);
        if sets.len() < i as usize {
            sets.resize_with(i as usize, Set::default);
        }
        let set = &mut sets[i as usize - 1];
        match kind {
            0 => set.aar.push(f),
            1 => set.ams.push(f),
            _ => set.seal.push(f),
        }
    }
    (sets, highest, bad)
}

/// Validates the ARC chain of `msg` (RFC 8617 §5.2). `keys` gives the key of (selector,
/// domain), `now` is the Unix time; `policy` holds the DKIM key rules, which ARC shares.
pub fn validate(msg: &Message, keys: &dyn Fn(&str, &str) -> KeyResult, now: u64, policy: &Policy) -> ArcVerdict {
    validate_body(msg, msg.body, keys, now, policy)
}

/// [`validate`] with the body given apart (`msg.body` is not read).
pub fn validate_body(
    msg: &Message,
    body: &[u8],
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> ArcVerdict {
    validate_with(msg, &mut Bodies::Bytes(body, Vec::new()), keys, now, policy)
}

pub(crate) fn validate_with(
    msg: &Message,
    bodies: &mut Bodies<'_>,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> ArcVerdict {
    // Step 1: collect the sets.
    let (sets, highest, bad) = collect_sets(msg);
    if highest == 0 && bad.is_none() {
        return ArcVerdict {
            result: ArcResult::None,
            instances: 0,
            reason: None,
            sealer: String::new(),
            temporary: false,
            closed: false,
            oldest_pass: None,
            custody: Vec::new(),
            message_changed: false,
        };
    }
    if let Some(why) = bad {
        return ArcVerdict::fail(highest, "", why);
    }
    let n = sets.len() as u32;
    // The newest seal's d=, for the reports (when its set is well formed enough to say).
    let sealer = sets
        .last()
        .and_then(|s| s.seal.first())
        .and_then(|f| tags::parse(f.value()).ok())
        .and_then(|t| get(&t, "d").map(text))
        .unwrap_or_default();
    // Step 2: a chain its newest sealer called failed stays failed.
    let cvs: Vec<Option<String>> = sets
        .iter()
        .map(|s| {
            s.seal
                .first()
                .and_then(|f| tags::parse(f.value()).ok())
                .and_then(|t| get(&t, "cv").map(|v| text(v).to_ascii_lowercase()))
        })
        .collect();
    if cvs.last().cloned().flatten().as_deref() == Some("fail") {
        return ArcVerdict { closed: true, ..ArcVerdict::fail(n, &sealer, format!("ARC-Seal i={n} has cv=fail")) };
    }
    // Step 3: exactly one of each field per set, instances 1..N without gaps, cv= none for the
    // first set and pass for the others.
    for (k, set) in sets.iter().enumerate() {
        let i = k + 1;
        for (what, count) in [
            ("ARC-Authentication-Results", set.aar.len()),
            ("ARC-Message-Signature", set.ams.len()),
            ("ARC-Seal", set.seal.len()),
        ] {
            match count {
                1 => {}
                0 => return ArcVerdict::fail(n, &sealer, format!("set i={i} has no {what}")),
                c => return ArcVerdict::fail(n, &sealer, format!("set i={i} has {c} {what} fields")),
            }
        }
        let want = if i == 1 { "none" } else { "pass" };
        match cvs[k].as_deref() {
            Some(cv) if cv == want => {}
            Some(cv) => return ArcVerdict::fail(n, &sealer, format!("ARC-Seal i={i} has cv={cv}, not {want}")),
            None => return ArcVerdict::fail(n, &sealer, format!("ARC-Seal i={i} has no valid cv=")),
        }
    }
    // Step 4: the newest ARC-Message-Signature.
    let newest = &sets[n as usize - 1];
    let ams = check_ams(msg, newest.ams[0], bodies, keys, now, policy);
    if let Err((true, why)) = ams {
        let why = format!("ARC-Message-Signature i={n}: {why}");
        return ArcVerdict { temporary: true, ..ArcVerdict::fail(n, &sealer, why) };
    }
    // Step 7: every seal, newest first (after a failed ARC-Message-Signature too, to tell a
    // changed message from a broken chain).
    let mut scratch = Vec::with_capacity(4096);
    for i in (1..=n as usize).rev() {
        if let Err((temporary, why)) = check_seal(&sets[..i], keys, policy, &mut scratch) {
            return ArcVerdict { temporary, ..ArcVerdict::fail(n, &sealer, format!("ARC-Seal i={i}: {why}")) };
        }
    }
    if let Err((_, why)) = ams {
        let why = format!("ARC-Message-Signature i={n}: {why}");
        return ArcVerdict { message_changed: true, custody: custody(&sets), ..ArcVerdict::fail(n, &sealer, why) };
    }
    // Step 5 (optional): how far back the message is still as each sealer signed it.
    // Only the body hashes `wanted_body_hashes` names are computed for it, whether the body
    // is at hand or streamed: a hostile chain cannot make the body be hashed fifty times.
    let affordable = wanted_body_hashes(msg, policy);
    let mut oldest_pass = Some(0);
    for i in (1..n as usize).rev() {
        let field = sets[i - 1].ams[0];
        let mut v = Verdict::new(verify::DkimResult::PermError, None);
        let spec = verify::parse_signature(field, policy, &mut v, verify::SignatureKind::ArcMessage)
            .map(|sig| sig.body_spec());
        if spec.as_ref().is_ok_and(|spec| !affordable.contains(spec)) {
            oldest_pass = None;
            break;
        }
        match check_ams(msg, field, bodies, keys, now, policy) {
            Ok(()) => {}
            Err((true, _)) => {
                oldest_pass = None;
                break;
            }
            Err((false, _)) => {
                oldest_pass = Some(i as u32 + 1);
                break;
            }
        }
    }
    ArcVerdict {
        result: ArcResult::Pass,
        instances: n,
        reason: None,
        sealer,
        temporary: false,
        closed: false,
        oldest_pass,
        custody: custody(&sets),
        message_changed: false,
    }
}

/// The `arc=` result of the newest Authentication-Results field that `authserv_id` wrote
/// (the topmost), if it has one.
pub fn received_result(parsed: &Message, authserv_id: &str) -> Option<ArcResult> {
    let f = parsed
        .fields
        .iter()
        .find(|f| f.is("authentication-results") && verify::claims_authserv_id(f.value(), authserv_id))?;
    let value = String::from_utf8_lossy(f.value());
    let (_, results) = value.split_once(';')?;
    results.split(';').find_map(|r| {
        let word = r.trim().strip_prefix("arc")?.trim_start().strip_prefix('=')?.trim_start();
        let word: String = word.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        match word.to_ascii_lowercase().as_str() {
            "pass" => Some(ArcResult::Pass),
            "fail" => Some(ArcResult::Fail),
            "none" => Some(ArcResult::None),
            _ => None,
        }
    })
}

/// `chain` as a sealer of the site that verified the message when it arrived states it: the
/// `received` result of that first check (our own Authentication-Results, RFC 8617 §5.1 step
/// 2: the chain as it reached the ADMD). A received `fail` stands. A received `pass` stands
/// when the chain now fails only because the message changed after it arrived
/// ([`ArcVerdict::message_changed`]); a chain broken in any other way, or closed, stays as
/// validated now.
pub fn received_override(chain: ArcVerdict, received: ArcResult) -> ArcVerdict {
    if chain.closed || chain.temporary {
        return chain;
    }
    match (received, chain.result) {
        (ArcResult::Fail, ArcResult::Pass) => ArcVerdict {
            reason: Some("arc=fail when the message arrived".into()),
            ..ArcVerdict::fail(chain.instances, &chain.sealer, "")
        },
        (ArcResult::Pass, ArcResult::Fail) if chain.message_changed => {
            ArcVerdict { result: ArcResult::Pass, reason: None, message_changed: false, oldest_pass: None, ..chain }
        }
        _ => chain,
    }
}

/// `d=` of each set's ARC-Seal, newest first (those that parse).
fn custody(sets: &[Set]) -> Vec<String> {
    sets.iter()
        .rev()
        .filter_map(|s| s.seal.first())
        .filter_map(|f| tags::parse(f.value()).ok())
        .filter_map(|t| get(&t, "d").map(|d| text(d).to_string()))
        .collect()
}

/// The most distinct body hashes [`wanted_body_hashes`] asks for: the newest
/// ARC-Message-Signature's, then older ones' for `header.oldest-pass` while they fit.
const MAX_ARC_BODY_HASHES: usize = 4;

/// The body hashes validating the chain of `msg` needs, for a caller that streams the body
/// ([`validate_hashed`]): the newest ARC-Message-Signature's first, then those of older ones
/// (which only `header.oldest-pass` reads) up to a small bound, so that a chain of fifty sets
/// with fifty `l=` values cannot make the body be hashed fifty times.
pub fn wanted_body_hashes(msg: &Message, policy: &Policy) -> Vec<BodySpec> {
    let (sets, _, bad) = collect_sets(msg);
    let mut out: Vec<BodySpec> = Vec::new();
    if bad.is_some() {
        return out;
    }
    for set in sets.iter().rev() {
        let Some(field) = set.ams.first() else { break };
        let mut v = Verdict::new(verify::DkimResult::PermError, None);
        let Ok(sig) = verify::parse_signature(field, policy, &mut v, verify::SignatureKind::ArcMessage) else {
            break;
        };
        let spec = sig.body_spec();
        if !out.contains(&spec) {
            if out.len() == MAX_ARC_BODY_HASHES {
                break;
            }
            out.push(spec);
        }
    }
    out
}

/// [`validate`] of a message whose body was hashed as it streamed ([`wanted_body_hashes`]).
pub fn validate_hashed(
    msg: &Message,
    body: &HashedBody,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> ArcVerdict {
    validate_with(msg, &mut Bodies::Hashed(body), keys, now, policy)
}

/// The key type and hash of an `a=` value: the DKIM algorithms (RFC 6376 §3.3, RFC 8463); SHA-1
/// is not allowed (RFC 8301 §3.1).
fn algorithm(tags: &[tags::Tag]) -> Result<(KeyType, Hash), String> {
    match get(tags, "a").map(|a| text(a).to_ascii_lowercase()).as_deref() {
        Some("rsa-sha256") => Ok((KeyType::Rsa, Hash::Sha256)),
        Some("ed25519-sha256") => Ok((KeyType::Ed25519, Hash::Sha256)),
        Some(other) => Err(format!("unsupported algorithm a={other}")),
        None => Err("no a= tag".into()),
    }
}

fn domain_and_selector(tags: &[tags::Tag]) -> Result<(String, String), String> {
    let d = get(tags, "d").map(text).ok_or("no d= tag")?;
    let s = get(tags, "s").map(text).ok_or("no s= tag")?;
    let domain = tags::to_a_labels(d.trim_end_matches('.')).to_ascii_lowercase();
    let selector = tags::to_a_labels(&s).into_owned();
    if !tags::is_dns_name(&domain) {
        return Err(format!("bad d={d}"));
    }
    if !tags::is_dns_name(&selector) {
        return Err(format!("bad s={s}"));
    }
    Ok((domain, selector))
}

/// Why a signature of the chain did not validate: whether that may change on a retry (a key
/// lookup that failed for now), and what it was.
type Failure = (bool, String);

/// A failure that a retry cannot change.
fn permanent(why: impl Into<String>) -> Failure {
    (false, why.into())
}

/// A DKIM verdict's result and reason as a [`Failure`].
fn from_dkim((result, reason): (verify::DkimResult, verify::Reason)) -> Failure {
    (result == verify::DkimResult::TempError, reason.to_string())
}

/// Checks an ARC-Message-Signature like a DKIM-Signature (RFC 8617 §4.1.2, §5.2 step 4), read
/// by the DKIM parser in its ARC form.
fn check_ams(
    msg: &Message,
    field: &Field,
    bodies: &mut Bodies<'_>,
    keys: &dyn Fn(&str, &str) -> KeyResult,
    now: u64,
    policy: &Policy,
) -> Result<(), Failure> {
    let mut v = Verdict::new(verify::DkimResult::PermError, None);
    let sig = verify::parse_signature(field, policy, &mut v, verify::SignatureKind::ArcMessage)
        .map_err(|e| permanent(e.0.to_string()))?;
    let mut scratch = Vec::with_capacity(2048);
    verify::check_signature(msg, &sig, keys, now, policy, bodies, &mut scratch, &mut v).map_err(from_dkim)
}

/// The canonical form of `sets` as the ARC-Seal of the set after them, or of the last of them,
/// signs it (RFC 8617 §5.1.1): each set as ARC-Authentication-Results, ARC-Message-Signature,
/// ARC-Seal, relaxed, each with its CRLF, oldest first. With `last_seal` false the last set's
/// seal is left out (the seal being checked, or being made).
fn seal_input(sets: &[Set], last_seal: bool, out: &mut Vec<u8>) {
    for (k, set) in sets.iter().enumerate() {
        canon::canonicalize_header(Canon::Relaxed, set.aar[0].raw, out);
        canon::canonicalize_header(Canon::Relaxed, set.ams[0].raw, out);
        if last_seal || k + 1 < sets.len() {
            canon::canonicalize_header(Canon::Relaxed, set.seal[0].raw, out);
        }
    }
}

/// Checks the ARC-Seal of the last of `sets` (RFC 8617 §5.1.1, §5.2 step 7): its signature over
/// every set up to it ([`seal_input`]), then itself without its b= value and without a final
/// CRLF.
fn check_seal(
    sets: &[Set],
    keys: &dyn Fn(&str, &str) -> KeyResult,
    policy: &Policy,
    scratch: &mut Vec<u8>,
) -> Result<(), Failure> {
    let seal = sets.last().expect("at least one set").seal[0];
    let tags = tags::parse(seal.value()).map_err(permanent)?;
    for required in ["a", "b", "cv", "d", "s"] {
        if get(&tags, required).is_none() {
            return Err(permanent(format!("no {required}= tag")));
        }
    }
    // §4.1.3: the seal covers the ARC sets only; an h= tag has no place in it.
    if get(&tags, "h").is_some() {
        return Err(permanent("h= tag in an ARC-Seal"));
    }
    let (kind, hash) = algorithm(&tags).map_err(permanent)?;
    let (domain, selector) = domain_and_selector(&tags).map_err(permanent)?;
    let b = verify::b64(get(&tags, "b").unwrap_or_default(), "b").map_err(|e| permanent(e.0.to_string()))?;
    let key = verify::usable_key(keys, kind, hash, &selector, &domain, policy).map_err(from_dkim)?;
    scratch.clear();
    seal_input(sets, false, scratch);
    canon::canonicalize_header_unterminated(Canon::Relaxed, &tags::without_value(seal.raw, "b"), scratch);
    if !verify::key_verifies(&key, hash, scratch, &b) {
        return Err(permanent("signature does not verify"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::keyrecord::fetch_key;
    use crate::lookup::KeyDir;

    fn validate_file(path: &std::path::Path, keys: &KeyDir) -> ArcVerdict {
        let data = std::fs::read(path).unwrap();
        let msg = Message::parse(&data).unwrap();
        validate(&msg, &|s, d| fetch_key(keys, s, d), 1_900_000_000, &Policy::default())
    }

    /// The vectors of testdata/arc, made by dkimpy and Mail::DKIM (scripts/arc-peer), each
    /// with the result RFC 8617 gives it (testdata/arc/README.md says where each comes from).
    #[test]
    fn peer_made_vectors_give_the_rfc_results() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/arc");
        let keys = KeyDir::new(&dir.join("keys"));
        let table = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
        let mut checked = 0;
        let mut wrong = vec![];
        for line in table.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let mut cols = line.split('\t');
            let (file, want) = (cols.next().unwrap(), cols.next().unwrap());
            let got = validate_file(&dir.join(file), &keys);
            if got.result.as_str() != want {
                wrong.push(format!("{file}: want {want}, got {} ({:?})", got.result, got.reason));
            }
            checked += 1;
        }
        assert!(checked >= 19, "only {checked} vectors");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// `header.oldest-pass` and the chain of custody: 0 when every ARC-Message-Signature
    /// holds, the newest instance when the body changed before the last set was added; a
    /// chain that fails only on changed content is told from a broken one, and only that one
    /// takes a received `pass` (PermitAuthenticationOverrides); a received `fail` always stands.
    #[test]
    fn oldest_pass_custody_and_received_results() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/arc");
        let keys = KeyDir::new(&dir.join("keys"));
        let v = validate_file(&dir.join("pass-i3-alternating.eml"), &keys);
        assert_eq!((v.result, v.oldest_pass), (ArcResult::Pass, Some(0)));
        assert_eq!(v.custody, ["example.com", "example.net", "example.com"]);
        let ar = authentication_results("mx.example.org", &[], &v, "\r\n");
        assert!(ar.contains("arc=pass header.oldest-pass=0\r\n"), "{ar}");
        let v = validate_file(&dir.join("pass-body-changed-before-last-seal.eml"), &keys);
        assert_eq!((v.result, v.oldest_pass), (ArcResult::Pass, Some(2)));
        let failed = received_override(v.clone(), ArcResult::Fail);
        assert_eq!(failed.result, ArcResult::Fail);

        let changed = validate_file(&dir.join("fail-body-changed-after-last-ams.eml"), &keys);
        assert!(changed.result == ArcResult::Fail && changed.message_changed, "{changed:?}");
        assert_eq!(received_override(changed.clone(), ArcResult::Pass).result, ArcResult::Pass);
        assert_eq!(received_override(changed, ArcResult::None).result, ArcResult::Fail);
        for broken in ["fail-wrong-key.eml", "fail-gap-i1-i3.eml", "fail-missing-aar2.eml", "fail-cv-fail-i2.eml"] {
            let v = validate_file(&dir.join(broken), &keys);
            assert!(!v.message_changed, "{broken}: {v:?}");
            assert_eq!(received_override(v, ArcResult::Pass).result, ArcResult::Fail, "{broken}");
        }
    }

    /// Fifty sets whose ARC-Message-Signatures name fifty different `l=` values ask for a few
    /// body hashes, the newest one's first.
    #[test]
    fn a_hostile_chain_asks_for_few_body_hashes() {
        let mut text = String::new();
        for i in (1..=50).rev() {
            text.push_str(&format!(
                "ARC-Seal: i={i}; a=rsa-sha256; cv=pass; d=example.com; s=s; b=AAAA\r\n\
                 ARC-Message-Signature: i={i}; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s; \
                 h=from; l={i}; bh=AAAA; b=AAAA\r\n\
                 ARC-Authentication-Results: i={i}; mx.example.com; none\r\n"
            ));
        }
        text.push_str("From: a@example.com\r\n\r\nbody\r\n");
        let msg = Message::parse(text.as_bytes()).unwrap();
        let wanted = wanted_body_hashes(&msg, &Policy::default());
        assert_eq!(wanted.len(), MAX_ARC_BODY_HASHES);
        assert_eq!(wanted[0].limit, Some(50));
    }

    /// A seal covers every earlier set: a changed ARC-Authentication-Results of the first set
    /// fails the chain though the newest message signature (which does not sign it) holds.
    #[test]
    fn a_changed_older_set_fails_its_seals() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/arc");
        let keys = KeyDir::new(&dir.join("keys"));
        let data = std::fs::read(dir.join("pass-i3-alternating.eml")).unwrap();
        let check = |d: &[u8]| {
            let msg = Message::parse(d).unwrap();
            validate(&msg, &|s, dom| fetch_key(&keys, s, dom), 1_900_000_000, &Policy::default())
        };
        assert_eq!(check(&data).result, ArcResult::Pass);
        assert_eq!(check(&data).instances, 3);
        let text = String::from_utf8(data).unwrap();
        let at = text.find("ARC-Authentication-Results: i=1;").expect("set 1");
        let arc_none = at + text[at..].find("arc=none").expect("arc=none in set 1");
        let changed = format!("{}arc=pass{}", &text[..arc_none], &text[arc_none + "arc=none".len()..]);
        let got = check(changed.as_bytes());
        assert_eq!(got.result, ArcResult::Fail);
        assert!(got.reason.as_deref().unwrap_or_default().starts_with("ARC-Seal i=3"), "{got:?}");
    }

    #[test]
    fn aar_instances() {
        assert_eq!(aar_instance(b" i=1; mx.example.com; arc=none"), Some(1));
        assert_eq!(aar_instance(b"i = 12 ;x"), Some(12));
        assert_eq!(aar_instance(b" i=1 mx.example.com"), None);
        assert_eq!(aar_instance(b"mx.example.com; i=1;"), None);
        assert_eq!(aar_instance(b"i=;"), None);
    }
}
