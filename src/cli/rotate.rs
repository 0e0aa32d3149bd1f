//! `dkimpress rotate`: key rotation as a safe, resumable procedure over the files of an
//! opendkim.conf (KeyTable and SigningTable files, or Domain/Selector/KeyFile).
//!
//! Four steps, each idempotent: `prepare` makes the new key beside the current one and adds it
//! to the KeyTable (nothing signs with it yet) and prints the record to publish; `activate`
//! checks that the record is published and holds the new key's public half (as testkey does),
//! then switches the SigningTable (one atomic rename) and tells a running milter to reload;
//! `retire` removes a key that has not signed for some days and prints its revocation record;
//! `status` says where each key stands. What rotate did and when is kept in
//! `dkimpress-rotate.json` beside the configuration (the age of a key, when it stopped
//! signing). Every file is replaced by write, fsync and rename, keeping its owner and mode, so
//! a crash at any point leaves a configuration that signs with a published key.

use crate::cli::args::{RecordArgs, ReportFormat};
use crate::cli::conf::{split_list, OpendkimConf, Signing};
use crate::cli::error::{usage, write_failed, CliError};
use crate::cli::keys::key_lookup;
use crate::cli::now_unix;
use crate::cli::testkey::record_matches;
use clap::{Args, Subcommand};
use dkimpress::dkim::key::{KeyType, SigningKey};
use dkimpress::dkim::verify::{KeyLookup, LookupError};
use dkimpress::pipeline::io::{AtomicFile, Keep};
use dkimpress::select::{DbSettings, PgSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct RotateArgs {
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand, Debug)]
enum Step {
    /// Every key of the configuration: domain, selector, type and size, age, the SigningTable
    /// entries that use it, whether its record is published, and the next step.
    Status(StatusArgs),
    /// Make the new key(s) beside the current ones, add them to the KeyTable (nothing signs
    /// with them yet) and print the TXT records to publish.
    Prepare(PrepareArgs),
    /// Once the new records are published and match the keys: sign with the new selector
    /// (SigningTable, or Selector/KeyFile) and tell a running milter to reload. Exit 75 while a
    /// record is missing or wrong, with nothing changed.
    Activate(ActivateArgs),
    /// Remove a key that has not signed for --after days: from the KeyTable and the disk (or
    /// into --archive), and print its revocation record. Exit 75 while it is too early.
    Retire(RetireArgs),
}

#[derive(Args, Debug)]
struct Common {
    /// The opendkim.conf whose keys to rotate (KeyTable and SigningTable files, or
    /// Domain/Selector/KeyFile).
    #[arg(long = "config", short = 'x', value_name = "FILE")]
    config: PathBuf,
    /// Show what would change, change nothing.
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    records: RecordArgs,
    /// Output: text (a line per key) or json (a JSON object per line).
    #[arg(long = "report", value_name = "FORMAT", value_enum, default_value_t = ReportFormat::Text)]
    report: ReportFormat,
}

#[derive(Args, Debug)]
struct PrepareArgs {
    #[command(flatten)]
    common: Common,
    /// The selector of the new key(s).
    #[arg(long = "selector", short = 's', value_name = "NEW")]
    selector: String,
    /// Only these domains [default: every domain that signs].
    #[arg(long = "domain", short = 'd', value_name = "DOMAIN")]
    domains: Vec<String>,
    /// Key type [default: that of the key it replaces]. An Ed25519 key next to RSA ones is
    /// added as a second signature (MultipleSignatures) instead of replacing them.
    #[arg(long = "type", short = 't', value_name = "TYPE", value_parser = ["rsa", "ed25519"])]
    key_type: Option<String>,
    /// RSA key size [default: that of the key it replaces, at least 2048].
    #[arg(long = "bits", short = 'b', value_name = "N")]
    bits: Option<usize>,
    /// Also write the records as an nsupdate(1) script (RFC 2136 dynamic update): publish with
    /// `nsupdate -k KEY FILE`.
    #[arg(long = "nsupdate", value_name = "FILE")]
    nsupdate: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ActivateArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    records: RecordArgs,
    /// The selector prepared.
    #[arg(long = "selector", short = 's', value_name = "NEW")]
    selector: String,
}

#[derive(Args, Debug)]
struct RetireArgs {
    #[command(flatten)]
    common: Common,
    /// The selector to retire.
    #[arg(long = "selector", short = 's', value_name = "OLD")]
    selector: String,
    /// Only for these domains [default: every domain with that selector].
    #[arg(long = "domain", short = 'd', value_name = "DOMAIN")]
    domains: Vec<String>,
    /// Days the key must have been out of use: receivers verify mail that is days old.
    #[arg(long = "after", value_name = "DAYS", default_value_t = 7)]
    after: u64,
    /// Move the key files here instead of deleting them.
    #[arg(long = "archive", value_name = "DIR")]
    archive: Option<PathBuf>,
    /// Also write the revocation records as an nsupdate(1) script (RFC 2136 dynamic update).
    #[arg(long = "nsupdate", value_name = "FILE")]
    nsupdate: Option<PathBuf>,
}

pub(crate) fn cmd_rotate(a: RotateArgs) -> anyhow::Result<ExitCode> {
    match a.step {
        Step::Status(a) => status(&a),
        Step::Prepare(a) => {
            let _lock = lock(&a.common.config)?;
            prepare(&a)
        }
        Step::Activate(a) => {
            let _lock = lock(&a.common.config)?;
            activate(&a)
        }
        Step::Retire(a) => {
            let _lock = lock(&a.common.config)?;
            retire(&a)
        }
    }
}

/// One rotate step at a time per configuration: an exclusive lock on `dkimpress-rotate.lock`
/// beside it, held until the step ends. Another step running is a temporary failure (75).
fn lock(config: &Path) -> anyhow::Result<std::fs::File> {
    let dir = config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let path = dir.join("dkimpress-rotate.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| CliError::Create { path: path.clone(), error })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::Unavailable(format!(
            "{}: another rotate step is running on this configuration; try again when it ends",
            path.display()
        ))
        .into()),
        Err(std::fs::TryLockError::Error(error)) => Err(CliError::Create { path, error }.into()),
    }
}

