//! Issue 19: man pages that answer an operator's questions (the opendkim.conf keys read, with the
//! defaults the code uses; signals; files; exit status; examples), the sendmail wrapper listed
//! in `--help` and given its page, completions that offer the values of enumerated options,
//! and a systemd unit whose command lines parse.

use crate::util::{root, testdata, Dir};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

/// Writes the man pages into `dir`; returns the text of `page`.
fn page(dir: &Dir, page: &str) -> String {
    if !dir.join("dkimpress.1").exists() {
        dir.cmd().args(["man", "."]).ok();
    }
    std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"))
}

/// The string literals of `const NAME: &[&str] = &[...];` in src/cli/conf.rs: the keys it reads.
fn conf_rs_list(name: &str) -> Vec<&'static str> {
    let src = include_str!("../src/cli/conf.rs");
    let start = src.find(&format!("const {name}: &[&str] = &[")).unwrap_or_else(|| panic!("{name} in conf.rs"));
    let body = &src[start..];
    let body = &body[body.find("&[").unwrap() + 2..body.find("];").unwrap()];
    body.split('"').skip(1).step_by(2).collect()
}

/// The roff of one `.TP` entry whose tag starts with `\fBkey\fR`, up to the next entry.
fn entry<'a>(page: &'a str, key: &str) -> &'a str {
    let tag = format!(".TP\n\\fB{}\\fR", key.replace('-', "\\-"));
    let start = page.find(&tag).unwrap_or_else(|| panic!("no entry for {key}"));
    let rest = &page[start + tag.len()..];
    &rest[..rest.find(".TP").or_else(|| rest.find(".SS")).unwrap_or(rest.len())]
}

dktest!(
    /// dkimpress-milter(1) lists every opendkim.conf key conf.rs reads (a key added there
    /// without documentation fails here), with the default the code uses, and has the sections
    /// an operator looks for.
    milter_page_documents_every_conf_key,
    |dir| {
        let p = page(&dir, "dkimpress-milter.1");
        for section in [
            ".SH CONFIGURATION",
            ".SH \"OPENDKIM.CONF KEYS\"",
            ".SH SIGNALS",
            ".SH FILES",
            ".SH \"EXIT STATUS\"",
            ".SH EXAMPLES",
            ".SH \"SEE ALSO\"",
        ] {
            assert!(p.contains(section), "{section}");
        }
        for key in conf_rs_list("USED").into_iter().chain(conf_rs_list("MILTER_ONLY")) {
            assert!(entry(&p, key).contains("Default: "), "{key} has no default");
        }
        // The defaults the code uses, not opendkim's and not guessed.
        for (key, default) in [
            ("Canonicalization", "simple/simple"),
            ("OversignHeaders", "from"),
            ("MinimumKeyBits", "1024"),
            ("InternalHosts", "127.0.0.1, ::1"),
            ("UMask", "007"),
            ("Mode", "sv"),
            ("On-DNSError", "tempfail"),
            ("On-BadSignature", "accept"),
        ] {
            let e = entry(&p, key);
            assert!(e.contains(&format!("Default: {}.", default.replace('-', "\\-"))), "{key}: {e}");
        }
        // Accepted and ignored keys are listed too.
        for key in ["AutoRestart", "SyslogFacility", "LDAPBindPassword"] {
            assert!(p.contains(key), "{key}");
        }
        for text in [
            "SIGHUP, SIGUSR1",
            "SIGTERM, SIGINT",
            "/etc/opendkim.conf",
            "/etc/opendkim/opendkim.conf",
            "refile:/etc/opendkim/TrustedHosts",
            "smtpd_milters = inet:127.0.0.1:8891",
            "non_smtpd_milters = $smtpd_milters",
            "milter_default_action",
            "ExecStart=/usr/bin/dkimpress milter \\-x /etc/opendkim/opendkim.conf",
        ] {
            assert!(p.contains(text), "{text}");
        }
        for code in [0, 64, 70, 73, 75, 78] {
            assert!(p.contains(&format!(".TP\n.B {code}\n")), "exit {code}");
        }
    }
);

dktest!(
    /// The documented default canonicalization of a configuration file is what signing with
    /// one does (opendkim's simple/simple; relaxed/relaxed is only for flags alone).
    documented_canonicalization_default_is_used,
    |dir| {
        let p = page(&dir, "dkimpress-milter.1");
        assert!(entry(&p, "Canonicalization").contains("Default: simple/simple."));
        let key = dir.join("k.private");
        std::fs::copy(testdata("keys/test-ed.private"), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let conf = dir.write("opendkim.conf", b"Domain example.com\nSelector test-ed\nKeyFile k.private\n");
        let msg = b"From: a@example.com\nSubject: x\n\nbody\n";
        let out = dir.cmd().args(["sign", "--config"]).arg(&conf).stdin(msg).ok();
        assert!(String::from_utf8_lossy(&out).contains("c=simple/simple"), "{}", String::from_utf8_lossy(&out));
        let out =
            dir.cmd().args(["sign", "-d", "example.com", "-s", "test-ed", "-k", "k.private"]).stdin(msg).ok();
        assert!(String::from_utf8_lossy(&out).contains("c=relaxed/relaxed"));
    }
);

dktest!(
    /// sign, verify, filter (and the others) say what their exit codes mean.
    pages_have_exit_status,
    |dir| {
        for (name, codes) in [
            ("dkimpress.1", &[0, 1, 64, 65, 66, 70, 73, 74, 75, 78, 130][..]),
            ("dkimpress-sign.1", &[0, 64, 65, 66, 73, 74, 75, 78, 130]),
            ("dkimpress-verify.1", &[0, 1, 64, 66, 78]),
            ("dkimpress-seal.1", &[0, 64, 65, 75]),
            ("dkimpress-filter.1", &[0, 75]),
            ("dkimpress-testkey.1", &[0, 1]),
            ("dkimpress-genkey.1", &[0, 73]),
            ("dkimpress-sendmail.1", &[0, 75]),
        ] {
            let p = page(&dir, name);
            let status = &p[p.find(".SH \"EXIT STATUS\"").unwrap_or_else(|| panic!("{name}: no EXIT STATUS"))..];
            for code in codes {
                assert!(status.contains(&format!(".TP\n.B {code}\n")), "{name}: exit {code}");
            }
        }
    }
);

dktest!(
    /// Every page is well-formed roff: groff finds nothing to warn about.
    pages_render_without_warnings,
    |dir| {
        page(&dir, "dkimpress.1");
        if Command::new("groff").arg("--version").output().is_err() {
            eprintln!("\n!!! SKIPPED: groff is not installed; man pages NOT linted !!!\n");
            return;
        }
        let mut n = 0;
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "1") {
                let out = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&path).output().unwrap();
                assert!(out.status.success() && out.stderr.is_empty(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
                n += 1;
            }
        }
        assert!(n >= 10, "{n} pages");
    }
);

