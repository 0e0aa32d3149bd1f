//! What the command line tells people beyond `--help`: the man pages (`dkimpress man DIR`) and
//! the values that help and shell completions offer for enumerated options.
//!
//! Owns: the pages, generated from the clap definitions with hand-written sections appended
//! (the opendkim.conf keys dkimpress reads with the defaults it uses, signals, files, exit
//! status, examples), the hand-written page of the sendmail wrapper (which is parsed before
//! clap), and [`Choices`]. It does not own what it describes: `conf.rs` reads opendkim.conf,
//! the commands decide defaults, [`super::exit_code`] the exit codes. The tests at the bottom
//! keep the key table here in step with `conf.rs`.

use super::sysexits;
use clap::builder::{PossibleValue, TypedValueParser};
use std::ffi::OsStr;

/// The man pages: `dkimpress.1` and one `dkimpress-COMMAND.1` per command, as (file name, roff).
pub(crate) fn man_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let cmd = <super::Cli as clap::CommandFactory>::command();
    let mut pages = vec![("dkimpress.1".to_string(), render(cmd.clone(), "dkimpress")?)];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("dkimpress-{}", sub.get_name());
        let page = if sub.get_name() == "sendmail" {
            // Parsed before clap (its arguments are sendmail's): a page of its own.
            sendmail_page(env!("CARGO_PKG_VERSION")).into_bytes()
        } else {
            // clap names are &'static without its `string` feature; a few bytes, once.
            let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
            let bin = format!("dkimpress {}", sub.get_name());
            render(sub.clone().name(leaked).bin_name(bin).version(env!("CARGO_PKG_VERSION")), &name)?
        };
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// A generated page with its hand-written sections after the generated ones, before VERSION.
fn render(mut cmd: clap::Command, page: &str) -> std::io::Result<Vec<u8>> {
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = vec![];
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if cmd.get_after_help().is_some() || cmd.get_after_long_help().is_some() {
        man.render_extra_section(&mut out)?;
    }
    out.extend_from_slice(extra_sections(page).as_bytes());
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// The hand-written sections of `page`, in roff.
fn extra_sections(page: &str) -> String {
    // No hyphenation: paths, keys and options are copied from these sections.
    let mut s = String::from(".nh\n");
    if page == "dkimpress-milter" {
        s += &roff(MILTER_CONFIGURATION);
        s += &conf_keys_section();
        s += &roff(MILTER_SIGNALS_FILES);
    }
    if let Some(codes) = exit_codes(page) {
        s += &exit_status_section(page, codes);
    }
    if page == "dkimpress-milter" {
        s += &roff(MILTER_EXAMPLES);
    }
    s += &see_also(page);
    s
}

/// Hand-written roff, with every `-` made `\-` (a hyphen-minus that can be copied into a
/// shell, not a typographic hyphen). The texts here contain no roff escape that holds a `-`.
fn roff(text: &str) -> String {
    text.replace('-', "\\-")
}

/// Text for a roff text line: escaped, and never taken for a request.
fn text(s: &str) -> String {
    let s = roff(&s.replace('\\', "\\e"));
    if s.starts_with(['.', '\'']) {
        format!("\\&{s}")
    } else {
        s
    }
}

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
fn conf_keys_section() -> String {
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

const MILTER_CONFIGURATION: &str = r#".SH CONFIGURATION
The milter reads the configuration file of opendkim(8), opendkim.conf(5): the file given with
\fB-x\fR \fIFILE\fR (\fB--config\fR \fIFILE\fR), else \fI/etc/opendkim.conf\fR when it exists
and no key options (\fB-k\fR, \fB--key-table\fR) are given, as opendkim does. Options given on
the command line win over the file.
.PP
One \fIKey value\fR per line; \fB#\fR starts a comment; keys are matched without regard to case.
A boolean is yes or no (true/false, 1/0, on/off; as in opendkim only the first letter counts).
Relative paths are taken from the directory of the file. A \fIdataset\fR is a file of
\fIkey value\fR lines (a path, or file:PATH), refile:PATH (patterns, \fB*\fR matches any text),
csl:a,b,c (a comma-separated list) or dsn:pgsql://USER@HOST/DATABASE/table=... (PostgreSQL), as
opendkim(8) defines them.
.PP
A file without keys to sign with (opendkim's stock file) verifies only. Check a file before
using it with \fBdkimpress milter -n -x\fR \fIFILE\fR: every problem is printed, and the exit
status is 0 or 78.
"#;

const MILTER_SIGNALS_FILES: &str = r#".SH SIGNALS
.TP
.B SIGHUP, SIGUSR1
Re-read the configuration file and everything it names (keys, KeyTable, SigningTable, host lists,
On- actions, AuthservID) without dropping a connection: connections accepted from then on use the
new settings, open ones finish with the settings they started with. A file that cannot be used is
logged and the running configuration stays. Socket, UserID, PidFile, UMask and Syslog are read
at start only. \fBsystemctl reload dkimpress-milter\fR sends SIGHUP.
.TP
.B SIGTERM, SIGINT
Stop: no new connections; the unix socket and PidFile are removed; messages in progress get up
to 5 seconds to finish. The MTA applies its milter_default_action to the connections that are cut.
The exit status is 0.
.SH FILES
.TP
.I /etc/opendkim.conf
The configuration read when no \fB-x\fR/\fB--config\fR is given (the file opendkim reads).
.TP
.I /etc/opendkim/opendkim.conf
Where Arch Linux's opendkim package and the ArchWiki keep it: give \fB-x /etc/opendkim/opendkim.conf\fR
(in the systemd unit: see EXAMPLES).
.TP
.I /etc/opendkim/KeyTable
The KeyTable of the examples (any path works): one key per line,
\fINAME DOMAIN:SELECTOR:KEYFILE\fR.
.TP
.I /etc/opendkim/SigningTable
The SigningTable of the examples: one \fIADDRESS-OR-PATTERN NAME\fR per line.
.TP
.I /etc/opendkim/TrustedHosts
The host list of the examples, named by InternalHosts and ExternalIgnoreList: one address,
CIDR block or host name per line.
.TP
.I /etc/opendkim/keys/
Private keys, readable by the UserID user and no one else (dkimpress genkey writes them mode 0600).
.TP
.I /lib/systemd/system/dkimpress-milter.service
The systemd unit of the Debian package: Type=notify, reload by SIGHUP.
"#;

const MILTER_EXAMPLES: &str = r#".SH EXAMPLES
In place of opendkim, with several domains, as the ArchWiki sets it up. \fI/etc/opendkim/opendkim.conf\fR:
.PP
.RS 4
.nf
Syslog                  yes
UserID                  opendkim
Socket                  inet:8891@localhost
KeyTable                refile:/etc/opendkim/KeyTable
SigningTable            refile:/etc/opendkim/SigningTable
ExternalIgnoreList      refile:/etc/opendkim/TrustedHosts
InternalHosts           refile:/etc/opendkim/TrustedHosts
.fi
.RE
.PP
\fI/etc/opendkim/KeyTable\fR, \fI/etc/opendkim/SigningTable\fR and \fI/etc/opendkim/TrustedHosts\fR:
.PP
.RS 4
.nf
default._domainkey.example.com example.com:default:/etc/opendkim/keys/example.com/default.private

*@example.com default._domainkey.example.com

127.0.0.1
::1
192.0.2.0/24
.fi
.RE
.PP
The key, and its DNS record to publish (default.txt):
.PP
.RS 4
.nf
dkimpress genkey -d example.com -s default -D /etc/opendkim/keys/example.com
chown -R opendkim: /etc/opendkim/keys
.fi
.RE
.PP
Postfix, \fI/etc/postfix/main.cf\fR: every mail passes the milter, SMTP and local submission
(sendmail, cron) alike. With milter_default_action = accept, mail flows unsigned while the
milter is down; tempfail holds it until the milter is back.
.PP
.RS 4
.nf
smtpd_milters = inet:127.0.0.1:8891
non_smtpd_milters = $smtpd_milters
milter_default_action = accept
.fi
.RE
.PP
Check the file and the DNS records, then start it in place of opendkim (on Arch, point the unit
at the file with \fBsystemctl edit dkimpress-milter\fR), and reload Postfix:
.PP
.RS 4
.nf
dkimpress milter -n -x /etc/opendkim/opendkim.conf
dkimpress testkey --config /etc/opendkim/opendkim.conf
systemctl edit dkimpress-milter
    [Service]
    ExecStart=
    ExecStart=/usr/bin/dkimpress milter -x /etc/opendkim/opendkim.conf
systemctl disable --now opendkim
systemctl enable --now dkimpress-milter
postfix reload
.fi
.RE
.PP
One domain and one key instead of the tables:
.PP
.RS 4
.nf
Domain                  example.com
Selector                default
KeyFile                 /etc/opendkim/keys/example.com/default.private
.fi
.RE
"#;

/// The exit codes of a page, when it has a list: (code, meaning).
fn exit_codes(page: &str) -> Option<&'static [(u8, &'static str)]> {
    use sysexits::*;
    Some(match page {
        "dkimpress" => &[
            (0, "Success."),
            (
                1,
                "verify: a message did not verify, or the input held none; testkey: a key does not \
                 match its record.",
            ),
            (USAGE, "A flag or argument is wrong or missing; the message names it (EX_USAGE)."),
            (
                DATAERR,
                "The input is not a message that can be signed (no From, a malformed header field), \
                 or is larger than --max-message-size (EX_DATAERR).",
            ),
            (NOINPUT, "An input file does not exist or cannot be read (EX_NOINPUT)."),
            (SOFTWARE, "An internal error (EX_SOFTWARE)."),
            (CANTCREAT, "An output file cannot be created, or exists and --force was not given (EX_CANTCREAT)."),
            (IOERR, "Writing the output failed: a full disk, a closed pipe (EX_IOERR)."),
            (
                TEMPFAIL,
                "A temporary failure, try again later: a database that does not answer, an mbox \
                 locked by another program, standard input that cannot be read (EX_TEMPFAIL). \
                 Postfix defers mail on it.",
            ),
            (
                CONFIG,
                "A configuration error: a key file, opendkim.conf (file and line named), a KeyTable or \
                 SigningTable, a zone file (EX_CONFIG).",
            ),
            (INTERRUPTED, "Stopped by SIGINT or SIGTERM (128 + 2)."),
        ],
        "dkimpress-sign" => &[
            (
                0,
                "Every message was signed, or passed through unsigned because no key is configured for \
                 its author (no SigningTable entry, a domain not in Domain), as opendkim does.",
            ),
            (
                DATAERR,
                "A message could not be signed (no From, a malformed header field, larger than \
                 --max-message-size; with --require-signed, no key for its author): the one message \
                 given (nothing is written), or in a run over archives at least one message, written \
                 out unsigned and reported as FILE#N: reason.",
            ),
            (USAGE, "A flag or argument is wrong or missing."),
            (NOINPUT, "An input does not exist or cannot be read."),
            (SOFTWARE, "An internal error."),
            (CANTCREAT, "An output cannot be created, or exists and --force was not given."),
            (IOERR, "Writing the output failed (a full disk)."),
            (
                TEMPFAIL,
                "Try again later: a PostgreSQL data set does not answer, the locks of an mbox signed \
                 --in-place are held past --lock-timeout, standard input cannot be read.",
            ),
            (CONFIG, "A key, the configuration file or a table cannot be used."),
            (INTERRUPTED, "Stopped by SIGINT or SIGTERM; files written --in-place are left as they were."),
        ],
        "dkimpress-verify" => &[
            (
                0,
                "Every message verified (--require any: a signature passes; all: every one does). \
                 With --add-ar, 0 once the message is written, whatever the result.",
            ),
            (1, "At least one message did not verify, or the input held no message."),
            (USAGE, "A flag or argument is wrong or missing."),
            (DATAERR, "The message on standard input is larger than --max-message-size."),
            (NOINPUT, "An input does not exist or cannot be read."),
            (IOERR, "Writing the report or the message failed."),
            (TEMPFAIL, "Standard input cannot be read."),
            (CONFIG, "A --dns-zone file cannot be used, or the resolver cannot start."),
            (INTERRUPTED, "Stopped by SIGINT or SIGTERM."),
        ],
        "dkimpress-filter" => &[
            (
                0,
                "The re-injection command took the message: signed, or passed on unsigned on purpose \
                 (no key for its From domain, not ours to sign, --on-error pass).",
            ),
            (
                TEMPFAIL,
                "Postfix keeps the message and retries: the configuration cannot be loaded or the \
                 message cannot be signed (with --on-error tempfail, the default); the re-injection \
                 command cannot start, is killed, or runs past --reinject-timeout; this command line \
                 is wrong (75, not 64, so that a mistyped master.cf line defers mail instead of \
                 bouncing it).",
            ),
        ],
        "dkimpress-milter" => &[
            (0, "Stopped by SIGTERM or SIGINT; or -n found the configuration good."),
            (USAGE, "A wrong option; no Socket in the configuration and no --socket."),
            (SOFTWARE, "The signal handlers cannot be installed."),
            (CANTCREAT, "PidFile cannot be written; the unix socket's path exists and is not a socket."),
            (
                TEMPFAIL,
                "The socket is in use by another program or cannot be bound now, or a PostgreSQL data \
                 set does not answer at start: systemd starts it again (Restart=on-failure).",
            ),
            (
                CONFIG,
                "The configuration cannot be used (file and line named): opendkim.conf, a key, a table, \
                 a host list, UserID; or -n found a problem. A restart cannot help \
                 (RestartPreventExitStatus).",
            ),
        ],
        "dkimpress-testkey" => &[
            (0, "Every key matches the public key of its DNS record."),
            (1, "A key does not match its record, or the record is missing or unusable."),
            (USAGE, "A flag or argument is wrong or missing."),
            (TEMPFAIL, "A PostgreSQL data set does not answer."),
            (CONFIG, "A key, the configuration file, a table or a zone file cannot be used."),
        ],
        "dkimpress-genkey" => &[
            (0, "The key and its record were written."),
            (USAGE, "A flag or argument is wrong or missing."),
            (
                CANTCREAT,
                "The directory does not exist, a file exists and --force was not given, or a file \
                 cannot be written.",
            ),
            (CONFIG, "The domain or selector is not a DNS name, or the key size is refused."),
        ],
        _ => return None,
    })
}

fn exit_status_section(page: &str, codes: &[(u8, &str)]) -> String {
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    if page == "dkimpress-filter" {
        s += &roff(
            "As Postfix pipe(8) reads it: 75 and 71 defer the message, any other non-zero status \
             bounces it.\n",
        );
    }
    for (code, meaning) in codes {
        s += &format!(".TP\n.B {code}\n{}\n", text(meaning));
    }
    if page == "dkimpress-filter" {
        s += &roff(
            ".TP\n.I other\nThe re-injection command's own non-zero status when it is a sysexits.h code \
             (64 to 78), passed on as it is: the command knows whether retrying can help. Any other \
             status (1, 255) or death by a signal becomes 75, and the original status is logged: \
             pipe(8) would bounce it.\n",
        );
    }
    if page == "dkimpress-sendmail" {
        s += &roff(
            ".TP\n.I other\nThe real sendmail's own non-zero status when it is a sysexits.h code (64 to 78); \
             any other status, or death by a signal, becomes 75 (logged with the original status).\n",
        );
    }
    s
}

fn see_also(page: &str) -> String {
    let pages: &[&str] = match page {
        "dkimpress" => &["dkimpress-milter(1)", "dkimpress-sendmail(1)", "opendkim.conf(5)"],
        "dkimpress-milter" => &[
            "dkimpress(1)",
            "dkimpress-testkey(1)",
            "dkimpress-genkey(1)",
            "dkimpress-sendmail(1)",
            "opendkim(8)",
            "opendkim.conf(5)",
            "postconf(5)",
            "systemd.service(5)",
        ],
        "dkimpress-filter" => &["dkimpress(1)", "dkimpress-sendmail(1)", "dkimpress-milter(1)", "pipe(8)"],
        "dkimpress-sendmail" => &["dkimpress(1)", "dkimpress-filter(1)", "dkimpress-milter(1)", "sendmail(1)"],
        _ => &["dkimpress(1)", "dkimpress-milter(1)"],
    };
    format!(".SH \"SEE ALSO\"\n{}\n", pages.iter().map(|p| bold_ref(p)).collect::<Vec<_>>().join(",\n"))
}

/// `name(1)` as roff: the name in bold.
fn bold_ref(p: &str) -> String {
    let (name, section) = p.split_once('(').unwrap_or((p, ""));
    format!("\\fB{}\\fR({section}", roff(name))
}

/// dkimpress-sendmail(1), written by hand: its arguments are sendmail's, parsed before clap.
fn sendmail_page(version: &str) -> String {
    let mut s = format!(".TH dkimpress\\-sendmail 1 \"\" \"dkimpress\\-sendmail {version}\" \"\"\n.nh\n");
    s += &roff(SENDMAIL_BODY);
    s += &exit_status_section("dkimpress-sendmail", SENDMAIL_EXIT);
    s += &see_also("dkimpress-sendmail");
    s += &format!(".SH VERSION\nv{version}\n");
    s
}

const SENDMAIL_EXIT: &[(u8, &str)] = &[
    (0, "The real sendmail took the message."),
    (
        sysexits::TEMPFAIL,
        "The message was not handed over and the caller keeps it: the configuration cannot be used \
         or the message cannot be signed (only with --on-error tempfail / DKIMPRESS_ON_ERROR=tempfail); \
         the message cannot be read; the real sendmail cannot be run, is dkimpress itself, is killed, \
         or runs past DKIMPRESS_REINJECT_TIMEOUT.",
    ),
];

const SENDMAIL_BODY: &str = r#".SH NAME
dkimpress-sendmail - sign locally submitted mail, then hand it to the real sendmail
.SH SYNOPSIS
\fBdkimpress sendmail\fR [\fB--config\fR \fIFILE\fR] [\fB--sendmail-path\fR \fIPATH\fR] [\fB--on-error\fR \fBtempfail\fR|\fBpass\fR] [\fB--verbose\fR] [\fISENDMAIL-OPTIONS\fR] [\fIRECIPIENT\fR...]
.br
\fBsendmail\fR [\fISENDMAIL-OPTIONS\fR] [\fIRECIPIENT\fR...]
.br
\fBmailq\fR ..., \fBnewaliases\fR ...
.SH DESCRIPTION
A sendmail(1) for programs that submit mail by running sendmail (cron, web applications,
mailx) when the MTA does not sign it itself (no milter): it reads the message as sendmail does,
signs it with the keys of an opendkim.conf-style file, and runs the real sendmail with the same
arguments and the signed message. To its caller it behaves like sendmail, and returns the real
sendmail's exit status.
.PP
Install it as a link named sendmail ahead of the real one (and, if it replaces them, as mailq and
newaliases), or run \fBdkimpress sendmail\fR with sendmail's arguments.
.PP
Every argument (\fB-f\fR/\fB-r\fR, \fB-F\fR, \fB-t\fR, \fB-i\fR/\fB-oi\fR, \fB-N\fR, \fB-R\fR,
\fB-V\fR, \fB-B\fR, \fB-C\fR, \fB-G\fR, \fB--\fR, recipients) goes unchanged to the real
sendmail. The command line is read as Postfix sendmail(1) reads it: flags may be grouped
(\fB-ti\fR), values attached or separate (\fB-oi\fR, \fB-o i\fR), and options end at the first
recipient or \fB--\fR. Without \fB-i\fR, \fB-oi\fR or \fB-o i\fR a line holding only a dot ends
the message, and nothing after it is read.
.PP
The key is chosen by the From address (the envelope sender of \fB-f\fR only when there is no
From). A message with no key for its domain, or that is not a message at all, goes on unsigned.
Modes that submit no message (\fB-bp\fR, \fB-bi\fR, \fB-I\fR, \fB-bv\fR, \fB-bd\fR, \fB-bh\fR,
\fB-q\fR...) and the names mailq and newaliases go straight to the real sendmail.
\fB-bs\fR (an SMTP session on standard input) is passed on unsigned, and logged.
.PP
When the MTA has a milter (Postfix non_smtpd_milters with \fBdkimpress-milter\fR(1)), local
submission is signed there and this wrapper is not needed.
.SH OPTIONS
Only before sendmail's own arguments, and only as \fBdkimpress sendmail\fR or a link named
sendmail:
.TP
\fB--config\fR \fIFILE\fR
The configuration: an opendkim.conf with Domain, Selector and KeyFile or KeyTable and
SigningTable (see OPENDKIM.CONF KEYS in \fBdkimpress-milter\fR(1); Canonicalization is
simple/simple unless it says). Default: DKIMPRESS_CONFIG, else \fI/etc/dkimpress/dkimpress.conf\fR.
.TP
\fB--sendmail-path\fR \fIPATH\fR
The real sendmail. Default: DKIMPRESS_SENDMAIL, else \fI/usr/sbin/sendmail\fR.
.TP
\fB--on-error\fR \fBpass\fR|\fBtempfail\fR
When the configuration cannot be used or signing fails: pass the message on unsigned and log
it (pass, the default), or exit 75 and leave the message with the caller (tempfail).
Default: DKIMPRESS_ON_ERROR, else pass.
.TP
\fB--verbose\fR
Log more.
.SH ENVIRONMENT
A program that runs sendmail passes only sendmail's arguments, so the settings also come from
the environment:
.TP
.B DKIMPRESS_CONFIG
The configuration file (\fB--config\fR).
.TP
.B DKIMPRESS_SENDMAIL
The real sendmail (\fB--sendmail-path\fR).
.TP
.B DKIMPRESS_ON_ERROR
pass or tempfail (\fB--on-error\fR).
.TP
.B DKIMPRESS_REINJECT_TIMEOUT
Seconds the real sendmail may take before it is killed and the wrapper exits 75 (default 300).
.TP
.B DKIMPRESS_MAX_MESSAGE_SIZE
Largest message signed (octets; K, M, G suffixes; default 512M). A larger one is handed to the
real sendmail whole and unsigned, with a log line: local mail is never lost. Up to 1 MiB of a
message is held in memory; more is spooled to an unlinked file in $TMPDIR (else /tmp).
.TP
.B DKIMPRESS_LOG
stderr: log to standard error instead of syslog (facility mail). Logs go to standard error
anyway when it is a terminal.
.SH FILES
.TP
.I /etc/dkimpress/dkimpress.conf
The default configuration; readable by every user who sends mail, the keys by the same users.
.TP
.I /usr/sbin/sendmail
The default real sendmail.
"#;

/// A value parser for an option with a fixed set of values: it parses with the type's own
/// `FromStr` (the same strings accepted, aliases and case included, the same error message and
/// exit status as a plain `FromStr` option), and tells help and shell completions the values.
#[derive(Clone)]
pub(crate) struct Choices<T> {
    /// (value, what it means), in the order shown.
    values: &'static [(&'static str, &'static str)],
    parse: fn(&str) -> Result<T, String>,
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Choices<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        self.parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.values.iter().map(|(v, help)| PossibleValue::new(*v).help(*help))))
    }
}

