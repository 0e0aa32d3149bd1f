//! OpenDKIM data sets, KeyTable and SigningTable: choosing the key(s) for a message.
//!
//! Owns the data set kinds of opendkim(8) that signing uses: flat files (`file:` or a bare
//! path), `refile:` (wildcard patterns, first match wins), `csl:` (comma-separated list) and
//! `dsn:pgsql://` (a PostgreSQL table or view), the From-address extraction that picks the
//! signing table entry, and the per-run caches. It does not sign (see [`crate::dkim::sign`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A data set that cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A file cannot be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong (with the line number where there is one).
        reason: String,
    },
    /// A `dsn:` specification is wrong.
    #[error("data set {spec}: {reason}")]
    Spec {
        /// The spec, password removed.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The database could not be reached or queried: try again later.
    #[error("database {spec}: {reason}")]
    Database {
        /// The spec, password removed.
        spec: String,
        /// What went wrong (no password).
        reason: String,
    },
}

/// One data set: a key -> value mapping as OpenDKIM defines it.
pub enum DataSet {
    /// `file:` or a path: `key value` lines.
    File(Vec<(String, String)>),
    /// `refile:`: `pattern value` lines; `*` matches any run of characters.
    Refile(Vec<(String, String)>),
    /// `csl:a,b,c`: keys only.
    List(Vec<String>),
    /// `dsn:pgsql://...`.
    Pg(Box<PgSet>),
}

impl DataSet {
    /// Opens a data set spec (`refile:/path`, `file:/path`, `/path`, `csl:a,b`,
    /// `dsn:pgsql://...`). Relative paths are taken from `base`.
    pub fn open(spec: &str, base: &Path, db: DbSettings) -> Result<DataSet, TableError> {
        let spec = spec.trim();
        if let Some(rest) = spec.strip_prefix("refile:") {
            return Ok(DataSet::Refile(read_pairs(&base.join(rest))?));
        }
        if let Some(rest) = spec.strip_prefix("file:") {
            return Ok(DataSet::File(read_pairs(&base.join(rest))?));
        }
        if let Some(rest) = spec.strip_prefix("csl:") {
            return Ok(DataSet::List(
                rest.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            ));
        }
        if spec.starts_with("dsn:") {
            return Ok(DataSet::Pg(Box::new(PgSet::open(spec, db)?)));
        }
        if spec.contains(':') && !Path::new(spec).exists() {
            return Err(TableError::Spec {
                spec: spec.to_string(),
                reason: "unsupported data set type (supported: file:, refile:, csl:, dsn:pgsql://, or a path)".into(),
            });
        }
        Ok(DataSet::File(read_pairs(&base.join(spec))?))
    }

    /// The value for exactly `key` (file and database sets; case-insensitive like OpenDKIM's
    /// file sets).
    pub fn get(&self, key: &str) -> Result<Option<String>, TableError> {
        match self {
            DataSet::File(pairs) => Ok(pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone())),
            DataSet::Refile(pairs) => Ok(pairs.iter().find(|(p, _)| wildcard(p, key)).map(|(_, v)| v.clone())),
            DataSet::List(items) => Ok(items.iter().find(|k| k.eq_ignore_ascii_case(key)).map(|_| String::new())),
            DataSet::Pg(pg) => pg.get(key),
        }
    }

    /// Every value whose key matches `key` (refile: all matching patterns in order; others:
    /// the exact match).
    pub fn all(&self, key: &str) -> Result<Vec<String>, TableError> {
        match self {
            DataSet::Refile(pairs) => {
                Ok(pairs.iter().filter(|(p, _)| wildcard(p, key)).map(|(_, v)| v.clone()).collect())
            }
            other => Ok(other.get(key)?.into_iter().collect()),
        }
    }

    /// The keys of a list-like set (for `Domain csl:...` or a file of domains). A database
    /// that cannot be asked is an error, never an empty list: "no keys" would pass mail on
    /// unsigned with exit 0 where Postfix must defer.
    pub fn keys(&self) -> Result<Vec<String>, TableError> {
        match self {
            DataSet::File(p) | DataSet::Refile(p) => Ok(p.iter().map(|(k, _)| k.clone()).collect()),
            DataSet::List(l) => Ok(l.clone()),
            DataSet::Pg(pg) => pg.all_keys(),
        }
    }

    /// Whether lookups must try address patterns (refile) rather than exact keys.
    pub fn is_pattern(&self) -> bool {
        matches!(self, DataSet::Refile(_))
    }
}

