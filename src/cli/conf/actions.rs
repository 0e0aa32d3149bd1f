//! The `On-*` lines of opendkim.conf: the conditions they name, the actions they choose, and
//! the table of both with opendkim's defaults. Reading the lines is [`super`]'s; acting on a
//! condition is the milter session's.

use std::collections::HashMap;

/// What `On-*` can say (opendkim.conf(5)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver.
    Accept,
    /// 451: the MTA tells the client to retry.
    Tempfail,
    /// 550.
    Reject,
    /// Accept and drop.
    Discard,
    /// Hold in the MTA's quarantine (Postfix: the hold queue).
    Quarantine,
}

impl Action {
    pub(super) fn parse(v: &str) -> Option<Action> {
        // The words opendkim compares with (case-insensitively), and their first letters: a
        // typo must not turn into an action nobody chose ("defer" is not "discard").
        Some(match v.trim().to_ascii_lowercase().as_str() {
            "a" | "accept" => Action::Accept,
            "t" | "tempfail" => Action::Tempfail,
            "r" | "reject" => Action::Reject,
            "d" | "discard" => Action::Discard,
            "q" | "quarantine" => Action::Quarantine,
            _ => return None,
        })
    }

    /// The word, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Tempfail => "tempfail",
            Action::Reject => "reject",
            Action::Discard => "discard",
            Action::Quarantine => "quarantine",
        }
    }
}

/// The conditions `On-*` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Everything else (a pass).
    Default,
    /// A signature did not verify.
    BadSignature,
    /// A key could not be fetched now.
    DnsError,
    /// Our own failure (key store down, a panic).
    InternalError,
    /// The signing key's record does not exist.
    KeyNotFound,
    /// Inbound mail without a signature.
    NoSignature,
    /// Something looked hostile.
    Security,
    /// A signature could not be made.
    SignatureError,
    /// A policy check failed (OpenDKIM's ADSP-era condition: read, never raised here).
    PolicyError,
}

impl Condition {
    pub(super) const ALL: [Condition; 9] = [
        Condition::Default,
        Condition::BadSignature,
        Condition::DnsError,
        Condition::InternalError,
        Condition::KeyNotFound,
        Condition::NoSignature,
        Condition::Security,
        Condition::SignatureError,
        Condition::PolicyError,
    ];

    /// The opendkim.conf key.
    pub fn key(self) -> &'static str {
        match self {
            Condition::Default => "On-Default",
            Condition::BadSignature => "On-BadSignature",
            Condition::DnsError => "On-DNSError",
            Condition::InternalError => "On-InternalError",
            Condition::KeyNotFound => "On-KeyNotFound",
            Condition::NoSignature => "On-NoSignature",
            Condition::Security => "On-Security",
            Condition::SignatureError => "On-SignatureError",
            Condition::PolicyError => "On-PolicyError",
        }
    }

    /// OpenDKIM's defaults: failures we cause or cannot judge now defer (nothing is lost), the
    /// results of verification are only reported.
    fn default_action(self) -> Action {
        match self {
            Condition::DnsError | Condition::InternalError | Condition::Security | Condition::SignatureError => {
                Action::Tempfail
            }
            _ => Action::Accept,
        }
    }
}

/// The action per condition.
#[derive(Debug, Clone)]
pub struct Actions(HashMap<Condition, Action>);

impl Default for Actions {
    /// opendkim's defaults, as with no `On-*` line.
    fn default() -> Actions {
        Actions::from_lines(&[])
    }
}

impl Actions {
    /// From the `On-*` lines in the order read: `On-Default` first sets every condition the
    /// file does not name, wherever it stands.
    pub(super) fn from_lines(lines: &[(Condition, Action)]) -> Actions {
        let mut m: HashMap<Condition, Action> = Condition::ALL.iter().map(|c| (*c, c.default_action())).collect();
        if let Some((_, a)) = lines.iter().rev().find(|(c, _)| *c == Condition::Default) {
            for c in Condition::ALL {
                m.insert(c, *a);
            }
        }
        for (c, a) in lines.iter().filter(|(c, _)| *c != Condition::Default) {
            m.insert(*c, *a);
        }
        Actions(m)
    }

    /// The action for `c`.
    pub fn get(&self, c: Condition) -> Action {
        self.0.get(&c).copied().unwrap_or(c.default_action())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_default_sets_what_is_not_named_wherever_it_stands() {
        use Action::*;
        use Condition::*;
        for (lines, want) in [
            (vec![], [(Default, Accept), (BadSignature, Accept), (DnsError, Tempfail), (InternalError, Tempfail)]),
            (
                vec![(DnsError, Accept), (Default, Reject)],
                [(Default, Reject), (BadSignature, Reject), (DnsError, Accept), (InternalError, Reject)],
            ),
            (
                vec![(Default, Discard), (Default, Quarantine)],
                [
                    (Default, Quarantine),
                    (BadSignature, Quarantine),
                    (DnsError, Quarantine),
                    (InternalError, Quarantine),
                ],
            ),
        ] {
            let actions = Actions::from_lines(&lines);
            for (condition, action) in want {
                assert_eq!(actions.get(condition), action, "{lines:?} {condition:?}");
            }
        }
    }
}
