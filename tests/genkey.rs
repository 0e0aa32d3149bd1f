//! `dkimpress genkey`: files, modes, the zone record, refusals.

use std::os::unix::fs::PermissionsExt as _;

/// The quoted strings of a zone-file record.
fn strings(record: &str) -> Vec<String> {
    record.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

dktest!(rsa_files_modes_and_record, |dir| {
    let out = dir
        .cmd()
        .args(["genkey", "-d", "example.com", "-s", "mail", "-r", "-t", "--nosubdomains", "-h", "sha256"])
        .ok();
    let private = dir.join("mail.private");
    let txt = std::fs::read_to_string(dir.join("mail.txt")).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), txt, "the record is also printed");
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    let pem = std::fs::read_to_string(&private).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(txt.starts_with("mail._domainkey\tIN\tTXT\t( \"v=DKIM1; h=sha256; k=rsa; s=email; t=y:s; \""), "{txt}");
    assert!(txt.trim_end().ends_with("; ----- DKIM key mail for example.com"));
    let parts = strings(&txt);
    assert!(parts.iter().all(|s| s.len() <= 255), "{parts:?}");
    let value = parts.concat();
    let p = value.split("p=").nth(1).unwrap();
    // 2048-bit SubjectPublicKeyInfo: 294 octets, 392 base64 characters.
    assert_eq!(p.len(), 392);
});

dktest!(ed25519_record_is_raw_key, |dir| {
    dir.cmd().args(["genkey", "-d", "example.com", "-s", "ed", "--type", "ed25519", "-a"]).ok();
    let txt = std::fs::read_to_string(dir.join("ed.txt")).unwrap();
    assert!(txt.starts_with("ed._domainkey.example.com.\tIN\tTXT"), "{txt}");
    let value = strings(&txt).concat();
    assert!(value.starts_with("v=DKIM1; h=sha256; k=ed25519; p="), "{value}");
    // Raw 32-octet key (RFC 8463 §4): 44 base64 characters.
    assert_eq!(value.split("p=").nth(1).unwrap().len(), 44);
});

dktest!(rsa_4096_record_is_split, |dir| {
    dir.cmd().args(["genkey", "-s", "big", "-b", "4096"]).ok();
    let parts = strings(&std::fs::read_to_string(dir.join("big.txt")).unwrap());
    assert!(parts.len() >= 4 && parts.iter().all(|s| s.len() <= 255), "{parts:?}");
});

dktest!(refuses_overwrite_bad_size_and_bad_names, |dir| {
    dir.cmd().args(["genkey", "-s", "k", "--type", "ed25519"]).ok();
    let before = std::fs::read(dir.join("k.private")).unwrap();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["-s", "k", "--type", "ed25519"], 73, "already exists"),
        (vec!["-s", "n", "-b", "512"], 78, "not supported"),
        (vec!["-s", "bad selector"], 78, "selector"),
        (vec!["-s", "n", "-d", "bad domain"], 78, "domain"),
        (vec!["-s", "n", "-D", "/nonexistent/dir"], 73, "no such directory"),
        (vec!["-s", "n", "--type", "dsa"], 64, "dsa"),
    ];
    for (args, code, want) in cases {
        let out = dir.cmd().args(["genkey"]).args(&args).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(dir.join("k.private")).unwrap(), before, "existing key untouched");
    dir.cmd().args(["genkey", "-s", "k", "--type", "ed25519", "--force"]).ok();
    assert_ne!(std::fs::read(dir.join("k.private")).unwrap(), before);
});

dktest!(rsa_1024_key_is_made_and_signs, |dir| {
    let key = dir.genkey("old", &["-b", "1024"]);
    let out = dir
        .cmd()
        .args(["sign", "-d", "example.com", "-s", "old", "-k"])
        .args([&key])
        .stdin(b"From: a@example.com\n\nx\n")
        .ok();
    let text = String::from_utf8_lossy(&out).replace("\n\t", "");
    let b = text.split("b=").last().unwrap().lines().next().unwrap();
    // 1024-bit signature: 128 octets, 172 base64 characters.
    assert_eq!(b.len(), 172, "{b}");
});