/// Stops the process here when `DKIMPRESS_FAILPOINT` names this point: how the tests crash a
/// step between two of its writes.
fn failpoint(name: &str) {
    if std::env::var("DKIMPRESS_FAILPOINT").as_deref() == Ok(name) {
        eprintln!("dkimpress: failpoint {name}: stopping");
        std::process::abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The files: tables as lines, the configuration's own lines, the record of what rotate did.

/// A data set file (KeyTable or SigningTable) as lines, so that an edit keeps every comment,
/// blank line and entry it does not touch.
struct TableFile {
    path: PathBuf,
    lines: Vec<String>,
}

impl TableFile {
    /// The file of a data set spec: `file:`, `refile:` or a path; a database or list cannot be
    /// edited here.
    fn open(spec: &str, base: &Path, what: &str) -> anyhow::Result<TableFile> {
        let rest = spec.strip_prefix("refile:").or_else(|| spec.strip_prefix("file:")).unwrap_or(spec);
        if spec.starts_with("dsn:") || spec.starts_with("csl:") || rest.contains("://") {
            return Err(CliError::Config(format!(
                "{what} {}: rotate edits KeyTable and SigningTable files only (file:, refile: or a path)",
                dkimpress::select::redact(spec)
            ))
            .into());
        }
        let path = base.join(rest);
        let text = std::fs::read_to_string(&path).map_err(|e| CliError::Input { path: path.clone(), error: e })?;
        Ok(TableFile { path, lines: text.lines().map(str::to_string).collect() })
    }

    /// The (key, value) of each entry line, with its line index.
    fn entries(&self) -> Vec<(usize, String, String)> {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(n, l)| {
                let l = l.split('#').next().unwrap_or_default().trim();
                let (k, v) = l.split_once(char::is_whitespace)?;
                Some((n, k.to_string(), v.trim().to_string()))
            })
            .collect()
    }

    /// Replaces the file (write, fsync, rename), keeping its owner and mode.
    fn save(&self) -> anyhow::Result<()> {
        let mut text = self.lines.join("\n");
        text.push('\n');
        replace_file(&self.path, text.as_bytes())
    }
}

/// Writes `data` to `path` in place of what is there: a temporary file in the same directory,
/// fsynced, renamed over it, with the old file's owner and mode.
fn replace_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    // A table that is a symbolic link (kept by configuration management elsewhere) is
    // replaced where it lives; the link stays.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let path = real.as_path();
    let keep = match std::fs::metadata(path) {
        Ok(m) => Keep::owner_and_mode(&m),
        Err(_) => Keep::mode(0o644),
    };
    let write = || -> std::io::Result<()> {
        let mut f = AtomicFile::create(path, &keep)?;
        f.write_all(data)?;
        f.commit()
    };
    write().map_err(|error| CliError::Create { path: path.to_path_buf(), error }.into())
}

/// One key as rotate sees it.
#[derive(Clone, Debug)]
struct Key {
    /// Its KeyTable name (empty for a Domain/Selector/KeyFile configuration).
    name: String,
    domain: String,
    selector: String,
    /// Its file (empty when the KeyTable holds the key itself).
    file: PathBuf,
    /// The key itself (PEM), when the KeyTable holds it (a database row).
    inline: Option<String>,
}

impl Key {
    /// The private key.
    fn load(&self) -> Result<SigningKey, String> {
        match &self.inline {
            Some(pem) => SigningKey::from_bytes(pem.as_bytes(), &self.record_name()).map_err(|e| e.to_string()),
            None => load_key(&self.file),
        }
    }

    /// Where the key is, for messages.
    fn place(&self) -> String {
        match &self.inline {
            Some(_) => format!("KeyTable row {}", self.name),
            None => self.file.display().to_string(),
        }
    }

    /// Where its record is published.
    fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

/// The configuration's keys and what uses them.
struct Config {
    conf: OpendkimConf,
    kind: Kind,
}

enum Kind {
    /// KeyTable and SigningTable files.
    Tables { key_table: TableFile, signing_table: TableFile },
    /// KeyTable and SigningTable in PostgreSQL (`dsn:pgsql`), as read when loaded.
    Db { key_table: Box<PgSet>, signing_table: Box<PgSet>, keys: Vec<Key>, signing: Vec<(String, String)> },
    /// Domain, Selector, KeyFile.
    Single { domains: Vec<String>, selector: String, key_file: PathBuf },
}

impl Config {
    fn load(path: &Path) -> anyhow::Result<Config> {
        let conf = OpendkimConf::load(path)?;
        let kind = match &conf.signing {
            Signing::Tables { key_table, signing_table }
                if key_table.starts_with("dsn:") || signing_table.starts_with("dsn:") =>
            {
                db_tables(key_table, signing_table)?
            }
            Signing::Tables { key_table, signing_table } => Kind::Tables {
                key_table: TableFile::open(key_table, &conf.dir, "KeyTable")?,
                signing_table: TableFile::open(signing_table, &conf.dir, "SigningTable")?,
            },
            Signing::Single { domain, selector, key_file } => {
                if domain.starts_with("dsn:") || domain.contains(":/") {
                    return Err(CliError::Config(format!(
                        "{}: Domain is a data set; rotate needs the domains listed in the file",
                        path.display()
                    ))
                    .into());
                }
                Kind::Single { domains: split_list(domain), selector: selector.clone(), key_file: key_file.clone() }
            }
            Signing::Nothing => unreachable!("OpendkimConf::load refuses a file without keys"),
        };
        Ok(Config { conf, kind })
    }

    /// Every key, in the order of the KeyTable.
    fn keys(&self) -> Vec<Key> {
        match &self.kind {
            Kind::Db { keys, .. } => keys.clone(),
            Kind::Tables { key_table, .. } => key_table
                .entries()
                .into_iter()
                .filter_map(|(_, name, value)| {
                    let mut parts = value.splitn(3, ':');
                    let (d, s, f) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(Key {
                        name,
                        domain: d.to_string(),
                        selector: s.to_string(),
                        file: self.conf.dir.join(f),
                        inline: None,
                    })
                })
                .collect(),
            Kind::Single { domains, selector, key_file } => domains
                .iter()
                .map(|d| Key {
                    name: String::new(),
                    domain: d.clone(),
                    selector: selector.clone(),
                    file: key_file.clone(),
                    inline: None,
                })
                .collect(),
        }
    }

