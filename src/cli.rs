//! The command line: clap definitions, their conversion into one checked configuration per
//! command, and the commands themselves. Nothing after [`run`] parses argv or reads the
//! environment; the DKIM core (`canon`, `header`, `sign`, `key`) never sees clap types.
//!
//! Exit codes (sysexits.h) are decided in one place, [`exit_code`].

use crate::canon::Canonicalization;
use crate::genkey::{self, RecordOptions};
use crate::header::HeaderError;
use crate::key::{KeyError, KeyType, SigningKey};
use crate::sign::{self, SignError, Signer, SignerBuilder, SignerConfigError};
use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// sysexits.h codes used by dkimpress.
pub mod sysexits {
    /// Command line usage error.
    pub const USAGE: u8 = 64;
    /// The input is not a message we can sign.
    pub const DATAERR: u8 = 65;
    /// An input file does not exist or cannot be read.
    pub const NOINPUT: u8 = 66;
    /// Internal software error.
    pub const SOFTWARE: u8 = 70;
    /// An output file cannot be created.
    pub const CANTCREAT: u8 = 73;
    /// An I/O error on output.
    pub const IOERR: u8 = 74;
    /// Temporary failure: try again later (Postfix defers).
    pub const TEMPFAIL: u8 = 75;
    /// Configuration error (keys, settings).
    pub const CONFIG: u8 = 78;
}

/// dkimpress: fast DKIM signing (RFC 6376, RFC 8463, RFC 8301).
#[derive(Parser, Debug)]
#[command(name = "dkimpress", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sign one message (stdin or a file) and write it with DKIM-Signature field(s) on top.
    Sign(SignArgs),
    /// Generate a key pair and its DNS TXT record, like opendkim-genkey.
    #[command(disable_help_flag = true)]
    Genkey(GenkeyArgs),
}

#[derive(Args, Debug)]
struct SignArgs {
    /// Signing domain (d=). Give once for all keys, or once per -k.
    #[arg(short = 'd', long = "domain", value_name = "DOMAIN", required = true)]
    domains: Vec<String>,
    /// Selector (s=). Give once for all keys, or once per -k.
    #[arg(short = 's', long = "selector", value_name = "SELECTOR", required = true)]
    selectors: Vec<String>,
    /// Private key file (PEM or DER; RSA or Ed25519). Repeat for several signatures.
    #[arg(short = 'k', long = "key", value_name = "KEYFILE", required = true)]
    keys: Vec<PathBuf>,
    /// Signature algorithm; checked against the key (rsa-sha256 or ed25519-sha256).
    #[arg(short = 'a', long = "algorithm", value_name = "ALG")]
    algorithm: Option<String>,
    /// Canonicalization header/body: simple or relaxed each.
    #[arg(short = 'c', long = "canonicalization", value_name = "H/B", default_value = "relaxed/relaxed")]
    canon: Canonicalization,
    /// Header fields to sign, colon- or comma-separated (default: RFC 6376 §5.4.1 list and
    /// Message-ID, MIME-Version, Content-Type, Content-Transfer-Encoding).
    #[arg(long = "headers", value_name = "LIST")]
    headers: Option<String>,
    /// Header fields to sign once more than present (oversigning); empty string for none.
    #[arg(long = "oversign", value_name = "LIST", default_value = "from")]
    oversign: String,
    /// Agent or user identifier (i=), an address at the signing domain or a subdomain.
    #[arg(short = 'i', long = "identity", value_name = "ADDR")]
    identity: Option<String>,
    /// Add l= with the canonicalized body length (risky: RFC 6376 §8.2).
    #[arg(long = "body-length")]
    body_length: bool,
    /// Signature lifetime in seconds (x= = t= + SECONDS).
    #[arg(short = 'x', long = "expire", value_name = "SECONDS")]
    expire: Option<u64>,
    /// Refuse key files readable by group or others (default: warn).
    #[arg(long = "strict-keys")]
    strict_keys: bool,
    /// Write the signed message here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Fixed signing time (Unix seconds), for reproducible output in tests.
    #[arg(long = "timestamp", value_name = "UNIX", hide = true)]
    timestamp: Option<u64>,
    /// One message file, or - (default) for stdin.
    #[arg(value_name = "INPUT")]
    input: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct GenkeyArgs {
    /// Domain the key is for (used in the record comment and with --append-domain).
    #[arg(short = 'd', long = "domain", default_value = "example.com")]
    domain: String,
    /// Selector: names the files SELECTOR.private and SELECTOR.txt.
    #[arg(short = 's', long = "selector", default_value = "default")]
    selector: String,
    /// RSA key size in bits (ignored for ed25519).
    #[arg(short = 'b', long = "bits", default_value_t = 2048)]
    bits: usize,
    /// Key type.
    #[arg(long = "type", value_parser = ["rsa", "ed25519"], default_value = "rsa")]
    key_type: String,
    /// Directory to write the files into.
    #[arg(short = 'D', long = "directory", default_value = ".")]
    directory: PathBuf,
    /// Restrict the key to email use (s=email).
    #[arg(short = 'r', long = "restrict")]
    restrict: bool,
    /// Allow subdomains of the domain in i= (the default; t=s is not set).
    #[arg(long = "subdomains", overrides_with = "no_subdomains")]
    subdomains: bool,
    /// Do not allow subdomains (t=s).
    #[arg(long = "nosubdomains", alias = "no-subdomains")]
    no_subdomains: bool,
    /// Testing mode (t=y): verifiers treat failures as if unsigned.
    #[arg(short = 't', long = "testmode")]
    testmode: bool,
    /// Hash algorithms allowed with this key (h=), colon-separated, e.g. sha256.
    #[arg(short = 'h', long = "hash-algorithms")]
    hash_algorithms: Option<String>,
    /// A note for humans in the record (n=).
    #[arg(short = 'n', long = "note")]
    note: Option<String>,
    /// Write the owner name in full: SELECTOR._domainkey.DOMAIN.
    #[arg(short = 'a', long = "append-domain")]
    append_domain: bool,
    /// Overwrite existing SELECTOR.private / SELECTOR.txt.
    #[arg(short = 'f', long = "force")]
    force: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    help: Option<bool>,
}

/// An error with a chosen exit code, for cases no typed error covers.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// sysexits code.
    pub code: u8,
    /// What happened, naming the file or flag.
    pub message: String,
}

