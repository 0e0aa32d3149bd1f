//! `dkimpress bench` arguments; the harness is [`super::bench`].

use super::*;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Messages to generate.
    #[arg(long = "count", default_value_t = 3000)]
    pub(crate) count: usize,
    /// Message sizes: 4k, 1m, lognormal:4k, ...
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
    /// Key types to sign and verify with: rsa, ed25519 (comma-separated).
    #[arg(long = "algorithms", default_value = "rsa,ed25519")]
    pub(crate) algorithms: String,
    /// Canonicalization of the end-to-end runs (header/body).
    #[arg(short = 'c', long = "canonicalization", value_name = "H/B", default_value = "relaxed/relaxed")]
    pub(crate) canon: dkimpress::dkim::canon::Canonicalization,
    /// Minimum seconds per measurement.
    #[arg(long = "seconds", default_value_t = 1.0)]
    pub(crate) seconds: f64,
    /// Print the figures as JSON on stdout.
    #[arg(long = "json")]
    pub(crate) json: bool,
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
        Some(p) => std::fs::read(p).map_err(|error| CliError::Input { path: p.clone(), error })?,
        None => dkimpress::corpus::generate(a.count, a.size, a.seed, a.attachments),
    };
    eprintln!(
        "dkimpress bench: {} bytes, {}; threads {threads:?}; {} cores",
        corpus.len(),
        a.input.as_ref().map_or(format!("{} generated messages, size {}, seed {}", a.count, a.size, a.seed), |p| p
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
    let figs = crate::cli::bench::run(&opts).map_err(CliError::Bench)?;
    if a.json {
        let v: Vec<serde_json::Value> = figs.iter().map(|f| f.to_json()).collect();
        println!("{}", serde_json::Value::Array(v));
    }
    Ok(ExitCode::SUCCESS)
}
