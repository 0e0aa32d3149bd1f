//! The author address that chooses the keys: the From field's (or the envelope sender's)
//! single domain, and the SigningTable keys to try for it.

/// The author address in a From (or envelope sender) value, as (local part, domain in lower
/// case).
///
/// Parsed by mail-parser (Stalwart's maintained RFC 5322 parser: display names, quoted strings
/// with escapes, comments, groups, encoded words), not by hand: a hand-written scanner once
/// took `"x \" <ceo@example.org>" <attacker@evil.test>` for ceo@example.org and signed
/// forged mail with our key. A value with several addresses is accepted only
/// when they all share one domain (the key is chosen by domain); otherwise it is refused, since
/// signing for one of several authors would lend our name to the others (RFC 6376 §8.15 on
/// multiple From addresses).
pub(crate) fn parse_address(value: &str) -> Option<(String, String)> {
    author_address(value).ok()
}

/// [`parse_address`] with the reason when there is no single author domain.
pub(crate) fn author_address(value: &str) -> Result<(String, String), String> {
    let mut raw = Vec::with_capacity(value.len() + 10);
    raw.extend_from_slice(b"From:");
    raw.extend_from_slice(value.as_bytes());
    raw.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::new().parse_headers(&raw).ok_or("no address")?;
    let addrs: Vec<&mail_parser::Addr> = match parsed.from() {
        Some(mail_parser::Address::List(l)) => l.iter().collect(),
        Some(mail_parser::Address::Group(g)) => g.iter().flat_map(|g| g.addresses.iter()).collect(),
        None => vec![],
    };
    let mut found: Vec<(String, String)> = vec![];
    for a in addrs {
        let Some(addr) = a.address.as_deref() else { continue };
        let addr = addr.trim();
        let Some(at) = addr.rfind('@') else {
            return Err(format!("{addr:?} is not an address"));
        };
        let mut local = addr[..at].trim().trim_matches('"').to_string();
        // mail-parser 0.11 reads a quoted local part (`"john smith"@example.com`) as a name
        // and an address of `@example.com`: take the local part back when the value says so.
        if let (true, Some(name)) = (local.is_empty(), a.name.as_deref()) {
            if value.contains(&format!("\"{name}\"@")) {
                local = name.to_string();
            }
        }
        let domain = addr[at + 1..].trim().trim_end_matches('.').to_ascii_lowercase();
        // Keys are chosen by the A-label form of the author's domain (RFC 8616 §5, §3).
        let domain = match crate::dkim::tags::to_a_labels(&domain) {
            std::borrow::Cow::Owned(a) => a,
            std::borrow::Cow::Borrowed(_) => domain,
        };
        if local.is_empty() || !is_domain_name(&domain) {
            return Err(format!("{addr:?} is not an address"));
        }
        found.push((local, domain));
    }
    match found.len() {
        0 => Err("no address".into()),
        1 => Ok(found.remove(0)),
        _ if found.iter().all(|(_, d)| *d == found[0].1) => Ok(found.remove(0)),
        n => Err(format!("{n} addresses in different domains: refusing to choose one")),
    }
}

/// Whether `d` looks like a domain name: dot-separated labels of letters, digits, `-` and `_`,
/// or non-ASCII (internationalized) characters; no empty label.
fn is_domain_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_' || !c.is_ascii()))
}

/// Keys to try in a (non-pattern) SigningTable for `local@domain`, most specific first:
/// `local@domain`, `domain`, then each parent as `.parent`, then `*` (OpenDKIM's order).
pub(crate) fn signing_candidates(local: &str, domain: &str) -> Vec<String> {
    let mut out = vec![format!("{local}@{domain}"), domain.to_string()];
    let mut rest = domain;
    while let Some(i) = rest.find('.') {
        rest = &rest[i + 1..];
        if rest.contains('.') || !rest.is_empty() {
            out.push(format!(".{rest}"));
        }
    }
    out.push("*".to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for (v, want) in [
            ("Joe <joe@Example.COM>", Some(("joe", "example.com"))),
            (" \"Doe, John\" <john@example.org>", Some(("john", "example.org"))),
            ("joe@example.com (Joe <fake@evil.com>)", Some(("joe", "example.com"))),
            ("=?UTF-8?Q?Ren=C3=A9e?= <renee@example.net>", Some(("renee", "example.net"))),
            ("\"a@b\" <real@example.com>", Some(("real", "example.com"))),
            ("\"quoted local\"@example.com", Some(("quoted local", "example.com"))),
            ("undisclosed-recipients:;", None),
            ("no address", None),
            // Regression: an escaped quote inside the display name.
            ("\"x \\\" <ceo@example.org>\" <attacker@evil.test>", Some(("attacker", "evil.test"))),
            ("\"x \\\" <ceo@example.org>\"\r\n <attacker@evil.test>", Some(("attacker", "evil.test"))),
            ("(<ceo@example.org>) attacker@evil.test", Some(("attacker", "evil.test"))),
            ("\"<ceo@example.org>\" <attacker@evil.test>", Some(("attacker", "evil.test"))),
            ("a@example.org, b@EXAMPLE.org", Some(("a", "example.org"))),
            ("a@example.org, b@evil.test", None),
            ("team: a@example.org, b@evil.test;", None),
            ("<ceo@example.org", Some(("ceo", "example.org"))),
            ("ceo@exa mple.org", None),
            ("<>", None),
        ] {
            let got = parse_address(v);
            assert_eq!(got.as_ref().map(|(l, d)| (l.as_str(), d.as_str())), want, "{v}");
        }
    }

    #[test]
    fn candidates_order() {
        assert_eq!(
            signing_candidates("joe", "mail.example.com"),
            ["joe@mail.example.com", "mail.example.com", ".example.com", ".com", "*"]
        );
    }
}
