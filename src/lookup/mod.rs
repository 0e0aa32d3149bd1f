//! Where key records come from: DNS (hickory-resolver), zone files as `genkey` writes them,
//! key directories (one `NAME.txt` per record, the layout of the interop harness and the test
//! corpus), and a per-run cache so that a bulk job asks once per selector and domain.
//!
//! Owns the [`crate::dkim::verify::KeyLookup`] implementations. Does not parse key records (that is
//! [`crate::dkim::verify::parse_key_record`]).

use crate::dkim::verify::{self, KeyLookup, KeyResult, LookupError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Keys from DNS.
///
/// hickory's blocking `Resolver` runs every lookup under one mutex: a lookup that waits for a
/// timeout would hold up every other thread's. Here each calling thread drives its own lookup
/// (`block_on` of a multi-thread runtime runs the future on the caller), and the runtime's two
/// threads only drive the sockets and timers, so lookups wait for their own answers only.
pub struct Dns {
    runtime: tokio::runtime::Runtime,
    resolver: hickory_resolver::TokioAsyncResolver,
}

impl Dns {
    /// A resolver using `servers` (host:port), or the system's `/etc/resolv.conf` when empty;
    /// each query waits `timeout` and is tried `attempts` times.
    pub fn new(servers: &[SocketAddr], timeout: Duration, attempts: usize) -> std::io::Result<Dns> {
        use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
        let (config, mut opts) = if servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| std::io::Error::other(format!("cannot read the system DNS configuration: {e}")))?
        } else {
            let mut c = ResolverConfig::new();
            for s in servers {
                c.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
                c.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
            }
            (c, ResolverOpts::default())
        };
        opts.timeout = timeout;
        opts.attempts = attempts;
        // Names are absolute: no search-list expansion of selector._domainkey.domain.
        opts.ndots = 0;
        opts.cache_size = 0; // our own cache holds parsed keys
                             // 2048-bit and larger keys do not fit a 512-byte answer; TCP is the fallback.
        opts.edns0 = true;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dkimpress-dns")
            .enable_all()
            .build()?;
        let resolver = {
            let _entered = runtime.enter();
            hickory_resolver::TokioAsyncResolver::tokio(config, opts)
        };
        Ok(Dns { runtime, resolver })
    }
}

impl KeyLookup for Dns {
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        use hickory_resolver::error::ResolveErrorKind;
        use hickory_resolver::proto::op::ResponseCode;
        match self.runtime.block_on(self.resolver.txt_lookup(format!("{name}."))) {
            // A TXT record of several strings is one value: concatenate (RFC 6376 §3.6.2.2).
            Ok(answer) => {
                Ok(answer.iter().map(|txt| txt.txt_data().iter().flat_map(|s| s.iter().copied()).collect()).collect())
            }
            Err(e) => match e.kind() {
                ResolveErrorKind::NoRecordsFound { response_code, .. }
                    if matches!(*response_code, ResponseCode::NXDomain | ResponseCode::NoError) =>
                {
                    Err(LookupError::NotFound)
                }
                ResolveErrorKind::NoRecordsFound { response_code, .. } => {
                    let code = match *response_code {
                        ResponseCode::ServFail => "SERVFAIL".to_string(),
                        ResponseCode::Refused => "REFUSED".to_string(),
                        other => format!("{other:?}"),
                    };
                    Err(LookupError::Temporary(format!("DNS answered {code}")))
                }
                ResolveErrorKind::Timeout => Err(LookupError::Temporary("DNS timeout".into())),
                _ => Err(LookupError::Temporary(e.to_string())),
            },
        }
    }
}

/// Keys from zone files: `OWNER [TTL] [IN] TXT ( "..." "..." )`, with `$ORIGIN`, comments and
/// parentheses, as `dkimpress genkey` and `opendkim-genkey` write them. A relative owner with
/// no `$ORIGIN` takes its domain from the genkey comment `; ----- DKIM key SEL for DOMAIN`.
#[derive(Default)]
pub struct ZoneKeys {
    records: HashMap<String, Vec<Vec<u8>>>,
}

