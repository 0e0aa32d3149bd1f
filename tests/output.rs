//! Where `sign` writes and what happens when it cannot: `-o` onto a device, a FIFO or a link, a
//! full disk, and a stdout whose reader has gone (every command).

use crate::util::{self, bin, key, key_args, leftovers, mbox, message, stderr, Dir};
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};

dktest!(
    /// `-o` over a device stays a device (it was replaced by a regular file, which as
    /// root destroys /dev/null), a FIFO is written as a stream, and a link is refused.
    output_devices_fifos_and_links,
    |dir| {
        let msg = dir.write("m.eml", &message());
        let out = dir.cmd().args(["sign"]).args(key_args(&dir)).arg(&msg).args(["-o", "/dev/null"]).run();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let meta = std::fs::metadata("/dev/null").unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()), "/dev/null is still a device");

        let fifo = dir.join("out.fifo");
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let out = dir.cmd().args(["sign"]).args(key_args(&dir)).arg(&msg).arg("-o").arg(&fifo).run();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let got = reader.join().unwrap();
        assert!(got.starts_with(b"DKIM-Signature:") && got.ends_with(&message()));
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&std::fs::symlink_metadata(&fifo).unwrap().file_type()));

        std::os::unix::fs::symlink(dir.join("elsewhere.eml"), dir.join("link.eml")).unwrap();
        let out = dir.cmd().args(["sign"]).args(key_args(&dir)).arg(&msg).args(["-o", "link.eml"]).run();
        assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
        assert!(stderr(&out).contains("symbolic link"));
        assert!(std::fs::symlink_metadata(dir.join("link.eml")).unwrap().file_type().is_symlink());
        assert!(!dir.join("elsewhere.eml").exists());
        assert!(leftovers(dir.path()).is_empty());
    }
);

dktest!(
    /// A full disk (/dev/full) is exit 74 on every path, and genkey no longer panics
    /// (exit 101) when its stdout is full.
    full_disk_is_exit_74,
    |dir| {
        let msg = dir.write("m.eml", &message());
        let mb = dir.write("a.mbox", &mbox(3));
        let full = || Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap());
        for input in [&msg, &mb] {
            let out = dir.cmd().args(["sign", "-q"]).args(key_args(&dir)).arg(input).args(["-o", "/dev/full"]).run();
            assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
            let out = Command::new(bin())
                .current_dir(dir.path())
                .args(["sign", "-q"])
                .args(key_args(&dir))
                .arg(input)
                .stdout(full())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
        }
        let out = Command::new(bin())
            .current_dir(dir.path())
            .args(["genkey", "-s", "g", "--type", "ed25519"])
            .stdout(full())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
    }
);

/// Runs dkimpress with `args` (stdin from `input`, or nothing) and stdout a pipe whose reader
/// is gone: closed before the start, or, with `read_first`, after the first byte arrived.
/// Returns the exit code and stderr.
fn run_with_closed_stdout(dir: &Dir, args: &[&str], input: Option<&Path>, read_first: bool) -> (Option<i32>, String) {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir.path()).args(args).stdout(writer).stderr(Stdio::piped());
    cmd.stdin(match input {
        Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
        None => Stdio::null(),
    });
    if !read_first {
        drop(reader);
        let out = cmd.output().unwrap();
        return (out.status.code(), stderr(&out));
    }
    let child = cmd.spawn().unwrap();
    drop(cmd); // our copy of the write end
    let mut first = [0u8; 1];
    reader.read_exact(&mut first).unwrap();
    drop(reader);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), stderr(&out))
}

