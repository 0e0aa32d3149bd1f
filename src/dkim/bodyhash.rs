//! Body hashes (RFC 6376 §3.7, the `bh=` tag), computed over a body held in memory or as it
//! arrives in chunks.
//!
//! A daemon that sees a message piece by piece (the milter gets the body in chunks of up to
//! 64 KiB) need not keep the body: [`BodyHashes`] canonicalizes and hashes each chunk as it
//! comes, for every (canonicalization, hash, `l=`) the message's signatures need, and holds a
//! few counters between chunks whatever the body's size. [`StreamCanonicalizer`] is the
//! canonicalizer behind it; its output is exactly [`canon::canonicalize_body`]'s over the
//! chunks joined, however the body is cut.

use crate::arch::sha256x16::Sha256x16;
use crate::arch::sha256x2::Sha256Pair;
use crate::dkim::canon::{self, Canon, Sink};
use sha2::Digest as _;

/// A hash algorithm of `a=` (RFC 6376 §3.3; SHA-1 only where the verification policy allows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1 (`rsa-sha1`, obsolete per RFC 8301 §3.1).
    Sha1,
    /// SHA-256.
    Sha256,
}

/// Which body hash: the body canonicalization, the hash, and the `l=` limit if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodySpec {
    /// The body canonicalization.
    pub canon: Canon,
    /// The hash algorithm.
    pub hash: Hash,
    /// Only this many canonical octets are hashed (`l=`).
    pub limit: Option<u64>,
}

impl BodySpec {
    /// SHA-256 over the whole body, as we sign.
    pub fn signing(canon: Canon) -> BodySpec {
        BodySpec { canon, hash: Hash::Sha256, limit: None }
    }
}

/// A digest held in place (SHA-256's 32 octets or SHA-1's 20): a body hash is made for every
/// message, and a heap allocation for each showed in the profile of small ones.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    bytes: [u8; 32],
    len: u8,
}

impl Digest {
    /// `bytes` (at most 32 octets).
    pub fn new(bytes: &[u8]) -> Digest {
        let mut d = Digest { bytes: [0; 32], len: bytes.len() as u8 };
        d.bytes[..bytes.len()].copy_from_slice(bytes);
        d
    }

    /// The digest's octets.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::ops::Deref for Digest {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// One computed body hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyDigest {
    /// What was hashed.
    pub spec: BodySpec,
    /// The digest of the first `limit` canonical octets (all of them without a limit).
    pub digest: Digest,
    /// The length of the whole canonical body (also past the limit).
    pub total: u64,
}

/// The body hashes of one message, computed while its body streamed past: what
/// [`crate::dkim::sign::Body::Hashed`] and [`crate::dkim::verify::verify_hashed`] take instead
/// of the body.
#[derive(Clone, Debug, Default)]
pub struct HashedBody {
    /// Most messages need one, kept without an allocation.
    first: Option<BodyDigest>,
    more: Vec<BodyDigest>,
}

impl HashedBody {
    /// The hash of `spec`, if it was computed.
    pub fn get(&self, spec: BodySpec) -> Option<&BodyDigest> {
        self.first.iter().chain(&self.more).find(|d| d.spec == spec)
    }
}

