//! Choosing the signatures for each message: a fixed list of signers, OpenDKIM's
//! Domain/Selector/KeyFile with `SubDomains`, or KeyTable + SigningTable (with
//! `MultipleSignatures`), by the From address or the envelope sender.
//!
//! Owns the per-run caches of parsed keys and built signers, so a bulk job loads each key
//! once. Lookups that fail for a while (a database down) are reported as temporary. The tables
//! themselves are OpenDKIM data sets ([`DataSet`]: files, patterns, lists, PostgreSQL); the
//! author address that picks the SigningTable entry is read in `address.rs`. Signing itself is
//! [`crate::dkim::sign`]'s.

use crate::dkim::canon::Canonicalization;
use crate::dkim::header::Message;
use crate::dkim::key::{KeyError, SigningKey};
use crate::dkim::sign::{Signer, SignerBuilder, SignerConfigError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod address;
mod dataset;
mod pg;

pub use dataset::{wildcard, DataSet, TableError};
pub use pg::{redact, DbSettings, Layout, PgSet};

/// Why no signer could be chosen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SelectError {
    /// No key is configured for this author (not an error for the message itself); the
    /// address is `local@domain`.
    #[error("no signing key for {0}")]
    NoKey(String),
    /// The author address cannot be found or parsed.
    #[error("no usable From address: {0}")]
    NoAddress(AddressError),
    /// A key or table entry is broken (configuration).
    #[error(transparent)]
    Config(#[from] EntryError),
    /// The key store cannot be reached now (a database down): try again later.
    #[error("key store unavailable: {0}")]
    Temporary(Arc<TableError>),
}

/// Why a message has no author address to choose keys by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The envelope sender given (`--sender`, the MTA's `-f`) is not an address.
    #[error("sender {0:?}")]
    Sender(String),
    /// A From field holds no single usable address.
    #[error("From {value:?}: {why}")]
    From {
        /// The field value, trimmed.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// Several From fields name different domains.
    #[error("several From fields with different domains ({0}, {1})")]
    DifferentDomains(String, String),
    /// The header has no From field.
    #[error("no From field")]
    NoFrom,
}

/// A key, KeyTable entry or table that cannot be used: a configuration error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EntryError {
    /// The SigningTable names a key the KeyTable does not have.
    #[error("SigningTable names key {0:?}, which the KeyTable does not have")]
    UnknownKey(String),
    /// A KeyTable value is not `domain:selector:key`.
    #[error("KeyTable entry {0:?} is not domain:selector:key")]
    Syntax(String),
    /// The private key of an entry cannot be loaded.
    #[error(transparent)]
    Key(Arc<KeyError>),
    /// A signer cannot be built from the key and the settings.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A table cannot be read (a file, a data set specification).
    #[error(transparent)]
    Table(Arc<TableError>),
    /// A KeyTable entry with the domain `%` signs as each author's domain: it has no signer of
    /// its own (testkey cannot check it).
    #[error("KeyTable entry {0:?} has domain %: it signs as the author's domain, so it has no single record")]
    PerAuthor(String),
}

/// Why a [`Template`] cannot make a signer for a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// An RSA key shorter than the template's minimum.
    #[error("key for {selector}._domainkey.{domain} has {bits} bits, below MinimumKeyBits {min}")]
    KeyTooShort {
        /// `d=`.
        domain: String,
        /// `s=`.
        selector: String,
        /// The key's modulus length.
        bits: usize,
        /// The minimum in force.
        min: usize,
    },
    /// The settings do not fit together or with the key (names, `a=`, header lists).
    #[error(transparent)]
    Signer(#[from] SignerConfigError),
}

/// Tag settings shared by every signer a run builds.
#[derive(Clone, Debug)]
pub struct Template {
    /// `c=`.
    pub canon: Canonicalization,
    /// Signed header names (None: the default list).
    pub headers: Option<Vec<String>>,
    /// Oversigned header names.
    pub oversign: Vec<String>,
    /// Add `l=`.
    pub body_length: bool,
    /// `x=` lifetime.
    pub expire: Option<u64>,
    /// `a=` asked for (checked against each key).
    pub algorithm: Option<String>,
    /// Smallest RSA key accepted for signing.
    pub min_bits: usize,
    /// Refuse group/world-readable key files.
    pub strict_keys: bool,
    /// `i=` (only with fixed keys: one identity cannot fit every table domain).
    pub identity: Option<String>,
}

