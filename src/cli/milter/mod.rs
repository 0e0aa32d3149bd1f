//! `dkimpress milter`: a drop-in for the opendkim(8) daemon. Listens on the `Socket` of an
//! opendkim.conf (or `--socket`), speaks the milter protocol to Postfix or Sendmail
//! ([`proto`]), and per message signs mail from our own clients and verifies the rest
//! ([`session`]). One thread per MTA connection; settings (keys, tables, lists) are loaded once
//! and re-read on SIGHUP or SIGUSR1 without dropping connections; SIGTERM/SIGINT stop it.

pub mod admit;
mod config;
pub mod proto;
pub mod session;

pub use crate::cli::conf::{Action, Condition};
use config::{conf_path, daemon, daemon_conf, has_keys, load_settings, mode_of, Daemon};
pub use config::{Settings, LOOKUP_BUDGET};

use crate::cli::args::{parse_size, KeyArgs, RecordArgs};
use crate::cli::error::CliError;
use crate::cli::log::Logger;
use crate::cli::{conf, sysexits};
use clap::Args;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Where opendkim(8) reads its configuration when not told (and so do we).
pub const DEFAULT_CONF: &str = "/etc/opendkim.conf";

// opendkim's own flags where they make sense: -x FILE (the configuration: here `-x` is not
// sign's --expire), -p SOCKET, -P PIDFILE, -u USER[:GROUP], -n, -f, -l, -v, -V.
#[derive(Args, Debug)]
#[command(
    mut_arg("expire", |a| a.short(None)),
    mut_arg("config", |a| a.short('x').help(
        "The opendkim.conf to read (opendkim's -x) [default: /etc/opendkim.conf when it exists and no \
         key options are given]"
    )),
)]
pub(crate) struct MilterArgs {
    #[command(flatten)]
    k: KeyArgs,
    #[command(flatten)]
    records: RecordArgs,
    /// Check the configuration (the file, its data sets, keys and socket) and exit: 0 when it
    /// can run, 78 with every problem found (opendkim's -n).
    #[arg(short = 'n', long = "check-config")]
    check: bool,
    /// Stay in the foreground (accepted for opendkim's -f: dkimpress never forks; run it under
    /// systemd or another supervisor).
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
    /// Log to syslog (facility mail) even when stderr is a terminal (opendkim's -l).
    #[arg(short = 'l', long = "syslog", conflicts_with = "log_stderr")]
    syslog: bool,
    /// Where to listen: inet:PORT@HOST, inet6:PORT@HOST, inet:PORT (all addresses), or
    /// unix:/path (local:/path) [default: Socket of the configuration].
    #[arg(short = 'p', long = "socket", value_name = "SPEC")]
    socket: Option<String>,
    /// Permissions of a unix: socket (octal) [default: 0660 less UMask].
    #[arg(long = "socket-mode", value_name = "OCTAL")]
    socket_mode: Option<String>,
    /// What to do: s (sign), v (verify) or sv [default: Mode of --config, else sv].
    #[arg(long = "mode", value_name = "MODE")]
    mode: Option<String>,
    /// Clients whose mail is signed, as OpenDKIM InternalHosts [default: InternalHosts of
    /// --config, else 127.0.0.1, ::1].
    #[arg(long = "internal-hosts", value_name = "LIST|FILE")]
    internal_hosts: Option<String>,
    /// The authserv-id of Authentication-Results [default: AuthservID of the configuration,
    /// else the MTA's name (its `j` macro, Postfix's $myhostname), else this host's name].
    #[arg(long = "authserv-id", value_name = "ID")]
    authserv_id: Option<String>,
    /// Become this user (and its group, or USER:GROUP) after opening the socket [default:
    /// UserID of --config].
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Write the process id here [default: PidFile of --config].
    #[arg(short = 'P', long = "pid-file", value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Log to stderr instead of syslog (facility mail).
    #[arg(long = "log-stderr")]
    log_stderr: bool,
    /// Most MTA connections served at once; a connection beyond them is closed at once (the
    /// MTA then applies its milter_default_action).
    #[arg(long = "max-connections", value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Most connections from one peer address (inet sockets) [default: half of
    /// --max-connections]; beyond it the peer's least active connection is closed.
    #[arg(long = "max-connections-per-peer", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_per_peer: Option<u64>,
    /// Memory all connections together may hold for the header blocks of messages in progress
    /// (octets; K, M, G; bodies are hashed as they arrive, not held); a message that does not
    /// fit is deferred when it is ours to sign, passed on unchecked otherwise, and logged
    /// [default: 1G].
    #[arg(long = "max-buffered", value_name = "SIZE", value_parser = parse_size)]
    max_buffered: Option<u64>,
    /// An openarc.conf whose ARC settings to take over (its Mode, Domain, Selector, KeyFile,
    /// AuthservID, SignHeaders, Canonicalization, FinalReceiver, PermitAuthenticationOverrides):
    /// one milter then does what OpenDKIM and OpenARC did side by side.
    #[arg(short = 'A', long = "arc-config", value_name = "FILE")]
    arc_config: Option<PathBuf>,
    /// Largest message signed or verified (octets; K, M, G suffixes); a larger one is passed
    /// on untouched and logged [default: 512M].
    #[arg(long = "max-message-size", value_name = "SIZE", value_parser = parse_size)]
    max_message_size: Option<u64>,
}

