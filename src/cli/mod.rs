//! The command line: clap definitions, their conversion into one checked configuration per
//! command, and the commands themselves. Nothing after [`run`] parses argv or reads the
//! environment; the DKIM core (`canon`, `header`, `sign`, `key`) never sees clap types.
//!
//! Exit codes (sysexits.h) are decided in one place, [`exit_code`].

mod bench;
pub mod conf;
mod filter;
mod genkey;
pub mod hosts;
mod log;
mod man;
mod milter;
pub mod mta;
#[allow(unsafe_code)]
mod os;
mod sendmail;
mod sign;
mod testkey;
mod verify;

use bench::{cmd_bench, BenchArgs};
use filter::{cmd_filter, FilterArgs};
use genkey::{cmd_genkey, GenkeyArgs};
use milter::{cmd_milter, MilterArgs};
use sendmail::cmd_sendmail;
use sign::{cmd_sign, SignArgs, SignConfig};
use testkey::{cmd_testkey, TestkeyArgs};
use verify::{cmd_verify, VerifyArgs};

use clap::{Args, Parser, Subcommand};
use dkimpress::dkim::canon::Canonicalization;
use dkimpress::dkim::header::HeaderError;
use dkimpress::dkim::key::{KeyError, KeyType, SigningKey};
use dkimpress::dkim::sign::{SignError, SignerConfigError};
use dkimpress::pipeline::mbox::MboxFormat;
use dkimpress::pipeline::{self, BulkError, InputKind, SignPolicy};
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
    /// Sendmail wrapper for locally submitted mail: sign it, then run the real sendmail with the
    /// same arguments (also as a link named sendmail). See dkimpress-sendmail(1).
    ///
    /// Its own options come before sendmail's: --config FILE (default: DKIMPRESS_CONFIG, else
    /// /etc/dkimpress/dkimpress.conf), --sendmail-path PATH (DKIMPRESS_SENDMAIL, else
    /// /usr/sbin/sendmail), --on-error pass|tempfail (DKIMPRESS_ON_ERROR, else pass), --verbose.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Sendmail {
        /// The wrapper's options, then sendmail's options and recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<std::ffi::OsString>,
    },
    /// Milter daemon for Postfix and Sendmail, a drop-in for opendkim(8): reads the same
    /// opendkim.conf (Socket, Mode, KeyTable/SigningTable, InternalHosts, On-*, ...), signs
    /// mail from internal hosts and authenticated clients, verifies the rest.
    Milter(MilterArgs),
    /// Measure each stage and the whole pipeline next to the machine's limits.
    Bench(BenchArgs),
    /// Check that the DNS key records match the private keys, like opendkim-testkey.
    Testkey(TestkeyArgs),
    /// Generate a key pair and its DNS TXT record, like opendkim-genkey.
    #[command(disable_help_flag = true)]
    Genkey(GenkeyArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (dkimpress.1 and dkimpress-COMMAND.1) into a directory.
    Man {
        /// Where to write them.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// The options that choose keys and tags: shared by `sign` and `filter`.
#[derive(Args, Debug, Default, Clone)]
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
    /// Seconds an answer of a PostgreSQL data set (KeyTable, SigningTable, host lists) is
    /// reused, found or not; 0 asks the database for every message [default: 5].
    #[arg(long = "db-cache", value_name = "SECS")]
    db_cache: Option<f64>,
    /// Fixed signing time (Unix seconds), for reproducible output in tests.
    #[arg(long = "timestamp", value_name = "UNIX", hide = true)]
    timestamp: Option<u64>,
}

/// How inputs are read: shared by `sign` and `verify`.
#[derive(Args, Debug)]
struct InputArgs {
    /// Input kind [default: detected per input: a directory with cur/ or new/ is a maildir,
    /// another directory a queue, a file starting with "From " an mbox, else one message].
    #[arg(long = "format", value_name = "KIND", value_parser = man::INPUT_KINDS)]
    format: Option<InputKind>,
    /// mbox flavour (see mbox(5)).
    #[arg(long = "mbox-format", value_name = "FLAVOUR", default_value = "mboxrd", value_parser = man::MBOX_FORMATS)]
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
    /// Handle only share K of N (1 <= K <= N) of the inputs, for N independent runs on as many
    /// machines: an mbox by message-aligned byte ranges, a directory by a hash of each file's
    /// name. The N outputs concatenated in K order equal one run's output.
    #[arg(long = "shard", value_name = "K/N")]
    shard: Option<pipeline::Shard>,
    /// Who finds message boundaries in an mboxrd/mboxo file: parallel (each worker in its own
    /// byte range, the default) or serial (one thread). For measurements; the output is the same.
    #[arg(long = "framing", value_name = "HOW", default_value = "parallel", hide = true, value_parser = man::FRAMINGS)]
    framing: pipeline::Framing,
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
            Some(0) => Err(usage("--threads must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

/// Where key records come from: shared by `verify` and `testkey`.
#[derive(Args, Debug, Clone)]
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

/// `--report`: a line of text per item (or a summary), or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    /// Text for people.
    Text,
    /// JSON for programs.
    Json,
}

/// `verify --require`: which signatures must pass for a message to count as verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Require {
    /// At least one.
    Any,
    /// Every one (and at least one).
    All,
}

/// `--type` of `genkey`: the key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KeyTypeArg {
    /// RSA (2048 bits by default).
    Rsa,
    /// Ed25519 (RFC 8463).
    Ed25519,
}

impl From<KeyTypeArg> for KeyType {
    fn from(k: KeyTypeArg) -> KeyType {
        match k {
            KeyTypeArg::Rsa => KeyType::Rsa,
            KeyTypeArg::Ed25519 => KeyType::Ed25519,
        }
    }
}

/// `1 message`, `2 messages`.
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The command line's own errors: what went wrong in its terms, each kind given its exit code
/// by [`exit_code`] and nowhere else (as rustls maps its errors to alerts in one place).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or argument is wrong or missing; the message names it and the fix (64).
    #[error("{0}")]
    Usage(String),
    /// A setting is wrong (a configuration file value, a resolver that cannot start) (78).
    #[error("{0}")]
    Config(String),
    /// An input file cannot be read (66).
    #[error("{}: {error}", .path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Reading stdin failed: the MTA may try again (75).
    #[error("stdin: read failed: {0}")]
    StdinRead(std::io::Error),
    /// The message on stdin is larger than `--max-message-size` (65).
    #[error("stdin: more than {max} octets: larger than the message size limit (--max-message-size)")]
    StdinTooLarge {
        /// The limit in octets.
        max: u64,
    },
    /// A file we would create exists and `--force` was not given (73).
    #[error("{}: already exists; keep it, or pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// The output directory does not exist (73).
    #[error("{}: no such directory ({flag})", .path.display())]
    NoDirectory {
        /// The directory.
        path: PathBuf,
        /// The flag that named it.
        flag: &'static str,
    },
    /// A file cannot be created or written (73).
    #[error("{}: cannot write: {error}", .path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Writing an output stream failed (a full disk, /dev/full) (74).
    #[error("{what}: write failed: {error}")]
    Write {
        /// The output: `stdout` or a file name.
        what: String,
        /// Why.
        error: std::io::Error,
    },
    /// The benchmark's corpus or keys do not work (65).
    #[error("{0}")]
    Bench(String),
    /// A resource is busy or unreachable for now (the milter's socket in use): try again (75).
    #[error("{0}")]
    Unavailable(String),
    /// The system refused something we need that no setting can fix (signal handlers) (70).
    #[error("{0}")]
    System(String),
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    CliError::Usage(message.into()).into()
}

