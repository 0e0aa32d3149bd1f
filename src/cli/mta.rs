//! MTA integration: the Postfix pipe filter (`dkimpress filter ... -- sendmail -G -i -f ...`)
//! and the sendmail wrapper (`dkimpress sendmail ...`, or a symlink named `sendmail`).
//!
//! Owns: reading a command line and a message the way Postfix sendmail(1) does, in bounded
//! memory (a large message is spooled to an unlinked temporary file and streamed on),
//! re-injecting through a command under a time limit, exit codes as Postfix pipe(8) reads them
//! (0 delivered, the re-injection command's own sysexits status, 75 try again), which clients'
//! mail is ours to sign (OpenDKIM InternalHosts), the pass-through policy when signing fails or
//! a message is over the size cap, and logging to syslog (facility mail) or stderr. Signing is
//! [`dkimpress::pipeline`]'s `sign_message`; argv and the environment are read by `cli`. Mail is
//! never dropped: every path ends in a re-injection, in the re-injection command's status, or
//! in exit 75.

use crate::cli::sysexits::TEMPFAIL;
use dkimpress::dkim::sign::SignError;
use dkimpress::pipeline::{self, BulkOptions, MessageError};
use dkimpress::select::SelectError;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, Read, Seek as _, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
            context: format!("{:08X}", std::process::id() ^ (crate::cli::now_unix() as u32).rotate_left(16)),
        }
    }

    /// Sets the context of later lines (the milter: the MTA's queue ID).
    pub fn set_context(&mut self, context: &str) {
        self.context = context.chars().filter(|c| !c.is_control()).take(100).collect();
    }

    /// Adds the Message-ID to the context of later lines.
    pub fn set_message_id(&mut self, id: &str) {
        let id: String = id.chars().filter(|c| !c.is_control()).take(200).collect();
        self.context = format!("{}: message-id={}", self.context.split(':').next().unwrap_or_default(), id.trim());
    }

    fn emit(&self, severity: u8, msg: &str) {
        // No key material in the log, whatever an error quotes (issue 11, item 16).
        let msg = dkimpress::dkim::key::redact_key_material(msg);
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
    let parsed = dkimpress::dkim::header::Message::parse(msg).ok()?;
    let f = parsed.fields.iter().find(|f| f.is("message-id"))?;
    Some(String::from_utf8_lossy(f.value()).trim().to_string())
}

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

/// Why a copy stopped: the side that failed.
#[derive(Debug)]
enum Feed {
    /// Reading the source (our stdin, the spool file) failed.
    Read(std::io::Error),
    /// Writing failed (the command closed its stdin, the spool's disk is full).
    Write(std::io::Error),
}

/// Copies `src` to `dst` through `buf`; the number of octets copied.
fn pump(src: &mut dyn Read, dst: &mut dyn Write, buf: &mut [u8]) -> Result<u64, Feed> {
    let mut total = 0;
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Feed::Read(e)),
        };
        dst.write_all(&buf[..n]).map_err(Feed::Write)?;
        total += n as u64;
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

/// The buffer of a copy to the re-injection command or into the spool.
const COPY_BUFFER: usize = 64 * 1024;

/// Runs `cmd` with `data` on its stdin, for at most `timeout`.
///
/// A writer thread feeds stdin, so a command that never reads cannot block us (issue 11): we
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

