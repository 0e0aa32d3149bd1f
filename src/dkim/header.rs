//! The header block of a message: where it ends, and its fields as slices of the input.
//!
//! This module splits a message (RFC 5322 §2.1) into header fields and body without copying
//! and checks that the header block is one: every line is a field (`name:` with printable
//! ASCII name) or a continuation of one. It does not canonicalize (see [`crate::dkim::canon`]) and
//! does not decode field values.

/// A header block that cannot be parsed. Each variant names the line (1-based) where the
/// problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The input has no bytes at all.
    #[error("empty input: not a message")]
    Empty,
    /// The first line is an mbox `From ` separator, not a header field.
    #[error("line 1 is an mbox \"From \" separator line, not a header field (give an mbox file as input, or drop that line)")]
    MboxSeparator,
    /// The input starts with a UTF-8 byte order mark, which is not part of any header field.
    #[error(
        "the input starts with a UTF-8 byte order mark (EF BB BF), which is not allowed before the first header field"
    )]
    Bom,
    /// The first line starts with whitespace, so it would continue a field that does not exist.
    #[error("line 1 starts with whitespace: a continuation line with no header field before it")]
    LeadingContinuation,
    /// A line in the header block has no colon after a valid field name.
    #[error("line {line}: not a header field (expected \"Name: value\")")]
    NotAField {
        /// 1-based line number.
        line: usize,
    },
    /// More than [`MAX_FIELDS`] header fields.
    #[error("more than {MAX_FIELDS} header fields: refused (a limit against resource exhaustion)")]
    TooManyFields,
    /// A field name contains a byte outside printable ASCII (RFC 5322 §2.2 ftext).
    #[error("line {line}: header field name contains a byte outside printable ASCII")]
    BadName {
        /// 1-based line number.
        line: usize,
    },
}

/// Above this product of field count and `h=` length, [`Message::select`] indexes the fields
/// by name instead of scanning them once per name.
const SMALL_SELECT: usize = 1024;

/// Most header fields in one message. Real mail has a few dozen (a long Received chain a few
/// hundred; Postfix stops at 50 hops). Beyond this the message is refused as
/// [`HeaderError::TooManyFields`]: it bounds the memory of the field list (40 octets a field)
/// and the work of every later step.
pub const MAX_FIELDS: usize = 10_000;

/// One header field: its name and its raw text, both slices of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field name as written (without any whitespace before the colon).
    pub name: &'a [u8],
    /// The whole field: name, colon, value, folds and the final line end (if there is one).
    pub raw: &'a [u8],
    /// Offset of `raw` in the message.
    pub offset: usize,
}

impl Field<'_> {
    /// The value after the colon, still folded, without the final line end.
    pub fn value(&self) -> &[u8] {
        let colon = memchr::memchr(b':', self.raw).map_or(self.raw.len(), |c| c + 1);
        let v = &self.raw[colon..];
        match v.strip_suffix(b"\n") {
            Some(v) => v.strip_suffix(b"\r").unwrap_or(v),
            None => v,
        }
    }

    /// Whether the name equals `name`, ignoring ASCII case (field names are case-insensitive,
    /// RFC 5322 §1.2.2).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// A message split into its header fields and its body.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The header fields, top to bottom.
    pub fields: Vec<Field<'a>>,
    /// The body: after the empty line that ends the header block; empty when there is no such
    /// line (RFC 5322 §3.5: the body is optional).
    pub body: &'a [u8],
    /// Offset of the body in the message.
    pub body_offset: usize,
    /// Whether the message uses CRLF line ends (judged by its first line). A header we add uses
    /// the same line end.
    pub crlf: bool,
}

