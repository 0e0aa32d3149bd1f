//! `dkimpress genkey`: a key pair and its DNS TXT record, like opendkim-genkey.

use crate::cli::args::KeyTypeArg;
use crate::cli::error::{write_failed, CliError};
use clap::ArgAction;
use clap::Args;
use dkimpress::dkim::genkey::RecordOptions;
use dkimpress::dkim::key::KeyType;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct GenkeyArgs {
    /// Domain the key is for (used in the record comment and with --append-domain).
    #[arg(short = 'd', long = "domain", default_value = "example.com")]
    pub(crate) domain: String,
    /// Selector: names the files SELECTOR.private and SELECTOR.txt.
    #[arg(short = 's', long = "selector", default_value = "default")]
    pub(crate) selector: String,
    /// RSA key size in bits (ignored for ed25519).
    #[arg(short = 'b', long = "bits", default_value_t = 2048)]
    pub(crate) bits: usize,
    /// Key type.
    #[arg(long = "type", value_enum, default_value_t = KeyTypeArg::Rsa)]
    pub(crate) key_type: KeyTypeArg,
    /// Directory to write the files into.
    #[arg(short = 'D', long = "directory", default_value = ".")]
    pub(crate) directory: PathBuf,
    /// Restrict the key to email use (s=email).
    #[arg(short = 'r', long = "restrict")]
    pub(crate) restrict: bool,
    /// Allow subdomains of the domain in i= (the default; t=s is not set).
    #[arg(long = "subdomains", overrides_with = "no_subdomains")]
    pub(crate) subdomains: bool,
    /// Do not allow subdomains (t=s).
    #[arg(long = "nosubdomains", alias = "no-subdomains")]
    pub(crate) no_subdomains: bool,
    /// Testing mode (t=y): verifiers treat failures as if unsigned.
    #[arg(short = 't', long = "testmode")]
    pub(crate) testmode: bool,
    /// Hash algorithms allowed with this key (h=), colon-separated; `h=sha256` by default, as
    /// Debian's opendkim-genkey writes it (RFC 8301 forbids rsa-sha1); `-h ''` for none.
    #[arg(short = 'h', long = "hash-algorithms", default_value = "sha256")]
    pub(crate) hash_algorithms: String,
    /// A note for humans in the record (n=).
    #[arg(short = 'n', long = "note")]
    pub(crate) note: Option<String>,
    /// Write the owner name in full: SELECTOR._domainkey.DOMAIN.
    #[arg(short = 'a', long = "append-domain")]
    pub(crate) append_domain: bool,
    /// Overwrite existing SELECTOR.private / SELECTOR.txt.
    #[arg(short = 'f', long = "force")]
    pub(crate) force: bool,
    /// Write the files only: no record on stdout, no summary on stderr.
    #[arg(short = 'q', long = "quiet", conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Also say where to publish the record and how long it is.
    #[arg(short = 'v', long = "verbose")]
    pub(crate) verbose: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub(crate) help: Option<bool>,
}

pub(crate) fn cmd_genkey(a: GenkeyArgs) -> anyhow::Result<ExitCode> {
    let kind = KeyType::from(a.key_type);
    // The record is published under the A-label name (RFC 8616 §3).
    let domain = dkimpress::dkim::tags::to_a_labels(a.domain.trim_end_matches('.')).to_ascii_lowercase();
    // The same checks a signer makes, before spending time on a key.
    dkimpress::dkim::sign::check_names(&domain, &a.selector)?;
    let private = a.directory.join(format!("{}.private", a.selector));
    let txt = a.directory.join(format!("{}.txt", a.selector));
    if !a.force {
        for p in [&private, &txt] {
            if p.exists() {
                return Err(CliError::Exists(p.to_path_buf()).into());
            }
        }
    }
    if !a.directory.is_dir() {
        return Err(CliError::NoDirectory { path: a.directory.clone(), flag: "-D" }.into());
    }
    let g = dkimpress::dkim::genkey::generate(kind, a.bits)?;
    let opts = RecordOptions {
        hashes: Some(a.hash_algorithms.clone()).filter(|h| !h.is_empty()),
        restrict_email: a.restrict,
        no_subdomains: a.no_subdomains && !a.subdomains,
        testing: a.testmode,
        note: a.note.clone(),
    };
    let value = dkimpress::dkim::genkey::record_value(&g.key, &opts);
    let record = dkimpress::dkim::genkey::zone_record(&a.selector, &domain, &value, a.append_domain);
    let fail = |p: &Path, error: std::io::Error| CliError::Create { path: p.to_path_buf(), error };
    dkimpress::pipeline::io::write_atomic(&private, &[g.pem.as_bytes()], 0o600).map_err(|e| fail(&private, e))?;
    dkimpress::pipeline::io::write_atomic(&txt, &[record.as_bytes()], 0o644).map_err(|e| fail(&txt, e))?;
    if a.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    // The keys are written; a stdout that fails (a full disk, /dev/full) is an error, not a panic.
    {
        let mut out = std::io::stdout().lock();
        out.write_all(record.as_bytes()).and_then(|_| out.flush()).map_err(|e| write_failed("stdout", e))?;
    }
    if a.verbose {
        // RFC 1035 §3.3: a TXT character-string holds at most 255 octets.
        eprintln!(
            "dkimpress: publish as TXT at {}._domainkey.{domain}: {} octets, in {} strings of at most 255",
            a.selector,
            value.len(),
            record.matches('"').count() / 2
        );
    }
    eprintln!(
        "dkimpress: wrote {} ({} {} bits, mode 0600) and {}",
        private.display(),
        kind.as_str(),
        g.key.bits(),
        txt.display()
    );
    Ok(ExitCode::SUCCESS)
}
