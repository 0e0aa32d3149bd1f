//! `dkimpress rotate` over KeyTable/SigningTable files and a single-key configuration, with
//! records in a zone file: the whole cycle (mail signed with the new selector verified by
//! dkimpy), each step run twice, refusals that change nothing, a crash injected between the
//! writes of every step, a second algorithm, and a running milter that switches on activate.

use crate::milter::{Milter, Reply};
use crate::util::{dkimpy_available, dkimpy_verify, set_mode, stderr, testdata, Dir};
use std::path::{Path, PathBuf};

/// A configuration signing example.com with the RSA test key (selector `test`) through a
/// KeyTable and a SigningTable, and a zone file publishing that key: the configuration's path,
/// and it and the zone's as text for the command lines.
fn setup(dir: &Dir, extra: &str) -> (PathBuf, String, String) {
    let conf = write_setup(dir, extra);
    let (c, z) = (conf.display().to_string(), dir.join("zone").display().to_string());
    (conf, c, z)
}

fn write_setup(dir: &Dir, extra: &str) -> PathBuf {
    let key = dir.write("keys/test.private", &std::fs::read(testdata("keys/test.private")).unwrap());
    set_mode(&key, 0o600);
    let base = dir.path().display().to_string();
    dir.write(
        "KeyTable",
        format!("# our keys\ntest._domainkey.example.com example.com:test:{base}/keys/test.private\n").as_bytes(),
    );
    dir.write("SigningTable", b"*@example.com test._domainkey.example.com\n");
    publish(dir, &testdata("keys/test.txt"), "test._domainkey.example.com.");
    dir.write(
        "opendkim.conf",
        format!("KeyTable {base}/KeyTable\nSigningTable refile:{base}/SigningTable\n{extra}").as_bytes(),
    )
}

/// Appends the record of a genkey-style .txt file to the zone (and to the keys dkimpy reads),
/// its owner made absolute.
fn publish(dir: &Dir, txt: &Path, owner: &str) {
    let text = std::fs::read_to_string(txt).unwrap();
    let (_, rest) = text.split_once(char::is_whitespace).unwrap();
    let record = format!("{owner}\t{rest}");
    let zone = dir.join("zone");
    let mut all = std::fs::read_to_string(&zone).unwrap_or_default();
    all.push_str(&record);
    std::fs::write(&zone, all).unwrap();
    let name = owner.trim_end_matches('.').replace("._domainkey.", "-");
    dir.write(&format!("pub/{name}.txt"), record.as_bytes());
}

fn rotate(dir: &Dir, args: &[&str]) -> std::process::Output {
    dir.cmd().arg("rotate").args(args).run()
}

