//! The per-run cache of parsed keys in front of any [`KeyLookup`]: one lookup per selector and
//! domain (single flight), a bound on the lookups in flight, and for a daemon answers that
//! expire and places shared fairly among sites and clients.
//!
//! Does not know where keys come from (that is the lookup it wraps).

use crate::dkim::verify::{self, KeyLookup, KeyResult};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How many key lookups may be in flight at once across the threads of a [`KeyCache`] made by
/// [`KeyCache::new`] (`verify --dns-concurrency`). Each lookup blocks its worker thread, so with
/// fewer workers than this the limit never bites; it matters on 16-64 core machines at the start
/// of a run, when every worker meets a new key at the same time. Sixteen queries in flight keep
/// a resolver with a 20 ms round trip at some 800 lookups a second, far above what a run needs
/// (each key is asked once), while a shared or remote resolver sees a burst of 16 rather than
/// one query per core; the workers not waiting on a lookup go on verifying messages whose keys
/// are cached.
pub const DEFAULT_DNS_CONCURRENCY: usize = 16;

/// Parsed keys per (selector, domain) for a run, shared by the worker threads.
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
    use super::*;
    use crate::dkim::verify::LookupError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

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
