//! `dkimpress testkey`: every configured key against its DNS (or zone file) record, like opendkim-
//! testkey.

use crate::cli::args::{RecordArgs, ReportFormat};
use crate::cli::conf::split_list;
use crate::cli::error::{usage, write_failed, CliError};
use crate::cli::keys::key_lookup;
use clap::Args;
use dkimpress::dkim::canon::Canonicalization;
use dkimpress::dkim::key::{KeyType, SigningKey};
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
    use base64::Engine as _;
    // The record must be usable as a verifier would read it (not revoked, right syntax).
    dkimpress::dkim::verify::parse_key_record(record).map_err(|e| e.to_string())?;
    let tags = dkimpress::dkim::tags::parse(record).map_err(|e| format!("key record syntax error: {e}"))?;
    let p = tags.iter().find(|(n, _)| n == "p").map(|(_, v)| v.clone()).unwrap_or_default();
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
    use dkimpress::dkim::verify::LookupError;
    // (label, domain, selector, key or the reason it cannot be loaded)
    type Tested = (String, String, String, Result<Arc<SigningKey>, String>);
    let mut keys: Vec<Tested> = vec![];
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
    let mut add_table = |kt: &str, base: &Path| -> anyhow::Result<()> {
        let t = dkimpress::select::Tables::open(kt, "csl:", false, template.clone(), base, db)?;
        let names = t.key_names()?;
        if names.is_empty() {
            return Err(CliError::Config(format!("{}: no keys in the KeyTable", dkimpress::select::redact(kt))).into());
        }
        for name in names {
            match t.entry(&name) {
                Ok((d, s, k)) => keys.push((name.clone(), d, s, Ok(k))),
                Err(e) => keys.push((name.clone(), String::new(), String::new(), Err(e.to_string()))),
            }
        }
        Ok(())
    };
    if let Some(kt) = &a.key_table {
        add_table(kt, Path::new("."))?;
    }
    let mut records = a.records.clone();
    if let Some(p) = &a.config {
        let c = crate::cli::conf::OpendkimConf::load(p)?;
        // The file's Nameservers, as opendkim-testkey reads them (and our milter), unless the
        // command line names servers or asks for offline records only.
        if records.dns_servers.is_empty() && records.zones.is_empty() && records.key_dirs.is_empty() {
            records.dns_servers = c.nameservers.clone();
        }
        // `load` refuses a file that names no keys: it is tables or a single key.
        use crate::cli::conf::Signing;
        if let Signing::Tables { key_table, .. } = &c.signing {
            add_table(key_table, &c.dir)?;
        } else if let Signing::Single { domain, selector: s, key_file } = &c.signing {
            let key = SigningKey::from_path(key_file, false).map(|(k, _)| Arc::new(k)).map_err(|e| e.to_string());
            for dom in split_list(domain) {
                let dom = dkimpress::dkim::tags::to_a_labels(&dom).to_ascii_lowercase();
                keys.push((format!("{s}._domainkey.{dom}"), dom, s.clone(), key.clone()));
            }
        }
    }
    if let (Some(d), Some(s), Some(k)) = (&a.domain, &a.selector, &a.key) {
        // Looked up under the A-label name (RFC 8616 §3).
        let d = &dkimpress::dkim::tags::to_a_labels(d).to_ascii_lowercase();
        let key = SigningKey::from_path(k, false).map(|(k, _)| Arc::new(k)).map_err(|e| e.to_string());
        keys.push((format!("{s}._domainkey.{d}"), d.clone(), s.clone(), key));
    }
    if keys.is_empty() {
        return Err(usage("nothing to test: give -d -s -k, --key-table, or --config"));
    }
    let lookup = key_lookup(&records)?;
    let mut bad = 0;
    for (label, domain, selector, key) in &keys {
        let name = format!("{selector}._domainkey.{domain}");
        // The verdict, and the record it is about.
        let mut checked: Option<String> = None;
        let verdict = match key {
            Err(e) => Err(format!("cannot load the private key: {e}")),
            Ok(key) => match dkimpress::dkim::verify::KeyLookup::txt(&lookup, &name) {
                Err(LookupError::NotFound) => Err(format!("no TXT record at {name}")),
                Err(LookupError::Temporary(e)) => Err(format!("lookup of {name} failed: {e}")),
                Ok(records) => {
                    let mut result = Err(format!("no TXT record at {name}"));
                    for r in &records {
                        checked = Some(pipeline::sanitize(&String::from_utf8_lossy(r)));
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
        if verdict.is_err() {
            bad += 1;
        }
        let line = match (a.report, &verdict) {
            (ReportFormat::Json, _) => serde_json::json!({
                "key": label, "name": name, "result": if verdict.is_ok() { "ok" } else { "fail" },
                "detail": verdict.as_ref().unwrap_or_else(|e| e), "record": checked,
            })
            .to_string(),
            _ if a.quiet && verdict.is_ok() => continue,
            (ReportFormat::Text, Ok(what)) => format!("{label}: OK ({name}, {what})"),
            (ReportFormat::Text, Err(why)) => format!("{label}: {why}"),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").map_err(|e| write_failed("stdout", e))?;
        if a.verbose && a.report == ReportFormat::Text {
            if let Some(r) = &checked {
                writeln!(out, "  record: {r}").map_err(|e| write_failed("stdout", e))?;
            }
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What deserves a look in a record that matches: testing mode, a short RSA key, no `h=`
/// restriction (opendkim-testkey reports the first two too).
fn record_notes(record: &[u8], key: &SigningKey) -> String {
    let mut notes = vec![];
    let tags = dkimpress::dkim::tags::parse(record).unwrap_or_default();
    let get = |n: &str| tags.iter().find(|(t, _)| t == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
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
