//! The milter's settings: opendkim.conf and flags read once per start (the daemon's socket,
//! user, PID file) or per reload (keys, host lists, On-* actions, verification policy) into
//! checked, typed values.

use super::{admit, hostname, MilterArgs, DEFAULT_CONF};
use crate::cli::conf::{self, Actions, Mode};
use crate::cli::error::{usage, CliError};
use crate::cli::keys::{db_settings, key_lookup, key_source_with};
use crate::cli::mta::InternalHosts;
use dkimpress::dkim::verify::{self, KeyResult};
use dkimpress::pipeline;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The key of (selector, domain) for verification, looked up on behalf of a party (the SMTP
/// client's address; empty for a local one), whose fair share of the lookups it takes.
pub type KeyFn = Box<dyn Fn(&str, &str, &str) -> KeyResult + Send + Sync>;

/// Places for key lookups in flight, daemon-wide.
pub const LOOKUPS_IN_FLIGHT: usize = 128;
/// Of those, at most this many for names under one site (a domain whose DNS does not answer).
pub const LOOKUPS_PER_SITE: usize = 4;
/// And at most this many for one SMTP client address.
pub const LOOKUPS_PER_CLIENT: usize = 8;
/// A site whose lookup timed out is not asked again for this long (its lookups answer
/// temperror at once).
pub const DEAD_SITE_MEMORY: Duration = Duration::from_secs(30);
/// The most time the key lookups of one message may take in all, well under Postfix's
/// milter_content_timeout (300 s): past it the remaining signatures are temperror.
pub const LOOKUP_BUDGET: Duration = Duration::from_secs(20);

/// Everything a session needs, loaded once (and again on SIGHUP).
pub struct Settings {
    /// The signatures, when the mode includes `s`.
    pub sign: Option<dkimpress::select::KeySource>,
    /// Mode includes `v`.
    pub verify: bool,
    /// Clients whose mail is signed.
    pub internal: InternalHosts,
    /// Outside clients allowed to send as our domains unsigned, without a warning
    /// (`ExternalIgnoreList`).
    pub external_ignore: Option<InternalHosts>,
    /// Clients whose connections are accepted untouched (`PeerList`).
    pub peers: Option<InternalHosts>,
    /// `{daemon_name}` values whose mail is signed (`MTA`).
    pub mta_names: Vec<String>,
    /// Our authserv-id when configured (`AuthservID`); `None`: the MTA's name per connection.
    pub authserv_id: Option<String>,
    /// Leave Authentication-Results that claim our authserv-id in place (`KeepAuthResults`).
    pub keep_auth_results: bool,
    /// Add Authentication-Results to unsigned mail too.
    pub always_add_ar: bool,
    /// `On-*`.
    pub actions: Actions,
    /// Verification keys (cached).
    pub keys: KeyFn,
    /// What verification accepts.
    pub policy: verify::Policy,
    /// Largest message handled.
    pub max_message: u64,
    /// The memory all connections may hold for messages in progress (kept across reloads).
    pub budget: Arc<admit::MemoryBudget>,
    /// Log every signature and verification (`SyslogSuccess`).
    pub log_success: bool,
    /// Log why a message was not signed (`LogWhy`).
    pub log_why: bool,
    /// Fixed signing time (tests).
    pub timestamp: Option<u64>,
    /// ARC: which chains are validated and which mail is sealed.
    pub arc: ArcSettings,
}

/// Which mail the milter adds an ARC set to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SealScope {
    /// None.
    Nothing,
    /// Mail whose origin makes it ours (an internal host, an authenticated client, an `MTA`
    /// daemon): `ARCSign`, or an openarc.conf without `Mode` (OpenARC's choice per connection).
    Ours,
    /// Every message (an openarc.conf whose `Mode` has `s`).
    All,
}

/// ARC in the milter (opendkim.conf `ARCSign`/`ARCVerify`, or an openarc.conf with `-A`).
pub struct ArcSettings {
    /// Validate the chain of the mail we verify: `arc=` in its Authentication-Results.
    pub verify: bool,
    /// Which mail is sealed.
    pub seal: SealScope,
    /// The sealing key of an openarc.conf (`Domain`, `Selector`, `KeyFile`); `None`: the first
    /// key the message is signed with (mail with no key of ours is then not sealed).
    pub sealer: Option<dkimpress::dkim::sign::Signer>,
    /// `PermitAuthenticationOverrides`: on mail from an internal host, the `arc=` of our own
    /// Authentication-Results (written when the message first arrived) decides `cv=`.
    pub overrides: bool,
    /// `FinalReceiver`: Authentication-Results name the sealers (`arc.chain=`).
    pub final_receiver: bool,
    /// The key rules of the chain's signatures.
    pub policy: verify::Policy,
}

