//! `dkimpress testkey`: every configured key against its DNS (or zone file) record, like opendkim-
//! testkey.

use crate::cli::args::{RecordArgs, ReportFormat};
use crate::cli::conf::split_list;
use crate::cli::error::{usage, write_failed, CliError};
use crate::cli::keys::key_lookup;
use clap::Args;
use dkimpress::dkim::canon::Canonicalization;
use dkimpress::dkim::key::{KeyType, SigningKey};
use dkimpress::dkim::verify::{KeyLookup, LookupError};
use dkimpress::pipeline;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub(crate) struct TestkeyArgs {
    /// Signing domain of the key to test (with -s and -k).
    #[arg(short = 'd', long = "domain", value_name = "DOMAIN", requires_all = ["selector", "key"])]
    pub(crate) domain: Option<String>,
    /// Selector.
    #[arg(short = 's', long = "selector", value_name = "SELECTOR")]
    pub(crate) selector: Option<String>,
    /// Private key file.
    #[arg(short = 'k', long = "key", value_name = "KEYFILE")]
    pub(crate) key: Option<PathBuf>,
    /// Test every key of this opendkim.conf (KeyTable, or Domain/Selector/KeyFile).
    #[arg(long = "config", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Test every key of this KeyTable data set.
    #[arg(long = "key-table", value_name = "DATASET")]
    pub(crate) key_table: Option<String>,
    #[command(flatten)]
    pub(crate) records: RecordArgs,
    /// Output: text (a line per key) or json (a JSON object per line).
    #[arg(long = "report", value_name = "FORMAT", value_enum, default_value_t = ReportFormat::Text)]
    pub(crate) report: ReportFormat,
    /// Print only the keys that fail.
    #[arg(short = 'q', long = "quiet", conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Also print each key record checked.
    #[arg(short = 'v', long = "verbose")]
    pub(crate) verbose: bool,
}

/// Whether the public key in a key record value is the public half of `key`.
pub(crate) fn record_matches(record: &[u8], key: &SigningKey) -> Result<(), String> {
    // The reasons quote the record, which comes from the DNS: its control characters are
    // replaced before the reason reaches a terminal or a JSON report.
    matches_key(record, key).map_err(|e| dkimpress::pipeline::sanitize(&e))
}

fn matches_key(record: &[u8], key: &SigningKey) -> Result<(), String> {
    use base64::Engine as _;
    // The record must be usable as a verifier would read it (not revoked, right syntax).
    dkimpress::dkim::verify::parse_key_record(record).map_err(|e| e.to_string())?;
    let tags = dkimpress::dkim::tags::parse(record).map_err(|e| format!("key record syntax error: {e}"))?;
    let p = tags.iter().find(|(n, _)| *n == "p").map(|(_, v)| &**v).unwrap_or_default();
    let p = base64::engine::general_purpose::STANDARD.decode(p).map_err(|_| "p= is not base64".to_string())?;
    let ours = key.public_key_record_bytes();
    let same = match key.key_type() {
        KeyType::Ed25519 => p == ours,
        KeyType::Rsa => {
            dkimpress::dkim::verify::rsa_modulus(&p).is_some()
                && dkimpress::dkim::verify::rsa_modulus(&p) == dkimpress::dkim::verify::rsa_modulus(&ours)
        }
    };
    if !same {
        return Err("MISMATCH: the record holds a different public key than the private key".into());
    }
    Ok(())
}