dktest!(
    /// The sendmail wrapper is in `dkimpress --help` and has its own page, and is still
    /// dispatched before clap: `--help` after it is sendmail's argument, not ours.
    sendmail_wrapper_is_listed_and_documented,
    |dir| {
        let help = String::from_utf8(dir.cmd().arg("--help").ok()).unwrap();
        assert!(help.lines().any(|l| l.trim_start().starts_with("sendmail ")), "{help}");
        let p = page(&dir, "dkimpress-sendmail.1");
        for text in [".SH SYNOPSIS", ".SH ENVIRONMENT", "DKIMPRESS_CONFIG", "DKIMPRESS_SENDMAIL", "\\-\\-sendmail\\-path", ".SH \"EXIT STATUS\""] {
            assert!(p.contains(text), "{text}");
        }
        assert!(page(&dir, "dkimpress.1").contains("dkimpress\\-sendmail(1)"));
        // A "real sendmail" that prints its arguments.
        let fake = dir.write("fake-sendmail", b"#!/bin/sh\nprintf '%s\\n' \"$@\"\n");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        for args in [&["sendmail", "--help"][..], &["sendmail", "-bp"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_dkimpress"))
                .args(args)
                .env("DKIMPRESS_SENDMAIL", &fake)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}\n", args[1]), "{args:?}");
        }
    }
);

dktest!(
    /// Completions offer the values of enumerated options (they offered file names for
    /// --mbox-format), and parsing accepts and refuses what it did before.
    completions_offer_option_values,
    |dir| {
        let bash = String::from_utf8(dir.cmd().args(["completions", "bash"]).ok()).unwrap();
        for (flag, values) in [
            ("--mbox-format", "mboxrd mboxo mboxcl mboxcl2"),
            ("--format", "mbox maildir queue message"),
            ("--on-error", "tempfail pass"),
            ("--report", "text json"),
            ("--require", "any all"),
            ("--type", "rsa ed25519"),
        ] {
            let case = format!("{flag})\n");
            let at = bash.find(&case).unwrap_or_else(|| panic!("{flag} not in the bash completions"));
            let body = &bash[at..][..case.len() + 100];
            assert!(body.contains(&format!("compgen -W \"{values}\"")), "{flag}: {body}");
        }
        let fish = String::from_utf8(dir.cmd().args(["completions", "fish"]).ok()).unwrap();
        let at = fish.find("-l mbox-format").expect("fish: --mbox-format");
        assert!(fish[at..].contains("mboxcl2\\t"), "fish: no values for --mbox-format");
        let key = dir.join("k.private");
        std::fs::copy(testdata("keys/test-ed.private"), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sign = ["sign", "-d", "example.com", "-s", "test-ed", "-k", "k.private"];
        let msg = std::fs::read(testdata("messages/plain-lf.eml")).unwrap();
        // Accepted as before: any case for the mbox flavour, the aliases of --format.
        dir.cmd().args(sign).args(["--mbox-format", "MBOXCL2", "--format", "eml"]).stdin(&msg).ok();
        // Refused as before: exit 64 with the type's own message (75 for filter, whose usage
        // errors defer mail).
        let out = dir.cmd().args(sign).args(["--mbox-format", "mbox"]).stdin(&msg).run();
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mbox format \"mbox\""));
        let out = dir.cmd().args(["filter", "--on-error", "later", "--", "/bin/true"]).stdin(&msg).run();
        assert_eq!(out.status.code(), Some(75));
        assert!(String::from_utf8_lossy(&out.stderr).contains("expected tempfail or pass"));
    }
);

dktest!(
    /// The systemd unit starts the milter with the daemon's own default configuration path,
    /// names its page, and every dkimpress command line in it (the override example too)
    /// parses.
    systemd_unit_command_lines_parse,
    |dir| {
        let unit = std::fs::read_to_string(root().join("deploy/dkimpress-milter.service")).unwrap();
        assert!(unit.contains("Documentation=man:dkimpress-milter(1)"));
        page(&dir, "dkimpress-milter.1");
        let lines: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.trim_start_matches(['#', ' ']).strip_prefix("ExecStart=/usr/bin/dkimpress "))
            .collect();
        assert!(unit.lines().any(|l| l == "ExecStart=/usr/bin/dkimpress milter"), "{unit}");
        assert!(lines.iter().any(|l| l.contains("-x /etc/opendkim/opendkim.conf")), "{lines:?}");
        for line in lines {
            let out = dir.cmd().args(line.split_whitespace()).arg("--help").run();
            assert_eq!(out.status.code(), Some(0), "{line}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
);
