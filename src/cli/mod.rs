//! The command line: clap definitions, their conversion into one checked configuration per
//! command, and the commands themselves. Nothing after [`run`] parses argv or reads the
//! environment; the DKIM core (`canon`, `header`, `sign`, `key`) never sees clap types.
//!
//! Exit codes (sysexits.h) are decided in one place, [`exit_code`].

pub mod bench;
pub mod conf;
pub mod mta;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use dkimpress::dkim::canon::Canonicalization;
use dkimpress::dkim::genkey::{self, RecordOptions};
use dkimpress::dkim::header::HeaderError;
use dkimpress::dkim::key::{KeyError, KeyType, SigningKey};
use dkimpress::dkim::sign::{self, SignError, SignerConfigError};
use dkimpress::pipeline::mbox::MboxFormat;
use dkimpress::pipeline::{self, BulkError, BulkOptions, DirOutput, InputKind, Progress, Summary};
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
    /// Stopped by SIGINT/SIGTERM (128 + 2, the shell convention).
    pub const INTERRUPTED: u8 = 130;
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
    /// Verify the DKIM signatures of messages: stdin, message files, mboxes, maildirs, queue
    /// directories. Exit 0 only when every message passes.
    Verify(VerifyArgs),
    /// Postfix pipe filter: sign the message on stdin and re-inject it through the command
    /// after `--` (e.g. /usr/sbin/sendmail -G -i -f ${sender} -- ${recipient}).
    Filter(FilterArgs),
    /// Measure each stage and the whole pipeline next to the machine's limits.
    Bench(BenchArgs),
    /// Check that the DNS key records match the private keys, like opendkim-testkey.
    Testkey(TestkeyArgs),
    /// Generate a key pair and its DNS TXT record, like opendkim-genkey.
    #[command(disable_help_flag = true)]
    Genkey(GenkeyArgs),
}

/// The options that choose keys and tags: shared by `sign` and `filter`.
#[derive(Args, Debug, Default)]
struct KeyArgs {
    /// Signing domain (d=). Give once for all keys, or once per -k.
    #[arg(short = 'd', long = "domain", value_name = "DOMAIN")]
    domains: Vec<String>,
    /// Selector (s=). Give once for all keys, or once per -k.
    #[arg(short = 's', long = "selector", value_name = "SELECTOR")]
    selectors: Vec<String>,
    /// Private key file (PEM or DER; RSA or Ed25519). Repeat for several signatures.
    #[arg(short = 'k', long = "key", value_name = "KEYFILE")]
    keys: Vec<PathBuf>,
    /// An opendkim.conf: Domain/Selector/KeyFile or KeyTable/SigningTable, Canonicalization,
    /// SignHeaders, OversignHeaders, SubDomains, MultipleSignatures, ... (flags given here win).
    #[arg(long = "config", value_name = "FILE", conflicts_with_all = ["keys", "key_table"])]
    config: Option<PathBuf>,
    /// OpenDKIM KeyTable data set (file, refile:, dsn:pgsql://...).
    #[arg(long = "key-table", value_name = "DATASET", requires = "signing_table", conflicts_with = "keys")]
    key_table: Option<String>,
    /// OpenDKIM SigningTable data set (file, refile:, dsn:pgsql://...).
    #[arg(long = "signing-table", value_name = "DATASET", requires = "key_table")]
    signing_table: Option<String>,
    /// With tables: apply every matching SigningTable entry, not just the first.
    #[arg(long = "multiple-signatures")]
    multiple_signatures: bool,
    /// Choose the key by this envelope sender instead of the From address.
    #[arg(long = "sender", value_name = "ADDR")]
    sender: Option<String>,
    /// Say more on stderr (ignored configuration keys, messages without a key).
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Signature algorithm; checked against the key (rsa-sha256 or ed25519-sha256).
    #[arg(short = 'a', long = "algorithm", value_name = "ALG")]
    algorithm: Option<String>,
    /// Canonicalization header/body: simple or relaxed each [default: relaxed/relaxed].
    #[arg(short = 'c', long = "canonicalization", value_name = "H/B")]
    canon: Option<Canonicalization>,
    /// Header fields to sign, colon- or comma-separated (default: RFC 6376 §5.4.1 list and
    /// Message-ID, MIME-Version, Content-Type, Content-Transfer-Encoding).
    #[arg(long = "headers", value_name = "LIST")]
    headers: Option<String>,
    /// Header fields to sign once more than present (oversigning); empty string for none
    /// [default: from].
    #[arg(long = "oversign", value_name = "LIST")]
    oversign: Option<String>,
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
    /// Seconds a PostgreSQL data set may take to connect or answer a query, then exit 75
    /// [default: 10].
    #[arg(long = "db-timeout", value_name = "SECS")]
    db_timeout: Option<f64>,
    /// Fixed signing time (Unix seconds), for reproducible output in tests.
    #[arg(long = "timestamp", value_name = "UNIX", hide = true)]
    timestamp: Option<u64>,
}

#[derive(Args, Debug)]
struct SignArgs {
    #[command(flatten)]
    k: KeyArgs,
    /// Write the result here: a file for a message or an mbox (same flavour), a directory for a
    /// maildir or queue directory (same file names). Default: stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE|DIR", conflicts_with = "in_place")]
    output: Option<PathBuf>,
    /// Replace each input atomically (temporary file, fsync, rename; per file for directories).
    #[arg(long = "in-place")]
    in_place: bool,
    #[command(flatten)]
    input: InputArgs,
    /// Remove existing DKIM-Signature fields whose d= is a domain we sign for (key rotation);
    /// other domains' signatures are always kept.
    #[arg(long = "strip-own")]
    strip_own: bool,
    /// Final report format for archives: text (stderr) or json.
    #[arg(long = "report", value_name = "FORMAT", value_parser = ["text", "json"], default_value = "text")]
    report: String,
    /// No progress bar and no text summary.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Messages to sign: mbox files, maildirs, queue directories or message files; none or -
    /// for one message on stdin.
    #[arg(value_name = "INPUT")]
    inputs: Vec<PathBuf>,
}

/// How inputs are read: shared by `sign` and `verify`.
#[derive(Args, Debug)]
struct InputArgs {
    /// Input kind: auto (default), mbox, maildir, queue (directory of one-message files), message.
    #[arg(long = "format", value_name = "KIND")]
    format: Option<InputKind>,
    /// mbox flavour: mboxrd (default), mboxo, mboxcl, mboxcl2.
    #[arg(long = "mbox-format", value_name = "FLAVOUR", default_value = "mboxrd")]
    mbox_format: MboxFormat,
    /// Worker threads (default: all cores).
    #[arg(short = 'j', long = "threads", value_name = "N")]
    threads: Option<usize>,
    /// Largest message handled (octets; K, M, G suffixes): a larger one is passed through
    /// unsigned and reported, or refused when it is the only input [default: 512M].
    #[arg(long = "max-message-size", value_name = "SIZE", value_parser = parse_size)]
    max_message_size: Option<u64>,
    /// Seconds to wait for the locks of an mbox signed --in-place (then exit 75).
    #[arg(long = "lock-timeout", value_name = "SECS", default_value_t = 30)]
    lock_timeout: u64,
}

/// A size in octets, with an optional K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?}: expected a positive size in octets, e.g. 512M"))
}

impl InputArgs {
    /// `--max-message-size`, or the default.
    fn max_message(&self) -> u64 {
        self.max_message_size.unwrap_or(pipeline::DEFAULT_MAX_MESSAGE)
    }

