//! Milter throughput and latency: `dkimpress milter` against the opendkim daemon (Debian's
//! package, when installed) with the same key, canonicalization and messages, driven by the
//! MTA-side client below at concurrency 1 and 20 (each client thread one connection, many
//! messages, as a Postfix smtpd process reuses its milter connection).
//!
//! ```sh
//! cargo build --release && cargo bench --bench milter -- [--count N] [--size BYTES] [--key FILE] [--arc]
//! ```
//!
//! With `--arc` the milter also seals what it signs (`ARCSign yes`): three RSA signatures a
//! message (DKIM-Signature, ARC-Message-Signature, ARC-Seal), so the table adds signatures/s
//! and their share of openssl's sign/s; opendkim, which cannot seal, is left out.
//!
//! Prints messages/s and the p50/p99 time from end-of-message to the milter's final reply (the
//! latency a message gains), for each daemon and concurrency, next to `openssl speed` RSA-2048
//! sign/s on all cores measured in the same run: the signing limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

trait Conn: Read + Write + Send {}
impl Conn for TcpStream {}
impl Conn for UnixStream {}

/// Where a daemon listens.
#[derive(Clone)]
enum Addr {
    Inet(u16),
    Unix(PathBuf),
}

impl Addr {
    fn spec(&self) -> String {
        match self {
            Addr::Inet(port) => format!("inet:{port}@127.0.0.1"),
            Addr::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(match self {
            Addr::Inet(port) => {
                let s = TcpStream::connect(("127.0.0.1", *port))?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Addr::Unix(p) => Box::new(UnixStream::connect(p)?),
        })
    }
}

struct Client {
    s: Box<dyn Conn>,
    no_header_reply: bool,
}

impl Client {
    fn reply(&mut self) -> u8 {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).expect("milter reply");
        let mut d = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut d).expect("milter reply");
        d[0]
    }

    fn open(addr: &Addr) -> Client {
        let s = addr.connect().expect("connect to the milter");
        let mut c = Client { s, no_header_reply: false };
        let mut d = 6u32.to_be_bytes().to_vec();
        d.extend_from_slice(&0x1ffu32.to_be_bytes());
        d.extend_from_slice(&0x1f_ffffu32.to_be_bytes());
        c.s.write_all(&packet(b'O', &d)).unwrap();
        let mut len = [0u8; 4];
        c.s.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; u32::from_be_bytes(len) as usize];
        c.s.read_exact(&mut r).unwrap();
        let steps = u32::from_be_bytes(r[9..13].try_into().unwrap());
        c.no_header_reply = steps & (1 << 7) != 0;
        let mut conn = b"localhost\0".to_vec();
        conn.push(b'4');
        conn.extend_from_slice(&12345u16.to_be_bytes());
        conn.extend_from_slice(b"127.0.0.1\0");
        c.s.write_all(&packet(b'C', &conn)).unwrap();
        assert_eq!(c.reply(), b'c');
        c.s.write_all(&packet(b'H', b"client.example\0")).unwrap();
        assert_eq!(c.reply(), b'c');
        c
    }

    /// One message; returns the time from end-of-message to the final reply, and how many
    /// header fields were added.
    fn message(&mut self, headers: &[(String, String)], body: &[u8]) -> (Duration, usize) {
        let mut macros = vec![b'M'];
        macros.extend_from_slice(b"i\0BENCH0001\0");
        self.s.write_all(&packet(b'D', &macros)).unwrap();
        self.s.write_all(&packet(b'M', b"<a@example.com>\0")).unwrap();
        assert_eq!(self.reply(), b'c');
        self.s.write_all(&packet(b'R', b"<b@example.net>\0")).unwrap();
        assert_eq!(self.reply(), b'c');
        self.s.write_all(&packet(b'T', b"")).unwrap();
        let r = self.reply();
        assert!(r == b'c' || r == b's', "DATA reply {r}");
        let mut hdrs = vec![];
        for (n, v) in headers {
            let mut d = n.as_bytes().to_vec();
            d.push(0);
            d.extend_from_slice(v.as_bytes());
            d.push(0);
            hdrs.extend_from_slice(&packet(b'L', &d));
        }
        if self.no_header_reply {
            self.s.write_all(&hdrs).unwrap();
        } else {
            // One at a time, each answered (the protocol without SMFIP_NR_HDR).
            let mut at = 0;
            while at < hdrs.len() {
                let len = u32::from_be_bytes(hdrs[at..at + 4].try_into().unwrap()) as usize + 4;
                self.s.write_all(&hdrs[at..at + len]).unwrap();
                assert_eq!(self.reply(), b'c');
                at += len;
            }
        }
        self.s.write_all(&packet(b'N', b"")).unwrap();
        assert_eq!(self.reply(), b'c');
        for chunk in body.chunks(65535) {
            self.s.write_all(&packet(b'B', chunk)).unwrap();
            let r = self.reply();
            assert!(r == b'c' || r == b's', "body reply {r}");
        }
        let t = Instant::now();
        self.s.write_all(&packet(b'E', b"")).unwrap();
        let mut added = 0;
        loop {
            match self.reply() {
                b'i' | b'h' => added += 1,
                b'a' | b'c' => break,
                b'm' | b'p' => {}
                other => panic!("unexpected end-of-message reply {:?}", other as char),
            }
        }
        (t.elapsed(), added)
    }
}

