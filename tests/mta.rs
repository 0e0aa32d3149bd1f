//! MTA modes: `filter` exit codes and re-injection, the sendmail wrapper's argument and input
//! handling (against a fake "real sendmail" that records what it got).

use crate::util::{testdata, Dir};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output, Stdio};

const MSG: &[u8] = b"From: a@example.com\nSubject: mta\nMessage-ID: <m1@example.com>\n\nbody\n";

fn key(dir: &Dir) -> String {
    let p = dir.join("k.private");
    std::fs::copy(testdata("keys/test-ed.private"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// A fake sendmail: records its arguments (one per line) and its stdin, exits with $FAKE_EXIT.
fn fake_sendmail(dir: &Dir) -> String {
    script(
        dir,
        "fake-sendmail",
        &format!(
            "for a in \"$@\"; do printf '%s\\n' \"$a\"; done > {d}/args\ncat > {d}/stdin\nexit ${{FAKE_EXIT:-0}}\n",
            d = dir.path().display()
        ),
    )
}

/// An executable shell script in `dir`.
fn script(dir: &Dir, name: &str, body: &str) -> String {
    let p = dir.write(name, format!("#!/bin/sh\n{body}").as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

/// Runs `dkimpress` (argv[0] `argv0` when given) as the sendmail wrapper with `fake` as the
/// real sendmail and the configuration in `dir`, plus `env`.
fn wrapper(dir: &Dir, argv0: Option<&str>, fake: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut c = match argv0 {
        Some(name) => {
            let link = dir.join(name);
            if !link.exists() {
                std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dkimpress"), &link).unwrap();
            }
            Command::new(link)
        }
        None => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_dkimpress"));
            c.arg("sendmail");
            c
        }
    };
    c.current_dir(dir.path())
        .env("DKIMPRESS_CONFIG", dir.join("dkimpress.conf"))
        .env("DKIMPRESS_SENDMAIL", fake)
        .env("DKIMPRESS_LOG", "stderr")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

dktest!(
    /// filter: 0 when re-injected (signed, arguments untouched); the re-injection command's
    /// sysexits status when it fails (other statuses 75); 75 when it cannot run or the key cannot be read; unsigned with 0 when there is no key for the domain or no
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

        // Re-injection fails: its own status (issue 11 item 12) when it is a sysexits code,
        // else 75 (issue 20 item 5: pipe(8) would bounce on 1).
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

/// A config and key for the wrapper in `dir`; returns the fake real sendmail.
fn wrapper_setup(dir: &Dir) -> String {
    let k = key(dir);
    dir.write("dkimpress.conf", format!("Domain example.com\nSelector test-ed\nKeyFile {k}\n").as_bytes());
    fake_sendmail(dir)
}

fn received(dir: &Dir) -> String {
    String::from_utf8(std::fs::read(dir.join("stdin")).unwrap()).unwrap()
}

dktest!(
    /// Issue 11 item 5: grouped flags (`-ti`, `-it`), `-o i` and `-oi` all keep a lone `.` as
    /// data, as Postfix sendmail(1) reads them; after the first recipient, `-i` is a recipient.
    sendmail_grouped_ignore_dots_flags,
    |dir| {
        let fake = wrapper_setup(&dir);
        let input = b"From: a@example.com\nSubject: w\n\nline\n.\nafter the dot\n";
        for args in [&["-ti"][..], &["-it", "x@example.org"], &["-o", "i", "x@example.org"], &["-oi", "x@example.org"], &["-tif", "b@example.com"]] {
            let out = wrapper(&dir, None, &fake, args, input, &[]);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
            let got = received(&dir);
            assert!(got.starts_with("DKIM-Signature: ") && got.ends_with("\nline\n.\nafter the dot\n"), "{args:?}: {got}");
            let want: String = args.iter().map(|a| format!("{a}\n")).collect();
            assert_eq!(std::fs::read_to_string(dir.join("args")).unwrap(), want, "passed on unchanged");
        }
        for args in [&["x@example.org", "-i"][..], &["-F", "-i", "x@example.org"], &["-om", "x@example.org"]] {
            let out = wrapper(&dir, None, &fake, args, input, &[]);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
            assert!(received(&dir).ends_with("\nline\n"), "{args:?}: the dot ends the message");
        }
    }
);

dktest!(
    /// Issue 11 item 5: called as mailq or newaliases, the wrapper runs the real sendmail under
    /// that name (its mode depends on it) with the arguments unchanged, and returns its status.
    /// The "real sendmail" here is /bin/sh, whose `$0` under `-c` is the name it was run as.
    sendmail_as_mailq_and_newaliases,
    |dir| {
        wrapper_setup(&dir);
        for name in ["mailq", "newaliases"] {
            let out = wrapper(&dir, Some(name), "/bin/sh", &["-c", "printf %s \"$0\" > arg0; exit 3"], b"", &[]);
            assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
            assert_eq!(std::fs::read_to_string(dir.join("arg0")).unwrap(), name);
        }
    }
);

dktest!(
    /// Issue 11 item 5: -bs (an SMTP session) goes to the real sendmail with stdin untouched,
    /// and the wrapper says every time that it goes unsigned.
    sendmail_bs_is_logged,
    |dir| {
        let fake = wrapper_setup(&dir);
        let session = b"EHLO me\r\nQUIT\r\n";
        for _ in 0..2 {
            let out = wrapper(&dir, None, &fake, &["-bs"], session, &[]);
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            assert!(stderr(&out).contains("-bs: SMTP submission is passed to the real sendmail unsigned"), "{}", stderr(&out));
            assert_eq!(std::fs::read(dir.join("stdin")).unwrap(), session);
            assert_eq!(std::fs::read_to_string(dir.join("args")).unwrap(), "-bs\n");
        }
    }
);

/// `filter` signing MSG with the test Ed25519 key `k`, re-injecting through `fake`, which exits
/// with `exit` (FAKE_EXIT).
fn filter_through(dir: &Dir, k: &str, fake: &str, exit: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dkimpress"))
        .args([
            "filter",
            "--log-stderr",
            "-d",
            "example.com",
            "-s",
            "test-ed",
            "-k",
            k,
            "--",
            fake,
            "-i",
            "--",
            "x@example.org",
        ])
        .env("FAKE_EXIT", exit)
        .stdin(std::fs::File::open(dir.write("in.eml", MSG)).unwrap())
        .output()
        .unwrap()
}

dktest!(
    /// Issue 11 item 12: the re-injection command's status reaches Postfix as it is (67 bounces,
    /// 75 defers), from filter and from the wrapper; a signal is 75.
    reinjection_status_passes_through,
    |dir| {
        let fake = wrapper_setup(&dir);
        let k = dir.join("k.private").display().to_string();
        for (exit, want) in [("0", 0), ("67", 67), ("69", 69), ("75", 75), ("77", 77)] {
            let out = filter_through(&dir, &k, &fake, exit);
            assert_eq!(out.status.code(), Some(want), "filter, fake exits {exit}: {}", stderr(&out));
            assert!(received(&dir).starts_with("DKIM-Signature: "));
            let out = wrapper(&dir, None, &fake, &["x@example.org"], MSG, &[("FAKE_EXIT", exit)]);
            assert_eq!(out.status.code(), Some(want), "wrapper, fake exits {exit}: {}", stderr(&out));
        }
        let out = dir.cmd().args(["filter", "--log-stderr", "-d", "example.com", "-s", "test-ed", "-k", &k, "--", "sh", "-c", "kill -KILL $$"]).stdin(MSG).run();
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        assert!(stderr(&out).contains("killed by signal 9"), "{}", stderr(&out));
    }
);

dktest!(
    /// Issue 11 item 11: a re-injection command that hangs without reading its stdin (the
    /// message is larger than a pipe buffer) is killed at the time limit, and we exit 75.
    reinjection_timeout,
    |dir| {
        wrapper_setup(&dir);
        let k = dir.join("k.private").display().to_string();
        let mut big = MSG.to_vec();
        big.extend_from_slice(&b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n".repeat(4096));
        let out = dir
            .cmd()
            .args(["filter", "--log-stderr", "--reinject-timeout", "1", "-d", "example.com", "-s", "test-ed", "-k", &k, "--", "sleep", "100"])
            .stdin(&big)
            .run();
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        assert!(stderr(&out).contains("still running after 1 s; killed"), "{}", stderr(&out));
        let hang = script(&dir, "hang", "exec sleep 100\n");
        let out = wrapper(&dir, None, &hang, &["x@example.org"], &big, &[("DKIMPRESS_REINJECT_TIMEOUT", "1")]);
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        let out = dir.cmd().args(["filter", "--reinject-timeout", "0", "-k", &k, "--", "true"]).stdin(MSG).run();
        // Refused as a usage error, which for `filter` defers (75) rather than bounces.
        assert_eq!(out.status.code(), Some(75), "0 s is refused");
        assert!(stderr(&out).contains("--reinject-timeout"), "{}", stderr(&out));
    }
);

dktest!(
    /// Issue 11 item 8: filter signs only its own clients' mail: local submission (empty
    /// client address), authenticated clients, internal hosts (--internal-hosts, or
    /// InternalHosts of the opendkim.conf, default loopback). Other clients' mail is
    /// re-injected unsigned, with a log line; an InternalHosts file that cannot be read defers.
    filter_signs_only_trusted_origins,
    |dir| {
        let k = key(&dir);
        let fake = fake_sendmail(&dir);
        dir.write("hosts", b"# ours\n192.0.2.0/24\n!192.0.2.66\n");
        dir.write("ours.conf", format!("Domain example.com\nSelector test-ed\nKeyFile {k}\nInternalHosts file:hosts\n").as_bytes());
        dir.write("plain.conf", format!("Domain example.com\nSelector test-ed\nKeyFile {k}\n").as_bytes());
        let flags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let keys = flags(&["-d", "example.com", "-s", "test-ed", "-k", &k]);
        let ours = flags(&["--config", "ours.conf"]);
        let plain = flags(&["--config", "plain.conf"]);
        for (opts, origin, signed) in [
            (&keys, &[][..], true),
            (&keys, &["--client-address="][..], true),
            (&keys, &["--client-address", "127.0.0.1"][..], true),
            (&keys, &["--client-address=::1"][..], true),
            (&keys, &["--client-address=203.0.113.9"][..], false),
            (&keys, &["--client-address=203.0.113.9", "--sasl-username="][..], false),
            (&keys, &["--client-address=203.0.113.9", "--sasl-username=alice"][..], true),
            (&keys, &["--client-address=203.0.113.9", "--internal-hosts", "10.0.0.0/8,203.0.113.0/24"][..], true),
            (&keys, &["--client-address=127.0.0.1", "--internal-hosts", "10.0.0.0/8"][..], false),
            (&ours, &["--client-address=192.0.2.5"][..], true),
            (&ours, &["--client-address=192.0.2.66"][..], false),
            (&ours, &["--client-address=127.0.0.1"][..], false),
            (&plain, &["--client-address=127.0.0.1"][..], true),
            (&plain, &["--client-address=192.0.2.5"][..], false),
        ] {
            let out = dir.cmd().args(["filter", "--log-stderr"]).args(opts).args(origin).args(["--", &fake, "-i", "--", "x@example.org"]).stdin(MSG).run();
            assert_eq!(out.status.code(), Some(0), "{opts:?} {origin:?}: {}", stderr(&out));
            let got = std::fs::read(dir.join("stdin")).unwrap();
            assert_eq!(got.starts_with(b"DKIM-Signature: "), signed, "{opts:?} {origin:?}: {}", stderr(&out));
            assert!(got.ends_with(MSG));
            if !signed {
                assert!(stderr(&out).contains("is not in InternalHosts and did not authenticate; passed on unsigned"), "{}", stderr(&out));
            }
        }
        let out = dir
            .cmd()
            .args(["filter", "--log-stderr", "--internal-hosts", "/nonexistent/hosts", "--client-address=192.0.2.5"])
            .args(&keys)
            .args(["--", &fake])
            .stdin(MSG)
            .run();
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    }
);

dktest!(
    /// Issue 11 item 17: with DKIMPRESS_ON_ERROR=tempfail, a configuration that is missing or
    /// cannot be read (a directory; a path through a file) defers with 75 and a log line, and
    /// the real sendmail is not run; with pass, the message goes on unsigned, logged.
    sendmail_config_missing_or_unreadable,
    |dir| {
        let fake = wrapper_setup(&dir);
        dir.write("subdir/x", b"");
        let missing = dir.join("nonexistent.conf").display().to_string();
        let is_dir = dir.join("subdir").display().to_string();
        let through_file = dir.join("dkimpress.conf/inner.conf").display().to_string();
        for conf in [&missing, &is_dir, &through_file] {
            let _ = std::fs::remove_file(dir.join("stdin"));
            let out = wrapper(&dir, None, &fake, &["x@example.org"], MSG, &[("DKIMPRESS_CONFIG", conf), ("DKIMPRESS_ON_ERROR", "tempfail")]);
            assert_eq!(out.status.code(), Some(75), "{conf}: {}", stderr(&out));
            assert!(stderr(&out).contains(conf.as_str()) && stderr(&out).contains("deferred"), "{}", stderr(&out));
            assert!(!dir.join("stdin").exists(), "{conf}: the real sendmail did not run");
            let out = wrapper(&dir, None, &fake, &["x@example.org"], MSG, &[("DKIMPRESS_CONFIG", conf), ("DKIMPRESS_ON_ERROR", "pass")]);
            assert_eq!(out.status.code(), Some(0), "{conf}: {}", stderr(&out));
            assert_eq!(std::fs::read(dir.join("stdin")).unwrap(), MSG);
            assert!(stderr(&out).contains(conf.as_str()) && stderr(&out).contains("passed on unsigned"), "{}", stderr(&out));
        }
    }
);

dktest!(
    /// Issue 20 item 5: a re-injection status outside sysexits.h (1, 255) would make Postfix
    /// pipe(8) bounce the message (it maps unknown codes to 5.3.0); it becomes 75 (deferred) and
    /// the original status is logged. Sysexits codes (67, 75) pass unchanged; a signal is 75.
    /// The same from filter and from the wrapper.
    reinjection_status_outside_sysexits_defers,
    |dir| {
        wrapper_setup(&dir);
        let k = dir.join("k.private").display().to_string();
        let fake = script(&dir, "reinject", "cat > /dev/null\n[ \"$FAKE_EXIT\" = kill ] && kill -KILL $$\nexit $FAKE_EXIT\n");
        for (exit, want, logged) in [
            ("1", 75, "exited with status 1 (not a sysexits.h code, which Postfix would bounce); exit 75"),
            ("255", 75, "exited with status 255 (not a sysexits.h code, which Postfix would bounce); exit 75"),
            ("67", 67, "exited with status 67 (EX_NOUSER)"),
            ("75", 75, "exited with status 75 (EX_TEMPFAIL)"),
            ("kill", 75, "killed by signal 9"),
        ] {
            let out = filter_through(&dir, &k, &fake, exit);
            assert_eq!(out.status.code(), Some(want), "filter, re-injection {exit}: {}", stderr(&out));
            assert!(stderr(&out).contains(logged), "filter, re-injection {exit}: {}", stderr(&out));
            let out = wrapper(&dir, None, &fake, &["x@example.org"], MSG, &[("FAKE_EXIT", exit)]);
            assert_eq!(out.status.code(), Some(want), "wrapper, real sendmail {exit}: {}", stderr(&out));
            assert!(stderr(&out).contains(logged), "wrapper, real sendmail {exit}: {}", stderr(&out));
        }
    }
);

/// The next 1 MB (about) of numbered body lines of a generated message, into `chunk`.
fn next_chunk(line: &mut u64, chunk: &mut Vec<u8>) {
    chunk.clear();
    while chunk.len() < (1 << 20) - 100 {
        *line += 1;
        let _ = writeln!(chunk, "{line:>10} the quick brown fox jumps over the lazy dog  \t0123456789");
    }
}

/// The message [`pipe_generated`] sends, in memory (for small sizes).
fn generated(head: &[u8], size: usize, tail: &[u8]) -> Vec<u8> {
    let (mut out, mut chunk, mut line) = (head.to_vec(), vec![], 0);
    while out.len() - head.len() < size {
        next_chunk(&mut line, &mut chunk);
        out.extend_from_slice(&chunk);
    }
    out.extend_from_slice(tail);
    out
}

/// Pipes a generated message of about `size` octets (`head`, then numbered body lines, then
/// `tail`) into `cmd` and returns its output. Nothing of it is held in this process.
fn pipe_generated(mut cmd: Command, head: &[u8], size: usize, tail: &[u8]) -> Output {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut sin = child.stdin.take().unwrap();
    let (head, tail) = (head.to_vec(), tail.to_vec());
    let writer = std::thread::spawn(move || {
        let (mut chunk, mut written, mut line) = (Vec::with_capacity(1 << 20), 0, 0);
        let _ = sin.write_all(&head);
        while written < size {
            next_chunk(&mut line, &mut chunk);
            written += chunk.len();
            if sin.write_all(&chunk).is_err() {
                return; // the reader stopped (over the cap)
            }
        }
        let _ = sin.write_all(&tail);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// The peak resident set (VmHWM, kB) the re-injection script of [`recorder`] saw in its parent.
fn peak_kb(dir: &Dir) -> u64 {
    let s = std::fs::read_to_string(dir.join("hwm")).unwrap();
    s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("VmHWM? {s}"))
}

/// A re-injection command that saves its stdin as `out`, then records the peak resident set
/// of its parent (dkimpress, which has signed and is still feeding it) as `hwm`.
fn recorder(dir: &Dir) -> String {
    script(
        dir,
        "recorder",
        &format!("cat > {d}/out || exit 74\ngrep VmHWM /proc/$PPID/status > {d}/hwm\n", d = dir.path().display()),
    )
}

const BIG_HEAD: &[u8] = b"From: a@example.com\nTo: b@example.org\nSubject: big\nMessage-ID: <big@example.com>\n\n";

dktest!(
    /// Issue 20 item 3: a message of several hundred MB goes through `filter` and the wrapper
    /// without being held in memory: spooled to an unlinked temporary file, signed from a map of
    /// it, streamed to the re-injection command after the added field. The peak resident set
    /// of dkimpress stays far below the message's size, and the output verifies.
    large_message_streams_with_bounded_memory,
    |dir| {
        let k = key(&dir);
        dir.write("dkimpress.conf", format!("Domain example.com\nSelector test-ed\nKeyFile {k}\n").as_bytes());
        std::fs::copy(testdata("keys/test-ed.txt"), dir.join("test-ed._domainkey.example.com.txt")).unwrap();
        let rec = recorder(&dir);
        let size = 300 << 20;
        let verify = |what: &str| {
            let out = dir.cmd().args(["verify", "--key-dir", "."]).arg(dir.join("out")).run();
            assert_eq!(out.status.code(), Some(0), "{what}: {}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
            let len = std::fs::metadata(dir.join("out")).unwrap().len() as usize;
            assert!(len > size, "{what}: {len} octets re-injected");
        };
        let mut filter = Command::new(env!("CARGO_BIN_EXE_dkimpress"));
        filter.current_dir(dir.path()).args(["filter", "--log-stderr", "-d", "example.com", "-s", "test-ed", "-k", &k, "--", &rec]);
        let out = pipe_generated(filter, BIG_HEAD, size, b"the end\n");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        verify("filter");
        let filter_kb = peak_kb(&dir);
        let mut wrapper = Command::new(env!("CARGO_BIN_EXE_dkimpress"));
        wrapper
            .current_dir(dir.path())
            .env("DKIMPRESS_CONFIG", dir.join("dkimpress.conf"))
            .env("DKIMPRESS_SENDMAIL", &rec)
            .env("DKIMPRESS_LOG", "stderr")
            .args(["sendmail", "x@example.org"]);
        let out = pipe_generated(wrapper, BIG_HEAD, size, b"the end\n.\nafter the dot\n");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        verify("wrapper");
        let wrapper_kb = peak_kb(&dir);
        let got = std::fs::read(dir.join("out")).unwrap();
        assert!(got.starts_with(b"DKIM-Signature: ") && got.ends_with(b"\nthe end\n"), "the wrapper stopped at the dot");
        eprintln!("peak RSS for a {} MB message: filter {filter_kb} kB, wrapper {wrapper_kb} kB", size >> 20);
        for (what, kb) in [("filter", filter_kb), ("wrapper", wrapper_kb)] {
            assert!(kb < 64 << 10, "{what}: peak RSS {kb} kB for a {} MB message", size >> 20);
        }
    }
);

dktest!(
    /// Issue 20 item 3: beyond the size cap `filter` defers (75, logged, nothing re-injected)
    /// or, with --on-error pass, re-injects the whole message unsigned; the wrapper always
    /// hands it on unsigned, whole (local submission must go through). Below the cap, a
    /// message larger than what is kept in memory is spooled, signed, and verifies (dkimpy).
    over_size_cap_defers_or_passes_whole,
    |dir| {
        let fake = wrapper_setup(&dir);
        let k = dir.join("k.private").display().to_string();
        let tail = b"the end\n.\nafter the dot\n";
        let filter = |cap: &str, extra: &[&str]| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_dkimpress"));
            c.current_dir(dir.path())
                .args(["filter", "--log-stderr", "--max-message-size", cap])
                .args(extra)
                .args(["-d", "example.com", "-s", "test-ed", "-k", &k, "--", &fake, "-i", "--", "x@example.org"]);
            c
        };
        let big = generated(BIG_HEAD, 3 << 20, tail);
        // filter, over the cap: deferred, nothing handed on.
        let _ = std::fs::remove_file(dir.join("stdin"));
        let out = pipe_generated(filter("2M", &[]), BIG_HEAD, 3 << 20, tail);
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        assert!(stderr(&out).contains("larger than 2097152 octets") && stderr(&out).contains("deferred"), "{}", stderr(&out));
        assert!(stderr(&out).contains("message-id=<big@example.com>"), "{}", stderr(&out));
        assert!(!dir.join("stdin").exists(), "nothing re-injected");
        // filter --on-error pass: the whole message, unsigned.
        let out = pipe_generated(filter("2M", &["--on-error", "pass"]), BIG_HEAD, 3 << 20, tail);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(std::fs::read(dir.join("stdin")).unwrap() == big, "filter --on-error pass: the whole input, unsigned");
        assert!(stderr(&out).contains("passed on unsigned"), "{}", stderr(&out));
        // The wrapper: unsigned, whole, up to the dot line.
        let mut w = Command::new(env!("CARGO_BIN_EXE_dkimpress"));
        w.current_dir(dir.path())
            .env("DKIMPRESS_CONFIG", dir.join("dkimpress.conf"))
            .env("DKIMPRESS_SENDMAIL", &fake)
            .env("DKIMPRESS_LOG", "stderr")
            .env("DKIMPRESS_MAX_MESSAGE_SIZE", "2M")
            .args(["sendmail", "x@example.org"]);
        let out = pipe_generated(w, BIG_HEAD, 3 << 20, tail);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let want = &big[..big.len() - b".\nafter the dot\n".len()];
        assert!(std::fs::read(dir.join("stdin")).unwrap() == want, "wrapper: the whole message up to the dot, unsigned");
        assert!(stderr(&out).contains("larger than 2097152 octets") && stderr(&out).contains("passed on unsigned"), "{}", stderr(&out));
        // Under the cap but spooled (more than is read into memory): signed, and dkimpy agrees.
        let out = pipe_generated(filter("8M", &[]), BIG_HEAD, 3 << 20, tail);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let got = std::fs::read(dir.join("stdin")).unwrap();
        assert!(got.starts_with(b"DKIM-Signature: ") && got.ends_with(&big), "signed, the message after the field");
        if crate::util::dkimpy_available() {
            let (ok, text) = crate::util::dkimpy_verify(&testdata("keys"), &["--expect-sigs", "1"], &[dir.join("stdin")]);
            assert!(ok, "{text}");
        }
    }
);
