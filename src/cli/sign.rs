//! `dkimpress sign`: arguments to one checked [`SignConfig`], then one message (stdin or a file) or
//! whole archives through the pipeline, to stdout, a file, a device or in place.

use crate::cli::args::{InputArgs, KeyArgs, ReportFormat};
use crate::cli::error::{sysexits, usage, write_failed};
use crate::cli::keys::key_source;
use crate::cli::{count, now_unix, read_stdin, same_file};
use anyhow::Context as _;
use clap::Args;
use dkimpress::pipeline::{self, BulkOptions, Destination, InputKind, Progress, SignPolicy, Summary};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct SignArgs {
    #[command(flatten)]
    pub(crate) k: KeyArgs,
    /// Write the result here: a file for a message or an mbox (same flavour), a directory for a
    /// maildir or queue directory (same file names). Default, or -: stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE|DIR", conflicts_with = "in_place")]
    pub(crate) output: Option<PathBuf>,
    /// Replace each input atomically (temporary file, fsync, rename; per file for directories).
    #[arg(long = "in-place")]
    pub(crate) in_place: bool,
    #[command(flatten)]
    pub(crate) input: InputArgs,
    /// Remove existing DKIM-Signature fields whose d= is a domain we sign for (key rotation);
    /// other domains' signatures are always kept.
    #[arg(long = "strip-own")]
    pub(crate) strip_own: bool,
    /// Final report format for archives: text (stderr) or json.
    #[arg(long = "report", value_name = "FORMAT", value_enum, default_value_t = ReportFormat::Text)]
    pub(crate) report: ReportFormat,
    /// No progress bar, no text summary, and no line for a message left unsigned because no
    /// key is configured for its author (errors are still shown; --report json lists all).
    #[arg(short = 'q', long = "quiet")]
    pub(crate) quiet: bool,
    /// A message left unsigned because no key is configured for its author (no SigningTable
    /// match, a domain not in Domain) makes the exit status 65; by default that is exit 0.
    #[arg(long = "require-signed")]
    pub(crate) require_signed: bool,
    /// Messages to sign: mbox files, maildirs, queue directories or message files; none or -
    /// for one message on stdin.
    #[arg(value_name = "INPUT")]
    pub(crate) inputs: Vec<PathBuf>,
}

/// Where `sign` reads from.
pub(crate) enum SignInput {
    /// One message on stdin.
    Stdin,
    /// Archives and message files, each with its kind (and the bytes of a pipe or device).
    Paths(Vec<pipeline::Source>),
}

/// Everything `sign` needs, checked.
pub(crate) struct SignConfig {
    pub(crate) opts: BulkOptions,
    pub(crate) lock_timeout: std::time::Duration,
    pub(crate) input: SignInput,
    pub(crate) output: Option<PathBuf>,
    pub(crate) in_place: bool,
    pub(crate) threads: usize,
    pub(crate) report_json: bool,
    pub(crate) quiet: bool,
    /// `--require-signed`: no key for a message is a failure (65), not a normal outcome.
    pub(crate) require_signed: bool,
}