    /// The worker thread count: --threads, or all cores.
    fn threads(&self) -> anyhow::Result<usize> {
        match self.threads {
            Some(0) => Err(exit(sysexits::USAGE, "--threads must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

/// Where key records come from: shared by `verify` and `testkey`.
#[derive(Args, Debug)]
struct RecordArgs {
    /// Key records from zone files (as `genkey` writes them) instead of DNS. Repeatable.
    #[arg(long = "dns-zone", value_name = "FILE")]
    zones: Vec<PathBuf>,
    /// Key records from a directory of SELECTOR._domainkey.DOMAIN.txt files. Repeatable.
    #[arg(long = "key-dir", value_name = "DIR")]
    key_dirs: Vec<PathBuf>,
    /// DNS server to ask (host:port or IP, port 53 by default) instead of /etc/resolv.conf.
    /// With --dns-zone or --key-dir and no --dns-server, DNS is not used at all.
    #[arg(long = "dns-server", value_name = "ADDR")]
    dns_servers: Vec<String>,
    /// Seconds to wait for a DNS answer (then temperror).
    #[arg(long = "dns-timeout", value_name = "SECS", default_value_t = 5.0)]
    dns_timeout: f64,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    records: RecordArgs,
    /// Accept rsa-sha1 signatures (RFC 8301 forbids them; for old archives).
    #[arg(long = "allow-sha1")]
    allow_sha1: bool,
    /// Smallest RSA key accepted, in bits (RFC 8301: 1024).
    #[arg(long = "min-key-bits", value_name = "BITS", default_value_t = 1024)]
    min_key_bits: usize,
    /// Clock skew allowed for t= and x=, in seconds.
    #[arg(long = "clock-skew", value_name = "SECS", default_value_t = dkimpress::dkim::verify::DEFAULT_CLOCK_SKEW)]
    clock_skew: u64,
    /// Verify as of this Unix time (default: now), e.g. for an archive whose signatures expired.
    #[arg(long = "at", value_name = "UNIX")]
    at: Option<u64>,
    /// Which signatures must pass for a message to count as verified: any or all.
    #[arg(long = "require", value_name = "WHICH", value_parser = ["any", "all"], default_value = "any")]
    require: String,
    #[command(flatten)]
    input: InputArgs,
    /// Output: text (a line per message) or json (a JSON object per line).
    #[arg(long = "report", value_name = "FORMAT", value_parser = ["text", "json"], default_value = "text")]
    report: String,
    /// No summary line on stderr.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Filter mode (stdin only): write the message to stdout with an Authentication-Results
    /// field (RFC 8601) for this authserv-id on top; exit 0 whatever the result.
    #[arg(long = "add-ar", value_name = "AUTHSERV-ID")]
    add_ar: Option<String>,
    /// Messages to verify; none or - for one message on stdin.
    #[arg(value_name = "INPUT")]
    inputs: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct FilterArgs {
    #[command(flatten)]
    k: KeyArgs,
    /// When signing fails (key store down, broken key): tempfail (exit 75, Postfix retries) or
    /// pass (re-inject unsigned and log).
    #[arg(long = "on-error", value_name = "ACTION", default_value = "tempfail")]
    on_error: crate::cli::mta::OnError,
    /// Log to stderr instead of syslog (facility mail).
    #[arg(long = "log-stderr")]
    log_stderr: bool,
    /// The SMTP client's address (pipe(8) `--client-address=${client_address}`; empty for
    /// local submission). Mail from a client that is not an internal host and did not
    /// authenticate is re-injected unsigned.
    #[arg(long = "client-address", value_name = "ADDR")]
    client_address: Option<String>,
    /// The SASL login of the client (pipe(8) `--sasl-username=${sasl_username}`); non-empty
    /// means the mail is ours to sign.
    #[arg(long = "sasl-username", value_name = "NAME")]
    sasl_username: Option<String>,
    /// Internal hosts, as OpenDKIM InternalHosts: addresses and CIDR blocks, comma-separated,
    /// `!` to exclude; or a file (`/path` or `file:path`, one or more per line)
    /// [default: InternalHosts of --config, else 127.0.0.1, ::1].
    #[arg(long = "internal-hosts", value_name = "LIST|FILE")]
    internal_hosts: Option<String>,
    /// Kill the re-injection command after this many seconds, and exit 75.
    #[arg(long = "reinject-timeout", value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    reinject_timeout: u64,
    /// The re-injection command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Messages to generate.
    #[arg(long = "count", default_value_t = 3000)]
    count: usize,
    /// Message sizes: 4k, 1m, lognormal:4k, ...
    #[arg(long = "size", default_value = "4k")]
    size: dkimpress::corpus::SizeDist,
    /// Seed of the generator (same seed, same corpus).
    #[arg(long = "seed", default_value_t = 1)]
    seed: u64,
    /// Give every 7th message a base64 attachment.
    #[arg(long = "attachments")]
    attachments: bool,
    /// Measure this mbox instead of a generated corpus.
    #[arg(long = "input", value_name = "MBOX")]
    input: Option<PathBuf>,
    /// Thread counts, comma-separated [default: 1 and all cores].
    #[arg(short = 'j', long = "threads", value_name = "LIST")]
    threads: Option<String>,
    /// Key types to sign and verify with: rsa, ed25519 (comma-separated).
    #[arg(long = "algorithms", default_value = "rsa,ed25519")]
    algorithms: String,
    /// Canonicalization of the end-to-end runs (header/body).
    #[arg(short = 'c', long = "canonicalization", value_name = "H/B", default_value = "relaxed/relaxed")]
    canon: dkimpress::dkim::canon::Canonicalization,
    /// Minimum seconds per measurement.
    #[arg(long = "seconds", default_value_t = 1.0)]
    seconds: f64,
    /// Print the figures as JSON on stdout.
    #[arg(long = "json")]
    json: bool,
}

#[derive(Args, Debug)]
struct TestkeyArgs {
    /// Signing domain of the key to test (with -s and -k).
    #[arg(short = 'd', long = "domain", value_name = "DOMAIN", requires_all = ["selector", "key"])]
    domain: Option<String>,
    /// Selector.
    #[arg(short = 's', long = "selector", value_name = "SELECTOR")]
    selector: Option<String>,
    /// Private key file.
    #[arg(short = 'k', long = "key", value_name = "KEYFILE")]
    key: Option<PathBuf>,
    /// Test every key of this opendkim.conf (KeyTable, or Domain/Selector/KeyFile).
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Test every key of this KeyTable data set.
    #[arg(long = "key-table", value_name = "DATASET")]
    key_table: Option<String>,
    #[command(flatten)]
    records: RecordArgs,
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
                SignError::Select(s) => match s {
                    dkimpress::select::SelectError::Temporary(_) => sysexits::TEMPFAIL,
                    dkimpress::select::SelectError::Config(_) => sysexits::CONFIG,
                    dkimpress::select::SelectError::NoKey(_) | dkimpress::select::SelectError::NoAddress(_) => {
                        sysexits::DATAERR
                    }
                },
            };
        }
        if let Some(e) = cause.downcast_ref::<KeyError>() {
            return match e {
                KeyError::Sign => sysexits::SOFTWARE,
                _ => sysexits::CONFIG,
            };
        }
        if let Some(e) = cause.downcast_ref::<BulkError>() {
            return match e {
                BulkError::Input { .. } => sysexits::NOINPUT,
                BulkError::Format { .. } => sysexits::DATAERR,
                BulkError::Output { .. } => sysexits::IOERR,
                BulkError::Interrupted => sysexits::INTERRUPTED,
                BulkError::Temporary { .. } => sysexits::TEMPFAIL,
                BulkError::Lock(dkimpress::pipeline::io::LockError::Busy { .. }) => sysexits::TEMPFAIL,
                BulkError::Lock(dkimpress::pipeline::io::LockError::Io { .. }) => sysexits::CANTCREAT,
                BulkError::Create(_) => sysexits::CANTCREAT,
            };
        }
        if cause.is::<dkimpress::pipeline::io::OutputError>() {
            return sysexits::CANTCREAT;
        }
        if let Some(e) = cause.downcast_ref::<dkimpress::tables::TableError>() {
            return match e {
                dkimpress::tables::TableError::Database { .. } => sysexits::TEMPFAIL,
                _ => sysexits::CONFIG,
            };
        }
        if cause.is::<dkimpress::lookup::ZoneError>() || cause.is::<crate::cli::conf::ConfError>() {
            return sysexits::CONFIG;
        }
        if cause.is::<SignerConfigError>() || cause.is::<genkey::GenKeyError>() {
            return sysexits::CONFIG;
        }
    }
    // An I/O error nothing above claimed is an output that failed (a full disk, /dev/full).
    if err.chain().any(|c| c.is::<std::io::Error>()) {
        return sysexits::IOERR;
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
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let argv0 = args.first().map(|a| Path::new(a).file_name().unwrap_or_default().to_os_string()).unwrap_or_default();
    // Called by the names Postfix's sendmail answers to (a symlink replacing
    // /usr/sbin/sendmail also serves mailq and newaliases).
    if argv0 == "sendmail" || argv0 == "mailq" || argv0 == "newaliases" {
        return Ok(cmd_sendmail(&argv0, args[1..].to_vec()));
    }
    if args.get(1).is_some_and(|a| a == "sendmail") {
        return Ok(cmd_sendmail(std::ffi::OsStr::new("sendmail"), args[2..].to_vec()));
    }
    // In a master.cf pipe line a mistyped filter option must defer mail (75), not bounce it
    // (64): Postfix retries until the admin fixes the line.
    let is_filter = args.get(1).is_some_and(|a| a == "filter");
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            let code = match e.kind() {
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ if is_filter => sysexits::TEMPFAIL,
                _ => sysexits::USAGE,
            };
            let _ = e.print();
            return Ok(ExitCode::from(code));
        }
    };
    match cli.command {
        Command::Sign(a) => cmd_sign(SignConfig::from_args(a)?),
        Command::Genkey(a) => cmd_genkey(a),
        Command::Verify(a) => cmd_verify(a),
        Command::Testkey(a) => cmd_testkey(a),
        Command::Filter(a) => cmd_filter(a),
        Command::Bench(a) => cmd_bench(a),
    }
}

/// Where `sign` reads from.
enum SignInput {
    /// One message on stdin.
    Stdin,
    /// Archives and message files, each with its kind (and the bytes of a pipe or device).
    Paths(Vec<pipeline::Source>),
}

/// Everything `sign` needs, checked.
struct SignConfig {
    opts: BulkOptions,
    lock_timeout: std::time::Duration,
    input: SignInput,
    output: Option<PathBuf>,
    in_place: bool,
    threads: usize,
    report_json: bool,
    quiet: bool,
}

/// Builds the key source from flags, an opendkim.conf, or tables.
fn key_source(a: &KeyArgs) -> anyhow::Result<dkimpress::select::KeySource> {
    use dkimpress::select::{KeySource, Tables, Template};
    let usage = |m: &str| exit(sysexits::USAGE, m.to_string());
    if let Some(t) = a.db_timeout {
        if !(t > 0.0 && t.is_finite()) {
            return Err(usage("--db-timeout must be a positive number of seconds"));
        }
        dkimpress::tables::set_db_timeout(std::time::Duration::from_secs_f64(t));
    }
    let conf = match &a.config {
        Some(p) => {
            let c = crate::cli::conf::OpendkimConf::load(p)?;
            if a.verbose {
                for (line, key) in &c.ignored {
                    eprintln!("dkimpress: {}:{line}: {key} is for the milter daemon; ignored", p.display());
                }
            }
            Some(c)
        }
        None => None,
    };
    // Flags win over the file; the file over defaults.
    let canon = match (a.canon, conf.as_ref().and_then(|c| c.canonicalization.clone())) {
        (Some(c), _) => c,
        (None, Some(c)) => c.parse().map_err(|e| exit(sysexits::CONFIG, format!("Canonicalization: {e}")))?,
        (None, None) => Canonicalization::default(),
    };
    let headers = a
        .headers
        .as_deref()
        .map(split_list)
        .or_else(|| conf.as_ref().and_then(|c| c.sign_headers.as_deref().map(split_list)));
    let oversign = split_list(
        &a.oversign
            .clone()
            .or_else(|| conf.as_ref().and_then(|c| c.oversign_headers.clone()))
            .unwrap_or_else(|| "from".into()),
    );
    let template = Template {
        canon,
        headers,
        oversign,
        body_length: a.body_length || conf.as_ref().is_some_and(|c| c.body_length),
        expire: a.expire.or_else(|| conf.as_ref().and_then(|c| c.signature_ttl)),
        algorithm: a.algorithm.clone().or_else(|| conf.as_ref().and_then(|c| c.signature_algorithm.clone())),
        // MinimumKeyBits is a verification setting in OpenDKIM (opendkim.conf(5)): it does not
        // refuse our own signing keys (which would defer all mail). RFC 8301's 1024 applies.
        min_bits: dkimpress::dkim::key::MIN_RSA_BITS,
        strict_keys: a.strict_keys || conf.as_ref().is_some_and(|c| c.require_safe_keys),
        identity: None,
    };
    if let Some(c) = &conf {
        if let (Some(kt), Some(st)) = (&c.key_table, &c.signing_table) {
            let t = Tables::open(kt, st, c.multiple_signatures || a.multiple_signatures, template, &c.dir)?;
            return Ok(KeySource::Tables(Box::new(t)));
        }
        let key_file = c.key_file.clone().expect("checked by OpendkimConf::load");
        let (key, warning) = SigningKey::from_path(&key_file, template.strict_keys)?;
        if let Some(w) = warning {
            eprintln!("dkimpress: warning: {w}");
        }
        let spec = c.domain.clone().expect("checked by OpendkimConf::load");
        let domains = if spec.contains(':') || std::path::Path::new(&spec).exists() {
            dkimpress::tables::DataSet::open(&spec, &c.dir)?.keys()?
        } else {
            split_list(&spec)
        };
        let selector = c.selector.clone().expect("checked by OpendkimConf::load");
        // Check the settings once, with the first domain.
        if let Some(d) = domains.first() {
            template
                .build(Arc::new(SigningKey::from_path(&key_file, false)?.0), d, &selector)
                .map_err(|e| exit(sysexits::CONFIG, e))?;
        }
        return Ok(KeySource::Domains { domains, subdomains: c.subdomains, selector, key: Arc::new(key), template });
    }
    if let (Some(kt), Some(st)) = (&a.key_table, &a.signing_table) {
        let t = Tables::open(kt, st, a.multiple_signatures, template, std::path::Path::new("."))?;
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
                let (key, warning) = SigningKey::from_path(path, a.strict_keys)?;
                if let Some(w) = warning {
                    eprintln!("dkimpress: warning: {w}");
                }
                let key = Arc::new(key);
                loaded.push((path.clone(), key.clone()));
                key
            }
        };
        if a.domains.is_empty() || a.selectors.is_empty() {
            return Err(usage("-k needs -d DOMAIN and -s SELECTOR"));
        }
        let domain = nth(&a.domains, n, "-d/--domain", a.keys.len())?;
        let selector = nth(&a.selectors, n, "-s/--selector", a.keys.len())?;
        signers.push(template.build(key, domain, selector).map_err(|e| exit(sysexits::CONFIG, e))?);
    }
    Ok(KeySource::Fixed(signers))
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
        let keys = key_source(&a.k)?;
        let usage = |m: String| exit(sysexits::USAGE, m);
        let input = if a.inputs.is_empty() || (a.inputs.len() == 1 && a.inputs[0].as_os_str() == "-") {
            if a.in_place {
                return Err(usage("--in-place needs input files, not stdin".into()));
            }
            SignInput::Stdin
        } else {
            let mut paths = vec![];
            for p in &a.inputs {
                if p.as_os_str() == "-" {
                    return Err(usage("stdin (-) cannot be mixed with other inputs".into()));
                }
                if let Some(o) = &a.output {
                    if same_file(o, p) {
                        return Err(usage(format!("{}: -o is the input itself; use --in-place", o.display())));
                    }
                }
                let source = pipeline::open_source(p, a.input.format, a.input.max_message())?;
                let kind = source.kind;
                let is_dir = matches!(kind, InputKind::Maildir | InputKind::QueueDir);
                if is_dir != p.is_dir() {
                    return Err(usage(format!(
                        "{}: --format {kind:?} does not fit a {}",
                        p.display(),
                        if p.is_dir() { "directory" } else { "file" }
                    )));
                }
                if is_dir && a.output.is_none() && !a.in_place {
                    return Err(usage(format!("{}: a directory input needs -o DIR or --in-place", p.display())));
                }
                if source.is_stream() && a.in_place {
                    return Err(usage(format!(
                        "{}: is a pipe or device, which cannot be replaced: use -o FILE instead of --in-place",
                        p.display()
                    )));
                }
                paths.push(source);
            }
            if paths.len() > 1 && !a.in_place {
                return Err(usage("several inputs need --in-place (or one run per input with -o)".into()));
            }
            SignInput::Paths(paths)
        };
        let threads = a.input.threads()?;
        let now = a.k.timestamp.unwrap_or_else(now_unix);
        Ok(SignConfig {
            opts: BulkOptions {
                keys,
                sender: a.k.sender.clone(),
                mbox_format: a.input.mbox_format,
                strip_own: a.strip_own,
                now,
                max_message: a.input.max_message(),
            },
            lock_timeout: std::time::Duration::from_secs(a.input.lock_timeout),
            input,
            output: a.output,
            in_place: a.in_place,
            threads,
            report_json: a.report == "json",
            quiet: a.quiet,
        })
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Reads all of stdin, up to `max` octets (more is refused: 65).
fn read_stdin(max: u64) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(64 * 1024);
    std::io::Read::take(std::io::stdin().lock(), max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| exit(sysexits::TEMPFAIL, format!("stdin: read failed: {e}")))?;
    if buf.len() as u64 > max {
        return Err(exit(
            sysexits::DATAERR,
            format!("stdin: more than {max} octets: larger than the message size limit (--max-message-size)"),
        ));
    }
    Ok(buf)
}

