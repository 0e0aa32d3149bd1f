//! `dkimpress sign` in pipe mode: output layout, exit codes (and `filter`'s on a usage error),
//! key checks, key material kept out of errors, golden signatures.

use crate::util::{self, message, stderr, testdata, Dir};
use std::os::unix::fs::PermissionsExt as _;

const MSG: &[u8] = b"From: alice@example.com\nTo: bob@example.org\nSubject: hi\n\nhello\n";

/// The shipped test keys, copied with mode 0600 (git does not keep modes).
fn keys(dir: &Dir) -> (String, String) {
    let mut out = vec![];
    for name in ["test.private", "test-ed.private"] {
        let p = dir.join(name);
        std::fs::copy(testdata(&format!("keys/{name}")), &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        out.push(p.display().to_string());
    }
    (out[0].clone(), out[1].clone())
}

dktest!(output_is_headers_then_original_bytes, |dir| {
    let (rsa, ed) = keys(&dir);
    let out = dir
        .cmd()
        .args(["sign", "-d", "example.com", "-s", "test", "-k", &rsa, "-s", "test-ed", "-k", &ed])
        .stdin(MSG)
        .ok();
    assert!(out.ends_with(MSG));
    let added = String::from_utf8(out[..out.len() - MSG.len()].to_vec()).unwrap();
    assert_eq!(added.matches("DKIM-Signature:").count(), 2);
    assert!(added.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"));
    assert!(added.contains("\nDKIM-Signature: v=1; a=ed25519-sha256;"));
    assert!(!added.contains('\r'), "LF message gets LF header fields");
    for line in added.lines() {
        assert!(line.len() < 78, "line too long: {line:?}");
    }
});

dktest!(crlf_message_gets_crlf_header, |dir| {
    let (rsa, _) = keys(&dir);
    let crlf = String::from_utf8_lossy(MSG).replace('\n', "\r\n").into_bytes();
    let out = dir.cmd().args(["sign", "-d", "example.com", "-s", "test", "-k", &rsa]).stdin(&crlf).ok();
    let added = &out[..out.len() - crlf.len()];
    let lf = added.iter().filter(|&&b| b == b'\n').count();
    let crlfs = added.windows(2).filter(|w| w == b"\r\n").count();
    assert!(lf > 2 && lf == crlfs, "every line end of the added field is CRLF");
});

dktest!(input_file_and_output_file, |dir| {
    let (rsa, _) = keys(&dir);
    let input = dir.write("in.eml", MSG);
    let o =
        dir.cmd().args(["sign", "-d", "example.com", "-s", "test", "-k", &rsa, "-o", "out.eml"]).args([&input]).ok();
    assert!(o.is_empty());
    let written = std::fs::read(dir.join("out.eml")).unwrap();
    assert!(written.starts_with(b"DKIM-Signature: ") && written.ends_with(MSG));
});

dktest!(
/// Exit codes from sysexits, a reason on stderr naming the input, and nothing on stdout.
exit_codes_and_nothing_half_printed, |dir| {
    let (rsa, _) = keys(&dir);
    dir.write("short.pem", include_bytes!("../testdata/keys/rsa512-too-short.pem"));
    std::fs::set_permissions(dir.join("short.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let base = ["sign", "-d", "example.com", "-s", "test", "-k"];
    let cases: Vec<(Vec<&str>, &[u8], i32, &str)> = vec![
        (vec![&rsa], b"", 65, "stdin: cannot sign: empty input"),
        (vec![&rsa], b"hello world\n\nbody\n", 65, "line 1: not a header field"),
        (vec![&rsa], b"From alice@example.com Sat Nov 21 10:00:00 2026\nFrom: a@example.com\n\nx\n", 65, "mbox"),
        (vec![&rsa], b"To: bob@example.org\n\nbody\n", 65, "no From header field"),
        (vec![&rsa], b"From: a@example.com\nbroken line\n\nbody\n", 65, "line 2: not a header field"),
        (vec![&rsa], b"\xEF\xBB\xBFFrom: a@example.com\n\nx\n", 65, "byte order mark"),
        // Issue 20, item 6.
        (vec![&rsa], b"To: b@example.org\nFrom: a@example.com\x0b\n\nx\n", 65, "line 2: the From header field holds the control character 0x0B (vertical tab)"),
        (vec!["missing.pem"], MSG, 78, "missing.pem: cannot read key file"),
        (vec!["short.pem"], MSG, 78, "RSA key of 512 bits is too short"),
        (vec![&rsa, "-c", "nofws"], MSG, 64, "unknown canonicalization"),
        (vec![&rsa, "-a", "rsa-sha1"], MSG, 78, "does not match the key"),
        (vec![&rsa, "-i", "user@elsewhere.org"], MSG, 78, "identity"),
        (vec![&rsa, "/nonexistent/msg.eml"], MSG, 66, "/nonexistent/msg.eml"),
        (vec![&rsa, "-s", "a", "-s", "b"], MSG, 64, "given 3 times for 1 keys"),
    ];
    for (extra, stdin, code, want) in cases {
        let out = dir.cmd().args(base).args(&extra).stdin(stdin).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: stderr {err:?} lacks {want:?}");
        assert!(out.stdout.is_empty(), "{extra:?}: something was printed");
    }
    // A usage error without -d.
    let out = dir.cmd().args(["sign", "-s", "x", "-k", &rsa]).stdin(MSG).run();
    assert_eq!(out.status.code(), Some(64));
});

dktest!(header_only_messages_are_signed_with_empty_body, |dir| {
    let (rsa, _) = keys(&dir);
    for msg in
        [&b"From: a@example.com\nSubject: x"[..], b"From: a@example.com\nSubject: x\n", b"From: a@example.com\n\n"]
    {
        let out = dir.cmd().args(["sign", "-d", "example.com", "-s", "test", "-k", &rsa]).stdin(msg).ok();
        assert!(out.ends_with(msg));
        // relaxed empty body: SHA-256 of nothing (RFC 6376 §3.4.4).
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;"), "{text}");
    }
    let out = dir
        .cmd()
        .args(["sign", "-c", "simple/simple", "-d", "example.com", "-s", "test", "-k", &rsa])
        .stdin(b"From: a@example.com\n")
        .ok();
    // simple empty body: SHA-256 of CRLF (RFC 6376 §3.4.3).
    assert!(String::from_utf8_lossy(&out).contains("bh=frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=;"));
});

dktest!(group_readable_key_warns_and_strict_refuses, |dir| {
    let (rsa, _) = keys(&dir);
    std::fs::set_permissions(&rsa, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = dir.cmd().args(["sign", "-d", "example.com", "-s", "test", "-k", &rsa]).stdin(MSG).run();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("readable by group or others") && err.contains("chmod 600"));
    assert!(!err.contains("PRIVATE KEY") && !err.contains("MII"), "no key material in messages");
    let out = dir.cmd().args(["sign", "--strict-keys", "-d", "example.com", "-s", "test", "-k", &rsa]).stdin(MSG).run();
    assert_eq!(out.status.code(), Some(78));
    assert!(out.stdout.is_empty());
});

dktest!(optional_tags_i_l_x_and_header_lists, |dir| {
    let (rsa, _) = keys(&dir);
    let out = dir
        .cmd()
        .args(["sign", "-d", "example.com", "-s", "test", "-k", &rsa, "--timestamp", "1000"])
        .args(["-i", "alice@mail.example.com", "--body-length", "-x", "600"])
        .args(["--headers", "from:to:subject:x-custom", "--oversign", "from,subject"])
        .stdin(b"From: a@example.com\nTo: b@x\nSubject: s\nX-Custom: 1\nX-Custom: 2\n\nhello  \n\n\n")
        .ok();
    let text = String::from_utf8_lossy(&out);
    let unfolded = text.replace("\n\t", "");
    for want in
        ["t=1000;", "x=1600;", "i=alice@mail.example.com;", "l=7;", "h=from:from:to:subject:subject:x-custom:x-custom;"]
    {
        assert!(unfolded.contains(want), "{want} missing in {unfolded}");
    }
});

dktest!(
/// Golden signatures: RSASSA-PKCS1-v1_5 and Ed25519 are deterministic, so a fixed key,
/// message and timestamp give one exact field. The expected values were checked with dkimpy,
/// Mail::DKIM and libopendkim (../shared/interop/peer-verify) when they were recorded.
golden_signatures, |dir| {
    let (rsa, ed) = keys(&dir);
    let msg = std::fs::read(testdata("messages/plain-lf.eml")).unwrap();
    for (key, sel, canon, want) in [
        (&rsa, "test", "relaxed/relaxed", GOLDEN_RSA_RELAXED),
        (&rsa, "test", "simple/simple", GOLDEN_RSA_SIMPLE),
        (&ed, "test-ed", "relaxed/relaxed", GOLDEN_ED25519_RELAXED),
    ] {
        let out = dir
            .cmd()
            .args(["sign", "-c", canon, "-d", "example.com", "-s", sel, "-k", key, "--timestamp", "1700000000"])
            .stdin(&msg)
            .ok();
        let added = String::from_utf8(out[..out.len() - msg.len()].to_vec()).unwrap();
        assert_eq!(added, want, "{sel} {canon}");
    }
});

const GOLDEN_RSA_RELAXED: &str = concat!(
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=test;\n",
    "\tt=1700000000; h=from:from:subject:date:to:message-id:mime-version:\n",
    "\tcontent-type; bh=7GrO8ALL0lhjnf445SPT/+H/QKO6JJwImh50tRURe4U=;\n",
    "\tb=GxpDiRjhKexjOfs8dnIBBgh7wU1EV4aNptHZflVYjVjfll9bI0VJEuNJms2Ohm5Y+b\n",
    "\tiuNyXzZCgeVYWLWg00r+owxJopPhprdeBP4CDIOvOKyK5vRrtlOvAheg3GIaCycjfEwC\n",
    "\tk9dvyrCXVGZ9JlHiX+hQoAvATc0urntbn8mIhPumfPe/4vyRt6LdbS0snp1ASpukA1o0\n",
    "\t99YXn2K5NcjXe0XE9vaOT1Lf+HvIPtLYrMQ8X2nczXvDiKOxOxnyb9SGQqxonBTcALOe\n",
    "\ts7lQH2iufKUuosEbjA6FxzqKHAwETpwz+nHIfNURMR2kboi0pDCIIqFP9ufVEGIcyXbz\n",
    "\tt+wg==\n",
);
const GOLDEN_RSA_SIMPLE: &str = concat!(
    "DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=example.com; s=test;\n",
    "\tt=1700000000; h=from:from:subject:date:to:message-id:mime-version:\n",
    "\tcontent-type; bh=P6e6Cq+uD22GooyzHtISisZgi781Kyj+3DKNN40NZg0=;\n",
    "\tb=B7sX5zHwh5h5++RGPf7j5mGOCI0KNU0VKjzCeIxTI5srLMEYtgw8LoKbhmo7R+8x6k\n",
    "\tcpbjQn9WJoBIplNI9PJFhoGurdqi66IJZ1dyRL3J9ULN6gKxKqdNJ6XAcBevIAa9EGtG\n",
    "\tk35fvbAvOjf0Q/VfkF6bJb/m187u/4y7tII+TrP7byk6GxBBvbss197z0ZOXmaZQbH52\n",
    "\tFVHadb9TKJ4o6u5O5XP7zvIIlbCGwCA2Q4Jyx5r1+NYDYhlyG5auLTNiKZ9UrVbMMvT1\n",
    "\tOZSMujFgt6pNVdySZCCIx7o3jGxc7zbXFVJ9uIAFlt173FbTiwBtqy9L8sXacIf8nZTU\n",
    "\thAig==\n",
);
const GOLDEN_ED25519_RELAXED: &str = concat!(
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com;\n",
    "\ts=test-ed; t=1700000000; h=from:from:subject:date:to:message-id:\n",
    "\tmime-version:content-type;\n",
    "\tbh=7GrO8ALL0lhjnf445SPT/+H/QKO6JJwImh50tRURe4U=;\n",
    "\tb=PSNJxw/3dSiOPNWZxgcyJlAkxItqIZQQqly6T4B+hgN/A637zxQu7QWQIObowaRSuj\n",
    "\tajQAovkuoKzevjx3npBA==\n",
);

dktest!(
    /// Issue 12, the small things: `dkimpress` alone is a usage error (64), counts are singular
    /// when they are 1, a failed `-o` names the output, not our temporary file, and a missing
    /// configuration has no "line 0".
    cli_small_things,
    |dir| {
        let out = dir.cmd().run();
        assert_eq!(out.status.code(), Some(64));
        let key = crate::util::testdata("keys/test.private");
        let k = key.to_str().unwrap();
        let msg = std::fs::read(crate::util::testdata("messages/plain-lf.eml")).unwrap();
        let mut mbox = b"From a@b Sat Nov 21 10:00:00 2026\n".to_vec();
        mbox.extend_from_slice(&msg);
        dir.write("one.mbox", &mbox);
        let out = dir.cmd().args(["sign", "-d", "example.com", "-s", "test", "-k", k, "one.mbox", "-o", "out.mbox"]).run();
        assert!(String::from_utf8_lossy(&out.stderr).contains("dkimpress: 1 message: 1 signed"), "{}", String::from_utf8_lossy(&out.stderr));
        let out = dir.cmd().args(["sign", "-d", "example.com", "-s", "test", "-k", k, "one.mbox", "-o", "no/such/dir/out"]).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(73), "{err}");
        assert!(err.contains("no/such/dir/out") && !err.contains(".dkimpress-"), "{err}");
        let out = dir.cmd().args(["sign", "--config", "missing.conf"]).stdin(&msg).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("missing.conf: ") && !err.contains(":0:"), "{err}");
    }
);

dktest!(
    /// Issue 12: man pages for dkimpress and each command, and completions for the common
    /// shells, generated from the clap definitions.
    man_pages_and_completions,
    |dir| {
        dir.cmd().args(["man", "."]).ok();
        for page in ["dkimpress.1", "dkimpress-sign.1", "dkimpress-verify.1", "dkimpress-genkey.1", "dkimpress-filter.1"] {
            let text = std::fs::read_to_string(dir.join(page)).unwrap();
            assert!(text.contains(".TH") && text.contains(".SH NAME"), "{page}");
        }
        assert!(std::fs::read_to_string(dir.join("dkimpress-sign.1")).unwrap().contains("in\\-place"));
        for shell in ["bash", "zsh", "fish"] {
            let out = dir.cmd().args(["completions", shell]).ok();
            assert!(String::from_utf8_lossy(&out).contains("genkey"), "{shell}");
        }
    }
);

dktest!(
    /// A key pasted into opendkim.conf as KeyFile (every key format) never appears in
    /// an error.
    key_material_never_in_errors,
    |dir| {
        let rsa = std::fs::read_to_string(util::testdata("keys/test.private")).unwrap();
        let ed = std::fs::read_to_string(util::testdata("keys/test-ed.private")).unwrap();
        let bare = |pem: &str| pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
        for (name, key) in [("rsa-pem", rsa.clone()), ("ed-pem", ed.clone()), ("rsa-b64", bare(&rsa)), ("ed-b64", bare(&ed))] {
            let conf = dir.write(&format!("{name}.conf"), format!("Domain example.com\nSelector s\nKeyFile {key}\n").as_bytes());
            let out = dir.cmd().args(["sign", "--config"]).arg(&conf).stdin(&message()).run();
            assert_ne!(out.status.code(), Some(0), "{name}");
            let err = stderr(&out);
            for line in key.lines().filter(|l| l.len() > 8 && !l.starts_with("-----")) {
                assert!(!err.contains(line), "{name}: key text in: {err}");
                assert!(!err.contains(&line[..20]), "{name}: key text in: {err}");
            }
        }
    }
);

dktest!(
    /// A mistyped `filter` option in master.cf defers (75) instead of bouncing (64).
    filter_usage_error_defers,
    |dir| {
        let out = dir.cmd().args(["filter", "--no-such-option", "--", "/bin/true"]).stdin(&message()).run();
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        let out = dir.cmd().args(["sign", "--no-such-option"]).stdin(&message()).run();
        assert_eq!(out.status.code(), Some(64));
    }
);