/// A sink feeding either SHA-1 or SHA-256.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub(crate) fn new(h: Hash) -> Hasher {
        match h {
            Hash::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Hash::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            Hasher::Sha1(h) => Digest::new(&h.finalize()),
            Hasher::Sha256(h) => Digest::new(&h.finalize()),
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

/// A hasher that stops after `l=` octets and counts all it was offered.
struct Limited {
    inner: Hasher,
    left: u64,
    offered: u64,
}

impl Limited {
    fn new(spec: BodySpec) -> Limited {
        Limited { inner: Hasher::new(spec.hash), left: spec.limit.unwrap_or(u64::MAX), offered: 0 }
    }
}

impl Sink for Limited {
    fn write(&mut self, bytes: &[u8]) {
        self.offered += bytes.len() as u64;
        let take = (bytes.len() as u64).min(self.left) as usize;
        if take > 0 {
            self.inner.write(&bytes[..take]);
            self.left -= take as u64;
        }
    }
}

/// The hash of `spec` over a body held in memory.
pub fn hash_body(spec: BodySpec, body: &[u8]) -> BodyDigest {
    let mut h = Limited::new(spec);
    canon::canonicalize_body(spec.canon, body, &mut h);
    BodyDigest { spec, total: h.offered, digest: h.inner.finish() }
}

/// SHA-256 body hashes (`BodySpec::signing`) of two bodies at once: their canonical forms are
/// made a chunk at a time, in alternation, by two [`StreamCanonicalizer`]s, and hashed
/// together by [`Sha256Pair`], which on a CPU with SHA-NI runs about 1.4 times as fast as two
/// hashes one after the other (benches/REPORT.md). Each body is given as the slices that make
/// it, in order (an mbox body around its quoting `>`s). `None` when the CPU lacks SHA-NI.
pub fn hash_two<'a, I: IntoIterator<Item = &'a [u8]>>(bodies: [(Canon, I); 2]) -> Option<[HashedBody; 2]> {
    /// Octets of a body canonicalized per turn.
    const CHUNK: usize = 16 * 1024;
    let mut pair = Sha256Pair::with_buffers(PAIR_BUFFERS.take())?;
    let canons = [bodies[0].0, bodies[1].0];
    let mut feeds = bodies.map(|(canon, slices)| {
        (Some(StreamCanonicalizer::new(canon)), slices.into_iter().flat_map(|s| s.chunks(CHUNK)).peekable())
    });
    loop {
        // The turn goes to the lane with less canonical output waiting, so that the two stay
        // level whatever their line ends or whitespace make of their input (and the pair's
        // memory small: see `MAX_WAITING`).
        let live = [feeds[0].0.is_some(), feeds[1].0.is_some()];
        let lane = match live {
            [true, true] => usize::from(pair.waiting(1) < pair.waiting(0)),
            [true, false] => 0,
            [false, true] => 1,
            [false, false] => break,
        };
        let (canon, chunks) = &mut feeds[lane];
        let mut sink = Lane { pair: &mut pair, lane };
        match (canon.as_mut(), chunks.next()) {
            (Some(c), Some(chunk)) => {
                // The next chunk of a body read cold from a large mbox is on its way while the
                // pair hashes this one.
                if let Some(next) = chunks.peek() {
                    crate::arch::prefetch::prefetch(&next[..next.len().min(PREFETCH_NEXT)]);
                }
                c.update(chunk, &mut sink);
            }
            _ => {
                if let Some(c) = canon.take() {
                    c.finish(&mut sink);
                }
                pair.close(lane);
            }
        }
        pair.pump();
    }
    let totals = [pair.len(0), pair.len(1)];
    let (digests, mut buffers) = pair.finish_keeping();
    for b in &mut buffers {
        b.clear();
        b.shrink_to(2 * crate::arch::sha256x2::MAX_WAITING);
    }
    PAIR_BUFFERS.set(buffers);
    Some(std::array::from_fn(|i| HashedBody {
        first: Some(BodyDigest {
            spec: BodySpec::signing(canons[i]),
            digest: Digest::new(&digests[i]),
            total: totals[i],
        }),
        more: Vec::new(),
    }))
}

/// SHA-256 body hashes (`BodySpec::signing`) of many bodies at once, sixteen at a time in the
/// AVX-512 lanes ([`Sha256x16`]): each lane's body is canonicalized a chunk at a time (by a
/// [`StreamCanonicalizer`], as [`hash_two`] does) whenever little of it waits, the lanes hash
/// together what every one has, and a lane whose body is done takes the next. Once no body is
/// left to start and [`FEW`](crate::arch::sha256x16::FEW) lanes or fewer are busy, their rests
/// are hashed one stream at a time (SHA-NI where the CPU has it), which is then as fast.
/// Each body is given as the slices that make it, in order. Memory: a few dozen kilobytes a
/// lane, whatever the bodies' number and sizes. `None` when the CPU lacks AVX-512.
pub fn hash_many<'a, I: IntoIterator<Item = &'a [u8]>>(
    bodies: impl IntoIterator<Item = (Canon, I)>,
) -> Option<Vec<HashedBody>> {
    /// Octets of a body canonicalized at once.
    const CHUNK: usize = 16 * 1024;
    /// A lane is fed while fewer octets than this wait in it: each call of the kernel then
    /// runs over at least this many octets a lane, but for a body's last blocks.
    const LOW: usize = 4 * 1024;
    let mut lanes = Sha256x16::with_buffers(MANY_BUFFERS.take())?;
    let mut queue = bodies.into_iter().peekable();
    // Per lane: the index of its body, its canonicalization, and its canonicalizer with the
    // chunks still to canonicalize (`None` once the body is closed).
    let mut feeds: [Option<(usize, Canon, Option<_>)>; 16] = std::array::from_fn(|_| None);
    let mut done: Vec<Option<HashedBody>> = Vec::new();
    let hashed = |canon, (digest, total): ([u8; 32], u64)| HashedBody {
        first: Some(BodyDigest { spec: BodySpec::signing(canon), digest: Digest::new(&digest), total }),
        more: Vec::new(),
    };
    // Canonicalizes lane `lane`'s body until `low` octets wait or it is closed.
    let feed = |lanes: &mut Sha256x16, lane: usize, stream: &mut Option<(StreamCanonicalizer, _)>, low: usize| {
        while lanes.waiting(lane) < low {
            let Some((c, chunks)) = stream else { return };
            let mut sink = Many { lanes: &mut *lanes, lane };
            match Iterator::next(chunks) {
                Some(chunk) => c.update(chunk, &mut sink),
                None => {
                    if let Some((c, _)) = stream.take() {
                        c.finish(&mut sink);
                    }
                    lanes.close(lane);
                }
            }
        }
    };
    loop {
        for (lane, slot) in feeds.iter_mut().enumerate() {
            if slot.is_none() {
                if let Some((canon, slices)) = queue.next() {
                    lanes.start(lane);
                    let chunks = slices.into_iter().flat_map(|s: &'a [u8]| s.chunks(CHUNK));
                    *slot = Some((done.len(), canon, Some((StreamCanonicalizer::new(canon), chunks))));
                    done.push(None);
                }
            }
            if let Some((_, _, stream)) = slot {
                feed(&mut lanes, lane, stream, LOW);
            }
        }
        let busy = feeds.iter().flatten().count();
        if busy == 0 {
            break;
        }
        if queue.peek().is_none() && busy <= crate::arch::sha256x16::FEW {
            for (lane, slot) in feeds.iter_mut().enumerate() {
                if let Some((k, canon, mut stream)) = slot.take() {
                    loop {
                        lanes.hash_alone(lane);
                        if let Some(d) = lanes.take(lane) {
                            done[k] = Some(hashed(canon, d));
                            break;
                        }
                        feed(&mut lanes, lane, &mut stream, usize::MAX);
                    }
                }
            }
            break;
        }
        // Every open lane has at least a few blocks waiting, every closed one its last.
        let blocks = lanes.pump();
        debug_assert!(blocks > 0, "hash_many: the lanes made no progress");
        for (lane, slot) in feeds.iter_mut().enumerate() {
            if let Some((k, canon, _)) = *slot {
                if let Some(d) = lanes.take(lane) {
                    done[k] = Some(hashed(canon, d));
                    *slot = None;
                }
            }
        }
    }
    // Kept for the next call, within a bound: a worker's groups are alike.
    let mut buffers = lanes.into_buffers();
    for b in &mut buffers {
        b.clear();
        b.shrink_to(MANY_KEPT);
    }
    MANY_BUFFERS.set(buffers);
    Some(done.into_iter().map(|h| h.expect("every body started is hashed")).collect())
}

/// The capacity a lane's buffer of [`hash_many`] keeps between calls: what one fed a body of
/// large chunks needs.
const MANY_KEPT: usize = 40 * 1024;

thread_local! {
    /// The lanes' buffers of this thread's last [`hash_many`], emptied, for the next one.
    static MANY_BUFFERS: std::cell::Cell<Vec<Vec<u8>>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One lane of a [`Sha256x16`] as a [`Sink`].
struct Many<'l> {
    lanes: &'l mut Sha256x16,
    lane: usize,
}

impl Sink for Many<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.lanes.write(self.lane, bytes);
    }
}

