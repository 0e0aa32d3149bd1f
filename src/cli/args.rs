//! The clap option groups several commands share (`KeyArgs`, `InputArgs`, `RecordArgs`) and
//! the small value enums of the command line. Only their definitions and the checks of single
//! values (`--threads`, sizes) live here; turning them into keys and lookups is [`super::keys`].

use super::error::usage;
use super::man;
use clap::Args;
use dkimpress::dkim::canon::Canonicalization;
use dkimpress::dkim::key::KeyType;
use dkimpress::pipeline::mbox::MboxFormat;
use dkimpress::pipeline::{self, InputKind};
use std::path::PathBuf;

/// The options that choose keys and tags: shared by `sign` and `filter`.
#[derive(Args, Debug, Default, Clone)]
pub(super) struct KeyArgs {
    /// Signing domain (d=). Give once for all keys, or once per -k.
    #[arg(short = 'd', long = "domain", value_name = "DOMAIN")]
    pub(super) domains: Vec<String>,
    /// Selector (s=). Give once for all keys, or once per -k.
    #[arg(short = 's', long = "selector", value_name = "SELECTOR")]
    pub(super) selectors: Vec<String>,
    /// Private key file (PEM or DER; RSA or Ed25519). Repeat for several signatures.
    #[arg(short = 'k', long = "key", value_name = "KEYFILE")]
    pub(super) keys: Vec<PathBuf>,
    /// An opendkim.conf: Domain/Selector/KeyFile or KeyTable/SigningTable, Canonicalization,
    /// SignHeaders, OversignHeaders, SubDomains, MultipleSignatures, ... (flags given here win).
    #[arg(long = "config", value_name = "FILE", conflicts_with_all = ["keys", "key_table"])]
    pub(super) config: Option<PathBuf>,
    /// OpenDKIM KeyTable data set (file, refile:, dsn:pgsql://...).
    #[arg(long = "key-table", value_name = "DATASET", requires = "signing_table", conflicts_with = "keys")]
    pub(super) key_table: Option<String>,
    /// OpenDKIM SigningTable data set (file, refile:, dsn:pgsql://...).
    #[arg(long = "signing-table", value_name = "DATASET", requires = "key_table")]
    pub(super) signing_table: Option<String>,
    /// With tables: apply every matching SigningTable entry, not just the first.
    #[arg(long = "multiple-signatures")]
    pub(super) multiple_signatures: bool,
    /// Choose the key by this envelope sender instead of the From address.
    #[arg(long = "sender", value_name = "ADDR")]
    pub(super) sender: Option<String>,
    /// Say more on stderr (ignored configuration keys, messages without a key).
    #[arg(short = 'v', long = "verbose")]
    pub(super) verbose: bool,
    /// Signature algorithm; checked against the key (rsa-sha256 or ed25519-sha256).
    #[arg(short = 'a', long = "algorithm", value_name = "ALG")]
    pub(super) algorithm: Option<String>,
    /// Canonicalization header/body: simple or relaxed each [default: relaxed/relaxed].
    #[arg(short = 'c', long = "canonicalization", value_name = "H/B")]
    pub(super) canon: Option<Canonicalization>,
    /// Header fields to sign, colon- or comma-separated (default: RFC 6376 §5.4.1 list and
    /// Message-ID, MIME-Version, Content-Type, Content-Transfer-Encoding).
    #[arg(long = "headers", value_name = "LIST")]
    pub(super) headers: Option<String>,
    /// Header fields to sign once more than present (oversigning); empty string for none
    /// [default: from].
    #[arg(long = "oversign", value_name = "LIST")]
    pub(super) oversign: Option<String>,
    /// Agent or user identifier (i=), an address at the signing domain or a subdomain.
    #[arg(short = 'i', long = "identity", value_name = "ADDR")]
    pub(super) identity: Option<String>,
    /// Add l= with the canonicalized body length (risky: RFC 6376 §8.2).
    #[arg(long = "body-length")]
    pub(super) body_length: bool,
    /// Signature lifetime in seconds (x= = t= + SECONDS).
    #[arg(short = 'x', long = "expire", value_name = "SECONDS")]
    pub(super) expire: Option<u64>,
    /// Refuse key files readable by group or others (default: warn).
    #[arg(long = "strict-keys")]
    pub(super) strict_keys: bool,
    /// Seconds a PostgreSQL data set may take to connect or answer a query, then exit 75
    /// [default: 10].
    #[arg(long = "db-timeout", value_name = "SECS")]
    pub(super) db_timeout: Option<f64>,
    /// Seconds an answer of a PostgreSQL data set (KeyTable, SigningTable, host lists) is
    /// reused, found or not; 0 asks the database for every message [default: 5].
    #[arg(long = "db-cache", value_name = "SECS")]
    pub(super) db_cache: Option<f64>,
    /// Fixed signing time (Unix seconds), for reproducible output in tests.
    #[arg(long = "timestamp", value_name = "UNIX", hide = true)]
    pub(super) timestamp: Option<u64>,
}