/// Signs `msg` for the MTA paths: the header fields to add (empty = pass on unsigned), or an
/// error meaning "defer".
fn sign_for_mta(opts: &BulkOptions, msg: &[u8], on_error: OnError, log: &Logger) -> Result<Vec<u8>, String> {
    match pipeline::sign_message(opts, msg) {
        Ok((headers, _)) => {
            log.info("signed");
            Ok(headers)
        }
        Err(MessageError::Select(SelectError::NoKey(who))) => {
            log.info(&format!("no signing key for {who}; passed on unsigned"));
            Ok(vec![])
        }
        // A message that is not one can never be signed: retrying cannot help, and losing or
        // bouncing mail is worse than passing it on unsigned.
        Err(
            e @ (MessageError::Sign(SignError::Header(_) | SignError::NoFrom)
            | MessageError::Select(SelectError::NoAddress(_))),
        ) => {
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

/// Messages up to this size are read into memory; a larger one is spooled to an unlinked
/// temporary file, so that what the MTA paths hold in memory stays about
/// this size whatever the message's.
pub const IN_MEMORY: usize = 1 << 20;

/// A message as read: in memory, or spooled.
pub enum Spool {
    /// In memory (at most [`IN_MEMORY`] octets, and one more when more follows).
    Memory(Vec<u8>),
    /// In an unlinked temporary file of our own ($TMPDIR, else /tmp; mode 0600), from its start.
    File(std::fs::File),
}

/// Why [`read_message`] stopped before the end of the message.
#[derive(Debug)]
pub enum Unread {
    /// The message is longer than the limit it was read with.
    OverLimit,
    /// It is longer than [`IN_MEMORY`] and no temporary file can be created to spool it.
    NoSpool(std::io::Error),
}

/// A message read by [`read_message`]: all of it, or its start and why the rest is left in the
/// input.
pub struct Received {
    /// What was read.
    pub spool: Spool,
    /// `Some`: the input holds more of the message.
    pub unread: Option<Unread>,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading the input failed.
    #[error("reading the message failed: {0}")]
    Input(std::io::Error),
    /// Writing the spool file failed (a full disk).
    #[error("writing the message to a temporary file in {} failed: {error}", .dir.display())]
    Spool {
        /// The temporary directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
}

/// Reads a message from `input`, up to `limit` octets: into memory up to [`IN_MEMORY`], else
/// into a spool file. Over `limit`, the first `limit + 1` octets are kept and the rest is left
/// in `input` (`Unread::OverLimit`). Memory used: [`IN_MEMORY`] and a copy buffer.
pub fn read_message(input: &mut dyn Read, limit: u64) -> Result<Received, ReadError> {
    let first = limit.min(IN_MEMORY as u64) + 1;
    let mut head = Vec::with_capacity(64 * 1024);
    input.take(first).read_to_end(&mut head).map_err(ReadError::Input)?;
    let read = head.len() as u64;
    if read < first || read > limit {
        let unread = (read > limit).then_some(Unread::OverLimit);
        return Ok(Received { spool: Spool::Memory(head), unread });
    }
    let mut file = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => return Ok(Received { spool: Spool::Memory(head), unread: Some(Unread::NoSpool(e)) }),
    };
    let spool_err = |error| ReadError::Spool { dir: std::env::temp_dir(), error };
    file.write_all(&head).map_err(spool_err)?;
    drop(head);
    let mut buf = vec![0; COPY_BUFFER];
    let copied = match pump(&mut input.take(limit + 1 - read), &mut file, &mut buf) {
        Ok(n) => n,
        Err(Feed::Read(e)) => return Err(ReadError::Input(e)),
        Err(Feed::Write(e)) => return Err(spool_err(e)),
    };
    let unread = (read + copied > limit).then_some(Unread::OverLimit);
    Ok(Received { spool: Spool::File(file), unread })
}

/// Runs `f` on the octets of `spool`. A spooled message is mapped, and its pages leave our
/// resident set as `f` reads them (see [`with_pages_released`]).
fn with_message<T>(spool: &Spool, f: impl FnOnce(&[u8]) -> T) -> std::io::Result<T> {
    match spool {
        Spool::Memory(m) => Ok(f(m)),
        Spool::File(file) => {
            // pipeline::os::map's one hazard, another process changing the file while it is
            // mapped, cannot happen here: the file is ours, unlinked, and never written again.
            let map = dkimpress::pipeline::os::map(file)?;
            Ok(with_pages_released(&map, f))
        }
    }
}

/// How often the pages of a mapped spool are dropped from the resident set while it is read.
const RELEASE_EVERY: Duration = Duration::from_millis(10);

/// Runs `f` on `map` while a second thread drops the map's pages from our resident set every
/// [`RELEASE_EVERY`]. The signer reads the message once from start to end in one call, with no
/// point at which to release what it has finished with; without this, every page it touched
/// would count in our RSS until the end (a 300 MB message: 300 MB). Dropped pages stay in the
/// page cache, and a page read again is mapped again from the same file ([`Mapped::release`]),
/// so `f` sees the same octets; the resident set stays at what is read in one interval.
///
/// [`Mapped::release`]: dkimpress::pipeline::os::Mapped::release
fn with_pages_released<T>(map: &dkimpress::pipeline::os::Mapped, f: impl FnOnce(&[u8]) -> T) -> T {
    use std::sync::{Condvar, Mutex};
    /// Tells the releasing thread to stop, also when `f` panics (the scope waits for it).
    struct Stop<'a>(&'a (Mutex<bool>, Condvar));
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.0 .1.notify_all();
        }
    }
    let stop = (Mutex::new(false), Condvar::new());
    std::thread::scope(|s| {
        s.spawn(|| loop {
            let done = stop.0.lock().unwrap_or_else(|e| e.into_inner());
            let (done, _) = stop.1.wait_timeout(done, RELEASE_EVERY).unwrap_or_else(|e| e.into_inner());
            if *done {
                return;
            }
            drop(done);
            map.release(0..map.len());
        });
        let _stop = Stop(&stop);
        f(map)
    })
}