/// A zone file we cannot read.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {reason}")]
pub struct ZoneError {
    /// The file.
    pub path: String,
    /// 1-based line of the record.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl ZoneKeys {
    /// Reads TXT records from each zone file.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<ZoneKeys, ZoneError> {
        let mut z = ZoneKeys::default();
        for p in paths {
            let p = p.as_ref();
            let text = std::fs::read_to_string(p).map_err(|e| ZoneError {
                path: p.display().to_string(),
                line: 0,
                reason: e.to_string(),
            })?;
            z.add_zone(&text, &p.display().to_string())?;
        }
        Ok(z)
    }

    /// Adds the TXT records of one zone file's text.
    pub fn add_zone(&mut self, text: &str, origin_name: &str) -> Result<(), ZoneError> {
        let err =
            |line: usize, reason: &str| ZoneError { path: origin_name.to_string(), line, reason: reason.to_string() };
        let mut origin: Option<String> = None;
        let mut last_owner: Option<String> = None;
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let start = i;
            // Join a parenthesised record; keep its first comment (the genkey domain hint).
            let mut entry = String::new();
            let mut comment = String::new();
            let mut depth = 0i32;
            loop {
                let (code, c) = split_comment(lines[i]);
                if comment.is_empty() {
                    comment = c.to_string();
                }
                depth += paren_balance(code);
                entry.push_str(code);
                entry.push(' ');
                i += 1;
                if depth <= 0 || i >= lines.len() {
                    break;
                }
            }
            let line_no = start + 1;
            if entry.trim().is_empty() {
                continue;
            }
            let starts_blank = lines[start].starts_with([' ', '\t']);
            let tokens = tokenize(&entry).map_err(|r| err(line_no, &r))?;
            if tokens.is_empty() {
                continue;
            }
            if let Token::Word(w) = &tokens[0] {
                if w.eq_ignore_ascii_case("$ORIGIN") {
                    match tokens.get(1) {
                        Some(Token::Word(o)) => origin = Some(o.trim_end_matches('.').to_ascii_lowercase()),
                        _ => return Err(err(line_no, "$ORIGIN without a name")),
                    }
                    continue;
                }
                if w.starts_with('$') {
                    continue; // $TTL and friends
                }
            }
            // Owner (absent when the line starts with blank: same owner as before).
            let mut idx = 0;
            let owner_tok = if starts_blank {
                last_owner.clone()
            } else {
                idx = 1;
                match &tokens[0] {
                    Token::Word(w) => Some(w.clone()),
                    Token::Quoted(_) => return Err(err(line_no, "a record must start with its owner name")),
                }
            };
            // Skip TTL and class, find the type.
            let mut rtype = None;
            while idx < tokens.len() {
                match &tokens[idx] {
                    Token::Word(w) if w.bytes().all(|b| b.is_ascii_digit()) || w.eq_ignore_ascii_case("IN") => idx += 1,
                    Token::Word(w) => {
                        rtype = Some(w.to_ascii_uppercase());
                        idx += 1;
                        break;
                    }
                    Token::Quoted(_) => break,
                }
            }
            let Some(owner_raw) = owner_tok else { return Err(err(line_no, "record without an owner name")) };
            last_owner = Some(owner_raw.clone());
            if rtype.as_deref() != Some("TXT") {
                continue;
            }
            let mut value = Vec::new();
            for t in &tokens[idx..] {
                match t {
                    Token::Quoted(s) => value.extend_from_slice(s),
                    Token::Word(w) => value.extend_from_slice(w.as_bytes()),
                }
            }
            let owner = if owner_raw == "@" {
                origin.clone().ok_or_else(|| err(line_no, "@ without $ORIGIN"))?
            } else if let Some(abs) = owner_raw.strip_suffix('.') {
                abs.to_ascii_lowercase()
            } else {
                let domain = origin.clone().or_else(|| genkey_domain(&comment)).ok_or_else(|| {
                    err(line_no, "relative owner name and no $ORIGIN (nor a genkey comment naming the domain)")
                })?;
                format!("{}.{domain}", owner_raw.to_ascii_lowercase())
            };
            self.records.entry(owner).or_default().push(value);
        }
        Ok(())
    }

    /// Number of names with records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record was read.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl KeyLookup for ZoneKeys {
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        self.records.get(&name.to_ascii_lowercase()).cloned().ok_or(LookupError::NotFound)
    }
}