    /// The SigningTable patterns that sign with `key` (every listed domain for a single key).
    fn users(&self, key: &Key) -> Vec<String> {
        match &self.kind {
            Kind::Db { signing, .. } => {
                signing.iter().filter(|(_, v)| v.eq_ignore_ascii_case(&key.name)).map(|(k, _)| k.clone()).collect()
            }
            Kind::Tables { signing_table, .. } => signing_table
                .entries()
                .into_iter()
                .filter(|(_, _, v)| v.eq_ignore_ascii_case(&key.name))
                .map(|(_, k, _)| k)
                .collect(),
            Kind::Single { domains, selector, .. } => {
                if key.selector == *selector && domains.contains(&key.domain) {
                    vec![format!("Domain {}", key.domain)]
                } else {
                    vec![]
                }
            }
        }
    }

    /// The keys of `domain` that sign now.
    fn active(&self, domain: &str) -> Vec<Key> {
        self.keys().into_iter().filter(|k| k.domain.eq_ignore_ascii_case(domain) && !self.users(k).is_empty()).collect()
    }

    /// Where rotate keeps its record: beside the configuration file.
    fn state_path(&self) -> PathBuf {
        self.conf.dir.join("dkimpress-rotate.json")
    }
}

/// The database tables of a configuration, read now (no cache: rotate reads what it wrote).
fn db_tables(key_table: &str, signing_table: &str) -> anyhow::Result<Kind> {
    let db = DbSettings { cache: std::time::Duration::ZERO, ..DbSettings::default() };
    let open = |spec: &str, what: &str| -> anyhow::Result<Box<PgSet>> {
        if !spec.starts_with("dsn:") {
            return Err(CliError::Config(format!(
                "{what} {}: rotate needs both tables in files or both in the database",
                dkimpress::select::redact(spec)
            ))
            .into());
        }
        Ok(Box::new(PgSet::open(spec, db)?))
    };
    let (kt, st) = (open(key_table, "KeyTable")?, open(signing_table, "SigningTable")?);
    let kt_set = dkimpress::select::DataSet::Pg(Box::new(PgSet::open(key_table, db)?));
    let mut keys = vec![];
    for name in kt.all_keys()? {
        let Some(value) = kt_set.get(&name)? else { continue };
        let mut parts = value.splitn(3, ':');
        let (Some(d), Some(sel), Some(k)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (file, inline) =
            if k.starts_with("-----BEGIN") { (PathBuf::new(), Some(k.to_string())) } else { (PathBuf::from(k), None) };
        keys.push(Key { name, domain: d.to_string(), selector: sel.to_string(), file, inline });
    }
    let st_set = dkimpress::select::DataSet::Pg(Box::new(PgSet::open(signing_table, db)?));
    let mut signing = vec![];
    for pattern in st.all_keys()? {
        if let Some(v) = st_set.get(&pattern)? {
            // The first data column names the key (an optional second is the signer).
            signing.push((pattern, v.split(':').next().unwrap_or_default().to_string()));
        }
    }
    Ok(Kind::Db { key_table: kt, signing_table: st, keys, signing })
}

/// The layout of a database table rotate writes to, refused when it cannot be written safely:
/// a filtered data set (a row written might not be read back), or other columns than
/// `want` data columns.
fn writable<'s>(set: &'s PgSet, want: &[usize], what: &str) -> anyhow::Result<&'s dkimpress::select::Layout> {
    let l = set.layout();
    if l.filter.is_some() || !want.contains(&l.datacols.len()) {
        return Err(CliError::Config(format!(
            "{what} {}: rotate writes tables with datacol={} and no filter=",
            set.shown(),
            if want.contains(&3) { "domain,selector,key" } else { "the key name" }
        ))
        .into());
    }
    Ok(l)
}

/// What rotate did to each key, and when (Unix times).
#[derive(Default)]
struct State {
    path: PathBuf,
    records: Vec<serde_json::Value>,
}

impl State {
    fn load(path: PathBuf) -> anyhow::Result<State> {
        let records = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| CliError::Config(format!("{}: not the record rotate writes: {e}", path.display())))?;
                v["keys"].as_array().cloned().unwrap_or_default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(CliError::Input { path, error: e }.into()),
        };
        Ok(State { path, records })
    }

    /// The record of (domain, selector), made if there is none.
    fn get(&mut self, domain: &str, selector: &str) -> &mut serde_json::Value {
        let at = self.records.iter().position(|r| {
            r["domain"].as_str().is_some_and(|d| d.eq_ignore_ascii_case(domain)) && r["selector"] == selector
        });
        let at = at.unwrap_or_else(|| {
            self.records.push(serde_json::json!({"domain": domain, "selector": selector}));
            self.records.len() - 1
        });
        &mut self.records[at]
    }

    fn find(&self, domain: &str, selector: &str) -> Option<&serde_json::Value> {
        self.records
            .iter()
            .find(|r| r["domain"].as_str().is_some_and(|d| d.eq_ignore_ascii_case(domain)) && r["selector"] == selector)
    }

    fn save(&self) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&serde_json::json!({"keys": self.records}))? + "\n";
        replace_file(&self.path, text.as_bytes())
    }
}

/// Sets `field` of `record` to `value` unless it is set already: the first time a step was
/// done is the one that counts.
fn stamp(record: &mut serde_json::Value, field: &str, value: serde_json::Value) {
    if record[field].is_null() {
        record[field] = value;
    }
}

// ---------------------------------------------------------------------------------------------
// DNS.

/// Whether the record of `key` is published and holds its public half: `Ok` with a note, or
/// why not (and whether that may change by waiting: a lookup failure or a missing record).
fn published(lookup: &impl KeyLookup, key: &Key, loaded: &SigningKey) -> Result<(), String> {
    let name = key.record_name();
    match lookup.txt(&name) {
        Err(LookupError::NotFound) => Err(format!("no TXT record at {name}")),
        Err(LookupError::Temporary(e)) => Err(format!("lookup of {name} failed: {e}")),
        Ok(records) => {
            let mut why = format!("no TXT record at {name}");
            for r in &records {
                match record_matches(r, loaded) {
                    Ok(()) => return Ok(()),
                    Err(e) => why = format!("{name}: {e}"),
                }
            }
            Err(why)
        }
    }
}

fn load_key(path: &Path) -> Result<SigningKey, String> {
    SigningKey::from_path(path, false).map(|(k, _)| k).map_err(|e| e.to_string())
}

/// The record text to publish for `key` (zone-file form, as genkey writes it).
fn zone_text(key: &Key, loaded: &SigningKey) -> String {
    let value = dkimpress::dkim::genkey::record_value(loaded, &Default::default());
    dkimpress::dkim::genkey::zone_record(&key.selector, &key.domain, &value, true)
}

