//! The one place warnings go (a key file readable by others, found while a run is under way):
//! library code never prints. By default a warning is a line on stderr; a progress bar routes
//! them above itself ([`crate::pipeline::Progress`]), and a caller can install its own sink
//! (syslog in MTA mode). Each distinct warning is shown once per process, with control
//! characters and key material removed.

use std::sync::{Mutex, OnceLock};

type Sink = Box<dyn Fn(&str) + Send + Sync>;

fn state() -> &'static Mutex<(Option<Sink>, Vec<String>)> {
    static STATE: OnceLock<Mutex<(Option<Sink>, Vec<String>)>> = OnceLock::new();
    STATE.get_or_init(|| Mutex::new((None, Vec::new())))
}

/// Sends later warnings to `sink` instead of stderr (`None`: back to stderr).
pub fn set_sink(sink: Option<Sink>) {
    state().lock().unwrap_or_else(|e| e.into_inner()).0 = sink;
}

/// Reports `msg` once (a repeat of the same text is dropped).
pub fn warn(msg: &str) {
    let clean = crate::dkim::key::redact_key_material(msg);
    let clean = crate::pipeline::sanitize(&clean);
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    if st.1.contains(&clean) {
        return;
    }
    st.1.push(clean.clone());
    let line = format!("dkimpress: warning: {clean}");
    match &st.0 {
        Some(sink) => sink(&line),
        None => eprintln!("{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn once_each_through_the_sink() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = seen.clone();
        set_sink(Some(Box::new(move |l| s.lock().unwrap().push(l.to_string()))));
        warn("key.private is readable by others\x1b[31m");
        warn("key.private is readable by others\x1b[31m");
        warn("another");
        set_sink(None);
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            ["dkimpress: warning: key.private is readable by others?[31m", "dkimpress: warning: another"]
        );
    }
}
