//! Where the MTA paths and the milter log: syslog (facility mail) through /dev/log, or stderr
//! when run by hand, one line per event with the message's context (queue ID, Message-ID).
//!
//! Owns the line format: control characters replaced, key material redacted. Does not decide
//! what is logged.

/// Syslog (facility mail) through /dev/log, or stderr when run by hand.
pub struct Logger {
    sock: Option<std::os::unix::net::UnixDatagram>,
    verbose: bool,
    context: String,
}

impl Logger {
    /// stderr when it is a terminal or `DKIMPRESS_LOG=stderr`; syslog otherwise (stderr too if
    /// /dev/log cannot be reached).
    pub fn new(verbose: bool, to_stderr: bool) -> Logger {
        let sock = if to_stderr {
            None
        } else {
            std::os::unix::net::UnixDatagram::unbound().ok().filter(|s| s.connect("/dev/log").is_ok())
        };
        Logger {
            sock,
            verbose,
            context: format!("{:08X}", std::process::id() ^ (crate::cli::now_unix() as u32).rotate_left(16)),
        }
    }

    /// Sets the context of later lines (the milter: the MTA's queue ID).
    pub fn set_context(&mut self, context: &str) {
        self.context = dkimpress::pipeline::sanitize_at_most(context, 100);
    }

    /// Adds the Message-ID to the context of later lines.
    pub fn set_message_id(&mut self, id: &str) {
        let id = dkimpress::pipeline::sanitize_at_most(id, 200);
        self.context = format!("{}: message-id={}", self.context.split(':').next().unwrap_or_default(), id.trim());
    }

    fn emit(&self, severity: u8, msg: &str) {
        // No key material in the log, whatever an error quotes.
        let msg = dkimpress::dkim::key::redact_key_material(msg);
        let msg = dkimpress::pipeline::sanitize(&msg);
        let line = format!("{}: {msg}", self.context);
        match &self.sock {
            // RFC 3164 framing; facility mail (2).
            Some(s)
                if s.send(format!("<{}>dkimpress[{}]: {line}", 2 * 8 + severity, std::process::id()).as_bytes())
                    .is_ok() => {}
            _ => eprintln!("dkimpress: {line}"),
        }
    }

    /// An error (mail deferred or passed on unsigned).
    pub fn error(&self, msg: &str) {
        self.emit(3, msg);
    }
    /// A warning.
    pub fn warn(&self, msg: &str) {
        self.emit(4, msg);
    }
    /// What happened to a message.
    pub fn info(&self, msg: &str) {
        self.emit(6, msg);
    }
    /// Detail, with `-v` only.
    pub fn debug(&self, msg: &str) {
        if self.verbose {
            self.emit(7, msg);
        }
    }
}
