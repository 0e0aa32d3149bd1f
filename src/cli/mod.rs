//! The command line: clap definitions, their conversion into one checked configuration per
//! command, and the commands themselves. Nothing after [`run`] parses argv or reads the
//! environment; the DKIM core (`canon`, `header`, `sign`, `key`) never sees clap types.
//!
//! This file holds the command enum, [`run`] and a few helpers every command uses (the clock,
//! stdin). The rooms: [`args`] the shared option groups, [`keys`] options and opendkim.conf to
//! keys, [`conf`] the file itself, [`error`] the errors and their exit codes (decided in one
//! place, [`exit_code`]), and one file per command.

mod args;
mod bench;
pub mod conf;
mod error;
mod filter;
mod genkey;
pub mod hosts;
mod keys;
mod log;
mod man;
mod milter;
pub mod mta;
#[allow(unsafe_code)]
mod os;
mod rotate;
mod seal;
mod sendmail;
mod sign;
mod testkey;
mod verify;

pub use error::{exit_code, is_broken_pipe, sysexits};

use bench::{cmd_bench, BenchArgs};
use error::{write_failed, CliError};
use filter::{cmd_filter, FilterArgs};
use genkey::{cmd_genkey, GenkeyArgs};
use milter::{cmd_milter, MilterArgs};
use rotate::{cmd_rotate, RotateArgs};
use seal::{cmd_seal, SealArgs};
use sendmail::cmd_sendmail;
use sign::{cmd_sign, SignArgs, SignConfig};
use testkey::{cmd_testkey, TestkeyArgs};
use verify::{cmd_verify, VerifyArgs};

use clap::{Parser, Subcommand};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// dkimpress: fast DKIM signing (RFC 6376, RFC 8463, RFC 8301).
#[derive(Parser, Debug)]
#[command(name = "dkimpress", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sign one message (stdin or a file) and write it with DKIM-Signature field(s) on top.
    Sign(SignArgs),
    /// Add the next ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results; RFC
    /// 8617) to one message or whole archives, after validating the chain already there.
    Seal(SealArgs),
    /// Verify the DKIM signatures of messages: stdin, message files, mboxes, maildirs, queue
    /// directories. Exit 0 only when every message passes.
    Verify(VerifyArgs),
    /// Postfix pipe filter: sign the message on stdin and re-inject it through the command
    /// after `--` (e.g. /usr/sbin/sendmail -G -i -f ${sender} -- ${recipient}).
    Filter(FilterArgs),
    /// Sendmail wrapper for locally submitted mail: sign it, then run the real sendmail with the
    /// same arguments (also as a link named sendmail). See dkimpress-sendmail(1).
    ///
    /// Its own options come before sendmail's: --config FILE (default: DKIMPRESS_CONFIG, else
    /// /etc/dkimpress/dkimpress.conf), --sendmail-path PATH (DKIMPRESS_SENDMAIL, else
    /// /usr/sbin/sendmail), --on-error pass|tempfail (DKIMPRESS_ON_ERROR, else pass), --verbose.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Sendmail {
        /// The wrapper's options, then sendmail's options and recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<std::ffi::OsString>,
    },
    /// Milter daemon for Postfix and Sendmail, a drop-in for opendkim(8): reads the same
    /// opendkim.conf (Socket, Mode, KeyTable/SigningTable, InternalHosts, On-*, ...), signs
    /// mail from internal hosts and authenticated clients, verifies the rest.
    Milter(MilterArgs),
    /// Measure each stage and the whole pipeline next to the machine's limits.
    Bench(BenchArgs),
    /// Check that the DNS key records match the private keys, like opendkim-testkey.
    Testkey(TestkeyArgs),
    /// Rotate keys safely: status, prepare (new key and its record), activate (once published),
    /// retire (after some days), over the KeyTable/SigningTable files of an opendkim.conf.
    Rotate(RotateArgs),
    /// Generate a key pair and its DNS TXT record, like opendkim-genkey.
    #[command(disable_help_flag = true)]
    Genkey(GenkeyArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (dkimpress.1 and dkimpress-COMMAND.1) into a directory.
    Man {
        /// Where to write them.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// `1 message`, `2 messages`.
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Parses `args` and runs the command.
pub fn run<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let argv0 = args.first().map(|a| Path::new(a).file_name().unwrap_or_default().to_os_string()).unwrap_or_default();
    // Called by the names Postfix's sendmail answers to (a symlink replacing
    // /usr/sbin/sendmail also serves mailq and newaliases).
    if argv0 == "sendmail" || argv0 == "mailq" || argv0 == "newaliases" {
        return Ok(cmd_sendmail(&argv0, args[1..].to_vec()));
    }
    if args.get(1).is_some_and(|a| a == "sendmail") {
        return Ok(cmd_sendmail(std::ffi::OsStr::new("sendmail"), args[2..].to_vec()));
    }
    // In a master.cf pipe line a mistyped filter option must defer mail (75), not bounce it
    // (64): Postfix retries until the admin fixes the line.
    let is_filter = args.get(1).is_some_and(|a| a == "filter");
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            let code = match e.kind() {
                DisplayHelp | DisplayVersion => 0,
                // `dkimpress` alone prints help, but did nothing asked of it: a usage error.
                DisplayHelpOnMissingArgumentOrSubcommand => sysexits::USAGE,
                _ if is_filter => sysexits::TEMPFAIL,
                _ => sysexits::USAGE,
            };
            // Help and version go to stdout: a reader that went away is 74, quietly, as for
            // every command's output.
            if let Err(err) = e.print() {
                if err.kind() == std::io::ErrorKind::BrokenPipe && code == 0 {
                    return Err(anyhow::Error::new(err));
                }
            }
            return Ok(ExitCode::from(code));
        }
    };
    match cli.command {
        Command::Sign(a) => cmd_sign(SignConfig::from_args(a)?),
        Command::Genkey(a) => cmd_genkey(a),
        Command::Verify(a) => cmd_verify(a),
        Command::Seal(a) => cmd_seal(a),
        Command::Testkey(a) => cmd_testkey(a),
        Command::Rotate(a) => cmd_rotate(a),
        Command::Filter(a) => cmd_filter(a),
        Command::Milter(a) => cmd_milter(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "dkimpress", &mut text);
            let mut out = std::io::stdout().lock();
            out.write_all(&text).and_then(|()| out.flush()).map_err(|e| write_failed("stdout", e))?;
            Ok(ExitCode::SUCCESS)
        }
        // Not reached: `sendmail` is dispatched above, before clap (its arguments are sendmail's,
        // not ours); the variant lists it in --help, the completions and the man pages.
        Command::Sendmail { args } => Ok(cmd_sendmail(std::ffi::OsStr::new("sendmail"), args)),
        Command::Man { dir } => {
            for (name, text) in man::man_pages()? {
                let path = dir.join(&name);
                std::fs::write(&path, text).map_err(|error| CliError::Create { path: path.clone(), error })?;
                eprintln!("dkimpress: wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The current Unix time in seconds: the one clock of the command line (the core takes the time
/// as an argument).
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Reads all of stdin, up to `max` octets (more is refused: 65).
fn read_stdin(max: u64) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(64 * 1024);
    std::io::Read::take(std::io::stdin().lock(), max + 1).read_to_end(&mut buf).map_err(CliError::StdinRead)?;
    if buf.len() as u64 > max {
        return Err(CliError::StdinTooLarge { max }.into());
    }
    Ok(buf)
}