/// The TTL of the records in an nsupdate script.
const NSUPDATE_TTL: u32 = 3600;

/// An nsupdate(1) script that replaces the TXT records at each name with the value given
/// (RFC 2136: delete the name's TXT set, add the new one), sent as one update.
fn nsupdate_script(records: &[(String, String)]) -> String {
    let mut out = String::from("; written by dkimpress rotate: nsupdate -k KEYFILE THIS-FILE\n");
    for (name, value) in records {
        let strings: Vec<String> =
            dkimpress::dkim::genkey::split_txt(value).iter().map(|s| format!("\"{s}\"")).collect();
        out.push_str(&format!("update delete {name}. TXT\n"));
        out.push_str(&format!("update add {name}. {NSUPDATE_TTL} IN TXT {}\n", strings.join(" ")));
    }
    out.push_str("send\n");
    out
}

/// Writes an nsupdate script of `records` to `path`, when asked for one.
fn write_nsupdate(path: Option<&Path>, records: &[(String, String)], dry: bool) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    if records.is_empty() {
        return Ok(());
    }
    if dry {
        note(&format!("would write {}", path.display()));
        return Ok(());
    }
    dkimpress::pipeline::io::write_atomic(path, &[nsupdate_script(records).as_bytes()], 0o644)
        .map_err(|error| CliError::Create { path: path.to_path_buf(), error })?;
    note(&format!("wrote {} (nsupdate -k KEYFILE {})", path.display(), path.display()));
    Ok(())
}

fn out(text: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).and_then(|()| o.flush()).map_err(|e| write_failed("stdout", e))
}

fn note(text: &str) {
    eprintln!("dkimpress rotate: {text}");
}

// ---------------------------------------------------------------------------------------------
// status

fn status(a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&a.common.config)?;
    let state = State::load(cfg.state_path())?;
    let mut records = a.records.clone();
    if records.dns_servers.is_empty() && records.zones.is_empty() && records.key_dirs.is_empty() {
        records.dns_servers = cfg.conf.nameservers.clone();
    }
    let lookup = key_lookup(&records)?;
    let now = now_unix();
    let mut problems = 0;
    for key in cfg.keys() {
        let users = cfg.users(&key);
        let record = state.find(&key.domain, &key.selector);
        let loaded = key.load();
        let (what, dns) = match &loaded {
            Ok(k) => (format!("{} {}", k.key_type().as_str(), k.bits()), published(&lookup, &key, k)),
            Err(e) => (format!("unreadable: {e}"), Err("key not loaded".into())),
        };
        let created = record.and_then(|r| r["created"].as_u64()).or_else(|| {
            std::fs::metadata(&key.file)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs()))
        });
        let age_days = created.map(|c| now.saturating_sub(c) / 86_400);
        let deactivated = record.and_then(|r| r["deactivated"].as_u64());
        let next = match (users.is_empty(), &dns, deactivated) {
            (false, Err(e), _) => {
                problems += 1;
                format!("PROBLEM: signs, but its record does not verify ({e})")
            }
            (false, Ok(()), _) if age_days.is_some_and(|d| d > 180) => {
                "signing; older than six months: prepare a new key".to_string()
            }
            (false, Ok(()), _) => "signing".to_string(),
            (true, _, Some(t)) => {
                let days = now.saturating_sub(t) / 86_400;
                format!("out of use for {days} days: retire once receivers are done with it, 7 days by default (rotate retire --selector {})", key.selector)
            }
            (true, Ok(()), None) => format!("published: activate (rotate activate --selector {})", key.selector),
            (true, Err(_), None) => format!("publish {}, then activate", key.record_name()),
        };
        match a.report {
            ReportFormat::Json => {
                let v = serde_json::json!({
                    "name": key.name, "domain": key.domain, "selector": key.selector,
                    "key_file": key.file.display().to_string(), "key": what,
                    "age_days": age_days, "used_by": users, "published": dns.is_ok(),
                    "dns": dns.as_ref().err().cloned().unwrap_or_else(|| "matches".into()),
                    "next": next,
                });
                out(&(v.to_string() + "\n"))?;
            }
            ReportFormat::Text => {
                let age = age_days.map_or("age unknown".to_string(), |d| format!("{d} days"));
                let used =
                    if users.is_empty() { "unused".to_string() } else { format!("used by {}", users.join(", ")) };
                let dns = match &dns {
                    Ok(()) => "record matches".to_string(),
                    Err(e) => e.clone(),
                };
                out(&format!("{} {}: {what}, {age}, {used}; {dns}; next: {next}\n", key.domain, key.selector))?;
            }
        }
    }
    Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

// ---------------------------------------------------------------------------------------------
// prepare

/// The domains a step works on: those given (each must have a key that signs), else every
/// domain that has one.
fn domains_to_rotate(cfg: &Config, given: &[String]) -> anyhow::Result<Vec<String>> {
    let mut all: Vec<String> = Vec::new();
    for k in cfg.keys() {
        if !cfg.users(&k).is_empty() && !all.iter().any(|d| d.eq_ignore_ascii_case(&k.domain)) {
            all.push(k.domain.clone());
        }
    }
    if given.is_empty() {
        return Ok(all);
    }
    for d in given {
        if !all.iter().any(|a| a.eq_ignore_ascii_case(d)) {
            return Err(usage(format!("--domain {d}: no key of {d} signs in {}", cfg.conf.path.display())));
        }
    }
    Ok(given.to_vec())
}

