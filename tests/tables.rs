//! Multi-domain signing: KeyTable/SigningTable files (plain and refile), opendkim.conf, keys in
//! a real PostgreSQL server, a database that never answers, and `testkey`.

use crate::pg::PgServer;
use crate::util::{dkimpy_available, dkimpy_verify, key, leftovers, mbox, message, stderr, Dir};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Keys for three domains (genkey), their zone records in `dir/keys`.
fn three_keys(dir: &Dir) -> Vec<(&'static str, &'static str, PathBuf)> {
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let mut out = vec![];
    for (domain, sel, args) in [
        ("example.com", "s2026", &["-b", "2048"][..]),
        ("example.org", "ed", &["--type", "ed25519"][..]),
        ("sub.example.net", "k1", &["-b", "1024"][..]),
    ] {
        let o = dir.cmd().args(["genkey", "-D", "keys", "-a", "-d", domain, "-s", sel]).args(args).run();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // genkey names files by selector; keep one per domain.
        let p = dir.join(&format!("keys/{domain}.private"));
        std::fs::rename(dir.join(&format!("keys/{sel}.private")), &p).unwrap();
        std::fs::rename(dir.join(&format!("keys/{sel}.txt")), dir.join(&format!("keys/{domain}.txt"))).unwrap();
        out.push((domain, sel, p));
    }
    out
}

fn zones(dir: &Dir) -> Vec<String> {
    ["example.com", "example.org", "sub.example.net"]
        .iter()
        .flat_map(|d| ["--dns-zone".to_string(), dir.join(&format!("keys/{d}.txt")).display().to_string()])
        .collect()
}

fn msg(from: &str) -> Vec<u8> {
    format!("From: {from}\nTo: x@example.invalid\nSubject: tables\n\nbody\n").into_bytes()
}

/// The (d=, s=) pairs of the DKIM-Signature fields in `out`.
fn sigs(out: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(out).replace("\n\t", " ");
    text.lines()
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .map(|l| {
            let tag =
                |t: &str| l.split(&format!(" {t}=")).nth(1).unwrap_or("").split(';').next().unwrap_or("").to_string();
            (tag("d"), tag("s"))
        })
        .collect()
}

dktest!(
    /// A KeyTable file (paths and inline key data) with a refile SigningTable: wildcard
    /// patterns, first match wins; MultipleSignatures applies all matches; an unknown domain
    /// passes unsigned with exit 0; --sender overrides From.
    key_table_and_refile_signing_table,
    |dir| {
        let keys = three_keys(&dir);
        let inline = {
            let pem = std::fs::read_to_string(&keys[1].2).unwrap();
            pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()
        };
        dir.write(
            "KeyTable",
            format!(
                "# OpenDKIM KeyTable\ncom  example.com:s2026:{}\norg example.org:ed:{inline}\n\nnet sub.example.net:k1:\\\n    {}\n",
                keys[0].2.display(),
                keys[2].2.display()
            )
            .as_bytes(),
        );
        dir.write(
            "SigningTable",
            b"# first match wins\nboss@example.com org\n*@example.com com\n*@*.example.com com\n*@example.org org\n*@sub.example.net net\n*@example.org com\n",
        );
        let base = ["sign", "--key-table", "KeyTable", "--signing-table", "refile:SigningTable"];
        type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            ("Joe <joe@Example.COM>", vec![], vec![("example.com", "s2026")]),
            ("boss@example.com", vec![], vec![("example.org", "ed")]),
            ("\"A, B\" <a@mail.example.com>", vec![], vec![("example.com", "s2026")]),
            ("x@sub.example.net", vec![], vec![("sub.example.net", "k1")]),
            ("x@example.org", vec!["--multiple-signatures"], vec![("example.org", "ed"), ("example.com", "s2026")]),
            ("x@example.org", vec!["--sender", "joe@sub.example.net"], vec![("sub.example.net", "k1")]),
        ];
        let mut signed = vec![];
        for (i, (from, extra, want)) in cases.iter().enumerate() {
            let out = dir.cmd().args(base).args(extra).stdin(&msg(from)).ok();
            let got = sigs(&out);
            let want: Vec<(String, String)> = want.iter().map(|(d, s)| (d.to_string(), s.to_string())).collect();
            assert_eq!(got, want, "{from} {extra:?}");
            signed.push(dir.write(&format!("signed{i}.eml"), &out));
        }
        // No key for this author: unchanged, exit 0, a note on stderr.
        let m = msg("someone@unknown.example");
        let out = dir.cmd().args(base).stdin(&m).run();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(out.stdout, m);
        assert!(String::from_utf8_lossy(&out.stderr).contains("no signing key for someone@unknown.example"));
        // Every signature verifies (our verifier, keys from the genkey records).
        let out = dir.cmd().args(["verify", "--require", "all"]).args(zones(&dir)).args(&signed).run();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
        if dkimpy_available() {
            let (ok, rep) = dkimpy_verify(&dir.join("keys"), &[], &signed);
            assert!(ok && rep.matches(" pass ").count() == 7, "{rep}");
        }
    }
);

