//! ARC: `dkimpress verify --arc` over the vectors of testdata/arc (sealed by dkimpy and
//! Mail::DKIM, expected results from RFC 8617) through every way verify reads mail, the chain
//! result in the text line, the JSON report and Authentication-Results; and `dkimpress seal`,
//! whose sets dkimpy must accept.

use crate::util::{dkimpy_available, key_args, python, root, set_mode, stderr, testdata, Dir};
use std::path::{Path, PathBuf};

/// (file, expected chain result) from testdata/arc/expected.tsv.
fn vectors() -> Vec<(PathBuf, String)> {
    let table = std::fs::read_to_string(testdata("arc/expected.tsv")).unwrap();
    let v: Vec<(PathBuf, String)> = table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            (testdata(&format!("arc/{}", cols.next().unwrap())), cols.next().unwrap().to_string())
        })
        .collect();
    assert!(v.len() >= 19, "{} vectors", v.len());
    v
}

pub(crate) fn key_dir() -> Vec<String> {
    vec!["--key-dir".into(), testdata("arc/keys").display().to_string()]
}

fn json(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

dktest!(
    /// Each vector file gives its expected `arc` in JSON, whatever its DKIM result (the exit
    /// status is DKIM's: these messages carry no DKIM-Signature, so 1).
    verify_arc_gives_each_vector_its_result,
    |dir| {
        let vectors = vectors();
        let o = dir
            .cmd()
            .args(["verify", "--arc", "--report", "json", "-j", "2"])
            .args(key_dir())
            .args(vectors.iter().map(|(f, _)| f))
            .run();
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
        let lines = json(&o.stdout);
        assert_eq!(lines.len(), vectors.len());
        for ((file, want), line) in vectors.iter().zip(&lines) {
            assert_eq!(line["file"], file.display().to_string());
            assert_eq!(line["arc"], want.as_str(), "{}: {line}", file.display());
        }
        let stderr = String::from_utf8_lossy(&o.stderr);
        let passes = vectors.iter().filter(|(_, w)| w == "pass").count();
        assert!(stderr.contains("ARC chains: ") && stderr.contains(&format!("{passes} pass")), "{stderr}");
    }
);

dktest!(
    /// The same vectors as one mbox (mboxrd, quoted where needed), checked on two threads, come
    /// back in order with the same results; stdin gives the single-message result.
    verify_arc_reads_mboxes_and_stdin,
    |dir| {
        let vectors = vectors();
        let files: Vec<&Path> = vectors.iter().map(|(f, _)| f.as_path()).collect();
        let mbox = mbox_of(&files);
        let path = dir.write("arc.mbox", &mbox);
        let out = dir.cmd().args(["verify", "--arc", "--report", "json", "-j", "2"]).args(key_dir()).arg(&path).run();
        let lines = json(&out.stdout);
        assert_eq!(lines.len(), vectors.len());
        for ((file, want), line) in vectors.iter().zip(&lines) {
            assert_eq!(line["arc"], want.as_str(), "{} in the mbox: {line}", file.display());
        }
        let (file, _) = vectors.iter().find(|(f, _)| f.ends_with("pass-i3-alternating.eml")).unwrap();
        let out = dir.cmd().args(["verify", "--arc"]).args(key_dir()).stdin(&std::fs::read(file).unwrap()).run();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("stdin: none | arc=pass i=3 d="), "{text}");
    }
);

dktest!(
    /// `--add-ar` with `--arc`: the chain result follows the DKIM results in our
    /// Authentication-Results field, with the reason when it failed; without `--arc`, no arc=.
    add_ar_carries_the_chain_result,
    |dir| {
        let pass = std::fs::read(testdata("arc/pass-i3-alternating.eml")).unwrap();
        let out = dir.cmd().args(["verify", "--arc", "--add-ar", "verifier.example"]).args(key_dir()).stdin(&pass).ok();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("Authentication-Results: verifier.example;\r\n\tdkim=none;\r\n\tarc=pass header.oldest-pass=0\r\n"), "{text}");
        assert!(out.ends_with(&pass));
        let bad = std::fs::read(testdata("arc/fail-wrong-key.eml")).unwrap();
        let out = dir.cmd().args(["verify", "--arc", "--add-ar", "verifier.example"]).args(key_dir()).stdin(&bad).ok();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("Authentication-Results: verifier.example;\r\n\tdkim=none;\r\n\tarc=fail reason=\""), "{text}");
        let out = dir.cmd().args(["verify", "--add-ar", "verifier.example"]).args(key_dir()).stdin(&pass).ok();
        assert!(String::from_utf8_lossy(&out).starts_with("Authentication-Results: verifier.example;\r\n\tdkim=none\r\nARC-Seal:"));
    }
);

