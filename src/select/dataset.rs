//! OpenDKIM data sets (opendkim(8)): flat files (`file:` or a bare path), `refile:` (wildcard
//! patterns, first match wins), `csl:` (comma-separated list) and `dsn:pgsql://` (a PostgreSQL
//! table or view, in `pg.rs`). The KeyTable and the SigningTable are data sets, and so are the
//! host lists of the MTA modes. It does not choose keys (see the parent module).

use super::pg::{DbSettings, PgSet};
use std::path::Path;

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