/// This host's name (for the authserv-id).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A bound socket.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Makes the socket non-blocking and gives a copy of its descriptor to wait on.
    fn nonblocking_fd(&self) -> std::io::Result<OwnedFd> {
        match self {
            Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                l.as_fd().try_clone_to_owned()
            }
            Listener::Unix(l, _) => {
                l.set_nonblocking(true)?;
                l.as_fd().try_clone_to_owned()
            }
        }
    }

    /// Accepts a waiting connection, blocking again; `None` when there was none after all, or
    /// it could not be set up.
    fn accept(&self) -> Option<Accepted> {
        match self {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().ok()?;
                let _ = s.set_nonblocking(false);
                let handle = s.try_clone().ok()?;
                let close = move || {
                    let _ = handle.shutdown(std::net::Shutdown::Both);
                };
                Some((Box::new(s), Some(addr.ip()), Box::new(close)))
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().ok()?;
                let _ = s.set_nonblocking(false);
                let handle = s.try_clone().ok()?;
                let close = move || {
                    let _ = handle.shutdown(std::net::Shutdown::Both);
                };
                Some((Box::new(s), None, Box::new(close)))
            }
        }
    }
}

/// A socket spec of opendkim.conf: `inet:PORT@HOST`, `inet:PORT`, `inet6:PORT@HOST`,
/// `unix:/path`, `local:/path` or a bare `/path`.
enum SocketSpec {
    Inet(Vec<SocketAddr>),
    Unix(PathBuf),
}

fn parse_socket(spec: &str) -> Result<SocketSpec, String> {
    let (kind, rest) = match spec.split_once(':') {
        Some((k, r)) => (k.to_ascii_lowercase(), r),
        None if spec.starts_with('/') => ("unix".into(), spec),
        None => return Err(format!("socket {spec:?}: expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path")),
    };
    match kind.as_str() {
        "unix" | "local" => {
            if rest.is_empty() {
                return Err(format!("socket {spec:?}: no path"));
            }
            Ok(SocketSpec::Unix(PathBuf::from(rest)))
        }
        "inet" | "inet6" => {
            let (port, host) = rest.split_once('@').unwrap_or((rest, if kind == "inet" { "0.0.0.0" } else { "::" }));
            let port: u16 = port.parse().map_err(|_| format!("socket {spec:?}: port {port:?} is not a number"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let addrs: Vec<SocketAddr> = (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("socket {spec:?}: {host}: {e}"))?
                .filter(|a| if kind == "inet" { a.is_ipv4() } else { a.is_ipv6() })
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "socket {spec:?}: {host} has no {} address",
                    if kind == "inet" { "IPv4" } else { "IPv6" }
                ));
            }
            Ok(SocketSpec::Inet(addrs))
        }
        _ => Err(format!("socket {spec:?}: unknown kind {kind:?} (inet, inet6, unix)")),
    }
}