thread_local! {
    /// The buffers of this thread's last [`hash_two`], for the next one: for small messages,
    /// growing two new ones each time cost as much as hashing a few hundred octets.
    static PAIR_BUFFERS: std::cell::Cell<[Vec<u8>; 2]> = const { std::cell::Cell::new([Vec::new(), Vec::new()]) };
}

/// How much of the next chunk [`hash_two`] asks the CPU to fetch ahead: a few lines, enough to
/// start the hardware prefetcher on the stream without a burst that fills the miss buffers.
const PREFETCH_NEXT: usize = 512;

/// One lane of a [`Sha256Pair`] as a [`Sink`].
struct Lane<'p> {
    pair: &'p mut Sha256Pair,
    lane: usize,
}

impl Sink for Lane<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.pair.write(self.lane, bytes);
    }
}

/// Body hashes computed chunk by chunk. Each body canonicalization is computed once, and each
/// (canonicalization, hash) is one running digest: the digest at each `l=` is a copy of the
/// running state taken as the canonical stream passes that length. However many signatures
/// and `l=` values a message names, its body is canonicalized at most twice and hashed at most
/// four times (simple and relaxed, SHA-1 and SHA-256). Memory: a few hundred octets per wanted
/// hash, whatever the body's size.
pub struct BodyHashes {
    groups: Vec<Group>,
    specs: Vec<BodySpec>,
}

