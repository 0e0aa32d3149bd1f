//! The opendkim.conf keys of dkimpress-milter(1): the tables of the keys dkimpress reads
//! ([`KEYS_ALL`], read by every command that takes an opendkim.conf, and [`KEYS_MILTER`], read
//! by the milter only), with the form of each value, its default and what it does, and the
//! functions that turn them, and the keys accepted without effect, into the OPENDKIM.CONF KEYS
//! section. The tests at the bottom keep the tables in step with `conf.rs`.

use super::{roff, text};

/// One opendkim.conf key that dkimpress reads.
struct ConfKey {
    /// The key, as opendkim.conf(5) spells it.
    key: &'static str,
    /// The form of its value.
    value: &'static str,
    /// The default the code uses when the file does not say (placeholders: see
    /// [`fill_defaults`]).
    default: &'static str,
    /// What it does here.
    meaning: &'static str,
}

/// The keys every command that reads an opendkim.conf uses (`conf.rs` `USED`): `milter`,
/// `sign --config`, `filter --config`, `testkey --config` and the sendmail wrapper.
const KEYS_ALL: &[ConfKey] = &[
    ConfKey {
        key: "Domain",
        value: "domains",
        default: "none",
        meaning: "The domains signed with the one key of Selector and KeyFile: a comma-separated list, \
                  or a data set (file, csl:, dsn:pgsql://) of domain names. Give Domain, Selector and \
                  KeyFile together, or KeyTable and SigningTable.",
    },
    ConfKey {
        key: "Selector",
        value: "selector",
        default: "none",
        meaning: "The selector (s=) of KeyFile: its public key is published at \
                  SELECTOR._domainkey.DOMAIN.",
    },
    ConfKey {
        key: "KeyFile",
        value: "path",
        default: "none",
        meaning: "The private key used with Domain and Selector: PEM or DER, RSA or Ed25519 (as \
                  opendkim-genkey and dkimpress genkey write them). A relative path is taken from \
                  the configuration file's directory.",
    },
    ConfKey {
        key: "KeyTable",
        value: "dataset",
        default: "none",
        meaning: "Keys by name, one per entry: NAME DOMAIN:SELECTOR:KEYFILE. Used with SigningTable.",
    },
    ConfKey {
        key: "SigningTable",
        value: "dataset",
        default: "none",
        meaning: "Which KeyTable entry signs which mail, looked up by the author address (From): \
                  an address or a domain with the KeyTable NAME; in a refile: data set, * matches any \
                  text (*@example.com). The first match signs, every match with MultipleSignatures.",
    },
    ConfKey {
        key: "Canonicalization",
        value: "header/body",
        default: "simple/simple",
        meaning: "simple or relaxed for the header and for the body (c=); one word sets the header \
                  and leaves the body simple (RFC 6376 section 3.5). simple/simple is opendkim's \
                  default, kept for every file that does not say; relaxed survives more relays. \
                  Without a configuration file, sign and filter use {canon_flags} (-c).",
    },
    ConfKey {
        key: "SignatureAlgorithm",
        value: "algorithm",
        default: "the key's: rsa-sha256 for an RSA key, ed25519-sha256 for an Ed25519 key",
        meaning: "rsa-sha256 or ed25519-sha256, checked against each key: a key of the other type \
                  is a configuration error.",
    },
    ConfKey {
        key: "SignHeaders",
        value: "list",
        default: "{signed_headers}",
        meaning: "The header fields signed when present, comma-separated.",
    },
    ConfKey {
        key: "OversignHeaders",
        value: "list",
        default: "{oversigned_headers}",
        meaning: "Header fields signed once more than they occur (RFC 6376 section 8.15), so that one \
                  added in transit breaks the signature; an empty value for none. opendkim's default \
                  is none.",
    },
    ConfKey {
        key: "MinimumKeyBits",
        value: "bits",
        default: "{min_rsa_bits}",
        meaning: "The smallest RSA key whose signatures verify. It does not refuse our own signing \
                  keys: those must have at least 1024 bits (RFC 8301).",
    },
    ConfKey {
        key: "SubDomains",
        value: "boolean",
        default: "no",
        meaning: "Also sign mail from subdomains of Domain (From: a@mail.example.com with \
                  d=example.com).",
    },
    ConfKey {
        key: "MultipleSignatures",
        value: "boolean",
        default: "no",
        meaning: "Sign with every SigningTable entry that matches (an RSA and an Ed25519 key, say), \
                  not only the first.",
    },
    ConfKey {
        key: "Mode",
        value: "s|v|sv",
        default: "sv",
        meaning: "s signs the mail of InternalHosts, of authenticated clients and of the MTA names in \
                  MTA; v verifies the rest. A file for sign, filter or the sendmail wrapper must \
                  include s.",
    },
    ConfKey {
        key: "SignatureTTL",
        value: "seconds",
        default: "none: no x= tag",
        meaning: "How long a signature is valid: x= is t= plus this.",
    },
    ConfKey {
        key: "RequireSafeKeys",
        value: "boolean",
        default: "no",
        meaning: "yes refuses a key file that its group or others can read; no only warns. \
                  opendkim's default is yes.",
    },
    ConfKey {
        key: "IncludeBodyLength",
        value: "boolean",
        default: "no",
        meaning: "dkimpress's own key, not opendkim's: add l= with the signed body length, which lets \
                  anyone append to the body (RFC 6376 section 8.2).",
    },
    ConfKey {
        key: "InternalHosts",
        value: "dataset",
        default: "127.0.0.1, ::1",
        meaning: "Clients whose mail is signed: addresses, CIDR blocks and host names (a leading ! \
                  excludes), as a file with one or more per line, refile:, csl: or dsn:pgsql://. \
                  Mail from authenticated clients is signed as well.",
    },
    ConfKey {
        key: "Include",
        value: "path",
        default: "none",
        meaning: "Reads another configuration file at this point (relative to this file's \
                  directory), at most 8 deep.",
    },
];

