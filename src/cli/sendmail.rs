//! `dkimpress sendmail` (or a link named sendmail, mailq, newaliases): the wrapper for locally
//! submitted mail (see [`super::mta`]).

use crate::cli::args::{parse_size, KeyArgs};
use crate::cli::keys::{mta_options, read_conf};
use crate::cli::sysexits;
use dkimpress::pipeline;
use std::path::PathBuf;
use std::process::ExitCode;

/// `dkimpress sendmail [--config FILE] [--sendmail-path PATH] [--on-error ACTION] SENDMAIL-ARGS...`
/// (or a symlink named sendmail, mailq or newaliases: `name`). Settings also come from
/// DKIMPRESS_CONFIG, DKIMPRESS_SENDMAIL, DKIMPRESS_ON_ERROR, DKIMPRESS_REINJECT_TIMEOUT and
/// DKIMPRESS_MAX_MESSAGE_SIZE, because a program calling sendmail passes only sendmail's
/// arguments.
pub(crate) fn cmd_sendmail(name: &std::ffi::OsStr, mut args: Vec<std::ffi::OsString>) -> ExitCode {
    use crate::cli::mta::{MtaSettings, OnError, SendmailMode};
    let mut config = std::env::var_os("DKIMPRESS_CONFIG").unwrap_or_else(|| DEFAULT_WRAPPER_CONFIG.into());
    let mut real = std::env::var_os("DKIMPRESS_SENDMAIL").unwrap_or_else(|| DEFAULT_REAL_SENDMAIL.into());
    let mut on_error = std::env::var("DKIMPRESS_ON_ERROR").ok().and_then(|v| v.parse().ok()).unwrap_or(OnError::Pass);
    let timeout = std::env::var("DKIMPRESS_REINJECT_TIMEOUT").ok();
    let max_message = std::env::var("DKIMPRESS_MAX_MESSAGE_SIZE").ok();
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
    let mut log = crate::cli::log::Logger::new(verbose, to_stderr);
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
    let max_message = match max_message.as_deref().map(parse_size) {
        None => pipeline::DEFAULT_MAX_MESSAGE,
        Some(Ok(size)) => size,
        Some(Err(e)) => {
            log.warn(&format!("DKIMPRESS_MAX_MESSAGE_SIZE: {e}; using 512M"));
            pipeline::DEFAULT_MAX_MESSAGE
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
        return ExitCode::from(sysexits::TEMPFAIL);
    }
    if name != "sendmail" {
        return ExitCode::from(crate::cli::mta::exec_real(&real, Some(name), &args, &log));
    }
    let parsed = crate::cli::mta::parse_sendmail_args(args);
    // Key choice is by From; the envelope sender (-f) only when there is no From. A
    // configuration that is missing or cannot be read is an error like any other: deferred
    // with tempfail, passed on unsigned (and logged) with pass.
    let plan = if parsed.mode != SendmailMode::Enqueue {
        Err(String::new())
    } else {
        let k = KeyArgs { config: Some(PathBuf::from(&config)), verbose, ..KeyArgs::default() };
        match read_conf(&k).and_then(|c| mta_options(&k, c.as_ref())) {
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
                    return ExitCode::from(sysexits::TEMPFAIL);
                }
                Err(format!("configuration: {e}"))
            }
        }
    };
    let settings = MtaSettings { on_error, timeout, max_message, max_message_name: "DKIMPRESS_MAX_MESSAGE_SIZE" };
    let mut log_ref = std::panic::AssertUnwindSafe(&mut log);
    let plan = std::panic::AssertUnwindSafe(plan.as_ref().map_err(Clone::clone));
    let real = &real;
    match std::panic::catch_unwind(move || {
        let plan = plan;
        crate::cli::mta::sendmail(plan.0, real, parsed, &settings, &mut log_ref)
    }) {
        Ok(c) => ExitCode::from(c),
        Err(_) => ExitCode::from(sysexits::TEMPFAIL),
    }
}

/// Default configuration of the sendmail wrapper (DKIMPRESS_CONFIG overrides).
pub(crate) const DEFAULT_WRAPPER_CONFIG: &str = "/etc/dkimpress/dkimpress.conf";
/// Default real sendmail (DKIMPRESS_SENDMAIL overrides).
pub(crate) const DEFAULT_REAL_SENDMAIL: &str = "/usr/sbin/sendmail";
