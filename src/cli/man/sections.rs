//! The long hand-written roff of the pages: the CONFIGURATION, SIGNALS, FILES and EXAMPLES
//! sections of dkimpress-milter(1), the EXIT STATUS lists of every page that has one with the
//! section made of them, and the whole page of the sendmail wrapper (parsed before clap, so
//! nothing of it is generated).

use super::{roff, see_also, text};
use crate::cli::sysexits;

pub(super) const MILTER_CONFIGURATION: &str = r#".SH CONFIGURATION
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
.SS ARC
The milter also does what openarc(8) does next to opendkim, in one pass per message: verify the
DKIM signatures and the ARC chain (RFC 8617), add Authentication-Results with dkim= and arc=,
then seal the message with those results. Two ways to turn it on:
.TP
.B -A \fIopenarc.conf\fR
Take over an OpenARC configuration as it is. Its Mode decides: s seals every message with its
Domain, Selector and KeyFile, v validates the chains of the mail that is verified, no Mode seals
the mail of internal hosts and validates the rest. AuthservID (when opendkim.conf has none),
SignHeaders, OversignHeaders, Canonicalization (default relaxed/simple), SignatureAlgorithm,
MinimumKeySizeRSA, RequireSafeKeys, FinalReceiver and PermitAuthenticationOverrides are read;
its Socket, UserID, PidFile, logging and host lists are those of opendkim.conf and are ignored;
SealHeaderChecks is refused.
.TP
.B ARCSign yes\fR, \fBARCVerify yes
in opendkim.conf: seal the mail this milter signs, with the key chosen for its first
signature (KeyTable/SigningTable or Domain/Selector/KeyFile), and validate the chains of the
mail it verifies.
.PP
A chain whose newest seal says cv=fail gets no set, nor does one of 50 sets. A chain key that
cannot be looked up now is the DNSError condition (On-DNSError). A mailing list of ours that
changes a message and re-injects it from an internal host keeps cv=pass with
PermitAuthenticationOverrides yes: the arc= our Authentication-Results recorded on arrival
decides, as RFC 8617 asks for the chain as it reached us. Put the milter before a DMARC milter
(opendmarc), which reads the arc= result.
"#;

pub(super) const MILTER_SIGNALS_FILES: &str = r#".SH SIGNALS
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

pub(super) const MILTER_EXAMPLES: &str = r#".SH EXAMPLES
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
pub(super) fn exit_codes(page: &str) -> Option<&'static [(u8, &'static str)]> {
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
        "dkimpress-seal" => &[
            (
                0,
                "Every message got its next ARC set, or went on unchanged because its chain is closed \
                 (the newest ARC-Seal says cv=fail, RFC 8617 §5.1.1) or no key is configured for it.",
            ),
            (
                DATAERR,
                "A message could not be sealed (it already has 50 ARC sets, no From, a malformed header \
                 field, larger than --max-message-size): the one message given (nothing is written), or \
                 in a run over archives at least one message, written out unchanged and reported.",
            ),
            (USAGE, "A flag or argument is wrong or missing, or is a DKIM-Signature option (-i, -x, --body-length, --strip-own)."),
            (NOINPUT, "An input does not exist or cannot be read."),
            (SOFTWARE, "An internal error."),
            (CANTCREAT, "An output cannot be created."),
            (IOERR, "Writing the output failed (a full disk)."),
            (
                TEMPFAIL,
                "Try again later: a key of the existing chain cannot be looked up now (sealing the chain \
                 as failed would be final), a key store does not answer, an mbox is locked.",
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
        "dkimpress-rotate" => &[
            (0, "The step is done, or was done already (every step can be run again)."),
            (1, "status: a key that signs has no record that verifies."),
            (USAGE, "A flag or argument is wrong or missing; no key has the selector named."),
            (NOINPUT, "A table or the configuration cannot be read."),
            (CANTCREAT, "A key, a table, the configuration or rotate's record cannot be written."),
            (
                TEMPFAIL,
                "Try again later, nothing changed: activate while a new record is not published or does not \
                 hold the new key; retire before --after days have passed since the key stopped signing; \
                 another step running on the same configuration; the database does not answer.",
            ),
            (
                CONFIG,
                "The configuration cannot be rotated as asked, nothing changed: the key to retire still \
                 signs or is its domain's last; a second signature without MultipleSignatures; tables \
                 that cannot be written (a filtered data set, csl:).",
            ),
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

pub(super) fn exit_status_section(page: &str, codes: &[(u8, &str)]) -> String {
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

/// dkimpress-sendmail(1), written by hand: its arguments are sendmail's, parsed before clap.
pub(super) fn sendmail_page(version: &str) -> String {
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
