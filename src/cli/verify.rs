//! `dkimpress verify`: messages, mboxes, maildirs and queue directories checked in parallel, one
//! line (or JSON object) per message; `--add-ar` as a filter.

use crate::cli::args::{InputArgs, RecordArgs, ReportFormat, Require};
use crate::cli::error::{usage, write_failed};
use crate::cli::keys::key_lookup;
use crate::cli::{count, now_unix, read_stdin};
use anyhow::Context as _;
use clap::Args;
use dkimpress::dkim::arc::{self, ArcVerdict};
use dkimpress::dkim::verify::{self, DkimResult, Policy, Verdict};
use dkimpress::lookup::{Chain, KeyCache};
use dkimpress::pipeline;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) records: RecordArgs,
    /// At most N key lookups in flight at once, across all threads (N >= 1). Each key is looked
    /// up once per run: threads that want a key already being looked up wait for that answer.
    #[arg(long = "dns-concurrency", value_name = "N", default_value_t = dkimpress::lookup::DEFAULT_DNS_CONCURRENCY)]
    pub(crate) dns_concurrency: usize,
    /// Accept rsa-sha1 signatures (RFC 8301 forbids them; for old archives).
    #[arg(long = "allow-sha1")]
    pub(crate) allow_sha1: bool,
    /// Smallest RSA key accepted, in bits (RFC 8301: 1024).
    #[arg(long = "min-key-bits", value_name = "BITS", default_value_t = 1024)]
    pub(crate) min_key_bits: usize,
    /// Clock skew allowed for t= and x=, in seconds.
    #[arg(long = "clock-skew", value_name = "SECS", default_value_t = dkimpress::dkim::verify::DEFAULT_CLOCK_SKEW)]
    pub(crate) clock_skew: u64,
    /// Verify as of this Unix time (default: now), e.g. for an archive whose signatures expired.
    #[arg(long = "at", value_name = "UNIX")]
    pub(crate) at: Option<u64>,
    /// Which signatures must pass for a message to count as verified: any or all.
    #[arg(long = "require", value_name = "WHICH", value_enum, default_value_t = Require::Any)]
    pub(crate) require: Require,
    #[command(flatten)]
    pub(crate) input: InputArgs,
    /// Output: text (a line per message) or json (a JSON object per line).
    #[arg(long = "report", value_name = "FORMAT", value_enum, default_value_t = ReportFormat::Text)]
    pub(crate) report: ReportFormat,
    /// No summary line on stderr.
    #[arg(short = 'q', long = "quiet", conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Text report: also each signature's i= (JSON always has it) and the time taken.
    #[arg(short = 'v', long = "verbose")]
    pub(crate) verbose: bool,
    /// Also validate each message's ARC chain (RFC 8617 §5.2): `arc=pass|fail|none` after the
    /// DKIM results of the report line, the field `arc` in JSON, an `arc=` result in
    /// Authentication-Results (--add-ar). The exit status stays that of DKIM.
    #[arg(long = "arc")]
    pub(crate) arc: bool,
    /// Filter mode (stdin only): write the message to stdout with an Authentication-Results
    /// field (RFC 8601) for this authserv-id on top; exit 0 whatever the result.
    #[arg(long = "add-ar", value_name = "AUTHSERV-ID")]
    pub(crate) add_ar: Option<String>,
    /// Messages to verify; none or - for one message on stdin.
    #[arg(value_name = "INPUT")]
    pub(crate) inputs: Vec<PathBuf>,
}