/// The vectors as one mboxrd archive (a From line before each, `>` before quoted lines).
fn mbox_of(files: &[&Path]) -> Vec<u8> {
    let mut mbox = Vec::new();
    for file in files {
        let data = std::fs::read(file).unwrap();
        mbox.extend_from_slice(b"From arc@example.com Thu Dec  3 12:00:00 2026\n");
        for line in data.split_inclusive(|&b| b == b'\n') {
            if line.iter().skip_while(|&&b| b == b'>').take(5).eq(b"From ".iter()) {
                mbox.push(b'>');
            }
            mbox.extend_from_slice(line);
        }
        if !data.ends_with(b"\n") {
            mbox.push(b'\n');
        }
        mbox.push(b'\n');
    }
    mbox
}

/// `scripts/arc-peer verify --peers PEER --expect pass` over `input`: whether every message
/// passed with that peer, and what it printed.
pub(crate) fn peer_passes(peer: &str, input: &Path, mboxrd: bool) -> (bool, String) {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(root().join("scripts/arc-peer")).args(["verify", "--peers", peer, "--expect", "pass"]);
    if mboxrd {
        cmd.arg("--mboxrd");
    }
    let out = cmd.arg(input).arg(testdata("arc/keys")).output().expect("run scripts/arc-peer");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Whether Perl Mail::DKIM (with its ARC verifier) is there for scripts/arc-peer. Missing, the
/// tests say so loudly and judge with dkimpy alone, unless DKIMPRESS_REQUIRE_MAILDKIM=1
/// (scripts/test sets it when the module is installed): then a peer that vanished fails.
pub(crate) fn mail_dkim_available() -> bool {
    let ok = std::process::Command::new("perl")
        .args([
            "-MMail::DKIM::ARC::Verifier",
            "-MNet::DNS",
            "-MCrypt::OpenSSL::RSA",
            "-MMail::AuthenticationResults::Parser",
            "-e",
            "1",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("DKIMPRESS_REQUIRE_MAILDKIM").as_deref() != Ok("1"),
            "Mail::DKIM is required (DKIMPRESS_REQUIRE_MAILDKIM=1) but perl cannot load it"
        );
        eprintln!("\n!!! SKIPPED: Perl Mail::DKIM is not installed (apt-get install libmail-dkim-perl); ARC sets judged by dkimpy only !!!\n");
    }
    ok
}

/// `-d example.com -s ed -k KEY` with the shipped Ed25519 key copied (mode 0600) into `dir`.
fn ed_key_args(dir: &Dir) -> Vec<String> {
    let p = dir.write("ed.private", &std::fs::read(testdata("keys/test-ed.private")).unwrap());
    set_mode(&p, 0o600);
    vec!["-d".into(), "example.com".into(), "-s".into(), "ed".into(), "-k".into(), p.display().to_string()]
}

dktest!(
    /// `seal` adds set 1 to a message without ARC (CRLF and LF-stored), set 4 to a chain of
    /// three, with RSA and Ed25519 keys, one message at a time and over an mbox on two threads;
    /// our validator, dkimpy and Mail::DKIM (through scripts/arc-peer; the RSA seals only for
    /// Mail::DKIM, and for the Ed25519 ones dkimpy with Ed25519 allowed, as neither stock ARC
    /// verifier takes Ed25519) say pass.
    seal_adds_sets_the_peers_accept,
    |dir| {
        let seal = |keys: &[String], input: &Path, out: &str| {
            let o = dir
                .cmd()
                .args(["seal", "--authserv-id", "mx.example.com"])
                .args(keys)
                .args(key_dir())
                .arg(input)
                .arg("-o")
                .arg(dir.join(out))
                .run();
            assert!(o.status.success(), "{}", stderr(&o));
            dir.join(out)
        };
        let rsa = key_args(&dir);
        let ed = ed_key_args(&dir);
        let cases = [
            (&rsa, testdata("arc/no-arc.eml"), "1"),
            (&rsa, testdata("messages/plain-lf.eml"), "1"),
            (&rsa, testdata("arc/pass-i3-alternating.eml"), "4"),
            (&ed, testdata("arc/pass-i3-alternating.eml"), "4"),
            (&ed, testdata("arc/no-arc.eml"), "1"),
        ];
        let mut sealed = vec![];
        for (n, (keys, input, instance)) in cases.iter().enumerate() {
            let out = seal(keys, input, &format!("sealed-{n}.eml"));
            let o = dir.cmd().args(["verify", "--arc"]).args(key_dir()).arg(&out).run();
            let line = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(line.contains(&format!("| arc=pass i={instance} d=example.com")), "{}: {line}", input.display());
            sealed.push((keys[3] == "ed", out));
        }
        let mbox = dir.write(
            "in.mbox",
            &mbox_of(&[&testdata("arc/no-arc.eml"), &testdata("arc/pass-i3-alternating.eml"), &testdata("arc/pass-i1-rsa-maildkim.eml")]),
        );
        let o = dir
            .cmd()
            .args(["seal", "-j", "2", "--verify", "--authserv-id", "mx.example.com"])
            .args(&rsa)
            .args(key_dir())
            .arg(&mbox)
            .arg("-o")
            .arg(dir.join("out.mbox"))
            .run();
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&std::fs::read(dir.join("out.mbox")).unwrap()).replace('\r', "");
        // --verify: the new AAR holds our own results.
        assert!(text.contains("ARC-Authentication-Results: i=4; mx.example.com;\n\tdkim=none;\n\tarc=pass header.oldest-pass=0\n"), "{text}");
        let o = dir.cmd().args(["verify", "--arc", "--report", "json"]).args(key_dir()).arg(dir.join("out.mbox")).run();
        let arcs: Vec<String> = json(&o.stdout).iter().map(|l| l["arc"].as_str().unwrap().to_string()).collect();
        assert_eq!(arcs, ["pass", "pass", "pass"]);
        if !dkimpy_available() {
            return;
        }
        for (is_ed, file) in &sealed {
            let (ok, text) = peer_passes(if *is_ed { "dkimpy-ed25519" } else { "dkimpy" }, file, false);
            assert!(ok, "{}: {text}", file.display());
        }
        let (ok, text) = peer_passes("dkimpy", &dir.join("out.mbox"), true);
        assert!(ok, "{text}");
        // Mail::DKIM has no Ed25519: it judges the RSA seals over RSA chains.
        if mail_dkim_available() {
            for (_, file) in sealed.iter().filter(|(is_ed, _)| !is_ed) {
                let (ok, text) = peer_passes("mail-dkim", file, false);
                assert!(ok, "{}: {text}", file.display());
            }
            let (ok, text) = peer_passes("mail-dkim", &dir.join("out.mbox"), true);
            assert!(ok, "{text}");
        }
    }
);