/// The keys only the milter reads (`conf.rs` `MILTER_ONLY`); the other commands accept and
/// ignore them.
const KEYS_MILTER: &[ConfKey] = &[
    ConfKey {
        key: "Socket",
        value: "spec",
        default: "none: required here or with --socket",
        meaning: "Where the MTA connects: inet:PORT@HOST, inet:PORT (every address), \
                  inet6:PORT@HOST, unix:/path or local:/path. Read at start only.",
    },
    ConfKey {
        key: "UserID",
        value: "user[:group]",
        default: "none: the user that started it",
        meaning: "The user (and group) to become after the socket is open; keys and tables are \
                  read as that user, at start and on every reload. Read at start only.",
    },
    ConfKey {
        key: "PidFile",
        value: "path",
        default: "none",
        meaning: "Write the process id here; removed at exit. Read at start only.",
    },
    ConfKey {
        key: "UMask",
        value: "octal",
        default: "007",
        meaning: "Applied to a unix socket when it is created: mode 0666 less UMask (0660 by \
                  default; --socket-mode sets the mode). Read at start only.",
    },
    ConfKey {
        key: "Syslog",
        value: "boolean",
        default: "yes",
        meaning: "yes logs to syslog (facility mail, with Postfix's lines), no to stderr. Logs go to \
                  stderr anyway when stderr is a terminal or with --log-stderr. Read at start only.",
    },
    ConfKey {
        key: "SyslogSuccess",
        value: "boolean",
        default: "no",
        meaning: "Also log every signature made and every verification, not only problems.",
    },
    ConfKey {
        key: "LogWhy",
        value: "boolean",
        default: "no",
        meaning: "Log why a message was not signed or not verified.",
    },
    ConfKey {
        key: "AuthservID",
        value: "id",
        default: "the MTA's host name (its j macro, Postfix's $myhostname), else this host's name",
        meaning: "The authserv-id of the Authentication-Results fields added to verified mail \
                  (RFC 8601); the word HOSTNAME means this host's name.",
    },
    ConfKey {
        key: "KeepAuthResults",
        value: "boolean",
        default: "no",
        meaning: "Leave in place Authentication-Results fields that arrive claiming our \
                  authserv-id; by default they are removed as forged.",
    },
    ConfKey {
        key: "AlwaysAddARHeader",
        value: "boolean",
        default: "no",
        meaning: "Also add Authentication-Results (dkim=none) to inbound mail without a signature.",
    },
    ConfKey {
        key: "ExternalIgnoreList",
        value: "dataset",
        default: "none",
        meaning: "Outside clients allowed to send mail as our domains: mail from them is not logged \
                  as \"external host ... tried to send mail as DOMAIN\". It is verified, not signed, \
                  like any mail from outside.",
    },
    ConfKey {
        key: "PeerList",
        value: "dataset",
        default: "none",
        meaning: "Clients whose connections are accepted untouched: neither signed nor verified.",
    },
    ConfKey {
        key: "MTA",
        value: "list",
        default: "none",
        meaning: "Values of the MTA's daemon_name macro (Postfix: milter_macro_daemon_name, e.g. \
                  ORIGINATING on the submission service) whose mail is signed whatever the client.",
    },
    ConfKey {
        key: "ARCSign",
        value: "boolean",
        default: "no",
        meaning: "Add an ARC set (RFC 8617) to the mail this milter signs, made with the key of its \
                  first signature; with -A, the openarc.conf's key instead.",
    },
    ConfKey {
        key: "ARCVerify",
        value: "boolean",
        default: "no",
        meaning: "Validate the ARC chain of the mail this milter verifies and report it as arc= in \
                  Authentication-Results (with header.oldest-pass and smtp.remote-ip). Implies DKIM \
                  verification of that mail.",
    },
    ConfKey {
        key: "PermitAuthenticationOverrides",
        value: "boolean",
        default: "no",
        meaning: "As OpenARC: when mail from an internal host is sealed, the arc= of our own \
                  Authentication-Results (written when it first arrived) decides cv=. A chain that \
                  fails only because a mailing list of ours changed the message keeps cv=pass; \
                  arc=fail stands. Mail from authenticated clients is never taken at its word.",
    },
    ConfKey {
        key: "FinalReceiver",
        value: "boolean",
        default: "no",
        meaning: "As OpenARC: Authentication-Results also name the sealers of the chain, newest \
                  first (arc.chain=d1:d2).",
    },
    ConfKey {
        key: "Nameservers",
        value: "list",
        default: "the resolvers of /etc/resolv.conf",
        meaning: "Resolvers for key lookups, comma-separated addresses (--dns-server wins).",
    },
    ConfKey {
        key: "On-Default",
        value: "action",
        default: "each condition's own default, below",
        meaning: "The action for every condition that has no On- line of its own. An action is \
                  accept, tempfail (4xx: the sender retries), reject (5xx), discard (accept and drop) \
                  or quarantine (Postfix: the hold queue), or its first letter.",
    },
    ConfKey { key: "On-BadSignature", value: "action", default: "accept", meaning: "A signature did not verify." },
    ConfKey {
        key: "On-DNSError",
        value: "action",
        default: "tempfail",
        meaning: "A key could not be fetched now (a DNS timeout or server failure).",
    },
    ConfKey {
        key: "On-InternalError",
        value: "action",
        default: "tempfail",
        meaning: "A failure of our own (a key store that does not answer).",
    },
    ConfKey {
        key: "On-KeyNotFound",
        value: "action",
        default: "accept",
        meaning: "The signing domain publishes no key under the selector.",
    },
    ConfKey { key: "On-NoSignature", value: "action", default: "accept", meaning: "Inbound mail without a signature." },
    ConfKey {
        key: "On-Security",
        value: "action",
        default: "tempfail",
        meaning: "Something in the message looked hostile.",
    },
    ConfKey {
        key: "On-SignatureError",
        value: "action",
        default: "tempfail",
        meaning: "A signature could not be made (a key that does not work).",
    },
    ConfKey {
        key: "On-PolicyError",
        value: "action",
        default: "accept",
        meaning: "Read for compatibility; opendkim's ADSP-era condition never arises here.",
    },
];

