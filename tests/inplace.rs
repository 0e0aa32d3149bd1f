//! `sign --in-place`: the owner, mode and times it keeps; the mbox locks of other programs it
//! honours (dot-lock, fcntl, flock) and the stale ones it breaks; mail appended during a run;
//! signals (SIGTERM, SIGHUP with and without nohup, recovery after SIGKILL).

use crate::util::{self, bin, key, key_args, leftovers, mbox, message, set_mode, stderr, Dir};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // The owner of a file we just created is us.
    let probe = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::MetadataExt::uid(&probe.as_file().metadata().unwrap()) == 0
}

dktest!(
    /// --in-place keeps owner, group, mode and times of messages, mboxes and maildir
    /// files (a root run made them root's, and reset the maildir arrival date).
    in_place_keeps_owner_mode_and_times,
    |dir| {
        use std::os::unix::fs::MetadataExt as _;
        let root = is_root();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        let files = [
            dir.write("m.eml", &message()),
            dir.write("a.mbox", &mbox(3)),
            dir.write("Maildir/cur/1600000000.1.host:2,S", &message()),
        ];
        for f in &files {
            set_mode(f, 0o640);
            if root {
                std::os::unix::fs::chown(f, Some(1234), Some(2345)).unwrap();
            }
            let file = std::fs::File::options().write(true).open(f).unwrap();
            file.set_times(std::fs::FileTimes::new().set_accessed(old).set_modified(old)).unwrap();
        }
        let out = dir
            .cmd()
            .args(["sign", "-q", "--in-place"])
            .args(key_args(&dir))
            .args(["m.eml", "a.mbox", "Maildir"])
            .run();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        for f in &files {
            let m = std::fs::metadata(f).unwrap();
            assert!(std::fs::read(f).unwrap().windows(15).any(|w| w == b"DKIM-Signature:"), "{f:?} signed");
            assert_eq!(m.mode() & 0o7777, 0o640, "{f:?} mode");
            assert_eq!(m.modified().unwrap(), old, "{f:?} mtime");
            if root {
                assert_eq!((m.uid(), m.gid()), (1234, 2345), "{f:?} owner");
            }
        }
        if !root {
            eprintln!("!!! ownership part of in_place_keeps_owner_mode_and_times needs root (CI runs as root) !!!");
        }
    }
);

/// A PID that no process has any more: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

dktest!(
    /// An mbox whose dot-lock another program holds is not touched: exit 75 after
    /// --lock-timeout, the other program's lock is left in place. Held means: it names a live
    /// process of this host, or it names none (Postfix, procmail) or another host's process
    /// and is fresh. One naming a process that is gone is broken.
    in_place_mbox_honours_dotlock,
    |dir| {
        let data = mbox(3);
        let mb = dir.write("a.mbox", &data);
        let dead = dead_pid();
        for lock in [format!("{}\n", std::process::id()), String::new(), format!("{dead}:elsewhere.example\n")] {
            dir.write("a.mbox.lock", lock.as_bytes());
            let out =
                dir.cmd().args(["sign", "-q", "--in-place", "--lock-timeout", "1"]).args(key_args(&dir)).arg(&mb).run();
            assert_eq!(out.status.code(), Some(75), "{lock:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("a.mbox.lock"), "{}", stderr(&out));
            assert_eq!(std::fs::read(&mb).unwrap(), data);
            assert_eq!(std::fs::read(dir.join("a.mbox.lock")).unwrap(), lock.as_bytes());
        }
        dir.write("a.mbox.lock", format!("{dead}\n").as_bytes());
        let out = dir.cmd().args(["sign", "-q", "--in-place", "--lock-timeout", "1"]).args(key_args(&dir)).arg(&mb).run();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("process {dead} is not running")), "{}", stderr(&out));
        assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    }
);

/// Runs `script` in python3 with the mbox path as argv[1]; returns once it printed "ready".
fn python_holding(script: &str, path: &Path) -> std::process::Child {
    let mut child =
        Command::new("python3").args(["-c", script]).arg(path).stdout(Stdio::piped()).spawn().expect("python3");
    let mut buf = [0u8; 6];
    child.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    child
}