/// One line of the verification report.
pub(crate) fn verdict_line(
    name: &str,
    verdicts: &[dkimpress::dkim::verify::Verdict],
    chain: Option<&ArcVerdict>,
    overall: dkimpress::dkim::verify::DkimResult,
    verbose: bool,
) -> String {
    use std::fmt::Write as _;
    let mut line = format!("{}: {overall}", pipeline::sanitize(name));
    for v in verdicts {
        // d=, s= and a= are shown as the signature wrote them, also when they did not pass
        // the name rules: control characters (a terminal's escapes) are replaced like the rest.
        let _ = write!(
            line,
            " | {} d={} s={} a={}",
            v.result,
            pipeline::sanitize(&v.domain),
            pipeline::sanitize(&v.selector),
            pipeline::sanitize(&v.algorithm)
        );
        if verbose && !v.identity.is_empty() {
            let _ = write!(line, " i={}", pipeline::sanitize(&v.identity));
        }
        if let Some(reason) = &v.reason {
            let _ = write!(line, ": {}", pipeline::sanitize(&reason.to_string()));
        }
        for n in &v.notes {
            let _ = write!(line, " [{}]", pipeline::sanitize(n));
        }
    }
    if let Some(c) = chain {
        line.push_str(&format!(" | arc={}", c.result));
        if c.instances > 0 {
            line.push_str(&format!(" i={}", c.instances));
        }
        if !c.sealer.is_empty() {
            line.push_str(&format!(" d={}", pipeline::sanitize(&c.sealer)));
        }
        if let Some(reason) = &c.reason {
            line.push_str(&format!(": {}", pipeline::sanitize(reason)));
        }
    }
    line
}

pub(crate) fn verdict_json(
    name: &str,
    file: &str,
    index: u64,
    offset: u64,
    verdicts: &[dkimpress::dkim::verify::Verdict],
    chain: Option<&ArcVerdict>,
    overall: dkimpress::dkim::verify::DkimResult,
) -> String {
    // What comes from the message (tags, reasons quoting them) has its control characters
    // replaced, as in the text report: JSON escapes only U+0000-U+001F, and DEL or a C1 control
    // (U+009B starts a terminal escape sequence) would reach whoever prints the value. The file
    // name is written exactly, for the programs that open it.
    use pipeline::sanitize as clean;
    let sigs: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|v| {
            let reason = v.reason.as_ref().map(|r| clean(&r.to_string())).unwrap_or_default();
            serde_json::json!({"result": v.result.as_str(), "reason": reason, "d": clean(&v.domain),
                "s": clean(&v.selector), "a": clean(&v.algorithm), "i": clean(&v.identity),
                "notes": v.notes.iter().map(|n| clean(n)).collect::<Vec<_>>()})
        })
        .collect();
    let mut v = serde_json::json!({"message": name, "file": file, "index": index, "offset": offset,
        "result": overall.as_str(), "signatures": sigs});
    if let Some(c) = chain {
        v["arc"] = c.result.as_str().into();
        v["arc_instances"] = c.instances.into();
        v["arc_sealer"] = clean(&c.sealer).into();
        v["arc_reason"] = c.reason.as_deref().map(clean).unwrap_or_default().into();
        // The oldest instance whose ARC-Message-Signature still validates, for a passing
        // chain (null when not known).
        v["arc_oldest_pass"] = c.oldest_pass.into();
        // The sealers, newest first.
        v["arc_chain"] = c.custody.iter().map(|d| clean(d)).collect::<Vec<_>>().into();
    }
    v.to_string()
}

pub(crate) fn cmd_verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let limit =
        std::num::NonZeroUsize::new(a.dns_concurrency).ok_or_else(|| usage("--dns-concurrency must be at least 1"))?;
    let checker = Checker {
        cache: KeyCache::with_limit(key_lookup(&a.records)?, limit),
        policy: Policy {
            allow_sha1: a.allow_sha1,
            min_rsa_bits: a.min_key_bits,
            clock_skew: a.clock_skew,
            ..Policy::default()
        },
        now: a.at.unwrap_or_else(now_unix),
        arc: a.arc,
    };
    let started = std::time::Instant::now();
    let stdin_mode = a.inputs.is_empty() || (a.inputs.len() == 1 && a.inputs[0].as_os_str() == "-");
    if a.add_ar.is_some() && !stdin_mode {
        return Err(usage("--add-ar is a filter: it reads one message on stdin"));
    }
    let mut report = Report::new(std::io::BufWriter::new(crate::cli::os::stdout_raw()), &a);
    if let Some(id) = &a.add_ar {
        check_authserv_id(id)?;
    }
    if stdin_mode {
        let buf = read_stdin(a.input.max_message())?;
        let checks = checker.checks(&buf);
        if let Some(id) = &a.add_ar {
            write_with_authentication_results(&mut report.out, id, &buf, &checks)
                .map_err(|e| write_failed("stdout", e))?;
            return Ok(ExitCode::SUCCESS);
        }
        report.message("stdin", "stdin", 1, 0, &checks).map_err(|e| write_failed("stdout", e))?;
    } else {
        verify_files(&a, &checker, &mut report)?;
    }
    report.finish(started)
}