/// `; ----- DKIM key SEL for DOMAIN` -> DOMAIN.
fn genkey_domain(comment: &str) -> Option<String> {
    let rest = comment.split("DKIM key ").nth(1)?;
    let domain = rest.split(" for ").nth(1)?.split_whitespace().next()?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

enum Token {
    Word(String),
    Quoted(Vec<u8>),
}

/// Splits a zone line at its comment (a `;` outside quotes).
fn split_comment(line: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => return (&line[..i], &line[i..]),
            _ => {}
        }
    }
    (line, "")
}

/// Opening minus closing parentheses of a zone line, outside quoted strings (a `(` in a
/// record's text, such as `n=see (notes)`, must not join or end records: found by the zone fuzz
/// target, fuzz/regressions/zone).
fn paren_balance(code: &str) -> i32 {
    let mut quoted = false;
    let mut escaped = false;
    let mut depth = 0;
    for c in code.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            _ => {}
        }
    }
    depth
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'(' | b')' | b'\r' => i += 1,
            b'"' => {
                let mut v = vec![];
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("unterminated quoted string".into()),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            // \X or \DDD (RFC 1035 §5.1)
                            if b.get(i + 1..i + 4).is_some_and(|d| d.iter().all(u8::is_ascii_digit)) {
                                let n: u16 = s[i + 1..i + 4].parse().unwrap_or(0);
                                v.push(n.min(255) as u8);
                                i += 4;
                            } else if let Some(&c) = b.get(i + 1) {
                                v.push(c);
                                i += 2;
                            } else {
                                return Err("dangling backslash".into());
                            }
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Quoted(v));
            }
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'(' | b')' | b'"' | b'\r') {
                    i += 1;
                }
                out.push(Token::Word(s[start..i].to_string()));
            }
        }
    }
    Ok(out)
}

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

/// Several sources asked in order: the first that knows the name answers.
pub struct Chain(pub Vec<Box<dyn KeyLookup + Send>>);

impl KeyLookup for Chain {
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        for s in &self.0 {
            match s.txt(name) {
                Err(LookupError::NotFound) => continue,
                other => return other,
            }
        }
        Err(LookupError::NotFound)
    }
}

/// How many key lookups may be in flight at once across the threads of a [`KeyCache`] made by
/// [`KeyCache::new`] (`verify --dns-concurrency`). Each lookup blocks its worker thread, so with
/// fewer workers than this the limit never bites; it matters on 16-64 core machines at the start
/// of a run, when every worker meets a new key at the same time. Sixteen queries in flight keep
/// a resolver with a 20 ms round trip at some 800 lookups a second, far above what a run needs
/// (each key is asked once), while a shared or remote resolver sees a burst of 16 rather than
/// one query per core; the workers not waiting on a lookup go on verifying messages whose keys
/// are cached.
pub const DEFAULT_DNS_CONCURRENCY: usize = 16;

/// Parsed keys per (selector, domain) for a run, shared by the worker threads (issue 14, item 4).
///
/// Single flight: the first thread to ask for a key looks it up and the others asking for the
/// same key meanwhile wait for that answer, so a burst of workers meeting a new key sends one
/// query, not one each. At most `limit` lookups are in flight at once. Temporary failures are
/// handed to the waiters of their flight but not cached: a later message asks again.
///
/// A bulk run keeps every answer for the run; a daemon (the milter) gives answers a lifetime
/// and the cache a size bound ([`KeyCache::expiring`]).
pub struct KeyCache<L> {
    lookup: L,
    /// One slot per key: answered, or being looked up. The lock is held only to find or insert
    /// a slot, never during a lookup.
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
    /// The places for lookups in flight (one key, "": a counting semaphore).
    permits: KeyedLimit,
    /// How long an answer is good for (`None`: the whole run).
    ttl: Option<Duration>,
    /// Most keys kept; beyond it the cache starts afresh.
    max_entries: usize,
    /// How long a lookup may wait for a free place among those in flight (`None`: as long as
    /// it takes); past it the answer is a temporary error.
    permit_wait: Option<Duration>,
    /// Shares of the places for a daemon ([`KeyCache::fair`]); `None` for a bulk run.
    fair: Option<Fairness>,
}

