//! MTA integration: the Postfix pipe filter (`dkimpress filter ... -- sendmail -G -i -f ...`)
//! and the sendmail wrapper (`dkimpress sendmail ...`, or a symlink named `sendmail`).
//!
//! Owns: reading a message the way sendmail does, re-injecting through a command, exit codes
//! as Postfix pipe(8) reads them (0 delivered, 75 try again), the pass-through policy when
//! signing fails, and logging to syslog (facility mail) or stderr. Signing is [`crate::bulk`]'s
//! `sign_message`. Mail is never dropped: every path ends in a re-injection or in exit 75.

use crate::bulk::{self, BulkOptions};
use crate::select::SelectError;
use crate::sign::SignError;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// Exit code that makes Postfix (and sendmail callers) retry later.
pub const EX_TEMPFAIL: u8 = 75;

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

/// Syslog (facility mail) through /dev/log, or stderr when run by hand.
pub struct Logger {
    sock: Option<std::os::unix::net::UnixDatagram>,
    verbose: bool,
    context: String,
}

impl Logger {
    /// stderr when it is a terminal or `DKIMPRESS_LOG=stderr`; syslog otherwise (stderr too if
    /// /dev/log cannot be reached).
    pub fn new(verbose: bool, to_stderr: bool) -> Logger {
        let sock = if to_stderr {
            None
        } else {
            std::os::unix::net::UnixDatagram::unbound().ok().filter(|s| s.connect("/dev/log").is_ok())
        };
        Logger {
            sock,
            verbose,
            context: format!("{:08X}", std::process::id() ^ (crate::cli::now_secs() as u32).rotate_left(16)),
        }
    }

    /// Adds the Message-ID to the context of later lines.
    pub fn set_message_id(&mut self, id: &str) {
        let id: String = id.chars().filter(|c| !c.is_control()).take(200).collect();
        self.context = format!("{}: message-id={}", self.context.split(':').next().unwrap_or_default(), id.trim());
    }

    fn emit(&self, severity: u8, msg: &str) {
        let msg: String = msg.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        let line = format!("{}: {msg}", self.context);
        match &self.sock {
            // RFC 3164 framing; facility mail (2).
            Some(s)
                if s.send(format!("<{}>dkimpress[{}]: {line}", 2 * 8 + severity, std::process::id()).as_bytes())
                    .is_ok() => {}
            _ => eprintln!("dkimpress: {line}"),
        }
    }

    /// An error (mail deferred or passed on unsigned).
    pub fn error(&self, msg: &str) {
        self.emit(3, msg);
    }
    /// A warning.
    pub fn warn(&self, msg: &str) {
        self.emit(4, msg);
    }
    /// What happened to a message.
    pub fn info(&self, msg: &str) {
        self.emit(6, msg);
    }
    /// Detail, with `-v` only.
    pub fn debug(&self, msg: &str) {
        if self.verbose {
            self.emit(7, msg);
        }
    }
}

/// The Message-ID of a message, for log context.
fn message_id(msg: &[u8]) -> Option<String> {
    let parsed = crate::header::Message::parse(msg).ok()?;
    let f = parsed.fields.iter().find(|f| f.is("message-id"))?;
    Some(String::from_utf8_lossy(f.value()).trim().to_string())
}

/// Runs `command` with `data` on its stdin; Ok when it exits 0.
pub fn reinject(command: &[OsString], data: &[&[u8]]) -> Result<(), String> {
    let (prog, args) = command.split_first().ok_or("no re-injection command after --")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", prog.to_string_lossy()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let written = data.iter().try_for_each(|d| stdin.write_all(d));
    drop(stdin);
    let status = child.wait().map_err(|e| format!("waiting for {}: {e}", prog.to_string_lossy()))?;
    written.map_err(|e| format!("writing to {}: {e}", prog.to_string_lossy()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} exited with {status}", prog.to_string_lossy()))
    }
}

/// Signs `msg` for the MTA paths: the header fields to add (empty = pass on unsigned), or an
/// error meaning "defer".
fn sign_for_mta(opts: &BulkOptions, msg: &[u8], on_error: OnError, log: &Logger) -> Result<Vec<u8>, String> {
    match bulk::sign_message(opts, msg) {
        Ok((headers, _)) => {
            log.info("signed");
            Ok(headers)
        }
        Err(SignError::Select(SelectError::NoKey(who))) => {
            log.info(&format!("no signing key for {who}; passed on unsigned"));
            Ok(vec![])
        }
        // A message that is not one can never be signed: retrying cannot help, and losing or
        // bouncing mail is worse than passing it on unsigned.
        Err(e @ (SignError::Header(_) | SignError::NoFrom | SignError::Select(SelectError::NoAddress(_)))) => {
            log.warn(&format!("cannot sign ({e}); passed on unsigned"));
            Ok(vec![])
        }
        Err(e) => match on_error {
            OnError::Pass => {
                log.error(&format!("cannot sign ({e}); passed on unsigned (--on-error pass)"));
                Ok(vec![])
            }
            OnError::Tempfail => Err(format!("cannot sign ({e}); deferred")),
        },
    }
}