dktest!(
    /// A plain SigningTable: address, then domain, then parent domains (.example.net), then *.
    plain_signing_table_lookup_order,
    |dir| {
        let keys = three_keys(&dir);
        dir.write(
            "kt",
            format!("com example.com:s2026:{}\nnet sub.example.net:k1:{}\n", keys[0].2.display(), keys[2].2.display()).as_bytes(),
        );
        dir.write("st", b"joe@example.com net\nexample.com com\n.example.net net\n");
        for (from, want) in [
            ("joe@example.com", Some("sub.example.net")),
            ("ann@example.com", Some("example.com")),
            ("x@deep.sub.example.net", Some("sub.example.net")),
            ("x@example.net", None),
        ] {
            let out = dir.cmd().args(["sign", "--key-table", "kt", "--signing-table", "st"]).stdin(&msg(from)).ok();
            assert_eq!(sigs(&out).first().map(|s| s.0.as_str()), want, "{from}");
        }
    }
);

dktest!(
    /// opendkim.conf with Domain/Selector/KeyFile and SubDomains, milter-only keys ignored,
    /// Canonicalization taken from the file; unknown keys refused with the line number.
    opendkim_conf_domain_mode,
    |dir| {
        let keys = three_keys(&dir);
        dir.write(
            "opendkim.conf",
            format!(
                "# from a Debian box\nSyslog yes\nUMask 007\nSocket local:/run/opendkim/opendkim.sock\nUserID opendkim\n\
                 Domain csl:example.com,example.edu\nSelector s2026\nKeyFile {}\nSubDomains yes\n\
                 Canonicalization relaxed/simple\nOversignHeaders From,Subject\nMode sv\n",
                keys[0].2.display()
            )
            .as_bytes(),
        );
        let out = dir.cmd().args(["sign", "-v", "--config", "opendkim.conf"]).stdin(&msg("a@lists.example.com")).run();
        assert_eq!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("opendkim.conf:2: Syslog is read by `dkimpress milter` only; ignored here"), "{err}");
        let text = String::from_utf8_lossy(&out.stdout).replace("\n\t", " ");
        assert!(text.contains("c=relaxed/simple;") && text.contains("d=example.com;"), "{text}");
        assert!(text.contains("h=from:from:subject:subject:to;"), "{text}");
        let p = dir.write("o.eml", &out.stdout);
        let v = dir.cmd().args(["verify"]).args(zones(&dir)).args([&p]).run();
        assert_eq!(v.status.code(), Some(0), "{}", String::from_utf8_lossy(&v.stdout));
        // Not in the Domain list: unsigned.
        let out = dir.cmd().args(["sign", "--config", "opendkim.conf"]).stdin(&msg("a@example.org")).ok();
        assert!(sigs(&out).is_empty());
        dir.write("bad.conf", b"Domain example.com\nSelector s\nKeyFile k\nSignatureLimit 5\n");
        let out = dir.cmd().args(["sign", "--config", "bad.conf"]).stdin(&msg("a@example.com")).run();
        assert_eq!(out.status.code(), Some(78));
        assert!(String::from_utf8_lossy(&out.stderr).contains("bad.conf:4: unknown key \"SignatureLimit\""));
    }
);