/// How a daemon shares its lookup places among strangers, so that a domain whose DNS never
/// answers, or a client that sends many messages naming such domains, cannot take them all
/// (one sender's slowness must not defer another's mail).
struct Fairness {
    /// Lookups in flight per site (the registrable part of d=, see [`site_of`]).
    per_site: KeyedLimit,
    /// Lookups in flight per party (the milter's client address).
    per_party: KeyedLimit,
    /// Sites whose last lookup failed slowly (a timeout), until when they are not asked.
    dead: Mutex<HashMap<String, std::time::Instant>>,
    /// How long a slow failure is remembered.
    dead_for: Duration,
}

/// At most `limit` holders per key at once.
struct KeyedLimit {
    held: Mutex<HashMap<String, usize>>,
    freed: Condvar,
    limit: usize,
}

/// One place of a [`KeyedLimit`], given back when dropped.
struct KeyedPermit<'s> {
    of: &'s KeyedLimit,
    key: String,
}

impl KeyedLimit {
    fn new(limit: usize) -> KeyedLimit {
        KeyedLimit { held: Mutex::new(HashMap::new()), freed: Condvar::new(), limit: limit.max(1) }
    }

    /// Waits until `deadline` (if any) for a place under `key`.
    fn acquire(&self, key: &str, deadline: Option<std::time::Instant>) -> Option<KeyedPermit<'_>> {
        let mut held = lock(&self.held);
        while held.get(key).copied().unwrap_or(0) >= self.limit {
            held = match deadline {
                None => self.freed.wait(held).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.freed.wait_timeout(held, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
        *held.entry(key.to_string()).or_insert(0) += 1;
        Some(KeyedPermit { of: self, key: key.to_string() })
    }
}

impl Drop for KeyedPermit<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.of.held);
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
        drop(held);
        self.of.freed.notify_all();
    }
}

/// The part of a domain one operator's DNS answers for: its last two labels, or three under
/// the common two-level public suffixes (`example.co.uk`). A heuristic without the public
/// suffix list: at worst a site is taken too wide and shares its places with a neighbour.
pub fn site_of(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    let n = labels.len();
    let take = if n >= 3 && labels[n - 1].len() == 2 && labels[n - 2].len() <= 3 { 3 } else { 2 };
    labels[n.saturating_sub(take)..].join(".")
}

/// The answer for one key, once its flight lands, and when it landed.
#[derive(Default)]
struct Slot {
    answer: Mutex<Option<(std::time::Instant, KeyResult)>>,
    landed: Condvar,
}

impl<L: KeyLookup> KeyCache<L> {
    /// An empty cache in front of `lookup`, with at most [`DEFAULT_DNS_CONCURRENCY`] lookups in
    /// flight.
    pub fn new(lookup: L) -> KeyCache<L> {
        KeyCache::with_limit(lookup, NonZeroUsize::new(DEFAULT_DNS_CONCURRENCY).expect("non-zero"))
    }

    /// An empty cache in front of `lookup`, with at most `limit` lookups in flight at once.
    pub fn with_limit(lookup: L, limit: NonZeroUsize) -> KeyCache<L> {
        KeyCache {
            lookup,
            slots: Mutex::new(HashMap::new()),
            permits: KeyedLimit::new(limit.get()),
            ttl: None,
            max_entries: usize::MAX,
            permit_wait: None,
            fair: None,
        }
    }

    /// This cache with places shared fairly, for a daemon that serves strangers: at most
    /// `per_site` lookups in flight under one site ([`site_of`] the d= domain), at most
    /// `per_party` for one party (the milter's client address, given to [`get_for`]); and a
    /// site whose lookup failed slowly (a timeout) is answered a temporary error at once for
    /// `dead_for`, without asking. Waits for these places end at the
    /// [`waiting_at_most`](KeyCache::waiting_at_most) limit too.
    ///
    /// [`get_for`]: KeyCache::get_for
    pub fn fair(mut self, per_site: usize, per_party: usize, dead_for: Duration) -> KeyCache<L> {
        self.fair = Some(Fairness {
            per_site: KeyedLimit::new(per_site),
            per_party: KeyedLimit::new(per_party),
            dead: Mutex::new(HashMap::new()),
            dead_for,
        });
        self
    }

