//! OpenDKIM host lists (`InternalHosts`, `ExternalIgnoreList`, `PeerList`): which clients a
//! list names, matched exactly as opendkim(8) matches them.
//!
//! Owns reading such a list from any data set opendkim allows for it (a path, `file:`,
//! `refile:`, `csl:`, `dsn:pgsql://`) and the membership test. It does not decide what
//! membership means (the milter and the filter do).
//!
//! opendkim asks its data set a sequence of questions, most specific first, and the first
//! entry found decides; a `!` entry found before a plain one excludes (opendkim.c,
//! `dkimf_checkhost` and `dkimf_checkip`):
//! - the client's host name from the MTA (not when it is `[address]`), then each of its parent
//!   suffixes with the leading dot: `mail.example.com`, `.example.com`, `.com`;
//! - then, separately, its address: `192.0.2.7`, then `192.0.2.7/32`, `192.0.2.6/31`, ... down
//!   to `0.0.0.0/0` (IPv6 the same over 128 bits).
//!
//! At each question `!q` is asked before `q`. So `10.0.0.0/8, !10.1.0.0/16` takes 10.2.0.1 and
//! not 10.1.0.1, and `.example.com` takes every host under example.com. In a `refile:` list
//! `*` matches any run of characters (`*.example.com`). Entries we cannot read are errors
//! naming the file and line, never a silent no-match.

use dkimpress::select::{wildcard, DataSet, DbSettings};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// One host list.
#[derive(Debug)]
pub struct HostList {
    set: Set,
}

enum Set {
    /// Plain entries (file, csl): canonical forms, lowercase, `!` kept.
    Exact(HashSet<String>),
    /// `refile:` patterns, in file order (canonical forms where they are addresses).
    Patterns(Vec<String>),
    /// A database: each question is a query.
    Db(Box<DataSet>),
}

impl std::fmt::Debug for Set {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Set::Exact(s) => write!(f, "Exact({} entries)", s.len()),
            Set::Patterns(p) => write!(f, "Patterns({} entries)", p.len()),
            Set::Db(_) => f.write_str("Db"),
        }
    }
}

impl Default for HostList {
    /// 127.0.0.1 and ::1, the loopback addresses (opendkim's InternalHosts default).
    fn default() -> Self {
        HostList::parse_list("127.0.0.1, ::1").expect("valid")
    }
}