impl Template {
    /// A signer for `key` with these settings.
    pub fn build(&self, key: Arc<SigningKey>, domain: &str, selector: &str) -> Result<Signer, BuildError> {
        if key.key_type() == crate::dkim::key::KeyType::Rsa && key.bits() < self.min_bits {
            return Err(BuildError::KeyTooShort {
                domain: domain.to_string(),
                selector: selector.to_string(),
                bits: key.bits(),
                min: self.min_bits,
            });
        }
        let mut b = SignerBuilder::new(key, domain, selector)
            .canon(self.canon)
            .oversigned_headers(self.oversign.iter())
            .identity(self.identity.clone())
            .body_length(self.body_length)
            .expire(self.expire)
            .algorithm(self.algorithm.clone());
        if let Some(h) = &self.headers {
            b = b.signed_headers(h.iter());
        }
        Ok(b.build()?)
    }
}

/// Where the signatures of a message come from.
pub enum KeySource {
    /// The same signers for every message (`-d -s -k`).
    Fixed(Vec<Signer>),
    /// OpenDKIM `Domain` + `Selector` + `KeyFile`: sign mail from the listed domains (and their
    /// subdomains with `SubDomains`), with `d=` the listed domain.
    Domains {
        /// The domains.
        domains: Vec<String>,
        /// `SubDomains`.
        subdomains: bool,
        /// The selector.
        selector: String,
        /// The key.
        key: Arc<SigningKey>,
        /// Tag settings.
        template: Template,
    },
    /// KeyTable + SigningTable.
    Tables(Box<Tables>),
}

/// OpenDKIM KeyTable + SigningTable with their caches.
pub struct Tables {
    key_table: DataSet,
    signing_table: DataSet,
    multiple: bool,
    template: Template,
    base: PathBuf,
    signers: Mutex<HashMap<String, Result<Signer, EntryError>>>,
}

impl Tables {
    /// Opens both tables (`base` resolves relative key paths).
    pub fn open(
        key_table: &str,
        signing_table: &str,
        multiple: bool,
        template: Template,
        base: &Path,
        db: DbSettings,
    ) -> Result<Tables, TableError> {
        Ok(Tables {
            key_table: DataSet::open(key_table, base, db)?,
            signing_table: DataSet::open(signing_table, base, db)?,
            multiple,
            template,
            base: base.to_path_buf(),
            signers: Mutex::new(HashMap::new()),
        })
    }

    /// Every key name of the KeyTable (for `testkey`).
    pub fn key_names(&self) -> Result<Vec<String>, TableError> {
        self.key_table.keys()
    }

    /// The (domain, selector, private key) of KeyTable entry `name` (for `testkey`).
    pub fn entry(&self, name: &str) -> Result<(String, String, Arc<SigningKey>), SelectError> {
        let s = self.signer(name)?;
        Ok((s.domain().to_string(), s.selector().to_string(), s.key().clone()))
    }

    /// The signer of KeyTable entry `name`, built once. An entry whose domain is `%` has no
    /// domain of its own (it signs as each author's domain): its signers come from [`KeySource::signers_for`].
    pub fn signer(&self, name: &str) -> Result<Signer, SelectError> {
        self.signer_as(name, None, None)
    }

