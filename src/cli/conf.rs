//! `opendkim.conf`: the keys that matter for signing, read as opendkim(8) does.
//!
//! Owns the parsing of the file into [`OpendkimConf`]: one `Key value` per line, `#` comments,
//! booleans as yes/no/true/false/1/0. Every value is checked and typed here, once
//! (canonicalization, algorithm, header lists, [`Mode`], the `On-*` [`Actions`], name
//! servers, the authserv-id): a bad one is an error naming the file, the line and the key.
//! Keys only a milter uses are accepted and listed as ignored; unknown keys are an error
//! naming the line. What the values mean for keys and the daemon is decided by the users
//! (`cli::keys`, `cli::milter::config`), not here.

use dkimpress::dkim::canon::Canonicalization;
use dkimpress::dkim::key::KeyType;
use std::path::{Path, PathBuf};

mod actions;
mod openarc;
pub use actions::{Action, Actions, Condition};
pub use openarc::OpenarcConf;

/// The signing-related settings of an opendkim.conf.
#[derive(Debug, Default, Clone)]
pub struct OpendkimConf {
    /// The file read.
    pub path: PathBuf,
    /// Where the file is (relative paths inside it are taken from its directory).
    pub dir: PathBuf,
    /// What signs: KeyTable + SigningTable, or Domain + Selector + KeyFile (checked at load:
    /// one of the two, complete).
    pub signing: Signing,
    /// `Canonicalization`.
    pub canonicalization: Option<Canonicalization>,
    /// `SignatureAlgorithm`: the key type whose SHA-256 algorithm `a=` must name.
    pub signature_algorithm: Option<KeyType>,
    /// `SignHeaders` (comma list).
    pub sign_headers: Option<Vec<String>>,
    /// `OversignHeaders` (comma list; empty: none).
    pub oversign_headers: Option<Vec<String>>,
    /// `MinimumKeyBits`.
    pub minimum_key_bits: Option<usize>,
    /// `SubDomains`.
    pub subdomains: bool,
    /// `MultipleSignatures`.
    pub multiple_signatures: bool,
    /// `Mode` (s, v or sv).
    pub mode: Option<Mode>,
    /// `SignatureTTL` (x= = t= + TTL).
    pub signature_ttl: Option<u64>,
    /// `RequireSafeKeys`: refuse group/world-readable key files.
    pub require_safe_keys: bool,
    /// `BodyLengthLimit`-style `l=`: OpenDKIM's `BodyLengthDB` is not supported; this is set
    /// by `IncludeBodyLength` (ours, off by default).
    pub body_length: bool,
    /// `InternalHosts`: the data set of clients whose mail `filter` signs (file or list).
    pub internal_hosts: Option<String>,
    /// `ExternalIgnoreList`: clients whose mail is not signed, without the "external host
    /// sent mail as our domain" warning.
    pub external_ignore_list: Option<String>,
    /// `Socket` (milter): `inet:PORT@HOST`, `inet6:PORT@HOST`, `unix:/path` or `local:/path`.
    pub socket: Option<String>,
    /// `On-*` (milter): the action per condition (the defaults where the file says nothing).
    pub on: Actions,
    /// `UserID` (milter): `user[:group]` to become after binding the socket.
    pub user_id: Option<String>,
    /// `PidFile` (milter).
    pub pid_file: Option<PathBuf>,
    /// `UMask` (milter): applied before the UNIX socket is created.
    pub umask: Option<u32>,
    /// `Syslog` (milter): log to syslog (default yes for the daemon).
    pub syslog: Option<bool>,
    /// `SyslogSuccess` (milter): log every signature and verification, not just problems.
    pub syslog_success: bool,
    /// `LogWhy` (milter): log why a message was not signed or verified.
    pub log_why: bool,
    /// `AuthservID` (milter): the authserv-id of Authentication-Results, checked as one
    /// (`HOSTNAME`, this host's name, is left for the daemon to resolve).
    pub authserv_id: Option<String>,
    /// `KeepAuthResults` (milter): leave Authentication-Results fields that claim our
    /// authserv-id in the message (by default they are removed as forged).
    pub keep_auth_results: bool,
    /// `AlwaysAddARHeader` (milter): add `dkim=none` to unsigned inbound mail too.
    pub always_add_ar: bool,
    /// `MTA` (milter): `{daemon_name}` values whose mail is signed whatever the client.
    pub mta: Vec<String>,
    /// `Nameservers` (milter, testkey): resolvers for key lookups, `IP` or `IP:PORT` each
    /// (empty: not given).
    pub nameservers: Vec<String>,
    /// `PeerList` (milter): clients whose connections are accepted untouched.
    pub peer_list: Option<String>,
    /// `ARCSign` (milter, ours): add an ARC set to the mail we sign, made with its first key.
    pub arc_sign: bool,
    /// `ARCVerify` (milter, ours): validate the ARC chain of the mail we verify (`arc=` in
    /// Authentication-Results).
    pub arc_verify: bool,
    /// `PermitAuthenticationOverrides` (milter, as OpenARC): the `arc=` of our own
    /// Authentication-Results on mail from an internal host decides the `cv=` of its seal.
    pub arc_overrides: bool,
    /// `FinalReceiver` (milter, as OpenARC): Authentication-Results carry the chain of
    /// custody (`arc.chain=`).
    pub arc_final_receiver: bool,
    /// opendkim keys that were accepted but have no effect in dkimpress, with their line
    /// numbers.
    pub ignored: Vec<(usize, String)>,
    /// Keys only the milter daemon reads (no effect on `sign`, `filter`, ...), with their line
    /// numbers.
    pub milter_keys: Vec<(usize, String)>,
}

