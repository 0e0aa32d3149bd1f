//! Header fields an attacker writes: a From that forges our author (escaped quotes, comments,
//! several domains), Authentication-Results that forge our authserv-id under `--add-ar`, and
//! header counts large enough to expose quadratic work.

use crate::util::{self, key, key_args, message, stderr};
use std::time::{Duration, Instant};

dktest!(
    /// --add-ar removes Authentication-Results that forge our authserv-id (RFC 8601
    /// §5), keeps others', and refuses an authserv-id with CR/LF.
    add_ar_removes_forged_results,
    |dir| {
        let mut msg = b"Authentication-Results: MX.example.com; dkim=pass header.d=bank.example\n".to_vec();
        msg.extend_from_slice(b"Authentication-Results: (comment) mx.example.com;\n\tdkim=pass\n");
        msg.extend_from_slice(b"Authentication-Results: other.example.net; dkim=none\n");
        msg.extend_from_slice(&message());
        let out = dir.cmd().args(["verify", "--dns-zone", "/dev/null", "--add-ar", "mx.example.com"]).stdin(&msg).ok();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("Authentication-Results:").count(), 2, "{text}");
        assert!(text.starts_with("Authentication-Results: mx.example.com;"));
        assert!(text.contains("Authentication-Results: other.example.net; dkim=none\n"));
        assert!(!text.contains("bank.example"));
        assert!(out.ends_with(&message()));
        let out = dir.cmd().args(["verify", "--add-ar", "mx.example.com\r\nX-Evil: 1"]).stdin(&msg).run();
        assert_eq!(out.status.code(), Some(64));
    }
);

dktest!(
    /// 100k From fields, and a signature whose h= lists From 100k times, finish in
    /// moments (selection was quadratic: minutes).
    hostile_header_counts_finish,
    |dir| {
        let started = Instant::now();
        let mut many = b"From: a@example.com\n".repeat(100_000);
        many.extend_from_slice(b"\nbody\n");
        let out = dir.cmd().args(["sign"]).args(key_args(&dir)).stdin(&many).run();
        assert_eq!(out.status.code(), Some(65));
        assert!(stderr(&out).contains("more than 10000 header fields"), "{}", stderr(&out));
        // 9,000 From fields are signed; h= then lists every one.
        let mut ok = b"From: a@example.com\n".repeat(9_000);
        ok.extend_from_slice(b"\nbody\n");
        let signed = dir.cmd().args(["sign"]).args(key_args(&dir)).stdin(&ok).ok();
        // Sixteen signatures over that message, verified.
        let mut sixteen = Vec::new();
        for _ in 0..16 {
            sixteen.extend_from_slice(&signed[..signed.len() - ok.len()]);
        }
        sixteen.extend_from_slice(&ok);
        let zone = util::testdata("keys/test.txt");
        let v = dir.cmd().args(["verify", "--dns-zone", zone.to_str().unwrap()]).stdin(&sixteen).run();
        assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
        assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    }
);

dktest!(
    /// A display name holding an escaped quote and a forged address does not choose
    /// the key; several From domains are not signed by table lookup.
    forged_from_is_not_signed_for_our_domain,
    |dir| {
        let k = key(&dir);
        dir.write("KeyTable", format!("org example.org:test:{}\n", k.display()).as_bytes());
        dir.write("SigningTable", b"example.org org\n");
        for from in [
            "\"x \\\" <ceo@example.org>\" <attacker@evil.test>",
            "ceo@example.org, attacker@evil.test",
            "(ceo@example.org) <attacker@evil.test>",
        ] {
            let msg = format!("From: {from}\nTo: a@b.example\nSubject: s\n\nbody\n");
            let out = dir
                .cmd()
                .args(["sign", "--key-table", "KeyTable", "--signing-table", "SigningTable"])
                .stdin(msg.as_bytes())
                .run();
            assert!(!String::from_utf8_lossy(&out.stdout).contains("DKIM-Signature"), "{from}: signed!");
        }
        // The same message with two From fields of different domains.
        let msg = b"From: ceo@example.org\nFrom: attacker@evil.test\nSubject: s\n\nbody\n";
        let out = dir.cmd().args(["sign", "--key-table", "KeyTable", "--signing-table", "SigningTable"]).stdin(msg).run();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("DKIM-Signature"));
        assert_ne!(out.status.code(), Some(0));
        // A genuine author is still signed.
        let msg = b"From: \"CEO \\\"the boss\\\"\" <ceo@example.org>\nSubject: s\n\nbody\n";
        let out =
            dir.cmd().args(["sign", "--key-table", "KeyTable", "--signing-table", "SigningTable"]).stdin(msg).ok();
        assert!(String::from_utf8_lossy(&out).contains("d=example.org"));
    }
);