    /// The signer of KeyTable entry `name` for mail from `author_domain` (which replaces a `%`
    /// domain, opendkim.conf(5) KeyTable), with `i=` `identity` (the SigningTable's optional
    /// signer field); built once per combination.
    fn signer_as(
        &self,
        name: &str,
        author_domain: Option<&str>,
        identity: Option<&str>,
    ) -> Result<Signer, SelectError> {
        // The KeyTable is asked every time (a database answers from its short cache), and the
        // signer is built once per value: a selector changed in the database is used at once.
        let value = self.key_table.get(name).map_err(table_err)?;
        let cache_key = format!(
            "{name}\0{}\0{}\0{}",
            author_domain.unwrap_or_default(),
            identity.unwrap_or_default(),
            value.as_deref().unwrap_or("\0")
        );
        if let Some(r) = self.signers.lock().expect("poisoned").get(&cache_key) {
            return r.clone().map_err(SelectError::Config);
        }
        let built = match value {
            None => Err(EntryError::UnknownKey(name.to_string())),
            Some(v) => self.build(name, &v, author_domain, identity),
        };
        let mut signers = self.signers.lock().expect("poisoned");
        // Bounded for a daemon whose database keeps changing.
        if signers.len() >= 10_000 {
            signers.clear();
        }
        signers.insert(cache_key, built.clone());
        built.map_err(SelectError::Config)
    }

    /// A KeyTable value `domain:selector:keyfile-or-key-data`.
    fn build(
        &self,
        name: &str,
        value: &str,
        author_domain: Option<&str>,
        identity: Option<&str>,
    ) -> Result<Signer, EntryError> {
        let mut parts = value.splitn(3, ':');
        let (Some(domain), Some(selector), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EntryError::Syntax(name.to_string()));
        };
        let (domain, selector, key) = (domain.trim(), selector.trim(), key.trim());
        let domain = match (domain, author_domain) {
            ("%", Some(author)) => author,
            ("%", None) => return Err(EntryError::PerAuthor(name.to_string())),
            (d, _) => d,
        };
        let origin = format!("KeyTable entry {name}");
        let key = if key.starts_with("-----BEGIN")
            || (!key.starts_with('/') && !key.starts_with('.') && !self.base.join(key).exists())
        {
            SigningKey::from_bytes(key.as_bytes(), &origin).map_err(|e| EntryError::Key(Arc::new(e)))?
        } else {
            let (k, warning) = SigningKey::from_path(&self.base.join(key), self.template.strict_keys)
                .map_err(|e| EntryError::Key(Arc::new(e)))?;
            if let Some(w) = warning {
                crate::warnings::warn(&w.to_string());
            }
            k
        };
        // The signer field becomes i= only when it lies in d= or below it; otherwise it is
        // left out, as opendkim.conf(5) says of a signer that conflicts with the domain.
        let identity = identity.filter(|i| {
            crate::dkim::tags::identity_in_domain(
                &crate::dkim::tags::identity_to_a_labels(i),
                &crate::dkim::tags::to_a_labels(domain),
            )
        });
        match identity {
            Some(i) => {
                let t = Template { identity: Some(i.to_string()), ..self.template.clone() };
                Ok(t.build(Arc::new(key), domain, selector)?)
            }
            None => Ok(self.template.build(Arc::new(key), domain, selector)?),
        }
    }

    /// The signers for the author `local@domain` (`domain` in A-labels): first SigningTable
    /// match (all matches with `MultipleSignatures`). A table may name an IDN domain either way:
    /// when the A-label form matches nothing, its U-label form is tried (RFC 8616 §5).
    fn lookup(&self, local: &str, domain: &str) -> Result<Vec<Signer>, SelectError> {
        let names = self.names_for(local, domain)?;
        let names = match names.is_empty() && domain.split('.').any(|l| l.starts_with("xn--")) {
            true => match idna::domain_to_unicode(domain) {
                (unicode, Ok(())) if unicode != domain => self.names_for(local, &unicode)?,
                _ => names,
            },
            false => names,
        };
        if names.is_empty() {
            return Err(SelectError::NoKey(format!("{local}@{domain}")));
        }
        // A SigningTable value is `keyname[:signer]`: the signer is the i= (opendkim.conf(5)).
        names
            .iter()
            .map(|v| match v.split_once(':') {
                Some((n, signer)) => self.signer_as(n.trim(), Some(domain), Some(signer.trim())),
                None => self.signer_as(v.trim(), Some(domain), None),
            })
            .collect()
    }

    /// The KeyTable names the SigningTable gives `local@domain`, as written.
    fn names_for(&self, local: &str, domain: &str) -> Result<Vec<String>, SelectError> {
        let address = format!("{local}@{domain}");
        let names: Vec<String> = if self.signing_table.is_pattern() {
            let all = self.signing_table.all(&address).map_err(table_err)?;
            if self.multiple {
                all
            } else {
                all.into_iter().take(1).collect()
            }
        } else {
            let mut names = vec![];
            for cand in address::signing_candidates(local, domain) {
                if let Some(v) = self.signing_table.get(&cand).map_err(table_err)? {
                    names.push(v);
                    if !self.multiple {
                        break;
                    }
                }
            }
            names
        };
        Ok(names)
    }
}

