//! `dkimpress filter`: the Postfix pipe(8) filter command: who may be signed for (InternalHosts,
//! SASL), then sign and re-inject (see [`super::mta`]).

use crate::cli::args::{parse_size, KeyArgs};
use crate::cli::keys::{db_settings, mta_options, read_conf};
use crate::cli::sysexits;
use clap::Args;
use dkimpress::pipeline;
use std::path::Path;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct FilterArgs {
    #[command(flatten)]
    pub(crate) k: KeyArgs,
    /// When signing fails (key store down, broken key): tempfail (exit 75, Postfix retries) or
    /// pass (re-inject unsigned and log).
    #[arg(long = "on-error", value_name = "ACTION", default_value = "tempfail", value_parser = crate::cli::man::ON_ERROR)]
    pub(crate) on_error: crate::cli::mta::OnError,
    /// Log to stderr instead of syslog (facility mail).
    #[arg(long = "log-stderr")]
    pub(crate) log_stderr: bool,
    /// The SMTP client's address (pipe(8) `--client-address=${client_address}`; empty for
    /// local submission). Mail from a client that is not an internal host and did not
    /// authenticate is re-injected unsigned.
    #[arg(long = "client-address", value_name = "ADDR")]
    pub(crate) client_address: Option<String>,
    /// The SASL login of the client (pipe(8) `--sasl-username=${sasl_username}`); non-empty
    /// means the mail is ours to sign.
    #[arg(long = "sasl-username", value_name = "NAME")]
    pub(crate) sasl_username: Option<String>,
    /// Internal hosts, as OpenDKIM InternalHosts: addresses and CIDR blocks, comma-separated,
    /// `!` to exclude; or a file (`/path` or `file:path`, one or more per line)
    /// [default: InternalHosts of --config, else 127.0.0.1, ::1].
    #[arg(long = "internal-hosts", value_name = "LIST|FILE")]
    pub(crate) internal_hosts: Option<String>,
    /// Largest message signed (octets; K, M, G suffixes); a larger one is deferred (exit 75),
    /// or with --on-error pass re-injected unsigned [default: 512M].
    #[arg(long = "max-message-size", value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_message_size: Option<u64>,
    /// Kill the re-injection command after this many seconds, and exit 75.
    #[arg(long = "reinject-timeout", value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) reinject_timeout: u64,
    /// The re-injection command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<std::ffi::OsString>,
}

pub(crate) fn cmd_filter(a: FilterArgs) -> anyhow::Result<ExitCode> {
    use crate::cli::mta::{MtaSettings, OnError};
    let to_stderr = a.log_stderr || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut log = crate::cli::log::Logger::new(a.k.verbose, to_stderr);
    let settings = MtaSettings {
        on_error: a.on_error,
        timeout: std::time::Duration::from_secs(a.reinject_timeout),
        max_message: a.max_message_size.unwrap_or(pipeline::DEFAULT_MAX_MESSAGE),
        max_message_name: "--max-message-size",
    };
    // A configuration that cannot load defers mail (the admin fixes it, Postfix retries),
    // unless the admin asked for pass-through.
    let config_error = |e: String, log: &crate::cli::log::Logger| match a.on_error {
        OnError::Tempfail => {
            log.error(&format!("configuration: {e}; deferred"));
            Err(ExitCode::from(sysexits::TEMPFAIL))
        }
        OnError::Pass => {
            log.error(&format!("configuration: {e}; passing mail on unsigned"));
            Ok(format!("configuration error ({e}), --on-error pass"))
        }
    };
    // Only our own clients' mail is signed: the public MX must not sign spoofed inbound mail
    // with a From at our domains.
    // The configuration file is read once, when it is first needed, for both the host list
    // and the keys.
    let conf = std::cell::OnceCell::new();
    let conf = || conf.get_or_init(|| read_conf(&a.k).map_err(|e| format!("{e:#}"))).as_ref().map_err(Clone::clone);
    let untrusted = crate::cli::mta::untrusted_origin(
        a.client_address.as_deref().unwrap_or_default(),
        a.sasl_username.as_deref().unwrap_or_default(),
        || internal_hosts(&a, conf()?.as_ref()),
    );
    let plan = match untrusted {
        Ok(Some(reason)) => Err(reason),
        Ok(None) => match conf().map_err(anyhow::Error::msg).and_then(|c| mta_options(&a.k, c.as_ref())) {
            Ok(o) => Ok(o),
            Err(e) => match config_error(format!("{e:#}"), &log) {
                Ok(reason) => Err(reason),
                Err(code) => return Ok(code),
            },
        },
        Err(e) => match config_error(e, &log) {
            Ok(reason) => Err(reason),
            Err(code) => return Ok(code),
        },
    };
    let code = {
        let mut log_ref = std::panic::AssertUnwindSafe(&mut log);
        let plan = std::panic::AssertUnwindSafe(plan.as_ref().map_err(Clone::clone));
        let command = &a.command;
        let settings = &settings;
        match std::panic::catch_unwind(move || {
            let plan = plan;
            crate::cli::mta::filter(plan.0, command, settings, &mut log_ref)
        }) {
            Ok(c) => c,
            Err(_) => sysexits::TEMPFAIL,
        }
    };
    if code == sysexits::TEMPFAIL {
        log.debug("exit 75: Postfix will retry");
    }
    Ok(ExitCode::from(code))
}

/// The InternalHosts list of `filter`: --internal-hosts, else the InternalHosts of the
/// configuration file `conf` (relative file paths from its directory), else loopback.
pub(crate) fn internal_hosts(
    a: &FilterArgs,
    conf: Option<&crate::cli::conf::OpendkimConf>,
) -> Result<crate::cli::mta::InternalHosts, String> {
    use crate::cli::mta::InternalHosts;
    let db = db_settings(&a.k).map_err(|e| e.to_string())?;
    if let Some(spec) = &a.internal_hosts {
        return InternalHosts::load(spec, Path::new("."), db);
    }
    match conf.and_then(|c| c.internal_hosts.as_ref().map(|spec| (spec, &c.dir))) {
        Some((spec, dir)) => InternalHosts::load(spec, dir, db),
        None => Ok(InternalHosts::default()),
    }
}