fn exit(code: u8, message: impl Into<String>) -> anyhow::Error {
    Exit { code, message: message.into() }.into()
}

/// Maps an error to its exit code: the one place that does (STYLE.md).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Exit>() {
            return e.code;
        }
        if cause.is::<HeaderError>() {
            return sysexits::DATAERR;
        }
        if let Some(e) = cause.downcast_ref::<SignError>() {
            return match e {
                SignError::Header(_) | SignError::NoFrom => sysexits::DATAERR,
                SignError::Key(_) => sysexits::SOFTWARE,
            };
        }
        if let Some(e) = cause.downcast_ref::<KeyError>() {
            return match e {
                KeyError::Sign => sysexits::SOFTWARE,
                _ => sysexits::CONFIG,
            };
        }
        if cause.is::<SignerConfigError>() || cause.is::<genkey::GenKeyError>() {
            return sysexits::CONFIG;
        }
    }
    sysexits::SOFTWARE
}

/// Whether the error is a closed output pipe (the reader went away).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Parses `args` and runs the command.
pub fn run<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            let code = match e.kind() {
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => sysexits::USAGE,
            };
            let _ = e.print();
            return Ok(ExitCode::from(code));
        }
    };
    match cli.command {
        Command::Sign(a) => cmd_sign(SignConfig::from_args(a)?),
        Command::Genkey(a) => cmd_genkey(a),
    }
}

/// Everything `sign` needs, checked.
struct SignConfig {
    signers: Vec<Signer>,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    timestamp: Option<u64>,
}

/// Splits a header-name list given as `a:b:c` or `a, b, c`.
fn split_list(s: &str) -> Vec<String> {
    s.split([':', ',']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The n-th of a repeated option given once for all, or once per key.
fn nth<'a>(values: &'a [String], n: usize, flag: &str, keys: usize) -> anyhow::Result<&'a str> {
    match values.len() {
        1 => Ok(&values[0]),
        len if len == keys => Ok(&values[n]),
        len => Err(exit(
            sysexits::USAGE,
            format!("{flag} given {len} times for {keys} keys (-k): give it once for all keys, or once per key"),
        )),
    }
}