/// `*` matches any run of characters (possibly empty); everything else literally, ignoring
/// ASCII case (OpenDKIM's refile turns `*` into `.*` and matches case-insensitively).
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let t = text.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let mut pos = 0;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            if !t.starts_with(part) {
                return false;
            }
            pos = part.len();
        } else if i == parts.len() - 1 {
            return t.len() >= pos + part.len() && t[pos..].ends_with(part);
        } else {
            match t[pos..].find(part) {
                Some(f) => pos += f + part.len(),
                None => return false,
            }
        }
    }
    true
}

/// Reads `key value` lines: `#` starts a comment, blank lines are skipped, a line ending in
/// `\` continues on the next, and a line starting with whitespace continues the previous
/// entry's value.
fn read_pairs(path: &Path) -> Result<Vec<(String, String)>, TableError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TableError::File { path: path.display().to_string(), reason: e.to_string() })?;
    let mut out: Vec<(String, String)> = vec![];
    let mut pending = String::new();
    let mut pending_line = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = match raw.find('#') {
            Some(i) => &raw[..i],
            None => raw,
        };
        if pending.is_empty() && (line.starts_with(' ') || line.starts_with('\t')) && !line.trim().is_empty() {
            match out.last_mut() {
                Some(last) => {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                    continue;
                }
                None => {
                    return Err(TableError::File {
                        path: path.display().to_string(),
                        reason: format!("line {}: continuation line before any entry", n + 1),
                    })
                }
            }
        }
        if pending.is_empty() {
            pending_line = n + 1;
        }
        if let Some(stripped) = line.trim_end().strip_suffix('\\') {
            pending.push_str(stripped);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let mut it = entry.splitn(2, char::is_whitespace);
        let key = it.next().unwrap_or_default().to_string();
        let value = it.next().unwrap_or_default().trim().to_string();
        if value.is_empty() && key.contains(':') {
            return Err(TableError::File {
                path: path.display().to_string(),
                reason: format!("line {pending_line}: expected \"key value\""),
            });
        }
        out.push((key, value));
    }
    Ok(out)
}

/// The author address in a From (or envelope sender) value, as (local part, domain in lower
/// case).
///
/// Parsed by mail-parser (Stalwart's maintained RFC 5322 parser: display names, quoted strings
/// with escapes, comments, groups, encoded words), not by hand: a hand-written scanner once
/// took `"x \" <ceo@example.org>" <attacker@evil.test>` for ceo@example.org and signed
/// forged mail with our key. A value with several addresses is accepted only
/// when they all share one domain (the key is chosen by domain); otherwise it is refused, since
/// signing for one of several authors would lend our name to the others (RFC 6376 §8.15 on
/// multiple From addresses).
pub fn parse_address(value: &str) -> Option<(String, String)> {
    author_address(value).ok()
}