/// The keys an opendkim.conf signs with.
#[derive(Debug, Clone, Default)]
pub enum Signing {
    /// `KeyTable` and `SigningTable` data set specs.
    Tables {
        /// `KeyTable`.
        key_table: String,
        /// `SigningTable`.
        signing_table: String,
    },
    /// No keys: the file verifies only (Debian's stock opendkim.conf); the milter signs
    /// nothing, the other commands refuse it.
    #[default]
    Nothing,
    /// `Domain` (a data set spec or a comma list), `Selector`, `KeyFile`.
    Single {
        /// `Domain`.
        domain: String,
        /// `Selector`.
        selector: String,
        /// `KeyFile`, relative to the file's directory.
        key_file: PathBuf,
    },
}

/// What the milter does: `Mode` of opendkim.conf(5), or `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// `s`: sign mail from our clients.
    pub sign: bool,
    /// `v`: verify the rest.
    pub verify: bool,
}

impl Mode {
    /// opendkim's default, `sv`.
    pub const SIGN_AND_VERIFY: Mode = Mode { sign: true, verify: true };

    /// `s`, `v` or `sv` (letters in any order); `None` for anything else, the empty string too.
    pub fn parse(v: &str) -> Option<Mode> {
        if v.is_empty() || !v.chars().all(|ch| ch == 's' || ch == 'v') {
            return None;
        }
        Some(Mode { sign: v.contains('s'), verify: v.contains('v') })
    }
}