    /// This cache with lookups that wait at most `wait` for a place among those in flight, and
    /// answer a temporary error after it. A daemon serves many connections from one cache: a
    /// message whose signatures name domains that never answer must not hold up the others'
    /// lookups for longer than that.
    pub fn waiting_at_most(mut self, wait: Duration) -> KeyCache<L> {
        self.permit_wait = Some(wait);
        self
    }

    /// This cache with answers that expire after `ttl`, and at most `max_entries` keys (a full
    /// cache is emptied, in-flight lookups still land for their waiters).
    pub fn expiring(mut self, ttl: Duration, max_entries: usize) -> KeyCache<L> {
        self.ttl = Some(ttl);
        self.max_entries = max_entries.max(1);
        self
    }

    /// The key of `selector._domainkey.domain`, looked up once. Temporary failures are not
    /// cached (a later message may get an answer), but the threads that waited for that lookup
    /// all get it.
    pub fn get(&self, selector: &str, domain: &str) -> KeyResult {
        self.get_for(selector, domain, "")
    }

    /// [`get`](KeyCache::get) on behalf of `party` (whose share of the places it takes, with
    /// [`fair`](KeyCache::fair)).
    pub fn get_for(&self, selector: &str, domain: &str, party: &str) -> KeyResult {
        let k = (selector.to_ascii_lowercase(), domain.to_ascii_lowercase());
        let (slot, leader) = {
            let mut slots = lock(&self.slots);
            // An answer past its lifetime is asked again (map lock, then slot lock: the only
            // place both are held, in this order).
            let expired = |slot: &Slot| {
                self.ttl.is_some_and(|ttl| lock(&slot.answer).as_ref().is_some_and(|(at, _)| at.elapsed() >= ttl))
            };
            match slots.get(&k) {
                Some(slot) if !expired(slot) => (Arc::clone(slot), false),
                _ => {
                    if slots.len() >= self.max_entries {
                        slots.clear();
                    }
                    let slot = Arc::new(Slot::default());
                    slots.insert(k.clone(), Arc::clone(&slot));
                    (slot, true)
                }
            }
        };
        if !leader {
            let mut answer = lock(&slot.answer);
            loop {
                if let Some((_, r)) = answer.as_ref() {
                    return r.clone();
                }
                answer = slot.landed.wait(answer).unwrap_or_else(PoisonError::into_inner);
            }
        }
        let mut flight = Flight { cache: self, key: Some(k), slot };
        let r = {
            let k = flight.key.as_ref().expect("key");
            self.lead(&k.0, &k.1, party)
        };
        flight.land(r.clone());
        r
    }

    /// The leader's lookup: within the shares of [`fair`](KeyCache::fair), then within the
    /// places in flight.
    fn lead(&self, selector: &str, domain: &str, party: &str) -> KeyResult {
        let name = || format!("{selector}._domainkey.{domain}");
        let busy =
            |error: String| Err((verify::DkimResult::TempError, verify::Reason::KeyLookup { name: name(), error }));
        let deadline = self.permit_wait.map(|w| std::time::Instant::now() + w);
        let Some(fair) = &self.fair else {
            return match self.permits.acquire("", deadline) {
                Some(_permit) => verify::fetch_key(&self.lookup, selector, domain),
                None => busy("too many key lookups in flight; try again later".into()),
            };
        };
        let site = site_of(domain);
        if let Some(until) = lock(&fair.dead).get(&site).copied() {
            if std::time::Instant::now() < until {
                return busy(format!("DNS for {site} timed out moments ago; not asked again yet"));
            }
        }
        let Some(_site) = fair.per_site.acquire(&site, deadline) else {
            return busy(format!("too many key lookups in flight for {site}; try again later"));
        };
        let _party = match party {
            "" => None,
            p => match fair.per_party.acquire(p, deadline) {
                Some(permit) => Some(permit),
                None => return busy("this client has too many key lookups in flight; try again later".into()),
            },
        };
        let Some(_permit) = self.permits.acquire("", deadline) else {
            return busy("too many key lookups in flight; try again later".into());
        };
        let started = std::time::Instant::now();
        let r = verify::fetch_key(&self.lookup, selector, domain);
        // A slow failure (a timeout, not a quick SERVFAIL) marks the site: its next lookups
        // answer at once instead of holding places for as long again.
        if matches!(r, Err((verify::DkimResult::TempError, _))) && started.elapsed() >= Duration::from_millis(900) {
            let mut dead = lock(&fair.dead);
            let now = std::time::Instant::now();
            if dead.len() >= 10_000 {
                dead.retain(|_, until| *until > now);
            }
            dead.insert(site, now + fair.dead_for);
        }
        r
    }
}