/// The hashes of one body canonicalization.
struct Group {
    canon: Canon,
    canonicalizer: StreamCanonicalizer,
    digests: Vec<Running>,
}

/// One running digest of a canonical stream, with the digests at the `l=` lengths asked for.
struct Running {
    hash: Hash,
    hasher: Hasher,
    offered: u64,
    /// `l=` lengths, ascending, each with its digest once the stream has passed it.
    limits: Vec<(u64, Option<Digest>)>,
}

impl Running {
    /// The digest of the first `limit` octets (all of them with `None`) after the end.
    fn digest(&self, limit: Option<u64>) -> Digest {
        let taken = limit.and_then(|l| self.limits.iter().find(|(m, _)| *m == l)).and_then(|(_, d)| *d);
        taken.unwrap_or_else(|| self.hasher.clone().finish())
    }
}

impl Sink for Running {
    fn write(&mut self, mut bytes: &[u8]) {
        for (limit, digest) in self.limits.iter_mut().filter(|(_, d)| d.is_none()) {
            let end = self.offered + bytes.len() as u64;
            if *limit > end {
                break;
            }
            let take = (*limit - self.offered) as usize;
            self.hasher.write(&bytes[..take]);
            self.offered += take as u64;
            bytes = &bytes[take..];
            *digest = Some(self.hasher.clone().finish());
        }
        self.hasher.write(bytes);
        self.offered += bytes.len() as u64;
    }
}

/// Writes the canonical stream of a group to each of its running digests.
struct FanOut<'a>(&'a mut [Running]);

impl Sink for FanOut<'_> {
    fn write(&mut self, bytes: &[u8]) {
        for r in self.0.iter_mut() {
            r.write(bytes);
        }
    }
}

impl BodyHashes {
    /// Hashes for each of `specs` (each computed once, however often it is named).
    pub fn new(specs: impl IntoIterator<Item = BodySpec>) -> BodyHashes {
        let specs: Vec<BodySpec> = specs.into_iter().collect();
        let mut groups: Vec<Group> = Vec::new();
        for spec in &specs {
            let g = match groups.iter().position(|g| g.canon == spec.canon) {
                Some(i) => &mut groups[i],
                None => {
                    let canonicalizer = StreamCanonicalizer::new(spec.canon);
                    groups.push(Group { canon: spec.canon, canonicalizer, digests: vec![] });
                    groups.last_mut().expect("just pushed")
                }
            };
            let r = match g.digests.iter().position(|r| r.hash == spec.hash) {
                Some(i) => &mut g.digests[i],
                None => {
                    let hasher = Hasher::new(spec.hash);
                    g.digests.push(Running { hash: spec.hash, hasher, offered: 0, limits: vec![] });
                    g.digests.last_mut().expect("just pushed")
                }
            };
            if let Some(l) = spec.limit {
                if let Err(at) = r.limits.binary_search_by_key(&l, |(m, _)| *m) {
                    r.limits.insert(at, (l, None));
                }
            }
        }
        BodyHashes { groups, specs }
    }

    /// The next chunk of the body.
    pub fn update(&mut self, chunk: &[u8]) {
        for g in &mut self.groups {
            g.canonicalizer.update(chunk, &mut FanOut(&mut g.digests));
        }
    }

    /// The body has ended: the hashes.
    pub fn finish(self) -> HashedBody {
        let mut groups = self.groups;
        for g in &mut groups {
            let c = std::mem::replace(&mut g.canonicalizer, StreamCanonicalizer::new(g.canon));
            c.finish(&mut FanOut(&mut g.digests));
        }
        let mut hashed = HashedBody::default();
        for spec in self.specs {
            if hashed.get(spec).is_some() {
                continue;
            }
            let g = groups.iter().find(|g| g.canon == spec.canon).expect("a group per canonicalization");
            let r = g.digests.iter().find(|r| r.hash == spec.hash).expect("a digest per hash");
            let d = BodyDigest { spec, digest: r.digest(spec.limit), total: r.offered };
            match hashed.first {
                None => hashed.first = Some(d),
                Some(_) => hashed.more.push(d),
            }
        }
        hashed
    }
}