/// Domain, Selector, KeyFile, KeyTable and SigningTable as read, before they are checked; the
/// `On-*` lines in the order read (`On-Default` applies whatever its place).
#[derive(Default)]
struct RawKeys {
    domain: Option<String>,
    selector: Option<String>,
    key_file: Option<PathBuf>,
    key_table: Option<String>,
    signing_table: Option<String>,
    on: Vec<(Condition, Action)>,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {reason}", if *line > 0 { format!(":{line}") } else { String::new() })]
pub struct ConfError {
    /// The file.
    pub path: String,
    /// 1-based line (0 when the file cannot be read).
    pub line: usize,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// Keys of opendkim.conf that only the milter daemon or verification uses: accepted, ignored.
pub(crate) const IGNORED: &[&str] = &[
    "AuthservIDWithJobID",
    "AutoRestart",
    "AutoRestartCount",
    "AutoRestartRate",
    "Background",
    "BaseDirectory",
    "ChangeRootDirectory",
    "ClockDrift",
    "DNSConnect",
    "DNSTimeout",
    "Diagnostics",
    "DiagnosticDirectory",
    "DisableCryptoInit",
    "EnableCoredumps",
    "FixCRLF",
    "IgnoreMalformedMail",
    "KeepTemporaryFiles",
    "LogResults",
    "MacroList",
    "MaximumHeaders",
    "MaximumSignaturesToVerify",
    "MaximumSignedBytes",
    "MilterDebug",
    "NoHeaderB",
    "Quarantine",
    "QueryCache",
    "RemoveARAll",
    "RemoveARFrom",
    "RemoveOldSignatures",
    "ReportAddress",
    "ReportBccAddress",
    "ResolverConfiguration",
    "SendReports",
    "SenderHeaders",
    "SignatureTTL",
    "SingleAuthResult",
    "SoftwareHeader",
    "StrictHeaders",
    "StrictTestMode",
    "SyslogFacility",
    "SyslogName",
    "TemporaryDirectory",
    "TestDNSData",
    "TestPublicKeys",
    "TrustAnchorFile",
    "TrustSignaturesFrom",
    "UnboundConfigFile",
    "VBR-Certifiers",
    "VBR-PurgeFields",
    "VBR-TrustedCertifiersOnly",
    "VBR-TrustedCertifiers",
    "VBR-Type",
    "WeakSyntaxChecks",
    "X-Header",
    "AllowSHA1Only",
    "ATPSDomains",
    "ATPSHashAlgorithm",
    "BogusKey",
    "BogusPolicy",
    "CaptureUnknownErrors",
    "DomainKeysCompat",
    "ExemptDomains",
    "IdentityHeader",
    "IdentityHeaderRemove",
    "LDAPAuthMechanism",
    "LDAPAuthName",
    "LDAPAuthRealm",
    "LDAPAuthUser",
    "LDAPBindPassword",
    "LDAPBindUser",
    "LDAPDisableCache",
    "LDAPKeepaliveIdle",
    "LDAPKeepaliveInterval",
    "LDAPKeepaliveProbes",
    "LDAPTimeout",
    "LDAPUseTLS",
    "LDAPSoftStart",
    "LuaFinalScript",
    "LuaScreenScript",
    "LuaSetupScript",
    "LuaStatsScript",
    "MustBeSigned",
    "OmitHeaders",
    "POPDBFile",
    "RedirectFailuresTo",
    "RemoveOldSignatures",
    "ReplaceHeaders",
    "ReplaceRules",
    "ReputationCache",
    "ReputationCacheTTL",
    "ReputationDuplicateMessage",
    "ReputationLimits",
    "ReputationLimitModifiers",
    "ReputationLowTime",
    "ReputationMinimum",
    "ReputationRatios",
    "ReputationSpamCheck",
    "ReputationTimeFactor",
    "ReputationTimeout",
    "ReputationVerbose",
    "ResignAll",
    "ResignMailTo",
    "ScreenPolicyScript",
    "SetupPolicyScript",
    "SignatureTTL",
    "StatisticsName",
    "StatisticsPrefix",
    "Statistics",
    "TestPublicKeys",
    "VBR-Certifiers",
    "BodyLengthDB",
    "DontSignMailTo",
    "LocalADSP",
    "MTACommand",
    "MilterDebug",
];

/// Keys every command uses (with [`MILTER_ONLY`], the keys read here).
pub(crate) const USED: &[&str] = &[
    "Domain",
    "Selector",
    "KeyFile",
    "KeyTable",
    "SigningTable",
    "Canonicalization",
    "SignatureAlgorithm",
    "SignHeaders",
    "OversignHeaders",
    "MinimumKeyBits",
    "SubDomains",
    "MultipleSignatures",
    "Mode",
    "SignatureTTL",
    "RequireSafeKeys",
    "IncludeBodyLength",
    "InternalHosts",
    "Include",
];

/// The keys the milter daemon reads (listed as ignored by the other commands with `-v`).
pub const MILTER_ONLY: &[&str] = &[
    "ExternalIgnoreList",
    "Socket",
    "On-Default",
    "On-BadSignature",
    "On-DNSError",
    "On-InternalError",
    "On-KeyNotFound",
    "On-NoSignature",
    "On-Security",
    "On-SignatureError",
    "On-PolicyError",
    "PeerList",
    "UserID",
    "PidFile",
    "UMask",
    "Syslog",
    "SyslogSuccess",
    "LogWhy",
    "AuthservID",
    "AlwaysAddARHeader",
    "KeepAuthResults",
    "MTA",
    "Nameservers",
    "ARCSign",
    "ARCVerify",
    "PermitAuthenticationOverrides",
    "FinalReceiver",
];

/// A boolean as opendkim.conf(5) reads it: only the first byte counts (T t Y y 1 / F f N n 0);
/// `on`/`off` are accepted as well.
fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" => Some(true),
        "off" => Some(false),
        l => match l.bytes().next()? {
            b't' | b'y' | b'1' => Some(true),
            b'f' | b'n' | b'0' => Some(false),
            _ => None,
        },
    }
}