impl<'a> Message<'a> {
    /// Parses the header block of `msg`.
    pub fn parse(msg: &'a [u8]) -> Result<Message<'a>, HeaderError> {
        if msg.is_empty() {
            return Err(HeaderError::Empty);
        }
        if msg.starts_with(b"\xEF\xBB\xBF") {
            return Err(HeaderError::Bom);
        }
        if msg.starts_with(b"From ") {
            return Err(HeaderError::MboxSeparator);
        }
        if msg[0] == b' ' || msg[0] == b'\t' {
            return Err(HeaderError::LeadingContinuation);
        }
        let crlf = match memchr::memchr(b'\n', msg) {
            Some(i) => i > 0 && msg[i - 1] == b'\r',
            None => false,
        };
        let mut fields: Vec<Field<'a>> = Vec::with_capacity(24);
        let mut pos = 0;
        let mut line_no = 0;
        let mut field_start: Option<usize> = None;
        let mut name_end = 0;
        let len = msg.len();
        // Where the last field ends: the separator line, or the end of the input.
        let mut fields_end = len;
        let body_offset;
        loop {
            if pos >= len {
                body_offset = len;
                break;
            }
            line_no += 1;
            let line_end = memchr::memchr(b'\n', &msg[pos..]).map_or(len, |i| pos + i + 1);
            let line = &msg[pos..line_end];
            // The empty line that ends the header block.
            if line == b"\n" || line == b"\r\n" {
                fields_end = pos;
                body_offset = line_end;
                break;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                // Continuation of the current field (checked non-empty at line 1 above).
                pos = line_end;
                continue;
            }
            if let Some(start) = field_start {
                if fields.len() >= MAX_FIELDS {
                    return Err(HeaderError::TooManyFields);
                }
                fields.push(Field { name: &msg[start..name_end], raw: &msg[start..pos], offset: start });
            }
            let colon = match memchr::memchr(b':', line) {
                Some(c) => c,
                None => return Err(HeaderError::NotAField { line: line_no }),
            };
            // Name, then optional WSP before the colon (obsolete syntax, RFC 5322 §4.5.3).
            let mut ne = colon;
            while ne > 0 && (line[ne - 1] == b' ' || line[ne - 1] == b'\t') {
                ne -= 1;
            }
            if ne == 0 {
                return Err(HeaderError::NotAField { line: line_no });
            }
            if line[..ne].iter().any(|&b| !(33..=126).contains(&b)) {
                return Err(HeaderError::BadName { line: line_no });
            }
            field_start = Some(pos);
            name_end = pos + ne;
            pos = line_end;
        }
        if let Some(start) = field_start {
            if fields.len() >= MAX_FIELDS {
                return Err(HeaderError::TooManyFields);
            }
            fields.push(Field { name: &msg[start..name_end], raw: &msg[start..fields_end], offset: start });
        }
        Ok(Message { fields, body: &msg[body_offset..], body_offset, crlf })
    }

    /// The fields named by an `h=` list, in list order: the n-th occurrence of a name takes
    /// the n-th instance of that field from the bottom, and `None` when there is no such
    /// instance (it then contributes nothing: oversigning, RFC 6376 §5.4.2).
    ///
    /// Linear in the number of fields plus the number of names: a message with 100k From
    /// fields, or a signature listing a name 100k times, costs one pass (issue 11, item 10).
    pub fn select<'m, S: AsRef<str>>(&'m self, names: &[S]) -> Vec<Option<&'m Field<'a>>> {
        // Ordinary messages (a few dozen fields, a dozen names): a direct scan is cheaper than
        // building an index, and still bounded by this product.
        if names.len().saturating_mul(self.fields.len()) <= SMALL_SELECT {
            return self.select_scan(names);
        }
        // One slot per distinct (lower-cased) name of the list.
        let mut slots: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
        let list: Vec<usize> = names
            .iter()
            .map(|n| {
                let key = n.as_ref().as_bytes().to_ascii_lowercase();
                let next = slots.len();
                *slots.entry(key).or_insert(next)
            })
            .collect();
        // The fields of each slot, bottom-up, in one pass over the header.
        let mut found: Vec<Vec<usize>> = vec![Vec::new(); slots.len()];
        let mut lower = Vec::with_capacity(64);
        for (i, f) in self.fields.iter().enumerate().rev() {
            lower.clear();
            lower.extend(f.name.iter().map(u8::to_ascii_lowercase));
            if let Some(&s) = slots.get(lower.as_slice()) {
                found[s].push(i);
            }
        }
        let mut taken = vec![0usize; slots.len()];
        list.into_iter()
            .map(|s| {
                let n = taken[s];
                taken[s] += 1;
                found[s].get(n).map(|&i| &self.fields[i])
            })
            .collect()
    }