dktest!(
    /// Keys kept in a real PostgreSQL server (unix socket, views as a mail database exposes
    /// them): several domains signed from it in pipe and bulk mode, testkey over the table,
    /// the password never shown, and an unreachable database gives exit 75.
    keys_in_postgresql,
    |dir| {
        let Some(pg) = PgServer::start() else { return };
        let keys = three_keys(&dir);
        pg.mail_database();
        for (domain, sel, path) in &keys {
            let pem = std::fs::read_to_string(path).unwrap();
            pg.sql(
                "mail",
                &format!("INSERT INTO dkim_keys VALUES ('{domain}-key', '{domain}', '{sel}', '{pem}'); INSERT INTO dkim_signing VALUES ('{domain}', '{domain}-key');"),
            );
        }
        pg.sql("mail", "INSERT INTO dkim_signing VALUES ('ceo@example.com', 'example.org-key')");
        let host = pg.dsn_host();
        let kt = format!("dsn:pgsql://dkim:s3cr=40t@{host}/mail/table=dkim_key_table?keycol=identifier?datacol=domain,selector,key");
        let st = format!("dsn:pgsql://dkim:s3cr=40t@{host}/mail/table=dkim_signing_table?keycol=pattern?datacol=identifier");
        let base = ["sign".to_string(), "--key-table".into(), kt.clone(), "--signing-table".into(), st.clone()];
        for (from, want) in [("a@example.com", "example.com"), ("ceo@example.com", "example.org"), ("b@sub.example.net", "sub.example.net")] {
            let out = dir.cmd().args(&base).stdin(&msg(from)).ok();
            assert_eq!(sigs(&out).first().map(|s| s.0.as_str()), Some(want), "{from}");
        }
        // Bulk: one query per distinct key, every message signed for its own domain.
        let mut mbox = Vec::new();
        for i in 0..60 {
            let from = ["a@example.com", "b@example.org", "c@sub.example.net", "d@nowhere.example"][i % 4];
            mbox.extend_from_slice(b"From x Sat Nov 21 10:00:00 2026\n");
            mbox.extend_from_slice(&msg(from));
            mbox.push(b'\n');
        }
        let input = dir.write("in.mbox", &mbox);
        let out = dir.cmd().args(&base).args(["-q", "--report", "json", "-o", "out.mbox"]).args([&input]).run();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((r["signed"].as_u64(), r["passed_through"].as_u64()), (Some(45), Some(15)), "{r}");
        assert!(r["problems"][0]["reason"].as_str().unwrap().contains("no signing key for d@nowhere.example"));
        let v = dir.cmd().args(["verify", "-q"]).args(zones(&dir)).args(["out.mbox"]).run();
        assert_eq!(String::from_utf8_lossy(&v.stdout).lines().filter(|l| l.contains(": pass |")).count(), 45);
        if dkimpy_available() {
            let (ok, rep) = dkimpy_verify(&dir.join("keys"), &["--mbox"], &[dir.join("out.mbox")]);
            assert!(ok && rep.matches(" pass ").count() == 45, "{rep}");
        }
        // testkey over the database table.
        let out = dir.cmd().args(["testkey", "--key-table", &kt]).args(zones(&dir)).run();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert_eq!(text.matches(": OK (").count(), 3, "{text}");
        // A wrong table: the error names the data set but never the password.
        let bad = kt.replace("dkim_key_table", "no_such_table");
        let out = dir.cmd().args(["sign", "--key-table", &bad, "--signing-table", &st]).stdin(&msg("a@example.com")).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("s3cr") && err.contains("****"), "{err}");
        // The server goes away: temporary failure, so that an MTA retries.
        pg.stop();
        let out = dir.cmd().args(&base).stdin(&msg("a@example.com")).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{err}");
        assert!(out.stdout.is_empty() && !err.contains("s3cr"), "{err}");
    }
);

