//! Re-injection: running a command (Postfix sendmail, or the real sendmail behind the wrapper)
//! with the message on its stdin under a time limit, and the exit code Postfix pipe(8) is
//! given for how it ended.
//!
//! Owns [`Outcome`] and its exit code, killing a hung command with its process group, and the
//! log line for an outcome. Does not read the message (that is [`super::spool`]).

use super::spool::{pump, Feed, Spool, COPY_BUFFER};
use crate::cli::log::Logger;
use crate::cli::sysexits::TEMPFAIL;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek as _, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Default time limit of a re-injection (`--reinject-timeout`, DKIMPRESS_REINJECT_TIMEOUT):
/// below Postfix's `command_time_limit` (1000 s), so we give up first and say why.
pub const DEFAULT_REINJECT_TIMEOUT: Duration = Duration::from_secs(300);

/// How a command that was handed a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this status (0: it took the message).
    Exited(u8),
    /// A signal ended it.
    Signaled(i32),
    /// It was still running at the time limit (or something it started still held the
    /// message pipe), and was killed.
    TimedOut(Duration),
    /// It could not be started.
    NotStarted(String),
    /// It exited 0 without reading the whole message.
    Unread(String),
    /// Our own input failed before the end of the message (only a message streamed on from
    /// stdin, over the size cap): the command was killed before it could see an end of file
    /// and take a cut message.
    InputFailed(String),
}

impl Outcome {
    /// The exit code for Postfix pipe(8) or sendmail's caller. The command's own status passes
    /// through when it is a sysexits.h code, as in the example filter of Postfix FILTER_README
    /// (`exit $?`): 75 and 71 defer, 67, 69, 77, ... bounce, the command knows which. Any other
    /// status (1, 255, ...) says nothing about the message, and pipe(8) would bounce it
    /// (5.3.0), so it is 75. Whatever leaves the message's fate unknown (a
    /// signal, the time limit, a command that cannot start or did not read it all) is 75 too,
    /// so that Postfix keeps the message and retries.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Exited(code) if *code == 0 || is_sysexit(*code) => *code,
            _ => TEMPFAIL,
        }
    }
}

/// Whether `code` is one of sysexits.h's (64 EX_USAGE to 78 EX_CONFIG).
fn is_sysexit(code: u8) -> bool {
    (64..=78).contains(&code)
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(c) => write!(f, "exited with status {c}{}", sysexit_name(*c)),
            Outcome::Signaled(s) => write!(f, "killed by signal {s}"),
            Outcome::TimedOut(t) => write!(f, "still running after {} s; killed", t.as_secs()),
            Outcome::NotStarted(e) => write!(f, "cannot be run: {e}"),
            Outcome::Unread(e) => write!(f, "exited 0 without reading the whole message ({e})"),
            Outcome::InputFailed(e) => write!(f, "killed: our input failed before the end of the message ({e})"),
        }
    }
}

/// ` (EX_...)` for the sysexits.h codes, for log lines.
fn sysexit_name(code: u8) -> &'static str {
    match code {
        64 => " (EX_USAGE)",
        65 => " (EX_DATAERR)",
        66 => " (EX_NOINPUT)",
        67 => " (EX_NOUSER)",
        68 => " (EX_NOHOST)",
        69 => " (EX_UNAVAILABLE)",
        70 => " (EX_SOFTWARE)",
        71 => " (EX_OSERR)",
        72 => " (EX_OSFILE)",
        73 => " (EX_CANTCREAT)",
        74 => " (EX_IOERR)",
        75 => " (EX_TEMPFAIL)",
        76 => " (EX_PROTOCOL)",
        77 => " (EX_NOPERM)",
        78 => " (EX_CONFIG)",
        _ => "",
    }
}

/// One part of what a re-injection command reads on its stdin.
pub enum Piece {
    /// Octets in memory (the added header fields).
    Bytes(Vec<u8>),
    /// The message as read (or its first part, when [`Piece::Rest`] follows).
    Spool(Spool),
    /// The rest of our input, copied as it comes: a message over the size cap, handed on
    /// unsigned without being kept anywhere.
    Rest(Box<dyn Read + Send>),
}

impl From<Vec<u8>> for Piece {
    fn from(bytes: Vec<u8>) -> Piece {
        Piece::Bytes(bytes)
    }
}