/// `SignatureAlgorithm`: the key type whose SHA-256 algorithm it names (`rsa-sha256`,
/// `ed25519-sha256`; RFC 8301 §3.1 leaves no other for signing).
fn algorithm(v: &str) -> Result<KeyType, String> {
    [KeyType::Rsa, KeyType::Ed25519]
        .into_iter()
        .find(|k| k.algorithm().eq_ignore_ascii_case(v))
        .ok_or_else(|| format!("SignatureAlgorithm {v:?}: expected rsa-sha256 or ed25519-sha256"))
}

/// `Nameservers`: a comma list of `IP` or `IP:PORT`.
fn nameservers(list: &str) -> Result<Vec<String>, String> {
    let servers: Vec<String> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    match servers.iter().find(|s| s.parse::<std::net::SocketAddr>().is_err() && s.parse::<std::net::IpAddr>().is_err())
    {
        Some(bad) => Err(format!(
            "Nameservers {:?}: expected IP addresses (or IP:PORT), comma-separated",
            dkimpress::pipeline::sanitize(bad)
        )),
        None => Ok(servers),
    }
}

/// Splits a header-name (or domain) list given as `a:b:c` or `a, b, c`: the form of
/// `SignHeaders` and of the flags that stand for it.
pub(crate) fn split_list(s: &str) -> Vec<String> {
    s.split([':', ',']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// `value`, which `key` must have.
fn need(key: &str, value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err(format!("{key} needs a value"))
    } else {
        Ok(value.to_string())
    }
}

/// The text of a configuration file; an error naming it when it cannot be read.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfError> {
    std::fs::read_to_string(path).map_err(|e| ConfError {
        path: path.display().to_string(),
        line: 0,
        reason: e.to_string(),
    })
}

/// The settings of a configuration file's text, as opendkim(8) and openarc(8) read them: one
/// `Key value` per line, `#` to the end of the line a comment, blank lines skipped. Each with
/// its line number (1-based).
pub(crate) fn settings(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    text.lines().enumerate().filter_map(|(n, raw)| {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            return None;
        }
        let (key, value) = line.split_once(char::is_whitespace).map_or((line, ""), |(k, v)| (k, v.trim()));
        Some((n + 1, key, value))
    })
}

/// How deep `Include` may nest (a loop is an error, not a hang).
const MAX_INCLUDE_DEPTH: usize = 8;

impl OpendkimConf {
    /// Reads and checks `path` for signing: the file must say what signs (KeyTable and
    /// SigningTable, or Domain, Selector and KeyFile) and its `Mode` must include `s`.
    pub fn load(path: &Path) -> Result<OpendkimConf, ConfError> {
        let shown = path.display().to_string();
        let (c, raw_keys) = Self::parse(path)?;
        if c.mode.is_some_and(|m| !m.sign) {
            let whole = |reason: &str| ConfError { path: shown.clone(), line: 0, reason: reason.into() };
            return Err(whole("Mode has no 's': this configuration does not sign"));
        }
        let c = Self::with_keys(c, raw_keys, &shown)?;
        if matches!(c.signing, Signing::Nothing) {
            return Err(ConfError {
                path: shown,
                line: 0,
                reason: "nothing to sign with: give KeyTable and SigningTable, or Domain, Selector and KeyFile".into(),
            });
        }
        Ok(c)
    }

