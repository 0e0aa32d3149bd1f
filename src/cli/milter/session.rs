//! One milter connection: the commands of the MTA in, the replies out. Collects the header
//! fields as the MTA sends them; at the end of the header block decides whose message it is
//! and which body hashes it needs, hashes the body chunks as they arrive (the body is never
//! held), and at the end of the message signs it (mail from our own clients) or verifies it
//! (everyone else's), as opendkim(8) does. No I/O here: [`Session::handle`] turns a
//! [`Command`] into the [`Response`]s to send.

use super::config::SealScope;
use super::proto::{action, step, Command, Response, VERSION};
use super::{Action, Condition, Settings};
use crate::cli::log::Logger;
use dkimpress::dkim::arc::{self, ArcResult, ArcVerdict};
use dkimpress::dkim::bodyhash::{BodyHashes, BodySpec, HashedBody};
use dkimpress::dkim::header::Message;
use dkimpress::dkim::sign::{self, SignError, SignatureField, Signer};
use dkimpress::dkim::verify::{self, DkimResult, KeyResult, Reason, Verdict};
use dkimpress::pipeline::{self, Disposition, MessageError};
use std::borrow::Cow;
use std::collections::HashMap;

/// The state of one connection.
pub struct Session<'a> {
    settings: &'a Settings,
    log: &'a mut Logger,
    /// Negotiated: values keep their leading space.
    leadspc: bool,
    /// Negotiated: no reply to each header field.
    no_header_reply: bool,
    /// Macros seen so far (connection and message), by name without braces.
    macros: HashMap<String, String>,
    /// The client's address ('4'/'6' families), empty for a local or unknown one.
    client: String,
    /// The client's host name as the MTA gave it (`[addr]` when it has none).
    client_host: String,
    /// The address the host lists are asked about: 127.0.0.1 for a local or unknown client,
    /// as opendkim takes it.
    client_ip: Option<std::net::IpAddr>,
    /// The header block so far: header fields (CRLF line ends), then the empty line.
    message: Vec<u8>,
    /// Header fields as (name, value) for finding forged Authentication-Results.
    ar_fields: Vec<Vec<u8>>,
    /// The body has started (the empty line is in `message`).
    in_body: bool,
    /// Octets of the message so far (header block and body).
    size: u64,
    /// What the end of the header block decided (whose message, which keys).
    plan: Option<Plan<'a>>,
    /// The body hashes the plan needs, fed each body chunk.
    hashes: Option<BodyHashes>,
    /// The message grew past the size limit: it is passed on untouched.
    too_large: bool,
    /// Octets of the daemon-wide budget this connection holds (the header buffer's capacity).
    reserved: u64,
    /// The daemon-wide budget could not hold this message.
    over_budget: bool,
    /// The message is ours (an internal host, an authenticated client, an `MTA` daemon).
    ours: bool,
    /// It comes from an internal host or an `MTA` daemon: our own Authentication-Results in
    /// it were written by us when it first arrived.
    trusted: bool,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.settings.budget.release(self.reserved);
    }
}

/// What to do with the connection after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the replies and read on.
    Reply(Vec<Response>),
    /// Send the replies, then close.
    Close(Vec<Response>),
}

impl<'a> Session<'a> {
    /// Logs detail (with -v).
    pub fn debug(&self, msg: &str) {
        self.log.debug(msg);
    }