/// Maps an error to its exit code: the one place that does (STYLE.md).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::Usage(_) => sysexits::USAGE,
                CliError::Config(_) => sysexits::CONFIG,
                CliError::Input { .. } => sysexits::NOINPUT,
                CliError::StdinRead(_) => sysexits::TEMPFAIL,
                CliError::StdinTooLarge { .. } | CliError::Bench(_) => sysexits::DATAERR,
                CliError::Exists(_) | CliError::NoDirectory { .. } | CliError::Create { .. } => sysexits::CANTCREAT,
                CliError::Write { .. } => sysexits::IOERR,
                CliError::Unavailable(_) => sysexits::TEMPFAIL,
                CliError::System(_) => sysexits::SOFTWARE,
            };
        }
        if cause.is::<HeaderError>() {
            return sysexits::DATAERR;
        }
        if let Some(e) = cause.downcast_ref::<SignError>() {
            return sign_code(e);
        }
        if let Some(e) = cause.downcast_ref::<pipeline::MessageError>() {
            return match e {
                pipeline::MessageError::Sign(e) => sign_code(e),
                pipeline::MessageError::Select(s) => select_code(s),
                pipeline::MessageError::Panic(_) => sysexits::SOFTWARE,
            };
        }
        if let Some(s) = cause.downcast_ref::<dkimpress::select::SelectError>() {
            return select_code(s);
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
        if cause.is::<SignerConfigError>()
            || cause.is::<dkimpress::select::BuildError>()
            || cause.is::<dkimpress::dkim::genkey::GenKeyError>()
        {
            return sysexits::CONFIG;
        }
    }
    // An I/O error nothing above claimed is an output that failed (a full disk, /dev/full).
    if err.chain().any(|c| c.is::<std::io::Error>()) {
        return sysexits::IOERR;
    }
    sysexits::SOFTWARE
}