    /// `c` with what it signs with checked: both tables, or all three single-key settings, or
    /// none at all ([`Signing::Nothing`]).
    fn with_keys(mut c: OpendkimConf, raw_keys: RawKeys, shown: &str) -> Result<OpendkimConf, ConfError> {
        let whole = |reason: &str| ConfError { path: shown.to_string(), line: 0, reason: reason.into() };
        c.signing = match raw_keys {
            RawKeys { key_table: Some(key_table), signing_table: Some(signing_table), .. } => {
                Signing::Tables { key_table, signing_table }
            }
            RawKeys { key_table: Some(_), .. } | RawKeys { signing_table: Some(_), .. } => {
                return Err(whole("KeyTable and SigningTable go together: give both, or Domain/Selector/KeyFile"))
            }
            RawKeys { domain: Some(domain), selector: Some(selector), key_file: Some(key_file), .. } => {
                Signing::Single { domain, selector, key_file }
            }
            RawKeys { domain: None, selector: None, key_file: None, .. } => Signing::Nothing,
            _ => {
                return Err(whole(
                    "Domain, Selector and KeyFile go together: give all three, or KeyTable and SigningTable",
                ))
            }
        };
        Ok(c)
    }

    /// Reads `path` for the milter daemon: every key is checked as in [`load`](Self::load), but
    /// a file without keys is accepted ([`Signing::Nothing`]): opendkim runs with Debian's
    /// stock file, which only verifies. Read once.
    pub fn load_daemon(path: &Path) -> Result<OpendkimConf, ConfError> {
        let (c, raw_keys) = Self::parse(path)?;
        Self::with_keys(c, raw_keys, &path.display().to_string())
    }

    /// The lines of `path` and of the files it includes, as settings.
    fn parse(path: &Path) -> Result<(OpendkimConf, RawKeys), ConfError> {
        let mut c = OpendkimConf {
            path: path.to_path_buf(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
            ..OpendkimConf::default()
        };
        let mut raw_keys = RawKeys::default();
        c.read_file(path, &mut raw_keys, 0)?;
        c.on = Actions::from_lines(&raw_keys.on);
        Ok((c, raw_keys))
    }

    fn read_file(&mut self, path: &Path, raw_keys: &mut RawKeys, depth: usize) -> Result<(), ConfError> {
        let shown = path.display().to_string();
        let text = read_text(path)?;
        for (line_no, key, value) in settings(&text) {
            let err = |reason: String| ConfError { path: shown.clone(), line: line_no, reason };
            let known = USED.iter().chain(MILTER_ONLY).chain(IGNORED).find(|k| k.eq_ignore_ascii_case(key));
            let Some(&key) = known else {
                return Err(err(format!("unknown key {key:?} (not an opendkim.conf key)")));
            };
            if key == "Include" {
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(err(format!("Include nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)")));
                }
                let inc = self.dir.join(need(key, value).map_err(err)?);
                self.read_file(&inc, raw_keys, depth + 1)?;
            } else if !self.set(key, value, raw_keys).map_err(err)? {
                self.ignored.push((line_no, key.to_string()));
            }
            // Read for the milter daemon, without effect on the other commands: listed with them.
            if MILTER_ONLY.contains(&key) {
                self.milter_keys.push((line_no, key.to_string()));
            }
        }
        Ok(())
    }

