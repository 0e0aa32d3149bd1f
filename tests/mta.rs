//! MTA modes: `filter` exit codes and re-injection, the sendmail wrapper's argument and input
//! handling (against a fake "real sendmail" that records what it got).

use crate::util::{testdata, Dir};
use std::os::unix::fs::PermissionsExt as _;

const MSG: &[u8] = b"From: a@example.com\nSubject: mta\nMessage-ID: <m1@example.com>\n\nbody\n";

fn key(dir: &Dir) -> String {
    let p = dir.join("k.private");
    std::fs::copy(testdata("keys/test-ed.private"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// A fake sendmail: records its arguments (one per line) and its stdin, exits with $FAKE_EXIT.
fn fake_sendmail(dir: &Dir) -> String {
    let p = dir.write(
        "fake-sendmail",
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {d}/args\ncat > {d}/stdin\nexit ${{FAKE_EXIT:-0}}\n",
            d = dir.path().display()
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

dktest!(
    /// filter: 0 when re-injected (signed, arguments untouched); 75 when re-injection fails or
    /// the key cannot be read; unsigned with 0 when there is no key for the domain or no
    /// message; --on-error pass re-injects unsigned.
    filter_exit_codes,
    |dir| {
        let k = key(&dir);
        let fake = fake_sendmail(&dir);
        let base = ["filter", "--log-stderr", "-d", "example.com", "-s", "test-ed", "-k"];
        let reinject = [fake.as_str(), "-G", "-i", "-f", "a@example.com", "--", "rcpt@example.org", "-odd-arg"];
        let out = dir.cmd().args(base).args([&k, "--"]).args(reinject).stdin(MSG).run();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let got = std::fs::read(dir.join("stdin")).unwrap();
        assert!(got.starts_with(b"DKIM-Signature: ") && got.ends_with(MSG));
        assert_eq!(std::fs::read_to_string(dir.join("args")).unwrap(), "-G\n-i\n-f\na@example.com\n--\nrcpt@example.org\n-odd-arg\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("message-id=<m1@example.com>: signed"));

        // Re-injection fails: 75.
        let out = dir.cmd().args(base).args([&k, "--", "sh", "-c", "cat >/dev/null; exit 1"]).stdin(MSG).run();
        assert_eq!(out.status.code(), Some(75));
        // Re-injection command missing: 75.
        let out = dir.cmd().args(base).args([&k, "--", "/nonexistent/sendmail"]).stdin(MSG).run();
        assert_eq!(out.status.code(), Some(75));
        // Key file missing: 75, or re-injected unsigned with --on-error pass.
        let out = dir.cmd().args(base).args(["/nonexistent.key", "--"]).args(reinject).stdin(MSG).run();
        assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(dir.join("stdin")).unwrap();
        let out = dir
            .cmd()
            .args(["filter", "--log-stderr", "--on-error", "pass", "-d", "example.com", "-s", "x", "-k", "/nonexistent.key", "--"])
            .args(reinject)
            .stdin(MSG)
            .run();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(std::fs::read(dir.join("stdin")).unwrap(), MSG);
        // Not a message: passed on unsigned, exit 0.
        let out = dir.cmd().args(base).args([&k, "--"]).args(reinject).stdin(b"garbage without header\n").run();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(std::fs::read(dir.join("stdin")).unwrap(), b"garbage without header\n");
        // No key for the From domain (tables): unsigned, exit 0.
        dir.write("kt", format!("k example.com:test-ed:{k}\n").as_bytes());
        dir.write("st", b"example.com k\n");
        let other = b"From: a@example.org\n\nbody\n";
        let out = dir.cmd().args(["filter", "--log-stderr", "--key-table", "kt", "--signing-table", "st", "--"]).args(reinject).stdin(other).run();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(std::fs::read(dir.join("stdin")).unwrap(), other);
        assert!(String::from_utf8_lossy(&out.stderr).contains("no signing key for a@example.org; passed on unsigned"));
    }
);

dktest!(
    /// The sendmail wrapper: same arguments to the real sendmail, input read as sendmail does,
    /// modes without a message passed straight on, also through a symlink named sendmail, its
    /// exit status returned, and no loop onto itself.
    sendmail_wrapper,
    |dir| {
        let k = key(&dir);
        let fake = fake_sendmail(&dir);
        dir.write("dkimpress.conf", format!("Domain example.com\nSelector test-ed\nKeyFile {k}\n").as_bytes());
        let run = |args: &[&str], stdin: &[u8], extra_env: &[(&str, &str)]| {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dkimpress"));
            c.current_dir(dir.path())
                .env("DKIMPRESS_CONFIG", dir.join("dkimpress.conf"))
                .env("DKIMPRESS_SENDMAIL", &fake)
                .env("DKIMPRESS_LOG", "stderr")
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            for (k, v) in extra_env {
                c.env(k, v);
            }
            let mut child = c.spawn().unwrap();
            use std::io::Write as _;
            let _ = child.stdin.take().unwrap().write_all(stdin);
            child.wait_with_output().unwrap()
        };
        let input = b"From: a@example.com\nSubject: w\n\nline\n..dotted\n.\nafter the dot\n";
        let out = run(&["sendmail", "-f", "bounce@example.com", "-F", "Cron Daemon", "-t", "--", "x@example.org"], input, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read_to_string(dir.join("args")).unwrap(), "-f\nbounce@example.com\n-F\nCron Daemon\n-t\n--\nx@example.org\n");
        let got = String::from_utf8(std::fs::read(dir.join("stdin")).unwrap()).unwrap();
        assert!(got.starts_with("DKIM-Signature: ") && got.ends_with("\nline\n..dotted\n") && !got.contains("after the dot"), "{got}");
        // -i: the dot is data.
        run(&["sendmail", "-i", "x@example.org"], input, &[]);
        assert!(String::from_utf8(std::fs::read(dir.join("stdin")).unwrap()).unwrap().ends_with(".\nafter the dot\n"));
        // -bp: no message, no signing, the real sendmail runs with the same arguments.
        std::fs::remove_file(dir.join("stdin")).unwrap();
        let out = run(&["sendmail", "-bp"], b"", &[]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(std::fs::read_to_string(dir.join("args")).unwrap(), "-bp\n");
        // The real sendmail's exit status comes back.
        let out = run(&["sendmail", "x@example.org"], input, &[("FAKE_EXIT", "67")]);
        assert_eq!(out.status.code(), Some(67));
        // Through a symlink named sendmail.
        let link = dir.join("sendmail");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dkimpress"), &link).unwrap();
        let out = std::process::Command::new(&link)
            .current_dir(dir.path())
            .env("DKIMPRESS_CONFIG", dir.join("dkimpress.conf"))
            .env("DKIMPRESS_SENDMAIL", &fake)
            .env("DKIMPRESS_LOG", "stderr")
            .args(["-oi", "y@example.org"])
            .stdin(std::fs::File::open(dir.write("in.eml", MSG)).unwrap())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read_to_string(dir.join("args")).unwrap(), "-oi\ny@example.org\n");
        assert!(std::fs::read(dir.join("stdin")).unwrap().starts_with(b"DKIM-Signature: "));
        // No configuration: passed on unsigned (and logged).
        let out = run(&["sendmail", "x@example.org"], MSG, &[("DKIMPRESS_CONFIG", "/nonexistent.conf")]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(std::fs::read(dir.join("stdin")).unwrap(), MSG);
        assert!(String::from_utf8_lossy(&out.stderr).contains("passed on unsigned"));
        // DKIMPRESS_SENDMAIL pointing at dkimpress itself: refused with 75, no loop.
        let out = run(&["sendmail", "x@example.org"], MSG, &[("DKIMPRESS_SENDMAIL", env!("CARGO_BIN_EXE_dkimpress"))]);
        assert_eq!(out.status.code(), Some(75));
    }
);