dktest!(
    /// Every command that writes to stdout exits 74, quietly, when the reader has
    /// gone (`| head -c1`): no panic (exit 101 and a backtrace, as `sign --report json` and
    /// `bench --report json` gave through println!), no "broken pipe" line. Both a reader
    /// that closed before the start and one that closed after the first byte of a long output.
    closed_stdout_is_exit_74_quietly,
    |dir| {
        let k = key(&dir);
        let k = k.to_str().unwrap();
        let zone = util::testdata("keys/test.txt");
        let zone = zone.to_str().unwrap();
        let msg = dir.write("m.eml", &message());
        dir.write("a.mbox", &mbox(3));
        // A long output: more than a pipe holds, so writes go on after the reader left.
        dir.write("big.mbox", &mbox(400));
        let sign = ["sign", "-d", "example.com", "-s", "test", "-k", k];
        let out = dir.cmd().args(sign).args(["-q", "-o", "signed.mbox", "big.mbox"]).run();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let signed_msg = dir.write("signed.eml", &dir.cmd().args(sign).arg(&msg).ok());
        let cases: Vec<(Vec<&str>, Option<&Path>)> = vec![
            (sign.to_vec(), Some(&msg)),
            ([&sign[..], &["m.eml"]].concat(), None),
            ([&sign[..], &["-q", "a.mbox"]].concat(), None),
            ([&sign[..], &["-q", "--report", "json", "-o", "out.mbox", "a.mbox"]].concat(), None),
            ([&sign[..], &["--report", "json", "-o", "out.mbox", "a.mbox"]].concat(), None),
            (vec!["verify", "--dns-zone", zone, "signed.eml"], None),
            (vec!["verify", "--dns-zone", zone], Some(&signed_msg)),
            (vec!["verify", "-q", "--report", "json", "--dns-zone", zone, "signed.mbox"], None),
            (vec!["verify", "--add-ar", "mx.example.net", "--dns-zone", zone], Some(&signed_msg)),
            (vec!["testkey", "-d", "example.com", "-s", "test", "-k", k, "--dns-zone", zone], None),
            (vec!["testkey", "--report", "json", "-d", "example.com", "-s", "test", "-k", k, "--dns-zone", zone], None),
            (vec!["genkey", "-f", "-s", "g", "--type", "ed25519"], None),
            (vec!["bench", "-q", "--report", "json", "--count", "20", "--seconds", "0.05", "-j", "1", "--type", "ed25519"], None),
            (vec!["completions", "bash"], None),
        ];
        for (args, input) in &cases {
            let (code, err) = run_with_closed_stdout(&dir, args, *input, false);
            assert_eq!(code, Some(74), "{args:?}: {err}");
            assert_eq!(err, "", "{args:?}: a closed stdout is quiet");
        }
        for args in [
            [&sign[..], &["-q", "big.mbox"]].concat(),
            vec!["verify", "-q", "--report", "json", "--dns-zone", zone, "signed.mbox"],
            vec!["verify", "-q", "--dns-zone", zone, "-j", "1", "signed.mbox", "signed.mbox", "signed.mbox", "signed.mbox"],
        ] {
            let (code, err) = run_with_closed_stdout(&dir, &args, None, true);
            assert_eq!(code, Some(74), "{args:?} (reader gone after 1 byte): {err}");
            assert_eq!(err, "", "{args:?}: a closed stdout is quiet");
        }
        // clap prints help and the version itself: 74 as well, never a panic.
        for args in [vec!["--help"], vec!["sign", "--help"], vec!["--version"], vec!["milter", "-V"]] {
            let (code, err) = run_with_closed_stdout(&dir, &args, None, false);
            assert_eq!(code, Some(74), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
        }
    }
);

dktest!(
    /// `-o -` writes to stdout, as `-` reads stdin among the inputs: no file named "-".
    output_dash_is_stdout,
    |dir| {
        let msg = dir.write("m.eml", &message());
        let out = dir.cmd().args(["sign", "-q"]).args(key_args(&dir)).arg(&msg).args(["-o", "-"]).run();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(out.stdout.starts_with(b"DKIM-Signature:") && out.stdout.ends_with(&message()));
        assert!(!dir.join("-").exists(), "a file named - was written");
    }
);