dktest!(
    /// Issue 12: `h=sha256` by default (Debian's opendkim-genkey), and testkey warns about
    /// testing mode and short RSA keys.
    default_hash_and_testkey_warnings,
    |dir| {
        let out = dir.cmd().args(["genkey", "-d", "example.com", "-s", "plain", "--type", "ed25519"]).ok();
        assert!(String::from_utf8_lossy(&out).contains("\"v=DKIM1; h=sha256; k=ed25519; "), "{}", String::from_utf8_lossy(&out));
        let out = dir.cmd().args(["genkey", "-d", "example.com", "-s", "none", "-h", "", "--type", "ed25519"]).ok();
        assert!(!String::from_utf8_lossy(&out).contains("h="));
        dir.cmd().args(["genkey", "-d", "example.com", "-s", "weak", "-b", "1024", "-t"]).ok();
        let out = dir
            .cmd()
            .args(["testkey", "-d", "example.com", "-s", "weak", "-k", "weak.private", "--dns-zone", "weak.txt"])
            .ok();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("OK") && text.contains("testing mode t=y") && text.contains("1024 bits"), "{text}");
    }
);

dktest!(
    /// A key record holding a terminal escape sequence (in n=, then in k=) is printed by
    /// `testkey -v`, and quoted in the reason it fails for, with the control characters
    /// replaced: the record comes from the DNS.
    testkey_record_escapes_do_not_reach_the_terminal,
    |dir| {
        dir.cmd().args(["genkey", "-d", "example.com", "-s", "esc", "--type", "ed25519"]).ok();
        let zone = std::fs::read_to_string(dir.join("esc.txt")).unwrap();
        std::fs::write(dir.join("esc.txt"), zone.replacen("v=DKIM1; ", "v=DKIM1; n=\x1b[2J\x07; ", 1)).unwrap();
        let out = dir.cmd().args(["testkey", "-v", "-d", "example.com", "-s", "esc", "-k", "esc.private", "--dns-zone", "esc.txt"]).run();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("record: v=DKIM1; n=?[2J?;"), "{text:?}");
        assert!(!text.bytes().any(|b| b.is_ascii_control() && b != b'\n'), "{text:?}");
        // A record that fails: the reason quotes it, replaced the same way.
        std::fs::write(dir.join("esc.txt"), zone.replacen("k=ed25519", "k=ed\x1b[2J\x07", 1)).unwrap();
        for report in ["text", "json"] {
            let out = dir
                .cmd()
                .args(["testkey", "--report", report, "-d", "example.com", "-s", "esc", "-k", "esc.private"])
                .args(["--dns-zone", "esc.txt"])
                .run();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("unknown key type") && text.contains("?[2"), "{text:?}");
            assert!(!text.bytes().any(|b| b.is_ascii_control() && b != b'\n'), "{text:?}");
        }
    }
);

dktest!(
    /// Issue 12: one flag name for a thing across commands: `--type` for the key type (bench
    /// still reads `--algorithms`), `--report json` and `-q`/`-v` wherever there is a report.
    flags_agree_across_commands,
    |dir| {
        assert!(dir.cmd().args(["genkey", "-d", "example.com", "-s", "quiet", "-q"]).ok().is_empty());
        let out = dir.cmd().args(["genkey", "-d", "example.com", "-s", "loud", "-v", "--type", "ed25519"]).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("publish as TXT at loud._domainkey.example.com"), "{err}");
        let testkey = |extra: &[&str]| {
            dir.cmd()
                .args(["testkey", "-d", "example.com", "-s", "quiet", "-k", "quiet.private", "--dns-zone", "quiet.txt"])
                .args(extra)
                .run()
        };
        let out = testkey(&["--report", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((v["result"].as_str(), v["name"].as_str()), (Some("ok"), Some("quiet._domainkey.example.com")));
        assert!(v["record"].as_str().unwrap().starts_with("v=DKIM1; h=sha256; k=rsa; p="), "{v}");
        assert!(testkey(&["-q"]).stdout.is_empty());
        assert!(String::from_utf8_lossy(&testkey(&["-v"]).stdout).contains("\n  record: v=DKIM1;"));
        let keys = crate::util::testdata("keys");
        let signed = dir
            .cmd()
            .args(["sign", "-d", "example.com", "-s", "test-ed", "-k"])
            .arg(keys.join("test-ed.private"))
            .arg(crate::util::testdata("messages/plain-lf.eml"))
            .ok();
        let out = dir.cmd().args(["verify", "-v", "--dns-zone"]).arg(keys.join("test-ed.txt")).stdin(&signed).run();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("stdin: pass | pass d=example.com s=test-ed a=ed25519-sha256 i=@example.com"), "{text}");
        for flag in ["--type", "--algorithms"] {
            let out = dir
                .cmd()
                .args(["bench", "--count", "2", "--seconds", "0.01", "-j", "1", "-q", "--report", "json", flag, "ed25519"])
                .run();
            assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
            let figs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let names: Vec<&str> = figs.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
            assert!(names.iter().any(|n| n.contains("Ed25519")) && !names.iter().any(|n| n.contains("RSA")), "{names:?}");
        }
    }
);