fn prepare(a: &PrepareArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = Config::load(&a.common.config)?;
    dkimpress::dkim::sign::check_names("example.com", &a.selector)?;
    let mut state = State::load(cfg.state_path())?;
    let domains = domains_to_rotate(&cfg, &a.domains)?;
    let dry = a.common.dry_run;
    let mut records = String::new();
    let mut updates: Vec<(String, String)> = vec![];
    // A single-key configuration has one key for all its domains: one new key too.
    let mut made: Vec<(PathBuf, std::sync::Arc<SigningKey>)> = Vec::new();
    for domain in &domains {
        let current = cfg.active(domain);
        let Some(model) = current.first().cloned() else { continue };
        if model.selector.eq_ignore_ascii_case(&a.selector) {
            return Err(usage(format!("{domain}: selector {} is the one signing now; choose a new one", a.selector)));
        }
        let current_types: Vec<(KeyType, usize)> =
            current.iter().filter_map(|k| k.load().ok()).map(|k| (k.key_type(), k.bits())).collect();
        let kind = match a.key_type.as_deref() {
            Some("ed25519") => KeyType::Ed25519,
            Some(_) => KeyType::Rsa,
            None => current_types.first().map_or(KeyType::Rsa, |t| t.0),
        };
        // The key of the same type it replaces; none: a second signature next to the others.
        let replaces = current.iter().zip(&current_types).find(|(_, t)| t.0 == kind).map(|(k, _)| k.clone());
        let bits = a.bits.unwrap_or_else(|| current_types.iter().find(|t| t.0 == kind).map_or(2048, |t| t.1.max(2048)));
        let beside = replaces.as_ref().unwrap_or(&model);
        let dir = beside.file.parent().map(Path::to_path_buf).unwrap_or_else(|| cfg.conf.dir.clone());
        let new = Key {
            name: if cfg.is_tables() { format!("{}._domainkey.{}", a.selector, domain) } else { String::new() },
            domain: domain.clone(),
            selector: a.selector.clone(),
            file: dir.join(format!("{}.private", a.selector)),
            inline: None,
        };
        if !cfg.is_tables() && replaces.is_none() {
            return Err(usage(
                "a configuration with one Domain/Selector/KeyFile has one key: rotate replaces it with one of the \
                 same type (give no --type, or use a KeyTable for two algorithms)",
            ));
        }
        // In a database the key goes into its KeyTable row: made once, kept when the row is
        // there already.
        if let Kind::Db { key_table, keys, .. } = &cfg.kind {
            let (loaded, pem) = match keys.iter().find(|k| k.name.eq_ignore_ascii_case(&new.name)) {
                Some(k) => {
                    note(&format!("{}: already in {}; kept", new.name, key_table.shown()));
                    (k.load().map_err(|e| CliError::Config(format!("{}: {e}", k.place())))?, None)
                }
                None if dry => {
                    note(&format!("would add {} ({} {bits}) to {}", new.name, kind.as_str(), key_table.shown()));
                    continue;
                }
                None => {
                    let g = dkimpress::dkim::genkey::generate(kind, bits)?;
                    (g.key, Some(g.pem))
                }
            };
            let zone = zone_text(&new, &loaded);
            let txt = cfg.conf.dir.join(format!("{}.{}.txt", a.selector, domain));
            dkimpress::pipeline::io::write_atomic(&txt, &[zone.as_bytes()], 0o644)
                .map_err(|error| CliError::Create { path: txt.clone(), error })?;
            records.push_str(&zone);
            updates.push((new.record_name(), dkimpress::dkim::genkey::record_value(&loaded, &Default::default())));
            if let Some(pem) = pem {
                let l = writable(key_table, &[3], "KeyTable")?;
                let sql = format!(
                    "INSERT INTO {} ({}, {}, {}, {}) VALUES ($1, $2, $3, $4)",
                    l.table, l.keycol, l.datacols[0], l.datacols[1], l.datacols[2]
                );
                key_table.write(vec![(sql, vec![new.name.clone(), domain.clone(), a.selector.clone(), pem])])?;
                note(&format!("added {} ({} {bits}) to {}", new.name, kind.as_str(), key_table.shown()));
            }
            failpoint("prepare:key-table-written");
            let r = state.get(domain, &a.selector);
            stamp(r, "created", now_unix().into());
            r["name"] = new.name.clone().into();
            r["key_file"] = "".into();
            r["replaces"] = replaces.as_ref().map(|k| k.selector.clone()).into();
            continue;
        }
        // The key: made once (resumed when a crashed run left it), with the owner and mode
        // of the key beside it.
        let loaded = match made.iter().find(|(p, _)| *p == new.file) {
            Some((_, k)) => k.clone(),
            None => {
                let k = if new.file.exists() {
                    let k =
                        load_key(&new.file).map_err(|e| CliError::Config(format!("{}: {e}", new.file.display())))?;
                    if k.key_type() != kind {
                        return Err(CliError::Exists(new.file.clone()).into());
                    }
                    note(&format!("{}: already made; kept", new.file.display()));
                    k
                } else if dry {
                    note(&format!("would make {} ({} {bits})", new.file.display(), kind.as_str()));
                    if cfg.is_tables() {
                        note(&format!("would add {} to the KeyTable", new.name));
                    }
                    continue;
                } else {
                    let g = dkimpress::dkim::genkey::generate(kind, bits)?;
                    let keep = std::fs::metadata(&beside.file).map_or(Keep::mode(0o600), |m| Keep::owner_and_mode(&m));
                    let write = || -> std::io::Result<()> {
                        let mut f = AtomicFile::create(&new.file, &keep)?;
                        f.write_all(g.pem.as_bytes())?;
                        f.commit()
                    };
                    write().map_err(|error| CliError::Create { path: new.file.clone(), error })?;
                    note(&format!("made {} ({} {bits})", new.file.display(), kind.as_str()));
                    g.key
                };
                let k = std::sync::Arc::new(k);
                made.push((new.file.clone(), k.clone()));
                k
            }
        };
        failpoint("prepare:key-written");
        let zone = zone_text(&new, &loaded);
        let txt = dir.join(format!("{}.{}.txt", a.selector, domain));
        if !dry {
            let keep = Keep::mode(0o644);
            let write = || -> std::io::Result<()> {
                let mut f = AtomicFile::create(&txt, &keep)?;
                f.write_all(zone.as_bytes())?;
                f.commit()
            };
            write().map_err(|error| CliError::Create { path: txt.clone(), error })?;
        }
        records.push_str(&zone);
        updates.push((new.record_name(), dkimpress::dkim::genkey::record_value(&loaded, &Default::default())));
        // The KeyTable entry: nothing signs with it until activate changes the SigningTable.
        if let Kind::Tables { key_table, .. } = &mut cfg.kind {
            let exists = key_table.entries().iter().any(|(_, n, _)| n.eq_ignore_ascii_case(&new.name));
            if !exists {
                let file = new.file.display().to_string();
                key_table.lines.push(format!("{} {}:{}:{}", new.name, domain, a.selector, file));
                if dry {
                    note(&format!("would add {} to {}", new.name, key_table.path.display()));
                } else {
                    key_table.save()?;
                    note(&format!("added {} to {}", new.name, key_table.path.display()));
                }
            }
        }
        failpoint("prepare:key-table-written");
        let r = state.get(domain, &a.selector);
        stamp(r, "created", now_unix().into());
        r["name"] = new.name.clone().into();
        r["key_file"] = new.file.display().to_string().into();
        r["replaces"] = replaces.as_ref().map(|k| k.selector.clone()).into();
    }
    if !dry {
        state.save()?;
    }
    write_nsupdate(a.nsupdate.as_deref(), &updates, dry)?;
    out(&records)?;
    note(&format!(
        "publish the record(s) above, then: dkimpress rotate activate --config {} --selector {}",
        a.common.config.display(),
        a.selector
    ));
    Ok(ExitCode::SUCCESS)
}