/// Reads the message from `input` and makes what the re-injection command gets: the added
/// header fields (signed with `Ok(options)`), then the message, read from memory or the spool;
/// or the exit code when it must be deferred. `Err(reason)` as `plan`: the message goes on
/// unsigned, logged at `unsigned`'s level, streamed without being read whole. Over the size
/// cap, `over_cap` says whether the message is deferred or goes on unsigned (streamed on,
/// never held whole).
fn prepare(
    plan: Result<&BulkOptions, String>,
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
pub fn filter(
    plan: Result<&BulkOptions, String>,
    command: &[OsString],
    settings: &MtaSettings,
    log: &mut Logger,
) -> u8 {
    let pieces = match prepare(plan, Box::new(std::io::stdin()), settings, log, Logger::info, settings.on_error) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let prog = command.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let outcome = reinject(command, pieces, settings.timeout);
    report_reinjection(&prog, &outcome, log)
}

/// Logs how a re-injection ended; returns the exit code.
fn report_reinjection(prog: &str, outcome: &Outcome, log: &Logger) -> u8 {
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

/// What a sendmail command line asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendmailMode {
    /// Read a message on stdin and queue it (the default, `-bm`).
    #[default]
    Enqueue,
    /// `-bs`: an SMTP session on stdin/stdout.
    Smtp,
    /// Anything that submits no message: `-bp` (mailq), `-bi`/`-I` (newaliases), `-bd`,
    /// `-bv`, `-bh`, `-q...`, and command lines sendmail would refuse (it says why).
    Other,
}

/// A sendmail command line as Postfix sendmail(1) reads it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SendmailArgs {
    /// The arguments as given (passed on unchanged).
    pub args: Vec<OsString>,
    /// `-i`, `-oi`, `-o i` (also grouped: `-ti`, `-it`): a line with only `.` does not end
    /// the message.
    pub ignore_dots: bool,
    /// What is asked for.
    pub mode: SendmailMode,
    /// `-f` / `-r`: the envelope sender.
    pub sender: Option<String>,
}

/// Postfix sendmail(1)'s getopt string (`GETOPT_LIST` in postfix/src/sendmail/sendmail.c).
/// A letter followed by `:` takes a value, attached (`-fme@x`) or in the next argument.
const SENDMAIL_OPTIONS: &[u8] = b"A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx";

/// Reads sendmail's command line exactly as Postfix sendmail(1) does: POSIX getopt with
/// grouped flags (`-ti`), values attached or separate (`-oi`, `-o i`), options ending at the
/// first recipient or `--`, and its two exceptions to getopt (a bare `-q`; the old `-V xx`).
/// Nothing is changed, only noted.
pub fn parse_sendmail_args(args: Vec<OsString>) -> SendmailArgs {
    let mut out = SendmailArgs { args, ..SendmailArgs::default() };
    let mut mode = SendmailMode::Enqueue;
    let mut queue_run = false;
    let mut usage_error = false;
    let args = &out.args;
    let mut i = 0;
    'args: while let Some(arg) = args.get(i) {
        let a = arg.as_encoded_bytes();
        match a {
            // Not getopt compatible: -q alone flushes the queue.
            b"-q" => {
                queue_run = true;
                i += 1;
                continue;
            }
            // Deprecated VERP form `-V xx`: -V alone, the next argument left in place.
            b"-V" if args.get(i + 1).is_some_and(|n| n.len() == 2) => {
                i += 1;
                continue;
            }
            b"--" => break,
            _ if a.len() < 2 || a[0] != b'-' => break, // the first recipient
            _ => {}
        }
        i += 1;
        let mut j = 1;
        while j < a.len() {
            let letter = a[j];
            j += 1;
            let Some(at) = SENDMAIL_OPTIONS.iter().position(|&o| o == letter && o != b':') else {
                usage_error = true; // sendmail: "usage: ..." (EX_USAGE)
                break 'args;
            };
            if SENDMAIL_OPTIONS.get(at + 1) != Some(&b':') {
                match letter {
                    b'i' => out.ignore_dots = true,
                    b'I' => mode = SendmailMode::Other,
                    _ => {}
                }
                continue;
            }
            let value: &[u8] = if j < a.len() {
                let v = &a[j..];
                j = a.len();
                v
            } else if let Some(next) = args.get(i) {
                i += 1;
                next.as_encoded_bytes()
            } else {
                usage_error = true; // option requires an argument
                break 'args;
            };
            match letter {
                b'b' => {
                    mode = match value.first() {
                        Some(b'm') => SendmailMode::Enqueue,
                        Some(b's') => SendmailMode::Smtp,
                        _ => SendmailMode::Other,
                    }
                }
                b'f' | b'r' => out.sender = Some(String::from_utf8_lossy(value).into_owned()),
                b'o' if value.first() == Some(&b'i') => out.ignore_dots = true,
                b'q' => queue_run = true,
                _ => {}
            }
        }
    }
    out.mode = if usage_error || queue_run { SendmailMode::Other } else { mode };
    out
}