impl ArcSettings {
    /// No ARC.
    pub fn off() -> ArcSettings {
        ArcSettings {
            verify: false,
            seal: SealScope::Nothing,
            sealer: None,
            overrides: false,
            final_receiver: false,
            policy: verify::Policy::default(),
        }
    }
}

/// The daemon-level settings: read once at start (a restart changes them).
pub(super) struct Daemon {
    pub(super) socket: String,
    pub(super) socket_mode: u32,
    pub(super) user: Option<(u32, u32)>,
    pub(super) pid_file: Option<PathBuf>,
    pub(super) log_to_stderr: bool,
    pub(super) max_connections: usize,
    pub(super) max_per_peer: usize,
}

/// The configuration file the daemon reads: `-x`/`--config`, else /etc/opendkim.conf when it
/// exists and no key options say what to sign with (opendkim(8) reads it unless told).
pub(super) fn conf_path(a: &MilterArgs) -> Option<PathBuf> {
    if a.k.config.is_some() {
        return a.k.config.clone();
    }
    let flags_sign = !a.k.keys.is_empty() || a.k.key_table.is_some();
    (!flags_sign && Path::new(DEFAULT_CONF).exists()).then(|| PathBuf::from(DEFAULT_CONF))
}

/// Reads the configuration file (if any) as the daemon does: once per start or reload.
pub(super) fn daemon_conf(a: &MilterArgs) -> anyhow::Result<Option<conf::OpendkimConf>> {
    Ok(match conf_path(a) {
        Some(p) => Some(conf::OpendkimConf::load_daemon(&p)?),
        None => None,
    })
}

/// What the daemon does: `--mode`, else the file's `Mode` (checked when read), else `sv`.
pub(super) fn mode_of(a: &MilterArgs, c: Option<&conf::OpendkimConf>) -> anyhow::Result<Mode> {
    match &a.mode {
        Some(m) => Mode::parse(m).ok_or_else(|| usage(format!("--mode {m:?}: expected s, v or sv"))),
        None => Ok(c.and_then(|c| c.mode).unwrap_or(Mode::SIGN_AND_VERIFY)),
    }
}

/// Whether the milter signs at all: the mode says so and there are keys. A configuration
/// without keys (Debian's stock opendkim.conf) verifies only, as opendkim does with it.
pub(super) fn has_keys(a: &MilterArgs, c: Option<&conf::OpendkimConf>) -> bool {
    match c {
        Some(c) => !matches!(c.signing, conf::Signing::Nothing),
        None => !a.k.keys.is_empty() || a.k.key_table.is_some(),
    }
}

