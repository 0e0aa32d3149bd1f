//! Harness: run the built binary in a temp dir, find the repository's test data, and the
//! independent verifier (dkimpy) with the policy for when it is missing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Declares a test that gets a fresh [`Dir`].
macro_rules! dktest {
    ($(#[$meta:meta])* $name:ident, |$dir:ident| $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            let $dir = crate::util::Dir::new(stringify!($name));
            $body
        }
    };
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `testdata/` files.
pub fn testdata(rel: &str) -> PathBuf {
    root().join("testdata").join(rel)
}

/// All files in `testdata/messages`, sorted.
pub fn testdata_messages() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(testdata("messages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    v.sort();
    v
}

/// A temporary working directory for one test.
pub struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new(name: &str) -> Dir {
        Dir { tmp: tempfile::Builder::new().prefix(&format!("dkimpress-{name}-")).tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, data).unwrap();
        p
    }

    /// A command running `dkimpress` in this directory.
    pub fn cmd(&self) -> Cmd {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dkimpress"));
        c.current_dir(self.path());
        Cmd { cmd: c, stdin: None }
    }

    /// Generates a key with `dkimpress genkey` into this directory; returns the .private path.
    pub fn genkey(&self, selector: &str, args: &[&str]) -> PathBuf {
        let out = self.cmd().args(["genkey", "-d", "example.com", "-s", selector]).args(args).run();
        assert_eq!(out.status.code(), Some(0), "genkey failed: {}", String::from_utf8_lossy(&out.stderr));
        self.join(&format!("{selector}.private"))
    }
}

pub struct Cmd {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Self {
        self.cmd.args(args);
        self
    }

    pub fn arg<S: AsRef<std::ffi::OsStr>>(mut self, arg: S) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn stdin(mut self, data: &[u8]) -> Self {
        self.stdin = Some(data.to_vec());
        self
    }

    pub fn run(mut self) -> Output {
        self.cmd.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("spawn dkimpress");
        if let Some(data) = self.stdin.take() {
            let mut sin = child.stdin.take().unwrap();
            // The child may exit before reading everything (usage errors); ignore EPIPE.
            let _ = sin.write_all(&data);
        }
        child.wait_with_output().unwrap()
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(self) -> Vec<u8> {
        let out = self.run();
        assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }
}

/// The Python that has dkimpy: $DKIMPRESS_PYTHON (set by scripts/test) or python3.
pub fn python() -> String {
    std::env::var("DKIMPRESS_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Whether dkimpy can be used. When it cannot: a test that needs it fails if
/// DKIMPRESS_REQUIRE_PEERS=1 (set by scripts/test, so CI never skips), and otherwise says so
/// loudly and skips.
pub fn dkimpy_available() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import dkim, nacl"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("DKIMPRESS_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!(
                "dkimpy (PyPI: dkimpy, pynacl) is required (DKIMPRESS_REQUIRE_PEERS=1) but {} cannot import it",
                python()
            );
        }
        eprintln!("\n!!! SKIPPED: dkimpy is not installed (pip install dkimpy pynacl); independent verification NOT run !!!\n");
    }
    ok
}

/// The shared corpus beside the repository (`../shared/corpus`), an extra: the tests that use
/// it add third-party messages, mailboxes and DKIM vectors to what `testdata/` covers. When it
/// is missing they say so loudly and skip, so that a fresh clone passes its tests; but with
/// DKIMPRESS_REQUIRE_CORPUS=1 (which scripts/test sets whenever the corpus is there, so CI,
/// which has it, never skips silently) a missing corpus fails them.
pub fn shared_corpus() -> Option<PathBuf> {
    let p = root().join("../shared/corpus");
    if p.is_dir() {
        return Some(p);
    }
    if std::env::var("DKIMPRESS_REQUIRE_CORPUS").as_deref() == Ok("1") {
        panic!("../shared/corpus is required (DKIMPRESS_REQUIRE_CORPUS=1) but missing");
    }
    eprintln!("\n!!! SKIPPED: ../shared/corpus not found beside the repository; the corpus extras NOT run !!!\n");
    None
}

/// Runs scripts/dkimpy-verify; returns (success, stdout).
pub fn dkimpy_verify(keys: &Path, extra: &[&str], messages: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python())
        .arg(root().join("scripts/dkimpy-verify"))
        .arg("--keys")
        .arg(keys)
        .args(extra)
        .args(messages)
        .output()
        .expect("run scripts/dkimpy-verify");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A deterministic mbox (mboxrd) of `n` varied messages: sizes from a few hundred bytes to
/// ~40 KB, folded headers, `>From ` quoted body lines, blank-line runs, 8-bit text; CRLF line
/// ends when `crlf`. Every message is signable.
pub fn gen_mbox(n: usize, crlf: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..n {
        let mut m = format!(
            "From sender{i}@example.com Sat Nov 21 10:{:02}:00 2026\n\
             Received: from relay{i}.example.net\n\tby mx.example.com; Sat, 21 Nov 2026 10:00:00 +0000\n\
             From: Sender {i} <sender{i}@example.com>\n\
             To: list@example.org\n\
             Subject: message {i} of the generated archive,\n folded once\n\
             Date: Sat, 21 Nov 2026 10:00:00 +0000\n\
             Message-ID: <{i}.gen@example.com>\n\n",
            i % 60
        );
        let lines = 5 + (rnd() % 600) as usize;
        for l in 0..lines {
            match rnd() % 23 {
                0 => m.push_str(">From the quoted line\n"),
                1 => m.push_str(">>From a twice quoted line\n"),
                2 => m.push('\n'),
                3 => m.push_str("trailing  spaces and\ttabs \t \n"),
                4 => m.push_str("Gr\u{fc}\u{df}e aus K\u{f6}ln\n"),
                _ => m.push_str(&format!("line {l} of message {i}: lorem ipsum dolor sit amet\n")),
            }
        }
        m.push('\n');
        out.extend_from_slice(m.as_bytes());
    }
    if crlf {
        String::from_utf8(out).unwrap().replace('\n', "\r\n").into_bytes()
    } else {
        out
    }
}

/// Removes the DKIM-Signature fields a test added (recognised by `marker`, e.g. `s=bulk;`,
/// in their first two lines) with their continuation lines: what is left must be the input.
pub fn strip_added(out: &[u8], marker: &str) -> Vec<u8> {
    let mut res = Vec::with_capacity(out.len());
    let mut lines = out.split_inclusive(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.starts_with(b"DKIM-Signature: v=1;") {
            let mut field = line.to_vec();
            let mut cont = vec![];
            while let Some(next) = lines.peek() {
                if next.starts_with(b"\t") {
                    cont.push(*next);
                    lines.next();
                } else {
                    break;
                }
            }
            for c in &cont {
                field.extend_from_slice(c);
            }
            let text = String::from_utf8_lossy(&field).replace("\r\n\t", "").replace("\n\t", "");
            if text.contains(marker) {
                continue;
            }
            res.extend_from_slice(&field);
            continue;
        }
        res.extend_from_slice(line);
    }
    res
}

/// The `dkimpress` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dkimpress")
}

/// The shipped RSA test key, copied with mode 0600 into the test directory.
pub fn key(dir: &Dir) -> PathBuf {
    let p = dir.write("test.private", &std::fs::read(testdata("keys/test.private")).unwrap());
    set_mode(&p, 0o600);
    p
}

/// Sets the permission bits of `p`.
pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `-d example.com -s test -k KEY`, with [`key`] copied into `dir`.
pub fn key_args(dir: &Dir) -> Vec<String> {
    vec!["-d".into(), "example.com".into(), "-s".into(), "test".into(), "-k".into(), key(dir).display().to_string()]
}

/// A plain message with LF line ends, from `testdata/messages`.
pub fn message() -> Vec<u8> {
    std::fs::read(testdata("messages/plain-lf.eml")).unwrap()
}

/// An mbox of `n` generated messages with LF line ends.
pub fn mbox(n: usize) -> Vec<u8> {
    gen_mbox(n, false)
}

/// What a run wrote to stderr, as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Temporary files a run left beside its output.
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dkimpress-") || n.ends_with(".lock"))
        .collect()
}