/// Verifies one message at a time with the run's keys, policy and clock.
struct Checker {
    /// Each key looked up once per run.
    cache: KeyCache<Chain>,
    policy: Policy,
    /// The time signatures are checked at (`--at`, else now).
    now: u64,
    /// `--arc`: validate ARC chains too.
    arc: bool,
}

impl Checker {
    /// The verdicts of one message, and its chain result with `--arc`; a message that does not
    /// parse gets one permerror (and a failed chain: nothing in it can be trusted).
    fn checks(&self, msg: &[u8]) -> pipeline::Checks {
        let keys = |s: &str, d: &str| self.cache.get(s, d);
        let parsed = match dkimpress::dkim::header::Message::parse(msg) {
            Ok(p) => p,
            Err(e) => {
                let arc = self.arc.then(|| ArcVerdict::unparsable(&e));
                return pipeline::Checks {
                    verdicts: vec![Verdict::new(DkimResult::PermError, verify::Reason::Unparsable(e))],
                    arc,
                };
            }
        };
        if self.arc {
            let (verdicts, chain) = arc::verify_with_chain(&parsed, &keys, self.now, &self.policy);
            pipeline::Checks { verdicts, arc: Some(chain) }
        } else {
            pipeline::Checks { verdicts: verify::verify_message(&parsed, &keys, self.now, &self.policy), arc: None }
        }
    }
}

/// Verifies every message of the input files, on `--threads` workers, reporting them in input
/// order.
fn verify_files(a: &VerifyArgs, checker: &Checker, report: &mut Report<impl Write + Send>) -> anyhow::Result<()> {
    let threads = a.input.threads()?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("cannot start worker threads")?;
    pipeline::io::install_interrupt_handler();
    for p in &a.inputs {
        let source = pipeline::open_source(p, a.input.format, a.input.max_message())?;
        pipeline::verify_source(
            source,
            pipeline::Reading {
                fmt: a.input.mbox_format,
                shard: a.input.shard,
                framing: a.input.framing,
                max_message: a.input.max_message(),
            },
            &pool,
            &|msg: &[u8]| checker.checks(msg),
            |c| report.message(c.name, c.file, c.index, c.offset, &c.checks),
        )?;
    }
    Ok(())
}

/// `--add-ar`: writes the message with an Authentication-Results field for `id` on top.
fn write_with_authentication_results(
    out: &mut impl Write,
    id: &str,
    msg: &[u8],
    checks: &pipeline::Checks,
) -> std::io::Result<()> {
    let parsed = dkimpress::dkim::header::Message::parse(msg).ok();
    let le = if parsed.as_ref().is_some_and(|m| m.crlf) { "\r\n" } else { "\n" };
    // RFC 8601 §5: Authentication-Results fields that claim our authserv-id and did not
    // come from us are forgeries: remove them before adding ours.
    let forged: Vec<std::ops::Range<usize>> = parsed
        .iter()
        .flat_map(|m| m.fields.iter())
        .filter(|f| f.is("authentication-results") && verify::claims_authserv_id(f.value(), id))
        .map(|f| f.offset..f.offset + f.raw.len())
        .collect();
    let ar = match &checks.arc {
        Some(chain) => arc::authentication_results(id, &checks.verdicts, chain, le),
        None => verify::authentication_results(id, &checks.verdicts, le),
    };
    out.write_all(ar.as_bytes()).and_then(|_| pipeline::write_without(out, msg, &forged)).and_then(|_| out.flush())
}