/// Loads the per-message settings from the configuration read once (`c`): keys, tables,
/// lists, actions.
pub(super) fn load_settings(
    a: &MilterArgs,
    c: Option<&conf::OpendkimConf>,
    budget: Arc<admit::MemoryBudget>,
) -> anyhow::Result<Settings> {
    let mode = mode_of(a, c)?;
    let cfg_err = |e: String| anyhow::Error::from(CliError::Config(e));
    let sign = if mode.sign && has_keys(a, c) { Some(key_source_with(&a.k, c)?) } else { None };
    let dir = c.map(|c| c.dir.clone()).unwrap_or_else(|| PathBuf::from("."));
    let db = db_settings(&a.k)?;
    let internal = match a.internal_hosts.as_ref().or(c.and_then(|c| c.internal_hosts.as_ref())) {
        Some(spec) => InternalHosts::load_named("InternalHosts", spec, &dir, db).map_err(cfg_err)?,
        None => InternalHosts::default(),
    };
    let external_ignore = match c.and_then(|c| c.external_ignore_list.as_ref()) {
        Some(spec) => Some(InternalHosts::load_named("ExternalIgnoreList", spec, &dir, db).map_err(cfg_err)?),
        None => None,
    };
    let peers = match c.and_then(|c| c.peer_list.as_ref()) {
        Some(spec) => Some(InternalHosts::load_named("PeerList", spec, &dir, db).map_err(cfg_err)?),
        None => None,
    };
    let actions = c.map(|c| c.on.clone()).unwrap_or_default();
    // `AuthservID HOSTNAME` means this host's name (opendkim.conf(5)); no setting means the
    // MTA's name, per connection (Session::authserv_id).
    // The file's AuthservID was checked when read; the flag's value and this host's name are
    // checked here.
    let authserv_id = match a.authserv_id.clone().or_else(|| c.and_then(|c| c.authserv_id.clone())) {
        Some(id) if id == "HOSTNAME" => Some(hostname()),
        other => other,
    };
    if let Some(id) = &authserv_id {
        if !verify::is_authserv_id(id) {
            return Err(CliError::Config(format!("AuthservID {id:?}: expected a host name")).into());
        }
    }
    let mut records = a.records.clone();
    if records.dns_servers.is_empty() {
        records.dns_servers = c.map(|c| c.nameservers.clone()).unwrap_or_default();
    }
    // A daemon lives longer than DNS answers: keys are asked again after five minutes. One
    // lookup per key however many connections want it at once (lookup::KeyCache).
    // A place among the lookups in flight is waited for at most 5 s, and places are shared:
    // per site, per client, and a site that timed out is not asked again for a while, so
    // that messages naming domains whose DNS never answers cannot stall everyone's lookups.
    let limit = std::num::NonZeroUsize::new(LOOKUPS_IN_FLIGHT).expect("non-zero");
    let cache = dkimpress::lookup::KeyCache::with_limit(key_lookup(&records)?, limit)
        .expiring(Duration::from_secs(300), 10_000)
        .waiting_at_most(Duration::from_secs(5))
        .fair(LOOKUPS_PER_SITE, LOOKUPS_PER_CLIENT, DEAD_SITE_MEMORY);
    let mut policy = verify::Policy::default();
    if let Some(bits) = c.and_then(|c| c.minimum_key_bits) {
        policy.min_rsa_bits = bits;
    }
    let oa = arc_conf(a)?;
    // The openarc.conf's AuthservID when opendkim's side names none.
    let authserv_id = match (authserv_id, oa.as_ref().and_then(|oa| oa.authserv_id.clone())) {
        (Some(id), _) => Some(id),
        (None, Some(id)) if id == "HOSTNAME" => Some(hostname()),
        (None, other) => other,
    };
    let arc = arc_settings(oa, c, sign.is_some(), &policy)?;
    Ok(Settings {
        sign,
        // Validating chains means verifying the DKIM signatures too: the results that go into
        // Authentication-Results and into the seal's ARC-Authentication-Results.
        verify: mode.verify || arc.verify,
        arc,
        internal,
        external_ignore,
        peers,
        mta_names: c.map(|c| c.mta.clone()).unwrap_or_default(),
        authserv_id,
        keep_auth_results: c.is_some_and(|c| c.keep_auth_results),
        always_add_ar: c.is_some_and(|c| c.always_add_ar),
        actions,
        keys: Box::new(move |s, d, party| cache.get_for(s, d, party)),
        policy,
        max_message: a.max_message_size.unwrap_or(pipeline::DEFAULT_MAX_MESSAGE),
        budget,
        log_success: a.k.verbose || c.is_some_and(|c| c.syslog_success),
        log_why: a.k.verbose || c.is_some_and(|c| c.log_why),
        timestamp: a.k.timestamp,
    })
}

/// The openarc.conf of `-A`, read once per start or reload.
fn arc_conf(a: &MilterArgs) -> anyhow::Result<Option<conf::OpenarcConf>> {
    match &a.arc_config {
        Some(p) => Ok(Some(conf::OpenarcConf::load(p).map_err(|e| CliError::Config(e.to_string()))?)),
        None => Ok(None),
    }
}

