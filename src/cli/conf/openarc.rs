//! `openarc.conf`, read for `dkimpress milter -A FILE`: the ARC settings of an OpenARC
//! installation taken over as they are (openarc.conf(5)), so that one dkimpress milter replaces
//! OpenDKIM and OpenARC side by side.
//!
//! Same syntax as opendkim.conf. The keys that say how to seal and verify are read
//! (`Mode`, `Domain`, `Selector`, `KeyFile`, `AuthservID`, `SignHeaders`, `OversignHeaders`,
//! `Canonicalization`, `SignatureAlgorithm`, `FinalReceiver`, `PermitAuthenticationOverrides`,
//! `MinimumKeySizeRSA`, `RequireSafeKeys`). The daemon's own keys (socket, user, logging,
//! host lists) are those of the opendkim side and are listed as ignored here. A key that would
//! change which mail is sealed and that dkimpress does not do (`SealHeaderChecks`) is an error,
//! as is an unknown key.

use super::{algorithm, boolean, need, read_text, settings, split_list, ConfError, Mode};
use dkimpress::dkim::canon::Canonicalization;
use dkimpress::dkim::key::KeyType;
use std::path::{Path, PathBuf};

/// The ARC settings of an openarc.conf.
#[derive(Debug, Default, Clone)]
pub struct OpenarcConf {
    /// The file read.
    pub path: PathBuf,
    /// `Mode`: `s` seals every message, `v` validates chains; absent: seal mail from internal
    /// hosts and validate the rest (OpenARC decides per connection).
    pub mode: Option<Mode>,
    /// `Domain`, `Selector`, `KeyFile` (relative to the file's directory): the sealing key.
    pub key: Option<(String, String, PathBuf)>,
    /// `AuthservID`.
    pub authserv_id: Option<String>,
    /// `SignHeaders` (the ARC-Message-Signature's header list).
    pub sign_headers: Option<Vec<String>>,
    /// `OversignHeaders`.
    pub oversign_headers: Option<Vec<String>>,
    /// `Canonicalization` of the ARC-Message-Signature (OpenARC's default is relaxed/simple).
    pub canonicalization: Option<Canonicalization>,
    /// `SignatureAlgorithm`.
    pub signature_algorithm: Option<KeyType>,
    /// `FinalReceiver`.
    pub final_receiver: bool,
    /// `PermitAuthenticationOverrides`.
    pub overrides: bool,
    /// `MinimumKeySizeRSA`: the smallest RSA key a chain's signatures may use.
    pub minimum_key_bits: Option<usize>,
    /// `RequireSafeKeys`.
    pub require_safe_keys: bool,
    /// Keys accepted without effect, with their line numbers.
    pub ignored: Vec<(usize, String)>,
}

/// OpenARC keys that concern its own daemon, logging or host lists: dkimpress takes these from
/// the opendkim side (opendkim.conf or flags), so here they are accepted and ignored.
const IGNORED: &[&str] = &[
    "AllowSHA1Only",
    "AlwaysAddARHeader",
    "AuthResIP",
    "AuthservIDWithJobID",
    "AutoRestart",
    "AutoRestartCount",
    "AutoRestartRate",
    "Background",
    "BaseDirectory",
    "ChangeRootDirectory",
    "EnableCoredumps",
    "FixedTimestamp",
    "InternalHosts",
    "KeepTemporaryFiles",
    "MaximumHeaders",
    "MilterDebug",
    "PeerList",
    "PidFile",
    "ResponseDisabled",
    "ResponseUnable",
    "ResponseUnwilling",
    "Socket",
    "SoftwareHeader",
    "Syslog",
    "SyslogFacility",
    "TemporaryDirectory",
    "UMask",
    "UserID",
];

/// Keys read here.
const USED: &[&str] = &[
    "Mode",
    "Domain",
    "Selector",
    "KeyFile",
    "AuthservID",
    "SignHeaders",
    "OversignHeaders",
    "OverSignHeaders",
    "Canonicalization",
    "SignatureAlgorithm",
    "FinalReceiver",
    "PermitAuthenticationOverrides",
    "MinimumKeySizeRSA",
    "RequireSafeKeys",
    "Include",
];

/// OpenARC keys dkimpress does not do, with why accepting them silently would be wrong.
const REFUSED: &[(&str, &str)] = &[(
    "SealHeaderChecks",
    "selecting the messages to seal by header checks is not supported; remove it to seal every message",
)];

/// How deep `Include` may nest.
const MAX_INCLUDE_DEPTH: usize = 8;

impl OpenarcConf {
    /// Reads and checks `path`. Sealing (`Mode` with `s`, or no `Mode`) needs `Domain`,
    /// `Selector` and `KeyFile`; a file without them validates only when its `Mode` is `v`.
    pub fn load(path: &Path) -> Result<OpenarcConf, ConfError> {
        let shown = path.display().to_string();
        let mut c = OpenarcConf { path: path.to_path_buf(), ..OpenarcConf::default() };
        let mut raw = (None, None, None);
        c.read_file(path, &mut raw, 0)?;
        let whole = |reason: &str| ConfError { path: shown.clone(), line: 0, reason: reason.into() };
        c.key = match raw {
            (Some(d), Some(s), Some(k)) => Some((d, s, k)),
            (None, None, None) => None,
            _ => return Err(whole("Domain, Selector and KeyFile go together: give all three to seal")),
        };
        if c.key.is_none() && c.mode.is_none_or(|m| m.sign) {
            return Err(whole("nothing to seal with: give Domain, Selector and KeyFile, or Mode v to validate only"));
        }
        Ok(c)
    }