/// The report: a line (or JSON object) per message on `out`, and the count of each result for
/// the summary.
struct Report<W> {
    out: W,
    json: bool,
    verbose: bool,
    quiet: bool,
    /// `--require all`: every signature must pass, and there must be one.
    require_all: bool,
    counts: BTreeMap<DkimResult, u64>,
    /// Chain results (`--arc`), by result.
    arc_counts: BTreeMap<&'static str, u64>,
    /// Messages not verified.
    failed: u64,
}

impl<W: Write> Report<W> {
    fn new(out: W, a: &VerifyArgs) -> Report<W> {
        Report {
            out,
            json: a.report == ReportFormat::Json,
            verbose: a.verbose,
            quiet: a.quiet,
            require_all: a.require == Require::All,
            counts: BTreeMap::new(),
            arc_counts: BTreeMap::new(),
            failed: 0,
        }
    }

    /// Whether a message with these verdicts counts as verified (`--require`).
    fn is_verified(&self, vs: &[Verdict]) -> bool {
        if self.require_all {
            !vs.is_empty() && vs.iter().all(|v| v.result == DkimResult::Pass)
        } else {
            verify::overall(vs) == DkimResult::Pass
        }
    }

    /// Counts one message and writes its line.
    fn message(
        &mut self,
        name: &str,
        file: &str,
        index: u64,
        offset: u64,
        checks: &pipeline::Checks,
    ) -> std::io::Result<()> {
        let vs = &checks.verdicts;
        let o = verify::overall(vs);
        *self.counts.entry(o).or_default() += 1;
        if let Some(c) = &checks.arc {
            *self.arc_counts.entry(c.result.as_str()).or_default() += 1;
        }
        if !self.is_verified(vs) {
            self.failed += 1;
        }
        let chain = checks.arc.as_ref();
        let line = if self.json {
            verdict_json(name, file, index, offset, vs, chain, o)
        } else {
            verdict_line(name, vs, chain, o, self.verbose)
        };
        writeln!(self.out, "{line}")
    }

    /// Flushes the report, prints the summary on stderr (unless `--quiet`) and gives the exit
    /// code: 0 when every message verified, 1 when one did not or there were none.
    fn finish(mut self, started: std::time::Instant) -> anyhow::Result<ExitCode> {
        self.out.flush().map_err(|e| write_failed("stdout", e))?;
        let total: u64 = self.counts.values().sum();
        if !self.quiet {
            let parts: Vec<String> = self.counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
            let took =
                if self.verbose { format!(" ({:.2} s)", started.elapsed().as_secs_f64()) } else { String::new() };
            let arc = if self.arc_counts.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = self.arc_counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
                format!("; ARC chains: {}", parts.join(", "))
            };
            eprintln!(
                "dkimpress: {}: {}; {} not verified{arc}{took}",
                count(total, "message"),
                parts.join(", "),
                self.failed
            );
        }
        if total == 0 {
            // Success over nothing would hide an input that was not what it seemed.
            eprintln!("dkimpress: no messages found in the input: nothing verified");
            return Ok(ExitCode::from(1));
        }
        Ok(if self.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
    }
}

/// Checks an `--add-ar` authserv-id: a domain-like token (RFC 8601 §2.2 `authserv-id = value`;
/// we accept the token form only). A CR or LF would let the id inject header fields.
pub(crate) fn check_authserv_id(id: &str) -> anyhow::Result<()> {
    if !dkimpress::dkim::verify::is_authserv_id(id) {
        return Err(usage(format!(
            "--add-ar {:?}: the authserv-id must be a host name (letters, digits, '.', '-', '_')",
            pipeline::sanitize(id)
        )));
    }
    Ok(())
}