struct Daemon {
    name: &'static str,
    child: Child,
    addr: Addr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn wait_for(addr: &Addr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while addr.connect().is_err() {
        assert!(Instant::now() < deadline, "daemon on {} did not start", addr.spec());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn addr(unix: bool, dir: &Path, name: &str) -> Addr {
    if unix {
        Addr::Unix(dir.join(format!("{name}.sock")))
    } else {
        Addr::Inet(std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
    }
}

fn start_dkimpress(bin: &Path, conf: &Path, addr: Addr) -> Daemon {
    let child = Command::new(bin)
        .args(["milter", "--log-stderr", "--config"])
        .arg(conf)
        .arg("--socket")
        .arg(addr.spec())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dkimpress milter");
    wait_for(&addr);
    Daemon { name: "dkimpress milter", child, addr }
}

fn start_opendkim(conf: &Path, addr: Addr) -> Option<Daemon> {
    let bin = ["/usr/sbin/opendkim", "/usr/local/sbin/opendkim"].into_iter().find(|p| Path::new(p).exists())?;
    let child =
        Command::new(bin).args(["-f", "-x"]).arg(conf).arg("-p").arg(addr.spec()).stderr(Stdio::null()).spawn().ok()?;
    wait_for(&addr);
    Some(Daemon { name: "opendkim", child, addr })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// RSA signatures per second on one core with the same key, through dkimpress's own signer
/// (aws-lc-rs): the part of a message that no milter can avoid.
fn sign_rate(key: &Path) -> f64 {
    let (k, _) = dkimpress::dkim::key::SigningKey::from_path(key, false).expect("key");
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        k.sign(b"bench").expect("sign");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs `count` messages over `conc` connections, each of which must get `fields` header
/// fields (1: signed; 4: signed and sealed); (msgs/s, p50, p99).
fn run(
    addr: &Addr,
    conc: usize,
    count: usize,
    headers: &[(String, String)],
    body: &[u8],
    fields: usize,
) -> (f64, Duration, Duration) {
    // A warm-up connection: key loading and first-use costs stay out of the figures.
    let mut w = Client::open(addr);
    for _ in 0..5 {
        w.message(headers, body);
    }
    let start = Instant::now();
    let per = count / conc;
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..conc)
            .map(|_| {
                s.spawn(|| {
                    let mut c = Client::open(addr);
                    (0..per)
                        .map(|_| {
                            let (t, added) = c.message(headers, body);
                            assert!(
                                added >= fields,
                                "{added} fields added, {fields} expected: the message was not signed (and sealed)"
                            );
                            t
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = lat;
    lat.sort();
    ((per * conc) as f64 / elapsed, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

fn openssl_rsa2048_sign_per_s() -> Option<f64> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "2", "-multi", &cores.to_string(), "rsa2048"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.trim_start().starts_with("rsa 2048") || l.starts_with("rsa  2048"))?;
    let nums: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    // "rsa 2048 bits 0.000xxs 0.0000xxs sign/s verify/s": sign/s is the second-to-last.
    nums.get(nums.len().checked_sub(2)?).copied()
}

fn main() {
    let mut count = 2000usize;
    let mut size = 4096usize;
    let mut key: Option<PathBuf> = None;
    let mut arc = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = args.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--size" => size = args.next().and_then(|v| v.parse().ok()).expect("--size BYTES"),
            "--key" => key = args.next().map(PathBuf::from),
            "--arc" => arc = true,
            "--bench" => {}
            _ => {}
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/release/dkimpress");
    assert!(bin.exists(), "build first: cargo build --release");
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("bench.private");
    std::fs::copy(key.unwrap_or_else(|| root.join("testdata/keys/test.private")), &keyfile).unwrap();
    std::fs::set_permissions(&keyfile, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // One configuration for both daemons: only keys both read.
    let conf = dir.path().join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode s\nDomain example.com\nSelector test\nKeyFile {}\nCanonicalization relaxed/simple\n\
             InternalHosts 127.0.0.1\nSyslog no\nBackground no\nRequireSafeKeys no\n",
            keyfile.display()
        ),
    )
    .unwrap();
    // dkimpress alone reads ARCSign: its own copy of the file.
    let arc_conf = dir.path().join("dkimpress-arc.conf");
    std::fs::write(&arc_conf, std::fs::read_to_string(&conf).unwrap() + "ARCSign yes\nAuthservID mx.example.com\n")
        .unwrap();
    let signatures = if arc { 3.0 } else { 1.0 };
    let headers: Vec<(String, String)> = vec![
        ("From".into(), " Alice <alice@example.com>".into()),
        ("To".into(), " bob@example.net".into()),
        ("Subject".into(), " milter benchmark message".into()),
        ("Date".into(), " Tue, 01 Dec 2026 05:00:00 +0000".into()),
        ("Message-ID".into(), " <bench@example.com>".into()),
        ("MIME-Version".into(), " 1.0".into()),
        ("Content-Type".into(), " text/plain; charset=utf-8".into()),
    ];
    let line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n";
    let body: Vec<u8> = line.iter().copied().cycle().take(size.max(line.len())).collect();

    let limit = openssl_rsa2048_sign_per_s();
    println!("milter benchmark: {count} messages of {size} octets, RSA-2048, relaxed/simple");
    match limit {
        Some(l) => println!("openssl speed -multi {} rsa2048: {l:.0} sign/s (the signing limit)", num_cpus()),
        None => println!("openssl speed: not available"),
    }
    let one_core = sign_rate(&keyfile);
    let cores = num_cpus();
    println!(
        "dkimpress's signer (aws-lc-rs), one core: {one_core:.0} sign/s; x {cores} cores = {:.0}/s (the limit for a milter)",
        one_core * cores as f64
    );
    println!("(the client runs on the same cores: read the ratios between rows)");
    if arc {
        println!("(--arc: dkimpress signs and seals, {signatures} RSA signatures a message; ratios below are of signatures/s)");
    }
    println!("| daemon | socket | connections | msgs/s | p50 | p99 | of openssl sign/s | of the signer limit |");
    println!("|---|---|---|---|---|---|---|---|");
    for unix in [true, false] {
        let which = if arc { &arc_conf } else { &conf };
        let mut daemons = vec![start_dkimpress(&bin, which, addr(unix, dir.path(), "dkimpress"))];
        if !arc {
            match start_opendkim(&conf, addr(unix, dir.path(), "opendkim")) {
                Some(d) => daemons.push(d),
                None => println!("(opendkim is not installed: apt-get install opendkim)"),
            }
        }
        for d in &daemons {
            for conc in [1usize, 20] {
                let fields = if arc && d.name != "opendkim" { 4 } else { 1 };
                let (rate, p50, p99) = run(&d.addr, conc, count, &headers, &body, fields);
                let of = limit.map(|l| format!("{:.2}", rate * signatures / l)).unwrap_or_default();
                println!(
                    "| {} | {} | {conc} | {rate:.0} | {:.2} ms | {:.2} ms | {of} | {:.2} |",
                    d.name,
                    if unix { "unix" } else { "inet" },
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3,
                    rate * signatures / (one_core * cores as f64)
                );
            }
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