impl Config {
    /// Whether keys are named in a KeyTable (files or database), not one Domain/Selector/KeyFile.
    fn is_tables(&self) -> bool {
        matches!(self.kind, Kind::Tables { .. } | Kind::Db { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// activate

fn activate(a: &ActivateArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = Config::load(&a.common.config)?;
    let mut state = State::load(cfg.state_path())?;
    let dry = a.common.dry_run;
    let mut records = a.records.clone();
    if records.dns_servers.is_empty() && records.zones.is_empty() && records.key_dirs.is_empty() {
        records.dns_servers = cfg.conf.nameservers.clone();
    }
    let lookup = key_lookup(&records)?;
    // The prepared keys: KeyTable entries (or rotate's records for a single key) with the new
    // selector.
    let new_keys: Vec<Key> = match &cfg.kind {
        Kind::Tables { .. } | Kind::Db { .. } => {
            cfg.keys().into_iter().filter(|k| k.selector.eq_ignore_ascii_case(&a.selector)).collect()
        }
        Kind::Single { domains, .. } => domains
            .iter()
            .filter_map(|d| {
                let r = state.find(d, &a.selector)?;
                Some(Key {
                    name: String::new(),
                    domain: d.clone(),
                    selector: a.selector.clone(),
                    file: PathBuf::from(r["key_file"].as_str()?),
                    inline: None,
                })
            })
            .collect(),
    };
    if new_keys.is_empty() {
        return Err(usage(format!(
            "no key with selector {} in {}: run rotate prepare first",
            a.selector,
            cfg.conf.path.display()
        )));
    }
    // Every record first: nothing changes unless all of them verify.
    let mut missing = vec![];
    for k in &new_keys {
        let loaded = k.load().map_err(|e| CliError::Config(format!("{}: {e}", k.place())))?;
        if let Err(e) = published(&lookup, k, &loaded) {
            missing.push(e);
        }
    }
    if !missing.is_empty() {
        return Err(CliError::Unavailable(format!(
            "not activated, nothing changed: {}; publish the record(s) that rotate prepare printed and try again",
            missing.join("; ")
        ))
        .into());
    }
    let now = now_unix();
    // For each new key: the KeyTable name of the key it replaces (same domain, the selector
    // prepare recorded), or, for a second signature, the names of the domain's keys that sign.
    let plans: Vec<(Key, Option<String>, Vec<String>)> = new_keys
        .iter()
        .map(|k| {
            let replaces = state.find(&k.domain, &k.selector).and_then(|r| r["replaces"].as_str().map(str::to_string));
            let keys = cfg.keys();
            let old = replaces.and_then(|sel| {
                keys.iter()
                    .find(|o| o.domain.eq_ignore_ascii_case(&k.domain) && o.selector.eq_ignore_ascii_case(&sel))
                    .map(|o| o.name.clone())
            });
            let active = cfg.active(&k.domain).into_iter().map(|o| o.name).filter(|n| *n != k.name).collect();
            (k.clone(), old, active)
        })
        .collect();
    let mut switched: Vec<(String, Option<String>)> = vec![];
    // The keys as they are before the switch (the replaced ones' files, for retire).
    let old_keys = cfg.keys();
    let multiple = cfg.conf.multiple_signatures;
    let conf_path = cfg.conf.path.clone();
    // A key that replaces none is a second signature: only MultipleSignatures signs with both.
    if let Some((k, _, _)) = plans.iter().find(|(_, old, _)| old.is_none()).filter(|_| cfg.is_tables() && !multiple) {
        return Err(CliError::Config(format!(
            "{}: the {} key of {} is a second signature: set MultipleSignatures yes first",
            conf_path.display(),
            k.selector,
            k.domain
        ))
        .into());
    }
    match &mut cfg.kind {
        Kind::Tables { signing_table, .. } => {
            let before = signing_table.lines.clone();
            for (k, old, active) in &plans {
                let entries = signing_table.entries();
                if entries.iter().any(|(_, _, v)| v.eq_ignore_ascii_case(&k.name)) {
                    // Already signing (a second run, or one that stopped after the rename): what
                    // it replaced is recorded as out of use, if that was not done.
                    let old_sel = state.find(&k.domain, &k.selector).and_then(|r| r["replaces"].as_str());
                    if old.is_some() {
                        switched.push((k.domain.clone(), old_sel.map(str::to_string)));
                    }
                    continue;
                }
                match old {
                    Some(old_name) => {
                        for (n, pattern, value) in &entries {
                            if value.eq_ignore_ascii_case(old_name) {
                                signing_table.lines[*n] = format!("{pattern} {}", k.name);
                            }
                        }
                        let old_sel = state.find(&k.domain, &k.selector).and_then(|r| r["replaces"].as_str());
                        switched.push((k.domain.clone(), old_sel.map(str::to_string)));
                    }
                    None => {
                        // A second signature: each pattern that signs for the domain now signs
                        // with the new key too, right after it.
                        let mut done: Vec<String> = vec![];
                        for (n, pattern, value) in entries.iter().rev() {
                            if active.iter().any(|a| a.eq_ignore_ascii_case(value))
                                && !done.iter().any(|p| p.eq_ignore_ascii_case(pattern))
                            {
                                signing_table.lines.insert(n + 1, format!("{pattern} {}", k.name));
                                done.push(pattern.clone());
                            }
                        }
                        switched.push((k.domain.clone(), None));
                    }
                }
            }
            if signing_table.lines != before {
                if dry {
                    note(&format!("would rewrite {}", signing_table.path.display()));
                } else {
                    signing_table.save()?;
                    note(&format!("{} now signs with {}", signing_table.path.display(), a.selector));
                }
            }
        }
        Kind::Db { signing_table, signing, .. } => {
            // One transaction: every domain switches, or none.
            let l = writable(signing_table, &[1, 2], "SigningTable")?.clone();
            let (t, kc, dc) = (&l.table, &l.keycol, &l.datacols[0]);
            let mut statements: Vec<(String, Vec<String>)> = vec![];
            for (k, old, active) in &plans {
                let replaces =
                    state.find(&k.domain, &k.selector).and_then(|r| r["replaces"].as_str().map(str::to_string));
                if signing.iter().any(|(_, v)| v.eq_ignore_ascii_case(&k.name)) {
                    if old.is_some() {
                        switched.push((k.domain.clone(), replaces));
                    }
                    continue;
                }
                match (old, active.first()) {
                    (Some(old_name), _) => {
                        statements.push((
                            format!("UPDATE {t} SET {dc} = $1 WHERE lower({dc}::text) = lower($2)"),
                            vec![k.name.clone(), old_name.clone()],
                        ));
                        switched.push((k.domain.clone(), replaces));
                    }
                    (None, Some(first)) => {
                        statements.push((
                            format!(
                                "INSERT INTO {t} ({kc}, {dc}) SELECT DISTINCT {kc}, $1 FROM {t} WHERE lower({dc}::text) = lower($2)"
                            ),
                            vec![k.name.clone(), first.clone()],
                        ));
                        switched.push((k.domain.clone(), None));
                    }
                    (None, None) => {}
                }
            }
            if !statements.is_empty() {
                if dry {
                    note(&format!(
                        "would switch {} rows of {} in one transaction",
                        statements.len(),
                        signing_table.shown()
                    ));
                } else {
                    let rows = signing_table.write(statements)?;
                    note(&format!("{}: {rows} row(s) now sign with {}", signing_table.shown(), a.selector));
                }
            }
        }
        Kind::Single { selector, .. } => {
            if !selector.eq_ignore_ascii_case(&a.selector) {
                let new_file = &new_keys[0].file;
                let old = selector.clone();
                let text = std::fs::read_to_string(&cfg.conf.path)
                    .map_err(|e| CliError::Input { path: cfg.conf.path.clone(), error: e })?;
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                for l in &mut lines {
                    let key = l.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
                    if key == "selector" {
                        *l = format!("Selector {}", a.selector);
                    } else if key == "keyfile" {
                        *l = format!("KeyFile {}", new_file.display());
                    }
                }
                if dry {
                    note(&format!(
                        "would set Selector {} and KeyFile {} in {}",
                        a.selector,
                        new_file.display(),
                        cfg.conf.path.display()
                    ));
                } else {
                    replace_file(&cfg.conf.path, (lines.join("\n") + "\n").as_bytes())?;
                    note(&format!("{} now signs with {}", cfg.conf.path.display(), a.selector));
                }
                for k in &new_keys {
                    switched.push((k.domain.clone(), Some(old.clone())));
                }
            }
        }
    }
    failpoint("activate:signing-switched");
    if dry {
        return Ok(ExitCode::SUCCESS);
    }
    let recorded =
        new_keys.iter().all(|k| state.find(&k.domain, &k.selector).is_some_and(|r| !r["activated"].is_null()))
            && switched.iter().all(|(d, old)| {
                old.as_ref().is_none_or(|o| state.find(d, o).is_some_and(|r| !r["deactivated"].is_null()))
            });
    if recorded {
        note(&format!("{} signs already: nothing to do", a.selector));
        return Ok(ExitCode::SUCCESS);
    }
    for k in &new_keys {
        stamp(state.get(&k.domain, &k.selector), "activated", now.into());
    }
    for (domain, old) in &switched {
        if let Some(old) = old {
            let was =
                old_keys.iter().find(|k| k.domain.eq_ignore_ascii_case(domain) && k.selector.eq_ignore_ascii_case(old));
            let r = state.get(domain, old);
            stamp(r, "deactivated", now.into());
            if let Some(k) = was {
                stamp(r, "name", k.name.clone().into());
                stamp(r, "key_file", k.file.display().to_string().into());
            }
        }
    }
    state.save()?;
    reload_milter(&cfg.conf);
    Ok(ExitCode::SUCCESS)
}

/// Tells a running milter of this configuration (its PidFile) to re-read it: SIGHUP.
fn reload_milter(conf: &OpendkimConf) {
    let Some(pid_file) = &conf.pid_file else {
        note("no PidFile in the configuration: reload the milter yourself (systemctl reload dkimpress-milter)");
        return;
    };
    let pid = std::fs::read_to_string(pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok()).filter(|p| *p > 1);
    match pid {
        Some(pid) if crate::cli::os::send_hangup(pid) => {
            note(&format!("told the milter (pid {pid}, {}) to reload", pid_file.display()))
        }
        _ => note(&format!("no milter running as {} says: nothing to reload", pid_file.display())),
    }
}

// ---------------------------------------------------------------------------------------------
// retire

fn retire(a: &RetireArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = Config::load(&a.common.config)?;
    let mut state = State::load(cfg.state_path())?;
    let dry = a.common.dry_run;
    let now = now_unix();
    let wanted = |d: &str| a.domains.is_empty() || a.domains.iter().any(|w| w.eq_ignore_ascii_case(d));
    let is_old = |k: &Key| k.selector.eq_ignore_ascii_case(&a.selector) && wanted(&k.domain);
    // Keys still listed (the KeyTable; for a single key, rotate's record of the key it replaced).
    let listed: Vec<Key> = match &cfg.kind {
        Kind::Tables { .. } | Kind::Db { .. } => cfg.keys().into_iter().filter(is_old).collect(),
        Kind::Single { .. } => state
            .records
            .iter()
            .filter(|r| r["retired"].is_null())
            .filter_map(|r| {
                Some(Key {
                    name: String::new(),
                    domain: r["domain"].as_str()?.to_string(),
                    selector: r["selector"].as_str()?.to_string(),
                    file: PathBuf::from(r["key_file"].as_str()?),
                    inline: None,
                })
            })
            .filter(is_old)
            .collect(),
    };
    // Keys a run that stopped half-way already took out of the configuration: their files go.
    let unfinished: Vec<Key> = state
        .records
        .iter()
        .filter(|r| !r["retired"].is_null())
        .filter_map(|r| {
            Some(Key {
                name: r["name"].as_str().unwrap_or_default().to_string(),
                domain: r["domain"].as_str()?.to_string(),
                selector: r["selector"].as_str()?.to_string(),
                file: PathBuf::from(r["key_file"].as_str()?),
                inline: None,
            })
        })
        .filter(|k| is_old(k) && k.file.exists() && !listed.iter().any(|l| l.domain.eq_ignore_ascii_case(&k.domain)))
        .collect();
    if listed.is_empty() && unfinished.is_empty() {
        let done = state.records.iter().any(|r| {
            r["selector"].as_str().is_some_and(|s| s.eq_ignore_ascii_case(&a.selector))
                && r["domain"].as_str().is_some_and(wanted)
                && !r["retired"].is_null()
        });
        if done {
            note(&format!("{} is retired already: nothing to do", a.selector));
            return Ok(ExitCode::SUCCESS);
        }
        return Err(usage(format!("no key with selector {} to retire in {}", a.selector, cfg.conf.path.display())));
    }
    // Every check first: nothing is removed unless every key may go.
    for k in &listed {
        let users = cfg.users(k);
        if !users.is_empty() {
            return Err(CliError::Config(format!(
                "{} of {} still signs (used by {}): activate its successor first",
                k.selector,
                k.domain,
                users.join(", ")
            ))
            .into());
        }
        if cfg.active(&k.domain).is_empty() {
            return Err(CliError::Config(format!(
                "{} is the only key of {}: nothing else signs for it, so it is not removed",
                k.selector, k.domain
            ))
            .into());
        }
        let since = state.find(&k.domain, &k.selector).and_then(|r| r["deactivated"].as_u64());
        match since {
            None if a.after > 0 => {
                return Err(CliError::Unavailable(format!(
                    "{} of {}: rotate has no record of when it stopped signing (it records that at activate); \
                     give --after 0 to retire it now",
                    k.selector, k.domain
                ))
                .into())
            }
            Some(t) if now < t + a.after * 86_400 => {
                let days_out = (now - t) / 86_400;
                return Err(CliError::Unavailable(format!(
                    "{} of {}: out of use for {days_out} of the {} days asked (--after): mail signed with it may \
                     still be verified; try again later",
                    k.selector, k.domain, a.after
                ))
                .into());
            }
            _ => {}
        }
    }
    let mut revocations = String::new();
    for k in &listed {
        // Recorded first: a run that stops after the KeyTable changed knows which file to remove.
        if !dry {
            let r = state.get(&k.domain, &k.selector);
            stamp(r, "retired", now.into());
            r["name"] = k.name.clone().into();
            r["key_file"] = k.file.display().to_string().into();
            state.save()?;
        }
        if let Kind::Tables { key_table, .. } = &mut cfg.kind {
            let before = key_table.lines.len();
            let lines: Vec<usize> = key_table
                .entries()
                .into_iter()
                .filter(|(_, n, _)| n.eq_ignore_ascii_case(&k.name))
                .map(|(n, _, _)| n)
                .collect();
            for n in lines.into_iter().rev() {
                key_table.lines.remove(n);
            }
            if key_table.lines.len() != before {
                if dry {
                    note(&format!("would remove {} from {}", k.name, key_table.path.display()));
                } else {
                    key_table.save()?;
                    note(&format!("removed {} from {}", k.name, key_table.path.display()));
                }
            }
        }
        if let Kind::Db { key_table, .. } = &cfg.kind {
            let l = writable(key_table, &[1, 2, 3], "KeyTable")?.clone();
            if dry {
                note(&format!("would remove {} from {}", k.name, key_table.shown()));
            } else {
                if let (Some(pem), Some(dir)) = (&k.inline, &a.archive) {
                    let dest = dir.join(format!("{}.{}.private", k.selector, k.domain));
                    dkimpress::pipeline::io::write_atomic(&dest, &[pem.as_bytes()], 0o600)
                        .map_err(|error| CliError::Create { path: dest.clone(), error })?;
                    note(&format!("saved the key of {} to {}", k.name, dest.display()));
                }
                let sql = format!("DELETE FROM {} WHERE lower({}::text) = lower($1)", l.table, l.keycol);
                key_table.write(vec![(sql, vec![k.name.clone()])])?;
                note(&format!("removed {} from {}", k.name, key_table.shown()));
            }
        }
        failpoint("retire:key-table-written");
        revocations.push_str(&format!("{}. IN TXT \"v=DKIM1; p=\"\n", k.record_name()));
    }
    for k in listed.iter().chain(&unfinished) {
        if k.inline.is_some() || k.file.as_os_str().is_empty() {
            continue; // the key was in its table row, gone with it
        }
        // A file another entry still names stays.
        if cfg.keys().iter().any(|o| o.file == k.file) {
            note(&format!("{}: still named by the KeyTable; kept", k.file.display()));
            continue;
        }
        if dry {
            note(&format!("would remove {}", k.file.display()));
            continue;
        }
        remove_key_file(&k.file, a.archive.as_deref())?;
        if unfinished.iter().any(|u| u.file == k.file) {
            revocations.push_str(&format!("{}. IN TXT \"v=DKIM1; p=\"\n", k.record_name()));
        }
    }
    let updates: Vec<(String, String)> = revocations
        .lines()
        .filter_map(|l| l.split_once(". IN TXT").map(|(name, _)| (name.to_string(), "v=DKIM1; p=".to_string())))
        .collect();
    write_nsupdate(a.nsupdate.as_deref(), &updates, dry)?;
    out(&revocations)?;
    note("publish the record(s) above in place of the old ones (RFC 6376 §3.6.1: an empty p= revokes the key)");
    Ok(ExitCode::SUCCESS)
}

/// Removes a retired key file, or moves it into `archive` (same name; a copy and a removal
/// when the archive is on another file system).
fn remove_key_file(file: &Path, archive: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = archive else {
        return match std::fs::remove_file(file) {
            Ok(()) => {
                note(&format!("removed {}", file.display()));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(CliError::Create { path: file.to_path_buf(), error }.into()),
        };
    };
    if !dir.is_dir() {
        return Err(CliError::NoDirectory { path: dir.to_path_buf(), flag: "--archive" }.into());
    }
    let dest = dir.join(file.file_name().unwrap_or_default());
    if std::fs::rename(file, &dest).is_err() {
        let data = std::fs::read(file).map_err(|e| CliError::Input { path: file.to_path_buf(), error: e })?;
        dkimpress::pipeline::io::write_atomic(&dest, &[&data], 0o600)
            .map_err(|error| CliError::Create { path: dest.clone(), error })?;
        std::fs::remove_file(file).map_err(|error| CliError::Create { path: file.to_path_buf(), error })?;
    }
    note(&format!("moved {} to {}", file.display(), dest.display()));
    Ok(())
}