/// Writes `pieces` to `dst` in order, a spool file from its start.
fn feed(pieces: Vec<Piece>, dst: &mut dyn Write) -> Result<(), Feed> {
    let mut buf = vec![0; COPY_BUFFER];
    for piece in pieces {
        match piece {
            Piece::Bytes(b) | Piece::Spool(Spool::Memory(b)) => dst.write_all(&b).map_err(Feed::Write)?,
            Piece::Spool(Spool::File(mut f)) => {
                f.rewind().map_err(Feed::Read)?;
                pump(&mut f, dst, &mut buf)?;
            }
            Piece::Rest(mut r) => {
                pump(&mut r, dst, &mut buf)?;
            }
        }
    }
    Ok(())
}

/// Runs `cmd` with `data` on its stdin, for at most `timeout`.
///
/// A writer thread feeds stdin, so a command that never reads cannot block us: we
/// wait for its exit, not for the pipe, and kill it at the time limit. When a source fails
/// before its end (our stdin, streamed on), the command is killed before its stdin is closed,
/// so that it never takes a cut message as whole.
pub fn run_with_input(cmd: &mut Command, data: Vec<Piece>, timeout: Duration) -> Outcome {
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    cmd.stdin(Stdio::piped());
    // Its own process group, so that a timeout kills what it started too.
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::NotStarted(e.to_string()),
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let pid = child.id();
    let (tx, written) = std::sync::mpsc::channel();
    // Detached: if it stays blocked on a pipe that someone holds and never reads, we still
    // return (and exit); the thread does not outlive the process.
    std::thread::spawn(move || {
        let r = feed(data, &mut stdin);
        if let Err(Feed::Read(_)) = r {
            crate::cli::os::kill_process_group(pid);
        }
        drop(stdin);
        let _ = tx.send(r);
    });
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Ok(None) => {
                kill_child(&mut child);
                return Outcome::TimedOut(timeout);
            }
            Err(e) => {
                kill_child(&mut child);
                return Outcome::NotStarted(format!("waiting for it: {e}"));
            }
        }
    };
    // It has exited; a process it left behind may still hold its stdin.
    let written = match written.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(r) => r,
        Err(_) => {
            kill_child(&mut child);
            return Outcome::TimedOut(timeout);
        }
    };
    match (status.code(), written) {
        (_, Err(Feed::Read(e))) => Outcome::InputFailed(e.to_string()),
        (Some(0), Err(Feed::Write(e))) => Outcome::Unread(e.to_string()),
        (Some(code), _) => Outcome::Exited(code as u8),
        (None, _) => Outcome::Signaled(status.signal().unwrap_or(0)),
    }
}