impl HostList {
    /// Entries separated by commas, blanks or line ends; `#` starts a comment (a `csl:` value,
    /// or a command-line list).
    pub fn parse_list(text: &str) -> Result<HostList, String> {
        let mut set = HashSet::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            for word in line.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()) {
                set.insert(entry(word, false)?);
            }
        }
        Ok(HostList { set: Set::Exact(set) })
    }

    /// [`load_named`](HostList::load_named) for `InternalHosts`.
    pub fn load(spec: &str, base: &Path, db: DbSettings) -> Result<HostList, String> {
        HostList::load_named("InternalHosts", spec, base, db)
    }

    /// An OpenDKIM data set named by `key` (for messages): a path (relative ones from `base`),
    /// `file:PATH`, `refile:PATH`, `csl:LIST`, `dsn:pgsql://...`, or else a list (opendkim(8)
    /// DATA SETS: a value that is not a path nor typed is a comma-separated list).
    pub fn load_named(key: &str, spec: &str, base: &Path, db: DbSettings) -> Result<HostList, String> {
        let spec = spec.trim();
        if spec.starts_with("dsn:") {
            let set = DataSet::open(spec, base, db).map_err(|e| format!("{key}: {e}"))?;
            return Ok(HostList { set: Set::Db(Box::new(set)) });
        }
        let (path, patterns) = if let Some(p) = spec.strip_prefix("refile:") {
            (Some(p), true)
        } else if let Some(p) = spec.strip_prefix("file:") {
            (Some(p), false)
        } else if spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../") {
            (Some(spec), false)
        } else {
            (None, false)
        };
        let Some(path) = path else {
            let list = spec.strip_prefix("csl:").unwrap_or(spec);
            if let Some((kind, _)) = list.split_once(':').filter(|(k, _)| is_set_type(k)) {
                return Err(format!(
                    "{key} {spec:?}: data sets of type {kind}: are not supported here (file, refile, csl, dsn:pgsql)"
                ));
            }
            return HostList::parse_list(list).map_err(|e| format!("{key}: {e}"));
        };
        let path = base.join(path);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{key} {shown}: {e}"))?;
        let mut exact = HashSet::new();
        let mut list = vec![];
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            // A file data set's key is the first word of its line (opendkim(8)).
            let Some(word) = line.split_whitespace().next() else { continue };
            let e = entry(word, patterns).map_err(|e| format!("{shown}:{}: {key}: {e}", n + 1))?;
            if patterns {
                list.push(e);
            } else {
                exact.insert(e);
            }
        }
        Ok(HostList { set: if patterns { Set::Patterns(list) } else { Set::Exact(exact) } })
    }

    /// Whether the list takes a client with host name `host` (as the MTA names it; `[...]`
    /// and empty mean unknown) and address `ip`. `Err`: the database could not be asked.
    pub fn check(&self, host: Option<&str>, ip: Option<IpAddr>) -> Result<bool, String> {
        if let Some(h) = host.map(str::trim).filter(|h| !h.is_empty() && !h.starts_with('[')) {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            let mut at = Some(0);
            while let Some(i) = at {
                if let Some(found) = self.ask(&h[i..], false)? {
                    // A `!` name stops the name questions only; the address is still asked.
                    if found {
                        return Ok(true);
                    }
                    break;
                }
                at = h[i + 1..].find('.').map(|j| i + 1 + j);
            }
        }
        let Some(ip) = ip else { return Ok(false) };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if let Some(found) = self.ask(&ip.to_string(), false)? {
            return Ok(found);
        }
        let max = if ip.is_ipv4() { 32 } else { 128 };
        for bits in (0..=max).rev() {
            if let Some(found) = self.ask(&format!("{}/{bits}", masked(ip, bits)), true)? {
                return Ok(found);
            }
        }
        Ok(false)
    }

    /// Whether `client` (an address, `[address]`, or a host name) is in the list; a database
    /// that cannot be asked counts as not listed (the caller that must know uses [`check`]).
    ///
    /// [`check`]: HostList::check
    pub fn contains(&self, client: &str) -> bool {
        let (host, ip) = split_client(client);
        self.check(host, ip).unwrap_or(false)
    }

    /// `Some(false)` when `!q` is listed, `Some(true)` when `q` is, `None` when neither.
    /// `block`: `q` is an address block (`net/bits`).
    fn ask(&self, q: &str, block: bool) -> Result<Option<bool>, String> {
        let neg = format!("!{q}");
        Ok(match &self.set {
            Set::Exact(s) => {
                if s.contains(&neg) {
                    Some(false)
                } else if s.contains(q) {
                    Some(true)
                } else {
                    None
                }
            }
            // Two differences from opendkim, both to never take a client nobody listed: a
            // pattern is asked only the questions of its own sign (opendkim would match
            // `*.example.com` against `!mx.example.com` too, and so exclude every host the
            // pattern names); and a `*` pattern is not asked the block questions
            // (`192.168.*` would match `192.168.0.0/15`, taking 192.169.x.x).
            Set::Patterns(p) => {
                let usable = |e: &&String| !(block && e.contains('*'));
                let (neg, pos): (Vec<&String>, Vec<&String>) =
                    p.iter().filter(usable).partition(|e| e.starts_with('!'));
                if neg.iter().any(|e| wildcard(&e[1..], q)) {
                    Some(false)
                } else if pos.iter().any(|e| wildcard(e, q)) {
                    Some(true)
                } else {
                    None
                }
            }
            Set::Db(db) => {
                if db.get(&neg).map_err(|e| e.to_string())?.is_some() {
                    Some(false)
                } else if db.get(q).map_err(|e| e.to_string())?.is_some() {
                    Some(true)
                } else {
                    None
                }
            }
        })
    }
}

/// The data set types of opendkim(8) we recognise in a value (to refuse the unsupported ones
/// by name instead of reading `db:/path` as a host name).
fn is_set_type(kind: &str) -> bool {
    [
        "db", "dsn", "ldap", "ldapi", "ldaps", "lua", "memcache", "mdb", "redis", "erlang", "socket", "repl", "file",
        "refile", "csl",
    ]
    .contains(&kind.to_ascii_lowercase().as_str())
}

