//! What a run tells its user: the summary counts, each message left unsigned with its place
//! and reason, and the progress bar (stderr, only on a terminal).

/// One message left unsigned, with where it is and why.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The input file (for a directory: the message file).
    pub file: String,
    /// 1-based message number within the file (1 for one-message files).
    pub index: u64,
    /// Byte offset of the message in the file.
    pub offset: u64,
    /// Why it was not signed.
    pub reason: String,
    /// Whether the reason is only that no key is configured for its author: a normal outcome
    /// (list mail, other domains), not a failure.
    pub no_key: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{} (byte offset {}): {}", sanitize(&self.file), self.index, self.offset, sanitize(&self.reason))
    }
}

/// Control characters in untrusted text (file names, parse errors, log lines) become `?`
/// before printing: the one rule for every report and log.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// [`sanitize`] of at most the first `max` characters of `s` (names a client chose: a host
/// name, a Message-ID).
pub fn sanitize_at_most(s: &str, max: usize) -> String {
    s.chars().take(max).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Counts of a run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Messages read.
    pub messages: u64,
    /// Messages written with new signatures.
    pub signed: u64,
    /// Messages written unchanged (see `problems`), those without a key included.
    pub passed_through: u64,
    /// Of `passed_through`, the messages whose author has no key configured: a normal
    /// outcome, which alone does not make the run fail.
    pub no_key: u64,
    /// Input bytes.
    pub bytes: u64,
    /// Why messages were passed through.
    pub problems: Vec<Problem>,
    /// CPU of the serial threads over the mboxes (see [`super::SerialCpu`]).
    pub serial_cpu: super::SerialCpu,
}

/// Progress shown on stderr while a run goes (only when stderr is a terminal), and the line
/// for each message left unsigned.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// No line for a message left unsigned only for lack of a key (`sign -q`).
    quiet_no_key: bool,
}

impl Progress {
    /// A bar over `total_bytes` when `show`, else nothing.
    pub fn new(show: bool, total_bytes: u64) -> Progress {
        if !show {
            return Progress { bar: None, quiet_no_key: false };
        }
        let bar = indicatif::ProgressBar::new(total_bytes);
        // Decimal units (MB = 10^6 octets), as the summary line and `bench` count; indicatif's
        // plain {bytes} would show MiB next to a summary in MB.
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {decimal_bytes}/{decimal_total_bytes} {msg} {decimal_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template"),
        );
        // Warnings found during the run go above the bar, not through it.
        let for_warnings = bar.clone();
        crate::warnings::set_sink(Some(Box::new(move |line| for_warnings.println(line))));
        Progress { bar: Some(bar), quiet_no_key: false }
    }

    /// Whether to leave out the line for each message left unsigned only for lack of a key;
    /// the other problems are always shown, and the summary counts every one.
    pub fn quiet_no_key(mut self, quiet: bool) -> Progress {
        self.quiet_no_key = quiet;
        self
    }

    /// Shows the line for a message left unsigned (unless it is one `quiet_no_key` hides).
    pub fn problem(&self, p: &Problem) {
        if !(p.no_key && self.quiet_no_key) {
            self.println(&format!("dkimpress: left unsigned: {p}"));
        }
    }

    pub(crate) fn advance(&self, bytes: u64, messages: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
            b.set_message(if messages == 1 { "1 msg".to_string() } else { format!("{messages} msgs") });
        }
    }

    pub(crate) fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            crate::warnings::set_sink(None);
            b.finish_and_clear();
        }
    }
}