/// The leader's side of a lookup. Landing publishes the answer to the waiters, and forgets the
/// slot when the answer must not be cached. Dropped without landing (the lookup panicked), it
/// lands a temporary error, so that the waiters do not wait forever.
struct Flight<'c, L> {
    cache: &'c KeyCache<L>,
    /// `None` once landed.
    key: Option<(String, String)>,
    slot: Arc<Slot>,
}

impl<L> Flight<'_, L> {
    fn land(&mut self, r: KeyResult) {
        let Some(k) = self.key.take() else { return };
        if matches!(r, Err((verify::DkimResult::TempError, _))) {
            // Forget the slot before publishing: whoever finds it in the map from now on starts a
            // new flight, and whoever holds it already gets this answer.
            let mut slots = lock(&self.cache.slots);
            if slots.get(&k).is_some_and(|s| Arc::ptr_eq(s, &self.slot)) {
                slots.remove(&k);
            }
        }
        *lock(&self.slot.answer) = Some((std::time::Instant::now(), r));
        self.slot.landed.notify_all();
    }
}

impl<L> Drop for Flight<'_, L> {
    fn drop(&mut self) {
        if let Some((s, d)) = &self.key {
            let name = format!("{s}._domainkey.{d}");
            let error = "the key lookup panicked".to_string();
            self.land(Err((verify::DkimResult::TempError, verify::Reason::KeyLookup { name, error })));
        }
    }
}

