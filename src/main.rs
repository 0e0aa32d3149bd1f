//! The `dkimpress` binary: the command line ([`cli`]: arguments, configuration files, one
//! file per command, MTA integration, the benchmark harness) over the library's core and
//! pipeline. `main` runs, and maps errors to exit codes in one place (`cli::exit_code`).

#![deny(unsafe_code)]

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run(std::env::args_os()) {
        Ok(code) => code,
        Err(err) => {
            if cli::is_broken_pipe(&err) {
                // The reader went away (`| head`): exit 74, quietly, as ripgrep does; the
                // reader chose to stop, and a line about it would be noise.
                return ExitCode::from(cli::sysexits::IOERR);
            }
            // Never a line of key material, whatever the error quotes.
            let text = format!("{err:#}");
            eprintln!("dkimpress: {}", dkimpress::dkim::key::redact_key_material(&text));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