impl SignConfig {
    fn from_args(a: SignArgs) -> anyhow::Result<SignConfig> {
        let mut loaded: Vec<(PathBuf, Arc<SigningKey>)> = vec![];
        let mut signers = vec![];
        for (n, path) in a.keys.iter().enumerate() {
            let key = match loaded.iter().find(|(p, _)| p == path) {
                Some((_, k)) => k.clone(),
                None => {
                    let (key, warning) = SigningKey::from_path(path, a.strict_keys)?;
                    if let Some(w) = warning {
                        eprintln!("dkimpress: warning: {w}");
                    }
                    let key = Arc::new(key);
                    loaded.push((path.clone(), key.clone()));
                    key
                }
            };
            let domain = nth(&a.domains, n, "-d/--domain", a.keys.len())?;
            let selector = nth(&a.selectors, n, "-s/--selector", a.keys.len())?;
            let mut b = SignerBuilder::new(key, domain, selector)
                .canon(a.canon)
                .oversigned_headers(split_list(&a.oversign))
                .identity(a.identity.clone())
                .body_length(a.body_length)
                .expire(a.expire)
                .algorithm(a.algorithm.clone());
            if let Some(h) = &a.headers {
                b = b.signed_headers(split_list(h));
            }
            signers.push(b.build()?);
        }
        let input = a.input.filter(|p| p.as_os_str() != "-");
        Ok(SignConfig { signers, input, output: a.output, timestamp: a.timestamp })
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn cmd_sign(cfg: SignConfig) -> anyhow::Result<ExitCode> {
    let (name, msg) = match &cfg.input {
        None => {
            let mut buf = Vec::with_capacity(64 * 1024);
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| exit(sysexits::TEMPFAIL, format!("stdin: read failed: {e}")))?;
            ("stdin".to_string(), buf)
        }
        Some(p) => {
            let data = std::fs::read(p).map_err(|e| exit(sysexits::NOINPUT, format!("{}: {e}", p.display())))?;
            (p.display().to_string(), data)
        }
    };
    let now = cfg.timestamp.unwrap_or_else(now_unix);
    let headers = sign::sign_slice(&cfg.signers, &msg, now).with_context(|| format!("{name}: cannot sign"))?;
    match &cfg.output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&headers)
                .and_then(|_| out.write_all(&msg))
                .and_then(|_| out.flush())
                .context("stdout: write failed")?;
        }
        Some(p) => write_file_atomic(p, &[&headers, &msg], 0o644)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `parts` to `path` through a temporary file in the same directory, fsync, rename:
/// a reader never sees a half-written file.
fn write_file_atomic(path: &Path, parts: &[&[u8]], mode: u32) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fail = |e: std::io::Error| exit(sysexits::CANTCREAT, format!("{}: cannot write: {e}", path.display()));
    let mut tmp = tempfile::Builder::new().prefix(".dkimpress-").tempfile_in(&dir).map_err(fail)?;
    for p in parts {
        tmp.write_all(p).map_err(fail)?;
    }
    tmp.as_file().sync_all().map_err(fail)?;
    set_mode(tmp.path(), mode).map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

fn cmd_genkey(a: GenkeyArgs) -> anyhow::Result<ExitCode> {
    let kind = if a.key_type == "ed25519" { KeyType::Ed25519 } else { KeyType::Rsa };
    let domain = a.domain.trim_end_matches('.').to_ascii_lowercase();
    // The same checks a signer makes, before spending time on a key.
    sign::check_names(&domain, &a.selector)?;
    let private = a.directory.join(format!("{}.private", a.selector));
    let txt = a.directory.join(format!("{}.txt", a.selector));
    if !a.force {
        for p in [&private, &txt] {
            if p.exists() {
                return Err(exit(
                    sysexits::CANTCREAT,
                    format!("{}: already exists; keep it, or pass --force to replace it", p.display()),
                ));
            }
        }
    }
    if !a.directory.is_dir() {
        return Err(exit(sysexits::CANTCREAT, format!("{}: no such directory (-D)", a.directory.display())));
    }
    let g = genkey::generate(kind, a.bits)?;
    let opts = RecordOptions {
        hashes: a.hash_algorithms.clone(),
        restrict_email: a.restrict,
        no_subdomains: a.no_subdomains && !a.subdomains,
        testing: a.testmode,
        note: a.note.clone(),
    };
    let value = genkey::record_value(&g.key, &opts);
    let record = genkey::zone_record(&a.selector, &domain, &value, a.append_domain);
    write_file_atomic(&private, &[g.pem.as_bytes()], 0o600)?;
    write_file_atomic(&txt, &[record.as_bytes()], 0o644)?;
    print!("{record}");
    eprintln!(
        "dkimpress: wrote {} ({} {} bits, mode 0600) and {}",
        private.display(),
        kind.as_str(),
        g.key.bits(),
        txt.display()
    );
    Ok(ExitCode::SUCCESS)
}