/// [`parse_address`] with the reason when there is no single author domain.
pub fn author_address(value: &str) -> Result<(String, String), String> {
    let mut raw = Vec::with_capacity(value.len() + 10);
    raw.extend_from_slice(b"From:");
    raw.extend_from_slice(value.as_bytes());
    raw.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::new().parse_headers(&raw).ok_or("no address")?;
    let addrs: Vec<&mail_parser::Addr> = match parsed.from() {
        Some(mail_parser::Address::List(l)) => l.iter().collect(),
        Some(mail_parser::Address::Group(g)) => g.iter().flat_map(|g| g.addresses.iter()).collect(),
        None => vec![],
    };
    let mut found: Vec<(String, String)> = vec![];
    for a in addrs {
        let Some(addr) = a.address.as_deref() else { continue };
        let addr = addr.trim();
        let Some(at) = addr.rfind('@') else {
            return Err(format!("{addr:?} is not an address"));
        };
        let mut local = addr[..at].trim().trim_matches('"').to_string();
        // mail-parser 0.11 reads a quoted local part (`"john smith"@example.com`) as a name
        // and an address of `@example.com`: take the local part back when the value says so.
        if let (true, Some(name)) = (local.is_empty(), a.name.as_deref()) {
            if value.contains(&format!("\"{name}\"@")) {
                local = name.to_string();
            }
        }
        let domain = addr[at + 1..].trim().trim_end_matches('.').to_ascii_lowercase();
        // Keys are chosen by the A-label form of the author's domain (RFC 8616 §5, §3).
        let domain = match crate::dkim::tags::to_a_labels(&domain) {
            std::borrow::Cow::Owned(a) => a,
            std::borrow::Cow::Borrowed(_) => domain,
        };
        if local.is_empty() || !is_domain_name(&domain) {
            return Err(format!("{addr:?} is not an address"));
        }
        found.push((local, domain));
    }
    match found.len() {
        0 => Err("no address".into()),
        1 => Ok(found.remove(0)),
        _ if found.iter().all(|(_, d)| *d == found[0].1) => Ok(found.remove(0)),
        n => Err(format!("{n} addresses in different domains: refusing to choose one")),
    }
}

/// Whether `d` looks like a domain name: dot-separated labels of letters, digits, `-` and `_`,
/// or non-ASCII (internationalized) characters; no empty label.
fn is_domain_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_' || !c.is_ascii()))
}

/// Keys to try in a (non-pattern) SigningTable for `local@domain`, most specific first:
/// `local@domain`, `domain`, then each parent as `.parent`, then `*` (OpenDKIM's order).
pub fn signing_candidates(local: &str, domain: &str) -> Vec<String> {
    let mut out = vec![format!("{local}@{domain}"), domain.to_string()];
    let mut rest = domain;
    while let Some(i) = rest.find('.') {
        rest = &rest[i + 1..];
        if rest.contains('.') || !rest.is_empty() {
            out.push(format!(".{rest}"));
        }
    }
    out.push("*".to_string());
    out
}

/// A PostgreSQL data set: `dsn:pgsql://[user[:password]@][port+]host/database/table=T?keycol=K?datacol=A,B,C[?filter=F]`
/// (opendkim(8)). `host` may be a socket directory, written with its slashes encoded
/// (`=2Fvar=2Frun=2Fpostgresql`): values in the DSN encode `:/@+?=` as `=XX`.
///
/// The database is the source of truth, as with opendkim, which queries it per message: an
/// answer (found or not found) is reused for at most the cache time ([`DbSettings::cache`],
/// default 5 s, 0 for none), so a row added or changed is used within seconds, without a
/// reload.
pub struct PgSet {
    shown: String,
    config: postgres::Config,
    query: String,
    all_query: String,
    client: Mutex<Arc<Mutex<Option<postgres::Client>>>>,
    cache: Mutex<HashMap<String, (std::time::Instant, Option<String>)>>,
    /// Set when a query got no answer in time: the connection is abandoned (its thread may
    /// stay blocked), and lookups fail at once until this time, when a new connection is
    /// tried (at most one blocked thread per timeout period).
    hung_until: Mutex<Option<std::time::Instant>>,
    db: DbSettings,
}

/// How a PostgreSQL data set waits and remembers (`--db-timeout`, `--db-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbSettings {
    /// How long a connection or a query may take before the lookup fails as temporary (exit
    /// 75: Postfix defers). Default 10 s.
    pub timeout: std::time::Duration,
    /// How long an answer, found or not, is reused (zero: never). Default 5 s.
    pub cache: std::time::Duration,
}

impl Default for DbSettings {
    fn default() -> Self {
        DbSettings { timeout: std::time::Duration::from_secs(10), cache: std::time::Duration::from_secs(5) }
    }
}

impl std::fmt::Debug for PgSet {
    /// The DSN without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgSet({})", self.shown)
    }
}