dktest!(
    /// What RFC 8617 says a sealer must not do or must say: a chain whose newest seal has
    /// cv=fail gets nothing (§5.1.1: the message goes on unchanged, exit 0); 50 sets take no
    /// 51st (§4.2.1: exit 65, nothing written); a broken chain is sealed with cv=fail; the AAR
    /// carries only our authserv-id's results; DKIM-only options are refused (64); a key of
    /// the chain that cannot be looked up now is a temporary failure (75, nothing written).
    seal_follows_rfc_8617_rules,
    |dir| {
        let rsa = key_args(&dir);
        let run = |extra: &[&str], input: &[u8]| {
            dir.cmd().args(["seal", "--authserv-id", "mx.example.com"]).args(&rsa).args(extra).stdin(input).run()
        };
        let keys = key_dir();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let closed = std::fs::read(testdata("arc/fail-cv-fail-i2.eml")).unwrap();
        let o = run(&keys, &closed);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(o.stdout, closed);
        assert!(stderr(&o).contains("cv=fail at i=2"), "{}", stderr(&o));

        let full = std::fs::read(testdata("arc/pass-50-sets.eml")).unwrap();
        let o = run(&keys, &full);
        assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
        assert!(o.stdout.is_empty());

        let broken = std::fs::read(testdata("arc/fail-wrong-key.eml")).unwrap();
        let o = run(&keys, &broken);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.starts_with("ARC-Seal: i=2; a=rsa-sha256; cv=fail;"), "{text}");

        let msg = b"Authentication-Results: other.example; spf=pass smtp.mailfrom=a@example.org\r\n\
Authentication-Results: mx.example.com; dkim=pass header.d=example.org\r\n\
From: a@example.org\r\nSubject: ar\r\n\r\nbody\r\n";
        let o = run(&keys, msg);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("ARC-Authentication-Results: i=1; mx.example.com;\r\n\tdkim=pass header.d=example.org\r\n"), "{text}");
        assert!(!text.contains("i=1; mx.example.com; spf"), "{text}");

        for bad in [&["-x", "3600"][..], &["--headers", "from:arc-seal"], &["--strip-own"]] {
            assert_eq!(run(bad, msg).status.code(), Some(64), "{bad:?}");
        }
        let chain = std::fs::read(testdata("arc/pass-i3-alternating.eml")).unwrap();
        let o = run(&["--dns-server", "127.0.0.1:9", "--dns-timeout", "0.3"], &chain);
        assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
);
