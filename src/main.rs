//! The `dkimpress` binary: parses arguments, runs, maps errors to exit codes (see `cli`).

use dkimpress::cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run(std::env::args_os()) {
        Ok(code) => code,
        Err(err) => {
            if cli::is_broken_pipe(&err) {
                // The reader went away: say so in one line; the message was not delivered.
                eprintln!("dkimpress: output closed early (broken pipe)");
                return ExitCode::from(cli::sysexits::IOERR);
            }
            // Never a line of key material, whatever the error quotes (issue 11, item 16).
            let text = format!("{err:#}");
            eprintln!("dkimpress: {}", dkimpress::key::redact_key_material(&text));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
