//! From key options and an opendkim.conf to what signs: the key source (fixed keys, one key for
//! listed domains, or KeyTable/SigningTable), the database settings, the MTA signing policy,
//! and the key record sources of verification. Reading the file itself is [`super::conf`].

use super::args::{KeyArgs, RecordArgs};
use super::conf::{self, split_list, OpendkimConf};
use super::error::{usage, CliError};
use super::now_unix;
use dkimpress::dkim::canon::{Canon, Canonicalization};
use dkimpress::dkim::key::SigningKey;
use dkimpress::pipeline::{self, SignPolicy};
use dkimpress::select::{DataSet, DbSettings, KeySource, Tables, Template};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Builds the key source from flags, an opendkim.conf, or tables.
/// The commands other than the milter: `--config` is read here, and with `-v` its keys
/// without effect on this command are listed.
pub(super) fn key_source(a: &KeyArgs) -> anyhow::Result<KeySource> {
    key_source_with(a, read_conf(a)?.as_ref())
}

/// The `--config` file of a command other than the milter, read once; with `-v` its keys
/// without effect on this command are listed.
pub(super) fn read_conf(a: &KeyArgs) -> anyhow::Result<Option<OpendkimConf>> {
    Ok(match &a.config {
        Some(p) => {
            let c = OpendkimConf::load(p)?;
            if a.verbose {
                for (line, key) in &c.milter_keys {
                    eprintln!(
                        "dkimpress: {}:{line}: {key} is read by `dkimpress milter` only; ignored here",
                        p.display()
                    );
                }
                for (line, key) in &c.ignored {
                    eprintln!(
                        "dkimpress: {}:{line}: {key}: an opendkim key without effect in dkimpress; ignored",
                        p.display()
                    );
                }
            }
            Some(c)
        }
        None => None,
    })
}

/// How PostgreSQL data sets wait and remember, from `--db-timeout` and `--db-cache`.
pub(super) fn db_settings(a: &KeyArgs) -> anyhow::Result<DbSettings> {
    let mut db = DbSettings::default();
    if let Some(t) = a.db_timeout {
        if !(t > 0.0 && t.is_finite()) {
            return Err(usage("--db-timeout must be a positive number of seconds"));
        }
        db.timeout = std::time::Duration::from_secs_f64(t).max(std::time::Duration::from_millis(1));
    }
    if let Some(ttl) = a.db_cache {
        if !(ttl >= 0.0 && ttl.is_finite()) {
            return Err(usage("--db-cache must be zero or a positive number of seconds"));
        }
        db.cache = std::time::Duration::from_secs_f64(ttl);
    }
    Ok(db)
}

/// The key source from flags and the configuration file already read (`conf`): every command
/// reads one file the same way, so `sign --config F` signs as `milter -x F` does.
pub(super) fn key_source_with(a: &KeyArgs, conf: Option<&OpendkimConf>) -> anyhow::Result<KeySource> {
    let db = db_settings(a)?;
    let template = template(a, conf);
    match conf {
        Some(c) => conf_source(a, c, template, db),
        None => flag_source(a, template, db),
    }
}

/// The tag settings every signer gets. Flags win over the file; the file over defaults. A
/// file that does not say signs simple/simple, opendkim's default (opendkim.conf(5)
/// Canonicalization); flags alone sign relaxed/relaxed.
fn template(a: &KeyArgs, conf: Option<&OpendkimConf>) -> Template {
    let canon = match (a.canon, conf) {
        (Some(canon), _) => canon,
        (None, Some(c)) => {
            c.canonicalization.unwrap_or(Canonicalization { header: Canon::Simple, body: Canon::Simple })
        }
        (None, None) => Canonicalization::default(),
    };
    let headers = match &a.headers {
        Some(list) => Some(split_list(list)),
        None => conf.and_then(|c| c.sign_headers.clone()),
    };
    let oversign = match &a.oversign {
        Some(list) => split_list(list),
        None => conf.and_then(|c| c.oversign_headers.clone()).unwrap_or_else(|| vec!["from".to_string()]),
    };
    let algorithm =
        a.algorithm.clone().or_else(|| conf.and_then(|c| c.signature_algorithm).map(|k| k.algorithm().into()));
    Template {
        canon,
        headers,
        oversign,
        body_length: a.body_length || conf.is_some_and(|c| c.body_length),
        expire: a.expire.or_else(|| conf.and_then(|c| c.signature_ttl)),
        algorithm,
        // MinimumKeyBits is a verification setting in OpenDKIM (opendkim.conf(5)): it does not
        // refuse our own signing keys (which would defer all mail). RFC 8301's 1024 applies.
        min_bits: dkimpress::dkim::key::MIN_RSA_BITS,
        strict_keys: a.strict_keys || conf.is_some_and(|c| c.require_safe_keys),
        identity: None,
    }
}