    /// A new connection.
    pub fn new(settings: &'a Settings, log: &'a mut Logger) -> Session<'a> {
        Session {
            settings,
            log,
            leadspc: false,
            no_header_reply: false,
            macros: HashMap::new(),
            client: String::new(),
            client_host: String::new(),
            client_ip: None,
            message: vec![],
            ar_fields: vec![],
            in_body: false,
            size: 0,
            plan: None,
            hashes: None,
            too_large: false,
            reserved: 0,
            over_budget: false,
            ours: false,
            trusted: false,
        }
    }

    /// Forgets the message (not its macros: those of MAIL arrive just before it).
    fn clear_message(&mut self) {
        self.message.clear();
        self.ar_fields.clear();
        self.in_body = false;
        self.size = 0;
        self.plan = None;
        self.hashes = None;
        self.too_large = false;
        self.over_budget = false;
        self.ours = false;
        self.trusted = false;
        self.message = vec![];
        self.settings.budget.release(self.reserved);
        self.reserved = 0;
    }

    /// Forgets the message and its macros (end of message, abort).
    fn reset_message(&mut self) {
        self.clear_message();
        for m in ["i", "auth_authen", "auth_type", "auth_author", "mail_addr"] {
            self.macros.remove(m);
        }
    }

    /// Handles one command.
    pub fn handle(&mut self, cmd: Command) -> Next {
        use Next::Reply;
        match cmd {
            Command::OptNeg { version, actions, protocol } => {
                if version < 2 {
                    return Next::Close(vec![]);
                }
                // What we ask for, within what the MTA offers: add and delete fields; no reply
                // per header field; leading spaces kept. Every step is still sent (HELO, RCPT,
                // DATA cost one round trip each, and libmilter's own test client, miltertest,
                // refuses to drive a filter that declines RCPT).
                let want_actions = action::ADDHDRS | action::CHGHDRS | action::QUARANTINE;
                let steps = (step::NR_HDR | step::HDR_LEADSPC) & protocol;
                self.leadspc = steps & step::HDR_LEADSPC != 0;
                self.no_header_reply = steps & step::NR_HDR != 0;
                Reply(vec![Response::OptNeg {
                    version: version.min(VERSION),
                    actions: want_actions & actions,
                    protocol: steps,
                }])
            }
            Command::Macro { pairs, .. } => {
                for (k, v) in pairs {
                    self.macros.insert(k.trim_start_matches('{').trim_end_matches('}').to_string(), v);
                }
                Reply(vec![])
            }
            Command::Connect { hostname, family, address, .. } => {
                self.client = match family {
                    b'4' | b'6' => address,
                    _ => String::new(),
                };
                self.client_host = hostname;
                let local = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
                self.client_ip = Some(crate::cli::hosts::split_client(&self.client).1.unwrap_or(local));
                // PeerList: clients whose mail passes untouched (a content filter re-injecting
                // mail that was already handled): accept the whole connection. A list that
                // cannot be asked names no one: the mail is handled as usual.
                if let Some(peers) = &self.settings.peers {
                    match peers.check(Some(&self.client_host), self.client_ip) {
                        Ok(true) => return Reply(vec![Response::Accept]),
                        Ok(false) => {}
                        Err(e) => self.log.warn(&format!("PeerList: {e}; the connection is handled as usual")),
                    }
                }
                Reply(vec![Response::Continue])
            }
            Command::Mail(_) => {
                self.clear_message();
                Reply(vec![Response::Continue])
            }
            Command::Helo(_) | Command::Rcpt(_) | Command::Data | Command::Unknown(_) => {
                Reply(vec![Response::Continue])
            }
            Command::Header { name, value } => {
                self.add_header(&name, &value);
                Reply(if self.no_header_reply { vec![] } else { vec![Response::Continue] })
            }
            Command::EndOfHeader => {
                self.start_body();
                Reply(vec![Response::Continue])
            }
            Command::Body(chunk) => {
                // An MTA that skips the end-of-header step: the body starts here.
                if !self.in_body {
                    self.start_body();
                }
                self.body_chunk(&chunk);
                Reply(vec![Response::Continue])
            }
            Command::EndOfBody(chunk) => {
                if !self.in_body {
                    self.start_body();
                }
                self.body_chunk(&chunk);
                let r = self.end_of_message();
                self.reset_message();
                Reply(r)
            }
            Command::Abort => {
                self.reset_message();
                Reply(vec![])
            }
            Command::QuitNewConnection => {
                self.reset_message();
                self.macros.clear();
                self.client.clear();
                self.client_host.clear();
                self.client_ip = None;
                Reply(vec![])
            }
            Command::Quit => Next::Close(vec![]),
        }
    }

    /// Counts `len` more octets of the message; past the size limit the message is dropped
    /// and passed on unchecked. Whether to go on.
    fn grow(&mut self, len: usize) -> bool {
        if self.too_large || self.over_budget {
            return false;
        }
        self.size += len as u64;
        if self.size > self.settings.max_message {
            self.too_large = true;
            self.drop_buffer();
            return false;
        }
        true
    }

    /// Appends to the header block unless that passes the size limit.
    /// The buffer's growth is taken from the daemon-wide budget first.
    fn push(&mut self, bytes: &[u8]) {
        if !self.grow(bytes.len()) {
            return;
        }
        let need = self.message.len() + bytes.len();
        if need > self.message.capacity() {
            // Doubling, or just what is needed when the budget cannot take the double.
            let doubled = need.max(self.message.capacity() * 2).max(4096).min(self.settings.max_message as usize);
            let Some(cap) = [doubled, need].into_iter().find(|&cap| {
                let more = cap as u64 - self.reserved.min(cap as u64);
                self.settings.budget.reserve(more) && {
                    self.reserved += more;
                    true
                }
            }) else {
                self.over_budget = true;
                self.drop_buffer();
                return;
            };
            self.message.reserve_exact(cap - self.message.len());
        }
        self.message.extend_from_slice(bytes);
    }

    /// One chunk of the body: hashed, not kept.
    fn body_chunk(&mut self, chunk: &[u8]) {
        if self.grow(chunk.len()) {
            if let Some(h) = &mut self.hashes {
                h.update(chunk);
            }
        }
    }

    /// The header block has ended: decides whose message this is and, for our own, which
    /// keys sign it, and starts the body hashes that signing or verifying will need.
    fn start_body(&mut self) {
        self.push(b"\r\n");
        self.in_body = true;
        if self.too_large || self.over_budget {
            return;
        }
        let s: &'a Settings = self.settings;
        let origin = self.origin();
        self.ours = matches!(origin, Origin::Ours(_));
        self.trusted = matches!(origin, Origin::Ours(why) if why != AUTHENTICATED);
        let plan = match (&s.sign, origin) {
            (None, _) => Plan::Verify(None),
            (Some(_), Origin::Unknown(why)) => Plan::Fail(Condition::InternalError, why),
            (Some(_), Origin::Outside(why)) => Plan::Outside(why),
            (Some(keys), Origin::Ours(who)) => {
                self.log.debug(&format!("{who}: signing"));
                let message = &self.message;
                let selected = pipeline::guarded("choosing keys", || {
                    let parsed = Message::parse(message).map_err(SignError::from)?;
                    Ok(keys.signers_for(&parsed, None)?)
                });
                selected.map_or_else(|e| not_signed(&e), Plan::Sign)
            }
        };
        let specs: Vec<BodySpec> = match &plan {
            Plan::Sign(signers) => signers.iter().map(|k| BodySpec::signing(k.canonicalization().body)).collect(),
            Plan::Verify(_) | Plan::Outside(_) if s.verify => match Message::parse(&self.message) {
                Ok(parsed) => verify::wanted_body_hashes(&parsed, &s.policy),
                Err(_) => vec![],
            },
            _ => vec![],
        };
        let mut specs = specs;
        // The chain's body hashes when it is validated (inbound mail with ARC on, or mail to
        // seal), and the openarc.conf key's when it seals.
        let validates = self.seals() || (s.arc.verify && matches!(plan, Plan::Verify(_) | Plan::Outside(_)));
        if validates {
            if let Ok(parsed) = Message::parse(&self.message) {
                specs.extend(arc::wanted_body_hashes(&parsed, &s.arc.policy));
            }
            if let (true, Some(sealer)) = (self.seals(), &s.arc.sealer) {
                specs.push(BodySpec::signing(sealer.canonicalization().body));
            }
        }
        let mut distinct: Vec<BodySpec> = Vec::with_capacity(specs.len());
        for spec in specs {
            if !distinct.contains(&spec) {
                distinct.push(spec);
            }
        }
        self.hashes = Some(BodyHashes::new(distinct));
        self.plan = Some(plan);
    }

    /// Frees the header buffer, the body hashes and the buffer's share of the budget.
    fn drop_buffer(&mut self) {
        self.hashes = None;
        self.message = vec![];
        self.settings.budget.release(self.reserved);
        self.reserved = 0;
    }

    /// One header field as it will stand in the message: `Name:value` with the value's
    /// leading space (or `Name: value` when the MTA strips it), folded lines ending in CRLF.
    fn add_header(&mut self, name: &[u8], value: &[u8]) {
        use dkimpress::arch::crlf;
        let mut f = Vec::with_capacity(name.len() + crlf::expanded_capacity(value.len()) + 4);
        f.extend_from_slice(name);
        f.push(b':');
        if !self.leadspc {
            f.push(b' ');
        }
        // Folded lines come with LF (Postfix, Sendmail) or CRLF: make every line end CRLF.
        let start = f.len();
        f.resize(start + crlf::expanded_capacity(value.len()), 0);
        let n = crlf::to_crlf(value, b':', &mut f[start..]);
        f.truncate(start + n);
        f.extend_from_slice(b"\r\n");
        if name.eq_ignore_ascii_case(b"Authentication-Results") {
            self.ar_fields.push(value.to_vec());
        }
        self.push(&f);
    }

    fn macro_value(&self, name: &str) -> &str {
        self.macros.get(name).map(String::as_str).unwrap_or_default()
    }

    /// Whether this message is ours to sign (opendkim(8): an internal host, an authenticated
    /// client, or a daemon named in `MTA`).
    fn origin(&self) -> Origin {
        let s = self.settings;
        if !self.macro_value("auth_authen").is_empty() {
            return Origin::Ours(AUTHENTICATED);
        }
        let daemon = self.macro_value("daemon_name");
        if !daemon.is_empty() && s.mta_names.iter().any(|m| m == daemon) {
            return Origin::Ours("MTA daemon");
        }
        // The client's host name, then its address; a local socket or a client the MTA could
        // not name is this host, 127.0.0.1, as opendkim takes it.
        match s.internal.check(Some(&self.client_host), self.client_ip) {
            Ok(true) => Origin::Ours("internal host"),
            Ok(false) => {
                let client = if self.client.is_empty() { "127.0.0.1" } else { self.client.as_str() };
                let host = pipeline::sanitize_at_most(&self.client_host, 100);
                Origin::Outside(format!("{host} [{client}] not internal"))
            }
            Err(e) => Origin::Unknown(format!("InternalHosts: {e}")),
        }
    }

    /// The authserv-id of this connection's Authentication-Results: `AuthservID`, else the
    /// MTA's name (the `j` macro, Postfix's $myhostname), else this host's name
    /// (opendkim.conf(5) AuthservID).
    fn authserv_id(&self) -> String {
        if let Some(id) = &self.settings.authserv_id {
            return id.clone();
        }
        let j = self.macro_value("j").trim().trim_end_matches('.');
        if verify::is_authserv_id(j) {
            return j.to_string();
        }
        super::hostname()
    }

    /// The decision at the end of a message.
    fn end_of_message(&mut self) -> Vec<Response> {
        let id = self.macro_value("i").to_string();
        self.log.set_context(if id.is_empty() { "NOQUEUE" } else { &id });
        if self.over_budget {
            let b = &self.settings.budget;
            let what = format!(
                "the milter's memory for messages in progress is full ({} of {} octets, --max-buffered)",
                b.used(),
                b.limit()
            );
            // Our own mail waits for memory (the MTA retries; nothing goes out unsigned);
            // inbound mail goes on unchecked, its forged results still removed.
            if matches!(self.origin(), Origin::Ours(_)) && self.settings.sign.is_some() {
                self.log.warn(&format!("{what}: deferred"));
                return vec![Response::ReplyCode("451 4.3.2 Please try again later".into())];
            }
            self.log.warn(&format!("{what}: passed on unchecked"));
            let mut r = self.remove_forged_results();
            r.push(Response::Accept);
            return r;
        }
        if self.too_large {
            self.log.warn(&format!(
                "message larger than --max-message-size ({} octets): passed on unchecked",
                self.settings.max_message
            ));
            // Unchecked, but a forged result with our id still goes.
            let mut r = self.remove_forged_results();
            r.push(Response::Accept);
            return r;
        }
        let hashed = self.hashes.take().map(BodyHashes::finish).unwrap_or_default();
        let plan =
            self.plan.take().unwrap_or_else(|| Plan::Fail(Condition::InternalError, "message without a plan".into()));
        self.carry_out(plan, &hashed)
    }

    /// The replies for the message under `plan`; `hashed` holds its body hashes.
    fn carry_out(&mut self, plan: Plan<'_>, hashed: &HashedBody) -> Vec<Response> {
        let s = self.settings;
        match plan {
            Plan::Fail(condition, why) => return self.act(condition, &why, vec![]),
            Plan::Sign(signers) => {
                return match self.sign(&signers, hashed) {
                    Ok(r) => r,
                    Err(e) => self.carry_out(not_signed(&e), hashed),
                }
            }
            // Our own client's message that cannot be signed (no usable From, a broken header
            // block) goes on unsigned; judging it as inbound mail could reject it.
            Plan::Unsignable(why) => {
                self.log.warn(&format!("not signed: {why}"));
                let mut r = self.remove_forged_results();
                r.push(Response::Accept);
                return r;
            }
            Plan::Verify(None) => {}
            Plan::Verify(Some(why)) => {
                if s.log_why {
                    self.log.info(&format!("not signed: {why}"));
                }
            }
            Plan::Outside(why) => {
                self.warn_external_as_ours();
                if s.log_why {
                    self.log.info(&format!("not signed: {why}"));
                }
            }
        }
        if s.verify {
            return self.verify(hashed);
        }
        let mut r = self.remove_forged_results();
        match self.arc_set(hashed, None, None) {
            Ok(set) => r.extend(set),
            Err((condition, why)) => return self.act(condition, &why, r),
        }
        r.push(Response::Accept);
        r
    }

    /// Whether this message gets an ARC set.
    fn seals(&self) -> bool {
        match self.settings.arc.seal {
            SealScope::Nothing => false,
            SealScope::Ours => self.ours,
            SealScope::All => true,
        }
    }

    /// The key lookups of this message: one time budget for all of them (signatures and
    /// seals), and the client's share of the daemon's places.
    fn key_fetch(&self, deadline: std::time::Instant) -> impl Fn(&str, &str) -> KeyResult + '_ {
        let s = self.settings;
        let party = self.client.as_str();
        move |sel: &str, dom: &str| -> KeyResult {
            if std::time::Instant::now() >= deadline {
                let name = format!("{sel}._domainkey.{dom}");
                let error = format!("key lookups of this message took more than {} s", super::LOOKUP_BUDGET.as_secs());
                return Err((DkimResult::TempError, Reason::KeyLookup { name, error }));
            }
            (s.keys)(sel, dom, party)
        }
    }

    /// The ARC set this message gets (RFC 8617 §5.1), as replies that put it on top, when it
    /// is to be sealed: with the openarc.conf's key, else with `first_key` (the key it was
    /// just signed with). `computed` holds the DKIM verdicts and chain just found for it, when
    /// it was verified; otherwise the chain is validated here. The ARC-Authentication-Results
    /// carry our results: those our Authentication-Results recorded when a message from an
    /// internal host first arrived, else those just computed. A chain that already failed
    /// (`cv=fail`) or holds 50 sets gets nothing. Errors: the condition whose `On-*` action
    /// applies, and why.
    fn arc_set(
        &mut self,
        hashed: &HashedBody,
        computed: Option<(&[Verdict], &ArcVerdict)>,
        first_key: Option<&Signer>,
    ) -> Result<Vec<Response>, (Condition, String)> {
        let s = self.settings;
        if !self.seals() {
            return Ok(vec![]);
        }
        let Some(signer) = s.arc.sealer.as_ref().or(first_key) else {
            if s.log_why {
                self.log.info("not sealed: no key of ours for this message (ARCSign seals with the signing key)");
            }
            return Ok(vec![]);
        };
        let now = s.timestamp.unwrap_or_else(crate::cli::now_unix);
        let id = self.authserv_id();
        let deadline = std::time::Instant::now() + super::LOOKUP_BUDGET;
        let keys = self.key_fetch(deadline);
        let (msg, trusted, overrides) = (&self.message, self.trusted, s.arc.overrides);
        let props = computed.map(|(_, chain)| self.arc_props(chain)).unwrap_or_default();
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let parsed = Message::parse(msg).map_err(|e| arc::SealError::Sign(SignError::from(e)))?;
            let mut chain = match computed {
                Some((_, chain)) => chain.clone(),
                None => arc::validate_hashed(&parsed, hashed, &keys, now, &s.arc.policy),
            };
            let received = if trusted { arc::received_result(&parsed, &id) } else { None };
            if let (true, Some(received)) = (overrides, received) {
                chain = arc::received_override(chain, received);
            }
            let own = trusted && arc::has_results_of(&parsed, &id);
            let results = match computed {
                Some((verdicts, chain)) if !own => arc::results_computed_with(&id, verdicts, chain, &props),
                _ if own => arc::results_of(&parsed, &id),
                // Nothing verified here and nothing of ours in the message: the chain's state
                // (OpenARC records it in every set).
                _ => format!("{id}; arc={}", chain.result),
            };
            arc::seal(signer, &parsed, sign::Body::Hashed(hashed), &chain, &results, now).map(|set| (set, chain))
        }));
        drop(keys);
        let (set, chain) = match made {
            Ok(Ok(made)) => made,
            Ok(Err(e @ (arc::SealError::Closed(_) | arc::SealError::Full(_)))) => {
                self.log.info(&format!("not sealed: {e}"));
                return Ok(vec![]);
            }
            Ok(Err(arc::SealError::Temporary(why))) => {
                return Err((Condition::DnsError, format!("not sealed: ARC chain: {why}")))
            }
            Ok(Err(e)) => return Err((Condition::SignatureError, format!("not sealed: {e}"))),
            Err(_) => return Err((Condition::InternalError, "internal error (panic) while sealing".into())),
        };
        if s.log_success {
            let n = chain.instances + 1;
            let (sel, d) = (signer.selector(), signer.domain());
            self.log.info(&format!("ARC set i={n} added (s={sel}, d={d}, cv={})", chain.result));
        }
        // Each goes on top: the last field first, so that the seal ends up topmost.
        let mut out = vec![];
        for (name, value) in split_fields(&set).into_iter().rev() {
            out.push(Response::InsertHeader { index: 0, name, value: self.milter_value(&value) });
        }
        Ok(out)
    }

    /// An outside client sending mail whose From has a key of ours is worth a line in the log
    /// (opendkim(8) logs it too), unless it is listed in ExternalIgnoreList.
    fn warn_external_as_ours(&mut self) {
        let s = self.settings;
        let (Some(keys), false) = (&s.sign, self.client.is_empty()) else { return };
        if s.external_ignore.as_ref().is_some_and(|l| l.check(Some(&self.client_host), self.client_ip).unwrap_or(false))
        {
            return;
        }
        let Ok(parsed) = dkimpress::dkim::header::Message::parse(&self.message) else { return };
        if let Ok(signers) = keys.signers_for(&parsed, None) {
            if let Some(d) = signers.first().map(|s| s.domain().to_string()) {
                self.log.warn(&format!("external host {} tried to send mail as {d}", self.client));
            }
        }
    }

    /// Signs the message with the signers chosen at the end of its header block; `hashed`
    /// holds their body hashes.
    fn sign(&mut self, signers: &[Signer], hashed: &HashedBody) -> Result<Vec<Response>, MessageError> {
        let s = self.settings;
        let now = s.timestamp.unwrap_or_else(crate::cli::now_unix);
        let msg = &self.message;
        let fields = pipeline::guarded("signing", || {
            let parsed = Message::parse(msg).map_err(SignError::from)?;
            Ok(sign::sign_fields(signers, &parsed, sign::Body::Hashed(hashed), now)?)
        })?;
        // A result an authenticated user planted under our id goes from signed mail too: it
        // would reach local recipients as ours.
        let mut out = self.remove_forged_results();
        // Each goes on top: the last one first, so that they end up in signing order.
        for field in fields.iter().rev() {
            let value = self.milter_value(field.value());
            out.push(Response::InsertHeader { index: 0, name: SignatureField::NAME.into(), value });
        }
        if s.log_success {
            for signer in signers {
                let (sel, d) = (signer.selector(), signer.domain());
                self.log.info(&format!("DKIM-Signature field added (s={sel}, d={d})"));
            }
        }
        match self.arc_set(hashed, None, signers.first()) {
            Ok(set) => out.extend(set),
            Err((condition, why)) => return Ok(self.act(condition, &why, out)),
        }
        out.push(Response::Accept);
        Ok(out)
    }

    /// A value for SMFIR_INSHEADER/CHGHEADER: LF between folded lines (the MTA adds the CR, as
    /// libmilter's smfi_insheader documents), the leading space only when the MTA keeps it.
    fn milter_value(&self, value: &str) -> String {
        let v = value.replace("\r\n", "\n");
        if self.leadspc {
            v
        } else {
            v.trim_start_matches([' ', '\t']).to_string()
        }
    }

    /// Verifies the message (its body hashed into `hashed`), adds Authentication-Results and
    /// removes forged ones.
    fn verify(&mut self, hashed: &HashedBody) -> Vec<Response> {
        let s = self.settings;
        let now = s.timestamp.unwrap_or_else(crate::cli::now_unix);
        // One budget for all the lookups of this message, and the client's share of places.
        let deadline = std::time::Instant::now() + super::LOOKUP_BUDGET;
        let keys = self.key_fetch(deadline);
        let msg = &self.message;
        let with_chain = s.arc.verify || self.seals();
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match Message::parse(msg) {
            Ok(parsed) => {
                let verdicts = verify::verify_hashed(&parsed, hashed, &keys, now, &s.policy);
                let chain = with_chain.then(|| arc::validate_hashed(&parsed, hashed, &keys, now, &s.arc.policy));
                (verdicts, chain)
            }
            // A header block we cannot read: a permanent error, reported; the mail goes on.
            Err(e) => {
                let chain = with_chain.then(|| ArcVerdict::unparsable(&e));
                (vec![Verdict::new(DkimResult::PermError, Reason::Unparsable(e))], chain)
            }
        }));
        drop(keys);
        let Ok((verdicts, chain)) = checked else {
            return self.act(Condition::InternalError, "internal error (panic) while verifying", vec![]);
        };
        let mut edits = self.remove_forged_results();
        let overall = verify::overall(&verdicts);
        let arc_reported = chain.as_ref().filter(|_| s.arc.verify);
        if !verdicts.is_empty() || s.always_add_ar || arc_reported.is_some_and(|c| c.result != ArcResult::None) {
            let ar = match arc_reported {
                Some(chain) => arc::authentication_results_with(
                    &self.authserv_id(),
                    &verdicts,
                    chain,
                    &self.arc_props(chain),
                    "\r\n",
                ),
                None => verify::authentication_results(&self.authserv_id(), &verdicts, "\r\n"),
            };
            let value = ar.trim_end().trim_start_matches("Authentication-Results:");
            let value = if self.leadspc { value.to_string() } else { value.trim_start().to_string() };
            edits.push(Response::InsertHeader {
                index: 0,
                name: "Authentication-Results".into(),
                value: value.replace("\r\n", "\n"),
            });
        }
        // The words of opendkim's log lines, which log-watch rules look for.
        if verdicts.is_empty() && s.log_why {
            self.log.info("no signature data");
        }
        for v in verdicts.iter().filter(|v| !matches!(v.reason, Some(Reason::TooManySignatures(_)))).take(16) {
            let at = format!("(s={}, d={})", v.selector, v.domain);
            match (v.result, s.log_success) {
                (DkimResult::Pass, true) => self.log.info(&format!("DKIM verification successful {at}")),
                (DkimResult::Pass, false) => {}
                (DkimResult::Fail, _) => self.log.info(&format!(
                    "bad signature data {at}: dkim=fail: {}",
                    v.reason.as_ref().map(ToString::to_string).unwrap_or_default()
                )),
                _ => self.log.info(&format!(
                    "{at} dkim={}: {}",
                    v.result,
                    v.reason.as_ref().map(ToString::to_string).unwrap_or_default()
                )),
            }
        }
        if let Some(chain) = &arc_reported {
            let at = format!("(i={}, d={})", chain.instances, pipeline::sanitize_at_most(&chain.sealer, 100));
            match (chain.result, &chain.reason) {
                (ArcResult::Pass, _) if s.log_success => self.log.info(&format!("ARC chain validated {at}")),
                (ArcResult::Fail, Some(why)) => self.log.info(&format!("ARC chain failed {at}: {why}")),
                _ => {}
            }
        }
        if let Some(chain) = &chain {
            match self.arc_set(hashed, Some((&verdicts, chain)), None) {
                Ok(set) => edits.extend(set),
                Err((condition, why)) => return self.act(condition, &why, edits),
            }
        }
        let condition = match overall {
            DkimResult::None => Condition::NoSignature,
            DkimResult::Pass | DkimResult::Neutral | DkimResult::Policy => Condition::Default,
            DkimResult::TempError => Condition::DnsError,
            DkimResult::Fail => Condition::BadSignature,
            DkimResult::PermError if verdicts.iter().any(|v| matches!(v.reason, Some(Reason::KeyNotFound(_)))) => {
                Condition::KeyNotFound
            }
            DkimResult::PermError => Condition::BadSignature,
        };
        self.act(condition, &format!("dkim={overall}"), edits)
    }

    /// The properties after `arc=` in our Authentication-Results: the client's address
    /// (`smtp.remote-ip`, as OpenARC writes it) and, with `FinalReceiver`, the sealers of the
    /// chain, newest first (`arc.chain=`).
    fn arc_props(&self, chain: &ArcVerdict) -> Vec<(&'static str, String)> {
        let mut props = vec![];
        if let (_, Some(ip)) = crate::cli::hosts::split_client(&self.client) {
            props.push(("smtp.remote-ip", ip.to_string()));
        }
        let custody: Vec<&str> =
            chain.custody.iter().map(String::as_str).filter(|d| verify::is_authserv_id(d)).collect();
        if self.settings.arc.final_receiver && !custody.is_empty() {
            props.push(("arc.chain", custody.join(":")));
        }
        props
    }

    /// ChangeHeader deletions for Authentication-Results fields that claim our authserv-id
    /// (RFC 8601 §5: a forged result must not reach the reader), last first so that each
    /// index still names the same field.
    fn remove_forged_results(&self) -> Vec<Response> {
        let mut out = vec![];
        if self.settings.keep_auth_results {
            return out;
        }
        let ours = self.authserv_id();
        for (n, value) in self.ar_fields.iter().enumerate().rev() {
            if verify::claims_authserv_id(value, &ours) {
                out.push(Response::ChangeHeader {
                    index: n as u32 + 1,
                    name: "Authentication-Results".into(),
                    value: String::new(),
                });
            }
        }
        out
    }

    /// The replies for `condition` under the configured `On-*` action; `edits` are sent first
    /// when the message goes on.
    fn act(&mut self, condition: Condition, what: &str, mut edits: Vec<Response>) -> Vec<Response> {
        let action = self.settings.actions.get(condition);
        let note = format!("{what}: {} ({})", action.as_str(), condition.key());
        match action {
            Action::Accept => {
                if condition != Condition::Default && condition != Condition::NoSignature {
                    self.log.info(&note);
                }
                edits.push(Response::Accept);
                edits
            }
            Action::Tempfail => {
                self.log.error(&note);
                vec![Response::ReplyCode("451 4.7.1 Please try again later".into())]
            }
            Action::Reject => {
                self.log.warn(&note);
                vec![Response::ReplyCode("550 5.7.1 DKIM check failed".into())]
            }
            Action::Discard => {
                self.log.warn(&note);
                vec![Response::Discard]
            }
            Action::Quarantine => {
                self.log.warn(&note);
                edits.push(Response::Quarantine(format!("dkimpress: {what}")));
                edits.push(Response::Accept);
                edits
            }
        }
    }
}