/// `--format` of sign and verify.
pub(crate) const INPUT_KINDS: Choices<dkimpress::pipeline::InputKind> = Choices {
    values: &[
        ("mbox", "an mbox file"),
        ("maildir", "a maildir (cur/, new/)"),
        ("queue", "a directory of files of one message each"),
        ("message", "one message"),
    ],
    parse: <dkimpress::pipeline::InputKind as std::str::FromStr>::from_str,
};

/// `--mbox-format` of sign and verify.
pub(crate) const MBOX_FORMATS: Choices<dkimpress::pipeline::mbox::MboxFormat> = Choices {
    values: &[
        ("mboxrd", "From_ quoting undone exactly"),
        ("mboxo", "From_ quoting, one > removed"),
        ("mboxcl", "mboxo quoting and Content-Length"),
        ("mboxcl2", "Content-Length, no quoting"),
    ],
    parse: <dkimpress::pipeline::mbox::MboxFormat as std::str::FromStr>::from_str,
};

/// `--framing` of sign and verify.
pub(crate) const FRAMINGS: Choices<dkimpress::pipeline::Framing> = Choices {
    values: &[("parallel", "each worker frames its own byte range"), ("serial", "one thread frames")],
    parse: <dkimpress::pipeline::Framing as std::str::FromStr>::from_str,
};