/// What an opendkim.conf signs with: its KeyTable and SigningTable, or its one key for the
/// domains it lists (a comma list or a data set).
fn conf_source(a: &KeyArgs, c: &OpendkimConf, template: Template, db: DbSettings) -> anyhow::Result<KeySource> {
    let (spec, selector, key_file) = match &c.signing {
        conf::Signing::Nothing => {
            return Err(CliError::Config(format!(
                "{}: nothing to sign with: give KeyTable and SigningTable, or Domain, Selector and KeyFile",
                c.path.display()
            ))
            .into())
        }
        conf::Signing::Tables { key_table, signing_table } => {
            let multiple = c.multiple_signatures || a.multiple_signatures;
            let t = Tables::open(key_table, signing_table, multiple, template, &c.dir, db)?;
            return Ok(KeySource::Tables(Box::new(t)));
        }
        conf::Signing::Single { domain, selector, key_file } => (domain, selector.clone(), key_file),
    };
    let key = load_key(key_file, template.strict_keys)?;
    let domains = if spec.contains(':') || Path::new(spec).exists() {
        DataSet::open(spec, &c.dir, db)?.keys()?
    } else {
        split_list(spec)
    };
    // Check the settings once, with the first domain.
    if let Some(d) = domains.first() {
        template.build(Arc::new(SigningKey::from_path(key_file, false)?.0), d, &selector)?;
    }
    Ok(KeySource::Domains { domains, subdomains: c.subdomains, selector, key, template })
}

/// What the flags sign with: `--key-table` and `--signing-table`, or each `-k` key with its
/// `-d` and `-s`.
fn flag_source(a: &KeyArgs, template: Template, db: DbSettings) -> anyhow::Result<KeySource> {
    if let (Some(kt), Some(st)) = (&a.key_table, &a.signing_table) {
        let t = Tables::open(kt, st, a.multiple_signatures, template, Path::new("."), db)?;
        return Ok(KeySource::Tables(Box::new(t)));
    }
    if a.keys.is_empty() {
        return Err(usage(
            "no key: give -d DOMAIN -s SELECTOR -k KEYFILE, --config FILE, or --key-table with --signing-table",
        ));
    }
    let template = Template { identity: a.identity.clone(), ..template };
    let mut loaded: Vec<(PathBuf, Arc<SigningKey>)> = vec![];
    let mut signers = vec![];
    for (n, path) in a.keys.iter().enumerate() {
        let key = match loaded.iter().find(|(p, _)| p == path) {
            Some((_, k)) => k.clone(),
            None => {
                let key = load_key(path, a.strict_keys)?;
                loaded.push((path.clone(), key.clone()));
                key
            }
        };
        if a.domains.is_empty() || a.selectors.is_empty() {
            return Err(usage("-k needs -d DOMAIN and -s SELECTOR"));
        }
        let domain = nth(&a.domains, n, "-d/--domain", a.keys.len())?;
        let selector = nth(&a.selectors, n, "-s/--selector", a.keys.len())?;
        signers.push(template.build(key, domain, selector)?);
    }
    Ok(KeySource::Fixed(signers))
}

/// A private key, with the warning about its permissions (when `strict` does not refuse them).
pub(super) fn load_key(path: &Path, strict: bool) -> anyhow::Result<Arc<SigningKey>> {
    let (key, warning) = SigningKey::from_path(path, strict)?;
    if let Some(w) = warning {
        dkimpress::warnings::warn(&w.to_string());
    }
    Ok(Arc::new(key))
}

/// The n-th of a repeated option given once for all, or once per key.
fn nth<'a>(values: &'a [String], n: usize, flag: &str, keys: usize) -> anyhow::Result<&'a str> {
    match values.len() {
        1 => Ok(&values[0]),
        len if len == keys => Ok(&values[n]),
        len => Err(usage(format!(
            "{flag} given {len} times for {keys} keys (-k): give it once for all keys, or once per key"
        ))),
    }
}

/// Key record sources: zone files and key directories (offline), else DNS (or DNS as well when
/// servers are named).
pub(super) fn key_lookup(r: &RecordArgs) -> anyhow::Result<dkimpress::lookup::Chain> {
    let (zones, key_dirs, servers, timeout) = (&r.zones, &r.key_dirs, &r.dns_servers, r.dns_timeout);
    use dkimpress::dkim::verify::KeyLookup;
    use dkimpress::lookup::{Chain, Dns, KeyDir, ZoneKeys};
    let mut sources: Vec<Box<dyn KeyLookup + Send>> = vec![];
    if !zones.is_empty() {
        sources.push(Box::new(ZoneKeys::load(zones)?));
    }
    for d in key_dirs {
        if !d.is_dir() {
            return Err(usage(format!("{}: --key-dir is not a directory", d.display())));
        }
        sources.push(Box::new(KeyDir::new(d)));
    }
    if sources.is_empty() || !servers.is_empty() {
        let mut addrs = vec![];
        for s in servers {
            let addr = s
                .parse::<std::net::SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)))
                .map_err(|_| usage(format!("--dns-server {s:?}: expected IP or IP:PORT")))?;
            addrs.push(addr);
        }
        if timeout.is_nan() || timeout <= 0.0 {
            return Err(usage("--dns-timeout must be positive"));
        }
        let dns = Dns::new(&addrs, std::time::Duration::from_secs_f64(timeout), 2)
            .map_err(|e| CliError::Config(format!("DNS resolver: {e}")))?;
        sources.push(Box::new(dns));
    }
    Ok(Chain(sources))
}

/// The signing policy of `filter` and the wrapper, from flags and the configuration file
/// already read (`conf`).
pub(super) fn mta_options(k: &KeyArgs, conf: Option<&OpendkimConf>) -> anyhow::Result<SignPolicy> {
    Ok(SignPolicy {
        keys: key_source_with(k, conf)?,
        sender: k.sender.clone(),
        strip_own: false,
        now: k.timestamp.unwrap_or_else(now_unix),
        max_message: pipeline::DEFAULT_MAX_MESSAGE,
        dkim: true,
        arc: None,
    })
}
