//! `dkimpress sendmail` (or a link named sendmail, mailq, newaliases): the wrapper for locally
//! submitted mail (see [`super::mta`]). Owns the wrapper's own settings (environment and the
//! options before sendmail's) and the choice of policy; the signing and the hand-over to the
//! real sendmail are [`super::mta`]'s.

use crate::cli::args::{parse_size, KeyArgs};
use crate::cli::keys::{mta_options, read_conf};
use crate::cli::log::Logger;
use crate::cli::mta::{MtaSettings, OnError, SendmailArgs, SendmailMode};
use crate::cli::sysexits;
use dkimpress::pipeline::{self, SignPolicy};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `dkimpress sendmail [--config FILE] [--sendmail-path PATH] [--on-error ACTION] SENDMAIL-ARGS...`
/// (or a symlink named sendmail, mailq or newaliases: `name`). Settings also come from
/// DKIMPRESS_CONFIG, DKIMPRESS_SENDMAIL, DKIMPRESS_ON_ERROR, DKIMPRESS_REINJECT_TIMEOUT and
/// DKIMPRESS_MAX_MESSAGE_SIZE, because a program calling sendmail passes only sendmail's
/// arguments.
pub(crate) fn cmd_sendmail(name: &OsStr, mut args: Vec<OsString>) -> ExitCode {
    let mut o = WrapperOptions::from_env();
    // Our own options only before sendmail's, and not under the names mailq/newaliases.
    if name == "sendmail" {
        o.take_own_options(&mut args);
    }
    let to_stderr = std::env::var("DKIMPRESS_LOG").is_ok_and(|v| v == "stderr")
        || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut log = Logger::new(o.verbose, to_stderr);
    let timeout = reinject_timeout(o.timeout.as_deref(), &log);
    let max_message = max_message_size(o.max_message.as_deref(), &log);
    if is_dkimpress(&o.real) {
        log.error(&format!(
            "DKIMPRESS_SENDMAIL ({}) is dkimpress itself; set it to the real sendmail; deferred",
            o.real.to_string_lossy()
        ));
        return ExitCode::from(sysexits::TEMPFAIL);
    }
    if name != "sendmail" {
        return ExitCode::from(crate::cli::mta::exec_real(&o.real, Some(name), &args, &log));
    }
    let parsed = crate::cli::mta::parse_sendmail_args(args);
    // Key choice is by From; the envelope sender (-f) only when there is no From. A
    // configuration that is missing or cannot be read is an error like any other: deferred
    // with tempfail, passed on unsigned (and logged) with pass.
    let plan = if parsed.mode != SendmailMode::Enqueue {
        Err(String::new())
    } else {
        match o.read_policy() {
            Ok(policy) => Ok(policy),
            Err(e) if o.on_error == OnError::Tempfail => {
                log.error(&format!("configuration: {e}; deferred (DKIMPRESS_ON_ERROR=tempfail)"));
                return ExitCode::from(sysexits::TEMPFAIL);
            }
            Err(e) => Err(format!("configuration: {e}")),
        }
    };
    let settings =
        MtaSettings { on_error: o.on_error, timeout, max_message, max_message_name: "DKIMPRESS_MAX_MESSAGE_SIZE" };
    sign_and_pass_on(plan.as_ref().map_err(Clone::clone), &o.real, parsed, &settings, &mut log)
}

/// The wrapper's own settings: from the environment, then from our options on the command line.
/// The time limit and size limit stay text until the logger can report a bad value.
struct WrapperOptions {
    /// The configuration file.
    config: OsString,
    /// The real sendmail.
    real: OsString,
    on_error: OnError,
    /// DKIMPRESS_REINJECT_TIMEOUT as given.
    timeout: Option<String>,
    /// DKIMPRESS_MAX_MESSAGE_SIZE as given.
    max_message: Option<String>,
    verbose: bool,
}

impl WrapperOptions {
    /// The settings the environment gives, with the defaults for the rest.
    fn from_env() -> WrapperOptions {
        WrapperOptions {
            config: std::env::var_os("DKIMPRESS_CONFIG").unwrap_or_else(|| DEFAULT_WRAPPER_CONFIG.into()),
            real: std::env::var_os("DKIMPRESS_SENDMAIL").unwrap_or_else(|| DEFAULT_REAL_SENDMAIL.into()),
            on_error: std::env::var("DKIMPRESS_ON_ERROR").ok().and_then(|v| v.parse().ok()).unwrap_or(OnError::Pass),
            timeout: std::env::var("DKIMPRESS_REINJECT_TIMEOUT").ok(),
            max_message: std::env::var("DKIMPRESS_MAX_MESSAGE_SIZE").ok(),
            verbose: false,
        }
    }

