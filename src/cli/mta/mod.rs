//! MTA integration: the Postfix pipe filter (`dkimpress filter ... -- sendmail -G -i -f ...`)
//! and the sendmail wrapper (`dkimpress sendmail ...`, or a symlink named `sendmail`).
//!
//! Owns the flow of one message (read, sign, re-inject), which clients' mail is ours to sign
//! (OpenDKIM InternalHosts), and the pass-through policy when signing fails or a message is
//! over the size cap. Its parts: reading a sendmail command line and message the way Postfix
//! sendmail(1) does ([`sendmail_args`]), reading a message in bounded memory (a large one is
//! spooled to an unlinked temporary file and streamed on: [`spool`]), and re-injecting through
//! a command under a time limit, with exit codes as Postfix pipe(8) reads them (0 delivered,
//! the re-injection command's own sysexits status, 75 try again: [`reinject`]). Logging is
//! [`crate::cli::log`]; signing is [`dkimpress::pipeline`]'s `sign_message`; argv and the
//! environment are read by `cli`. Mail is never dropped: every path ends in a re-injection, in
//! the re-injection command's status, or in exit 75.

mod reinject;
mod sendmail_args;
mod spool;

pub use reinject::{exec_real, DEFAULT_REINJECT_TIMEOUT};
pub use sendmail_args::{parse_sendmail_args, SendmailArgs, SendmailMode};

use crate::cli::log::Logger;
use crate::cli::sysexits::TEMPFAIL;
use dkimpress::pipeline::{self, Disposition, SignPolicy};
use reinject::{reinject, report_reinjection, run_with_input, Piece};
use sendmail_args::SendmailInput;
use spool::{read_message, with_message, Received, Unread, COPY_BUFFER, IN_MEMORY};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::process::Command;
use std::time::Duration;

/// What to do when a message cannot be signed (mirrors Postfix `milter_default_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Exit 75: the MTA keeps the message and retries.
    Tempfail,
    /// Pass the message on unsigned, and log it.
    Pass,
}

impl std::str::FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tempfail" => Ok(OnError::Tempfail),
            "pass" | "accept" => Ok(OnError::Pass),
            _ => Err(format!("--on-error {s:?}: expected tempfail or pass")),
        }
    }
}

/// The Message-ID of a message, for log context.
fn message_id(msg: &[u8]) -> Option<String> {
    let parsed = dkimpress::dkim::header::Message::parse(msg).ok()?;
    let f = parsed.fields.iter().find(|f| f.is("message-id"))?;
    Some(String::from_utf8_lossy(f.value()).trim().to_string())
}

/// Signs `msg` for the MTA paths: the header fields to add (empty = pass on unsigned), or an
/// error meaning "defer".
fn sign_for_mta(opts: &SignPolicy, msg: &[u8], on_error: OnError, log: &Logger) -> Result<Vec<u8>, String> {
    match pipeline::guarded("signing", || pipeline::sign_message(opts, msg)) {
        Ok((headers, _)) => {
            log.info("signed");
            Ok(headers)
        }
        Err(e) => match (e.disposition(), on_error) {
            (Disposition::NoKey, _) => {
                log.info(&format!("{e}; passed on unsigned"));
                Ok(vec![])
            }
            // A message that is not one can never be signed: retrying cannot help, and losing
            // or bouncing mail is worse than passing it on unsigned.
            (Disposition::Unsignable, _) => {
                log.warn(&format!("cannot sign ({e}); passed on unsigned"));
                Ok(vec![])
            }
            (Disposition::Temporary | Disposition::Broken, OnError::Pass) => {
                log.error(&format!("cannot sign ({e}); passed on unsigned (--on-error pass)"));
                Ok(vec![])
            }
            (Disposition::Temporary | Disposition::Broken, OnError::Tempfail) => {
                Err(format!("cannot sign ({e}); deferred"))
            }
        },
    }
}

/// Reads the message from `input` and makes what the re-injection command gets: the added
/// header fields (signed with `Ok(options)`), then the message, read from memory or the spool;
/// or the exit code when it must be deferred. `Err(reason)` as `plan`: the message goes on
/// unsigned, logged at `unsigned`'s level, streamed without being read whole. Over the size
/// cap, `over_cap` says whether the message is deferred or goes on unsigned (streamed on,
/// never held whole).
fn prepare(
    plan: Result<&SignPolicy, String>,
    mut input: Box<dyn Read + Send>,
    settings: &MtaSettings,
    log: &mut Logger,
    unsigned: fn(&Logger, &str),
    over_cap: OnError,
) -> Result<Vec<Piece>, u8> {
    // Mail we do not sign needs no more than the start, for the log context.
    let limit = if plan.is_ok() { settings.max_message } else { IN_MEMORY as u64 };
    let got = match read_message(&mut *input, limit) {
        Ok(r) => r,
        Err(e) => {
            log.error(&format!("{e}; deferred"));
            return Err(TEMPFAIL);
        }
    };
    if let Ok(Some(id)) = with_message(&got.spool, message_id) {
        log.set_message_id(&id);
    }
    let as_read = |got: Received| match got.unread {
        None => vec![Piece::Spool(got.spool)],
        Some(_) => vec![Piece::Spool(got.spool), Piece::Rest(input)],
    };
    let opts = match (plan, &got.unread) {
        (Err(reason), _) => {
            unsigned(log, &format!("{reason}; passed on unsigned"));
            return Ok(as_read(got));
        }
        (Ok(_), Some(why)) => {
            let why = match why {
                Unread::OverLimit => {
                    format!("message larger than {} octets ({})", settings.max_message, settings.max_message_name)
                }
                Unread::NoSpool(e) => {
                    format!(
                        "cannot create a temporary file in {} to hold the message: {e}",
                        std::env::temp_dir().display()
                    )
                }
            };
            if over_cap == OnError::Tempfail {
                log.error(&format!("{why}; deferred"));
                return Err(TEMPFAIL);
            }
            log.error(&format!("{why}; passed on unsigned"));
            return Ok(as_read(got));
        }
        (Ok(opts), None) => opts,
    };
    let headers = match with_message(&got.spool, |msg| sign_for_mta(opts, msg, settings.on_error, log)) {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            log.error(&e);
            return Err(TEMPFAIL);
        }
        Err(e) => {
            log.error(&format!("cannot map the spooled message: {e}; deferred"));
            return Err(TEMPFAIL);
        }
    };
    Ok(vec![Piece::Bytes(headers), Piece::Spool(got.spool)])
}