impl SignConfig {
    pub(crate) fn from_args(mut a: SignArgs) -> anyhow::Result<SignConfig> {
        // `-o -` is stdout, as `-` is stdin among the inputs (not a file named "-").
        a.output = a.output.filter(|o| o.as_os_str() != "-");
        let keys = key_source(&a.k)?;
        if a.input.shard.is_some() && a.in_place {
            return Err(usage("--shard with --in-place would have N runs replace the same files: use -o"));
        }
        let input = if a.inputs.is_empty() || (a.inputs.len() == 1 && a.inputs[0].as_os_str() == "-") {
            if a.input.shard.is_some() {
                return Err(usage("--shard splits archives (mbox, maildir, queue directory), not stdin"));
            }
            if a.in_place {
                return Err(usage("--in-place needs input files, not stdin"));
            }
            SignInput::Stdin
        } else {
            let mut paths = vec![];
            for p in &a.inputs {
                if p.as_os_str() == "-" {
                    return Err(usage("stdin (-) cannot be mixed with other inputs"));
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
                return Err(usage("several inputs need --in-place (or one run per input with -o)"));
            }
            SignInput::Paths(paths)
        };
        let threads = a.input.threads()?;
        let now = a.k.timestamp.unwrap_or_else(now_unix);
        Ok(SignConfig {
            opts: BulkOptions {
                policy: SignPolicy {
                    keys,
                    sender: a.k.sender.clone(),
                    strip_own: a.strip_own,
                    now,
                    max_message: a.input.max_message(),
                    dkim: true,
                    arc: None,
                },
                mbox_format: a.input.mbox_format,
                shard: a.input.shard,
                framing: a.input.framing,
            },
            lock_timeout: std::time::Duration::from_secs(a.input.lock_timeout),
            input,
            output: a.output,
            in_place: a.in_place,
            threads,
            report_json: a.report == ReportFormat::Json,
            quiet: a.quiet,
            require_signed: a.require_signed,
        })
    }
}

pub(crate) fn cmd_sign(cfg: SignConfig) -> anyhow::Result<ExitCode> {
    pipeline::io::install_interrupt_handler();
    match &cfg.input {
        SignInput::Stdin => {
            let buf = read_stdin(cfg.opts.policy.max_message)?;
            sign_single(&cfg, "stdin", &buf, None)
        }
        SignInput::Paths(paths) if paths.len() == 1 && paths[0].kind == InputKind::Message => {
            let src = &paths[0];
            if !pipeline::owns_lone_message(cfg.opts.shard) {
                if let Some(o) = &cfg.output {
                    pipeline::write_message(&mut Destination::To(o), Some(src), &[], &[], &[])?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            sign_single(&cfg, &src.path.display().to_string(), &src.read_message()?, Some(src))
        }
        SignInput::Paths(paths) => sign_archives(&cfg, paths),
    }
}

/// Pipe mode and single message files: the message is signed or nothing is written.
pub(crate) fn sign_single(
    cfg: &SignConfig,
    name: &str,
    msg: &[u8],
    source: Option<&pipeline::Source>,
) -> anyhow::Result<ExitCode> {
    // `seal` goes through here too: its messages are sealed, not signed.
    let (verb, done) = if cfg.opts.policy.dkim { ("sign", "signed") } else { ("seal", "sealed") };
    let (headers, drop) = match pipeline::guarded("signing", || pipeline::sign_message(&cfg.opts.policy, msg)) {
        Ok(r) => r,
        // No key for this author: not an error; the message goes on unsigned (as OpenDKIM),
        // unless --require-signed asks for every message to be signed (then nothing is
        // written, as for any other message we cannot sign: exit 65).
        Err(e) if e.is_no_key() && !cfg.require_signed => {
            if !cfg.quiet {
                eprintln!(
                    "dkimpress: {}: {}: passed through {}",
                    pipeline::sanitize(name),
                    pipeline::sanitize(&e.to_string()),
                    if cfg.opts.policy.dkim { "unsigned" } else { "unchanged" }
                );
            }
            (vec![], vec![])
        }
        Err(e) if e.is_no_key() => {
            return Err(
                anyhow::Error::new(e).context(format!("{}: not {done} (--require-signed)", pipeline::sanitize(name)))
            )
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{}: cannot {verb}", pipeline::sanitize(name)))),
    };
    let mut stdout = None;
    let mut dest = destination(cfg, &mut stdout);
    pipeline::write_message(&mut dest, source, &headers, msg, &drop)?;
    Ok(ExitCode::SUCCESS)
}

/// Where `sign` writes: in place, `-o`, else stdout (unbuffered: an mbox goes out in one
/// `writev` per unit straight from the map, which std's line-buffered Stdout would copy).
fn destination<'a>(cfg: &'a SignConfig, stdout: &'a mut Option<Box<dyn Write + Send>>) -> Destination<'a> {
    match &cfg.output {
        _ if cfg.in_place => Destination::InPlace { lock_timeout: cfg.lock_timeout },
        Some(o) => Destination::To(o),
        None => Destination::Stream { out: stdout.insert(Box::new(crate::cli::os::stdout_raw())), name: "stdout" },
    }
}

/// Bulk mode: mboxes, maildirs, queue directories (and message files among several inputs).
pub(crate) fn sign_archives(cfg: &SignConfig, paths: &[pipeline::Source]) -> anyhow::Result<ExitCode> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .thread_name(|i| format!("dkimpress-{i}"))
        .build()
        .context("cannot start worker threads")?;
    let show = !cfg.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let total: u64 = if show { paths.iter().map(|s| input_bytes(&s.path, s.kind)).sum() } else { 0 };
    let progress = Progress::new(show, total).quiet_no_key(cfg.quiet);
    let mut summary = Summary::default();
    let started = std::time::Instant::now();
    let mut stdout = None;
    let mut dest = destination(cfg, &mut stdout);
    for source in paths {
        if let Err(e) = pipeline::sign_path(source, &mut dest, &cfg.opts, &pool, &mut summary, &progress) {
            progress.finish();
            return Err(e.into());
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    report(cfg, &summary, secs)?;
    Ok(ExitCode::from(bulk_exit(&summary, cfg.require_signed)))
}

/// The exit status of a bulk run that went to its end: 65 when a message could not be signed,
/// 0 when every message was signed or only lacked a key (list mail, other domains: a normal
/// outcome), unless `require_signed` makes those count too.
pub(crate) fn bulk_exit(s: &Summary, require_signed: bool) -> u8 {
    let failed = s.passed_through - s.no_key;
    if failed > 0 || (require_signed && s.no_key > 0) {
        sysexits::DATAERR
    } else {
        0
    }
}

/// Input size for the progress bar.
pub(crate) fn input_bytes(path: &Path, kind: InputKind) -> u64 {
    match kind {
        InputKind::Maildir | InputKind::QueueDir => pipeline::list_messages(path, kind)
            .map(|fs| fs.iter().filter_map(|f| std::fs::metadata(path.join(&f.rel)).ok()).map(|m| m.len()).sum())
            .unwrap_or(0),
        _ => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

/// The final summary: a text line on stderr, or JSON (on stdout, or on stderr when stdout
/// carries the signed mail). A stdout that fails is an error (a closed pipe: exit 74), not a
/// panic as `println!` would make it.
pub(crate) fn report(cfg: &SignConfig, s: &Summary, secs: f64) -> anyhow::Result<()> {
    let rate = if secs > 0.0 { s.messages as f64 / secs } else { 0.0 };
    if cfg.report_json {
        let problems: Vec<serde_json::Value> = s
            .problems
            .iter()
            .map(|p| {
                serde_json::json!({"file": p.file, "index": p.index, "offset": p.offset, "reason": p.reason,
                    "no_key": p.no_key})
            })
            .collect();
        let v = serde_json::json!({
            "messages": s.messages, "signed": s.signed, "passed_through": s.passed_through, "no_key": s.no_key,
            "bytes": s.bytes, "seconds": secs, "messages_per_second": rate,
            "threads": cfg.threads, "problems": problems,
            // The serial part: CPU of the splitter and the ordered writer.
            "serial_cpu_seconds": {"splitter": s.serial_cpu.splitter, "writer": s.serial_cpu.writer},
            "serial_cpu_seconds_per_gb": if s.bytes > 0 { s.serial_cpu.total() / (s.bytes as f64 / 1e9) } else { 0.0 },
        });
        let to_stdout = cfg.in_place || cfg.output.is_some();
        if to_stdout {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{v}").and_then(|()| out.flush()).map_err(|e| write_failed("stdout", e))?;
        } else {
            eprintln!("{v}");
        }
    } else if !cfg.quiet {
        // Which of the messages passed through lacked only a key (a normal outcome); `seal`
        // counts a closed ARC chain there too.
        let (done, skipped) = if cfg.opts.policy.dkim {
            ("signed", "without a key")
        } else {
            ("sealed", "without a key or with a closed chain")
        };
        let why = match s.passed_through {
            0 => String::new(),
            _ => format!(" ({} {skipped}, {} could not be {done})", s.no_key, s.passed_through - s.no_key),
        };
        eprintln!(
            "dkimpress: {}: {} {done}, {} passed through un{done}{why}; {:.1} MB in {:.2} s ({:.0} msgs/s, {} threads)",
            count(s.messages, "message"),
            s.signed,
            s.passed_through,
            s.bytes as f64 / 1e6,
            secs,
            rate,
            cfg.threads
        );
    }
    Ok(())
}
