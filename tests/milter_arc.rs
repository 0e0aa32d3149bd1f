//! The milter with ARC: one `dkimpress milter` doing what OpenDKIM and OpenARC did side by
//! side (an openarc.conf taken over with `-A`, or opendkim.conf's `ARCSign`/`ARCVerify`).
//! Inbound chains are validated and reported in Authentication-Results, mail is sealed with
//! those results in the same pass, and every delivered message is judged by dkimpy and
//! Mail::DKIM (scripts/arc-peer) as well as by `verify --arc`.

use crate::arc::{key_dir, mail_dkim_available, peer_passes};
use crate::milter::{apply, keys, log, Milter, Reply};
use crate::util::{dkimpy_available, set_mode, stderr, testdata, Dir};
use std::path::PathBuf;

/// The values of the fields named `name` that the milter put on top.
fn inserted(r: &[Reply], name: &str) -> Vec<String> {
    r.iter()
        .filter_map(|r| match r {
            Reply::Insert(0, n, v) if n == name => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// An opendkim.conf that signs example.com with the RSA test key (selector `test`, whose
/// record testdata/arc/keys holds) for 127.0.0.1.
fn dkim_conf(dir: &Dir, extra: &str) -> PathBuf {
    keys(dir);
    let text = format!(
        "Domain example.com\nSelector test\nKeyFile keys/test.private\nInternalHosts 127.0.0.1\n\
         AuthservID mx.example.com\n{extra}"
    );
    dir.write("opendkim.conf", text.as_bytes())
}

/// An OpenARC configuration sealing as example.net (the RSA key of testdata/arc/keys).
fn openarc_conf(dir: &Dir, mode: &str) -> PathBuf {
    let key =
        dir.write("keys/arc.pem", &std::fs::read(testdata("arc/keys/rsa2048._domainkey.example.net.pem")).unwrap());
    set_mode(&key, 0o600);
    let text = format!(
        "# as OpenARC read it\nSocket inet:8894@localhost\nUserID openarc\nPidFile /run/openarc/openarc.pid\n\
         Domain example.net\nSelector rsa2048\nKeyFile keys/arc.pem\nCanonicalization relaxed/relaxed\n\
         AuthservID arc.example.net\n{mode}"
    );
    dir.write("openarc.conf", text.as_bytes())
}

/// `verify --arc --report json` over `files`: each one's (DKIM result, ARC result, ARC
/// instances).
fn our_results(dir: &Dir, files: &[PathBuf]) -> Vec<(String, String, u64)> {
    let o = dir.cmd().args(["verify", "--arc", "--report", "json"]).args(key_dir()).args(files).run();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["result"].as_str().unwrap().to_string(),
                v["arc"].as_str().unwrap().to_string(),
                v["arc_instances"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Whether the peers that judge ARC accept every file: dkimpy, and Mail::DKIM when installed.
fn peers_accept(files: &[PathBuf]) {
    if !dkimpy_available() {
        return;
    }
    let maildkim = mail_dkim_available();
    for f in files {
        let (ok, text) = peer_passes("dkimpy", f, false);
        assert!(ok, "dkimpy: {}: {text}", f.display());
        if maildkim {
            let (ok, text) = peer_passes("mail-dkim", f, false);
            assert!(ok, "Mail::DKIM: {}: {text}", f.display());
        }
    }
}

dktest!(
    /// With an openarc.conf (`Mode sv`) next to the opendkim.conf, mail from outside is
    /// verified, its chain validated and reported (`arc=` with `header.oldest-pass` and
    /// `smtp.remote-ip`, as OpenARC writes it), and sealed with those results in the same pass:
    /// `cv=pass` over a good chain, `cv=fail` over a broken one, nothing over a chain that
    /// already failed. Mail from an internal host is DKIM-signed and sealed. dkimpy and
    /// Mail::DKIM accept every chain we sealed over a good one; our validator agrees.
    openarc_conf_verifies_and_seals_in_one_pass,
    |dir| {
        let c = dkim_conf(&dir, "");
        let oa = openarc_conf(&dir, "Mode sv\n");
        let keys = key_dir();
        let args = ["--config", c.to_str().unwrap(), "-A", oa.to_str().unwrap(), keys[0].as_str(), keys[1].as_str()];
        let m = Milter::start(&dir, &args);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("192.0.2.1");
        // (vector, arc= in our Authentication-Results, the seal we add: Some((i, cv)))
        let cases = [
            ("pass-i3-alternating.eml", Some("arc=pass header.oldest-pass=0 smtp.remote-ip=192.0.2.1"), Some((4, "pass"))),
            ("pass-i1-rsa-maildkim.eml", Some("arc=pass header.oldest-pass=0"), Some((2, "pass"))),
            ("no-arc.eml", None, Some((1, "none"))),
            ("fail-wrong-key.eml", Some("arc=fail reason="), Some((2, "fail"))),
            ("fail-cv-fail-i2.eml", Some("arc=fail reason=\"ARC-Seal i=2 has cv=fail\""), None),
        ];
        let mut delivered = vec![];
        for (name, ar, seal) in cases {
            let msg = std::fs::read(testdata(&format!("arc/{name}"))).unwrap();
            let r = mta.message(&msg, steps, None);
            assert_eq!(r.last(), Some(&Reply::Accept), "{name}: {r:?}\n{}", log(&dir));
            let ars = inserted(&r, "Authentication-Results");
            match ar {
                Some(want) => {
                    assert_eq!(ars.len(), 1, "{name}: {r:?}");
                    assert!(ars[0].starts_with(" mx.example.com;") && ars[0].contains(want), "{name}: {}", ars[0]);
                }
                None => assert!(ars.is_empty(), "{name}: {r:?}"),
            }
            let seals = inserted(&r, "ARC-Seal");
            match seal {
                Some((i, cv)) => {
                    assert_eq!(seals.len(), 1, "{name}: {r:?}\n{}", log(&dir));
                    assert!(seals[0].starts_with(&format!(" i={i}; a=rsa-sha256; cv={cv}; d=example.net;")), "{name}: {}", seals[0]);
                    let aar = &inserted(&r, "ARC-Authentication-Results")[0];
                    assert!(aar.starts_with(&format!(" i={i}; mx.example.com;")), "{name}: {aar}");
                    assert!(aar.contains(" smtp.remote-ip=192.0.2.1"), "{name}: {aar}");
                    // The set goes above our Authentication-Results: seal, AMS, AAR, A-R.
                    let order: Vec<&str> = r
                        .iter()
                        .filter_map(|r| match r {
                            Reply::Insert(0, n, _) => Some(n.as_str()),
                            _ => None,
                        })
                        .collect();
                    assert_eq!(order.last(), Some(&"ARC-Seal"), "{name}: {order:?}");
                }
                None => assert!(seals.is_empty(), "{name}: {r:?}"),
            }
            delivered.push(dir.write(&format!("out/{name}"), &apply(&msg, &r)));
        }
        // Mail of our own, from the internal host: signed for example.com, sealed as example.net.
        mta.connect_from("127.0.0.1");
        let msg = std::fs::read(testdata("arc/no-arc.eml")).unwrap();
        let r = mta.message(&msg, steps, None);
        assert_eq!(inserted(&r, "DKIM-Signature").len(), 1, "{r:?}");
        assert_eq!(inserted(&r, "ARC-Seal").len(), 1, "{r:?}");
        delivered.push(dir.write("out/internal.eml", &apply(&msg, &r)));

        let ours = our_results(&dir, &delivered);
        let arcs: Vec<(&str, u64)> = ours.iter().map(|(_, a, i)| (a.as_str(), *i)).collect();
        assert_eq!(arcs, [("pass", 4), ("pass", 2), ("pass", 1), ("fail", 2), ("fail", 2), ("pass", 1)], "{ours:?}");
        assert_eq!(ours[5].0, "pass", "{ours:?}");
        let good: Vec<PathBuf> = [0, 1, 2, 5].iter().map(|&k| delivered[k].clone()).collect();
        peers_accept(&good);
        let l = log(&dir);
        assert!(!l.contains("openarc.conf") || !l.contains("error"), "{l}");
    }
);

dktest!(
    /// `ARCSign`/`ARCVerify` in opendkim.conf: inbound chains are validated and reported, not
    /// sealed; mail we sign is sealed with its signing key. A message that a mailing list of
    /// ours changed after it arrived, re-injected from the internal host, keeps `cv=pass` with
    /// `PermitAuthenticationOverrides`: our Authentication-Results said `arc=pass` when it
    /// arrived, and the chain now fails only on the changed content. The same message from an
    /// authenticated client (whose Authentication-Results are not ours to trust) is sealed
    /// `cv=fail`. dkimpy and Mail::DKIM accept the list's chain.
    arc_sign_seals_signed_mail_and_trusts_its_own_results,
    |dir| {
        let c = dkim_conf(&dir, "ARCSign yes\nARCVerify yes\nPermitAuthenticationOverrides yes\n");
        let keys = key_dir();
        let m = Milter::start(&dir, &["--config", c.to_str().unwrap(), keys[0].as_str(), keys[1].as_str()]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("192.0.2.1");
        let msg = std::fs::read(testdata("arc/pass-i3-alternating.eml")).unwrap();
        let r = mta.message(&msg, steps, None);
        assert!(inserted(&r, "ARC-Seal").is_empty(), "inbound mail is not ours to seal: {r:?}");
        let ar = &inserted(&r, "Authentication-Results")[0];
        assert!(ar.contains("arc=pass header.oldest-pass=0 smtp.remote-ip=192.0.2.1"), "{ar}");
        let arrived = apply(&msg, &r);
        // The list: a tag in the subject, a footer in the body.
        let text = String::from_utf8(arrived).unwrap();
        let listed = text.replace("Subject: ARC test vector", "Subject: [list] ARC test vector") + "-- \r\nlist footer\r\n";
        mta.connect_from("127.0.0.1");
        let r = mta.message(listed.as_bytes(), steps, None);
        assert_eq!(inserted(&r, "DKIM-Signature").len(), 1, "{r:?}\n{}", log(&dir));
        let seal = &inserted(&r, "ARC-Seal")[0];
        assert!(seal.starts_with(" i=4; a=rsa-sha256; cv=pass; d=example.com; s=test;"), "{seal}");
        let aar = &inserted(&r, "ARC-Authentication-Results")[0];
        assert!(aar.starts_with(" i=4; mx.example.com;") && aar.contains("arc=pass"), "{aar}");
        // Our own earlier result does not stay in the message: the AAR carries it.
        assert!(r.contains(&Reply::Change(1, "Authentication-Results".into(), String::new())), "{r:?}");
        let out = dir.write("out/list.eml", &apply(listed.as_bytes(), &r));
        let ours = our_results(&dir, std::slice::from_ref(&out));
        assert_eq!(ours, [("pass".to_string(), "pass".to_string(), 4)]);
        peers_accept(&[out]);

        // An authenticated client cannot vouch for the chain with our results.
        mta.connect_from("192.0.2.9");
        let r = mta.message(listed.as_bytes(), steps, Some("alice"));
        let seal = &inserted(&r, "ARC-Seal")[0];
        assert!(seal.starts_with(" i=4; a=rsa-sha256; cv=fail;"), "{seal}");
        let aar = &inserted(&r, "ARC-Authentication-Results")[0];
        assert_eq!(aar, " i=4; mx.example.com; arc=fail", "its own results are not carried");
    }
);

dktest!(
    /// Configurations that cannot work are refused at start (`-n`: exit 78, naming the file):
    /// `ARCSign` without signing keys, an openarc.conf asking for what dkimpress does not do
    /// (`SealHeaderChecks`) or sealing without a key.
    arc_configuration_errors_are_refused,
    |dir| {
        let c = dir.write("opendkim.conf", b"Mode sv\nARCSign yes\nSocket inet:8891@localhost\n");
        let o = dir.cmd().args(["milter", "-n", "-x", c.to_str().unwrap()]).run();
        assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
        assert!(stderr(&o).contains("ARCSign seals with the signing keys"), "{}", stderr(&o));
        let c = dkim_conf(&dir, "Socket inet:8891@localhost\n");
        for (text, want) in [
            ("Mode sv\nSealHeaderChecks /etc/openarc/checks\n", "openarc.conf:2: SealHeaderChecks"),
            ("Mode s\n", "nothing to seal with"),
        ] {
            let oa = dir.write("openarc.conf", text.as_bytes());
            let o = dir.cmd().args(["milter", "-n", "-x", c.to_str().unwrap(), "-A", oa.to_str().unwrap()]).run();
            assert_eq!(o.status.code(), Some(78), "{text:?}: {}", stderr(&o));
            assert!(stderr(&o).contains(want), "{text:?}: {}", stderr(&o));
        }
        // A verifying openarc.conf is enough alone.
        let oa = dir.write("openarc.conf", b"Mode v\nAuthservID mx.example.com\n");
        let o = dir.cmd().args(["milter", "-n", "-x", c.to_str().unwrap(), "-A", oa.to_str().unwrap()]).run();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
);