/// How inputs are read: shared by `sign` and `verify`.
#[derive(Args, Debug)]
pub(super) struct InputArgs {
    /// Input kind [default: detected per input: a directory with cur/ or new/ is a maildir,
    /// another directory a queue, a file starting with "From " an mbox, else one message].
    #[arg(long = "format", value_name = "KIND", value_parser = man::INPUT_KINDS)]
    pub(super) format: Option<InputKind>,
    /// mbox flavour (see mbox(5)).
    #[arg(long = "mbox-format", value_name = "FLAVOUR", default_value = "mboxrd", value_parser = man::MBOX_FORMATS)]
    pub(super) mbox_format: MboxFormat,
    /// Worker threads (default: all cores).
    #[arg(short = 'j', long = "threads", value_name = "N")]
    pub(super) threads: Option<usize>,
    /// Largest message handled (octets; K, M, G suffixes): a larger one is passed through
    /// unsigned and reported, or refused when it is the only input [default: 512M].
    #[arg(long = "max-message-size", value_name = "SIZE", value_parser = parse_size)]
    pub(super) max_message_size: Option<u64>,
    /// Seconds to wait for the locks of an mbox signed --in-place (then exit 75).
    #[arg(long = "lock-timeout", value_name = "SECS", default_value_t = 30)]
    pub(super) lock_timeout: u64,
    /// Handle only share K of N (1 <= K <= N) of the inputs, for N independent runs on as many
    /// machines: an mbox by message-aligned byte ranges, a directory by a hash of each file's
    /// name. The N outputs concatenated in K order equal one run's output.
    #[arg(long = "shard", value_name = "K/N")]
    pub(super) shard: Option<pipeline::Shard>,
    /// Who finds message boundaries in an mboxrd/mboxo file: parallel (each worker in its own
    /// byte range, the default) or serial (one thread). For measurements; the output is the same.
    #[arg(long = "framing", value_name = "HOW", default_value = "parallel", hide = true, value_parser = man::FRAMINGS)]
    pub(super) framing: pipeline::Framing,
}

/// A size in octets, with an optional K, M or G suffix (powers of 1024).
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
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
    pub(super) fn max_message(&self) -> u64 {
        self.max_message_size.unwrap_or(pipeline::DEFAULT_MAX_MESSAGE)
    }

    /// The worker thread count: --threads, or all cores.
    pub(super) fn threads(&self) -> anyhow::Result<usize> {
        match self.threads {
            Some(0) => Err(usage("--threads must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

/// Where key records come from: shared by `verify` and `testkey`.
#[derive(Args, Debug, Clone)]
pub(super) struct RecordArgs {
    /// Key records from zone files (as `genkey` writes them) instead of DNS. Repeatable.
    #[arg(long = "dns-zone", value_name = "FILE")]
    pub(super) zones: Vec<PathBuf>,
    /// Key records from a directory of SELECTOR._domainkey.DOMAIN.txt files. Repeatable.
    #[arg(long = "key-dir", value_name = "DIR")]
    pub(super) key_dirs: Vec<PathBuf>,
    /// DNS server to ask (host:port or IP, port 53 by default) instead of /etc/resolv.conf.
    /// With --dns-zone or --key-dir and no --dns-server, DNS is not used at all.
    #[arg(long = "dns-server", value_name = "ADDR")]
    pub(super) dns_servers: Vec<String>,
    /// Seconds to wait for a DNS answer (then temperror).
    #[arg(long = "dns-timeout", value_name = "SECS", default_value_t = 5.0)]
    pub(super) dns_timeout: f64,
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
