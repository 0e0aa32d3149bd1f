//! `dkimpress milter` against an MTA-side milter client written here from the protocol (as
//! Postfix's milter8 speaks it: version 6, all steps offered, leading spaces kept, header
//! values folded with LF, body in CRLF chunks of at most 65,535 octets). What the milter asks
//! for is applied to the message, and the result is checked by dkimpy, not by us.

use crate::util::{dkimpy_available, dkimpy_verify, testdata, testdata_messages, Dir};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `dkimpress milter`, stopped (SIGTERM) when dropped.
pub(crate) struct Milter {
    child: Child,
    socket: PathBuf,
}

impl Milter {
    pub(crate) fn start(dir: &Dir, args: &[&str]) -> Milter {
        let socket = dir.join("milter.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_dkimpress"))
            .current_dir(dir.path())
            .arg("milter")
            .arg("--socket")
            .arg(format!("unix:{}", socket.display()))
            .args(["--log-stderr", "--timestamp", "1700000000"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("milter.log")).unwrap())
            .spawn()
            .unwrap();
        let m = Milter { child, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&m.socket).is_err() {
            assert!(Instant::now() < deadline, "milter did not start: {}", log(dir));
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn signal(&self, sig: &str) {
        Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
    }

    pub(crate) fn connect(&self) -> Mta {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Mta { s }
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        self.signal("-TERM");
        let _ = self.child.wait();
    }
}

pub(crate) fn log(dir: &Dir) -> String {
    std::fs::read_to_string(dir.join("milter.log")).unwrap_or_default()
}

/// The MTA side of one connection.
pub(crate) struct Mta {
    s: UnixStream,
}

/// One reply of the milter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Continue,
    Accept,
    Tempfail,
    Discard,
    Code(String),
    Insert(u32, String, String),
    Change(u32, String, String),
    Negotiated(u32, u32, u32),
    Other(u8),
}

fn cstrings(d: &[u8]) -> Vec<String> {
    d.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

impl Mta {
    fn send(&mut self, cmd: u8, data: &[u8]) {
        let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(cmd);
        p.extend_from_slice(data);
        self.s.write_all(&p).unwrap();
    }

    fn reply(&mut self) -> Reply {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).unwrap();
        let mut d = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut d).unwrap();
        let body = &d[1..];
        let n = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        match d[0] {
            b'c' => Reply::Continue,
            b'a' => Reply::Accept,
            b't' => Reply::Tempfail,
            b'd' => Reply::Discard,
            b'y' => Reply::Code(cstrings(body)[0].clone()),
            b'i' | b'm' => {
                let s = cstrings(&body[4..]);
                let (name, value) = (s[0].clone(), s[1].clone());
                if d[0] == b'i' {
                    Reply::Insert(n(0), name, value)
                } else {
                    Reply::Change(n(0), name, value)
                }
            }
            b'O' => Reply::Negotiated(n(0), n(4), n(8)),
            other => Reply::Other(other),
        }
    }

    /// Negotiation as Postfix 3 offers it; returns the steps the milter chose.
    pub(crate) fn negotiate(&mut self) -> u32 {
        let mut d = 6u32.to_be_bytes().to_vec();
        d.extend_from_slice(&0x1ffu32.to_be_bytes());
        d.extend_from_slice(&0x1f_ffffu32.to_be_bytes());
        self.send(b'O', &d);
        match self.reply() {
            Reply::Negotiated(6, actions, steps) => {
                assert!(actions & 1 != 0, "the milter must ask to add header fields");
                steps
            }
            r => panic!("negotiation: {r:?}"),
        }
    }

    fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) {
        let mut d = vec![stage];
        for (k, v) in pairs {
            d.extend_from_slice(k.as_bytes());
            d.push(0);
            d.extend_from_slice(v.as_bytes());
            d.push(0);
        }
        self.send(b'D', &d);
    }

    pub(crate) fn connect_from(&mut self, addr: &str) {
        self.connect_via(addr, "smtpd");
    }

    /// A client at `addr` that reached the MTA through the daemon called `daemon`.
    fn connect_via(&mut self, addr: &str, daemon: &str) {
        self.connect_full("client.example", addr, "mx.example.com", daemon);
    }

    /// A client the MTA (whose name is `j`) names `host`, at `addr`, through smtpd.
    fn connect_named(&mut self, host: &str, addr: &str, j: &str) {
        self.connect_full(host, addr, j, "smtpd")
    }

    fn connect_full(&mut self, host: &str, addr: &str, j: &str, daemon: &str) {
        self.macros(b'C', &[("j", j), ("{daemon_name}", daemon)]);
        let mut d = host.as_bytes().to_vec();
        d.push(0);
        d.push(if addr.contains(':') { b'6' } else { b'4' });
        d.extend_from_slice(&25000u16.to_be_bytes());
        d.extend_from_slice(addr.as_bytes());
        d.push(0);
        self.send(b'C', &d);
        assert_eq!(self.reply(), Reply::Continue);
    }

    /// Sends one message (its stored bytes, LF or CRLF) the way an MTA does, and returns the
    /// replies at its end. `steps` are the negotiated steps.
    pub(crate) fn message(&mut self, msg: &[u8], steps: u32, auth: Option<&str>) -> Vec<Reply> {
        let mut m = vec![("i", "4QueueID1")];
        if let Some(a) = auth {
            m.push(("{auth_authen}", a));
        }
        self.macros(b'M', &m);
        self.send(b'M', b"<sender@example.com>\0");
        assert_eq!(self.reply(), Reply::Continue);
        let text = msg.to_vec();
        let (head, body) = split_message(&text);
        for (name, value) in head {
            let mut d = name.clone();
            d.push(0);
            d.extend_from_slice(&value);
            d.push(0);
            self.send(b'L', &d);
            if steps & (1 << 7) == 0 {
                assert_eq!(self.reply(), Reply::Continue);
            }
        }
        self.send(b'N', b"");
        assert_eq!(self.reply(), Reply::Continue);
        for chunk in body.chunks(65535) {
            self.send(b'B', chunk);
            assert_eq!(self.reply(), Reply::Continue);
        }
        self.send(b'E', b"");
        let mut out = vec![];
        loop {
            let r = self.reply();
            let last = !matches!(r, Reply::Insert(..) | Reply::Change(..) | Reply::Other(b'q'));
            out.push(r);
            if last {
                return out;
            }
        }
    }
}

/// A header field: name, value.
type Field = (Vec<u8>, Vec<u8>);

/// Header fields as (name, value after the colon, LF between folded lines) and the body in
/// CRLF, as an MTA holds them.
fn split_message(msg: &[u8]) -> (Vec<Field>, Vec<u8>) {
    let text = msg.to_vec();
    let mut lines: Vec<Vec<u8>> = vec![];
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == b'\n' {
            let mut l = text[start..i].to_vec();
            if l.last() == Some(&b'\r') {
                l.pop();
            }
            lines.push(l);
            start = i + 1;
        }
    }
    if start < text.len() {
        lines.push(text[start..].to_vec());
    }
    let mut fields: Vec<Field> = vec![];
    let mut i = 0;
    while i < lines.len() && !lines[i].is_empty() {
        let l = &lines[i];
        if l[0] == b' ' || l[0] == b'\t' {
            let last = fields.last_mut().unwrap();
            last.1.push(b'\n');
            last.1.extend_from_slice(l);
        } else {
            let colon = l.iter().position(|&b| b == b':').unwrap();
            fields.push((l[..colon].to_vec(), l[colon + 1..].to_vec()));
        }
        i += 1;
    }
    let mut body = vec![];
    for l in lines.iter().skip(i + 1) {
        body.extend_from_slice(l);
        body.extend_from_slice(b"\r\n");
    }
    (fields, body)
}