fn bind(d: &Daemon) -> anyhow::Result<Listener> {
    let spec = parse_socket(&d.socket).map_err(CliError::Config)?;
    let unavailable = |e: std::io::Error| CliError::Unavailable(format!("socket {}: {e}", d.socket));
    match spec {
        SocketSpec::Inet(addrs) => Ok(Listener::Tcp(TcpListener::bind(&addrs[..]).map_err(unavailable)?)),
        SocketSpec::Unix(path) => {
            use std::os::unix::fs::FileTypeExt;
            // A stale socket from an earlier run is replaced; any other file is left alone.
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                if !m.file_type().is_socket() {
                    return Err(CliError::Create {
                        path: path.clone(),
                        error: std::io::Error::other(format!("socket {}: exists and is not a socket", d.socket)),
                    }
                    .into());
                }
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(CliError::Unavailable(format!(
                        "socket {}: another milter is listening there",
                        d.socket
                    ))
                    .into());
                }
                std::fs::remove_file(&path).map_err(unavailable)?;
            }
            // The socket gets its mode from the umask at bind time (no chmod by path after it,
            // which a link swapped in could redirect), and its owner by lchown.
            let old = crate::cli::os::set_umask(0o777 & !d.socket_mode);
            let l = UnixListener::bind(&path);
            crate::cli::os::set_umask(old);
            let l = l.map_err(unavailable)?;
            if let Some((uid, gid)) = d.user {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(unavailable)?;
            }
            Ok(Listener::Unix(l, path))
        }
    }
}

/// An accepted connection: the stream, its peer address (inet), and how to shut it down from
/// another thread (admission's eviction).
type Accepted = (Box<dyn Stream>, Option<std::net::IpAddr>, Box<dyn Fn() + Send>);

/// One accepted connection, either kind.
trait Stream: std::io::Read + std::io::Write + Send {
    fn set_timeout(&self, t: Duration);
}
impl Stream for std::net::TcpStream {
    fn set_timeout(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
        let _ = self.set_write_timeout(Some(t));
        let _ = self.set_nodelay(true);
    }
}
impl Stream for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
        let _ = self.set_write_timeout(Some(t));
    }
}

/// How long a new connection may take to negotiate: an MTA does it at once; a client that
/// connects and says nothing must not hold a connection slot.
const NEGOTIATION: Duration = Duration::from_secs(5);
/// How long a negotiated connection may sit silent (Postfix waits 300 s at most per SMTP
/// command, and a session idles between messages no longer than that).
const IDLE: Duration = Duration::from_secs(600);

/// Serves one MTA connection until it quits or goes away.
fn serve(stream: &mut dyn Stream, settings: &Settings, log: &mut Logger, state: &admit::ConnState) {
    use admit::Phase;
    use session::{Next, Session};
    stream.set_timeout(NEGOTIATION);
    let mut s = Session::new(settings, log);
    let mut negotiated = false;
    loop {
        let (cmd, data) = match proto::read_packet(stream) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                s.debug(&format!("connection ended: {e}"));
                return;
            }
        };
        if !negotiated && cmd == b'O' {
            negotiated = true;
            stream.set_timeout(IDLE);
        }
        // What the connection does, for admission: a message in progress is never closed to
        // make room.
        match cmd {
            b'O' | b'K' => state.set(Phase::Negotiated),
            b'C' | b'E' | b'A' => state.set(Phase::Idle),
            b'M' => state.set(Phase::Busy),
            _ if !negotiated => state.set(Phase::Negotiating),
            _ => {}
        }
        let next = match proto::parse(cmd, data) {
            Ok(c) => {
                let eob = matches!(c, proto::Command::EndOfBody(_));
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.handle(c))) {
                    Ok(n) => n,
                    // Never lose mail: a panic defers this message; the daemon goes on.
                    Err(_) if eob => Next::Close(vec![proto::Response::ReplyCode(
                        "451 4.7.1 Internal error, please try again later".into(),
                    )]),
                    Err(_) => Next::Close(vec![proto::Response::Tempfail]),
                }
            }
            Err(e) => {
                s.debug(&format!("protocol error: {e}; connection closed"));
                return;
            }
        };
        let (replies, close) = match next {
            Next::Reply(r) => (r, false),
            Next::Close(r) => (r, true),
        };
        if let Err(e) = proto::write_responses(stream, &replies) {
            s.debug(&format!("connection ended: {e}"));
            return;
        }
        if close {
            return;
        }
        if matches!(cmd, b'E' | b'A') {
            state.set(Phase::Idle);
        }
    }
}