    fn read_file(
        &mut self,
        path: &Path,
        raw: &mut (Option<String>, Option<String>, Option<PathBuf>),
        depth: usize,
    ) -> Result<(), ConfError> {
        let shown = path.display().to_string();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let text = read_text(path)?;
        for (line_no, key, value) in settings(&text) {
            let err = |reason: String| ConfError { path: shown.clone(), line: line_no, reason };
            if let Some((k, why)) = REFUSED.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
                return Err(err(format!("{k}: {why}")));
            }
            if let Some(k) = IGNORED.iter().find(|k| k.eq_ignore_ascii_case(key)) {
                self.ignored.push((line_no, k.to_string()));
                continue;
            }
            let Some(&key) = USED.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
                return Err(err(format!("unknown key {key:?} (not an openarc.conf key dkimpress reads)")));
            };
            let flag = |v: &str| boolean(v).ok_or_else(|| err(format!("{key} takes yes or no, not {v:?}")));
            let value_of = |v: &str| need(key, v).map_err(&err);
            match key {
                "Include" => {
                    if depth >= MAX_INCLUDE_DEPTH {
                        return Err(err(format!("Include nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)")));
                    }
                    self.read_file(&dir.join(value_of(value)?), raw, depth + 1)?;
                }
                "Mode" => {
                    // OpenARC reads the letters it knows; anything else is a mistake worth saying.
                    let v = value_of(value)?;
                    self.mode = Some(Mode::parse(&v).ok_or_else(|| err(format!("Mode {v:?}: expected s, v or sv")))?);
                }
                "Domain" => raw.0 = Some(value_of(value)?),
                "Selector" => raw.1 = Some(value_of(value)?),
                "KeyFile" => raw.2 = Some(dir.join(value_of(value)?)),
                "AuthservID" => {
                    let v = value_of(value)?;
                    if v != "HOSTNAME" && !dkimpress::dkim::verify::is_authserv_id(&v) {
                        return Err(err(format!("AuthservID {v:?}: expected a host name")));
                    }
                    self.authserv_id = Some(v);
                }
                "SignHeaders" => self.sign_headers = Some(split_list(&value_of(value)?)),
                "OversignHeaders" | "OverSignHeaders" => self.oversign_headers = Some(split_list(value)),
                "Canonicalization" => {
                    let v = value_of(value)?;
                    self.canonicalization = Some(v.parse().map_err(|e| err(format!("{key} {v:?}: {e}")))?);
                }
                "SignatureAlgorithm" => self.signature_algorithm = Some(algorithm(&value_of(value)?).map_err(&err)?),
                "FinalReceiver" => self.final_receiver = flag(value)?,
                "PermitAuthenticationOverrides" => self.overrides = flag(value)?,
                "MinimumKeySizeRSA" => {
                    let v = value_of(value)?;
                    self.minimum_key_bits = Some(v.parse().map_err(|_| err(format!("{key} {v:?} is not a number")))?);
                }
                "RequireSafeKeys" => self.require_safe_keys = flag(value)?,
                _ => unreachable!("every USED key is handled"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openarc_keys_and_refuses_what_it_cannot_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("openarc.conf");
        std::fs::write(
            &p,
            "AuthservID mx.example.org\nDomain example.org\nSelector arc\nKeyFile keys/arc.private\n\
             Mode sv\nSocket inet:8894@localhost\nFinalReceiver yes\nCanonicalization relaxed/relaxed\n\
             SignHeaders From,To,Subject\nPermitAuthenticationOverrides no\n",
        )
        .unwrap();
        let c = OpenarcConf::load(&p).unwrap();
        let (d, s, k) = c.key.clone().unwrap();
        assert_eq!((d.as_str(), s.as_str()), ("example.org", "arc"));
        assert_eq!(k, dir.path().join("keys/arc.private"));
        assert_eq!(c.mode, Some(Mode::SIGN_AND_VERIFY));
        assert!(c.final_receiver && !c.overrides);
        assert_eq!(c.sign_headers.as_deref(), Some(&["From".to_string(), "To".into(), "Subject".into()][..]));
        assert_eq!(c.ignored, vec![(6, "Socket".to_string())]);
        for (text, want) in [
            ("Mode v\nSealHeaderChecks /etc/checks\n", ":2: SealHeaderChecks: selecting"),
            ("Mode v\nFrobnicate 1\n", ":2: unknown key \"Frobnicate\""),
            ("Domain example.org\nSelector arc\n", "Domain, Selector and KeyFile go together"),
            ("Mode sv\n", "nothing to seal with"),
            ("Mode x\n", "Mode \"x\""),
            ("Mode v\nFinalReceiver maybe\n", "FinalReceiver takes yes or no"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = OpenarcConf::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        std::fs::write(&p, "Mode v\n").unwrap();
        assert!(OpenarcConf::load(&p).unwrap().key.is_none());
    }
}