/// The Postfix pipe filter: read stdin, sign, re-inject through `command`. Returns the exit code.
pub fn filter(opts: &BulkOptions, command: &[OsString], on_error: OnError, log: &mut Logger) -> u8 {
    let mut msg = Vec::with_capacity(64 * 1024);
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut msg) {
        log.error(&format!("reading the message failed: {e}; deferred"));
        return EX_TEMPFAIL;
    }
    if let Some(id) = message_id(&msg) {
        log.set_message_id(&id);
    }
    let headers = match sign_for_mta(opts, &msg, on_error, log) {
        Ok(h) => h,
        Err(e) => {
            log.error(&e);
            return EX_TEMPFAIL;
        }
    };
    match reinject(command, &[&headers, &msg]) {
        Ok(()) => {
            log.debug(&format!("re-injected through {}", command[0].to_string_lossy()));
            0
        }
        Err(e) => {
            log.error(&format!("re-injection failed: {e}; deferred"));
            EX_TEMPFAIL
        }
    }
}

/// What a sendmail command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SendmailArgs {
    /// The arguments as given (passed on unchanged).
    pub args: Vec<OsString>,
    /// `-i` / `-oi`: a line with only `.` does not end the message.
    pub ignore_dots: bool,
    /// A mode that submits no message (`-bs`, `-bp`, `-bv`, `-bi`, `-bd`, `-q...`, ...).
    pub no_message: bool,
    /// `-f` / `-r`: the envelope sender.
    pub sender: Option<String>,
}

/// Options of sendmail(1) that take a value in the next argument when not attached.
const WITH_VALUE: &[&str] = &["-f", "-r", "-F", "-N", "-R", "-V", "-B", "-C", "-L", "-O", "-X", "-h"];

/// Reads sendmail's command line (Postfix sendmail(1)); nothing is changed, only noted.
pub fn parse_sendmail_args(args: Vec<OsString>) -> SendmailArgs {
    let mut out = SendmailArgs { args: args.clone(), ..SendmailArgs::default() };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        i += 1;
        if a == "--" || !a.starts_with('-') || a == "-" {
            if a == "--" {
                break;
            }
            continue; // a recipient
        }
        if a == "-i" || a == "-oi" {
            out.ignore_dots = true;
        } else if let Some(mode) = a.strip_prefix("-b") {
            // -bm (deliver) and -bD... submit mail; -bs/-bp/-bv/-bi/-bd/-bh/-bH do not.
            if !mode.is_empty() && mode != "m" {
                out.no_message = true;
            }
        } else if a.starts_with("-q") || a == "-I" {
            out.no_message = true;
        } else if let Some(flag) = WITH_VALUE.iter().find(|f| a.starts_with(**f)) {
            let value = if a.len() > flag.len() {
                Some(a[flag.len()..].to_string())
            } else {
                let v = args.get(i).map(|v| v.to_string_lossy().into_owned());
                i += 1;
                v
            };
            if *flag == "-f" || *flag == "-r" {
                out.sender = value;
            }
        }
    }
    out
}

/// Reads a message from `input` as sendmail does: to end of file, or (without `-i`) up to a
/// line holding only `.`.
pub fn read_sendmail_input(input: &mut dyn Read, ignore_dots: bool) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(64 * 1024);
    input.read_to_end(&mut data)?;
    if !ignore_dots {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &data) {
            let line = &data[start..nl];
            if line == b"." || line == b".\r" {
                data.truncate(start);
                break;
            }
            start = nl + 1;
        }
        if &data[start..] == b"." {
            data.truncate(start);
        }
    }
    Ok(data)
}