/// `=XX` hex escapes of opendkim DSNs.
fn dsn_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 3 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ident(s: &str, what: &str, shown: &str) -> Result<String, TableError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
        Ok(s.to_string())
    } else {
        Err(TableError::Spec { spec: shown.to_string(), reason: format!("{what} {s:?} is not a plain SQL identifier") })
    }
}

impl PgSet {
    /// Parses the DSN (no connection yet: the first lookup connects).
    pub fn open(spec: &str, db: DbSettings) -> Result<PgSet, TableError> {
        let rest = spec.strip_prefix("dsn:").unwrap_or(spec);
        let (scheme, rest) = rest
            .split_once("://")
            .ok_or_else(|| TableError::Spec { spec: redact(spec), reason: "expected dsn:pgsql://...".into() })?;
        let shown = redact(spec);
        if scheme != "pgsql" {
            return Err(TableError::Spec {
                spec: shown,
                reason: format!("unsupported DSN backend {scheme:?} (only pgsql)"),
            });
        }
        let err = |r: &str| TableError::Spec { spec: shown.clone(), reason: r.to_string() };
        // [user[:password]@][port+]host/database/table=...?keycol=...?datacol=...
        let (userinfo, rest) = match rest.rfind('@').filter(|&at| !rest[..at].contains('/')) {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        if userinfo.is_none_or(|u| u.split(':').next().unwrap_or_default().is_empty()) {
            return Err(err("no user: write dsn:pgsql://USER[:PASSWORD]@host/... (OpenDKIM's DSN form)"));
        }
        let mut parts = rest.splitn(3, '/');
        let hostpart = parts.next().unwrap_or_default();
        let database = parts.next().ok_or_else(|| err("missing /database"))?;
        let params = parts.next().ok_or_else(|| err("missing /table=...?keycol=...?datacol=..."))?;
        let mut config = postgres::Config::new();
        if let Some(u) = userinfo {
            let (user, pass) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            config.user(&dsn_decode(user));
            if let Some(p) = pass {
                config.password(dsn_decode(p));
            }
        }
        let (port, host) = match hostpart.split_once('+') {
            Some((p, h)) => (Some(p), h),
            None => (None, hostpart),
        };
        let host = dsn_decode(host);
        if host.starts_with('/') {
            config.host_path(&host);
        } else {
            config.host(if host.is_empty() { "localhost" } else { &host });
        }
        if let Some(p) = port {
            config.port(p.parse().map_err(|_| err("port before '+' is not a number"))?);
        }
        config.dbname(&dsn_decode(database));
        config.connect_timeout(db.timeout);
        let mut table = None;
        let mut keycol = None;
        let mut datacols = None;
        let mut filter = None;
        for p in params.split('?') {
            let (k, v) = p.split_once('=').ok_or_else(|| err(&format!("parameter {p:?} lacks '='")))?;
            let v = dsn_decode(v);
            match k {
                "table" => table = Some(ident(&v, "table", &shown)?),
                "keycol" => keycol = Some(ident(&v, "keycol", &shown)?),
                "datacol" => {
                    let cols: Result<Vec<String>, _> =
                        v.split(',').map(|c| ident(c.trim(), "datacol", &shown)).collect();
                    datacols = Some(cols?);
                }
                "filter" => filter = Some(v),
                other => return Err(err(&format!("unknown parameter {other:?}"))),
            }
        }
        let table = table.ok_or_else(|| err("missing table="))?;
        let keycol = keycol.ok_or_else(|| err("missing keycol="))?;
        let datacols = datacols.ok_or_else(|| err("missing datacol="))?;
        let select: Vec<String> = datacols.iter().map(|c| format!("{c}::text")).collect();
        let mut query = format!("SELECT {} FROM {table} WHERE lower({keycol}::text) = lower($1)", select.join(", "));
        if let Some(f) = filter {
            query.push_str(&format!(" AND ({f})"));
        }
        let all_query = format!("SELECT {keycol}::text FROM {table}");
        Ok(PgSet {
            shown,
            config,
            query,
            all_query,
            client: Mutex::new(Arc::new(Mutex::new(None))),
            cache: Mutex::new(HashMap::new()),
            hung_until: Mutex::new(None),
            db,
        })
    }

    /// Every key of the table (for `testkey` and `Domain dsn:...`).
    pub fn all_keys(&self) -> Result<Vec<String>, TableError> {
        let q = self.all_query.clone();
        let rows = self.run(move |c| c.query(q.as_str(), &[]))?;
        Ok(rows.iter().filter_map(|r| r.get::<_, Option<String>>(0)).collect())
    }

    fn get(&self, key: &str) -> Result<Option<String>, TableError> {
        let ttl = self.db.cache;
        let now = std::time::Instant::now();
        if !ttl.is_zero() {
            if let Some((at, v)) = self.cache.lock().expect("cache poisoned").get(key) {
                if now.duration_since(*at) < ttl {
                    return Ok(v.clone());
                }
            }
        }
        let (q, k) = (self.query.clone(), key.to_string());
        let rows = self.run(move |c| c.query(q.as_str(), &[&k]))?;
        let value = rows.first().map(|row| {
            (0..row.len()).map(|i| row.get::<_, Option<String>>(i).unwrap_or_default()).collect::<Vec<_>>().join(":")
        });
        if !ttl.is_zero() {
            let mut cache = self.cache.lock().expect("cache poisoned");
            // Bounded: a daemon asks about many addresses; stale answers go first.
            if cache.len() >= 10_000 {
                cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
                if cache.len() >= 10_000 {
                    cache.clear();
                }
            }
            cache.insert(key.to_string(), (now, value.clone()));
        }
        Ok(value)
    }

    /// Runs `query` on the connection (connecting first if needed) on a helper thread, and
    /// waits at most the database timeout for it: a server that accepts connections but never
    /// answers must not hang a filter until Postfix's command_time_limit bounces the mail.
    /// On timeout the connection is abandoned.
    fn run<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, TableError> {
        let timeout = self.db.timeout;
        let fail = |reason: String| TableError::Database { spec: self.shown.clone(), reason };
        {
            let mut hung = self.hung_until.lock().unwrap_or_else(|e| e.into_inner());
            match *hung {
                Some(until) if std::time::Instant::now() < until => {
                    return Err(fail(format!("no answer within {:.1} s a moment ago", timeout.as_secs_f64())));
                }
                Some(_) => {
                    // Try again on a new connection; the old one stays with its blocked thread.
                    *hung = None;
                    *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(Mutex::new(None));
                }
                None => {}
            }
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let client = self.client.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let config = self.config.clone();
        std::thread::Builder::new()
            .name("dkimpress-db".into())
            .spawn(move || {
                let mut guard = client.lock().unwrap_or_else(|e| e.into_inner());
                if guard.is_none() {
                    match config.connect(postgres::NoTls) {
                        Ok(c) => *guard = Some(c),
                        Err(e) => {
                            let _ = tx.send(Err(pg_reason(&e)));
                            return;
                        }
                    }
                }
                let result = query(guard.as_mut().expect("connected")).map_err(|e| pg_reason(&e));
                if result.is_err() {
                    *guard = None; // reconnect on the next lookup
                }
                let _ = tx.send(result);
            })
            .map_err(|e| fail(format!("cannot start the database thread: {e}")))?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r.map_err(fail),
            Err(_) => {
                *self.hung_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now() + timeout);
                Err(fail(format!("no answer within {:.1} s (--db-timeout)", timeout.as_secs_f64())))
            }
        }
    }
}