    /// Takes our options (`--config`, `--sendmail-path`, `--on-error`, `--verbose`) off the front
    /// of `args`, up to the first that is not ours; the rest are sendmail's.
    fn take_own_options(&mut self, args: &mut Vec<OsString>) {
        loop {
            match args.first().and_then(|a| a.to_str()) {
                Some("--config") if args.len() > 1 => {
                    self.config = args[1].clone();
                    args.drain(..2);
                }
                Some("--sendmail-path") if args.len() > 1 => {
                    self.real = args[1].clone();
                    args.drain(..2);
                }
                Some("--on-error") if args.len() > 1 => {
                    self.on_error = args[1].to_str().and_then(|v| v.parse().ok()).unwrap_or(self.on_error);
                    args.drain(..2);
                }
                Some("--verbose") => {
                    self.verbose = true;
                    args.remove(0);
                }
                _ => break,
            }
        }
    }

    /// The signing policy of the configuration file; the error names the file.
    fn read_policy(&self) -> Result<SignPolicy, String> {
        let k = KeyArgs { config: Some(PathBuf::from(&self.config)), verbose: self.verbose, ..KeyArgs::default() };
        read_conf(&k).and_then(|c| mta_options(&k, c.as_ref())).map_err(|e| {
            let e = format!("{e:#}");
            if e.contains(&*self.config.to_string_lossy()) {
                e
            } else {
                format!("{}: {e}", self.config.to_string_lossy())
            }
        })
    }
}

/// DKIMPRESS_REINJECT_TIMEOUT, or the default (with a warning) when it is not a number of
/// seconds above 0.
fn reinject_timeout(raw: Option<&str>, log: &Logger) -> Duration {
    match raw.map(str::parse::<u64>) {
        None => crate::cli::mta::DEFAULT_REINJECT_TIMEOUT,
        Some(Ok(secs)) if secs > 0 => Duration::from_secs(secs),
        Some(_) => {
            log.warn(&format!(
                "DKIMPRESS_REINJECT_TIMEOUT={:?} is not a number of seconds above 0; using 300",
                raw.unwrap_or_default()
            ));
            crate::cli::mta::DEFAULT_REINJECT_TIMEOUT
        }
    }
}

/// DKIMPRESS_MAX_MESSAGE_SIZE, or the default (with a warning) when it is not a size.
fn max_message_size(raw: Option<&str>, log: &Logger) -> u64 {
    match raw.map(parse_size) {
        None => pipeline::DEFAULT_MAX_MESSAGE,
        Some(Ok(size)) => size,
        Some(Err(e)) => {
            log.warn(&format!("DKIMPRESS_MAX_MESSAGE_SIZE: {e}; using 512M"));
            pipeline::DEFAULT_MAX_MESSAGE
        }
    }
}

/// Whether `real` is this program: the message must never be handed to ourselves (a symlink
/// loop would recurse forever).
fn is_dkimpress(real: &OsStr) -> bool {
    let me = std::env::current_exe().ok().and_then(|p| std::fs::canonicalize(p).ok());
    let target = std::fs::canonicalize(real).ok();
    me.is_some() && me == target
}

/// Signs the message by `plan` and hands it to the real sendmail; a panic defers the message
/// (exit 75) rather than lose it.
fn sign_and_pass_on(
    plan: Result<&SignPolicy, String>,
    real: &OsStr,
    parsed: SendmailArgs,
    settings: &MtaSettings,
    log: &mut Logger,
) -> ExitCode {
    let mut log = std::panic::AssertUnwindSafe(log);
    let plan = std::panic::AssertUnwindSafe(plan);
    match std::panic::catch_unwind(move || {
        let plan = plan;
        crate::cli::mta::sendmail(plan.0, real, parsed, settings, &mut log)
    }) {
        Ok(c) => ExitCode::from(c),
        Err(_) => ExitCode::from(sysexits::TEMPFAIL),
    }
}

/// Default configuration of the sendmail wrapper (DKIMPRESS_CONFIG overrides).
pub(crate) const DEFAULT_WRAPPER_CONFIG: &str = "/etc/dkimpress/dkimpress.conf";
/// Default real sendmail (DKIMPRESS_SENDMAIL overrides).
pub(crate) const DEFAULT_REAL_SENDMAIL: &str = "/usr/sbin/sendmail";