/// Tells systemd (Type=notify) that we are ready, when started by it.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
            let _ = sock.send_to_addr(state.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(state.as_bytes(), &path);
    }
}

/// Writes our pid to `p` as a new file: whatever was there (a stale pid file, or a symlink
/// planted by the user we are about to become) is removed first, and the new file is created
/// without following links, so that root never writes through someone else's link.
fn write_pid_file(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => return Err(std::io::Error::other("is a directory")),
        Ok(_) => std::fs::remove_file(p)?,
        Err(_) => {}
    }
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(p)?;
    std::io::Write::write_all(&mut f, format!("{}\n", std::process::id()).as_bytes())
}

pub(crate) fn cmd_milter(a: MilterArgs) -> anyhow::Result<ExitCode> {
    if a.check {
        return check_config(&a);
    }
    let milter = Milter::start(&a)?;
    let stop = milter.serve_until_stopped();
    milter.shut_down(stop);
    Ok(ExitCode::SUCCESS)
}

/// The running daemon: what start-up set up, for the accept loop, reloads and shutdown.
struct Milter<'a> {
    a: &'a MilterArgs,
    d: Daemon,
    log: Logger,
    /// The memory all connections share for header blocks, kept across reloads.
    budget: Arc<admit::MemoryBudget>,
    /// The settings a new connection gets; a reload replaces them, open connections keep theirs.
    settings: RwLock<Arc<Settings>>,
    listener: Listener,
    /// The listener's descriptor, non-blocking, waited on for connections.
    ready: OwnedFd,
    admission: Arc<admit::Admission>,
}

impl<'a> Milter<'a> {
    /// Start-up, in this order: signal handlers, the configuration checked, the socket, the pid
    /// file, the user to run as, the settings read as that user; then systemd is told we are
    /// ready.
    fn start(a: &'a MilterArgs) -> anyhow::Result<Milter<'a>> {
        // First of all: a SIGHUP or SIGTERM that comes early (a script reading the pid file) must
        // not kill the daemon half set up; it is acted on once the loop runs.
        crate::cli::os::return_large_allocations();
        crate::cli::os::catch_signals(&[libc::SIGHUP, libc::SIGUSR1, libc::SIGTERM, libc::SIGINT])
            .map_err(|e| CliError::System(format!("signal handlers: {e}")))?;
        let c = daemon_conf(a)?;
        let d = daemon(a, c.as_ref())?;
        let log = Logger::new(a.k.verbose, d.log_to_stderr);
        log_start(&log, a, c.as_ref());
        // Check everything before taking the socket: a broken configuration fails at once.
        let budget = admit::MemoryBudget::new(a.max_buffered.unwrap_or(1 << 30));
        load_settings(a, c.as_ref(), budget.clone())?;
        // Said before the socket exists: once it does, a client (a test, an MTA) may be served
        // before a line logged after it.
        if mode_of(a, c.as_ref()).is_ok_and(|m| m.sign) && !has_keys(a, c.as_ref()) {
            log.warn("no keys configured (KeyTable/SigningTable or Domain/Selector/KeyFile): nothing will be signed");
        }
        let listener = bind(&d)?;
        if let Some(p) = &d.pid_file {
            write_pid_file(p).map_err(|error| CliError::Create { path: p.clone(), error })?;
        }
        become_user(&d, &log)?;
        // Keys are read as the user we run as (as opendkim does), so that a reload can read them.
        let settings = RwLock::new(Arc::new(load_settings(a, c.as_ref(), budget.clone())?));
        log.info(&format!("listening on {} ({} mode)", d.socket, mode_name(a, c.as_ref())));
        notify_systemd("READY=1");
        let admission = admit::Admission::new(d.max_connections, d.max_per_peer);
        let ready = listener.nonblocking_fd()?;
        Ok(Milter { a, d, log, budget, settings, listener, ready, admission })
    }

    /// The accept loop: serves each connection on its own thread until SIGTERM or SIGINT, and
    /// returns the signal's name; SIGHUP and SIGUSR1 re-read the configuration.
    fn serve_until_stopped(&self) -> &'static str {
        loop {
            let sigs = crate::cli::os::take_signals();
            if sigs & (1 << libc::SIGTERM | 1 << libc::SIGINT) != 0 {
                return if sigs & (1 << libc::SIGINT) != 0 { "SIGINT" } else { "SIGTERM" };
            }
            if sigs & (1 << libc::SIGHUP | 1 << libc::SIGUSR1) != 0 {
                self.reload();
            }
            if !self.wait_for_connection() {
                continue;
            }
            let Some(accepted) = self.listener.accept() else { continue };
            self.admit(accepted);
        }
    }