    /// Takes `key` (a known key other than `Include`) with its `value`, checked and typed;
    /// `false` when dkimpress does not use it. The error says what is wrong with the value.
    fn set(&mut self, key: &'static str, value: &str, raw_keys: &mut RawKeys) -> Result<bool, String> {
        let c = self;
        let need = |v: &str| need(key, v);
        let flag = |v: &str| boolean(v).ok_or_else(|| format!("{key} takes yes or no, not {v:?}"));
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{key} {v:?} is not a number"));
        match key {
            "Domain" => raw_keys.domain = Some(need(value)?),
            "Selector" => raw_keys.selector = Some(need(value)?),
            "KeyFile" => raw_keys.key_file = Some(c.dir.join(need(value)?)),
            "KeyTable" => raw_keys.key_table = Some(need(value)?),
            "SigningTable" => raw_keys.signing_table = Some(need(value)?),
            "Canonicalization" => {
                let v = need(value)?;
                c.canonicalization = Some(v.parse().map_err(|e| format!("{key} {v:?}: {e}"))?);
            }
            "SignatureAlgorithm" => c.signature_algorithm = Some(algorithm(&need(value)?)?),
            "SignHeaders" => c.sign_headers = Some(split_list(&need(value)?)),
            "OversignHeaders" => c.oversign_headers = Some(split_list(value)),
            "MinimumKeyBits" => c.minimum_key_bits = Some(number(value)? as usize),
            "SubDomains" => c.subdomains = flag(value)?,
            "MultipleSignatures" => c.multiple_signatures = flag(value)?,
            "RequireSafeKeys" => c.require_safe_keys = flag(value)?,
            "IncludeBodyLength" => c.body_length = flag(value)?,
            "InternalHosts" => c.internal_hosts = Some(need(value)?),
            "ExternalIgnoreList" => c.external_ignore_list = Some(need(value)?),
            "Socket" => c.socket = Some(need(value)?),
            "UserID" => c.user_id = Some(need(value)?),
            "PidFile" => c.pid_file = Some(PathBuf::from(need(value)?)),
            "UMask" => {
                c.umask = Some(
                    u32::from_str_radix(value, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| format!("UMask {value:?} is not an octal mode"))?,
                )
            }
            "Syslog" => c.syslog = Some(flag(value)?),
            "SyslogSuccess" => c.syslog_success = flag(value)?,
            "LogWhy" => c.log_why = flag(value)?,
            "AuthservID" => {
                let v = need(value)?;
                if !dkimpress::dkim::verify::is_authserv_id(&v) {
                    return Err(format!("{key} {v:?}: expected a host name"));
                }
                c.authserv_id = Some(v);
            }
            "AlwaysAddARHeader" => c.always_add_ar = flag(value)?,
            "KeepAuthResults" => c.keep_auth_results = flag(value)?,
            "MTA" => c.mta = need(value)?.split(',').map(|s| s.trim().to_string()).collect(),
            "Nameservers" => c.nameservers = nameservers(&need(value)?)?,
            "PeerList" => c.peer_list = Some(need(value)?),
            "ARCSign" => c.arc_sign = flag(value)?,
            "ARCVerify" => c.arc_verify = flag(value)?,
            "PermitAuthenticationOverrides" => c.arc_overrides = flag(value)?,
            "FinalReceiver" => c.arc_final_receiver = flag(value)?,
            k if k.starts_with("On-") => {
                // The key is one of MILTER_ONLY's On-* names, each a condition.
                let condition =
                    Condition::ALL.into_iter().find(|cond| cond.key() == k).ok_or(format!("{key}: not a condition"))?;
                let v = need(value)?;
                let action = Action::parse(&v)
                    .ok_or_else(|| format!("{key} {v:?}: expected accept, tempfail, reject, discard or quarantine"))?;
                raw_keys.on.push((condition, action));
            }
            "Mode" => {
                let v = need(value)?;
                c.mode = Some(Mode::parse(&v).ok_or_else(|| format!("Mode {v:?}: expected s, v or sv"))?);
            }
            "SignatureTTL" => c.signature_ttl = Some(number(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("opendkim.conf");
        std::fs::write(
            &p,
            "# comment\nSyslog yes\nUMask 002\nSocket inet:8891@localhost\nDomain example.com\nSelector mail\n\
             KeyFile keys/mail.private\nCanonicalization relaxed/simple\nSubDomains yes\nOversignHeaders From\n",
        )
        .unwrap();
        let c = OpendkimConf::load(&p).unwrap();
        let Signing::Single { domain, key_file, .. } = &c.signing else { panic!("{:?}", c.signing) };
        assert_eq!(domain, "example.com");
        assert_eq!(*key_file, dir.path().join("keys/mail.private"));
        assert!(c.subdomains);
        assert_eq!(c.milter_keys.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(), ["Syslog", "UMask", "Socket"]);
        assert!(c.ignored.is_empty());
        assert_eq!(c.socket.as_deref(), Some("inet:8891@localhost"));
        assert_eq!(c.umask, Some(0o002));
        assert_eq!(c.syslog, Some(true));
        std::fs::write(dir.path().join("more.conf"), "On-KeyNotFound reject\nSyslogSuccess Yes\n").unwrap();
        std::fs::write(&p, "Mode v\nInclude more.conf\nAuthservID mx.example.com\n").unwrap();
        let c = OpendkimConf::load_daemon(&p).unwrap();
        assert_eq!(c.on.get(Condition::KeyNotFound), Action::Reject);
        assert_eq!(c.mode, Some(Mode { sign: false, verify: true }));
        assert_eq!(c.authserv_id.as_deref(), Some("mx.example.com"));
        assert!(c.syslog_success);
        std::fs::write(&p, "Mode v\nInclude opendkim.conf\n").unwrap();
        assert!(OpendkimConf::load_daemon(&p).unwrap_err().to_string().contains("nested"));
        for (text, want) in [
            ("Domain a\nSelector s\nKeyFile k\nFrobnicate yes\n", ":4: unknown key \"Frobnicate\""),
            ("Domain a\nSelector s\nKeyFile k\nSubDomains maybe\n", ":4: SubDomains takes yes or no"),
            ("KeyTable file:k\n", "go together"),
            ("Domain a\n", "go together"),
            ("Syslog yes\n", "nothing to sign with"),
            ("Domain a\nSelector s\nKeyFile k\nMode v\n", "does not sign"),
            ("Domain a\nSelector s\nKeyFile k\nMode x\n", ":4: Mode \"x\": expected s, v or sv"),
            ("Domain a\nSelector s\nKeyFile k\nCanonicalization loose\n", ":4: Canonicalization \"loose\""),
            ("Domain a\nSelector s\nKeyFile k\nSignatureAlgorithm rsa-sha1\n", ":4: SignatureAlgorithm \"rsa-sha1\""),
            ("Domain a\nSelector s\nKeyFile k\nOn-BadSignature defer\n", ":4: On-BadSignature \"defer\""),
            ("Domain a\nSelector s\nKeyFile k\nNameservers 192.0.2.1, ns\n", ":4: Nameservers \"ns\""),
            ("Domain a\nSelector s\nKeyFile k\nAuthservID a@b\n", ":4: AuthservID \"a@b\""),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = OpendkimConf::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn typed_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("opendkim.conf");
        std::fs::write(
            &p,
            "Domain a\nSelector s\nKeyFile k\nCanonicalization relaxed\nSignatureAlgorithm Ed25519-SHA256\n\
             SignHeaders From:To, Subject\nOversignHeaders\nNameservers 192.0.2.1, [2001:db8::1]:5353,\n",
        )
        .unwrap();
        let c = OpendkimConf::load(&p).unwrap();
        assert_eq!(c.canonicalization.map(|c| c.to_string()).as_deref(), Some("relaxed/simple"));
        assert_eq!(c.signature_algorithm, Some(KeyType::Ed25519));
        assert_eq!(c.sign_headers, Some(vec!["From".to_string(), "To".into(), "Subject".into()]));
        assert_eq!(c.oversign_headers, Some(vec![]));
        assert_eq!(c.nameservers, ["192.0.2.1", "[2001:db8::1]:5353"]);
        assert_eq!(c.mode, None);
    }
}