/// A message in `R` as sendmail reads it: to end of file, or (without `-i`) up to a line
/// holding only `.`, reading no further. Lines are taken at most [`LINE_PIECE`] octets at a
/// time, so that a line without an end is not held whole.
pub struct SendmailInput<R> {
    inner: R,
    ignore_dots: bool,
    /// The next octet read starts a line.
    at_line_start: bool,
    /// The dot line, or the end of the input, has been seen.
    ended: bool,
    /// Read, not handed out yet: `piece[at..]`.
    piece: Vec<u8>,
    at: usize,
}

/// How much of a line [`SendmailInput`] holds at a time.
const LINE_PIECE: u64 = 64 * 1024;

impl<R: BufRead> SendmailInput<R> {
    /// The message in `inner`; `ignore_dots`: `-i`, a lone `.` is data.
    pub fn new(inner: R, ignore_dots: bool) -> Self {
        SendmailInput { inner, ignore_dots, at_line_start: true, ended: false, piece: vec![], at: 0 }
    }
}

impl<R: BufRead> Read for SendmailInput<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.ignore_dots {
            return self.inner.read(out);
        }
        while self.at == self.piece.len() {
            if self.ended {
                return Ok(0);
            }
            self.piece.clear();
            self.at = 0;
            if (&mut self.inner).take(LINE_PIECE).read_until(b'\n', &mut self.piece)? == 0 {
                self.ended = true;
                return Ok(0);
            }
            let starts_line = self.at_line_start;
            self.at_line_start = self.piece.ends_with(b"\n");
            // A lone "." with no line end is the last octet of the input (a piece ends early
            // only there or at an LF).
            if starts_line && matches!(&self.piece[..], b".\n" | b".\r\n" | b".") {
                self.piece.clear();
                self.ended = true;
                return Ok(0);
            }
        }
        let n = out.len().min(self.piece.len() - self.at);
        out[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
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

/// The sendmail wrapper: sign (unless the mode submits no message) and hand over to the real
/// sendmail with the same arguments. `plan` as for [`filter`]; a message over the size cap goes
/// on unsigned. Returns the exit code (the real sendmail's sysexits status, when it ran).
pub fn sendmail(
    plan: Result<&BulkOptions, String>,
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
    let shown: String = client.chars().filter(|c| !c.is_control()).take(100).collect();
    Ok(Some(format!("client {shown} is not in InternalHosts and did not authenticate")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn sendmail_arguments() {
        use SendmailMode::*;
        for (a, dots, mode, sender) in [
            (&["-i", "-f", "a@b", "--", "x@y"][..], true, Enqueue, Some("a@b")),
            (&["-oi", "-t"][..], true, Enqueue, None),
            // Issue 11 item 5: grouped flags and a separate -o value.
            (&["-ti"][..], true, Enqueue, None),
            (&["-it", "x@y"][..], true, Enqueue, None),
            (&["-o", "i", "x@y"][..], true, Enqueue, None),
            (&["-t", "-oi"][..], true, Enqueue, None),
            (&["-tif", "me@x", "r@y"][..], true, Enqueue, Some("me@x")),
            (&["-iF", "Name", "x@y"][..], true, Enqueue, None),
            (&["-om", "x@y"][..], false, Enqueue, None),
            (&["-o", "m", "-i"][..], true, Enqueue, None),
            (&["-fme@example.com", "-F", "Me Myself", "x@y"][..], false, Enqueue, Some("me@example.com")),
            (&["-r", "r@example.com", "x@y"][..], false, Enqueue, Some("r@example.com")),
            // A value is a value, even when it looks like a flag.
            (&["-F", "-i", "x@y"][..], false, Enqueue, None),
            // Options end at the first recipient (POSIX getopt, as Postfix builds it) or --.
            (&["x@y", "-i"][..], false, Enqueue, None),
            (&["--", "-i"][..], false, Enqueue, None),
            (&["-V", "+=", "-i"][..], false, Enqueue, None),
            (&["-bs"][..], false, Smtp, None),
            (&["-bs", "-bm"][..], false, Enqueue, None),
            (&["-bp"][..], false, Other, None),
            (&["-bi"][..], false, Other, None),
            (&["-I"][..], false, Other, None),
            (&["-bv", "x@y"][..], false, Other, None),
            (&["-bd"][..], false, Other, None),
            (&["-q"][..], false, Other, None),
            (&["-q1h"][..], false, Other, None),
            (&["-qR", "example.com"][..], false, Other, None),
            (&["-bm", "-i", "x@y"][..], true, Enqueue, None),
            (
                &["-N", "success,delay", "-R", "hdrs", "-V", "envid", "-B", "8BITMIME", "-C", "/etc/postfix", "x@y"][..],
                false,
                Enqueue,
                None,
            ),
            // What sendmail refuses goes to it unread, for it to say so.
            (&["-f"][..], false, Other, None),
            (&["-k", "x@y"][..], false, Other, None),
        ] {
            let p = parse_sendmail_args(args(a));
            assert_eq!((p.ignore_dots, p.mode, p.sender.as_deref()), (dots, mode, sender), "{a:?}");
            assert_eq!(p.args, args(a), "passed through unchanged");
        }
    }

    #[test]
    fn sendmail_input_dots() {
        for (input, dots, want, rest) in [
            (&b"A: b\n\nbody\n.\nafter\n"[..], false, &b"A: b\n\nbody\n"[..], &b"after\n"[..]),
            (b"A: b\n\nbody\n.\nafter\n", true, b"A: b\n\nbody\n.\nafter\n", b""),
            (b"A: b\r\n\r\n..stuffed\r\n.\r\nmore", false, b"A: b\r\n\r\n..stuffed\r\n", b"more"),
            (b"A: b\n\nno end", false, b"A: b\n\nno end", b""),
            (b"A: b\n\nlast\n.", false, b"A: b\n\nlast\n", b""),
            (b"A: b\n\n.x\n. \n", false, b"A: b\n\n.x\n. \n", b""),
        ] {
            let mut r = input;
            let mut got = vec![];
            SendmailInput::new(&mut r, dots).read_to_end(&mut got).unwrap();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(r, rest, "reads nothing after the dot line");
        }
        // A line longer than what is held at a time, and a dot line after it.
        let long = [&b"A: b\n\n"[..], &[b'x'; 200_000], b"\n.\nafter\n"].concat();
        let mut got = vec![];
        SendmailInput::new(&long[..], false).read_to_end(&mut got).unwrap();
        assert_eq!(got, long[..long.len() - b".\nafter\n".len()]);
        // A dot at the start of a piece that does not start a line is data.
        let cut = [&b"A: b\n\n"[..], &[b'x'; LINE_PIECE as usize - 1], b"y.\n", b".\n"].concat();
        let mut got = vec![];
        SendmailInput::new(&cut[..], false).read_to_end(&mut got).unwrap();
        assert_eq!(got, cut[..cut.len() - 2]);
    }

    /// Small messages stay in memory, larger ones are spooled, and over the
    /// limit the first `limit + 1` octets are read and the rest is left in the input.
    #[test]
    fn read_message_spools_and_stops_at_the_limit() {
        let big = IN_MEMORY + 5;
        for (len, limit, spooled, over) in [
            (0, 100, false, false),
            (100, 100, false, false),
            (101, 100, false, true),
            (IN_MEMORY, u64::MAX, false, false),
            (big, big as u64, true, false),
            (big, big as u64 - 1, true, true),
            (3 * IN_MEMORY, 2 * IN_MEMORY as u64, true, true),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut input = &data[..];
            let got = read_message(&mut input, limit).unwrap();
            let kept = match got.spool {
                Spool::Memory(m) => {
                    assert!(!spooled, "{len} {limit}: in memory");
                    m
                }
                Spool::File(mut f) => {
                    assert!(spooled, "{len} {limit}: spooled");
                    let mut m = vec![];
                    f.rewind().unwrap();
                    f.read_to_end(&mut m).unwrap();
                    m
                }
            };
            assert_eq!(matches!(got.unread, Some(Unread::OverLimit)), over, "{len} {limit}");
            let n = if over { limit as usize + 1 } else { len };
            assert!(kept == data[..n] && input == &data[n..], "{len} {limit}: kept {}", kept.len());
        }
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
            // Issue 11 item 12: the command's status passes through.
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
            // Issue 11 item 11: a command that hangs, or never reads, is killed at the limit.
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