/// A client given as one string: an address (bare, `[addr]`, `IPv6:addr`, with a zone) or a
/// host name.
pub fn split_client(client: &str) -> (Option<&str>, Option<IpAddr>) {
    let text = client.trim();
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    let bare = bare.strip_prefix("IPv6:").or_else(|| bare.strip_prefix("ipv6:")).unwrap_or(bare);
    let bare = bare.split('%').next().unwrap_or_default();
    match bare.parse::<IpAddr>() {
        Ok(ip) => (None, Some(ip)),
        Err(_) if text.is_empty() => (None, None),
        Err(_) => (Some(text), None),
    }
}

/// `ip` with all but its first `bits` bits cleared.
fn masked(ip: IpAddr, bits: u32) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// One list entry in the form the questions are asked in: addresses and blocks canonical
/// (`[2001:DB8::]/32` is `2001:db8::/32`, `10.1.2.3/8` is `10.0.0.0/8`), names lowercase.
/// `*` only where it can match (`refile:`).
fn entry(word: &str, patterns: bool) -> Result<String, String> {
    let (neg, body) = match word.strip_prefix('!') {
        Some(w) => ("!", w),
        None => ("", word),
    };
    let (addr, bits) = match body.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    let addr_bare = addr.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = addr_bare.parse::<IpAddr>() {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(match bits {
            None => format!("{neg}{ip}"),
            Some(b) => {
                let b = b
                    .parse::<u32>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{word:?}: the prefix length must be 0 to {max}"))?;
                format!("{neg}{}/{b}", masked(ip, b))
            }
        });
    }
    let name_chars = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c));
    if patterns && body.contains('*') {
        if !body.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._*:/".contains(&c)) {
            return Err(format!("{word:?} is not a host name or address pattern"));
        }
        return Ok(format!("{neg}{}", body.to_ascii_lowercase()));
    }
    if bits.is_some() {
        return Err(format!("{word:?} is not an address/prefix-length block"));
    }
    if body.contains('*') {
        return Err(format!(
            "{word:?}: '*' matches only in a refile: list (write refile:PATH, or .example.com for every host under it)"
        ));
    }
    if !name_chars(body) || body.starts_with('-') {
        return Err(format!("{word:?} is neither an address, an address block nor a host name"));
    }
    Ok(format!("{neg}{}", body.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn addresses_blocks_and_negation() {
        let ours = HostList::load_named(
            "InternalHosts",
            "10.0.0.0/8, !10.1.0.0/16 [2001:db8::]/32,mail.example.com",
            Path::new("/"),
            DbSettings::default(),
        )
        .unwrap();
        let default = HostList::default();
        for (client, in_ours, in_default) in [
            ("10.2.3.4", true, false),
            ("10.1.3.4", false, false),
            ("2001:db8::5", true, false),
            ("[2001:db8::5]", true, false),
            ("IPv6:2001:db8::5", true, false),
            ("::ffff:10.2.3.4", true, false),
            ("127.0.0.1", false, true),
            ("::1", false, true),
            ("mail.example.com", true, false),
            ("MAIL.Example.COM.", true, false),
            ("other.example.com", false, false),
            ("", false, false),
        ] {
            assert_eq!((ours.contains(client), default.contains(client)), (in_ours, in_default), "{client}");
        }
        for bad in ["10.0.0.0/33", "::/129", "foo/8", "a b/c", "*.example.com", "ex@mple.com", "-x"] {
            assert!(HostList::parse_list(bad).is_err(), "{bad}");
        }
        assert!(!HostList::parse_list("# none\n\n").unwrap().contains("127.0.0.1"));
        assert!(HostList::load_named("X", "csl:0.0.0.0/0", Path::new("/"), DbSettings::default())
            .unwrap()
            .contains("192.0.2.1"));
        assert!(HostList::load_named("X", "csl:10.9.8.7/8", Path::new("/"), DbSettings::default())
            .unwrap()
            .contains("10.200.0.1"));
        assert!(HostList::load_named("X", "db:/etc/x.db", Path::new("/"), DbSettings::default())
            .unwrap_err()
            .contains("type db:"));
    }

    #[test]
    fn host_names_as_opendkim_asks() {
        let l = HostList::parse_list("localhost .example.com exact.example.org !bad.example.com").unwrap();
        for (host, addr, want) in [
            ("localhost", None, true),
            ("mx1.example.com", None, true),
            ("a.b.example.com", None, true),
            ("example.com", None, false),
            ("exact.example.org", None, true),
            ("sub.exact.example.org", None, false),
            ("bad.example.com", None, false),
            ("[192.0.2.1]", None, false),
            ("unknown", ip("127.0.0.1"), false),
        ] {
            assert_eq!(l.check(Some(host), addr).unwrap(), want, "{host}");
        }
        // A name excluded by `!` can still be taken by its address (opendkim asks both).
        let l = HostList::parse_list("!bad.example.com 192.0.2.0/24").unwrap();
        assert!(l.check(Some("bad.example.com"), ip("192.0.2.9")).unwrap());
        assert!(!l.check(Some("bad.example.com"), ip("198.51.100.1")).unwrap());
        // The more specific question wins: a listed address beats a negated block.
        let l = HostList::parse_list("!192.0.2.0/24 192.0.2.9").unwrap();
        assert!(l.check(None, ip("192.0.2.9")).unwrap());
        assert!(!l.check(None, ip("192.0.2.8")).unwrap());
    }

    #[test]
    fn files_and_refiles_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        // The ArchWiki's TrustedHosts, as a plain file and as a refile.
        let hosts = "127.0.0.1\n::1\nlocalhost\nhostname.example1.com\nexample1.com\n";
        std::fs::write(dir.path().join("TrustedHosts"), hosts).unwrap();
        for spec in ["refile:TrustedHosts", "file:TrustedHosts", "./TrustedHosts"] {
            let l = HostList::load_named("InternalHosts", spec, dir.path(), DbSettings::default()).unwrap();
            assert!(l.check(Some("hostname.example1.com"), ip("192.0.2.1")).unwrap(), "{spec}");
            assert!(l.check(Some("localhost"), None).unwrap(), "{spec}");
            assert!(l.check(Some("[127.0.0.1]"), ip("127.0.0.1")).unwrap(), "{spec}");
            assert!(l.check(None, ip("::1")).unwrap(), "{spec}");
            assert!(!l.check(Some("other.example1.com"), ip("192.0.2.1")).unwrap(), "{spec}");
        }
        let abs = dir.path().join("TrustedHosts").display().to_string();
        assert!(HostList::load_named("InternalHosts", &abs, Path::new("/nonexistent"), DbSettings::default())
            .unwrap()
            .contains("localhost"));
        std::fs::write(dir.path().join("wild"), "*.example.com\n192.168.*\n!*.bad.example.com\n").unwrap();
        let l = HostList::load_named("InternalHosts", "refile:wild", dir.path(), DbSettings::default()).unwrap();
        assert!(l.check(Some("mx.example.com"), None).unwrap());
        assert!(!l.check(Some("mx.bad.example.com"), None).unwrap());
        assert!(l.check(None, ip("192.168.4.5")).unwrap());
        assert!(!l.check(None, ip("192.169.4.5")).unwrap());
        // An entry that cannot match is refused with its file and line.
        std::fs::write(dir.path().join("bad"), "127.0.0.1\n\n*.example.com\n").unwrap();
        let e = HostList::load_named("InternalHosts", "file:bad", dir.path(), DbSettings::default()).unwrap_err();
        assert!(e.contains("bad:3: InternalHosts") && e.contains("refile"), "{e}");
        std::fs::write(dir.path().join("bad"), "# c\n10.0.0.0/40\n").unwrap();
        let e =
            HostList::load_named("ExternalIgnoreList", "refile:bad", dir.path(), DbSettings::default()).unwrap_err();
        assert!(e.contains("bad:2: ExternalIgnoreList"), "{e}");
        let e = HostList::load_named("PeerList", "refile:missing", dir.path(), DbSettings::default()).unwrap_err();
        assert!(e.contains("PeerList") && e.contains("missing"), "{e}");
    }
}
