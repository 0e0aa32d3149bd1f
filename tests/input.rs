//! What `sign` and `verify` read: a message or an mbox through a pipe, an empty pipe, an endless
//! device, maildir entries that are links, FIFOs or devices.

use crate::util::{self, key_args, mbox, message, stderr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

dktest!(
    /// A message read through `/dev/stdin` (a pipe) keeps its first bytes; detection
    /// used to read 8 bytes and reopen the path, losing them.
    pipe_input_message_keeps_every_byte,
    |dir| {
        let msg = message();
        let out = dir.cmd().args(["sign"]).args(key_args(&dir)).args(["/dev/stdin"]).stdin(&msg).ok();
        assert!(out.starts_with(b"DKIM-Signature:"));
        assert!(out.ends_with(&msg), "the original bytes follow the signature unchanged");
        assert_eq!(util::strip_added(&out, "s=test;"), msg);
    }
);

dktest!(
    /// An mbox through a pipe is signed whole (it gave "0 messages", exit 0), and
    /// `verify` of a pipe checks every message.
    pipe_input_mbox_signed_and_verified,
    |dir| {
        let data = mbox(5);
        let out = dir.cmd().args(["sign", "-q"]).args(key_args(&dir)).args(["/dev/stdin"]).stdin(&data).ok();
        assert_eq!(out.windows(16).filter(|w| w == b"DKIM-Signature: ").count(), 5);
        assert_eq!(util::strip_added(&out, "s=test;"), data);
        let zone = util::testdata("keys/test.txt");
        let v = dir
            .cmd()
            .args(["verify", "-q", "--dns-zone", zone.to_str().unwrap(), "/dev/stdin"])
            .stdin(&out)
            .run();
        assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
        assert_eq!(String::from_utf8_lossy(&v.stdout).matches(": pass |").count(), 5);
    }
);

dktest!(
    /// A pipe that gives nothing is not a success over nothing.
    pipe_input_empty_is_refused,
    |dir| {
        let s = dir.cmd().args(["sign"]).args(key_args(&dir)).args(["/dev/stdin"]).stdin(b"").run();
        assert_eq!(s.status.code(), Some(65), "{}", stderr(&s));
        assert!(stderr(&s).contains("empty input"));
        let v = dir.cmd().args(["verify", "--dns-zone", "/dev/null", "/dev/stdin"]).stdin(b"").run();
        assert_ne!(v.status.code(), Some(0));
    }
);

dktest!(
    /// `/dev/zero` as input ends with a clear error at the size cap instead of
    /// growing without limit.
    endless_input_stops_at_size_cap,
    |dir| {
        let started = Instant::now();
        for cmd in ["sign", "verify"] {
            let mut c = dir.cmd().args([cmd, "--max-message-size", "4M"]);
            if cmd == "sign" {
                c = c.args(key_args(&dir));
            } else {
                c = c.args(["--dns-zone", "/dev/null"]);
            }
            let out = c.args(["/dev/zero"]).run();
            assert_eq!(out.status.code(), Some(65), "{cmd}: {}", stderr(&out));
            assert!(stderr(&out).contains("--max-message-size"), "{}", stderr(&out));
        }
        let big = vec![b'x'; 2 << 20];
        let out = dir.cmd().args(["sign", "--max-message-size", "1M"]).args(key_args(&dir)).stdin(&big).run();
        assert_eq!(out.status.code(), Some(65));
        assert!(started.elapsed() < Duration::from_secs(60));
    }
);

dktest!(
    /// Maildir entries that are links, FIFOs or devices are reported (exit 65), the
    /// link is copied as a link, and `-o DIR` is a maildir (cur/ new/ tmp/).
    maildir_odd_entries_are_reported,
    |dir| {
        dir.write("md/cur/1:2,S", &message());
        dir.write("md/new/2", &message());
        std::os::unix::fs::symlink("../cur/1:2,S", dir.join("md/new/link")).unwrap();
        assert!(Command::new("mkfifo").arg(dir.join("md/new/fifo")).status().unwrap().success());
        let out = dir.cmd().args(["sign"]).args(key_args(&dir)).args(["md", "-o", "out"]).run();
        assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("md/new/fifo") && err.contains("a FIFO: not copied"), "{err}");
        assert!(err.contains("md/new/link") && err.contains("copied as the same link"), "{err}");
        assert!(err.contains("4 messages: 2 signed, 2 passed through"), "{err}");
        for sub in ["cur", "new", "tmp"] {
            assert!(dir.join("out").join(sub).is_dir(), "out/{sub}");
        }
        assert_eq!(std::fs::read_link(dir.join("out/new/link")).unwrap(), Path::new("../cur/1:2,S"));
        let out = dir.cmd().args(["sign", "--in-place"]).args(key_args(&dir)).args(["md"]).run();
        assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
        assert!(stderr(&out).contains("a FIFO: left as it is"));
    }
);

dktest!(
    /// `bench --input` of an mbox with a message that cannot be signed names the file, the
    /// message and the reason, and exits 65 before measuring; it used to panic (exit 101) after
    /// the first stages. An empty archive and one that is not an mbox are named too.
    bench_input_that_cannot_be_signed_is_a_clear_error,
    |dir| {
        let mut data = mbox(2);
        data.extend_from_slice(b"From x@example.com Thu Jan  1 00:00:00 2026\nSubject: no author\n\nbody\n");
        std::fs::write(dir.path().join("odd.mbox"), &data).unwrap();
        std::fs::write(dir.path().join("empty.mbox"), b"").unwrap();
        std::fs::write(dir.path().join("plain.eml"), message()).unwrap();
        for (file, want) in [
            ("odd.mbox", "odd.mbox: message 3 (byte offset"),
            ("empty.mbox", "empty.mbox: holds no messages"),
            ("plain.eml", "plain.eml: not an mbox"),
        ] {
            let out = dir.cmd().args(["bench", "-q", "--type", "ed25519", "-j", "1", "--seconds", "0.05", "--input", file]).run();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(65), "{file}: {err}");
            assert!(err.contains(want), "{file}: {err}");
            assert!(!err.contains("panicked"), "{file}: {err}");
        }
        let err = stderr(&dir.cmd().args(["bench", "-q", "-j", "1", "--seconds", "0.05", "--input", "odd.mbox"]).run());
        assert!(err.contains("no From header field"), "{err}");
    }
);
