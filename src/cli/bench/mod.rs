//! `dkimpress bench`: its arguments, the corpus it measures (generated or read) and the
//! report; the measurements are [`harness`].

use crate::cli::args::{KeyTypeArg, ReportFormat};
use crate::cli::count;
use crate::cli::error::{usage, write_failed, CliError};
use clap::Args;
use dkimpress::dkim::key::KeyType;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

mod harness;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Messages to generate.
    #[arg(long = "count", default_value_t = 3000)]
    pub(crate) count: usize,
    /// Message sizes: 4k, 1m, lognormal:4k, ... (k and m are 1024 and 1048576 octets).
    #[arg(long = "size", default_value = "4k")]
    pub(crate) size: dkimpress::corpus::SizeDist,
    /// Seed of the generator (same seed, same corpus).
    #[arg(long = "seed", default_value_t = 1)]
    pub(crate) seed: u64,
    /// Give every 7th message a base64 attachment.
    #[arg(long = "attachments")]
    pub(crate) attachments: bool,
    /// Measure this mbox instead of a generated corpus.
    #[arg(long = "input", value_name = "MBOX")]
    pub(crate) input: Option<PathBuf>,
    /// Thread counts, comma-separated [default: 1 and all cores].
    #[arg(short = 'j', long = "threads", value_name = "LIST")]
    pub(crate) threads: Option<String>,
    /// Key types to sign and verify with, comma-separated, in this order (genkey's --type).
    #[arg(long = "type", alias = "algorithms", value_name = "TYPES", value_enum, value_delimiter = ',',
          default_values_t = [KeyTypeArg::Rsa, KeyTypeArg::Ed25519])]
    pub(crate) key_types: Vec<KeyTypeArg>,
    /// Canonicalization of the end-to-end runs (header/body).
    #[arg(short = 'c', long = "canonicalization", value_name = "H/B", default_value = "relaxed/relaxed")]
    pub(crate) canon: dkimpress::dkim::canon::Canonicalization,
    /// Minimum seconds per measurement.
    #[arg(long = "seconds", default_value_t = 1.0)]
    pub(crate) seconds: f64,
    /// Report: text (the figures on stderr as they are measured) or json (also an array of the
    /// figures on stdout). Rates are in MB/s, 1 MB = 10^6 octets.
    #[arg(long = "report", value_name = "FORMAT", value_enum, default_value_t = ReportFormat::Text)]
    pub(crate) report: ReportFormat,
    /// Same as --report json (the older spelling).
    #[arg(long = "json", hide = true)]
    pub(crate) json: bool,
    /// No figures on stderr (with --report json, only the JSON).
    #[arg(short = 'q', long = "quiet")]
    pub(crate) quiet: bool,
    /// Framings of the end-to-end rows, comma-separated: parallel, serial (a row each).
    #[arg(long = "framing", value_name = "LIST", value_delimiter = ',', default_value = "parallel", hide = true)]
    pub(crate) framing: Vec<dkimpress::pipeline::Framing>,
}

pub(crate) fn cmd_bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
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
        return Err(usage("--threads must be at least 1"));
    }
    let keys: Vec<KeyType> = a.key_types.iter().map(|&k| k.into()).collect();
    let corpus = match &a.input {
        Some(p) => std::fs::read(p).map_err(|error| CliError::Input { path: p.clone(), error })?,
        None => dkimpress::corpus::generate(a.count, a.size, a.seed, a.attachments),
    };
    let name = a
        .input
        .as_ref()
        .map_or(format!("{}, size {}, seed {}", count(a.count as u64, "generated message"), a.size, a.seed), |p| {
            p.display().to_string()
        });
    if !a.quiet {
        eprintln!(
            "dkimpress bench: {} octets, {name}; threads {threads:?}; {} cores; rates in MB/s (10^6 octets)",
            corpus.len(),
            cores
        );
    }
    let opts = harness::BenchOptions {
        corpus,
        name,
        threads,
        keys,
        canon: a.canon,
        min: std::time::Duration::from_secs_f64(a.seconds.max(0.05)),
        quiet: a.quiet,
        framings: a.framing,
    };
    let figs = harness::run(&opts).map_err(CliError::Bench)?;
    if a.json || a.report == ReportFormat::Json {
        let v: Vec<serde_json::Value> = figs.iter().map(|f| f.to_json()).collect();
        // Not println!, which panics on a closed pipe: a failed write is exit 74.
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::Value::Array(v))
            .and_then(|()| out.flush())
            .map_err(|e| write_failed("stdout", e))?;
    }
    Ok(ExitCode::SUCCESS)
}