/// A database error without anything of the DSN (the password in particular).
fn pg_reason(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The spec with any password replaced by `****`.
pub fn redact(spec: &str) -> String {
    if let Some(scheme_end) = spec.find("://") {
        let rest = &spec[scheme_end + 3..];
        if let Some(at) = rest.rfind('@').filter(|&at| !rest[..at].contains('/')) {
            if let Some(colon) = rest[..at].find(':') {
                return format!("{}{}:****{}", &spec[..scheme_end + 3], &rest[..colon], &rest[at..]);
            }
        }
    }
    spec.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (p, t, want) in [
            ("*@example.com", "joe@example.com", true),
            ("*.example.com", "joe@sub.example.com", true),
            ("*@example.com", "joe@example.com.evil", false),
            ("*.example.com", "joe@sub.example.com", true),
            ("*@example.com", "joe@example.com.evil", false),
            ("*@*.example.com", "joe@sub.example.com", true),
            ("joe@example.com", "JOE@Example.com", true),
            ("*", "anything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXcYYb", false),
        ] {
            assert_eq!(wildcard(p, t), want, "{p} {t}");
        }
    }

    #[test]
    fn addresses() {
        for (v, want) in [
            ("Joe <joe@Example.COM>", Some(("joe", "example.com"))),
            (" \"Doe, John\" <john@example.org>", Some(("john", "example.org"))),
            ("joe@example.com (Joe <fake@evil.com>)", Some(("joe", "example.com"))),
            ("=?UTF-8?Q?Ren=C3=A9e?= <renee@example.net>", Some(("renee", "example.net"))),
            ("\"a@b\" <real@example.com>", Some(("real", "example.com"))),
            ("\"quoted local\"@example.com", Some(("quoted local", "example.com"))),
            ("undisclosed-recipients:;", None),
            ("no address", None),
            // Regression: an escaped quote inside the display name.
            ("\"x \\\" <ceo@example.org>\" <attacker@evil.test>", Some(("attacker", "evil.test"))),
            ("\"x \\\" <ceo@example.org>\"\r\n <attacker@evil.test>", Some(("attacker", "evil.test"))),
            ("(<ceo@example.org>) attacker@evil.test", Some(("attacker", "evil.test"))),
            ("\"<ceo@example.org>\" <attacker@evil.test>", Some(("attacker", "evil.test"))),
            ("a@example.org, b@EXAMPLE.org", Some(("a", "example.org"))),
            ("a@example.org, b@evil.test", None),
            ("team: a@example.org, b@evil.test;", None),
            ("<ceo@example.org", Some(("ceo", "example.org"))),
            ("ceo@exa mple.org", None),
            ("<>", None),
        ] {
            let got = parse_address(v);
            assert_eq!(got.as_ref().map(|(l, d)| (l.as_str(), d.as_str())), want, "{v}");
        }
    }

    #[test]
    fn candidates_order() {
        assert_eq!(
            signing_candidates("joe", "mail.example.com"),
            ["joe@mail.example.com", "mail.example.com", ".example.com", ".com", "*"]
        );
    }

    #[test]
    fn dsn_parsing_and_redaction() {
        let spec = "dsn:pgsql://dkim:s=40cret@5433+=2Fvar=2Frun=2Fpostgresql/maildb/table=dkim_key_table?keycol=identifier?datacol=domain,selector,key";
        let pg = PgSet::open(spec, DbSettings::default()).unwrap();
        assert!(!pg.shown.contains("cret"));
        assert_eq!(pg.config.get_password(), Some(&b"s@cret"[..]));
        assert_eq!(pg.config.get_ports(), [5433]);
        assert_eq!(pg.config.get_hosts(), [postgres::config::Host::Unix("/var/run/postgresql".into())]);
        assert_eq!(pg.config.get_dbname(), Some("maildb"));
        assert!(pg.query.starts_with("SELECT domain::text, selector::text, key::text FROM dkim_key_table WHERE"));
        assert_eq!(
            redact("dsn:pgsql://u:pw@h/db/table=t?keycol=k?datacol=d"),
            "dsn:pgsql://u:****@h/db/table=t?keycol=k?datacol=d"
        );
        let e = PgSet::open("dsn:pgsql://u:pw@h/db/table=t;drop?keycol=k?datacol=d", DbSettings::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a plain SQL identifier") && !e.contains(":pw@"), "{e}");
    }

    #[test]
    fn pair_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "# comment\n\nsel._domainkey.example.com example.com:sel:/k # trailing\nlong a:b:\\\n  /path\nmulti first\n  second\n").unwrap();
        let pairs = read_pairs(&p).unwrap();
        assert_eq!(pairs[0], ("sel._domainkey.example.com".to_string(), "example.com:sel:/k".to_string()));
        assert_eq!(pairs[1].1, "a:b:   /path");
        assert_eq!(pairs[2].1, "first second");
    }
}
