//! A private PostgreSQL server for tests: initdb in a temp dir, a unix socket only (no TCP),
//! trust authentication for user `dkim`, stopped on drop. initdb refuses to run as root, so
//! as root it runs as the `postgres` user (created if missing).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgServer {
    pub socket_dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    as_user: Option<String>,
    _tmp: tempfile::TempDir,
}

/// The newest PostgreSQL bin directory, if the binaries are installed.
pub fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn run(as_user: &Option<String>, program: &Path, args: &[&str]) -> std::process::Output {
    let mut c = match as_user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = c.args(args).output().expect("run PostgreSQL tool");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PgServer {
    /// Starts a server, or returns None (after saying so loudly) when PostgreSQL is not
    /// installed at all.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = pg_bin() else {
            eprintln!("\n!!! SKIPPED: no PostgreSQL binaries under /usr/lib/postgresql; database tests NOT run !!!\n");
            return None;
        };
        let is_root = real_uid() == 0;
        let as_user = if is_root {
            if Command::new("id").arg("postgres").output().map(|o| !o.status.success()).unwrap_or(true) {
                let _ = Command::new("useradd").args(["-r", "-M", "-s", "/usr/sbin/nologin", "postgres"]).status();
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let tmp = tempfile::Builder::new().prefix("dkimpress-pg-").tempdir().unwrap();
        let data = tmp.path().join("data");
        let socket_dir = tmp.path().join("sock");
        std::fs::create_dir_all(&socket_dir).unwrap();
        if let Some(u) = &as_user {
            let _ = Command::new("chown").args(["-R", u]).arg(tmp.path()).status();
        }
        run(&as_user, &bin.join("initdb"), &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "dkim", "--no-sync"]);
        let opts = format!("-k {} -c listen_addresses='' -c fsync=off", socket_dir.display());
        run(
            &as_user,
            &bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-o", &opts, "-l", tmp.path().join("log").to_str().unwrap(), "-w", "start"],
        );
        Some(PgServer { socket_dir, data, bin, as_user, _tmp: tmp })
    }

    /// Runs SQL with psql against `db`.
    pub fn sql(&self, db: &str, sql: &str) {
        let out = Command::new("psql")
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-h"])
            .arg(&self.socket_dir)
            .args(["-U", "dkim", "-d", db, "-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Database `mail` with the tables and views of the README's example: `dkim_keys` and
    /// `dkim_signing`, read through `dkim_key_table` (identifier, domain, selector, key) and
    /// `dkim_signing_table` (identifier, pattern).
    pub fn mail_database(&self) {
        self.sql("postgres", "CREATE DATABASE mail");
        self.sql(
            "mail",
            "CREATE TABLE dkim_keys (id text PRIMARY KEY, domain text, selector text, private_key text);\
             CREATE TABLE dkim_signing (pattern text, key_id text);\
             CREATE VIEW dkim_key_table AS SELECT id AS identifier, domain, selector, private_key AS key FROM dkim_keys;\
             CREATE VIEW dkim_signing_table AS SELECT key_id AS identifier, pattern FROM dkim_signing;",
        );
    }

    /// The rows `sql` returns, unaligned (`|` between columns, a line per row).
    pub fn query(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-h"])
            .arg(&self.socket_dir)
            .args(["-U", "dkim", "-d", db, "-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The socket directory written for a DSN host (`/` encoded as `=2F`, opendkim(8)).
    pub fn dsn_host(&self) -> String {
        self.socket_dir.display().to_string().replace('/', "=2F")
    }

    pub fn stop(&self) {
        let mut c = match &self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(self.bin.join("pg_ctl"));
                c
            }
            None => Command::new(self.bin.join("pg_ctl")),
        };
        let _ = c.args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]).output();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real user id, read from /proc (no unsafe, no libc).
fn real_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(1000)
}