/// Locks `m`. No lock of this module is held while code that can panic runs (lookups run with
/// none held), so a poisoned lock still holds consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {

    /// Regression (fuzz/regressions/zone/paren-in-quoted-string): parentheses inside a quoted
    /// string neither join the next record nor end this one.
    #[test]
    fn parentheses_inside_quotes() {
        let zone = "$ORIGIN example.com.\n\
                    a._domainkey IN TXT ( \"v=DKIM1; k=ed25519; n=see (notes; \"\n\
                    \t\"p=or4vCo+ZLTRVAPz6zvV2Kq3MDW16hn79uvzO02YNaU0=\" )\n\
                    b._domainkey IN TXT \"v=DKIM1; n=x) y; p=\"\n";
        let mut z = ZoneKeys::default();
        z.add_zone(zone, "test.zone").unwrap();
        let a = crate::dkim::verify::KeyLookup::txt(&z, "a._domainkey.example.com").unwrap();
        assert_eq!(a.len(), 1);
        assert!(
            a[0].ends_with(b"p=or4vCo+ZLTRVAPz6zvV2Kq3MDW16hn79uvzO02YNaU0="),
            "{:?}",
            String::from_utf8_lossy(&a[0])
        );
        let b = crate::dkim::verify::KeyLookup::txt(&z, "b._domainkey.example.com").unwrap();
        assert_eq!(b, [b"v=DKIM1; n=x) y; p=".to_vec()]);
    }

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn zone_files() {
        let zone = "$TTL 3600\n\
            sel._domainkey\tIN\tTXT\t( \"v=DKIM1; k=rsa; \"\n\t  \"p=AB\"\n\t  \"CD\" )  ; ----- DKIM key sel for Example.com\n\
            $ORIGIN other.org.\n\
            s2._domainkey 300 IN TXT \"v=DKIM1; p=\" \"EF\" ; comment; with; semicolons\n\
            abs._domainkey.third.net. IN TXT \"a\\\"b\\059c\"\n\
            www IN A 192.0.2.1\n";
        let mut z = ZoneKeys::default();
        z.add_zone(zone, "test.zone").unwrap();
        assert_eq!(z.txt("sel._domainkey.example.com").unwrap(), vec![b"v=DKIM1; k=rsa; p=ABCD".to_vec()]);
        assert_eq!(z.txt("s2._domainkey.other.org").unwrap(), vec![b"v=DKIM1; p=EF".to_vec()]);
        assert_eq!(z.txt("abs._domainkey.third.net").unwrap(), vec![b"a\"b;c".to_vec()]);
        assert_eq!(z.txt("www.other.org"), Err(LookupError::NotFound));
        let e = ZoneKeys::default().add_zone("rel IN TXT \"x\"\n", "z").unwrap_err();
        assert!(e.to_string().starts_with("z:1: relative owner"), "{e}");
    }

    /// A slow key lookup that counts its calls and how many ran at once.
    struct Fake {
        /// The answer to every call.
        answer: Result<Vec<Vec<u8>>, LookupError>,
        calls: AtomicUsize,
        /// (in flight now, most in flight at once).
        in_flight: Mutex<(usize, usize)>,
        /// Signalled when `in_flight` changes.
        changed: Condvar,
        /// Each call waits until this many calls have been in flight at once (so that a test of
        /// the limit reaches it however the threads are scheduled).
        hold_for: usize,
        /// Calls wait until this is true.
        gate: Mutex<bool>,
        /// Signalled when `gate` opens.
        opened: Condvar,
    }

    const ED25519_RECORD: &[u8] = b"v=DKIM1; k=ed25519; p=or4vCo+ZLTRVAPz6zvV2Kq3MDW16hn79uvzO02YNaU0=";

    /// How long a test waits for a condition before it fails rather than hangs.
    const PATIENCE: Duration = Duration::from_secs(30);

    impl Fake {
        fn new(answer: Result<Vec<Vec<u8>>, LookupError>) -> Fake {
            Fake {
                answer,
                calls: AtomicUsize::new(0),
                in_flight: Mutex::new((0, 0)),
                changed: Condvar::new(),
                hold_for: 1,
                gate: Mutex::new(true),
                opened: Condvar::new(),
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn most_at_once(&self) -> usize {
            lock(&self.in_flight).1
        }

        fn open(&self) {
            *lock(&self.gate) = true;
            self.opened.notify_all();
        }
    }

    impl KeyLookup for Fake {
        fn txt(&self, _name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            {
                let mut f = lock(&self.in_flight);
                f.0 += 1;
                f.1 = f.1.max(f.0);
                self.changed.notify_all();
                let (f, _) = self.changed.wait_timeout_while(f, PATIENCE, |f| f.1 < self.hold_for).unwrap();
                drop(f);
            }
            let gate = lock(&self.gate);
            drop(self.opened.wait_timeout_while(gate, PATIENCE, |open| !*open).unwrap());
            // Long enough for the other threads of a test to ask while this call is in flight.
            std::thread::sleep(Duration::from_millis(50));
            lock(&self.in_flight).0 -= 1;
            self.answer.clone()
        }
    }

    /// Waits until `done` holds, failing the test after [`PATIENCE`].
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < PATIENCE, "gave up waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn key_cache_single_flight() {
        let fake = Fake::new(Ok(vec![ED25519_RECORD.to_vec()]));
        let cache = KeyCache::new(&fake);
        let start = Barrier::new(8);
        let keys: Vec<KeyResult> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        cache.get("Sel", "Example.com")
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(fake.calls(), 1);
        let first = keys[0].as_ref().unwrap();
        for k in &keys {
            assert!(Arc::ptr_eq(first, k.as_ref().unwrap()), "every thread gets the one parsed key");
        }
        // Cached for later messages.
        assert!(Arc::ptr_eq(first, cache.get("sel", "example.com").as_ref().unwrap()));
        assert_eq!(fake.calls(), 1);
    }

    #[test]
    fn key_cache_limits_lookups_in_flight() {
        let fake = Fake { hold_for: 4, ..Fake::new(Ok(vec![ED25519_RECORD.to_vec()])) };
        let cache = KeyCache::with_limit(&fake, NonZeroUsize::new(4).unwrap());
        let start = Barrier::new(32);
        std::thread::scope(|s| {
            for i in 0..32 {
                let (cache, start) = (&cache, &start);
                s.spawn(move || {
                    start.wait();
                    assert!(cache.get(&format!("s{i}"), "example.com").is_ok());
                });
            }
        });
        assert_eq!(fake.calls(), 32);
        assert_eq!(fake.most_at_once(), 4);
    }

    #[test]
    fn key_cache_temporary_error_reaches_its_waiters_only() {
        let fake = Fake { gate: Mutex::new(false), ..Fake::new(Err(LookupError::Temporary("SERVFAIL".into()))) };
        let cache = KeyCache::new(&fake);
        let key = ("sel".to_string(), "example.com".to_string());
        let slot = || lock(&cache.slots).get(&key).cloned();
        let answers: Vec<KeyResult> = std::thread::scope(|s| {
            let leader = s.spawn(|| cache.get("sel", "example.com"));
            wait_until("the leader's flight starts", || fake.calls() == 1);
            let waiters: Vec<_> = (0..7).map(|_| s.spawn(|| cache.get("sel", "example.com"))).collect();
            // The map, the leader and each waiter hold the slot: all seven joined the flight.
            wait_until("seven waiters join", || slot().is_some_and(|sl| Arc::strong_count(&sl) == 2 + 7 + 1));
            fake.open();
            std::iter::once(leader).chain(waiters).map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(fake.calls(), 1, "one lookup for the flight");
        let want = (
            verify::DkimResult::TempError,
            verify::Reason::KeyLookup { name: "sel._domainkey.example.com".into(), error: "SERVFAIL".into() },
        );
        assert_eq!(answers.len(), 8);
        for a in &answers {
            assert_eq!(a.as_ref().err(), Some(&want));
        }
        assert!(slot().is_none(), "a temporary error is not cached");
        assert!(matches!(cache.get("sel", "example.com"), Err((verify::DkimResult::TempError, _))));
        assert_eq!(fake.calls(), 2, "a later message asks again");
    }

    /// With a bound on the wait for a place in flight, a lookup stuck behind a hanging one gets
    /// a temporary error in time (and it is not cached); once the place is free, it is answered.
    #[test]
    fn key_cache_bounded_wait_for_a_place() {
        let fake = Fake { gate: Mutex::new(false), ..Fake::new(Ok(vec![ED25519_RECORD.to_vec()])) };
        let cache =
            KeyCache::with_limit(&fake, NonZeroUsize::new(1).unwrap()).waiting_at_most(Duration::from_millis(100));
        std::thread::scope(|s| {
            let stuck = s.spawn(|| cache.get("slow", "example.com"));
            wait_until("the hanging lookup starts", || fake.calls() == 1);
            let started = std::time::Instant::now();
            let r = cache.get("other", "example.com");
            let Err((verify::DkimResult::TempError, verify::Reason::KeyLookup { error, .. })) = r else {
                panic!("{r:?}")
            };
            assert!(error.contains("too many key lookups"), "{error}");
            assert!(started.elapsed() < PATIENCE);
            fake.open();
            assert!(stuck.join().unwrap().is_ok());
        });
        assert!(cache.get("other", "example.com").is_ok(), "asked again, answered");
        assert_eq!(fake.calls(), 2);
    }

    /// A daemon's cache (the milter's): an answer is asked again after its lifetime, and a full
    /// cache starts afresh.
    #[test]
    fn key_cache_expires_and_is_bounded() {
        let fake = Fake::new(Ok(vec![ED25519_RECORD.to_vec()]));
        let cache = KeyCache::new(&fake).expiring(Duration::from_millis(200), 2);
        assert!(cache.get("a", "example.com").is_ok());
        assert!(cache.get("A", "Example.COM").is_ok());
        assert_eq!(fake.calls(), 1, "cached within its lifetime");
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get("a", "example.com").is_ok());
        assert_eq!(fake.calls(), 2, "asked again after it");
        cache.get("b", "example.com").unwrap();
        cache.get("c", "example.com").unwrap();
        assert_eq!(fake.calls(), 4);
        // The third key emptied the cache: "a" is asked again, "c" is still there.
        cache.get("c", "example.com").unwrap();
        cache.get("a", "example.com").unwrap();
        assert_eq!(fake.calls(), 5);
    }
}
