//! Keys from zone files as `dkimpress genkey` and `opendkim-genkey` write them: the records'
//! owner names and TXT strings, with `$ORIGIN`, comments and parentheses.
//!
//! Owns the zone-file tokenizer, which [`super::KeyDir`] shares for quoted values; does not
//! parse key records (that is [`crate::dkim::verify::parse_key_record`]).

use crate::dkim::verify::{KeyLookup, LookupError};
use std::collections::HashMap;
use std::path::Path;

/// Keys from zone files: `OWNER [TTL] [IN] TXT ( "..." "..." )`, with `$ORIGIN`, comments and
/// parentheses, as `dkimpress genkey` and `opendkim-genkey` write them. A relative owner with
/// no `$ORIGIN` takes its domain from the genkey comment `; ----- DKIM key SEL for DOMAIN`.
#[derive(Default)]
pub struct ZoneKeys {
    records: HashMap<String, Vec<Vec<u8>>>,
}

/// A zone file we cannot read.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {reason}")]
pub struct ZoneError {
    /// The file.
    pub path: String,
    /// 1-based line of the record.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl ZoneKeys {
    /// Reads TXT records from each zone file.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<ZoneKeys, ZoneError> {
        let mut z = ZoneKeys::default();
        for p in paths {
            let p = p.as_ref();
            let text = std::fs::read_to_string(p).map_err(|e| ZoneError {
                path: p.display().to_string(),
                line: 0,
                reason: e.to_string(),
            })?;
            z.add_zone(&text, &p.display().to_string())?;
        }
        Ok(z)
    }

    /// Adds the TXT records of one zone file's text.
    pub fn add_zone(&mut self, text: &str, origin_name: &str) -> Result<(), ZoneError> {
        let err =
            |line: usize, reason: &str| ZoneError { path: origin_name.to_string(), line, reason: reason.to_string() };
        let mut origin: Option<String> = None;
        let mut last_owner: Option<String> = None;
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let start = i;
            // Join a parenthesised record; keep its first comment (the genkey domain hint).
            let mut entry = String::new();
            let mut comment = String::new();
            let mut depth = 0i32;
            loop {
                let (code, c) = split_comment(lines[i]);
                if comment.is_empty() {
                    comment = c.to_string();
                }
                depth += paren_balance(code);
                entry.push_str(code);
                entry.push(' ');
                i += 1;
                if depth <= 0 || i >= lines.len() {
                    break;
                }
            }
            let line_no = start + 1;
            if entry.trim().is_empty() {
                continue;
            }
            let starts_blank = lines[start].starts_with([' ', '\t']);
            let tokens = tokenize(&entry).map_err(|r| err(line_no, &r))?;
            if tokens.is_empty() {
                continue;
            }
            if let Token::Word(w) = &tokens[0] {
                if w.eq_ignore_ascii_case("$ORIGIN") {
                    match tokens.get(1) {
                        Some(Token::Word(o)) => origin = Some(o.trim_end_matches('.').to_ascii_lowercase()),
                        _ => return Err(err(line_no, "$ORIGIN without a name")),
                    }
                    continue;
                }
                if w.starts_with('$') {
                    continue; // $TTL and friends
                }
            }
            // Owner (absent when the line starts with blank: same owner as before).
            let mut idx = 0;
            let owner_tok = if starts_blank {
                last_owner.clone()
            } else {
                idx = 1;
                match &tokens[0] {
                    Token::Word(w) => Some(w.clone()),
                    Token::Quoted(_) => return Err(err(line_no, "a record must start with its owner name")),
                }
            };
            // Skip TTL and class, find the type.
            let mut rtype = None;
            while idx < tokens.len() {
                match &tokens[idx] {
                    Token::Word(w) if w.bytes().all(|b| b.is_ascii_digit()) || w.eq_ignore_ascii_case("IN") => idx += 1,
                    Token::Word(w) => {
                        rtype = Some(w.to_ascii_uppercase());
                        idx += 1;
                        break;
                    }
                    Token::Quoted(_) => break,
                }
            }
            let Some(owner_raw) = owner_tok else { return Err(err(line_no, "record without an owner name")) };
            last_owner = Some(owner_raw.clone());
            if rtype.as_deref() != Some("TXT") {
                continue;
            }
            let mut value = Vec::new();
            for t in &tokens[idx..] {
                match t {
                    Token::Quoted(s) => value.extend_from_slice(s),
                    Token::Word(w) => value.extend_from_slice(w.as_bytes()),
                }
            }
            let owner = if owner_raw == "@" {
                origin.clone().ok_or_else(|| err(line_no, "@ without $ORIGIN"))?
            } else if let Some(abs) = owner_raw.strip_suffix('.') {
                abs.to_ascii_lowercase()
            } else {
                let domain = origin.clone().or_else(|| genkey_domain(&comment)).ok_or_else(|| {
                    err(line_no, "relative owner name and no $ORIGIN (nor a genkey comment naming the domain)")
                })?;
                format!("{}.{domain}", owner_raw.to_ascii_lowercase())
            };
            self.records.entry(owner).or_default().push(value);
        }
        Ok(())
    }

    /// Number of names with records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record was read.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl KeyLookup for ZoneKeys {
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        self.records.get(&name.to_ascii_lowercase()).cloned().ok_or(LookupError::NotFound)
    }
}

