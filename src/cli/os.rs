//! System calls of the commands that the standard library does not wrap, each behind a safe
//! function: the milter daemon's (users, privileges, umask, caught signals, waiting on its
//! socket, the allocator's threshold), the re-injection child's process group (filter,
//! sendmail wrapper), and standard output as a file without std's line buffer (sign, verify).
//!
//! Does not own the pipeline's OS calls (memory maps, locks): `dkimpress::pipeline::os`.

/// Sends SIGKILL to the process group `pgid` (a child started with `process_group(0)`, whose
/// group id is its pid): a hung re-injection command and what it started end together.
#[cfg(unix)]
pub(crate) fn kill_process_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    if pgid <= 1 {
        return; // never "every process" (-1) or our own group (0)
    }
    // SAFETY: kill(2) with a negative pid signals that process group; it touches no memory
    // of ours. The group is the one our child was placed in.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// No process groups: nothing to do.
#[cfg(not(unix))]
pub(crate) fn kill_process_group(_pgid: u32) {}

/// Sends SIGHUP to process `pid` (a daemon's PidFile): whether it was delivered.
#[cfg(unix)]
pub(crate) fn send_hangup(pid: i32) -> bool {
    if pid <= 1 {
        return false; // never "every process", our group, or init
    }
    // SAFETY: kill(2) with a positive pid signals that one process; it touches no memory of
    // ours.
    unsafe { libc::kill(pid, libc::SIGHUP) == 0 }
}

/// Signals caught by [`catch_signals`], one bit per signal number, until [`take_signals`].
static PENDING_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(unix)]
extern "C" fn note_signal(sig: libc::c_int) {
    // Async-signal-safe: one atomic OR, nothing else.
    if (0..64).contains(&sig) {
        PENDING_SIGNALS.fetch_or(1u64 << sig, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Catches `signals` (e.g. SIGHUP, SIGTERM): each delivery sets its bit for [`take_signals`],
/// and interrupts a blocking call (no SA_RESTART) so that a daemon's wait returns at once.
#[cfg(unix)]
pub(crate) fn catch_signals(signals: &[i32]) -> std::io::Result<()> {
    for &sig in signals {
        // SAFETY: `act` is a zeroed plain C struct we fill; the handler only does an atomic
        // store (async-signal-safe); sigaction copies `act` and does not keep the pointer.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = note_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = 0;
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signals caught since the last call (bit `1 << signum` each), cleared.
pub(crate) fn take_signals() -> u64 {
    PENDING_SIGNALS.swap(0, std::sync::atomic::Ordering::SeqCst)
}

/// Waits up to `timeout_ms` for `fd` to be readable (a listening socket: a connection is
/// waiting). `Ok(false)` on timeout or when a signal interrupted the wait.
#[cfg(unix)]
pub(crate) fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll(2) on one pollfd we own, for the given time; the descriptor is borrowed, so
    // it stays open for the call.
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(rc > 0)
}

/// Sets the process umask; returns the previous one.
#[cfg(unix)]
pub(crate) fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask(2) cannot fail and touches no memory.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// The uid and gid of `user` (a name or a number), and of `group` when given instead of the
/// user's own group. Read before any thread starts (getpwnam is not thread-safe).
#[cfg(unix)]
pub(crate) fn lookup_user(user: &str, group: Option<&str>) -> std::io::Result<(u32, u32)> {
    use std::ffi::CString;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string());
    let name = CString::new(user).map_err(|_| bad("user name with a NUL"))?;
    // SAFETY: getpwnam returns null or a pointer to static storage valid until the next
    // getpw* call; we copy the two numbers out at once.
    let (uid, mut gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            match user.parse::<u32>() {
                Ok(n) => (n, n),
                Err(_) => return Err(bad(&format!("no such user {user:?}"))),
            }
        } else {
            ((*pw).pw_uid, (*pw).pw_gid)
        }
    };
    if let Some(g) = group {
        let gname = CString::new(g).map_err(|_| bad("group name with a NUL"))?;
        // SAFETY: as getpwnam above, for the group database.
        gid = unsafe {
            let gr = libc::getgrnam(gname.as_ptr());
            if gr.is_null() {
                g.parse::<u32>().map_err(|_| bad(&format!("no such group {g:?}")))?
            } else {
                (*gr).gr_gid
            }
        };
    }
    Ok((uid, gid))
}

/// Becomes `uid`/`gid` for good: supplementary groups dropped, group first, then user; checks
/// that root cannot be regained.
#[cfg(unix)]
pub(crate) fn drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: setgroups/setgid/setuid change process credentials only; the one-element
    // array lives across the call.
    unsafe {
        let groups = [gid as libc::gid_t];
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(err());
        }
        if libc::setgid(gid as libc::gid_t) != 0 {
            return Err(err());
        }
        if libc::setuid(uid as libc::uid_t) != 0 {
            return Err(err());
        }
        if uid != 0 && libc::setuid(0) == 0 {
            return Err(std::io::Error::other("could regain root after dropping privileges"));
        }
    }
    Ok(())
}

/// The effective user id.
#[cfg(unix)]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() as u32 }
}

/// Makes large allocations (message buffers) each their own mapping, given back to the system
/// when freed. glibc otherwise raises its mmap threshold after the first such free (up to
/// 32 MB) and keeps later buffers in per-thread arenas it does not return: a milter with many
/// connection threads and a 64 MB buffer budget peaked at 432 MB of RSS (59 MB with this).
pub(crate) fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; any value is valid for it.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Standard output as an unbuffered `File` (fd 1), for large sequential output.
#[cfg(unix)]
pub(crate) fn stdout_raw() -> impl std::io::Write + Send {
    use std::os::fd::AsFd as _;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)) as Box<dyn std::io::Write + Send>,
        Err(_) => Box::new(std::io::stdout()),
    }
}

/// Standard output (non-Unix: std's own).
#[cfg(not(unix))]
pub(crate) fn stdout_raw() -> impl std::io::Write + Send {
    std::io::stdout()
}