fn read(dir: &Dir, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Signs a message with the configuration as it is now; the selectors of its signatures.
fn signed_selectors(dir: &Dir, conf: &Path) -> (Vec<String>, PathBuf) {
    let out = dir.cmd().args(["sign", "--config"]).arg(conf).arg(testdata("messages/plain-lf.eml")).ok();
    let text = String::from_utf8_lossy(&out).into_owned();
    let sels = text.split("DKIM-Signature:").skip(1).filter_map(selector).collect();
    let n = std::fs::read_dir(dir.path()).unwrap().count();
    (sels, dir.write(&format!("signed-{n}.eml"), &out))
}

/// The `s=` of a DKIM-Signature value (the text from it on).
fn selector(value: &str) -> Option<String> {
    value.split(';').map(str::trim).find_map(|t| t.strip_prefix("s=")).map(str::to_string)
}

/// Our verifier and (when present) dkimpy pass the file with the published records.
fn verifies(dir: &Dir, file: &Path, sigs: usize) {
    let o = dir.cmd().args(["verify", "--dns-zone"]).arg(dir.join("zone")).arg(file).run();
    assert_eq!(o.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    if dkimpy_available() {
        let (ok, text) = dkimpy_verify(&dir.join("pub"), &["--expect-sigs", &sigs.to_string()], &[file.to_path_buf()]);
        assert!(ok, "dkimpy: {text}");
    }
}

/// Moves the record of when `selector` stopped signing `days` into the past (the test's clock).
fn age_deactivation(dir: &Dir, selector: &str, days: u64) {
    let path = dir.join("dkimpress-rotate.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for r in v["keys"].as_array_mut().unwrap() {
        if r["selector"] == selector {
            let t = r["deactivated"].as_u64().expect("deactivated recorded");
            r["deactivated"] = (t - days * 86_400).into();
        }
    }
    std::fs::write(&path, v.to_string()).unwrap();
}

dktest!(
    /// prepare → activate refused while unpublished (75, nothing changed) → publish → activate
    /// → mail signed with the new selector verifies (ours, dkimpy) → retire refused before 7
    /// days (75) → retire: the revocation record printed, the old key gone. Every step run a
    /// second time changes nothing; the key made beside the old one has its mode; the last key
    /// of a domain is never retired.
    rotate_whole_cycle_with_files_and_a_zone,
    |dir| {
        let (conf, c, z) = setup(&dir, "");
        let (c, z) = (c.as_str(), z.as_str());
        let o = rotate(&dir, &["status", "--config", c, "--dns-zone", z]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.starts_with("example.com test: rsa 2048,") && text.contains("used by *@example.com; record matches"), "{text}");

        let o = rotate(&dir, &["prepare", "--config", c, "--selector", "s2026", "--nsupdate", "publish.nsupdate"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let record = String::from_utf8_lossy(&o.stdout).into_owned();
        let script = read(&dir, "publish.nsupdate");
        assert!(
            script.contains("update delete s2026._domainkey.example.com. TXT\nupdate add s2026._domainkey.example.com. 3600 IN TXT \"v=DKIM1; k=rsa; p=")
                && script.ends_with("\nsend\n"),
            "{script}"
        );
        assert!(record.starts_with("s2026._domainkey.example.com.\tIN\tTXT"), "{record}");
        let new_key = dir.join("keys/s2026.private");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&new_key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(read(&dir, "KeyTable").contains("s2026._domainkey.example.com example.com:s2026:"));
        let (kt, st) = (read(&dir, "KeyTable"), read(&dir, "SigningTable"));
        assert!(kt.starts_with("# our keys\n"), "comments stay: {kt}");
        let o = rotate(&dir, &["prepare", "--config", c, "--selector", "s2026"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!((read(&dir, "KeyTable"), read(&dir, "SigningTable")), (kt.clone(), st.clone()), "prepare twice");
        assert_eq!(signed_selectors(&dir, &conf).0, ["test"], "prepare changes nothing that signs");

        let o = rotate(&dir, &["activate", "--config", c, "--selector", "s2026", "--dns-zone", z]);
        assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
        assert!(stderr(&o).contains("no TXT record at s2026._domainkey.example.com"), "{}", stderr(&o));
        assert_eq!(read(&dir, "SigningTable"), st);

        publish(&dir, &dir.join("keys/s2026.example.com.txt"), "s2026._domainkey.example.com.");
        let o = rotate(&dir, &["activate", "--config", c, "--selector", "s2026", "--dns-zone", z]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(read(&dir, "SigningTable"), "*@example.com s2026._domainkey.example.com\n");
        let o = rotate(&dir, &["activate", "--config", c, "--selector", "s2026", "--dns-zone", z]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
        let (sels, file) = signed_selectors(&dir, &conf);
        assert_eq!(sels, ["s2026"]);
        verifies(&dir, &file, 1);
        let o = rotate(&dir, &["status", "--config", c, "--dns-zone", z, "--report", "json"]);
        let lines: Vec<serde_json::Value> =
            String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["selector"], "test");
        assert_eq!(lines[0]["used_by"], serde_json::json!([]));
        assert!(lines[0]["next"].as_str().unwrap().contains("retire"), "{}", lines[0]);
        assert_eq!(lines[1]["used_by"], serde_json::json!(["*@example.com"]));

        let o = rotate(&dir, &["retire", "--config", c, "--selector", "test"]);
        assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
        assert!(dir.join("keys/test.private").exists());
        age_deactivation(&dir, "test", 8);
        let o = rotate(&dir, &["retire", "--config", c, "--selector", "test", "-n"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(dir.join("keys/test.private").exists(), "a dry run removes nothing");
        std::fs::create_dir(dir.join("archive")).unwrap();
        let o = rotate(&dir, &["retire", "--config", c, "--selector", "test", "--archive", "archive", "--nsupdate", "revoke.nsupdate"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            read(&dir, "revoke.nsupdate").contains("update add test._domainkey.example.com. 3600 IN TXT \"v=DKIM1; p=\"\nsend\n"),
            "{}",
            read(&dir, "revoke.nsupdate")
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), "test._domainkey.example.com. IN TXT \"v=DKIM1; p=\"\n");
        assert!(!dir.join("keys/test.private").exists() && dir.join("archive/test.private").exists());
        assert!(!read(&dir, "KeyTable").contains("test._domainkey"), "{}", read(&dir, "KeyTable"));
        let o = rotate(&dir, &["retire", "--config", c, "--selector", "test"]);
        assert_eq!(o.status.code(), Some(0), "retire twice: {}", stderr(&o));
        // The key that signs now, and the only one left, stays.
        let o = rotate(&dir, &["retire", "--config", c, "--selector", "s2026", "--after", "0"]);
        assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
        assert!(new_key.exists());
        verifies(&dir, &signed_selectors(&dir, &conf).1, 1);
    }
);

dktest!(
    /// A crash between the writes of each step (the process aborted at a failpoint) leaves a
    /// configuration that signs with a published key; running the step again finishes it.
    rotate_crash_between_steps_resumes,
    |dir| {
        let (conf, c, z) = setup(&dir, "");
        let (c, z) = (c.as_str(), z.as_str());
        let crash = |point: &str, args: &[&str]| {
            let o = dir.cmd().arg("rotate").args(args).env("DKIMPRESS_FAILPOINT", point).run();
            assert!(o.status.code().is_none(), "{point}: should have stopped: {}", stderr(&o));
            let (sels, file) = signed_selectors(&dir, &conf);
            assert_eq!(sels.len(), 1, "{point}");
            verifies(&dir, &file, 1);
        };
        let prepare = ["prepare", "--config", c, "--selector", "s2"];
        crash("prepare:key-written", &prepare);
        crash("prepare:key-table-written", &prepare);
        assert_eq!(rotate(&dir, &prepare).status.code(), Some(0));
        assert_eq!(read(&dir, "KeyTable").matches("s2._domainkey").count(), 1, "{}", read(&dir, "KeyTable"));
        publish(&dir, &dir.join("keys/s2.example.com.txt"), "s2._domainkey.example.com.");
        let activate = ["activate", "--config", c, "--selector", "s2", "--dns-zone", z];
        crash("activate:signing-switched", &activate);
        assert_eq!(signed_selectors(&dir, &conf).0, ["s2"], "the rename is the switch");
        let o = rotate(&dir, &activate);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        // The run that stopped had not recorded when "test" stopped signing: the second one did.
        age_deactivation(&dir, "test", 8);
        let retire = ["retire", "--config", c, "--selector", "test"];
        crash("retire:key-table-written", &retire);
        let o = rotate(&dir, &retire);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(!dir.join("keys/test.private").exists(), "the resumed retire removes the file");
        assert!(String::from_utf8_lossy(&o.stdout).contains("test._domainkey.example.com. IN TXT \"v=DKIM1; p=\""));
    }
);

dktest!(
    /// An Ed25519 key prepared next to the RSA one is a second signature: activate adds it to
    /// each SigningTable entry (MultipleSignatures), and both signatures verify; without
    /// MultipleSignatures activate refuses (78) and changes nothing.
    rotate_second_algorithm_adds_a_signature,
    |dir| {
        let (conf, c, z) = setup(&dir, "");
        let (c, z) = (c.as_str(), z.as_str());
        let o = rotate(&dir, &["prepare", "--config", c, "--selector", "ed2026", "--type", "ed25519"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        publish(&dir, &dir.join("keys/ed2026.example.com.txt"), "ed2026._domainkey.example.com.");
        let activate = ["activate", "--config", c, "--selector", "ed2026", "--dns-zone", z];
        let o = rotate(&dir, &activate);
        assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
        assert!(stderr(&o).contains("MultipleSignatures yes"), "{}", stderr(&o));
        assert_eq!(read(&dir, "SigningTable"), "*@example.com test._domainkey.example.com\n");
        let text = read(&dir, "opendkim.conf") + "MultipleSignatures yes\n";
        std::fs::write(&conf, text).unwrap();
        let o = rotate(&dir, &activate);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(
            read(&dir, "SigningTable"),
            "*@example.com test._domainkey.example.com\n*@example.com ed2026._domainkey.example.com\n"
        );
        let (sels, file) = signed_selectors(&dir, &conf);
        assert_eq!(sels, ["test", "ed2026"]);
        verifies(&dir, &file, 2);
    }
);

dktest!(
    /// Domain/Selector/KeyFile: the new key replaces the one key; activate rewrites Selector
    /// and KeyFile (the file's other lines kept) once the record is published.
    rotate_single_key_configuration,
    |dir| {
        write_setup(&dir, "");
        let conf = dir.write(
            "single.conf",
            format!("# one key\nDomain example.com\nSelector test\nKeyFile {}\nCanonicalization relaxed/relaxed\n", dir.join("keys/test.private").display())
                .as_bytes(),
        );
        let c = conf.to_str().unwrap();
        let z = dir.join("zone");
        let z = z.to_str().unwrap();
        assert_eq!(rotate(&dir, &["prepare", "--config", c, "--selector", "k2"]).status.code(), Some(0));
        publish(&dir, &dir.join("keys/k2.example.com.txt"), "k2._domainkey.example.com.");
        let o = rotate(&dir, &["activate", "--config", c, "--selector", "k2", "--dns-zone", z]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let text = read(&dir, "single.conf");
        assert!(text.starts_with("# one key\nDomain example.com\nSelector k2\nKeyFile ") && text.contains("relaxed/relaxed"), "{text}");
        let (sels, file) = signed_selectors(&dir, &conf);
        assert_eq!(sels, ["k2"]);
        verifies(&dir, &file, 1);
        age_deactivation(&dir, "test", 8);
        let o = rotate(&dir, &["retire", "--config", c, "--selector", "test"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(!dir.join("keys/test.private").exists());
    }
);

dktest!(
    /// A running milter (its PidFile in the configuration) signs with the new selector after
    /// activate, told by SIGHUP, while messages keep flowing: none is refused or unsigned.
    rotate_activate_switches_a_running_milter,
    |dir| {
        let pid_file = dir.join("milter.pid");
        let (_, c, z) = setup(&dir, &format!("InternalHosts 127.0.0.1\nPidFile {}\n", pid_file.display()));
        let (c, z) = (c.as_str(), z.as_str());
        let m = Milter::start(&dir, &["--config", c]);
        let selector_of = |r: &[Reply]| {
            r.iter().find_map(|r| match r {
                Reply::Insert(0, n, v) if n == "DKIM-Signature" => selector(v),
                _ => None,
            })
        };
        let msg = std::fs::read(testdata("messages/plain-lf.eml")).unwrap();
        let send = |m: &Milter| {
            let mut mta = m.connect();
            let steps = mta.negotiate();
            mta.connect_from("127.0.0.1");
            let r = mta.message(&msg, steps, None);
            assert_eq!(r.last(), Some(&Reply::Accept), "{r:?}");
            selector_of(&r).unwrap_or_else(|| panic!("not signed: {r:?}"))
        };
        assert_eq!(send(&m), "test");
        assert_eq!(rotate(&dir, &["prepare", "--config", c, "--selector", "live"]).status.code(), Some(0));
        publish(&dir, &dir.join("keys/live.example.com.txt"), "live._domainkey.example.com.");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let seen = std::thread::scope(|s| {
            let flow = s.spawn(|| {
                let mut seen = vec![];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seen.push(send(&m));
                }
                seen
            });
            let o = rotate(&dir, &["activate", "--config", c, "--selector", "live", "--dns-zone", z]);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            assert!(stderr(&o).contains("told the milter"), "{}", stderr(&o));
            // The milter reloads between connections: wait for the new selector.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while send(&m) != "live" {
                assert!(std::time::Instant::now() < deadline, "the milter still signs with the old key");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            flow.join().unwrap()
        });
        assert!(!seen.is_empty() && seen.iter().all(|s| s == "test" || s == "live"), "{seen:?}");
    }
);

dktest!(
    /// The same cycle with the keys in PostgreSQL, in the views of the README's mail database
    /// (auto-updatable views over two tables): prepare inserts the new key's row, activate is
    /// refused while the record is unpublished and then switches the signing rows in one
    /// transaction, mail signed with the new selector verifies, and retire deletes the old row
    /// after --after days, its key saved with --archive.
    rotate_keys_in_postgresql,
    |dir| {
        let Some(pg) = crate::pg::PgServer::start() else { return };
        pg.mail_database();
        let pem = std::fs::read_to_string(testdata("keys/test.private")).unwrap();
        pg.sql(
            "mail",
            &format!(
                "INSERT INTO dkim_keys VALUES ('test._domainkey.example.com', 'example.com', 'test', '{pem}');\
                 INSERT INTO dkim_signing VALUES ('example.com', 'test._domainkey.example.com');"
            ),
        );
        let host = pg.dsn_host();
        let conf = dir.write(
            "opendkim.conf",
            format!(
                "KeyTable dsn:pgsql://dkim@{host}/mail/table=dkim_key_table?keycol=identifier?datacol=domain,selector,key\n\
                 SigningTable dsn:pgsql://dkim@{host}/mail/table=dkim_signing_table?keycol=pattern?datacol=identifier\n"
            )
            .as_bytes(),
        );
        publish(&dir, &testdata("keys/test.txt"), "test._domainkey.example.com.");
        let c = conf.to_str().unwrap();
        let z = dir.join("zone");
        let z = z.to_str().unwrap();
        let o = rotate(&dir, &["status", "--config", c, "--dns-zone", z]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("used by example.com; record matches"), "{}", stderr(&o));
        for _ in 0..2 {
            let o = rotate(&dir, &["prepare", "--config", c, "--selector", "db2026"]);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        }
        assert_eq!(pg.query("mail", "SELECT count(*) FROM dkim_keys WHERE selector = 'db2026'").trim(), "1");
        assert_eq!(signed_selectors(&dir, &conf).0, ["test"]);
        let activate = ["activate", "--config", c, "--selector", "db2026", "--dns-zone", z];
        assert_eq!(rotate(&dir, &activate).status.code(), Some(75));
        assert_eq!(pg.query("mail", "SELECT key_id FROM dkim_signing").trim(), "test._domainkey.example.com");
        publish(&dir, &dir.join("db2026.example.com.txt"), "db2026._domainkey.example.com.");
        let o = rotate(&dir, &activate);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(pg.query("mail", "SELECT key_id FROM dkim_signing").trim(), "db2026._domainkey.example.com");
        let (sels, file) = signed_selectors(&dir, &conf);
        assert_eq!(sels, ["db2026"]);
        verifies(&dir, &file, 1);
        assert_eq!(rotate(&dir, &["retire", "--config", c, "--selector", "test"]).status.code(), Some(75));
        age_deactivation(&dir, "test", 8);
        std::fs::create_dir(dir.join("archive")).unwrap();
        let o = rotate(&dir, &["retire", "--config", c, "--selector", "test", "--archive", "archive", "--nsupdate", "revoke.nsupdate"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            read(&dir, "revoke.nsupdate").contains("update add test._domainkey.example.com. 3600 IN TXT \"v=DKIM1; p=\"\nsend\n"),
            "{}",
            read(&dir, "revoke.nsupdate")
        );
        assert_eq!(pg.query("mail", "SELECT count(*) FROM dkim_keys WHERE selector = 'test'").trim(), "0");
        assert_eq!(std::fs::read_to_string(dir.join("archive/test.example.com.private")).unwrap(), pem);
        let o = rotate(&dir, &["retire", "--config", c, "--selector", "db2026", "--after", "0"]);
        assert_eq!(o.status.code(), Some(78), "the key that signs stays: {}", stderr(&o));
    }
);

dktest!(
    /// A KeyTable and SigningTable that are symbolic links (kept elsewhere by configuration
    /// management) are changed where they live, the links kept; while one step runs, another
    /// on the same configuration waits for nothing and exits 75.
    rotate_keeps_linked_tables_and_runs_one_step_at_a_time,
    |dir| {
        let (_, c, _) = setup(&dir, "");
        let c = c.as_str();
        std::fs::create_dir(dir.join("managed")).unwrap();
        for t in ["KeyTable", "SigningTable"] {
            std::fs::rename(dir.join(t), dir.join(&format!("managed/{t}"))).unwrap();
            std::os::unix::fs::symlink(dir.join(&format!("managed/{t}")), dir.join(t)).unwrap();
        }
        let held = std::fs::File::create(dir.join("dkimpress-rotate.lock")).unwrap();
        held.lock().unwrap();
        let o = rotate(&dir, &["prepare", "--config", c, "--selector", "s9"]);
        assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
        assert!(stderr(&o).contains("another rotate step is running"), "{}", stderr(&o));
        drop(held);
        let o = rotate(&dir, &["prepare", "--config", c, "--selector", "s9"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(std::fs::symlink_metadata(dir.join("KeyTable")).unwrap().file_type().is_symlink());
        assert!(read(&dir, "managed/KeyTable").contains("s9._domainkey.example.com"));
    }
);