fn table_err(e: TableError) -> SelectError {
    match e {
        TableError::Database { .. } => SelectError::Temporary(Arc::new(e)),
        other => SelectError::Config(EntryError::Table(Arc::new(other))),
    }
}

impl KeySource {
    /// The signers for `msg`: by `sender` (envelope) if given, else by its From address.
    pub fn signers_for(
        &self,
        msg: &Message,
        sender: Option<&str>,
    ) -> Result<std::borrow::Cow<'_, [Signer]>, SelectError> {
        use std::borrow::Cow;
        if let KeySource::Fixed(s) = self {
            return Ok(Cow::Borrowed(s));
        }
        let (local, domain) = match sender {
            Some(s) => {
                address::parse_address(s).ok_or_else(|| SelectError::NoAddress(AddressError::Sender(s.to_string())))?
            }
            None => {
                // Every From field must name the same domain: RFC 5322 allows one From field,
                // and a second one (which some readers show instead) must not ride on a
                // signature chosen by the first.
                let mut author: Option<(String, String)> = None;
                for from in msg.fields.iter().filter(|f| f.is("from")) {
                    let value = String::from_utf8_lossy(from.value()).into_owned();
                    let (local, domain) = address::author_address(&value).map_err(|why| {
                        SelectError::NoAddress(AddressError::From { value: value.trim().to_string(), why })
                    })?;
                    match &author {
                        Some((_, d)) if *d != domain => {
                            return Err(SelectError::NoAddress(AddressError::DifferentDomains(d.clone(), domain)));
                        }
                        Some(_) => {}
                        None => author = Some((local, domain)),
                    }
                }
                author.ok_or(SelectError::NoAddress(AddressError::NoFrom))?
            }
        };
        match self {
            KeySource::Fixed(_) => unreachable!("handled above"),
            KeySource::Domains { domains, subdomains, selector, key, template } => {
                let hit = domains.iter().find(|d| {
                    // The configured domain may be written as U-labels; the author's is A-labels.
                    let d = crate::dkim::tags::to_a_labels(d).to_ascii_lowercase();
                    domain == d || (*subdomains && domain.ends_with(&format!(".{d}")))
                });
                match hit {
                    Some(d) => Ok(Cow::Owned(vec![template
                        .build(key.clone(), d, selector)
                        .map_err(|e| SelectError::Config(e.into()))?])),
                    None => Err(SelectError::NoKey(format!("{local}@{domain}"))),
                }
            }
            KeySource::Tables(t) => Ok(Cow::Owned(t.lookup(&local, &domain)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            canon: Canonicalization::default(),
            headers: None,
            oversign: vec![],
            body_length: false,
            expire: None,
            algorithm: None,
            min_bits: 1024,
            strict_keys: false,
            identity: None,
        }
    }

    #[test]
    fn build_errors_are_typed_and_read_as_before() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/keys/test.private");
        let key = Arc::new(SigningKey::from_path(&path, false).unwrap().0);
        let short = Template { min_bits: 4096, ..template() };
        let e = short.build(key.clone(), "example.com", "test").unwrap_err();
        assert!(matches!(e, BuildError::KeyTooShort { bits: 2048, min: 4096, .. }), "{e:?}");
        assert_eq!(e.to_string(), "key for test._domainkey.example.com has 2048 bits, below MinimumKeyBits 4096");
        let e = template().build(key, "not a domain", "test").unwrap_err();
        assert!(matches!(e, BuildError::Signer(SignerConfigError::BadDomain(_))), "{e:?}");
    }
}