/// The origin of mail from a client that logged in: ours, but what it wrote is not trusted.
const AUTHENTICATED: &str = "authenticated client";

/// Whose message this is.
enum Origin {
    /// Ours to sign (why).
    Ours(&'static str),
    /// From outside (why not ours).
    Outside(String),
    /// Cannot be told now (a host list in a database that does not answer).
    Unknown(String),
}

/// What the end of the header block decided for the message.
enum Plan<'a> {
    /// Ours: sign it with these.
    Sign(Cow<'a, [Signer]>),
    /// Not ours to sign (why, when we sign at all): verify it, if we verify.
    Verify(Option<String>),
    /// From a client that is not ours (why): verify it, if we verify, and note in the log
    /// when it claims one of our domains.
    Outside(String),
    /// Ours, but it cannot be signed (why): it goes on as it is.
    Unsignable(String),
    /// Cannot be handled now or at all: the `On-*` action of the condition decides.
    Fail(Condition, String),
}

/// The fields of `text` (wire form, CRLF) as (name, value), in order.
fn split_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![];
    for line in text.split_inclusive("\r\n") {
        match (line.starts_with([' ', '\t']), out.last_mut()) {
            (true, Some((_, value))) => value.push_str(line),
            _ => {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                out.push((name.to_string(), value.to_string()));
            }
        }
    }
    for (_, value) in &mut out {
        value.truncate(value.trim_end_matches("\r\n").len());
    }
    out
}

/// The milter's answer to each [`Disposition`] of a message of ours that was not signed.
fn not_signed<'a>(e: &MessageError) -> Plan<'a> {
    match e.disposition() {
        // Not ours after all: verified like inbound mail.
        Disposition::NoKey => Plan::Verify(Some(e.to_string())),
        Disposition::Unsignable => Plan::Unsignable(format!("cannot be signed: {e}")),
        Disposition::Temporary => Plan::Fail(Condition::InternalError, format!("key store: {e}")),
        Disposition::Broken if matches!(e, MessageError::Panic(_)) => {
            Plan::Fail(Condition::InternalError, e.to_string())
        }
        Disposition::Broken => Plan::Fail(Condition::SignatureError, format!("signing: {e}")),
    }
}