/// opendkim.conf(5) keys that dkimpress accepts and that have no effect: conf.rs's `IGNORED`
/// less the keys it reads, sorted and once each. They are logged once at start-up.
fn keys_ignored() -> Vec<&'static str> {
    let read = |k: &&str| crate::cli::conf::USED.contains(k) || crate::cli::conf::MILTER_ONLY.contains(k);
    let set: std::collections::BTreeSet<&'static str> =
        crate::cli::conf::IGNORED.iter().copied().filter(|k| !read(k)).collect();
    let mut keys: Vec<&str> = set.into_iter().collect();
    keys.sort_by_key(|k| k.to_ascii_lowercase());
    keys
}

/// A default with its placeholders replaced by the values the code uses, so that the page
/// cannot disagree with them.
fn fill_defaults(s: &str) -> String {
    use dkimpress::dkim::sign::{DEFAULT_OVERSIGNED_HEADERS, DEFAULT_SIGNED_HEADERS};
    s.replace("{signed_headers}", &DEFAULT_SIGNED_HEADERS.join(", "))
        .replace("{oversigned_headers}", &DEFAULT_OVERSIGNED_HEADERS.join(", "))
        .replace("{min_rsa_bits}", &dkimpress::dkim::verify::Policy::default().min_rsa_bits.to_string())
        .replace("{canon_flags}", &dkimpress::dkim::canon::Canonicalization::default().to_string())
}

