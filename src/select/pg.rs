//! The PostgreSQL data set (`dsn:pgsql://`): the DSN parsed as opendkim(8) writes it, lookups
//! answered on a helper thread within the database timeout and remembered for the cache time,
//! and passwords kept out of every message.

use super::dataset::TableError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    layout: Layout,
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

/// Where a PostgreSQL data set's entries live: what a writer (`rotate`) needs to add, change
/// and remove them. Every name is a plain SQL identifier (checked when the DSN is read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `table=`.
    pub table: String,
    /// `keycol=`.
    pub keycol: String,
    /// `datacol=`, in order.
    pub datacols: Vec<String>,
    /// `filter=`, if any.
    pub filter: Option<String>,
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
        if let Some(f) = &filter {
            query.push_str(&format!(" AND ({f})"));
        }
        let all_query = format!("SELECT {keycol}::text FROM {table}");
        Ok(PgSet {
            layout: Layout {
                table: table.clone(),
                keycol: keycol.clone(),
                datacols: datacols.clone(),
                filter: filter.clone(),
            },
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

    /// The table and columns of the data set.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The DSN with its password hidden, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs `statements` (SQL with `$1`, `$2`, ... bound to the texts given with each) in one
    /// transaction, within the database timeout: all of them take effect, or none. The rows
    /// changed in all.
    pub fn write(&self, statements: Vec<(String, Vec<String>)>) -> Result<u64, TableError> {
        self.cache.lock().expect("cache poisoned").clear();
        self.run(move |c| {
            let mut t = c.transaction()?;
            let mut rows = 0;
            for (sql, params) in &statements {
                let p: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect();
                rows += t.execute(sql.as_str(), &p)?;
            }
            t.commit()?;
            Ok(rows)
        })
    }

    /// Every key of the table (for `testkey` and `Domain dsn:...`).
    pub fn all_keys(&self) -> Result<Vec<String>, TableError> {
        let q = self.all_query.clone();
        let rows = self.run(move |c| c.query(q.as_str(), &[]))?;
        Ok(rows.iter().filter_map(|r| r.get::<_, Option<String>>(0)).collect())
    }

    pub(super) fn get(&self, key: &str) -> Result<Option<String>, TableError> {
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
}