dktest!(
    /// testkey reports a matching record, a mismatch and a missing record.
    testkey_reports,
    |dir| {
        let keys = three_keys(&dir);
        let k0 = keys[0].2.display().to_string();
        let k1 = keys[1].2.display().to_string();
        let z = zones(&dir);
        let cases = [
            (vec!["-d", "example.com", "-s", "s2026", "-k", &k0], 0, "OK (s2026._domainkey.example.com, rsa 2048 bits)"),
            (vec!["-d", "example.com", "-s", "s2026", "-k", &k1], 1, "MISMATCH"),
            (vec!["-d", "example.com", "-s", "nope", "-k", &k0], 1, "no TXT record at nope._domainkey.example.com"),
        ];
        for (args, code, want) in cases {
            let out = dir.cmd().args(["testkey"]).args(&args).args(&z).run();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(code), "{text}");
            assert!(text.contains(want), "{text}");
        }
    }
);

dktest!(
    /// Issue 12, RFC 8616: domains written as U-labels in -d, the KeyTable, the SigningTable or
    /// From are signed as A-labels, and what is signed verifies under the A-label name.
    idn_domains_sign_select_and_verify_as_a_labels,
    |dir| {
        let key = crate::util::testdata("keys/test.private");
        std::fs::create_dir_all(dir.join("kd")).unwrap();
        std::fs::copy(crate::util::testdata("keys/test.txt"), dir.join("kd/test._domainkey.xn--bcher-kva.example.txt"))
            .unwrap();
        let verify = |signed: &[u8]| {
            let out = dir.cmd().args(["verify", "--key-dir", "kd"]).stdin(signed).run();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let msg = dir.write("idn.eml", "From: J\u{f6}rg <j@b\u{fc}cher.example>\nSubject: s\n\nbody\n".as_bytes());
        let signed = dir.cmd().args(["sign", "-d", "b\u{fc}cher.example", "-s", "test", "-k"]).arg(&key).arg(&msg).ok();
        assert!(String::from_utf8_lossy(&signed).contains("d=xn--bcher-kva.example;"));
        assert!(verify(&signed).starts_with("stdin: pass | pass d=xn--bcher-kva.example s=test"));

        dir.write("KeyTable", format!("k1 b\u{fc}cher.example:test:{}\n", key.display()).as_bytes());
        dir.write("refile", "*@b\u{fc}cher.example k1\n".as_bytes());
        dir.write("plain", "xn--bcher-kva.example k1\n".as_bytes());
        // Either form in From, either form in the SigningTable.
        for (from, table) in [
            ("j@b\u{fc}cher.example", "refile:refile"),
            ("j@xn--bcher-kva.example", "refile:refile"),
            ("j@b\u{fc}cher.example", "plain"),
        ] {
            let m = dir.write("m.eml", format!("From: {from}\nSubject: s\n\nbody\n").as_bytes());
            let signed = dir.cmd().args(["sign", "--key-table", "KeyTable", "--signing-table", table]).arg(&m).ok();
            let text = String::from_utf8_lossy(&signed);
            assert!(text.contains("d=xn--bcher-kva.example;"), "{from} {table}: {text}");
            assert!(verify(&signed).starts_with("stdin: pass"), "{from} {table}");
        }
    }
);

dktest!(
    /// OpenDKIM's `%` KeyTable domain (sign as the author's domain, one key for many domains)
    /// and the SigningTable's signer field (`keyname:signer` -> `i=`; left out when it is not
    /// in `d=`, as opendkim.conf(5) says). The `%` signatures verify against records published
    /// at each domain.
    percent_domain_and_signer_field,
    |dir| {
        let key = dir.genkey("shared", &["--type", "ed25519"]);
        let kt = dir.write("keytable", format!("shared %:shared:{}\n", key.display()).as_bytes());
        let st = dir.write(
            "signingtable",
            b"*@example.org shared:news@example.org\n*@example.net shared:someone@elsewhere.example\n*@example.com shared\n",
        );
        let run = |from: &str| {
            dir.cmd()
                .args(["sign", "--key-table", &format!("refile:{}", kt.display())])
                .args(["--signing-table", &format!("refile:{}", st.display()), "--timestamp", "1700000000"])
                .stdin(&msg(from))
                .ok()
        };
        for (from, d, i) in [
            ("a@example.org", "example.org", Some("news@example.org")),
            ("b@example.net", "example.net", None),
            ("c@example.com", "example.com", None),
        ] {
            let out = run(from);
            assert_eq!(sigs(&out), [(d.to_string(), "shared".to_string())], "{from}");
            let text = String::from_utf8_lossy(&out).replace("\n\t", " ");
            assert_eq!(text.contains(" i="), i.is_some(), "{from}: {text}");
            if let Some(i) = i {
                assert!(text.contains(&format!(" i={i};")), "{text}");
            }
            // The record of the shared key, published at this domain.
            let rec = std::fs::read_to_string(dir.join("shared.txt")).unwrap();
            let zone = dir.write(&format!("{d}.zone"), format!("$ORIGIN {d}.\n{rec}").as_bytes());
            let v = dir.cmd().args(["verify", "--dns-zone"]).arg(&zone).stdin(&out).run();
            assert_eq!(v.status.code(), Some(0), "{from}: {}", String::from_utf8_lossy(&v.stdout));
        }
    }
);

/// A TCP server on 127.0.0.1 that accepts connections and never answers.
fn silent_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = vec![];
        for c in l.incoming() {
            held.push(c);
        }
    });
    port
}