/// `; ----- DKIM key SEL for DOMAIN` -> DOMAIN.
fn genkey_domain(comment: &str) -> Option<String> {
    let rest = comment.split("DKIM key ").nth(1)?;
    let domain = rest.split(" for ").nth(1)?.split_whitespace().next()?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

pub(super) enum Token {
    Word(String),
    Quoted(Vec<u8>),
}

/// Splits a zone line at its comment (a `;` outside quotes).
fn split_comment(line: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => return (&line[..i], &line[i..]),
            _ => {}
        }
    }
    (line, "")
}

/// Opening minus closing parentheses of a zone line, outside quoted strings (a `(` in a
/// record's text, such as `n=see (notes)`, must not join or end records: found by the zone fuzz
/// target, fuzz/regressions/zone).
fn paren_balance(code: &str) -> i32 {
    let mut quoted = false;
    let mut escaped = false;
    let mut depth = 0;
    for c in code.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            _ => {}
        }
    }
    depth
}

pub(super) fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'(' | b')' | b'\r' => i += 1,
            b'"' => {
                let mut v = vec![];
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("unterminated quoted string".into()),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            // \X or \DDD (RFC 1035 §5.1)
                            if b.get(i + 1..i + 4).is_some_and(|d| d.iter().all(u8::is_ascii_digit)) {
                                let n: u16 = s[i + 1..i + 4].parse().unwrap_or(0);
                                v.push(n.min(255) as u8);
                                i += 4;
                            } else if let Some(&c) = b.get(i + 1) {
                                v.push(c);
                                i += 2;
                            } else {
                                return Err("dangling backslash".into());
                            }
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Quoted(v));
            }
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'(' | b')' | b'"' | b'\r') {
                    i += 1;
                }
                out.push(Token::Word(s[start..i].to_string()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fuzz/regressions/zone/paren-in-quoted-string): parentheses inside a quoted
    /// string neither join the next record nor end this one.
    #[test]
    fn parentheses_inside_quotes() {
        let zone = "$ORIGIN example.com.\n\
                    a._domainkey IN TXT ( \"v=DKIM1; k=ed25519; n=see (notes; \"\n\
                    \t\"p=or4vCo+ZLTRVAPz6zvV2Kq3MDW16hn79uvzO02YNaU0=\" )\n\
                    b._domainkey IN TXT \"v=DKIM1; n=x) y; p=\"\n";
        let mut z = ZoneKeys::default();
        z.add_zone(zone, "test.zone").unwrap();
        let a = crate::dkim::verify::KeyLookup::txt(&z, "a._domainkey.example.com").unwrap();
        assert_eq!(a.len(), 1);
        assert!(
            a[0].ends_with(b"p=or4vCo+ZLTRVAPz6zvV2Kq3MDW16hn79uvzO02YNaU0="),
            "{:?}",
            String::from_utf8_lossy(&a[0])
        );
        let b = crate::dkim::verify::KeyLookup::txt(&z, "b._domainkey.example.com").unwrap();
        assert_eq!(b, [b"v=DKIM1; n=x) y; p=".to_vec()]);
    }

    #[test]
    fn zone_files() {
        let zone = "$TTL 3600\n\
            sel._domainkey\tIN\tTXT\t( \"v=DKIM1; k=rsa; \"\n\t  \"p=AB\"\n\t  \"CD\" )  ; ----- DKIM key sel for Example.com\n\
            $ORIGIN other.org.\n\
            s2._domainkey 300 IN TXT \"v=DKIM1; p=\" \"EF\" ; comment; with; semicolons\n\
            abs._domainkey.third.net. IN TXT \"a\\\"b\\059c\"\n\
            www IN A 192.0.2.1\n";
        let mut z = ZoneKeys::default();
        z.add_zone(zone, "test.zone").unwrap();
        assert_eq!(z.txt("sel._domainkey.example.com").unwrap(), vec![b"v=DKIM1; k=rsa; p=ABCD".to_vec()]);
        assert_eq!(z.txt("s2._domainkey.other.org").unwrap(), vec![b"v=DKIM1; p=EF".to_vec()]);
        assert_eq!(z.txt("abs._domainkey.third.net").unwrap(), vec![b"a\"b;c".to_vec()]);
        assert_eq!(z.txt("www.other.org"), Err(LookupError::NotFound));
        let e = ZoneKeys::default().add_zone("rel IN TXT \"x\"\n", "z").unwrap_err();
        assert!(e.to_string().starts_with("z:1: relative owner"), "{e}");
    }
}