fn key_entries(keys: &[ConfKey]) -> String {
    let mut s = String::new();
    for k in keys {
        s += &format!(
            ".TP\n\\fB{}\\fR \\fI{}\\fR\n{}\n.br\nDefault: {}.\n",
            text(k.key),
            text(k.value),
            text(&fill_defaults(k.meaning)),
            text(&fill_defaults(k.default))
        );
    }
    s
}

/// OPENDKIM.CONF KEYS of dkimpress-milter(1): every key read, then every key ignored.
pub(super) fn conf_keys_section() -> String {
    let mut s = String::from(".SH \"OPENDKIM.CONF KEYS\"\n.SS \"Read by every command\"\n");
    s += &roff(
        "The milter, and sign, filter and testkey with --config, and the sendmail wrapper \
         (dkimpress-sendmail(1)), read these the same way.\n",
    );
    s += &key_entries(KEYS_ALL);
    s += ".SS \"Read by the milter only\"\n";
    s += &roff("The other commands accept these and list them as ignored with -v.\n");
    s += &key_entries(KEYS_MILTER);
    s += ".SS \"Accepted, without effect\"\n";
    s += &roff(
        "These opendkim.conf(5) keys are accepted so that an opendkim configuration works as it is, \
         and do nothing here; the milter names those a file uses once at start-up (and -n lists \
         them with their lines):\n",
    );
    s += &text(&keys_ignored().join(", "));
    s += ".\n.PP\nAny other key is an error that names the file and line.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::super::man_pages;
    use super::*;
    use std::collections::BTreeSet;

    /// The string literals of `const NAME: &[&str] = &[...];` in `conf.rs` (whose lists are
    /// private to it).
    fn conf_list(name: &str) -> BTreeSet<&'static str> {
        let src = include_str!("../conf.rs");
        let start = src.find(&format!("const {name}: &[&str] = &[")).unwrap_or_else(|| panic!("{name} in conf.rs"));
        let body = &src[start..];
        let body = &body[body.find("&[").unwrap() + 2..body.find("];").unwrap()];
        body.split('"').skip(1).step_by(2).collect()
    }

    fn names(keys: &[ConfKey]) -> BTreeSet<&'static str> {
        keys.iter().map(|k| k.key).collect()
    }

    /// The page lists every key conf.rs reads, in the list that says who reads it,
    /// and every key it accepts without effect: a key added there fails here until documented.
    #[test]
    fn conf_keys_match_conf_rs() {
        let (used, milter) = (conf_list("USED"), conf_list("MILTER_ONLY"));
        for (list, documented, table) in
            [(&used, names(KEYS_ALL), "KEYS_ALL"), (&milter, names(KEYS_MILTER), "KEYS_MILTER")]
        {
            let missing: Vec<_> = list.difference(&documented).collect();
            assert!(missing.is_empty(), "read by conf.rs, missing from man/conf_keys.rs {table}: {missing:?}");
            let extra: Vec<_> = documented.difference(list).collect();
            assert!(extra.is_empty(), "in man/conf_keys.rs {table}, not in conf.rs's list: {extra:?}");
        }
        assert!(keys_ignored().contains(&"TrustAnchorFile") && !keys_ignored().contains(&"KeepAuthResults"));
    }

    #[test]
    fn defaults_are_filled_from_the_code() {
        let page =
            String::from_utf8(man_pages().unwrap().into_iter().find(|(n, _)| n == "dkimpress-milter.1").unwrap().1)
                .unwrap();
        assert!(!page.contains('{'), "a placeholder left: {}", &page[page.find('{').unwrap()..][..40]);
        assert!(page.contains("content\\-transfer\\-encoding"));
        for k in KEYS_ALL.iter().chain(KEYS_MILTER) {
            assert!(page.contains(&format!("\\fB{}\\fR", roff(k.key))), "{}", k.key);
        }
    }
}