const CRLF: &[u8] = b"\r\n";

/// 64 CRLFs, for writing pending empty lines a block at a time.
const LINES: [u8; 128] = {
    let mut a = [b'\n'; 128];
    let mut i = 0;
    while i < a.len() {
        a[i] = b'\r';
        i += 2;
    }
    a
};

/// Body canonicalization (RFC 6376 §3.4.3, §3.4.4) of a body given in chunks, with the rules of
/// [`canon`] for stray line-end characters.
///
/// Each chunk is cut into three parts. From its first "content" octet to its last one (an
/// octet that is not a line-end character, nor whitespace in relaxed) goes to the fast
/// canonicalizer of [`canon`] in one piece: such a piece neither ends in trailing lines nor
/// in whitespace whose fate depends on what follows. The octets before and after it (line
/// ends, whitespace, CRs) go one at a time through a small state machine that remembers only
/// counts and flags: how many empty lines are pending (emitted only if content follows, as
/// trailing empty lines are removed), whether whitespace is pending (one SP if content
/// follows on the line, else nothing), whether a CR is pending (a line end if LF follows,
/// else an ordinary octet).
pub struct StreamCanonicalizer {
    canon: Canon,
    /// A CR whose meaning depends on the next octet.
    cr: bool,
    /// Relaxed: whitespace seen since the last content octet of the line.
    wsp: bool,
    /// Empty lines (and, in relaxed, whitespace-only lines) not yet emitted.
    empties: u64,
    /// The current line has content.
    line_content: bool,
    /// Some content was emitted.
    any: bool,
}

impl StreamCanonicalizer {
    /// A canonicalizer at the start of a body.
    pub fn new(canon: Canon) -> StreamCanonicalizer {
        StreamCanonicalizer { canon, cr: false, wsp: false, empties: 0, line_content: false, any: false }
    }

    fn is_content(&self, b: u8) -> bool {
        match self.canon {
            Canon::Simple => b != b'\r' && b != b'\n',
            Canon::Relaxed => !matches!(b, b'\r' | b'\n' | b' ' | b'\t'),
        }
    }

    /// Canonicalizes the next chunk into `sink`.
    pub fn update<S: Sink + ?Sized>(&mut self, chunk: &[u8], sink: &mut S) {
        let Some(first) = chunk.iter().position(|&b| self.is_content(b)) else {
            for &b in chunk {
                self.edge(b, sink);
            }
            return;
        };
        let last = chunk.iter().rposition(|&b| self.is_content(b)).expect("a content octet is at `first`");
        for &b in &chunk[..first] {
            self.edge(b, sink);
        }
        self.before_content(sink);
        canon::canonicalize_body_middle(self.canon, &chunk[first..=last], sink);
        self.line_content = true;
        self.any = true;
        for &b in &chunk[last + 1..] {
            self.edge(b, sink);
        }
    }

    /// The body has ended: writes what its end adds.
    pub fn finish<S: Sink + ?Sized>(mut self, sink: &mut S) {
        if self.cr {
            // A CR at the very end is an ordinary octet of an unterminated last line.
            self.lone_cr(sink);
        }
        if self.line_content {
            // An unterminated last line gets its line end; whitespace after its content goes.
            sink.write(CRLF);
        } else if self.canon == Canon::Simple && !self.any {
            // Simple: an empty body is one CRLF (RFC 6376 §3.4.3). Relaxed: it stays empty.
            sink.write(CRLF);
        }
    }

    /// One octet that is not content: CR, LF, or (relaxed) SP or HTAB.
    fn edge<S: Sink + ?Sized>(&mut self, b: u8, sink: &mut S) {
        match b {
            b'\n' => {
                // A line end, CRLF or bare LF; whitespace before it goes (relaxed).
                self.cr = false;
                self.wsp = false;
                if self.line_content {
                    // The end of a line with content is never a trailing line's: it stays.
                    sink.write(CRLF);
                    self.line_content = false;
                } else {
                    self.empties += 1;
                }
            }
            b'\r' => {
                if self.cr {
                    self.lone_cr(sink);
                }
                self.cr = true;
            }
            _ => {
                if self.cr {
                    self.lone_cr(sink);
                }
                self.wsp = true;
            }
        }
    }