/// ARC from opendkim.conf's `ARCSign`/`ARCVerify` and the openarc.conf of `-A`: an
/// openarc.conf's `Mode` `s` seals every message with its key, no `Mode` seals our own mail and
/// validates the rest (as OpenARC decides per connection), `v` validates; `ARCSign` seals the
/// mail we sign (with the openarc.conf's key when there is one, else the message's first key).
fn arc_settings(
    oa: Option<conf::OpenarcConf>,
    c: Option<&conf::OpendkimConf>,
    signs: bool,
    dkim_policy: &verify::Policy,
) -> anyhow::Result<ArcSettings> {
    let mut arc = ArcSettings::off();
    arc.policy = dkim_policy.clone();
    if let Some(c) = c {
        arc.verify = c.arc_verify;
        arc.overrides = c.arc_overrides;
        arc.final_receiver = c.arc_final_receiver;
        if c.arc_sign {
            if !signs {
                return Err(CliError::Config(format!(
                    "{}: ARCSign seals with the signing keys, and this configuration signs nothing \
                     (give keys and a Mode with s, or an openarc.conf with -A)",
                    c.path.display()
                ))
                .into());
            }
            arc.seal = SealScope::Ours;
        }
    }
    if let Some(oa) = oa {
        let scope = match oa.mode {
            Some(m) if m.sign => SealScope::All,
            Some(_) => SealScope::Nothing,
            None => SealScope::Ours,
        };
        arc.seal = arc.seal.max(scope);
        arc.verify |= oa.mode.is_none_or(|m| m.verify);
        arc.overrides |= oa.overrides;
        arc.final_receiver |= oa.final_receiver;
        if let Some(bits) = oa.minimum_key_bits {
            arc.policy.min_rsa_bits = bits;
        }
        if let Some((domain, selector, key_file)) = &oa.key {
            let key = crate::cli::keys::load_key(key_file, oa.require_safe_keys)?;
            let template = dkimpress::select::Template {
                // OpenARC signs relaxed/simple unless told (openarc.conf(5) Canonicalization).
                canon: oa.canonicalization.unwrap_or(dkimpress::dkim::canon::Canonicalization {
                    header: dkimpress::dkim::canon::Canon::Relaxed,
                    body: dkimpress::dkim::canon::Canon::Simple,
                }),
                headers: oa.sign_headers.clone(),
                oversign: oa.oversign_headers.clone().unwrap_or_else(|| vec!["from".to_string()]),
                body_length: false,
                expire: None,
                algorithm: oa.signature_algorithm.map(|k| k.algorithm().to_string()),
                min_bits: dkimpress::dkim::key::MIN_RSA_BITS,
                strict_keys: oa.require_safe_keys,
                identity: None,
            };
            let signer = template
                .build(key, domain, selector)
                .map_err(|e| CliError::Config(format!("{}: {e}", oa.path.display())))?;
            arc.sealer = Some(signer);
        }
    }
    Ok(arc)
}

pub(super) fn daemon(a: &MilterArgs, c: Option<&conf::OpendkimConf>) -> anyhow::Result<Daemon> {
    let socket = a
        .socket
        .clone()
        .or_else(|| c.and_then(|c| c.socket.clone()))
        .ok_or_else(|| usage("no socket: give --socket inet:8891@localhost (or Socket in --config)"))?;
    let umask = c.and_then(|c| c.umask).unwrap_or(0o007);
    let socket_mode = match &a.socket_mode {
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| usage(format!("--socket-mode {m:?}: expected an octal mode such as 660")))?,
        None => 0o666 & !umask,
    };
    let user = match a.user.clone().or_else(|| c.and_then(|c| c.user_id.clone())) {
        Some(spec) => {
            let (u, g) = match spec.split_once(':') {
                Some((u, g)) => (u.to_string(), Some(g.to_string())),
                None => (spec, None),
            };
            let ids =
                crate::cli::os::lookup_user(&u, g.as_deref()).map_err(|e| CliError::Config(format!("UserID: {e}")))?;
            Some(ids)
        }
        None => None,
    };
    let log_to_stderr = !a.syslog
        && (a.log_stderr
            || c.and_then(|c| c.syslog) == Some(false)
            || std::io::IsTerminal::is_terminal(&std::io::stderr()));
    Ok(Daemon {
        socket,
        socket_mode,
        user,
        pid_file: a.pid_file.clone().or_else(|| c.and_then(|c| c.pid_file.clone())),
        log_to_stderr,
        max_connections: a.max_connections as usize,
        max_per_peer: a.max_per_peer.map_or((a.max_connections as usize / 2).max(1), |n| n as usize),
    })
}