/// How `filter` and the wrapper treat one message.
pub struct MtaSettings {
    /// What to do when signing fails.
    pub on_error: OnError,
    /// Time limit of the re-injection command.
    pub timeout: Duration,
    /// Largest message signed (octets).
    pub max_message: u64,
    /// Where that limit is set, for log lines (`--max-message-size`).
    pub max_message_name: &'static str,
}

/// The Postfix pipe filter: read stdin, sign (with `Ok(options)`; `Err(reason)` passes the
/// message on unsigned and logs the reason), re-inject through `command`. Over the size cap
/// the message is deferred, or with `--on-error pass` re-injected unsigned. Returns the exit
/// code.
pub fn filter(plan: Result<&SignPolicy, String>, command: &[OsString], settings: &MtaSettings, log: &mut Logger) -> u8 {
    let pieces = match prepare(plan, Box::new(std::io::stdin()), settings, log, Logger::info, settings.on_error) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let prog = command.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let outcome = reinject(command, pieces, settings.timeout);
    report_reinjection(&prog, &outcome, log)
}

/// The sendmail wrapper: sign (unless the mode submits no message) and hand over to the real
/// sendmail with the same arguments. `plan` as for [`filter`]; a message over the size cap goes
/// on unsigned. Returns the exit code (the real sendmail's sysexits status, when it ran).
pub fn sendmail(
    plan: Result<&SignPolicy, String>,
    real: &OsStr,
    args: SendmailArgs,
    settings: &MtaSettings,
    log: &mut Logger,
) -> u8 {
    match args.mode {
        SendmailMode::Enqueue => {}
        SendmailMode::Smtp => {
            log.warn("-bs: SMTP submission is passed to the real sendmail unsigned");
            return exec_real(real, None, &args.args, log);
        }
        SendmailMode::Other => return exec_real(real, None, &args.args, log),
    }
    // Over the size cap the message goes on unsigned: local submission must go through.
    let input = SendmailInput::new(std::io::BufReader::with_capacity(COPY_BUFFER, std::io::stdin()), args.ignore_dots);
    let pieces = match prepare(plan, Box::new(input), settings, log, Logger::warn, OnError::Pass) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let outcome = run_with_input(Command::new(real).args(&args.args), pieces, settings.timeout);
    report_reinjection(&real.to_string_lossy(), &outcome, log)
}

/// OpenDKIM `InternalHosts` (and the other host lists): see [`crate::cli::hosts`].
pub use crate::cli::hosts::HostList as InternalHosts;

/// Whether mail from this origin is ours to sign: submitted locally (no client address, as
/// pipe(8) expands `${client_address}` for mail from pickup), by an authenticated client, or
/// by an internal host (`hosts` is loaded only then). `Ok(Some(reason))`: not ours, why;
/// `Err`: the InternalHosts list cannot be loaded.
pub fn untrusted_origin(
    client: &str,
    sasl_username: &str,
    hosts: impl FnOnce() -> Result<InternalHosts, String>,
) -> Result<Option<String>, String> {
    let client = client.trim();
    if client.is_empty() || !sasl_username.trim().is_empty() || hosts()?.contains(client) {
        return Ok(None);
    }
    let shown = pipeline::sanitize_at_most(client, 100);
    Ok(Some(format!("client {shown} is not in InternalHosts and did not authenticate")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let hosts = || Ok(InternalHosts::default());
        for (client, sasl, untrusted) in [
            ("", "", false),   // pickup: local submission
            ("  ", "", false), // the same, as some shells pass it
            ("127.0.0.1", "", false),
            ("203.0.113.9", "", true),
            ("203.0.113.9", "alice", false),
            ("203.0.113.9", " ", true),
        ] {
            assert_eq!(untrusted_origin(client, sasl, hosts).unwrap().is_some(), untrusted, "{client:?} {sasl:?}");
        }
        assert!(untrusted_origin("", "", || Err("unreadable".into())).is_ok(), "the list is not read when not needed");
        assert!(untrusted_origin("192.0.2.1", "", || Err("unreadable".into())).is_err());
    }
}