fn sign_code(e: &SignError) -> u8 {
    match e {
        SignError::Header(_) | SignError::NoFrom => sysexits::DATAERR,
        SignError::Key(_) | SignError::BodyNotHashed(_) => sysexits::SOFTWARE,
    }
}

fn select_code(e: &dkimpress::select::SelectError) -> u8 {
    use dkimpress::select::SelectError;
    match e {
        SelectError::Temporary(_) => sysexits::TEMPFAIL,
        SelectError::Config(_) => sysexits::CONFIG,
        SelectError::NoKey(_) | SelectError::NoAddress(_) => sysexits::DATAERR,
    }
}

/// Whether the error is a closed output pipe (the reader went away), also when a bulk run
/// carries it in [`BulkError::Output`] (`sign ... | head` exits 74 quietly).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let is_epipe = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    err.chain().any(|c| match c.downcast_ref::<BulkError>() {
        Some(BulkError::Output { error, .. }) => is_epipe(error),
        _ => c.downcast_ref::<std::io::Error>().is_some_and(is_epipe),
    })
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
                DisplayHelp | DisplayVersion => 0,
                // `dkimpress` alone prints help, but did nothing asked of it: a usage error.
                DisplayHelpOnMissingArgumentOrSubcommand => sysexits::USAGE,
                _ if is_filter => sysexits::TEMPFAIL,
                _ => sysexits::USAGE,
            };
            // Help and version go to stdout: a reader that went away is 74, quietly, as for
            // every command's output.
            if let Err(err) = e.print() {
                if err.kind() == std::io::ErrorKind::BrokenPipe && code == 0 {
                    return Err(anyhow::Error::new(err));
                }
            }
            return Ok(ExitCode::from(code));
        }
    };
    match cli.command {
        Command::Sign(a) => cmd_sign(SignConfig::from_args(a)?),
        Command::Genkey(a) => cmd_genkey(a),
        Command::Verify(a) => cmd_verify(a),
        Command::Testkey(a) => cmd_testkey(a),
        Command::Filter(a) => cmd_filter(a),
        Command::Milter(a) => cmd_milter(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "dkimpress", &mut text);
            let mut out = std::io::stdout().lock();
            out.write_all(&text).and_then(|()| out.flush()).map_err(|e| write_failed("stdout", e))?;
            Ok(ExitCode::SUCCESS)
        }
        // Not reached: `sendmail` is dispatched above, before clap (its arguments are sendmail's,
        // not ours); the variant lists it in --help, the completions and the man pages.
        Command::Sendmail { args } => Ok(cmd_sendmail(std::ffi::OsStr::new("sendmail"), args)),
        Command::Man { dir } => {
            for (name, text) in man::man_pages()? {
                let path = dir.join(&name);
                std::fs::write(&path, text).map_err(|error| CliError::Create { path: path.clone(), error })?;
                eprintln!("dkimpress: wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Builds the key source from flags, an opendkim.conf, or tables.
/// The commands other than the milter: `--config` is read here, and with `-v` its keys
/// without effect on this command are listed.
fn key_source(a: &KeyArgs) -> anyhow::Result<dkimpress::select::KeySource> {
    key_source_with(a, read_conf(a)?.as_ref())
}

/// The `--config` file of a command other than the milter, read once; with `-v` its keys
/// without effect on this command are listed.
fn read_conf(a: &KeyArgs) -> anyhow::Result<Option<crate::cli::conf::OpendkimConf>> {
    Ok(match &a.config {
        Some(p) => {
            let c = crate::cli::conf::OpendkimConf::load(p)?;
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
fn db_settings(a: &KeyArgs) -> anyhow::Result<dkimpress::tables::DbSettings> {
    let mut db = dkimpress::tables::DbSettings::default();
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
fn key_source_with(
    a: &KeyArgs,
    conf: Option<&crate::cli::conf::OpendkimConf>,
) -> anyhow::Result<dkimpress::select::KeySource> {
    use dkimpress::select::{KeySource, Tables, Template};
    let db = db_settings(a)?;
    // Flags win over the file; the file over defaults. A file that does not say signs
    // simple/simple, opendkim's default (opendkim.conf(5) Canonicalization); flags alone sign
    // relaxed/relaxed.
    let canon = match (a.canon, conf.and_then(|c| c.canonicalization.clone())) {
        (Some(c), _) => c,
        (None, Some(c)) => c.parse().map_err(|e| CliError::Config(format!("Canonicalization: {e}")))?,
        (None, None) if conf.is_some() => Canonicalization {
            header: dkimpress::dkim::canon::Canon::Simple,
            body: dkimpress::dkim::canon::Canon::Simple,
        },
        (None, None) => Canonicalization::default(),
    };
    let headers =
        a.headers.as_deref().map(split_list).or_else(|| conf.and_then(|c| c.sign_headers.as_deref().map(split_list)));
    let oversign = split_list(
        &a.oversign.clone().or_else(|| conf.and_then(|c| c.oversign_headers.clone())).unwrap_or_else(|| "from".into()),
    );
    let template = Template {
        canon,
        headers,
        oversign,
        body_length: a.body_length || conf.is_some_and(|c| c.body_length),
        expire: a.expire.or_else(|| conf.and_then(|c| c.signature_ttl)),
        algorithm: a.algorithm.clone().or_else(|| conf.and_then(|c| c.signature_algorithm.clone())),
        // MinimumKeyBits is a verification setting in OpenDKIM (opendkim.conf(5)): it does not
        // refuse our own signing keys (which would defer all mail). RFC 8301's 1024 applies.
        min_bits: dkimpress::dkim::key::MIN_RSA_BITS,
        strict_keys: a.strict_keys || conf.is_some_and(|c| c.require_safe_keys),
        identity: None,
    };
    if let Some(c) = conf {
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
            conf::Signing::Single { domain, selector, key_file } => (domain.clone(), selector.clone(), key_file),
        };
        let (key, warning) = SigningKey::from_path(key_file, template.strict_keys)?;
        if let Some(w) = warning {
            dkimpress::warnings::warn(&w.to_string());
        }
        let domains = if spec.contains(':') || std::path::Path::new(&spec).exists() {
            dkimpress::tables::DataSet::open(&spec, &c.dir, db)?.keys()?
        } else {
            split_list(&spec)
        };
        // Check the settings once, with the first domain.
        if let Some(d) = domains.first() {
            template.build(Arc::new(SigningKey::from_path(key_file, false)?.0), d, &selector)?;
        }
        return Ok(KeySource::Domains { domains, subdomains: c.subdomains, selector, key: Arc::new(key), template });
    }
    if let (Some(kt), Some(st)) = (&a.key_table, &a.signing_table) {
        let t = Tables::open(kt, st, a.multiple_signatures, template, std::path::Path::new("."), db)?;
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
                    dkimpress::warnings::warn(&w.to_string());
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
        signers.push(template.build(key, domain, selector)?);
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
        len => Err(usage(format!(
            "{flag} given {len} times for {keys} keys (-k): give it once for all keys, or once per key"
        ))),
    }
}

/// The current Unix time in seconds: the one clock of the command line (the core takes the time
/// as an argument).
pub(crate) fn now_unix() -> u64 {
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
    std::io::Read::take(std::io::stdin().lock(), max + 1).read_to_end(&mut buf).map_err(CliError::StdinRead)?;
    if buf.len() as u64 > max {
        return Err(CliError::StdinTooLarge { max }.into());
    }
    Ok(buf)
}

/// A failed write: exit 74 with a message. A closed pipe stays a bare `io::Error`, so that
/// `main` exits 74 without one (the reader chose to stop).
fn write_failed(what: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return anyhow::Error::new(e);
    }
    if e.kind() == std::io::ErrorKind::Interrupted && dkimpress::pipeline::io::interrupted() {
        return BulkError::Interrupted.into();
    }
    CliError::Write { what: what.to_string(), error: e }.into()
}

/// Key record sources: zone files and key directories (offline), else DNS (or DNS as well when
/// servers are named).
fn key_lookup(r: &RecordArgs) -> anyhow::Result<dkimpress::lookup::Chain> {
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
fn mta_options(k: &KeyArgs, conf: Option<&crate::cli::conf::OpendkimConf>) -> anyhow::Result<SignPolicy> {
    Ok(SignPolicy {
        keys: key_source_with(k, conf)?,
        sender: k.sender.clone(),
        strip_own: false,
        now: k.timestamp.unwrap_or_else(now_unix),
        max_message: pipeline::DEFAULT_MAX_MESSAGE,
    })
}