    /// [`Message::select`] by direct scan: quadratic, for small inputs only (and the oracle of
    /// the indexed form in tests).
    fn select_scan<'m, S: AsRef<str>>(&'m self, names: &[S]) -> Vec<Option<&'m Field<'a>>> {
        let mut used: Vec<(&str, usize)> = Vec::with_capacity(names.len());
        names
            .iter()
            .map(|name| {
                let name = name.as_ref();
                let n = match used.iter_mut().find(|(u, _)| u.eq_ignore_ascii_case(name)) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        used.push((name, 1));
                        1
                    }
                };
                self.fields.iter().rev().filter(|f| f.is(name)).nth(n - 1)
            })
            .collect()
    }

    /// The line end this message uses, for a header we add.
    pub fn line_end(&self) -> &'static str {
        if self.crlf {
            "\r\n"
        } else {
            "\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(m: &Message) -> Vec<String> {
        m.fields.iter().map(|f| String::from_utf8_lossy(f.raw).into_owned()).collect()
    }

    #[test]
    fn parse_table() {
        let cases: &[(&[u8], &[&str], &[u8])] = &[
            (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", &["A: 1\r\n", "B: 2\r\n"], b"body\r\n"),
            (b"A: 1\nB: 2\n continued\n\nbody", &["A: 1\n", "B: 2\n continued\n"], b"body"),
            // Header only, no separator, no final newline.
            (b"A: 1\r\nB: 2", &["A: 1\r\n", "B: 2"], b""),
            // Header only, with final newline but no empty line.
            (b"A: 1\nB: 2\n", &["A: 1\n", "B: 2\n"], b""),
            // Header only, separator, no body.
            (b"A: 1\n\n", &["A: 1\n"], b""),
            // Whitespace before colon.
            (b"X-Name : v\n\nb", &["X-Name : v\n"], b"b"),
            // Empty line inside body stays in body.
            (b"A:x\n\n\nb\n", &["A:x\n"], b"\nb\n"),
        ];
        for &(input, want_fields, want_body) in cases {
            let m = Message::parse(input).unwrap();
            assert_eq!(names(&m), want_fields, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(m.body, want_body);
        }
    }

    #[test]
    fn bottom_up_selection() {
        let m = Message::parse(b"To: 1\nFrom: a\nTo: 2\nSubject: s\nto: 3\n\n").unwrap();
        let picked: Vec<Option<&[u8]>> =
            m.select(&["to", "TO", "from", "to", "to", "from"]).iter().map(|f| f.map(|f| f.value())).collect();
        assert_eq!(picked, [Some(&b" 3"[..]), Some(b" 2"), Some(b" a"), Some(b" 1"), None, None]);
    }

    /// Regression (issue 11, item 10): the indexed selection picks exactly what the scan picks,
    /// on inputs large enough to take the indexed path.
    #[test]
    fn indexed_selection_equals_scan() {
        let mut msg = Vec::new();
        for i in 0..400 {
            let name = ["From", "to", "TO", "Subject", "X-A", "x-b"][i % 6];
            msg.extend_from_slice(format!("{name}: {i}\n").as_bytes());
        }
        msg.extend_from_slice(b"\nbody\n");
        let m = Message::parse(&msg).unwrap();
        let mut names: Vec<&str> = vec![];
        for i in 0..300 {
            names.push(["from", "To", "subject", "x-a", "missing", "X-B", "to"][i % 7]);
        }
        assert!(names.len() * m.fields.len() > SMALL_SELECT);
        let a: Vec<Option<usize>> = m.select(&names).iter().map(|f| f.map(|f| f.offset)).collect();
        let b: Vec<Option<usize>> = m.select_scan(&names).iter().map(|f| f.map(|f| f.offset)).collect();
        assert_eq!(a, b);
        assert!(a.iter().any(Option::is_none) && a.iter().any(Option::is_some));
    }

    /// Regression (issue 11, item 10): 9,999 From fields and an `h=` naming From 100k times
    /// select in linear time (this took minutes with the per-name scan).
    #[test]
    fn many_fields_select_linear() {
        let mut msg = b"From: a@example.com\n".repeat(MAX_FIELDS - 1);
        msg.extend_from_slice(b"\nbody\n");
        let m = Message::parse(&msg).unwrap();
        let names = vec!["from"; 100_000];
        let picked = m.select(&names);
        assert_eq!(picked.iter().filter(|f| f.is_some()).count(), MAX_FIELDS - 1);
        let mut too_many = b"X: y\n".repeat(MAX_FIELDS + 1);
        too_many.extend_from_slice(b"\n");
        assert_eq!(Message::parse(&too_many).unwrap_err(), HeaderError::TooManyFields);
    }

    #[test]
    fn names_and_values() {
        let m = Message::parse(b"Subject : hi\r\n there\r\n\r\n").unwrap();
        assert_eq!(m.fields[0].name, b"Subject");
        assert!(m.fields[0].is("SUBJECT"));
        assert_eq!(m.fields[0].value(), b" hi\r\n there");
        assert!(m.crlf);
    }

    #[test]
    fn errors() {
        let cases: &[(&[u8], HeaderError)] = &[
            (b"", HeaderError::Empty),
            (b"From a@b Mon Jan 1 00:00:00 2024\nA: b\n\n", HeaderError::MboxSeparator),
            (b" A: b\n\n", HeaderError::LeadingContinuation),
            (b"\xEF\xBB\xBFFrom: a@b\n\n", HeaderError::Bom),
            (b"hello world\n", HeaderError::NotAField { line: 1 }),
            (b"A: b\nno colon here\n\nbody", HeaderError::NotAField { line: 2 }),
            (b": no name\n", HeaderError::NotAField { line: 1 }),
            (b"A b: c\n", HeaderError::BadName { line: 1 }),
        ];
        for (input, want) in cases {
            assert_eq!(Message::parse(input).unwrap_err(), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }
}