    /// Re-reads the configuration and everything it names for the connections to come; when
    /// that fails, the settings in use stay.
    fn reload(&self) {
        match daemon_conf(self.a).and_then(|c| load_settings(self.a, c.as_ref(), self.budget.clone())) {
            Ok(s) => {
                *self.settings.write().expect("settings lock") = Arc::new(s);
                self.log.info("configuration re-read");
            }
            Err(e) => self.log.error(&format!("configuration not re-read, the old one stays: {e:#}")),
        }
    }

    /// Waits at most a second (so that signals are seen in time) for a connection to accept.
    fn wait_for_connection(&self) -> bool {
        match crate::cli::os::wait_readable(self.ready.as_fd(), 1000) {
            Ok(ready) => ready,
            Err(e) => {
                self.log.error(&format!("waiting for connections: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        }
    }

    /// Finds a new connection a place and serves it on a thread of its own.
    fn admit(&self, (stream, peer, shutdown): Accepted) {
        // Full: the connection doing least makes room (never one in the middle of a
        // message); when every place holds a message, the new one is closed at once (the MTA
        // applies milter_default_action to it) rather than left waiting. Said in the log.
        let shown_peer = peer.map_or("a unix socket client".to_string(), |p| p.to_string());
        let (ticket, outcome) = self.admission.admit(peer, shutdown);
        match outcome {
            admit::Outcome::Admitted => {}
            admit::Outcome::Evicted(phase, victim) => self.log.warn(&format!(
                "connection places full (--max-connections {}, --max-connections-per-peer {}): closed a {} \
                 connection{} to admit one from {shown_peer}",
                self.d.max_connections,
                self.d.max_per_peer,
                match phase {
                    admit::Phase::Negotiating => "silent (never negotiated)",
                    admit::Phase::Negotiated => "negotiated but unused",
                    _ => "idle",
                },
                victim.map(|v| format!(" from {v}")).unwrap_or_default()
            )),
            admit::Outcome::Refused => {
                self.log.warn(&format!(
                    "{} connections open, each with a message in progress (--max-connections, \
                     --max-connections-per-peer): a new one from {shown_peer} was refused",
                    self.admission.open()
                ));
                drop(stream);
                return;
            }
        }
        let Some(ticket) = ticket else { return };
        let current = self.settings.read().expect("settings lock").clone();
        let (verbose, to_stderr) = (self.a.k.verbose, self.d.log_to_stderr);
        let spawned = std::thread::Builder::new().name("milter-conn".into()).spawn(move || {
            let mut stream = stream;
            let mut log = Logger::new(verbose, to_stderr);
            serve(&mut *stream, &current, &mut log, &ticket.state);
            drop(ticket);
        });
        if let Err(e) = spawned {
            self.log.error(&format!("cannot start a connection thread: {e}"));
        }
    }

    /// Stops after `stop` (a signal's name): removes the unix socket and the pid file, then gives
    /// the messages in flight a moment to finish.
    fn shut_down(self, stop: &str) {
        self.log.info(&format!("{stop}: stopping; {} connection(s) open", self.admission.open()));
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
        if let Some(p) = &self.d.pid_file {
            let _ = std::fs::remove_file(p);
        }
        // Messages in flight get a moment to finish; the MTA handles the rest by its
        // milter_default_action (a connection cut mid-message is never acknowledged).
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.admission.open() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Logs the start, with the configuration file read, and the keys of that file without effect.
fn log_start(log: &Logger, a: &MilterArgs, c: Option<&conf::OpendkimConf>) {
    let shown_conf = match conf_path(a) {
        Some(p) => format!("configuration {}", p.display()),
        None => "no configuration file".to_string(),
    };
    log.info(&format!("dkimpress v{} starting ({shown_conf})", env!("CARGO_PKG_VERSION")));
    if let Some(c) = c {
        log_unused_keys(log, c);
    }
}

/// Becomes the user of `UserID`/`--user` when started as root; started as someone else, runs
/// on as that user, with a warning.
fn become_user(d: &Daemon, log: &Logger) -> anyhow::Result<()> {
    if let Some((uid, gid)) = d.user {
        if crate::cli::os::effective_uid() == 0 {
            crate::cli::os::drop_privileges(uid, gid)
                .map_err(|e| CliError::Config(format!("UserID: cannot become {uid}:{gid}: {e}")))?;
        } else if crate::cli::os::effective_uid() != uid {
            log.warn("UserID given but not started as root: running as the current user");
        }
    }
    Ok(())
}

/// Logs, once, the keys of the file that have no effect here (opendkim has them, we do not).
fn log_unused_keys(log: &Logger, c: &conf::OpendkimConf) {
    let mut unused: Vec<&str> = c.ignored.iter().map(|(_, k)| k.as_str()).collect();
    unused.dedup();
    if !unused.is_empty() {
        log.warn(&format!("opendkim.conf keys without effect here: {}", unused.join(", ")));
    }
}

/// `-n`: reads the configuration and everything it names as a start would, without taking the
/// socket; prints every problem found. 0 when the daemon can start, 78 otherwise.
fn check_config(a: &MilterArgs) -> anyhow::Result<ExitCode> {
    let path = conf_path(a);
    let shown = path.as_ref().map_or("(no configuration file)".to_string(), |p| p.display().to_string());
    let c = match daemon_conf(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dkimpress: {e:#}");
            return Ok(ExitCode::from(sysexits::CONFIG));
        }
    };
    let mut problems = vec![];
    if let Err(e) = daemon(a, c.as_ref()).and_then(|d| parse_socket(&d.socket).map_err(|e| CliError::Config(e).into()))
    {
        problems.push(format!("{e:#}"));
    }
    if let Err(e) = load_settings(a, c.as_ref(), admit::MemoryBudget::new(1 << 30)) {
        problems.push(format!("{e:#}"));
    }
    for p in &problems {
        eprintln!("dkimpress: {shown}: {p}");
    }
    if !problems.is_empty() {
        return Ok(ExitCode::from(sysexits::CONFIG));
    }
    if let Some(c) = &c {
        for (line, key) in &c.ignored {
            eprintln!("dkimpress: {}:{line}: {key}: an opendkim key without effect here; ignored", c.path.display());
        }
    }
    let signs = mode_of(a, c.as_ref()).is_ok_and(|m| m.sign) && has_keys(a, c.as_ref());
    eprintln!(
        "dkimpress: {shown}: configuration OK ({} mode{})",
        mode_name(a, c.as_ref()),
        if signs { "" } else { "; no keys, nothing will be signed" }
    );
    Ok(ExitCode::SUCCESS)
}

fn mode_name(a: &MilterArgs, c: Option<&conf::OpendkimConf>) -> &'static str {
    match mode_of(a, c) {
        Ok(conf::Mode { sign: true, verify: true }) => "sign and verify",
        Ok(conf::Mode { sign: true, verify: false }) => "sign",
        _ => "verify",
    }
}