dktest!(
    /// A PostgreSQL server that accepts but never answers defers (75) after
    /// --db-timeout in pipe mode, in bulk mode (it was 65: the run went on unsigned) and as
    /// the source of `Domain`; a DSN without a user is a configuration error (78).
    database_hang_and_errors_defer,
    |dir| {
        let port = silent_server();
        let dsn = |t: &str| format!("dsn:pgsql://dkim@{port}+127.0.0.1/mail/table={t}?keycol=k?datacol=v");
        let started = Instant::now();
        let args = ["--key-table".to_string(), dsn("keys"), "--signing-table".to_string(), dsn("signers")];
        let out = dir.cmd().args(["sign", "--db-timeout", "1"]).args(&args).stdin(&message()).run();
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        let data = mbox(3);
        let mb = dir.write("a.mbox", &data);
        let out = dir.cmd().args(["sign", "-q", "--in-place", "--db-timeout", "1"]).args(&args).arg(&mb).run();
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        assert_eq!(std::fs::read(&mb).unwrap(), data);
        assert!(leftovers(dir.path()).is_empty());
        let k = key(&dir);
        let conf = dir.write(
            "dkim.conf",
            format!("Domain {}\nSelector test\nKeyFile {}\n", dsn("domains"), k.display()).as_bytes(),
        );
        let out = dir.cmd().args(["sign", "--db-timeout", "1", "--config"]).arg(&conf).stdin(&message()).run();
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

        let userless = "dsn:pgsql://127.0.0.1/mail/table=t?keycol=k?datacol=v";
        let out = dir.cmd().args(["sign", "--key-table", userless, "--signing-table", userless]).stdin(&message()).run();
        assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
        assert!(stderr(&out).contains("no user"));
    }
);

dktest!(
    /// MinimumKeyBits is a verification setting in OpenDKIM; it does not refuse our
    /// own signing key (which deferred all mail).
    minimum_key_bits_does_not_refuse_signing,
    |dir| {
        let k = key(&dir);
        let conf = dir.write(
            "dkim.conf",
            format!("Domain example.com\nSelector test\nKeyFile {}\nMinimumKeyBits 4096\n", k.display()).as_bytes(),
        );
        let out = dir.cmd().args(["sign", "--config"]).arg(&conf).stdin(&message()).ok();
        assert!(out.starts_with(b"DKIM-Signature:"));
    }
);
