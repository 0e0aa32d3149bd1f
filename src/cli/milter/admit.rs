//! Who gets a connection place when the daemon is full: admission that favours work.
//!
//! The daemon serves at most `max` connections, and at most `per_peer` from one peer address
//! (inet sockets: every local process can connect to `inet:8891@localhost`). When a new
//! connection needs a place that is taken, the connection doing the least is closed to make
//! room, never one in the middle of a message: first one that never negotiated, then one that
//! negotiated but never named a client, then the one idle the longest between messages, oldest
//! first within each. Only when every place holds a message in progress is the new one closed
//! (the MTA then applies its milter_default_action). Each of these is logged.
//!
//! Owns the table of connections and their states; does not read or write the sockets (the
//! connection threads report their state; eviction shuts a socket down, and the thread ends).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// What a connection is doing, from least to most worth keeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Accepted; has not negotiated.
    Negotiating = 0,
    /// Negotiated; no client yet.
    Negotiated = 1,
    /// Between messages.
    Idle = 2,
    /// A message in progress: never evicted.
    Busy = 3,
}

/// One connection's state, shared by its thread and the table.
pub struct ConnState {
    phase: AtomicU8,
    /// Milliseconds since the daemon started, at the last packet.
    last: AtomicU64,
    epoch: Instant,
}

impl ConnState {
    /// Records what the connection now does (and that it is active now).
    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Negotiating,
            1 => Phase::Negotiated,
            2 => Phase::Idle,
            _ => Phase::Busy,
        }
    }
}

/// A connection in the table.
struct Entry {
    peer: Option<IpAddr>,
    state: Arc<ConnState>,
    /// Shuts the connection's socket down (its thread then ends and gives the place back).
    shutdown: Box<dyn Fn() + Send>,
    evicted: bool,
}

/// The connection table.
pub struct Admission {
    max: usize,
    per_peer: usize,
    epoch: Instant,
    next_id: AtomicU64,
    table: Mutex<HashMap<u64, Entry>>,
}

/// A place, given back when dropped (the connection thread holds it).
pub struct Ticket {
    id: u64,
    of: Arc<Admission>,
    /// The state the thread reports to.
    pub state: Arc<ConnState>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.of.table.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

/// What admission did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A free place.
    Admitted,
    /// Admitted after closing a connection doing less (its phase, peer).
    Evicted(Phase, Option<IpAddr>),
    /// Refused: every place (or every place of this peer) holds a message in progress.
    Refused,
}