/// Kills the command and every process of its group (it runs in a group of its own), and
/// reaps it.
fn kill_child(child: &mut std::process::Child) {
    crate::cli::os::kill_process_group(child.id());
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the re-injection `command` (program and arguments) with the message on its stdin.
pub fn reinject(command: &[OsString], data: Vec<Piece>, timeout: Duration) -> Outcome {
    let Some((prog, args)) = command.split_first() else {
        return Outcome::NotStarted("no re-injection command after --".into());
    };
    run_with_input(Command::new(prog).args(args), data, timeout)
}

/// Logs how a re-injection ended; returns the exit code.
pub(super) fn report_reinjection(prog: &str, outcome: &Outcome, log: &Logger) -> u8 {
    let code = outcome.exit_code();
    match (outcome, code) {
        (Outcome::Exited(0), _) => log.debug(&format!("re-injected through {prog}")),
        (Outcome::Exited(status), TEMPFAIL) if *status != TEMPFAIL => log.error(&format!(
            "re-injection through {prog} failed: {outcome} (not a sysexits.h code, which Postfix would \
             bounce); exit 75 (deferred)"
        )),
        (_, TEMPFAIL) => log.error(&format!("re-injection through {prog} failed: {outcome}; exit 75 (deferred)")),
        _ => log.error(&format!("re-injection through {prog} failed: {outcome}; its status {code} is passed on")),
    }
    code
}

/// Replaces this process with the real sendmail, `arg0` as its name (Postfix sendmail picks
/// mailq or newaliases mode by it). Returns only if that fails: the exit code to use.
pub fn exec_real(real: &OsStr, arg0: Option<&OsStr>, args: &[OsString], log: &Logger) -> u8 {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(real);
    if let Some(name) = arg0 {
        cmd.arg0(name);
    }
    let e = cmd.args(args).exec();
    log.error(&format!("cannot run the real sendmail {}: {e}", real.to_string_lossy()));
    TEMPFAIL
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn sh(script: &str) -> Vec<OsString> {
        args(&["sh", "-c", script])
    }

    #[test]
    fn reinjection_outcome_and_exit_code() {
        let big = || vec![vec![b'x'; 1 << 20]];
        let short = Duration::from_millis(300);
        for (command, data, timeout, want, code) in [
            (sh("cat > /dev/null"), vec![b"x".to_vec()], DEFAULT_REINJECT_TIMEOUT, Outcome::Exited(0), 0),
            // The command's status passes through.
            (sh("cat > /dev/null; exit 67"), vec![b"x".to_vec()], DEFAULT_REINJECT_TIMEOUT, Outcome::Exited(67), 67),
            (sh("cat > /dev/null; exit 69"), vec![b"x".to_vec()], DEFAULT_REINJECT_TIMEOUT, Outcome::Exited(69), 69),
            (
                sh("cat > /dev/null; exit 75"),
                vec![b"x".to_vec()],
                DEFAULT_REINJECT_TIMEOUT,
                Outcome::Exited(75),
                TEMPFAIL,
            ),
            // A status outside sysexits.h would bounce; it defers.
            (sh("exit 1"), big(), DEFAULT_REINJECT_TIMEOUT, Outcome::Exited(1), TEMPFAIL),
            (
                sh("cat > /dev/null; exit 255"),
                vec![b"x".to_vec()],
                DEFAULT_REINJECT_TIMEOUT,
                Outcome::Exited(255),
                TEMPFAIL,
            ),
            (sh("cat > /dev/null; exit 78"), vec![b"x".to_vec()], DEFAULT_REINJECT_TIMEOUT, Outcome::Exited(78), 78),
            (sh("kill -TERM $$"), vec![b"x".to_vec()], DEFAULT_REINJECT_TIMEOUT, Outcome::Signaled(15), TEMPFAIL),
            // A command that hangs, or never reads, is killed at the limit.
            (args(&["sleep", "100"]), big(), short, Outcome::TimedOut(short), TEMPFAIL),
            (sh("exec 3<&0; sleep 100 <&3 & exit 0"), big(), short, Outcome::TimedOut(short), TEMPFAIL),
            (
                args(&["true"]),
                big(),
                DEFAULT_REINJECT_TIMEOUT,
                Outcome::Unread("Broken pipe (os error 32)".into()),
                TEMPFAIL,
            ),
            (
                args(&["/nonexistent/sendmail"]),
                big(),
                DEFAULT_REINJECT_TIMEOUT,
                Outcome::NotStarted("No such file or directory (os error 2)".into()),
                TEMPFAIL,
            ),
            (
                vec![],
                big(),
                DEFAULT_REINJECT_TIMEOUT,
                Outcome::NotStarted("no re-injection command after --".into()),
                TEMPFAIL,
            ),
        ] {
            let got = reinject(&command, data.into_iter().map(Piece::from).collect(), timeout);
            assert_eq!((&got, got.exit_code()), (&want, code), "{command:?}");
        }
    }

    /// Our input failing in the middle of a message streamed on: the command is killed before
    /// it sees an end of file, so it never takes the cut message; 75.
    #[test]
    fn failed_input_kills_before_the_end() {
        struct Failing(bool);
        impl Read for Failing {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(std::io::Error::other("gone"));
                }
                b[0] = b'x';
                Ok(1)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let took = dir.path().join("took");
        let pieces = vec![Piece::Bytes(b"A: b\n\n".to_vec()), Piece::Rest(Box::new(Failing(false)))];
        let got =
            reinject(&sh(&format!("cat > /dev/null && touch {}", took.display())), pieces, DEFAULT_REINJECT_TIMEOUT);
        assert_eq!((&got, got.exit_code()), (&Outcome::InputFailed("gone".into()), TEMPFAIL));
        assert!(!took.exists(), "the command saw no end of file");
    }
}