dktest!(
    /// Fcntl and flock locks of delivery agents (Dovecot, Postfix local) are honoured.
    in_place_mbox_honours_fcntl_and_flock,
    |dir| {
        let data = mbox(3);
        let mb = dir.write("a.mbox", &data);
        for (what, script) in [
            ("fcntl", "import fcntl,sys,time\nf=open(sys.argv[1],'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('ready',flush=True)\ntime.sleep(30)"),
            ("flock", "import fcntl,sys,time\nf=open(sys.argv[1],'r+')\nfcntl.flock(f,fcntl.LOCK_EX)\nprint('ready',flush=True)\ntime.sleep(30)"),
        ] {
            let mut holder = python_holding(script, &mb);
            let out =
                dir.cmd().args(["sign", "-q", "--in-place", "--lock-timeout", "1"]).args(key_args(&dir)).arg(&mb).run();
            let _ = holder.kill();
            let _ = holder.wait();
            assert_eq!(out.status.code(), Some(75), "{what}: {}", stderr(&out));
            assert!(stderr(&out).contains(what), "{}", stderr(&out));
            assert_eq!(std::fs::read(&mb).unwrap(), data, "{what}");
            assert!(leftovers(dir.path()).is_empty(), "{what}: {:?}", leftovers(dir.path()));
        }
        // Once the locks are free the run goes through.
        dir.cmd().args(["sign", "-q", "--in-place"]).args(key_args(&dir)).arg(&mb).ok();
    }
);

/// Waits until a `.dkimpress-*.tmp` file appears in `dir` (the run is under way).
fn wait_for_tmp(dir: &Path, child: &mut std::process::Child) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if leftovers(dir).iter().any(|n| n.starts_with(".dkimpress-")) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

/// `sign --in-place` of `mb` on one thread, once it has started writing its temporary file.
fn in_place_started(dir: &Dir, mb: &Path, stderr: Stdio) -> std::process::Child {
    let mut child = Command::new(bin())
        .current_dir(dir.path())
        .args(["sign", "-q", "--in-place", "-j", "1"])
        .args(key_args(dir))
        .arg(mb)
        .stderr(stderr)
        .spawn()
        .unwrap();
    assert!(wait_for_tmp(dir.path(), &mut child), "the run never started writing");
    child
}

dktest!(
    /// Mail appended during an in-place run by a writer that ignores every lock is not
    /// lost: the run fails with 75 and leaves the file as the writer left it.
    in_place_mbox_appended_during_run_is_kept,
    |dir| {
        let data = mbox(3000);
        let mb = dir.write("a.mbox", &data);
        let late = b"From late@example.com Sat Nov 21 10:00:00 2026\nFrom: late@example.com\nSubject: late\n\nnew mail\n\n";
        let child = in_place_started(&dir, &mb, Stdio::piped());
        std::fs::OpenOptions::new().append(true).open(&mb).unwrap().write_all(late).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
        assert!(stderr(&out).contains("changed during the run"), "{}", stderr(&out));
        let mut want = data.clone();
        want.extend_from_slice(late);
        assert_eq!(std::fs::read(&mb).unwrap(), want, "original plus the late mail, nothing else");
        assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    }
);

dktest!(
    /// SIGTERM exits 130 (as the README says; it was 143) and leaves no temporary
    /// file or lock, and the original whole.
    sigterm_exits_130_and_cleans_up,
    |dir| {
        let data = mbox(3000);
        let mb = dir.write("a.mbox", &data);
        let child = in_place_started(&dir, &mb, Stdio::piped());
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        assert_eq!(std::fs::read(&mb).unwrap(), data);
        assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));

        // Blocked on a pipe that never ends: the handler still cleans up and exits 130.
        let mut child = Command::new(bin())
            .current_dir(dir.path())
            .args(["sign", "-q"])
            .args(key_args(&dir))
            .args(["-o", "out.eml"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Hold stdin open (wait() would close it, ending the input).
        let stdin = child.stdin.take();
        std::thread::sleep(Duration::from_millis(300));
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let status = child.wait().unwrap();
        drop(stdin);
        assert_eq!(status.code(), Some(130));
        assert!(!dir.join("out.eml").exists());
    }
);