/// The sendmail wrapper: sign (unless the mode submits no message) and hand over to the real
/// sendmail with the same arguments. Returns the exit code (the real sendmail's, when it ran).
pub fn sendmail(
    opts: Option<&BulkOptions>,
    real: &OsString,
    args: SendmailArgs,
    on_error: OnError,
    log: &mut Logger,
) -> u8 {
    fn run(real: &OsString, args: &SendmailArgs, data: Option<&[&[u8]]>, log: &Logger) -> u8 {
        let mut cmd = Command::new(real);
        cmd.args(&args.args);
        match data {
            None => match cmd.status() {
                Ok(s) => s.code().map_or(EX_TEMPFAIL, |c| c as u8),
                Err(e) => {
                    log.error(&format!("cannot run the real sendmail {}: {e}", real.to_string_lossy()));
                    EX_TEMPFAIL
                }
            },
            Some(parts) => {
                let child = cmd.stdin(Stdio::piped()).spawn();
                let mut child = match child {
                    Ok(c) => c,
                    Err(e) => {
                        log.error(&format!("cannot run the real sendmail {}: {e}", real.to_string_lossy()));
                        return EX_TEMPFAIL;
                    }
                };
                let mut stdin = child.stdin.take().expect("piped");
                let written = parts.iter().try_for_each(|d| stdin.write_all(d));
                drop(stdin);
                let status = child.wait();
                if let Err(e) = written {
                    log.error(&format!("writing to the real sendmail failed: {e}"));
                    return EX_TEMPFAIL;
                }
                match status {
                    Ok(s) => s.code().map_or(EX_TEMPFAIL, |c| c as u8),
                    Err(_) => EX_TEMPFAIL,
                }
            }
        }
    }
    if args.no_message {
        return run(real, &args, None, log);
    }
    let msg = match read_sendmail_input(&mut std::io::stdin().lock(), args.ignore_dots) {
        Ok(m) => m,
        Err(e) => {
            log.error(&format!("reading the message failed: {e}"));
            return EX_TEMPFAIL;
        }
    };
    if let Some(id) = message_id(&msg) {
        log.set_message_id(&id);
    }
    let headers = match opts {
        None => {
            log.warn("no signing configuration; passed on unsigned");
            vec![]
        }
        Some(opts) => match sign_for_mta(opts, &msg, on_error, log) {
            Ok(h) => h,
            Err(e) => {
                log.error(&e);
                return EX_TEMPFAIL;
            }
        },
    };
    run(real, &args, Some(&[&headers, &msg]), log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn sendmail_arguments() {
        for (a, dots, none, sender) in [
            (&["-i", "-f", "a@b", "--", "x@y"][..], true, false, Some("a@b")),
            (&["-oi", "-t"][..], true, false, None),
            (&["-fme@example.com", "-F", "Me Myself", "x@y"][..], false, false, Some("me@example.com")),
            (&["-bs"][..], false, true, None),
            (&["-bp"][..], false, true, None),
            (&["-q"][..], false, true, None),
            (&["-q1h"][..], false, true, None),
            (&["-bm", "-i", "x@y"][..], true, false, None),
            (
                &["-N", "success,delay", "-R", "hdrs", "-V", "envid", "-B", "8BITMIME", "-C", "/etc/postfix", "x@y"][..],
                false,
                false,
                None,
            ),
            (&["--", "-i"][..], false, false, None),
        ] {
            let p = parse_sendmail_args(args(a));
            assert_eq!((p.ignore_dots, p.no_message, p.sender.as_deref()), (dots, none, sender), "{a:?}");
            assert_eq!(p.args, args(a), "passed through unchanged");
        }
    }

    #[test]
    fn sendmail_input_dots() {
        for (input, dots, want) in [
            (&b"A: b\n\nbody\n.\nafter\n"[..], false, &b"A: b\n\nbody\n"[..]),
            (b"A: b\n\nbody\n.\nafter\n", true, b"A: b\n\nbody\n.\nafter\n"),
            (b"A: b\r\n\r\n..stuffed\r\n.\r\n", false, b"A: b\r\n\r\n..stuffed\r\n"),
            (b"A: b\n\nno end", false, b"A: b\n\nno end"),
            (b"A: b\n\nlast\n.", false, b"A: b\n\nlast\n"),
        ] {
            let got = read_sendmail_input(&mut &input[..], dots).unwrap();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn reinjection_status() {
        let ok = args(&["sh", "-c", "cat > /dev/null"]);
        assert!(reinject(&ok, &[b"x"]).is_ok());
        let fail = args(&["sh", "-c", "cat > /dev/null; exit 3"]);
        assert!(reinject(&fail, &[b"x"]).unwrap_err().contains("exit status: 3"));
        assert!(reinject(&args(&["/nonexistent/sendmail"]), &[b"x"]).unwrap_err().contains("cannot run"));
    }
}