    /// The pending CR was not followed by LF: it is an ordinary octet, content of its line.
    fn lone_cr<S: Sink + ?Sized>(&mut self, sink: &mut S) {
        self.cr = false;
        self.before_content(sink);
        sink.write(b"\r");
        self.line_content = true;
        self.any = true;
    }

    /// Content follows: the pending empty lines and whitespace were not trailing.
    fn before_content<S: Sink + ?Sized>(&mut self, sink: &mut S) {
        if self.cr {
            self.lone_cr(sink);
        }
        while self.empties > 0 {
            let n = self.empties.min((LINES.len() / 2) as u64) as usize;
            sink.write(&LINES[..2 * n]);
            self.empties -= n as u64;
        }
        if self.wsp {
            sink.write(b" ");
            self.wsp = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(c: Canon, body: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        canon::canonicalize_body(c, body, &mut out);
        out
    }

    /// The body fed in the chunks that `cuts` (ascending offsets) make.
    fn streamed(c: Canon, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = vec![];
        let mut s = StreamCanonicalizer::new(c);
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            let cut = cut.clamp(at, body.len());
            s.update(&body[at..cut], &mut out);
            at = cut;
        }
        s.finish(&mut out);
        out
    }

    /// Every body of up to 6 octets over content, SP, HTAB, CR and LF, cut at each offset and
    /// fed an octet at a time: the same as canonicalizing it whole.
    #[test]
    fn every_short_body_every_cut() {
        const ALPHABET: &[u8] = b"a \t\r\n";
        for len in 0..=6u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                let body: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = ALPHABET[n % ALPHABET.len()];
                        n /= ALPHABET.len();
                        b
                    })
                    .collect();
                let bytewise: Vec<usize> = (1..body.len()).collect();
                for c in [Canon::Simple, Canon::Relaxed] {
                    let want = whole(c, &body);
                    assert_eq!(streamed(c, &body, &bytewise), want, "{c:?} {body:?} octet by octet");
                    for cut in 0..=body.len() {
                        assert_eq!(streamed(c, &body, &[cut]), want, "{c:?} {body:?} cut at {cut}");
                    }
                }
            }
        }
    }

    /// A megabyte of nothing but line ends and whitespace takes no memory and still counts:
    /// the pending lines are emitted when content follows.
    #[test]
    fn long_runs_of_empty_lines() {
        let mut body = b"a\r\n".to_vec();
        body.extend(std::iter::repeat_n(&b" \r\n"[..], 300_000).flatten());
        body.extend_from_slice(b"b\r\n");
        body.extend(std::iter::repeat_n(&b"\r\n"[..], 300_000).flatten());
        let cuts: Vec<usize> = (1..body.len()).step_by(65_536).collect();
        for c in [Canon::Simple, Canon::Relaxed] {
            assert_eq!(streamed(c, &body, &cuts), whole(c, &body), "{c:?}");
        }
    }

    #[test]
    fn body_hashes_match_hashing_the_whole_body() {
        let body = b"Hello\tworld  \r\n\r\nsecond line\nthird\r\n\r\n\r\n";
        let specs = [
            BodySpec::signing(Canon::Simple),
            BodySpec::signing(Canon::Relaxed),
            BodySpec { canon: Canon::Relaxed, hash: Hash::Sha1, limit: Some(7) },
            BodySpec { canon: Canon::Simple, hash: Hash::Sha256, limit: Some(0) },
            BodySpec::signing(Canon::Simple),
            BodySpec { canon: Canon::Relaxed, hash: Hash::Sha256, limit: Some(3) },
            BodySpec { canon: Canon::Relaxed, hash: Hash::Sha256, limit: Some(22) },
            BodySpec { canon: Canon::Relaxed, hash: Hash::Sha256, limit: Some(10_000) },
            BodySpec { canon: Canon::Simple, hash: Hash::Sha256, limit: Some(5) },
        ];
        let mut h = BodyHashes::new(specs);
        assert_eq!(h.groups.len(), 2, "one canonicalization each");
        assert_eq!(h.groups.iter().map(|g| g.digests.len()).sum::<usize>(), 3, "one running digest per hash");
        for chunk in body.chunks(5) {
            h.update(chunk);
        }
        let hashed = h.finish();
        for spec in specs {
            assert_eq!(hashed.get(spec), Some(&hash_body(spec, body)), "{spec:?}");
        }
        assert_eq!(hashed.get(BodySpec { canon: Canon::Relaxed, hash: Hash::Sha1, limit: None }), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_chunking_matches_the_whole_body(
            body in crate::dkim::canon::body::tests::long_bodies(),
            cuts in proptest::collection::vec(0usize..100_000, 0..40),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            for c in [Canon::Simple, Canon::Relaxed] {
                prop_assert_eq!(streamed(c, &body, &cuts), whole(c, &body));
            }
        }

        #[test]
        fn any_chunking_and_limits_match_hash_body(
            body in crate::dkim::canon::body::tests::long_bodies(),
            cuts in proptest::collection::vec(0usize..100_000, 0..20),
            limits in proptest::collection::vec(0u64..150_000, 0..5),
        ) {
            let mut specs = vec![];
            for canon in [Canon::Simple, Canon::Relaxed] {
                for hash in [Hash::Sha1, Hash::Sha256] {
                    specs.push(BodySpec { canon, hash, limit: None });
                    specs.extend(limits.iter().map(|&l| BodySpec { canon, hash, limit: Some(l) }));
                }
            }
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut h = BodyHashes::new(specs.clone());
            let mut at = 0;
            for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
                let cut = cut.clamp(at, body.len());
                h.update(&body[at..cut]);
                at = cut;
            }
            let hashed = h.finish();
            for spec in specs {
                prop_assert_eq!(hashed.get(spec), Some(&hash_body(spec, &body)));
            }
        }

        /// Two bodies hashed together, each given in pieces: what each alone hashes to.
        #[test]
        fn two_bodies_hashed_together_match_hash_body(
            a in crate::dkim::canon::body::tests::long_bodies(),
            b in crate::dkim::canon::body::tests::long_bodies(),
            cuts_a in proptest::collection::vec(0usize..100_000, 0..6),
            cuts_b in proptest::collection::vec(0usize..100_000, 0..6),
            canons in (proptest::bool::ANY, proptest::bool::ANY),
        ) {
            let pieces = |body: &'_ [u8], cuts: &[usize]| -> Vec<std::ops::Range<usize>> {
                let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
                cuts.sort_unstable();
                let ends = cuts.iter().copied().chain(std::iter::once(body.len()));
                std::iter::once(0).chain(cuts.iter().copied()).zip(ends).map(|(s, e)| s..e).collect()
            };
            let (pa, pb) = (pieces(&a, &cuts_a), pieces(&b, &cuts_b));
            let sa: Vec<&[u8]> = pa.iter().map(|r| &a[r.clone()]).collect();
            let sb: Vec<&[u8]> = pb.iter().map(|r| &b[r.clone()]).collect();
            let canon = |relaxed| if relaxed { Canon::Relaxed } else { Canon::Simple };
            let (ca, cb) = (canon(canons.0), canon(canons.1));
            let Some([ha, hb]) = hash_two([(ca, sa.iter().copied()), (cb, sb.iter().copied())]) else {
                // No SHA-NI on this CPU: nothing to compare.
                return Ok(());
            };
            prop_assert_eq!(ha.get(BodySpec::signing(ca)), Some(&hash_body(BodySpec::signing(ca), &a)));
            prop_assert_eq!(hb.get(BodySpec::signing(cb)), Some(&hash_body(BodySpec::signing(cb), &b)));
        }
    }

    /// Bodies that make far more canonical output than the other's, or far less: a run of
    /// empty lines that comes out at once when a word follows, whitespace that relaxed drops.
    #[test]
    fn two_very_unequal_bodies_hashed_together() {
        let mut empties = vec![b'\n'; 1_000_000];
        empties.extend_from_slice(b"word\n");
        let spaces = [b" \t".repeat(300_000), b"x\n".to_vec()].concat();
        let text = b"a line of text\r\n".repeat(20_000);
        for (a, b) in [(&empties, &text), (&text, &empties), (&spaces, &empties), (&text, &spaces)] {
            for c in [Canon::Simple, Canon::Relaxed] {
                let Some([ha, hb]) = hash_two([(c, [&a[..]]), (c, [&b[..]])]) else { return };
                assert_eq!(ha.get(BodySpec::signing(c)), Some(&hash_body(BodySpec::signing(c), a)));
                assert_eq!(hb.get(BodySpec::signing(c)), Some(&hash_body(BodySpec::signing(c), b)));
            }
        }
        // What the thread keeps for the next pair is bounded too.
        let kept = PAIR_BUFFERS.take();
        assert!(
            kept.iter().all(|b| b.capacity() <= 2 * crate::arch::sha256x2::MAX_WAITING),
            "{:?}",
            kept.each_ref().map(|b| b.capacity())
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Many bodies hashed in the AVX-512 lanes, each given in pieces and with its own
        /// canonicalization: what each alone hashes to.
        #[test]
        fn many_bodies_hashed_together_match_hash_body(
            bodies in proptest::collection::vec(
                (crate::dkim::canon::body::tests::long_bodies(), 0usize..100_000, proptest::bool::ANY),
                0..40,
            ),
        ) {
            let given: Vec<(Canon, Vec<&[u8]>)> = bodies
                .iter()
                .map(|(b, cut, relaxed)| {
                    let cut = (*cut).min(b.len());
                    (if *relaxed { Canon::Relaxed } else { Canon::Simple }, vec![&b[..cut], &b[cut..]])
                })
                .collect();
            let Some(hashed) = hash_many(given.iter().map(|(c, s)| (*c, s.iter().copied()))) else {
                eprintln!("SKIPPED many_bodies_hashed_together_match_hash_body: this CPU has no AVX-512F/BW");
                return Ok(());
            };
            prop_assert_eq!(hashed.len(), bodies.len());
            for ((h, (c, _)), (b, _, _)) in hashed.iter().zip(&given).zip(&bodies) {
                prop_assert_eq!(h.get(BodySpec::signing(*c)), Some(&hash_body(BodySpec::signing(*c), b)));
            }
        }
    }

    #[test]
    fn many_empty_or_tiny_bodies_hashed_together() {
        let bodies: [&[u8]; 6] = [b"", b"\r\n", b"\n\n\n", b"x", b" \t \r\n", b"a\r\n\r\n"];
        let given: Vec<(Canon, [&[u8]; 1])> =
            bodies.iter().flat_map(|&b| [(Canon::Simple, [b]), (Canon::Relaxed, [b])]).collect();
        let Some(hashed) = hash_many(given.iter().map(|&(c, s)| (c, s))) else {
            eprintln!("SKIPPED many_empty_or_tiny_bodies_hashed_together: this CPU has no AVX-512F/BW");
            return;
        };
        for (h, &(c, [b])) in hashed.iter().zip(&given) {
            assert_eq!(h.get(BodySpec::signing(c)), Some(&hash_body(BodySpec::signing(c), b)));
        }
    }

    /// Large bodies through the lanes, more of them than lanes, so that large bodies are hashed
    /// both together and alone at the end: lines ending in spaces, bare LFs, a burst of empty
    /// lines the relaxed canonicalizer lets out at once (past a lane's `MAX_WAITING`), and
    /// short ones among them.
    #[test]
    fn many_large_bodies_hashed_together() {
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for i in 0..21usize {
            let body = match i % 4 {
                0 => b"line with spaces at its end   \n".repeat(20_000 + 977 * i),
                1 => [&b"\r\n".repeat(100_000 + i)[..], b"a word\r\n"].concat(),
                2 => (0..300_000 + 1000 * i).map(|j| b"ab \t\ncd"[(j * 5 + i) % 7]).collect(),
                _ => b"short\r\n".repeat(i),
            };
            bodies.push(body);
        }
        for canon in [Canon::Relaxed, Canon::Simple] {
            let Some(hashed) = hash_many(bodies.iter().map(|b| (canon, [&b[..10], &b[10..]]))) else {
                eprintln!("SKIPPED many_large_bodies_hashed_together: this CPU has no AVX-512F/BW");
                return;
            };
            for (i, (h, b)) in hashed.iter().zip(&bodies).enumerate() {
                assert_eq!(h.get(BodySpec::signing(canon)), Some(&hash_body(BodySpec::signing(canon), b)), "body {i}");
            }
        }
    }

    #[test]
    fn two_empty_or_tiny_bodies_hashed_together() {
        let bodies: [&[u8]; 6] = [b"", b"\r\n", b"\n\n\n", b"x", b" \t \r\n", b"a\r\n\r\n"];
        for a in bodies {
            for b in bodies {
                for (ca, cb) in [(Canon::Simple, Canon::Relaxed), (Canon::Relaxed, Canon::Simple)] {
                    let Some([ha, hb]) = hash_two([(ca, [a]), (cb, [b])]) else { return };
                    assert_eq!(ha.get(BodySpec::signing(ca)), Some(&hash_body(BodySpec::signing(ca), a)));
                    assert_eq!(hb.get(BodySpec::signing(cb)), Some(&hash_body(BodySpec::signing(cb), b)));
                }
            }
        }
    }
}