dktest!(
    /// `sign --in-place` killed with SIGKILL (the OOM killer, systemd's final
    /// kill) leaves its dot-lock, naming a dead process, and its temporary file. Every later run
    /// exited 75 until someone removed the lock by hand. Now the next run breaks the stale lock,
    /// removes the dead run's temporary file (and nothing else), says so, and signs: exit 0,
    /// every message verified by dkimpy.
    in_place_after_sigkill_recovers,
    |dir| {
        let data = mbox(3000);
        let mb = dir.write("a.mbox", &data);
        let mut child = in_place_started(&dir, &mb, Stdio::null());
        assert!(Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap().success());
        child.wait().unwrap();
        assert_eq!(std::fs::read(&mb).unwrap(), data, "the original is whole");
        let lock = std::fs::read_to_string(dir.join("a.mbox.lock")).expect("the killed run's dot-lock");
        assert!(lock.starts_with(&format!("{}:", child.id())), "{lock:?}");
        let left = leftovers(dir.path());
        let tmp = left.iter().find(|n| n.ends_with(".tmp")).expect("the killed run's temporary file").clone();
        // .dkimpress-PID-HOST-RANDOM.tmp: files of a live process of this host, of another
        // host, of an older dkimpress (fresh), and files that only look like ours stay.
        let host = tmp.split('-').nth(2).unwrap().to_string();
        let keep = [
            format!(".dkimpress-{}-{host}-Live01.tmp", std::process::id()),
            format!(".dkimpress-{}-other.host-Abc123.tmp", child.id()),
            ".dkimpress-Ab3dE9.tmp".to_string(),
            ".dkimpress-notes.txt".to_string(),
            format!(".dkimpress-{}-{host}-Abc123.tmp.bak", child.id()),
            "other.tmp".to_string(),
        ];
        for k in &keep {
            dir.write(k, b"not ours to remove");
        }

        let out = dir.cmd().args(["sign", "-q", "--in-place", "--lock-timeout", "5"]).args(key_args(&dir)).arg(&mb).run();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("a.mbox.lock: removed a stale dot-lock"), "{err}");
        assert!(err.contains(&format!("process {} is not running on this host", child.id())), "{err}");
        assert!(err.contains(&format!("{tmp}: removed a temporary file left by a run that was killed")), "{err}");
        assert!(!dir.join(&tmp).exists() && !dir.join("a.mbox.lock").exists());
        for k in &keep {
            assert_eq!(std::fs::read(dir.join(k)).unwrap(), b"not ours to remove", "{k}");
        }
        let signed = std::fs::read(&mb).unwrap();
        assert_eq!(signed.windows(16).filter(|w| w == b"DKIM-Signature: ").count(), 3000);
        assert_eq!(util::strip_added(&signed, "s=test;"), data);
        if util::dkimpy_available() {
            let (ok, rep) =
                util::dkimpy_verify(&util::testdata("keys"), &["--mbox", "--expect-sigs", "1"], std::slice::from_ref(&mb));
            assert!(ok && rep.matches(" pass ").count() == 3000, "{rep}");
        }
    }
);

dktest!(
    /// A run started under `nohup` (SIGHUP ignored) survives SIGHUP; without nohup SIGHUP stops
    /// it cleanly like SIGTERM (130).
    sighup_respects_nohup,
    |dir| {
        let k = key(&dir);
        for (nohup, want) in [(true, None), (false, Some(130))] {
            let mut cmd = Command::new(if nohup { "nohup" } else { bin() });
            if nohup {
                cmd.arg(bin());
            }
            let mut child = cmd
                .current_dir(dir.path())
                .args(["sign", "-q", "-d", "example.com", "-s", "test", "-k"])
                .arg(&k)
                .args(["-o", "out.eml"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            // Not a fixed sleep: on a busy machine the process may not have set its handlers
            // yet, and SIGHUP's default action would kill it.
            assert!(handlers_installed(child.id()), "signal handlers not installed within 20 s");
            assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
            std::thread::sleep(Duration::from_millis(2500));
            match want {
                None => {
                    assert!(child.try_wait().unwrap().is_none(), "nohup: still running after SIGHUP");
                    stdin.write_all(&message()).unwrap();
                    drop(stdin);
                    assert_eq!(child.wait().unwrap().code(), Some(0));
                    assert!(std::fs::read(dir.join("out.eml")).unwrap().starts_with(b"DKIM-Signature:"));
                    std::fs::remove_file(dir.join("out.eml")).unwrap();
                }
                Some(code) => {
                    assert_eq!(child.wait().unwrap().code(), Some(code));
                    drop(stdin);
                }
            }
        }
    }
);

/// Waits (up to 20 s) until process `pid` catches SIGTERM, which dkimpress's interrupt handler
/// does once installed (the `SigCgt` mask of /proc/PID/status; SIGTERM is signal 15).
fn handlers_installed(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (15 - 1)) != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