/// `--on-error` of filter.
pub(crate) const ON_ERROR: Choices<super::mta::OnError> = Choices {
    values: &[
        ("tempfail", "exit 75: Postfix keeps the message and retries"),
        ("pass", "re-inject it unsigned and log"),
    ],
    parse: <super::mta::OnError as std::str::FromStr>::from_str,
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The string literals of `const NAME: &[&str] = &[...];` in `conf.rs` (whose lists are
    /// private to it).
    fn conf_list(name: &str) -> BTreeSet<&'static str> {
        let src = include_str!("conf.rs");
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
            assert!(missing.is_empty(), "read by conf.rs, missing from man.rs {table}: {missing:?}");
            let extra: Vec<_> = documented.difference(list).collect();
            assert!(extra.is_empty(), "in man.rs {table}, not in conf.rs's list: {extra:?}");
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

    #[test]
    fn choices_parse_what_they_offer() {
        fn check<T: Clone + Send + Sync + 'static>(c: &Choices<T>) {
            let cmd = clap::Command::new("t");
            for (v, _) in c.values {
                assert!(c.parse_ref(&cmd, None, OsStr::new(v)).is_ok(), "{v}");
            }
            assert!(c.parse_ref(&cmd, None, OsStr::new("nonsense")).is_err());
        }
        check(&INPUT_KINDS);
        check(&MBOX_FORMATS);
        check(&FRAMINGS);
        check(&ON_ERROR);
    }

    #[test]
    fn text_lines_are_never_requests() {
        for (input, want) in
            [("a-b", "a\\-b"), (".hidden", "\\&.hidden"), ("'quote", "\\&'quote"), ("back\\slash", "back\\eslash")]
        {
            assert_eq!(text(input), want);
        }
    }
}