impl Admission {
    /// A table of at most `max` connections, `per_peer` from one address.
    pub fn new(max: usize, per_peer: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max: max.max(1),
            per_peer: per_peer.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Connections open.
    pub fn open(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Finds a place for a connection from `peer` (`None`: a unix socket), closing the one
    /// doing least if needed. `shutdown` closes the new connection's socket if it is evicted
    /// later.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>, shutdown: Box<dyn Fn() + Send>) -> (Option<Ticket>, Outcome) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let live = |e: &&Entry| !e.evicted;
        let total = table.values().filter(live).count();
        let of_peer =
            |t: &HashMap<u64, Entry>| t.values().filter(live).filter(|e| peer.is_some() && e.peer == peer).count();
        let mut outcome = Outcome::Admitted;
        // The peer's own share first, then the daemon's: evict within the peer's connections
        // when the peer is at its limit, else among all.
        let peer_full = peer.is_some() && of_peer(&table) >= self.per_peer;
        if peer_full || total >= self.max {
            let victim = table
                .iter()
                .filter(|(_, e)| !e.evicted && (!peer_full || e.peer == peer))
                .map(|(id, e)| (*id, e.state.phase(), e.state.last.load(Ordering::Relaxed), e.peer))
                .filter(|(_, phase, _, _)| *phase != Phase::Busy)
                .min_by_key(|(id, phase, last, _)| (*phase, *last, *id));
            match victim {
                Some((id, phase, _, vpeer)) => {
                    let e = table.get_mut(&id).expect("listed");
                    e.evicted = true;
                    (e.shutdown)();
                    outcome = Outcome::Evicted(phase, vpeer);
                }
                None => return (None, Outcome::Refused),
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            phase: AtomicU8::new(Phase::Negotiating as u8),
            last: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            epoch: self.epoch,
        });
        table.insert(id, Entry { peer, state: state.clone(), shutdown, evicted: false });
        (Some(Ticket { id, of: self.clone(), state }), outcome)
    }
}

/// The memory all connections may hold for messages in progress, together: each message's
/// buffer is reserved here as it grows, and given back when the message ends. A message that
/// would pass the limit is not held (the session decides what that means for it).
pub struct MemoryBudget {
    used: AtomicU64,
    limit: u64,
}

impl MemoryBudget {
    /// A budget of `limit` octets.
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget { used: AtomicU64::new(0), limit })
    }

    /// Takes `n` octets if they fit.
    pub fn reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(n).filter(|t| *t <= self.limit))
            .is_ok()
    }

    /// Gives `n` octets back.
    pub fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Octets held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn flag() -> (Arc<AtomicBool>, Box<dyn Fn() + Send>) {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        (f, Box::new(move || g.store(true, Ordering::SeqCst)))
    }

    #[test]
    fn evicts_the_connection_doing_least_never_a_busy_one() {
        let a = Admission::new(3, 10);
        let (busy_closed, s) = flag();
        let (busy, _) = a.admit(None, s);
        busy.as_ref().unwrap().state.set(Phase::Busy);
        let (idle_closed, s) = flag();
        let (idle, _) = a.admit(None, s);
        idle.as_ref().unwrap().state.set(Phase::Idle);
        let (silent_closed, s) = flag();
        let (_silent, _) = a.admit(None, s);
        // Full: the one that never negotiated goes first.
        let (t, o) = a.admit(None, flag().1);
        assert!(t.is_some());
        assert_eq!(o, Outcome::Evicted(Phase::Negotiating, None));
        assert!(silent_closed.load(Ordering::SeqCst) && !idle_closed.load(Ordering::SeqCst));
        let t = t.unwrap();
        t.state.set(Phase::Busy);
        // Then the idle one; never the busy ones.
        let (t2, o) = a.admit(None, flag().1);
        assert_eq!(o, Outcome::Evicted(Phase::Idle, None));
        assert!(idle_closed.load(Ordering::SeqCst));
        let t2 = t2.unwrap();
        t2.state.set(Phase::Busy);
        let (t3, o) = a.admit(None, flag().1);
        assert!(t3.is_none());
        assert_eq!(o, Outcome::Refused);
        assert!(!busy_closed.load(Ordering::SeqCst));
        drop((busy, idle, t, t2));
    }

    #[test]
    fn memory_budget_is_shared() {
        let b = MemoryBudget::new(100);
        assert!(b.reserve(60));
        assert!(!b.reserve(41));
        assert!(b.reserve(40));
        b.release(60);
        assert_eq!(b.used(), 40);
        assert!(b.reserve(60));
    }

    #[test]
    fn one_peer_cannot_take_every_place() {
        let a = Admission::new(10, 2);
        let p: IpAddr = "192.0.2.1".parse().unwrap();
        let q: IpAddr = "192.0.2.2".parse().unwrap();
        let (first_closed, s) = flag();
        let (_t1, _) = a.admit(Some(p), s);
        let (_t2, _) = a.admit(Some(p), flag().1);
        // The peer's third evicts its own least active connection, not another peer's.
        let (_q1, o) = a.admit(Some(q), flag().1);
        assert_eq!(o, Outcome::Admitted);
        let (_t3, o) = a.admit(Some(p), flag().1);
        assert_eq!(o, Outcome::Evicted(Phase::Negotiating, Some(p)));
        assert!(first_closed.load(Ordering::SeqCst));
        assert_eq!(a.open(), 4, "the evicted one stays listed until its thread ends");
    }
}