/// The message as delivered after the milter's edits (CRLF line ends).
pub(crate) fn apply(msg: &[u8], replies: &[Reply]) -> Vec<u8> {
    let (mut fields, body) = split_message(msg);
    for r in replies {
        match r {
            Reply::Insert(i, name, value) => {
                fields.insert(*i as usize, (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            }
            Reply::Change(i, name, value) => {
                let pos = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.0.eq_ignore_ascii_case(name.as_bytes()))
                    .nth(*i as usize - 1)
                    .map(|(p, _)| p)
                    .expect("change of a field that is not there");
                if value.is_empty() {
                    fields.remove(pos);
                } else {
                    fields[pos].1 = value.as_bytes().to_vec();
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    for (n, v) in fields {
        out.extend_from_slice(&n);
        out.push(b':');
        out.extend_from_slice(&String::from_utf8_lossy(&v).replace('\n', "\r\n").into_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

pub(crate) fn keys(dir: &Dir) -> PathBuf {
    let d = dir.join("keys");
    std::fs::create_dir_all(&d).unwrap();
    for k in ["test", "test-ed"] {
        let p = d.join(format!("{k}.private"));
        std::fs::copy(testdata(&format!("keys/{k}.private")), &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::copy(testdata(&format!("keys/{k}.txt")), d.join(format!("{k}.txt"))).unwrap();
    }
    d
}

/// An opendkim.conf signing example.com with the Ed25519 and RSA test keys, from the loopback.
fn conf(dir: &Dir, extra: &str) -> PathBuf {
    let k = keys(dir);
    std::fs::write(
        k.join("keytable"),
        "ed example.com:test-ed:keys/test-ed.private\nrsa example.com:test:keys/test.private\n",
    )
    .unwrap();
    std::fs::write(k.join("signingtable"), "*@example.com ed\n*@example.com rsa\n").unwrap();
    dir.write(
        "opendkim.conf",
        format!(
            "Syslog yes\nUMask 007\nKeyTable refile:keys/keytable\nSigningTable refile:keys/signingtable\n\
             MultipleSignatures yes\nInternalHosts 127.0.0.1, 10.0.0.0/8\nAuthservID mx.example.com\n{extra}"
        )
        .as_bytes(),
    )
}

/// The messages of testdata that an MTA would carry unchanged: not the ones whose header
/// block an MTA rewrites (no separator, a name with a space before the colon).
fn carried_messages() -> Vec<PathBuf> {
    testdata_messages()
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            !n.starts_with("header-only-no-separator") && !n.starts_with("space-before-colon")
        })
        .collect()
}

fn write_all(dir: &Dir, name: &str, msgs: &[Vec<u8>]) -> Vec<PathBuf> {
    msgs.iter().enumerate().map(|(n, m)| dir.write(&format!("{name}/{n}.eml"), m)).collect()
}

dktest!(
    /// Mail from an internal host is signed with both keys (simple/simple, OpenDKIM's default)
    /// and every delivered message passes dkimpy.
    signs_internal_mail_dkimpy_verifies,
    |dir| {
        if !dkimpy_available() {
            return;
        }
        let c = conf(&dir, "");
        let m = Milter::start(&dir, &["--config", c.to_str().unwrap()]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        assert!(steps & (1 << 20) != 0, "leading spaces must be asked for");
        mta.connect_from("127.0.0.1");
        let mut delivered = vec![];
        for p in carried_messages() {
            let msg = std::fs::read(&p).unwrap();
            let r = mta.message(&msg, steps, None);
            assert_eq!(r.last(), Some(&Reply::Accept), "{}: {r:?}", p.display());
            let inserted = r.iter().filter(|r| matches!(r, Reply::Insert(0, n, _) if n == "DKIM-Signature")).count();
            assert_eq!(inserted, 2, "{}: {r:?}\n{}", p.display(), log(&dir));
            delivered.push(apply(&msg, &r));
        }
        assert!(String::from_utf8_lossy(&delivered[0]).contains("c=simple/simple"));
        let files = write_all(&dir, "out", &delivered);
        let (ok, text) = dkimpy_verify(&dir.join("keys"), &["--raw", "--expect-sigs", "2"], &files);
        assert!(ok, "{text}");
    }
);

dktest!(
    /// A client that is not internal and did not authenticate is not signed for, even with a
    /// From at our domain; an authenticated one is. Its mail is verified instead: a forged
    /// Authentication-Results with our authserv-id is removed, ours added.
    external_mail_is_verified_not_signed,
    |dir| {
        let c = conf(&dir, "");
        // A message signed by us earlier, as it would arrive from outside.
        let signed = dir
            .cmd()
            .args(["sign", "-d", "example.com", "-s", "test-ed", "-k", "keys/test-ed.private", "--timestamp", "1700000000"])
            .arg(testdata("messages/plain-lf.eml"))
            .ok();
        let forged = [b"Authentication-Results: mx.example.com; dkim=pass header.d=bank.example\n".as_slice(), &signed]
            .concat();
        let zone = dir.join("keys/test-ed.txt");
        let m = Milter::start(&dir, &["--config", c.to_str().unwrap(), "--dns-zone", zone.to_str().unwrap()]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("192.0.2.7");
        let r = mta.message(&forged, steps, None);
        assert!(!r.iter().any(|r| matches!(r, Reply::Insert(_, n, _) if n == "DKIM-Signature")), "{r:?}");
        assert!(r.contains(&Reply::Change(1, "Authentication-Results".into(), String::new())), "{r:?}");
        let ar = r.iter().find_map(|r| match r {
            Reply::Insert(0, n, v) if n == "Authentication-Results" => Some(v.clone()),
            _ => None,
        });
        let ar = ar.unwrap_or_else(|| panic!("no Authentication-Results: {r:?}"));
        assert!(ar.starts_with(" mx.example.com;") && ar.contains("dkim=pass"), "{ar}");
        assert_eq!(r.last(), Some(&Reply::Accept));
        // Unsigned mail from outside: no field added (AlwaysAddARHeader is off).
        let r = mta.message(b"From: x@example.com\nSubject: s\n\nhi\n", steps, None);
        assert_eq!(r, [Reply::Accept]);
        assert!(log(&dir).contains("external host 192.0.2.7 tried to send mail as example.com"), "{}", log(&dir));
        // The same client, authenticated: signed.
        let r = mta.message(b"From: x@example.com\nSubject: s\n\nhi\n", steps, Some("alice"));
        assert!(r.iter().any(|r| matches!(r, Reply::Insert(0, n, _) if n == "DKIM-Signature")), "{r:?}");
    }
);

dktest!(
    /// A key that cannot be read defers the message (On-SignatureError's default, tempfail);
    /// `On-SignatureError accept` passes it on unsigned. Nothing is lost either way.
    broken_key_defers_then_accept_policy,
    |dir| {
        let k = keys(&dir);
        std::fs::write(k.join("keytable"), "ed example.com:test-ed:keys/missing.private\n").unwrap();
        std::fs::write(k.join("signingtable"), "*@example.com ed\n").unwrap();
        let c = dir.write(
            "opendkim.conf",
            b"KeyTable refile:keys/keytable\nSigningTable refile:keys/signingtable\nMode s\n",
        );
        let msg = b"From: a@example.com\nSubject: s\n\nbody\n";
        {
            let m = Milter::start(&dir, &["--config", c.to_str().unwrap()]);
            let mut mta = m.connect();
            let steps = mta.negotiate();
            mta.connect_from("127.0.0.1");
            let r = mta.message(msg, steps, None);
            assert!(matches!(&r[..], [Reply::Code(c)] if c.starts_with("451 4.7.1")), "{r:?}");
        }
        std::fs::write(&c, "KeyTable refile:keys/keytable\nSigningTable refile:keys/signingtable\nMode s\nOn-SignatureError accept\n")
            .unwrap();
        let m = Milter::start(&dir, &["--config", c.to_str().unwrap()]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("127.0.0.1");
        assert_eq!(mta.message(msg, steps, None), [Reply::Accept]);
    }
);

dktest!(
    /// The daemon survives clients that vanish mid-message or send garbage, serves many
    /// connections at once, re-reads its configuration on SIGHUP, and removes its socket on
    /// SIGTERM.
    survives_disconnects_reloads_and_stops,
    |dir| {
        let c = conf(&dir, "");
        let m = Milter::start(&dir, &["--config", c.to_str().unwrap()]);
        // Gone after the header; gone after half a packet; a broken length.
        {
            let mut mta = m.connect();
            let steps = mta.negotiate();
            mta.connect_from("127.0.0.1");
            mta.send(b'L', b"From\0 a@example.com\0");
            if steps & (1 << 7) == 0 {
                mta.reply();
            }
        }
        {
            let mut s = UnixStream::connect(&m.socket).unwrap();
            s.write_all(&[0, 0, 0, 50, b'L', b'x']).unwrap();
        }
        {
            let mut s = UnixStream::connect(&m.socket).unwrap();
            s.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
            let mut buf = [0u8; 1];
            assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "a broken packet closes the connection");
        }
        // Twenty connections at once, each signing.
        let threads: Vec<_> = (0..20)
            .map(|n| {
                let socket = m.socket.clone();
                std::thread::spawn(move || {
                    let s = UnixStream::connect(&socket).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut mta = Mta { s };
                    let steps = mta.negotiate();
                    mta.connect_from("10.1.2.3");
                    let msg = format!("From: u{n}@example.com\nSubject: {n}\n\nbody {n}\n");
                    let r = mta.message(msg.as_bytes(), steps, None);
                    r.iter().filter(|r| matches!(r, Reply::Insert(..))).count()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 2);
        }
        // A connection open across the reload keeps working.
        let mut before = m.connect();
        let before_steps = before.negotiate();
        before.connect_from("127.0.0.1");
        // Reload: only the Ed25519 key is left in the SigningTable.
        std::fs::write(dir.join("keys/signingtable"), "*@example.com ed\n").unwrap();
        m.signal("-HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log(&dir).contains("configuration re-read") {
            assert!(Instant::now() < deadline, "no reload: {}", log(&dir));
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = before.message(b"From: a@example.com\n\nx\n", before_steps, None);
        assert_eq!(r.last(), Some(&Reply::Accept), "the connection opened before the reload: {r:?}");
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("127.0.0.1");
        let r = mta.message(b"From: a@example.com\n\nx\n", steps, None);
        assert_eq!(r.iter().filter(|r| matches!(r, Reply::Insert(..))).count(), 1, "{r:?}");
        // A broken configuration on reload keeps the old one.
        std::fs::write(&c, "Frobnicate yes\n").unwrap();
        m.signal("-HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log(&dir).contains("the old one stays") {
            assert!(Instant::now() < deadline, "{}", log(&dir));
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = mta.message(b"From: a@example.com\n\nx\n", steps, None);
        assert_eq!(r.iter().filter(|r| matches!(r, Reply::Insert(..))).count(), 1, "{r:?}");
        drop((mta, before));
        let socket = m.socket.clone();
        drop(m);
        assert!(!socket.exists(), "the socket is removed on SIGTERM");
    }
);

dktest!(
    /// Bad settings fail at start with a clear error and exit 78 (config) or 64 (usage).
    refuses_bad_settings,
    |dir| {
        let out = dir.cmd().args(["milter", "-d", "example.com", "-s", "s", "-k", "nope.key"]).run();
        assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no socket"));
        let c = conf(&dir, "On-BadSignature shrug\n");
        let out = dir.cmd().args(["milter", "--socket", "inet:0@127.0.0.1", "--config", c.to_str().unwrap()]).run();
        assert_eq!(out.status.code(), Some(78), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("On-BadSignature"));
        let out = dir.cmd().args(["milter", "--socket", "tcp:25", "--config", c.to_str().unwrap()]).run();
        assert_eq!(out.status.code(), Some(78), "{}", String::from_utf8_lossy(&out.stderr));
    }
);

dktest!(
    /// libmilter's own client (miltertest, from OpenDKIM) drives the daemon: the DKIM-Signature
    /// it receives, put on the message it sent, passes dkimpy. Needs the `miltertest` package
    /// (scripts/test installs it when it can); skips loudly without it.
    miltertest_client_gets_a_valid_signature,
    |dir| {
        let have = Command::new("miltertest").arg("-h").output().is_ok();
        if !have {
            if std::env::var("DKIMPRESS_REQUIRE_MILTERTEST").as_deref() == Ok("1") {
                panic!("miltertest is required (DKIMPRESS_REQUIRE_MILTERTEST=1) but not installed");
            }
            eprintln!("\n!!! SKIPPED: miltertest not installed (apt-get install miltertest) !!!\n");
            return;
        }
        if !dkimpy_available() {
            return;
        }
        let c = conf(&dir, "");
        std::fs::write(dir.join("keys/signingtable"), "*@example.com rsa\n").unwrap();
        let m = Milter::start(&dir, &["--config", c.to_str().unwrap()]);
        let script = crate::util::root().join("tests/miltertest/sign.lua");
        let out = Command::new("miltertest")
            .arg("-s")
            .arg(&script)
            .arg("-D")
            .arg(format!("socket=unix:{}", m.socket.display()))
            .args(["-D", "from=alice@example.com"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "miltertest: {text}{}\n{}", String::from_utf8_lossy(&out.stderr), log(&dir));
        let sig = text.split("BEGIN-SIGNATURE\n").nth(1).and_then(|t| t.split("\nEND-SIGNATURE").next()).unwrap();
        // The message as miltertest sent it, with the field put on top as an MTA would.
        let leadspc = if sig.starts_with(' ') { "" } else { " " };
        let msg = format!(
            "DKIM-Signature:{leadspc}{}\r\nFrom: Alice <alice@example.com>\r\nTo: rcpt@example.net\r\n\
             Subject: miltertest\r\n\twith a folded line\r\nDate: Tue, 01 Dec 2026 05:00:00 +0000\r\n\
             Message-ID: <mt.1@example.com>\r\n\r\nHello from miltertest.\r\n\r\n-- \r\nAlice\r\n",
            sig.replace('\n', "\r\n")
        );
        let f = dir.write("mt.eml", msg.as_bytes());
        let (ok, text) = dkimpy_verify(&dir.join("keys"), &["--raw", "--expect-sigs", "1"], &[f]);
        assert!(ok, "{text}");
    }
);

dktest!(
    /// `MTA submission`: mail that reached the MTA through the daemon named `submission`
    /// (`{daemon_name}`) is signed whatever its client; through `smtpd` it is not. Mode `v`
    /// alone needs no keys and signs nothing.
    mta_daemon_names_and_verify_only_mode,
    |dir| {
        let c = conf(&dir, "MTA submission\n");
        let msg = b"From: a@example.com\nSubject: s\n\nbody\n";
        {
            let m = Milter::start(&dir, &["--config", c.to_str().unwrap()]);
            let mut mta = m.connect();
            let steps = mta.negotiate();
            mta.connect_via("198.51.100.4", "submission");
            let r = mta.message(msg, steps, None);
            assert!(r.iter().any(|r| matches!(r, Reply::Insert(0, n, _) if n == "DKIM-Signature")), "{r:?}");
            let mut mta = m.connect();
            let steps = mta.negotiate();
            mta.connect_via("198.51.100.4", "smtpd");
            assert_eq!(mta.message(msg, steps, None), [Reply::Accept]);
        }
        let v = dir.write("verify.conf", b"Mode v\nAuthservID mx.example.com\nAlwaysAddARHeader yes\n");
        let m = Milter::start(&dir, &["--config", v.to_str().unwrap()]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("127.0.0.1");
        let r = mta.message(msg, steps, None);
        assert!(
            matches!(&r[..], [Reply::Insert(0, n, v), Reply::Accept] if n == "Authentication-Results" && v.contains("dkim=none")),
            "{r:?}"
        );
    }
);

dktest!(
    /// Found in review: a mistyped On-* word is refused (not read by its first letter: "defer"
    /// is not "discard"); the pid file is never written through a link; a full daemon closes a
    /// new connection at once instead of leaving it hanging; PeerList clients are accepted
    /// untouched; a local client is 127.0.0.1 and signed only while InternalHosts lists it.
    review_hardening,
    |dir| {
        let c = conf(&dir, "On-BadSignature defer\n");
        let out = dir.cmd().args(["milter", "--socket", "inet:0@127.0.0.1", "--config", c.to_str().unwrap()]).run();
        assert_eq!(out.status.code(), Some(78), "{}", String::from_utf8_lossy(&out.stderr));
        // The pid file: a link planted at its place is replaced, its target left alone.
        let victim = dir.write("victim", b"precious\n");
        std::os::unix::fs::symlink(&victim, dir.join("milter.pid")).unwrap();
        let c = conf(&dir, "PeerList 192.0.2.99\n");
        let pid = dir.join("milter.pid");
        let m = Milter::start(
            &dir,
            &["--config", c.to_str().unwrap(), "--pid-file", pid.to_str().unwrap(), "--max-connections", "2"],
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        assert!(std::fs::symlink_metadata(&pid).unwrap().file_type().is_file());
        // PeerList: the connection is accepted as a whole.
        let mut peer = m.connect();
        peer.negotiate();
        peer.macros(b'C', &[("{daemon_name}", "smtpd")]);
        let mut d = b"relay\0".to_vec();
        d.push(b'4');
        d.extend_from_slice(&25u16.to_be_bytes());
        d.extend_from_slice(b"192.0.2.99\0");
        peer.send(b'C', &d);
        assert_eq!(peer.reply(), Reply::Accept);
        drop(peer);
        std::thread::sleep(Duration::from_millis(200));
        // Two connections, each in the middle of a message, fill it; a third is closed at once.
        let mut a = m.connect();
        a.negotiate();
        a.send(b'M', b"<a@example.com>\0");
        assert_eq!(a.reply(), Reply::Continue);
        let mut b = m.connect();
        b.negotiate();
        b.send(b'M', b"<b@example.com>\0");
        assert_eq!(b.reply(), Reply::Continue);
        let mut third = UnixStream::connect(&m.socket).unwrap();
        third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1];
        assert_eq!(third.read(&mut buf).unwrap_or(0), 0);
        assert!(started.elapsed() < Duration::from_secs(5), "the third connection was left waiting");
        assert!(log(&dir).contains("was refused"), "{}", log(&dir));
        drop((a, b, m));
        // InternalHosts without loopback: local mail is not ours.
        let c = conf(&dir, "");
        let text = std::fs::read_to_string(&c).unwrap().replace("InternalHosts 127.0.0.1, 10.0.0.0/8", "InternalHosts 10.0.0.0/8");
        std::fs::write(&c, text).unwrap();
        let m = Milter::start(&dir, &["--config", c.to_str().unwrap(), "--mode", "s"]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.send(b'C', b"localhost\0L\0\0");
        assert_eq!(mta.reply(), Reply::Continue);
        assert_eq!(mta.message(b"From: a@example.com\n\nx\n", steps, None), [Reply::Accept]);
    }
);

/// The ArchWiki's opendkim.conf and TrustedHosts, taken literally (paths made relative).
fn wiki_conf(dir: &Dir, extra: &str) -> PathBuf {
    let k = keys(dir);
    std::fs::write(k.join("KeyTable"), "test._domainkey.example1.com example1.com:test:keys/test.private\n").unwrap();
    std::fs::write(k.join("SigningTable"), "*@example1.com test._domainkey.example1.com\n").unwrap();
    std::fs::write(k.join("TrustedHosts"), "127.0.0.1\n::1\nlocalhost\nhostname.example1.com\nexample1.com\n").unwrap();
    dir.write(
        "opendkim.conf",
        format!(
            "Syslog yes\nUMask 002\nSocket inet:8891@localhost\nKeyTable refile:keys/KeyTable\n\
             SigningTable refile:keys/SigningTable\nExternalIgnoreList refile:keys/TrustedHosts\n\
             InternalHosts refile:keys/TrustedHosts\nSyslogSuccess yes\nLogWhy yes\n{extra}"
        )
        .as_bytes(),
    )
}

fn has_sig(r: &[Reply]) -> bool {
    r.iter().any(|r| matches!(r, Reply::Insert(0, n, _) if n == "DKIM-Signature"))
}

fn removes_ar(r: &[Reply]) -> bool {
    r.contains(&Reply::Change(1, "Authentication-Results".into(), String::new()))
}

dktest!(
    /// The wiki's `InternalHosts refile:/etc/opendkim/TrustedHosts` with host names: a relay the
    /// MTA names hostname.example1.com is signed for (as opendkim signs it), one it names
    /// otherwise is not; with no AuthservID the MTA's name (`j`) is our authserv-id, and a
    /// forged result under it goes from inbound and from signed mail alike. KeepAuthResults
    /// keeps them.
    wiki_trusted_host_names_and_mta_authserv_id,
    |dir| {
        let c = wiki_conf(&dir, "");
        let record = std::fs::read_to_string(dir.join("keys/test.txt")).unwrap();
        let zone = dir.write("example1.zone", format!("$ORIGIN example1.com.\n{record}").as_bytes());
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap(), "--dns-zone", zone.to_str().unwrap()]);
        let forged = b"Authentication-Results: mail.example1.com; dkim=pass header.d=bank.example\n\
                       From: a@example1.com\nSubject: s\n\nbody\n";
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_named("hostname.example1.com", "192.0.2.50", "mail.example1.com");
        let r = mta.message(forged, steps, None);
        assert!(has_sig(&r), "a trusted host name is signed for: {r:?}\n{}", log(&dir));
        assert!(removes_ar(&r), "a forged result is removed from signed mail too: {r:?}");
        let signed = apply(forged, &r);
        drop(mta);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_named("other.example1.com", "192.0.2.51", "mail.example1.com");
        let r = mta.message(forged, steps, None);
        assert!(!has_sig(&r), "{r:?}");
        assert!(removes_ar(&r), "{r:?}");
        assert!(log(&dir).contains("other.example1.com [192.0.2.51] not internal"), "{}", log(&dir));
        // Our signed message arriving from outside gets our result under the MTA's name.
        let inbound = signed[signed.windows(15).position(|w| w == b"DKIM-Signature:").unwrap()..].to_vec();
        let r = mta.message(&inbound, steps, None);
        let ar = r.iter().find_map(|r| match r {
            Reply::Insert(0, n, v) if n == "Authentication-Results" => Some(v.clone()),
            _ => None,
        });
        assert!(ar.as_deref().is_some_and(|a| a.starts_with(" mail.example1.com;") && a.contains("dkim=pass")), "{r:?}");
        assert!(log(&dir).contains("DKIM verification successful (s=test, d=example1.com)"), "{}", log(&dir));
        // Unknown names ([addr]) are asked by address: the loopback is trusted.
        drop(mta);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_named("[127.0.0.1]", "127.0.0.1", "mail.example1.com");
        assert!(has_sig(&mta.message(forged, steps, None)));
        drop((mta, m));
        let c = wiki_conf(&dir, "KeepAuthResults yes\n");
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap(), "--dns-zone", zone.to_str().unwrap()]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_named("other.example1.com", "192.0.2.51", "mail.example1.com");
        assert!(!removes_ar(&mta.message(forged, steps, None)));
    }
);

dktest!(
    /// Debian's stock /etc/opendkim.conf has no keys (and the default Mode sv): opendkim runs
    /// with it and verifies; so do we, saying once that nothing will be signed. `-n` checks a
    /// file: 0 when it can run, 78 naming the file and line of a bad host list entry.
    stock_conf_without_keys_verifies_and_check_flag,
    |dir| {
        let c = dir.write(
            "opendkim.conf",
            b"Syslog yes\nSyslogSuccess yes\nCanonicalization relaxed/simple\nOversignHeaders From\n\
              UserID root\nUMask 007\nSocket local:/run/opendkim/opendkim.sock\nPidFile /run/opendkim/opendkim.pid\n\
              TrustAnchorFile /usr/share/dns/root.key\n",
        );
        let out = dir.cmd().args(["milter", "-n", "-x", c.to_str().unwrap()]).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("nothing will be signed") && err.contains("TrustAnchorFile"), "{err}");
        let k = keys(&dir);
        let pid = dir.join("milter.pid");
        let m = Milter::start(
            &dir,
            &["-x", c.to_str().unwrap(), "-P", pid.to_str().unwrap(), "--dns-zone", k.join("test.txt").to_str().unwrap()],
        );
        assert!(log(&dir).contains("nothing will be signed"), "{}", log(&dir));
        assert!(log(&dir).contains(&format!("dkimpress v{} starting", env!("CARGO_PKG_VERSION"))), "{}", log(&dir));
        let signed = dir
            .cmd()
            .args(["sign", "-d", "example.com", "-s", "test", "-k", "keys/test.private"])
            .arg(testdata("messages/plain-lf.eml"))
            .ok();
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("127.0.0.1");
        let r = mta.message(&signed, steps, None);
        assert!(
            r.iter().any(|r| matches!(r, Reply::Insert(0, n, v) if n == "Authentication-Results" && v.contains("dkim=pass"))),
            "{r:?}\n{}",
            log(&dir)
        );
        drop((mta, m));
        // -n with a bad entry in a host list: 78, file and line.
        let c = wiki_conf(&dir, "");
        std::fs::write(dir.join("keys/TrustedHosts"), "127.0.0.1\n10.0.0.0/40\n").unwrap();
        let out = dir.cmd().args(["milter", "-n", "-x", c.to_str().unwrap()]).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains("TrustedHosts:2: InternalHosts"), "{err}");
        // Wildcards in a plain file never match: refused, not silently ignored.
        let text = std::fs::read_to_string(&c).unwrap().replace("refile:keys/TrustedHosts", "keys/TrustedHosts2");
        std::fs::write(&c, text.replace("InternalHosts keys/", "InternalHosts ./keys/").replace("ExternalIgnoreList keys/", "ExternalIgnoreList ./keys/")).unwrap();
        std::fs::write(dir.join("keys/TrustedHosts2"), "*.example1.com\n").unwrap();
        let out = dir.cmd().args(["milter", "-n", "-x", c.to_str().unwrap()]).run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains("TrustedHosts2:1") && err.contains("refile"), "{err}");
        // -V prints the version.
        let out = dir.cmd().args(["milter", "-V"]).run();
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
);

dktest!(
    /// Keys in PostgreSQL are live, as with opendkim (which queries per message): a selector
    /// changed in the database between two messages signs the second with the new one, and a
    /// domain added after a message found no key is signed for at once (--db-cache 0), all
    /// without a reload.
    milter_database_keys_are_live,
    |dir| {
        let Some(pg) = crate::pg::PgServer::start() else { return };
        let k = keys(&dir);
        pg.sql("postgres", "CREATE DATABASE mail");
        pg.sql(
            "mail",
            "CREATE TABLE dkim (id text PRIMARY KEY, domain text, selector text, key text);\
             CREATE TABLE signing (pattern text, key_id text);",
        );
        let rsa = std::fs::read_to_string(k.join("test.private")).unwrap();
        let ed = std::fs::read_to_string(k.join("test-ed.private")).unwrap();
        pg.sql("mail", &format!("INSERT INTO dkim VALUES ('k1', 'example.com', 'test', '{rsa}')"));
        pg.sql("mail", "INSERT INTO signing VALUES ('example.com', 'k1')");
        let host = pg.dsn_host();
        let c = dir.write(
            "opendkim.conf",
            format!(
                "KeyTable dsn:pgsql://dkim@{host}/mail/table=dkim?keycol=id?datacol=domain,selector,key\n\
                 SigningTable dsn:pgsql://dkim@{host}/mail/table=signing?keycol=pattern?datacol=key_id\n\
                 InternalHosts dsn:pgsql://dkim@{host}/mail/table=signing?keycol=pattern?datacol=key_id\n\
                 AuthservID mx.example.com\n"
            )
            .as_bytes(),
        );
        // The host list in the database: the loopback is internal.
        pg.sql("mail", "INSERT INTO signing VALUES ('127.0.0.1', '')");
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap(), "--db-cache", "0"]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("127.0.0.1");
        let sel = |r: &[Reply]| {
            r.iter()
                .find_map(|r| match r {
                    Reply::Insert(0, n, v) if n == "DKIM-Signature" => {
                        v.split(';').find_map(|t| t.trim().strip_prefix("s=").map(str::to_string))
                    }
                    _ => None,
                })
                .unwrap_or_default()
        };
        let msg = b"From: a@example.com\nSubject: s\n\nbody\n";
        assert_eq!(sel(&mta.message(msg, steps, None)), "test", "{}", log(&dir));
        pg.sql("mail", &format!("UPDATE dkim SET selector = 'test-ed', key = '{ed}' WHERE id = 'k1'"));
        assert_eq!(sel(&mta.message(msg, steps, None)), "test-ed", "{}", log(&dir));
        let other = b"From: b@example.org\nSubject: s\n\nbody\n";
        assert_eq!(sel(&mta.message(other, steps, None)), "");
        pg.sql("mail", &format!("INSERT INTO dkim VALUES ('k2', 'example.org', 'test', '{rsa}'); INSERT INTO signing VALUES ('example.org', 'k2')"));
        assert_eq!(sel(&mta.message(other, steps, None)), "test", "{}", log(&dir));
        // A client the database does not list is not signed for.
        drop(mta);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("192.0.2.1");
        assert_eq!(sel(&mta.message(msg, steps, None)), "");
    }
);

/// The value of a zone-file TXT record as genkey writes it: its quoted strings joined.
fn record_value(zone_text: &str) -> Vec<u8> {
    zone_text.split('"').skip(1).step_by(2).collect::<String>().into_bytes()
}

/// A DNS server on loopback that serves the test key of example.com and never answers for any
/// name under hole.example; and its address.
fn black_hole_dns(dir: &Dir) -> (crate::dnsserver::DnsServer, String) {
    use crate::dnsserver::{Answer, DnsServer};
    let value = record_value(&std::fs::read_to_string(dir.join("keys/test.txt")).unwrap());
    let mut records = std::collections::HashMap::new();
    records.insert("test._domainkey.example.com".to_string(), Answer::Txt(vec![value]));
    records.insert("*.hole.example".to_string(), Answer::Timeout);
    let dns = DnsServer::start(records, 255);
    let server = dns.addr.to_string();
    (dns, server)
}

dktest!(
    /// DNS black holes must not defer other senders' mail: 20 connections from 4 addresses keep
    /// sending messages whose signatures name domains whose DNS never answers (a new domain per
    /// message), while a legitimate sender's signed messages are verified: each gets dkim=pass
    /// (not a 451) within 3 s.
    black_holed_dns_does_not_defer_other_senders,
    |dir| {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let c = conf(&dir, "Mode v\n");
        let (_dns, server) = black_hole_dns(&dir);
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap(), "--dns-server", &server, "--dns-timeout", "1"]);
        let legit = dir
            .cmd()
            .args(["sign", "-d", "example.com", "-s", "test", "-k", "keys/test.private"])
            .arg(testdata("messages/plain-lf.eml"))
            .ok();
        let bad = String::from_utf8(legit.clone()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut attackers = vec![];
        for i in 0..20 {
            let (stop, sent, bad) = (stop.clone(), sent.clone(), bad.clone());
            let mut mta = m.connect();
            attackers.push(std::thread::spawn(move || {
                let steps = mta.negotiate();
                mta.connect_from(&format!("192.0.2.{}", 1 + i % 4));
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let msg = bad.replace("d=example.com", &format!("d=a{i}x{n}.hole.example"));
                    mta.message(msg.as_bytes(), steps, None);
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("198.51.100.7");
        for n in 0..5 {
            let started = Instant::now();
            let r = mta.message(&legit, steps, None);
            let took = started.elapsed();
            let pass = r.iter().any(|r| matches!(r, Reply::Insert(0, h, v) if h == "Authentication-Results" && v.contains("dkim=pass")));
            assert!(pass && r.last() == Some(&Reply::Accept), "legitimate message {n}: {r:?}\n{}", log(&dir));
            assert!(took < Duration::from_secs(3), "legitimate message {n} took {took:?}");
        }
        stop.store(true, Ordering::SeqCst);
        for a in attackers {
            a.join().unwrap();
        }
        assert!(sent.load(Ordering::SeqCst) >= 20, "the attackers did not get through: {}", log(&dir));
    }
);

dktest!(
    /// Idle connections must not lock the MTA out: with every place held by clients that never
    /// negotiate, or that negotiate and then sit idle, the MTA's new connection still gets in
    /// (the one doing least is closed, and that is logged) and its message is signed. A
    /// connection that says nothing is closed after 5 s on its own.
    idle_connections_do_not_lock_the_mta_out,
    |dir| {
        let c = conf(&dir, "");
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap(), "--max-connections", "4"]);
        let msg = b"From: a@example.com\nSubject: s\n\nbody\n";
        let silent: Vec<UnixStream> = (0..4).map(|_| UnixStream::connect(&m.socket).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("127.0.0.1");
        assert!(has_sig(&mta.message(msg, steps, None)), "{}", log(&dir));
        assert!(log(&dir).contains("closed a silent (never negotiated) connection"), "{}", log(&dir));
        // Negotiated but idle attackers: the same.
        let mut idle = vec![];
        for _ in 0..4 {
            let mut x = m.connect();
            x.negotiate();
            idle.push(x);
        }
        let mut mta2 = m.connect();
        let steps = mta2.negotiate();
        mta2.connect_from("127.0.0.1");
        assert!(has_sig(&mta2.message(msg, steps, None)), "{}", log(&dir));
        assert!(log(&dir).contains("negotiated but unused"), "{}", log(&dir));
        // A connection that never negotiates is closed after the negotiation time.
        let mut lone = UnixStream::connect(&m.socket).unwrap();
        lone.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1];
        assert_eq!(lone.read(&mut buf).unwrap_or(0), 0);
        assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
        drop((silent, idle));
    }
);

dktest!(
    /// The memory of messages in progress (their header blocks: bodies are hashed as they
    /// arrive, not held) has a daemon-wide bound (--max-buffered): while one connection holds
    /// most of it, an internal client's message with a large header block is deferred (451: it
    /// waits, it never goes out unsigned) and an outside client's goes on unchecked; once the
    /// first message ends, the memory is back and such messages are handled again.
    buffered_memory_has_a_daemon_wide_bound,
    |dir| {
        let c = conf(&dir, "");
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap(), "--max-buffered", "1M"]);
        let filler = format!("X-Filler: {}", "x".repeat(66));
        let big = format!("From: a@example.com\nSubject: big\n{}\nbody\n", format!("{filler}\n").repeat(8_000))
            .into_bytes();
        // A holds 600 KB of header fields of a message in progress.
        let mut a = m.connect();
        let steps = a.negotiate();
        a.connect_from("127.0.0.1");
        a.send(b'M', b"<a@example.com>\0");
        assert_eq!(a.reply(), Reply::Continue);
        let fields = [("From", " a@example.com"), ("Subject", " held")].into_iter().map(|(n, v)| (n, v.to_string()));
        let fillers = std::iter::repeat_n(("X-Filler", format!(" {}", "x".repeat(66))), 7_800);
        for (n, v) in fields.chain(fillers) {
            a.send(b'L', format!("{n}\0{v}\0").as_bytes());
            if steps & (1 << 7) == 0 {
                assert_eq!(a.reply(), Reply::Continue);
            }
        }
        a.send(b'N', b"");
        assert_eq!(a.reply(), Reply::Continue);
        a.send(b'B', b"held body\r\n");
        assert_eq!(a.reply(), Reply::Continue);
        let mut b = m.connect();
        let steps_b = b.negotiate();
        b.connect_from("127.0.0.1");
        let r = b.message(&big, steps_b, None);
        assert_eq!(r, [Reply::Code("451 4.3.2 Please try again later".into())], "{}", log(&dir));
        let mut o = m.connect();
        let steps_o = o.negotiate();
        o.connect_from("192.0.2.7");
        assert_eq!(o.message(&big, steps_o, None), [Reply::Accept]);
        assert!(log(&dir).contains("--max-buffered): passed on unchecked"), "{}", log(&dir));
        // A ends its message: signed; the memory is free again for B.
        a.send(b'E', b"");
        let mut ra = vec![];
        loop {
            let r = a.reply();
            let last = !matches!(r, Reply::Insert(..) | Reply::Change(..));
            ra.push(r);
            if last {
                break;
            }
        }
        assert!(has_sig(&ra), "{ra:?}");
        let rb = b.message(&big, steps_b, None);
        assert!(has_sig(&rb), "{rb:?} {}", log(&dir));
    }
);

/// Peak resident memory of a process (VmHWM, KiB).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

dktest!(
    /// Load and soak (issue 20, item 7): for 20 s the milter serves legitimate clients (one
    /// internal client signing, one outside sender whose mail must verify) while attackers
    /// send black-holed signatures, hold silent connections, send 24 MB bodies, garbage
    /// packets, and vanish mid-message, and the daemon is reloaded (SIGHUP) every 2 s. No
    /// legitimate message may be deferred or lost, every signature added passes dkimpy, peak
    /// RSS stays under 128 MiB (--max-buffered 64M plus the daemon's own), and the daemon
    /// answers afterwards. The figures are printed (benches/REPORT.md quotes them).
    soak_mixed_load_with_attackers,
    |dir| {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let c = conf(&dir, "");
        let (_dns, server) = black_hole_dns(&dir);
        let m = Milter::start(
            &dir,
            &["-x", c.to_str().unwrap(), "--dns-server", &server, "--dns-timeout", "1", "--max-buffered", "64M", "--max-connections", "64"],
        );
        let pid = m.child.id();
        let legit_in = dir
            .cmd()
            .args(["sign", "-d", "example.com", "-s", "test", "-k", "keys/test.private"])
            .arg(testdata("messages/plain-lf.eml"))
            .ok();
        let stop = Arc::new(AtomicBool::new(false));
        let attacks = Arc::new(AtomicUsize::new(0));
        let socket = m.socket.clone();
        let mut handles = vec![];
        let spawn_attacker = |kind: usize, stop: Arc<AtomicBool>, attacks: Arc<AtomicUsize>, socket: PathBuf, bad: Vec<u8>| {
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let Ok(s) = UnixStream::connect(&socket) else { continue };
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut mta = Mta { s };
                    match kind {
                        // Black-holed signatures, a new domain each time.
                        0 => {
                            let steps = mta.negotiate();
                            mta.connect_from("192.0.2.66");
                            let msg = String::from_utf8_lossy(&bad).replace("d=example.com", &format!("d=s{n}.hole.example"));
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mta.message(msg.as_bytes(), steps, None)));
                        }
                        // Silent: connect, say nothing.
                        1 => std::thread::sleep(Duration::from_millis(500)),
                        // A 24 MB body, then gone.
                        2 => {
                            let steps = mta.negotiate();
                            mta.connect_from("192.0.2.67");
                            mta.send(b'M', b"<x@example.net>\0");
                            let _ = mta.reply();
                            mta.send(b'L', b"From\0 x@example.net\0");
                            if steps & (1 << 7) == 0 {
                                let _ = mta.reply();
                            }
                            mta.send(b'N', b"");
                            let _ = mta.reply();
                            let chunk = vec![b'y'; 65535];
                            for _ in 0..384 {
                                mta.send(b'B', &chunk);
                                if mta.s.read(&mut [0u8; 5]).is_err() {
                                    break;
                                }
                            }
                        }
                        // Garbage packets, and a vanishing mid-message.
                        _ => {
                            if n.is_multiple_of(2) {
                                let _ = mta.s.write_all(&[0xff, 0xff, 0xff, 0xff, b'Z', 1, 2, 3]);
                            } else {
                                let steps = mta.negotiate();
                                mta.connect_from("192.0.2.68");
                                mta.send(b'M', b"<x@example.net>\0");
                                let _ = mta.reply();
                                let _ = steps;
                            }
                        }
                    }
                    attacks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        for kind in [0, 0, 0, 0, 1, 1, 2, 2, 3, 3] {
            handles.push(spawn_attacker(kind, stop.clone(), attacks.clone(), socket.clone(), legit_in.clone()));
        }
        // The reloads.
        let reloader = {
            let (stop, pid) = (stop.clone(), pid);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_secs(2));
                    let _ = Command::new("kill").args(["-HUP", &pid.to_string()]).status();
                }
            })
        };
        // The legitimate clients.
        let latencies = Arc::new(Mutex::new(vec![]));
        let signed = Arc::new(Mutex::new(vec![]));
        let failures = Arc::new(Mutex::new(vec![]));
        let mut legit = vec![];
        for who in ["internal", "outside"] {
            let (stop, latencies, signed, failures, socket, legit_in) =
                (stop.clone(), latencies.clone(), signed.clone(), failures.clone(), socket.clone(), legit_in.clone());
            legit.push(std::thread::spawn(move || {
                let s = UnixStream::connect(&socket).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut mta = Mta { s };
                let steps = mta.negotiate();
                mta.connect_from(if who == "internal" { "127.0.0.1" } else { "198.51.100.7" });
                let plain = b"From: Alice <alice@example.com>\nTo: b@example.net\nSubject: soak\n\nHello.\n".to_vec();
                while !stop.load(Ordering::SeqCst) {
                    let msg = if who == "internal" { plain.clone() } else { legit_in.clone() };
                    let started = Instant::now();
                    let r = mta.message(&msg, steps, None);
                    latencies.lock().unwrap().push(started.elapsed());
                    let ok = if who == "internal" {
                        has_sig(&r) && r.last() == Some(&Reply::Accept)
                    } else {
                        r.iter().any(|r| matches!(r, Reply::Insert(0, h, v) if h == "Authentication-Results" && v.contains("dkim=pass")))
                    };
                    if !ok {
                        failures.lock().unwrap().push(format!("{who}: {r:?}"));
                    } else if who == "internal" {
                        signed.lock().unwrap().push(apply(&msg, &r));
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_secs(20));
        stop.store(true, Ordering::SeqCst);
        for h in legit {
            h.join().unwrap();
        }
        reloader.join().unwrap();
        for h in handles {
            let _ = h.join();
        }
        let failures = failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "{} legitimate messages failed, first: {}\n{}", failures.len(), failures[0], log(&dir));
        let mut lat = latencies.lock().unwrap().clone();
        lat.sort();
        let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
        let rss = peak_rss_kib(pid);
        let signed = signed.lock().unwrap().clone();
        eprintln!(
            "soak: {} legitimate messages ({} signed), {} attacks, p50 {:?}, p99 {:?}, peak RSS {} MiB",
            lat.len(),
            signed.len(),
            attacks.load(Ordering::SeqCst),
            lat[lat.len() / 2],
            p99,
            rss / 1024
        );
        assert!(lat.len() >= 100, "too few legitimate messages got through: {}", lat.len());
        assert!(rss < 128 * 1024, "peak RSS {} MiB", rss / 1024);
        // The daemon still answers.
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("127.0.0.1");
        assert!(has_sig(&mta.message(b"From: a@example.com\n\nafter\n", steps, None)));
        if dkimpy_available() {
            let sample: Vec<Vec<u8>> = signed.iter().step_by((signed.len() / 50).max(1)).cloned().collect();
            let files = write_all(&dir, "soak", &sample);
            let (ok, text) = dkimpy_verify(&dir.join("keys"), &["--raw", "--expect-sigs", "2"], &files);
            assert!(ok, "{text}");
        }
    }
);

/// A 64 KiB block of body text (CRLF lines) with the whitespace both canonicalizations
/// rewrite: runs of spaces, tabs, whitespace before line ends, empty lines, a lone CR.
fn body_block() -> Vec<u8> {
    let mut b = Vec::with_capacity(65_536);
    let mut n = 0u32;
    while b.len() < 65_536 - 100 {
        n += 1;
        let line = match n % 7 {
            0 => String::new(),
            1 => format!("line {n} with  two spaces and\ta tab \t"),
            2 => "   indented, then trailing   ".to_string(),
            3 => format!("a lone CR\rinside line {n}"),
            _ => format!("plain text {n} of the body, as mail has it"),
        };
        b.extend_from_slice(line.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.resize(65_536 - 2, b'x');
    b.extend_from_slice(b"\r\n");
    b
}

/// Sends a message whose body is `blocks` times `block` then `tail`, a chunk at a time (the
/// body is never held here either); returns the replies at its end.
fn send_streamed(mta: &mut Mta, head: &[u8], block: &[u8], blocks: usize, tail: &[u8], steps: u32) -> Vec<Reply> {
    mta.macros(b'M', &[("i", "4QueueID2")]);
    mta.send(b'M', b"<sender@example.com>\0");
    assert_eq!(mta.reply(), Reply::Continue);
    for (name, value) in split_message(head).0 {
        mta.send(b'L', &[&name[..], b"\0", &value, b"\0"].concat());
        if steps & (1 << 7) == 0 {
            assert_eq!(mta.reply(), Reply::Continue);
        }
    }
    mta.send(b'N', b"");
    assert_eq!(mta.reply(), Reply::Continue);
    for chunk in std::iter::repeat_n(block, blocks).chain([tail]) {
        mta.send(b'B', chunk);
        assert_eq!(mta.reply(), Reply::Continue);
    }
    mta.send(b'E', b"");
    let mut out = vec![];
    loop {
        let r = mta.reply();
        let last = !matches!(r, Reply::Insert(..) | Reply::Change(..));
        out.push(r);
        if last {
            return out;
        }
    }
}

dktest!(
    /// Bodies are canonicalized and hashed as their chunks arrive, never held: 8 internal
    /// clients send 16 MiB bodies at once (signed), then 8 outside clients send the signed
    /// message back (verified, dkim=pass for both signatures), and the milter's peak RSS
    /// stays under 64 MiB (holding the bodies took 128 MiB and more). dkimpy verifies the
    /// signed message. DKIMPRESS_BODY_LOAD=CONNSxMIB sets the load for the figure in
    /// benches/REPORT.md (e.g. 64x100).
    bodies_are_hashed_not_held,
    |dir| {
        let (conns, mib) = std::env::var("DKIMPRESS_BODY_LOAD")
            .ok()
            .and_then(|v| v.split_once('x').and_then(|(c, m)| Some((c.parse().ok()?, m.parse().ok()?))))
            .unwrap_or((8usize, 16usize));
        let c = conf(&dir, "");
        let zone = dir.write(
            "keys/zone",
            &[std::fs::read(dir.join("keys/test.txt")).unwrap(), std::fs::read(dir.join("keys/test-ed.txt")).unwrap()]
                .concat(),
        );
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap(), "--dns-zone", zone.to_str().unwrap()]);
        let block = body_block();
        let blocks = mib * 16;
        let tail = b"the end  \r\n\r\n \t\r\n\r\n".to_vec();
        let head = b"From: a@example.com\nTo: b@example.org\nSubject: a large body\n\n".to_vec();
        let started = Instant::now();
        let run = |from: &'static str, head: &[u8]| -> Vec<Vec<Reply>> {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..conns)
                    .map(|_| {
                        s.spawn(|| {
                            let mut mta = m.connect();
                            let steps = mta.negotiate();
                            mta.connect_from(from);
                            send_streamed(&mut mta, head, &block, blocks, &tail, steps)
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            })
        };
        let signed = run("127.0.0.1", &head);
        for r in &signed {
            assert_eq!(r.iter().filter(|r| has_sig(std::slice::from_ref(r))).count(), 2, "{r:?}\n{}", log(&dir));
            assert_eq!(r.last(), Some(&Reply::Accept));
        }
        // The signed message, as it would come back from outside.
        let signed_head = apply(&head, &signed[0]);
        let verified = run("192.0.2.7", &signed_head);
        for r in &verified {
            let ar = r.iter().find_map(|r| match r {
                Reply::Insert(0, n, v) if n == "Authentication-Results" => Some(v.clone()),
                _ => None,
            });
            let ar = ar.unwrap_or_else(|| panic!("no Authentication-Results: {r:?}\n{}", log(&dir)));
            assert_eq!(ar.matches("dkim=pass").count(), 2, "{ar}");
        }
        let elapsed = started.elapsed();
        let rss = peak_rss_kib(m.child.id());
        println!(
            "bodies: {} connections x {mib} MiB signed, then as many verified, in {elapsed:?}; peak RSS {} MiB",
            conns,
            rss / 1024
        );
        assert!(rss < 64 * 1024, "peak RSS {} MiB", rss / 1024);
        if dkimpy_available() && mib <= 16 {
            let path = dir.join("signed.eml");
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&signed_head).unwrap();
            for _ in 0..blocks {
                f.write_all(&block).unwrap();
            }
            f.write_all(&tail).unwrap();
            drop(f);
            let (ok, text) = dkimpy_verify(&dir.join("keys"), &["--raw", "--expect-sigs", "2"], &[path]);
            assert!(ok, "{text}");
        }
    }
);

dktest!(
    /// Inbound mail with signatures of several body canonicalizations and an `l=` is verified
    /// from body hashes computed as the chunks arrived: text appended after the signed length
    /// fails only the signatures without `l=`.
    streamed_verification_keeps_l_and_both_canonicalizations,
    |dir| {
        let c = conf(&dir, "");
        let zone = dir.write(
            "keys/zone",
            &[std::fs::read(dir.join("keys/test.txt")).unwrap(), std::fs::read(dir.join("keys/test-ed.txt")).unwrap()]
                .concat(),
        );
        let body = "Hello  there,\t\nline two \n\n\n";
        let mut msg = format!("From: a@example.com\nSubject: canonicalizations\n\n{body}").into_bytes();
        for (canon, sel, key, extra) in [
            ("relaxed/relaxed", "test", "keys/test.private", None),
            ("simple/simple", "test-ed", "keys/test-ed.private", None),
            ("relaxed/relaxed", "test-ed", "keys/test-ed.private", Some("--body-length")),
        ] {
            let path = dir.write("in.eml", &msg);
            msg = dir
                .cmd()
                .args(["sign", "-c", canon, "-d", "example.com", "-s", sel, "-k", key, "--timestamp", "1700000000"])
                .args(extra)
                .arg(&path)
                .ok();
        }
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap(), "--dns-zone", zone.to_str().unwrap()]);
        let ar = |msg: &[u8]| -> String {
            let mut mta = m.connect();
            let steps = mta.negotiate();
            mta.connect_from("192.0.2.7");
            let r = mta.message(msg, steps, None);
            r.iter()
                .find_map(|r| match r {
                    Reply::Insert(0, n, v) if n == "Authentication-Results" => Some(v.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no Authentication-Results: {r:?}"))
        };
        let whole = ar(&msg);
        assert_eq!(whole.matches("dkim=pass").count(), 3, "{whole}");
        let appended = [&msg[..], b"appended in transit\n"].concat();
        let a = ar(&appended);
        assert_eq!(a.matches("dkim=pass").count(), 1, "{a}");
        assert_eq!(a.matches("dkim=fail").count(), 2, "{a}");
    }
);

dktest!(
    /// An MTA that sends body chunks without the end-of-header step still gets a signature
    /// over the body it sent (the body starts with the first chunk), which dkimpy verifies.
    body_without_end_of_header_is_hashed,
    |dir| {
        let c = conf(&dir, "");
        let m = Milter::start(&dir, &["-x", c.to_str().unwrap()]);
        let mut mta = m.connect();
        let steps = mta.negotiate();
        mta.connect_from("127.0.0.1");
        mta.send(b'M', b"<a@example.com>\0");
        assert_eq!(mta.reply(), Reply::Continue);
        let head = b"From: a@example.com\nSubject: no end of header\n\n".to_vec();
        for (name, value) in split_message(&head).0 {
            mta.send(b'L', &[&name[..], b"\0", &value, b"\0"].concat());
            if steps & (1 << 7) == 0 {
                assert_eq!(mta.reply(), Reply::Continue);
            }
        }
        mta.send(b'B', b"hello world\r\n");
        assert_eq!(mta.reply(), Reply::Continue);
        mta.send(b'E', b"");
        let mut r = vec![];
        loop {
            let x = mta.reply();
            let last = !matches!(x, Reply::Insert(..) | Reply::Change(..));
            r.push(x);
            if last {
                break;
            }
        }
        assert!(has_sig(&r), "{r:?}");
        if dkimpy_available() {
            let delivered = [apply(&head, &r), b"hello world\r\n".to_vec()].concat();
            let files = write_all(&dir, "out", &[delivered]);
            let (ok, text) = dkimpy_verify(&dir.join("keys"), &["--raw", "--expect-sigs", "2"], &files);
            assert!(ok, "{text}");
        }
    }
);