fn cmd_sign(cfg: SignConfig) -> anyhow::Result<ExitCode> {
    dkimpress::pipeline::io::install_interrupt_handler();
    match &cfg.input {
        SignInput::Stdin => {
            let buf = read_stdin(cfg.opts.max_message)?;
            sign_single(&cfg, "stdin", &buf, None)
        }
        SignInput::Paths(paths) if paths.len() == 1 && paths[0].kind == InputKind::Message => {
            let src = &paths[0];
            let p = &src.path;
            let read;
            let data: &[u8] = match &src.spooled {
                Some(m) => m,
                None => {
                    read = std::fs::read(p).map_err(|e| exit(sysexits::NOINPUT, format!("{}: {e}", p.display())))?;
                    &read
                }
            };
            sign_single(&cfg, &p.display().to_string(), data, Some(p))
        }
        SignInput::Paths(paths) => sign_archives(&cfg, paths),
    }
}

/// Pipe mode and single message files: the message is signed or nothing is written.
fn sign_single(cfg: &SignConfig, name: &str, msg: &[u8], path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (headers, drop) = match pipeline::sign_message(&cfg.opts, msg) {
        Ok(r) => r,
        // No key for this author: not an error; the message goes on unsigned (as OpenDKIM).
        Err(SignError::Select(dkimpress::select::SelectError::NoKey(who))) => {
            eprintln!(
                "dkimpress: {}: no signing key for {}: passed through unsigned",
                pipeline::sanitize(name),
                pipeline::sanitize(&who)
            );
            (vec![], vec![])
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{}: cannot sign", pipeline::sanitize(name)))),
    };
    let dest = if cfg.in_place { path } else { cfg.output.as_deref() };
    match dest {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&headers)
                .and_then(|_| pipeline::write_without(&mut out, msg, &drop))
                .and_then(|_| out.flush())
                .map_err(|e| write_failed("stdout", e))?;
        }
        Some(p) => {
            let keep = keep_for(cfg, path);
            let mut out = dkimpress::pipeline::io::Output::open(p, &keep, true)?;
            out.write_all(&headers)
                .and_then(|_| pipeline::write_without(&mut out, msg, &drop))
                .and_then(|_| out.commit())
                .map_err(|e| write_failed(&p.display().to_string(), e))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A failed write: 74, or a quiet exit for a closed pipe (see `main`).
fn write_failed(what: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return anyhow::Error::new(e);
    }
    if e.kind() == std::io::ErrorKind::Interrupted && dkimpress::pipeline::io::interrupted() {
        return BulkError::Interrupted.into();
    }
    exit(sysexits::IOERR, format!("{what}: write failed: {e}"))
}

/// What a new output file takes over: with --in-place everything of the original (owner,
/// group, mode, times); with -o the mode of the input; else 0644.
fn keep_for(cfg: &SignConfig, input: Option<&Path>) -> dkimpress::pipeline::io::Keep {
    match input.map(std::fs::metadata) {
        Some(Ok(m)) if cfg.in_place => dkimpress::pipeline::io::Keep::all_of(&m),
        Some(Ok(m)) if m.is_file() => {
            dkimpress::pipeline::io::Keep::mode(std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        }
        _ => dkimpress::pipeline::io::Keep::mode(0o644),
    }
}

/// Bulk mode: mboxes, maildirs, queue directories (and message files among several inputs).
fn sign_archives(cfg: &SignConfig, paths: &[pipeline::Source]) -> anyhow::Result<ExitCode> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .thread_name(|i| format!("dkimpress-{i}"))
        .build()
        .context("cannot start worker threads")?;
    let show = !cfg.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let total: u64 = if show { paths.iter().map(|s| input_bytes(&s.path, s.kind)).sum() } else { 0 };
    let progress = Progress::new(show, total);
    let mut summary = Summary::default();
    let started = std::time::Instant::now();
    for source in paths {
        let (path, kind) = (&source.path, &source.kind);
        let result = match kind {
            InputKind::Mbox => sign_mbox_to(cfg, source, &pool, &mut summary, &progress),
            InputKind::Maildir | InputKind::QueueDir => {
                let out = match &cfg.output {
                    Some(o) => DirOutput::To(o.clone()),
                    None => DirOutput::InPlace,
                };
                pipeline::sign_dir(path, *kind, &cfg.opts, &pool, &out, &mut summary, &progress).map_err(Into::into)
            }
            InputKind::Message => sign_message_file_in_place(cfg, path, &mut summary),
        };
        if let Err(e) = result {
            progress.finish();
            return Err(e);
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    report(cfg, &summary, secs);
    Ok(if summary.passed > 0 { ExitCode::from(sysexits::DATAERR) } else { ExitCode::SUCCESS })
}

/// Input size for the progress bar.
fn input_bytes(path: &Path, kind: InputKind) -> u64 {
    match kind {
        InputKind::Maildir | InputKind::QueueDir => pipeline::list_messages(path, kind)
            .map(|fs| fs.iter().filter_map(|f| std::fs::metadata(path.join(&f.rel)).ok()).map(|m| m.len()).sum())
            .unwrap_or(0),
        _ => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

fn sign_mbox_to(
    cfg: &SignConfig,
    source: &pipeline::Source,
    pool: &rayon::ThreadPool,
    summary: &mut Summary,
    progress: &Progress,
) -> anyhow::Result<()> {
    let path = source.path.as_path();
    // --in-place: the locks mail delivery honours, held until the new file is in place.
    let lock = if cfg.in_place {
        Some(dkimpress::pipeline::io::MboxLock::acquire(path, cfg.lock_timeout).map_err(BulkError::from)?)
    } else {
        None
    };
    let mapped_here;
    let mapped: &dkimpress::arch::sys::Mapped = match (&source.spooled, &lock) {
        (Some(m), _) => m,
        (None, Some(l)) => {
            mapped_here = pipeline::map_mbox_file(l.file(), path)?;
            &mapped_here
        }
        (None, None) => {
            mapped_here = pipeline::open_mbox(path)?;
            &mapped_here
        }
    };
    if let Some(m) = &source.spooled {
        mbox_check(m, path)?;
    }
    let dest = if cfg.in_place { Some(path) } else { cfg.output.as_deref() };
    match dest {
        None => {
            // Straight to fd 1 through our own buffer (std's Stdout is line-buffered and would
            // copy every byte once more).
            let mut out = std::io::BufWriter::with_capacity(1 << 20, dkimpress::pipeline::io::stdout_raw());
            pipeline::sign_mbox(mapped, path, &cfg.opts, pool, &mut out, summary, progress)?;
        }
        Some(d) => {
            let fail = |e: std::io::Error| BulkError::Output { path: d.display().to_string(), error: e };
            let keep = keep_for(cfg, (!source.is_stream()).then_some(path));
            let mut f = dkimpress::pipeline::io::Output::open(d, &keep, true).map_err(BulkError::from)?;
            {
                let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut f);
                pipeline::sign_mbox(mapped, path, &cfg.opts, pool, &mut out, summary, progress)?;
                out.flush().map_err(fail)?;
            }
            match (f, &lock) {
                (dkimpress::pipeline::io::Output::Atomic(mut a), Some(l)) => {
                    a.commit_checked(|| l.check_unchanged(path))
                }
                (f, _) => f.commit(),
            }
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    return BulkError::Interrupted;
                }
                if lock.is_some() && e.kind() == std::io::ErrorKind::Other {
                    return BulkError::Temporary { path: d.display().to_string(), reason: e.to_string() };
                }
                fail(e)
            })?;
        }
    }
    drop(lock);
    Ok(())
}

/// Checks that spooled bytes are an mbox.
fn mbox_check(m: &dkimpress::arch::sys::Mapped, path: &Path) -> Result<(), BulkError> {
    dkimpress::pipeline::mbox::check(m)
        .map_err(|e| BulkError::Format { path: path.display().to_string(), reason: e.to_string() })
}

/// A one-message file among several inputs (--in-place): signed and replaced, or left alone
/// and reported.
fn sign_message_file_in_place(cfg: &SignConfig, path: &Path, summary: &mut Summary) -> anyhow::Result<()> {
    let data = std::fs::read(path)
        .map_err(|e| BulkError::Input { path: path.display().to_string(), reason: e.to_string() })?;
    summary.messages += 1;
    summary.bytes += data.len() as u64;
    match pipeline::sign_message(&cfg.opts, &data) {
        Ok((headers, drop)) => {
            pipeline::write_signed_file(path, &keep_for(cfg, Some(path)), &headers, &data, &drop)?;
            summary.signed += 1;
        }
        Err(e) => {
            summary.passed += 1;
            let p = pipeline::Problem { file: path.display().to_string(), index: 1, offset: 0, reason: e.to_string() };
            eprintln!("dkimpress: left unsigned: {p}");
            summary.problems.push(p);
        }
    }
    Ok(())
}

/// The final summary: a text line on stderr, or JSON (on stdout, or on stderr when stdout
/// carries the signed mail).
fn report(cfg: &SignConfig, s: &Summary, secs: f64) {
    let rate = if secs > 0.0 { s.messages as f64 / secs } else { 0.0 };
    if cfg.report_json {
        let problems: Vec<serde_json::Value> = s
            .problems
            .iter()
            .map(|p| serde_json::json!({"file": p.file, "index": p.index, "offset": p.offset, "reason": p.reason}))
            .collect();
        let v = serde_json::json!({
            "messages": s.messages, "signed": s.signed, "passed_through": s.passed,
            "bytes": s.bytes, "seconds": secs, "messages_per_second": rate,
            "threads": cfg.threads, "problems": problems,
        });
        let to_stdout = cfg.in_place || cfg.output.is_some();
        if to_stdout {
            println!("{v}");
        } else {
            eprintln!("{v}");
        }
    } else if !cfg.quiet {
        eprintln!(
            "dkimpress: {} messages: {} signed, {} passed through unsigned; {:.1} MB in {:.2} s ({:.0} msgs/s, {} threads)",
            s.messages,
            s.signed,
            s.passed,
            s.bytes as f64 / 1e6,
            secs,
            rate,
            cfg.threads
        );
    }
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
    let fail = |p: &Path, e: std::io::Error| exit(sysexits::CANTCREAT, format!("{}: cannot write: {e}", p.display()));
    dkimpress::pipeline::io::write_atomic(&private, &[g.pem.as_bytes()], 0o600).map_err(|e| fail(&private, e))?;
    dkimpress::pipeline::io::write_atomic(&txt, &[record.as_bytes()], 0o644).map_err(|e| fail(&txt, e))?;
    // The keys are written; a stdout that fails (a full disk, /dev/full) is an error, not a panic.
    {
        let mut out = std::io::stdout().lock();
        out.write_all(record.as_bytes()).and_then(|_| out.flush()).map_err(|e| write_failed("stdout", e))?;
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

/// One line of the verification report.
fn verdict_line(
    name: &str,
    verdicts: &[dkimpress::dkim::verify::Verdict],
    overall: dkimpress::dkim::verify::DkimResult,
) -> String {
    let mut line = format!("{}: {overall}", pipeline::sanitize(name));
    for v in verdicts {
        line.push_str(&format!(" | {} d={} s={} a={}", v.result, v.domain, v.selector, v.algorithm));
        if !v.reason.is_empty() {
            line.push_str(&format!(": {}", pipeline::sanitize(&v.reason)));
        }
        for n in &v.notes {
            line.push_str(&format!(" [{n}]"));
        }
    }
    line
}

fn verdict_json(
    name: &str,
    file: &str,
    index: u64,
    offset: u64,
    verdicts: &[dkimpress::dkim::verify::Verdict],
    overall: dkimpress::dkim::verify::DkimResult,
) -> String {
    let sigs: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|v| {
            serde_json::json!({"result": v.result.as_str(), "reason": v.reason, "d": v.domain, "s": v.selector,
                "a": v.algorithm, "i": v.identity, "notes": v.notes})
        })
        .collect();
    serde_json::json!({"message": name, "file": file, "index": index, "offset": offset,
        "result": overall.as_str(), "signatures": sigs})
    .to_string()
}

fn cmd_verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    use dkimpress::dkim::verify::{self, DkimResult, Policy};
    use dkimpress::lookup::KeyCache;
    let usage = |m: String| exit(sysexits::USAGE, m);
    let lookup = key_lookup(&a.records)?;
    let cache = KeyCache::new(&lookup);
    let keys = |s: &str, d: &str| cache.get(s, d);
    let policy = Policy {
        allow_sha1: a.allow_sha1,
        min_rsa_bits: a.min_key_bits,
        clock_skew: a.clock_skew,
        ..Policy::default()
    };
    let now = a.at.unwrap_or_else(now_unix);
    let require_all = a.require == "all";
    let json = a.report == "json";
    let judge = |vs: &[verify::Verdict]| -> bool {
        if require_all {
            !vs.is_empty() && vs.iter().all(|v| v.result == DkimResult::Pass)
        } else {
            verify::overall(vs) == DkimResult::Pass
        }
    };
    // The verdicts of one message; a message that does not parse gets one permerror.
    let check = |msg: &[u8]| -> Vec<verify::Verdict> {
        match verify::verify_slice(msg, &keys, now, &policy) {
            Ok(v) => v,
            Err(e) => vec![verify::Verdict::new(DkimResult::PermError, format!("message cannot be parsed: {e}"))],
        }
    };

    let stdin_mode = a.inputs.is_empty() || (a.inputs.len() == 1 && a.inputs[0].as_os_str() == "-");
    if a.add_ar.is_some() && !stdin_mode {
        return Err(usage("--add-ar is a filter: it reads one message on stdin".into()));
    }
    let mut counts: std::collections::BTreeMap<DkimResult, u64> = Default::default();
    let mut failed = 0u64;
    let mut out = std::io::BufWriter::new(dkimpress::pipeline::io::stdout_raw());
    let mut report =
        |out: &mut dyn std::io::Write, name: &str, file: &str, index: u64, offset: u64, vs: &[verify::Verdict]| {
            let o = verify::overall(vs);
            *counts.entry(o).or_default() += 1;
            if !judge(vs) {
                failed += 1;
            }
            let line = if json { verdict_json(name, file, index, offset, vs, o) } else { verdict_line(name, vs, o) };
            writeln!(out, "{line}")
        };

    if let Some(id) = &a.add_ar {
        check_authserv_id(id)?;
    }
    if stdin_mode {
        let buf = read_stdin(a.input.max_message())?;
        let vs = check(&buf);
        if let Some(id) = &a.add_ar {
            let parsed = dkimpress::dkim::header::Message::parse(&buf).ok();
            let le = if parsed.as_ref().is_some_and(|m| m.crlf) { "\r\n" } else { "\n" };
            // RFC 8601 §5: Authentication-Results fields that claim our authserv-id and did not
            // come from us are forgeries: remove them before adding ours.
            let forged: Vec<std::ops::Range<usize>> = parsed
                .iter()
                .flat_map(|m| m.fields.iter())
                .filter(|f| f.is("authentication-results") && ar_authserv_id(f.value()).eq_ignore_ascii_case(id))
                .map(|f| f.offset..f.offset + f.raw.len())
                .collect();
            let ar = verify::authentication_results(id, &vs, le);
            out.write_all(ar.as_bytes())
                .and_then(|_| pipeline::write_without(&mut out, &buf, &forged))
                .and_then(|_| out.flush())
                .map_err(|e| write_failed("stdout", e))?;
            return Ok(ExitCode::SUCCESS);
        }
        report(&mut out, "stdin", "stdin", 1, 0, &vs).map_err(|e| write_failed("stdout", e))?;
    } else {
        let threads = a.input.threads()?;
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("cannot start worker threads")?;
        pipeline::install_interrupt_handler();
        for p in &a.inputs {
            let source = pipeline::open_source(p, a.input.format, a.input.max_message())?;
            let kind = source.kind;
            let shown = p.display().to_string();
            match kind {
                InputKind::Message => {
                    let read;
                    let data: &[u8] = match &source.spooled {
                        Some(m) => m,
                        None => {
                            read = std::fs::read(p).map_err(|e| exit(sysexits::NOINPUT, format!("{shown}: {e}")))?;
                            &read
                        }
                    };
                    report(&mut out, &shown, &shown, 1, 0, &check(data)).map_err(|e| write_failed("stdout", e))?;
                }
                InputKind::Mbox => {
                    let mapped = match source.spooled {
                        Some(m) => pipeline::check_mbox(m, p)?,
                        None => pipeline::open_mbox(p)?,
                    };
                    let max = a.input.max_message();
                    let mut index = 0u64;
                    let out_ref = &mut out;
                    let report_ref = &mut report;
                    pipeline::map_mbox(
                        &mapped,
                        a.input.mbox_format,
                        &pool,
                        |m| {
                            if m.len() as u64 > max {
                                return vec![verify::Verdict::new(
                                    DkimResult::PermError,
                                    format!("{} octets: larger than --max-message-size {max}: not checked", m.len()),
                                )];
                            }
                            check(m)
                        },
                        |e, vs| {
                            index += 1;
                            report_ref(
                                out_ref,
                                &format!("{shown}#{index}"),
                                &shown,
                                index,
                                e.from_line.start as u64,
                                &vs,
                            )
                            .map_err(|error| BulkError::Output { path: "stdout".into(), error })
                        },
                    )?;
                }
                InputKind::Maildir | InputKind::QueueDir => {
                    let files = pipeline::list_messages(p, kind)?;
                    pipeline::map_dir(
                        p,
                        &files,
                        a.input.max_message(),
                        &pool,
                        |_, item| match item {
                            Ok((m, _)) => check(m),
                            Err(why) => {
                                vec![verify::Verdict::new(DkimResult::PermError, format!("not checked: {why}"))]
                            }
                        },
                        |rel, vs| {
                            let name = p.join(rel).display().to_string();
                            report(&mut out, &name, &name, 1, 0, &vs)
                                .map_err(|error| BulkError::Output { path: "stdout".into(), error })
                        },
                    )?;
                }
            }
        }
    }
    out.flush().map_err(|e| write_failed("stdout", e))?;
    let total: u64 = counts.values().sum();
    if !a.quiet {
        let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
        eprintln!("dkimpress: {total} messages: {}; {failed} not verified", parts.join(", "));
    }
    if total == 0 {
        // Success over nothing would hide an input that was not what it seemed (issue 11, item 1).
        eprintln!("dkimpress: no messages found in the input: nothing verified");
        return Ok(ExitCode::from(1));
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Checks an `--add-ar` authserv-id: a domain-like token (RFC 8601 §2.2 `authserv-id = value`;
/// we accept the token form only). A CR or LF would let the id inject header fields.
fn check_authserv_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err(exit(
            sysexits::USAGE,
            format!(
                "--add-ar {:?}: the authserv-id must be a host name (letters, digits, '.', '-', '_')",
                pipeline::sanitize(id)
            ),
        ));
    }
    Ok(())
}

/// The authserv-id of an Authentication-Results value: the first token after comments and
/// whitespace (RFC 8601 §2.2), or an empty string.
fn ar_authserv_id(value: &[u8]) -> String {
    let mut i = 0;
    let mut depth = 0;
    while i < value.len() {
        match value[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let rest = &value[i.min(value.len())..];
    let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
    let end = rest.iter().position(|&b| b";\" \t\r\n(".contains(&b)).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// Key record sources: zone files and key directories (offline), else DNS (or DNS as well when
/// servers are named).
fn key_lookup(r: &RecordArgs) -> anyhow::Result<dkimpress::lookup::Chain> {
    let (zones, key_dirs, servers, timeout) = (&r.zones, &r.key_dirs, &r.dns_servers, r.dns_timeout);
    use dkimpress::dkim::verify::KeyLookup;
    use dkimpress::lookup::{Chain, Dns, KeyDir, ZoneKeys};
    let usage = |m: String| exit(sysexits::USAGE, m);
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
            return Err(usage("--dns-timeout must be positive".into()));
        }
        let dns = Dns::new(&addrs, std::time::Duration::from_secs_f64(timeout), 2)
            .map_err(|e| exit(sysexits::CONFIG, format!("DNS resolver: {e}")))?;
        sources.push(Box::new(dns));
    }
    Ok(Chain(sources))
}

/// Whether the public key in a key record value is the public half of `key`.
fn record_matches(record: &[u8], key: &SigningKey) -> Result<(), String> {
    use base64::Engine as _;
    // The record must be usable as a verifier would read it (not revoked, right syntax).
    dkimpress::dkim::verify::parse_key_record(record)?;
    let tags = dkimpress::dkim::verify::parse_tags(record).map_err(|e| format!("key record syntax error: {e}"))?;
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

fn cmd_testkey(a: TestkeyArgs) -> anyhow::Result<ExitCode> {
    use dkimpress::dkim::verify::LookupError;
    let usage = |m: &str| exit(sysexits::USAGE, m.to_string());
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
    let mut add_table = |kt: &str, base: &Path| -> anyhow::Result<()> {
        let t = dkimpress::select::Tables::open(kt, "csl:", false, template.clone(), base)?;
        let names = t.key_names()?;
        if names.is_empty() {
            return Err(exit(sysexits::CONFIG, format!("{}: no keys in the KeyTable", dkimpress::tables::redact(kt))));
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
    if let Some(p) = &a.config {
        let c = crate::cli::conf::OpendkimConf::load(p)?;
        match (&c.key_table, &c.domain, &c.selector, &c.key_file) {
            (Some(kt), ..) => add_table(kt, &c.dir)?,
            (None, Some(d), Some(s), Some(k)) => {
                let key = SigningKey::from_path(k, false).map(|(k, _)| Arc::new(k)).map_err(|e| e.to_string());
                for dom in split_list(d) {
                    keys.push((format!("{s}._domainkey.{dom}"), dom, s.clone(), key.clone()));
                }
            }
            _ => return Err(usage("the configuration names no keys")),
        }
    }
    if let (Some(d), Some(s), Some(k)) = (&a.domain, &a.selector, &a.key) {
        let key = SigningKey::from_path(k, false).map(|(k, _)| Arc::new(k)).map_err(|e| e.to_string());
        keys.push((format!("{s}._domainkey.{d}"), d.clone(), s.clone(), key));
    }
    if keys.is_empty() {
        return Err(usage("nothing to test: give -d -s -k, --key-table, or --config"));
    }
    let lookup = key_lookup(&a.records)?;
    let mut bad = 0;
    for (label, domain, selector, key) in &keys {
        let name = format!("{selector}._domainkey.{domain}");
        let verdict = match key {
            Err(e) => Err(format!("cannot load the private key: {e}")),
            Ok(key) => match dkimpress::dkim::verify::KeyLookup::txt(&lookup, &name) {
                Err(LookupError::NotFound) => Err(format!("no TXT record at {name}")),
                Err(LookupError::Temporary(e)) => Err(format!("lookup of {name} failed: {e}")),
                Ok(records) => {
                    let mut result = Err(format!("no TXT record at {name}"));
                    for r in &records {
                        result =
                            record_matches(r, key).map(|()| format!("{} {} bits", key.key_type().as_str(), key.bits()));
                        if result.is_ok() {
                            break;
                        }
                    }
                    result
                }
            },
        };
        match verdict {
            Ok(what) => println!("{label}: OK ({name}, {what})"),
            Err(why) => {
                bad += 1;
                println!("{label}: {why}");
            }
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The current Unix time in seconds (for log context).
pub fn now_secs() -> u64 {
    now_unix()
}

fn mta_options(k: &KeyArgs) -> anyhow::Result<BulkOptions> {
    Ok(BulkOptions {
        keys: key_source(k)?,
        sender: k.sender.clone(),
        mbox_format: MboxFormat::default(),
        strip_own: false,
        now: k.timestamp.unwrap_or_else(now_unix),
        max_message: pipeline::DEFAULT_MAX_MESSAGE,
    })
}

fn cmd_filter(a: FilterArgs) -> anyhow::Result<ExitCode> {
    use crate::cli::mta::{MtaSettings, OnError, EX_TEMPFAIL};
    let to_stderr = a.log_stderr || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut log = crate::cli::mta::Logger::new(a.k.verbose, to_stderr);
    let settings = MtaSettings { on_error: a.on_error, timeout: std::time::Duration::from_secs(a.reinject_timeout) };
    // A configuration that cannot load defers mail (the admin fixes it, Postfix retries),
    // unless the admin asked for pass-through.
    let config_error = |e: String, log: &crate::cli::mta::Logger| match a.on_error {
        OnError::Tempfail => {
            log.error(&format!("configuration: {e}; deferred"));
            Err(ExitCode::from(EX_TEMPFAIL))
        }
        OnError::Pass => {
            log.error(&format!("configuration: {e}; passing mail on unsigned"));
            Ok(format!("configuration error ({e}), --on-error pass"))
        }
    };
    // Only our own clients' mail is signed (issue 11 item 8): the public MX must not sign
    // spoofed inbound mail with a From at our domains.
    let untrusted = crate::cli::mta::untrusted_origin(
        a.client_address.as_deref().unwrap_or_default(),
        a.sasl_username.as_deref().unwrap_or_default(),
        || internal_hosts(&a),
    );
    let plan = match untrusted {
        Ok(Some(reason)) => Err(reason),
        Ok(None) => match mta_options(&a.k) {
            Ok(o) => Ok(o),
            Err(e) => match config_error(format!("{e:#}"), &log) {
                Ok(reason) => Err(reason),
                Err(code) => return Ok(code),
            },
        },
        Err(e) => match config_error(e, &log) {
            Ok(reason) => Err(reason),
            Err(code) => return Ok(code),
        },
    };
    let code = {
        let mut log_ref = std::panic::AssertUnwindSafe(&mut log);
        let plan = std::panic::AssertUnwindSafe(plan.as_ref().map_err(Clone::clone));
        let command = &a.command;
        let settings = &settings;
        match std::panic::catch_unwind(move || {
            let plan = plan;
            crate::cli::mta::filter(plan.0, command, settings, &mut log_ref)
        }) {
            Ok(c) => c,
            Err(_) => EX_TEMPFAIL,
        }
    };
    if code == EX_TEMPFAIL {
        log.debug("exit 75: Postfix will retry");
    }
    Ok(ExitCode::from(code))
}

/// The InternalHosts list of `filter`: --internal-hosts, else the config's InternalHosts
/// (relative file paths from the config's directory), else loopback.
fn internal_hosts(a: &FilterArgs) -> Result<crate::cli::mta::InternalHosts, String> {
    use crate::cli::mta::InternalHosts;
    if let Some(spec) = &a.internal_hosts {
        return InternalHosts::load(spec, Path::new("."));
    }
    match &a.k.config {
        Some(path) => {
            let conf = crate::cli::conf::OpendkimConf::load(path).map_err(|e| e.to_string())?;
            match &conf.internal_hosts {
                Some(spec) => InternalHosts::load(spec, &conf.dir),
                None => Ok(InternalHosts::default()),
            }
        }
        None => Ok(InternalHosts::default()),
    }
}

/// `dkimpress sendmail [--config FILE] [--sendmail-path PATH] [--on-error ACTION] SENDMAIL-ARGS...`
/// (or a symlink named sendmail, mailq or newaliases: `name`). Settings also come from
/// DKIMPRESS_CONFIG, DKIMPRESS_SENDMAIL, DKIMPRESS_ON_ERROR and DKIMPRESS_REINJECT_TIMEOUT,
/// because a program calling sendmail passes only sendmail's arguments.
fn cmd_sendmail(name: &std::ffi::OsStr, mut args: Vec<std::ffi::OsString>) -> ExitCode {
    use crate::cli::mta::{MtaSettings, OnError, SendmailMode, EX_TEMPFAIL};
    let mut config = std::env::var_os("DKIMPRESS_CONFIG").unwrap_or_else(|| DEFAULT_WRAPPER_CONFIG.into());
    let mut real = std::env::var_os("DKIMPRESS_SENDMAIL").unwrap_or_else(|| DEFAULT_REAL_SENDMAIL.into());
    let mut on_error = std::env::var("DKIMPRESS_ON_ERROR").ok().and_then(|v| v.parse().ok()).unwrap_or(OnError::Pass);
    let timeout = std::env::var("DKIMPRESS_REINJECT_TIMEOUT").ok();
    let mut verbose = false;
    // Our own options only before sendmail's, and not under the names mailq/newaliases.
    loop {
        match args.first().and_then(|a| a.to_str()) {
            _ if name != "sendmail" => break,
            Some("--config") if args.len() > 1 => {
                config = args[1].clone();
                args.drain(..2);
            }
            Some("--sendmail-path") if args.len() > 1 => {
                real = args[1].clone();
                args.drain(..2);
            }
            Some("--on-error") if args.len() > 1 => {
                on_error = args[1].to_str().and_then(|v| v.parse().ok()).unwrap_or(on_error);
                args.drain(..2);
            }
            Some("--verbose") => {
                verbose = true;
                args.remove(0);
            }
            _ => break,
        }
    }
    let to_stderr = std::env::var("DKIMPRESS_LOG").is_ok_and(|v| v == "stderr")
        || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut log = crate::cli::mta::Logger::new(verbose, to_stderr);
    let timeout = match timeout.as_deref().map(str::parse::<u64>) {
        None => crate::cli::mta::DEFAULT_REINJECT_TIMEOUT,
        Some(Ok(secs)) if secs > 0 => std::time::Duration::from_secs(secs),
        Some(_) => {
            log.warn(&format!(
                "DKIMPRESS_REINJECT_TIMEOUT={:?} is not a number of seconds above 0; using 300",
                timeout.unwrap_or_default()
            ));
            crate::cli::mta::DEFAULT_REINJECT_TIMEOUT
        }
    };
    // Never hand the message to ourselves (a symlink loop would recurse forever).
    let me = std::env::current_exe().ok().and_then(|p| std::fs::canonicalize(p).ok());
    let target = std::fs::canonicalize(&real).ok();
    if me.is_some() && me == target {
        log.error(&format!(
            "DKIMPRESS_SENDMAIL ({}) is dkimpress itself; set it to the real sendmail; deferred",
            real.to_string_lossy()
        ));
        return ExitCode::from(EX_TEMPFAIL);
    }
    if name != "sendmail" {
        return ExitCode::from(crate::cli::mta::exec_real(&real, Some(name), &args, &log));
    }
    let parsed = crate::cli::mta::parse_sendmail_args(args);
    // Key choice is by From; the envelope sender (-f) only when there is no From. A
    // configuration that is missing or cannot be read is an error like any other (issue 11
    // item 17): deferred with tempfail, passed on unsigned (and logged) with pass.
    let plan = if parsed.mode != SendmailMode::Enqueue {
        Err(String::new())
    } else {
        let k = KeyArgs { config: Some(PathBuf::from(&config)), verbose, ..KeyArgs::default() };
        match mta_options(&k) {
            Ok(o) => Ok(o),
            Err(e) => {
                let e = format!("{e:#}");
                let e = if e.contains(&*config.to_string_lossy()) {
                    e
                } else {
                    format!("{}: {e}", config.to_string_lossy())
                };
                if on_error == OnError::Tempfail {
                    log.error(&format!("configuration: {e}; deferred (DKIMPRESS_ON_ERROR=tempfail)"));
                    return ExitCode::from(EX_TEMPFAIL);
                }
                Err(format!("configuration: {e}"))
            }
        }
    };
    let settings = MtaSettings { on_error, timeout };
    let mut log_ref = std::panic::AssertUnwindSafe(&mut log);
    let plan = std::panic::AssertUnwindSafe(plan.as_ref().map_err(Clone::clone));
    let real = &real;
    match std::panic::catch_unwind(move || {
        let plan = plan;
        crate::cli::mta::sendmail(plan.0, real, parsed, &settings, &mut log_ref)
    }) {
        Ok(c) => ExitCode::from(c),
        Err(_) => ExitCode::from(EX_TEMPFAIL),
    }
}

/// Default configuration of the sendmail wrapper (DKIMPRESS_CONFIG overrides).
pub const DEFAULT_WRAPPER_CONFIG: &str = "/etc/dkimpress/dkimpress.conf";
/// Default real sendmail (DKIMPRESS_SENDMAIL overrides).
pub const DEFAULT_REAL_SENDMAIL: &str = "/usr/sbin/sendmail";

fn cmd_bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let usage = |m: String| exit(sysexits::USAGE, m);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<usize> = match &a.threads {
        Some(l) => l
            .split(',')
            .map(|t| t.trim().parse().map_err(|_| usage(format!("--threads {l:?}"))))
            .collect::<Result<_, _>>()?,
        None => {
            let mut v = vec![1, cores];
            v.dedup();
            v
        }
    };
    if threads.contains(&0) {
        return Err(usage("--threads must be at least 1".into()));
    }
    let keys = a
        .algorithms
        .split(',')
        .map(|k| match k.trim() {
            "rsa" => Ok(KeyType::Rsa),
            "ed25519" => Ok(KeyType::Ed25519),
            other => Err(usage(format!("--algorithms: unknown {other:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let corpus = match &a.input {
        Some(p) => std::fs::read(p).map_err(|e| exit(sysexits::NOINPUT, format!("{}: {e}", p.display())))?,
        None => dkimpress::corpus::generate(a.count, a.size, a.seed, a.attachments),
    };
    eprintln!(
        "dkimpress bench: {} bytes, {}; threads {threads:?}; {} cores",
        corpus.len(),
        a.input.as_ref().map_or(format!("{} generated messages, size {:?}, seed {}", a.count, a.size, a.seed), |p| p
            .display()
            .to_string()),
        cores
    );
    let opts = crate::cli::bench::BenchOptions {
        corpus,
        threads,
        keys,
        canon: a.canon,
        min: std::time::Duration::from_secs_f64(a.seconds.max(0.05)),
    };
    let figs = crate::cli::bench::run(&opts).map_err(|e| exit(sysexits::DATAERR, e))?;
    if a.json {
        let v: Vec<serde_json::Value> = figs.iter().map(|f| f.to_json()).collect();
        println!("{}", serde_json::Value::Array(v));
    }
    Ok(ExitCode::SUCCESS)
}