pub(crate) fn cmd_testkey(a: TestkeyArgs) -> anyhow::Result<ExitCode> {
    let mut keys = KeysToTest::default();
    if let Some(kt) = &a.key_table {
        keys.add_table(kt, Path::new("."))?;
    }
    let mut records = a.records.clone();
    if let Some(p) = &a.config {
        let c = crate::cli::conf::OpendkimConf::load(p)?;
        // The file's Nameservers, as opendkim-testkey reads them (and our milter), unless the
        // command line names servers or asks for offline records only.
        if records.dns_servers.is_empty() && records.zones.is_empty() && records.key_dirs.is_empty() {
            records.dns_servers = c.nameservers.clone();
        }
        keys.add_conf(&c)?;
    }
    if let (Some(d), Some(s), Some(k)) = (&a.domain, &a.selector, &a.key) {
        keys.add(d, s, load_key(k));
    }
    if keys.0.is_empty() {
        return Err(usage("nothing to test: give -d -s -k, --key-table, or --config"));
    }
    let lookup = key_lookup(&records)?;
    let mut bad = 0;
    for key in &keys.0 {
        let checked = key.check(&lookup);
        if checked.verdict.is_err() {
            bad += 1;
        }
        print_checked(&a, key, &checked)?;
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// One key to test.
struct Tested {
    /// How the report names it: its KeyTable name, or `selector._domainkey.domain`.
    label: String,
    domain: String,
    selector: String,
    /// The key, or the reason it cannot be loaded.
    key: Result<Arc<SigningKey>, String>,
}

/// The outcome of testing one key.
struct Checked {
    /// Where its record is looked up: `selector._domainkey.domain`.
    name: String,
    /// What the key is (and any warning) when a record holds its public half, else why not.
    verdict: Result<String, String>,
    /// The last record compared with the key (sanitized), if any.
    record: Option<String>,
}

impl Tested {
    /// Looks up the key's record and compares it with the key: the first TXT record that
    /// matches passes.
    fn check(&self, lookup: &impl KeyLookup) -> Checked {
        let name = format!("{}._domainkey.{}", self.selector, self.domain);
        let mut record: Option<String> = None;
        let verdict = match &self.key {
            Err(e) => Err(format!("cannot load the private key: {e}")),
            Ok(key) => match lookup.txt(&name) {
                Err(LookupError::NotFound) => Err(format!("no TXT record at {name}")),
                Err(LookupError::Temporary(e)) => Err(format!("lookup of {name} failed: {e}")),
                Ok(records) => {
                    let mut result = Err(format!("no TXT record at {name}"));
                    for r in &records {
                        record = Some(pipeline::sanitize(&String::from_utf8_lossy(r)));
                        result = record_matches(r, key).map(|()| {
                            format!("{} {} bits{}", key.key_type().as_str(), key.bits(), record_notes(r, key))
                        });
                        if result.is_ok() {
                            break;
                        }
                    }
                    result
                }
            },
        };
        Checked { name, verdict, record }
    }
}

/// The keys to test, in the order given: `--key-table`, `--config`, then `-d -s -k`.
#[derive(Default)]
struct KeysToTest(Vec<Tested>);

impl KeysToTest {
    /// Every key of a KeyTable data set (file names in it relative to `base`); a key that
    /// cannot be read is listed with the reason.
    fn add_table(&mut self, kt: &str, base: &Path) -> anyhow::Result<()> {
        let template = dkimpress::select::Template {
            canon: Canonicalization::default(),
            headers: None,
            oversign: vec!["from".into()],
            body_length: false,
            expire: None,
            algorithm: None,
            min_bits: dkimpress::dkim::key::MIN_RSA_BITS,
            strict_keys: false,
            identity: None,
        };
        let db = dkimpress::select::DbSettings::default();
        let t = dkimpress::select::Tables::open(kt, "csl:", false, template, base, db)?;
        let names = t.key_names()?;
        if names.is_empty() {
            return Err(CliError::Config(format!("{}: no keys in the KeyTable", dkimpress::select::redact(kt))).into());
        }
        for name in names {
            match t.entry(&name) {
                Ok((d, s, k)) => self.0.push(Tested { label: name, domain: d, selector: s, key: Ok(k) }),
                Err(e) => self.0.push(Tested {
                    label: name,
                    domain: String::new(),
                    selector: String::new(),
                    key: Err(e.to_string()),
                }),
            }
        }
        Ok(())
    }

    /// The keys of an opendkim.conf: its KeyTable, or its one key for each of its Domains.
    fn add_conf(&mut self, c: &crate::cli::conf::OpendkimConf) -> anyhow::Result<()> {
        // `load` refuses a file that names no keys: it is tables or a single key.
        use crate::cli::conf::Signing;
        if let Signing::Tables { key_table, .. } = &c.signing {
            self.add_table(key_table, &c.dir)?;
        } else if let Signing::Single { domain, selector, key_file } = &c.signing {
            let key = load_key(key_file);
            for dom in split_list(domain) {
                self.add(&dom, selector, key.clone());
            }
        }
        Ok(())
    }

    /// One key, looked up under the A-label name of its domain (RFC 8616 §3).
    fn add(&mut self, domain: &str, selector: &str, key: Result<Arc<SigningKey>, String>) {
        let domain = dkimpress::dkim::tags::to_a_labels(domain).to_ascii_lowercase();
        let label = format!("{selector}._domainkey.{domain}");
        self.0.push(Tested { label, domain, selector: selector.to_string(), key });
    }
}

/// A private key file, or why it cannot be loaded.
fn load_key(path: &Path) -> Result<Arc<SigningKey>, String> {
    SigningKey::from_path(path, false).map(|(k, _)| Arc::new(k)).map_err(|e| e.to_string())
}

/// Prints the report of one key: a JSON object, or a line of text (none for a key that passes
/// under `--quiet`) and with `--verbose` the record checked.
fn print_checked(a: &TestkeyArgs, key: &Tested, checked: &Checked) -> anyhow::Result<()> {
    let Checked { name, verdict, record } = checked;
    let label = &key.label;
    let line = match (a.report, verdict) {
        (ReportFormat::Json, _) => serde_json::json!({
            "key": label, "name": name, "result": if verdict.is_ok() { "ok" } else { "fail" },
            "detail": verdict.as_ref().unwrap_or_else(|e| e), "record": record,
        })
        .to_string(),
        _ if a.quiet && verdict.is_ok() => return Ok(()),
        (ReportFormat::Text, Ok(what)) => format!("{label}: OK ({name}, {what})"),
        (ReportFormat::Text, Err(why)) => format!("{label}: {why}"),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").map_err(|e| write_failed("stdout", e))?;
    if a.verbose && a.report == ReportFormat::Text {
        if let Some(r) = record {
            writeln!(out, "  record: {r}").map_err(|e| write_failed("stdout", e))?;
        }
    }
    Ok(())
}

/// What deserves a look in a record that matches: testing mode, a short RSA key, no `h=`
/// restriction (opendkim-testkey reports the first two too).
fn record_notes(record: &[u8], key: &SigningKey) -> String {
    let mut notes = vec![];
    let tags = dkimpress::dkim::tags::parse(record).unwrap_or_default();
    let get = |n: &str| tags.iter().find(|(t, _)| *t == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    if get("t").is_some_and(|t| t.split(':').any(|f| f == "y")) {
        notes.push("testing mode t=y: verifiers treat failures as unsigned; remove it once mail verifies".to_string());
    }
    if key.key_type() == KeyType::Rsa && key.bits() < 2048 {
        notes.push(format!("{} bits: RFC 8301 allows it, but use 2048 (dkimpress genkey -b 2048)", key.bits()));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!("; warning: {}", notes.join("; "))
    }
}
