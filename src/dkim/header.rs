//! The header block of a message: where it ends, and its fields as slices of the input.
//!
//! This module splits a message (RFC 5322 §2.1) into header fields and body without copying
//! and checks that the header block is one: every line is a field (`name:` with printable
//! ASCII name) or a continuation of one. It does not canonicalize (see [`crate::dkim::canon`]) and
//! does not decode field values.

use std::cell::Cell;

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
    /// A header field holds a control character: a C0 control other than HTAB (a CR only as
    /// part of a line end), or DEL. RFC 5322 §2.2 and §3.2 allow neither in a field, and
    /// verifiers disagree on a signature over one (dkimpy and libopendkim refuse it, Mail::DKIM
    /// accepts it), so the signer refuses the message. Found by
    /// [`Message::check_field_octets`], not by [`Message::parse`]: a verifier still reads such
    /// a message.
    #[error(
        "line {line}: the {field} header field holds {}, which RFC 5322 §2.2 does not allow in a header field (verifiers disagree on a signature over it)",
        control_name(*.octet)
    )]
    ControlCharacter {
        /// 1-based line number.
        line: usize,
        /// The field's name (at most 64 characters of it).
        field: String,
        /// The octet.
        octet: u8,
    },
}

/// How an error names a control character.
fn control_name(octet: u8) -> String {
    let name = match octet {
        0x00 => "NUL",
        0x07 => "bell",
        0x08 => "backspace",
        0x0B => "vertical tab",
        0x0C => "form feed",
        0x0D => "carriage return not followed by line feed",
        0x1B => "escape",
        0x7F => "DEL",
        _ => "",
    };
    if name.is_empty() {
        format!("the control character 0x{octet:02X}")
    } else {
        format!("the control character 0x{octet:02X} ({name})")
    }
}

/// Octets a header field may not hold (RFC 5322 §2.2, §3.2: field bodies are printable
/// characters, SP and HTAB, folded with line ends; RFC 6532 adds the 8-bit octets of UTF-8,
/// which stay allowed): the C0 controls but HTAB and LF, and DEL. LF ends a line (the parser
/// splits there); CR is flagged here and let through when an LF follows it.
static FORBIDDEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b != b'\t' as usize && b != b'\n' as usize;
        b += 1;
    }
    t[0x7F] = true;
    t
};

/// Whether `raw[i]` is an octet a header field may not hold (a CR before an LF is a line end).
fn is_forbidden_at(raw: &[u8], i: usize) -> bool {
    FORBIDDEN[usize::from(raw[i])] && !(raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n'))
}

/// The high bit of each octet of `w` that is a C0 control other than HTAB and LF, or DEL
/// (CR included: the caller lets a CRLF through). Exact per octet: no operation carries
/// from one octet into the next (the low seven bits are added to at most 0x7F).
fn control_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    // Below 0x20: high bit clear, and the low seven bits do not reach 0x20.
    let below_space = !(((w & LOW) + ONES * 0x60) | w) & HIGH;
    let equal = |octet: u8| {
        let y = w ^ (ONES * u64::from(octet));
        !(((y & LOW) + LOW) | y) & HIGH
    };
    (below_space & !equal(b'\t') & !equal(b'\n')) | equal(0x7F)
}

/// Offset in `raw` of the first octet a header field may not hold. 32 octets at a time, as
/// four words the compiler can put side by side in vector registers (a block of mail text has
/// none, and line ends and folding tabs do not count); the rest one octet at a time through
/// [`FORBIDDEN`].
fn first_forbidden(raw: &[u8]) -> Option<usize> {
    let mut blocks = raw.chunks_exact(32);
    for (k, block) in blocks.by_ref().enumerate() {
        let word = |n: usize| u64::from_le_bytes(block[n * 8..n * 8 + 8].try_into().expect("eight octets"));
        let masks = [control_mask(word(0)), control_mask(word(1)), control_mask(word(2)), control_mask(word(3))];
        if masks.iter().fold(0, |a, m| a | m) == 0 {
            continue;
        }
        for (n, &m) in masks.iter().enumerate() {
            let mut mask = m;
            while mask != 0 {
                let i = k * 32 + n * 8 + (mask.trailing_zeros() / 8) as usize;
                if is_forbidden_at(raw, i) {
                    return Some(i);
                }
                mask &= mask - 1; // the CR of a CRLF
            }
        }
    }
    let tail = raw.len() - blocks.remainder().len();
    (tail..raw.len()).find(|&i| is_forbidden_at(raw, i))
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
    #[inline]
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

thread_local! {
    /// The emptied field lists of the last two messages this thread dropped, for its next
    /// parses: a message signed with Ed25519 costs a few microseconds, and allocating its list
    /// showed in the profile. Two, because the bulk workers parse two messages before dropping
    /// either (their bodies are hashed together).
    static SPARE_FIELDS: [Cell<Vec<Field<'static>>>; 2] = const { [Cell::new(Vec::new()), Cell::new(Vec::new())] };
}

/// The longest field list a thread keeps for reuse: a header of thousands of fields leaves no
/// large buffer behind in every thread of a daemon.
const SPARE_FIELDS_KEPT: usize = 256;

/// An empty field list, with one of this thread's spare allocations if it has one.
fn spare_fields<'a>() -> Vec<Field<'a>> {
    let spare = SPARE_FIELDS.try_with(|slots| match slots[0].take() {
        v if v.capacity() > 0 => v,
        _ => slots[1].take(),
    });
    let mut v = spare.map(relabel).unwrap_or_default();
    if v.capacity() == 0 {
        v.reserve(24);
    }
    v
}

/// Keeps `fields` (emptied) for this thread's next parse, with the one kept before it; an
/// older one is freed. A list with no allocation (a clone of a message without fields) keeps
/// nothing and leaves the slots as they are.
fn keep_spare_fields(fields: Vec<Field<'_>>) {
    if fields.capacity() == 0 {
        return;
    }
    // During thread exit the slots may be gone: the list is then simply freed.
    let _ = SPARE_FIELDS.try_with(|slots| {
        let before = slots[0].replace(relabel(fields));
        if before.capacity() > 0 {
            slots[1].set(before);
        }
    });
}

/// `v` emptied, as a list of fields of another message's lifetime, in the same allocation:
/// collecting a vector's own iterator into elements of the same size and alignment reuses
/// its buffer (std's in-place collection), and with nothing in it the map is never called.
fn relabel<'b>(mut v: Vec<Field<'_>>) -> Vec<Field<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("the list was emptied")).collect()
}

/// A message split into its header fields and its body.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The header fields, top to bottom.
    pub fields: Vec<Field<'a>>,
    /// The header block: every field, up to (not including) the empty line that ends it.
    pub header: &'a [u8],
    /// The body: after the empty line that ends the header block; empty when there is no such
    /// line (RFC 5322 §3.5: the body is optional).
    pub body: &'a [u8],
    /// Offset of the body in the message.
    pub body_offset: usize,
    /// Whether the message uses CRLF line ends (judged by its first line). A header we add uses
    /// the same line end.
    pub crlf: bool,
}

impl Drop for Message<'_> {
    /// Gives the field list back to the thread for its next parse.
    fn drop(&mut self) {
        let fields = std::mem::take(&mut self.fields);
        if fields.capacity() <= SPARE_FIELDS_KEPT {
            keep_spare_fields(fields);
        }
    }
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
        let mut fields = spare_fields();
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
        Ok(Message { fields, header: &msg[..fields_end], body: &msg[body_offset..], body_offset, crlf })
    }

    /// The fields named by an `h=` list, in list order: the n-th occurrence of a name takes
    /// the n-th instance of that field from the bottom, and `None` when there is no such
    /// instance (it then contributes nothing: oversigning, RFC 6376 §5.4.2).
    ///
    /// Linear in the number of fields plus the number of names: a message with 100k From
    /// fields, or a signature listing a name 100k times, costs one pass.
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

    /// Fails at the first header field that holds a control character
    /// ([`HeaderError::ControlCharacter`]: C0 controls other than HTAB, a CR not followed by
    /// LF, DEL), which a signer must not sign. Looks at the header block
    /// only, never the body; 8-bit octets (UTF-8 header fields, RFC 6532) are allowed.
    pub fn check_field_octets(&self) -> Result<(), HeaderError> {
        // One scan of the whole block (the fields are contiguous in it, from offset 0).
        let Some(i) = first_forbidden(self.header) else { return Ok(()) };
        // Rare, so found only now: the field and the line.
        let f = self.fields.iter().rev().find(|f| f.offset <= i).expect("the block starts with a field");
        let line = 1 + memchr::memchr_iter(b'\n', &self.header[..i]).count();
        let name = &f.name[..f.name.len().min(64)];
        Err(HeaderError::ControlCharacter {
            line,
            field: String::from_utf8_lossy(name).into_owned(),
            octet: self.header[i],
        })
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

    /// A dropped message's field list is the next parse's, on the same thread, and holds only
    /// the new message's fields; a list longer than [`SPARE_FIELDS_KEPT`] is not kept.
    #[test]
    fn field_lists_are_reused_and_huge_ones_freed() {
        std::thread::spawn(|| {
            // The lists the slots hold, looked at directly: a freed list could come back from
            // the allocator by chance, so a pointer seen again proves nothing by itself.
            let slots = || {
                SPARE_FIELDS.with(|slots| {
                    slots.each_ref().map(|c| {
                        let v = c.take();
                        let p = (v.capacity() > 0).then_some(v.as_ptr());
                        c.set(v);
                        p
                    })
                })
            };
            let first = Message::parse(b"A: 1\nB: 2\nC: 3\n\nbody\n").unwrap();
            let buffer = first.fields.as_ptr();
            drop(first);
            assert_eq!(slots(), [Some(buffer), None]);
            let second = Message::parse(b"D: 4\n\nx\n").unwrap();
            assert_eq!(second.fields.as_ptr(), buffer, "the list was allocated anew");
            assert_eq!(names(&second), ["D: 4\n"]);
            drop(second);

            // Two messages parsed before either is dropped (a pair): both lists come back.
            let (a, b) = (Message::parse(b"A: 1\n\n").unwrap(), Message::parse(b"B: 2\n\n").unwrap());
            let mut buffers = [a.fields.as_ptr(), b.fields.as_ptr()];
            drop((a, b));
            assert_eq!(slots(), [Some(buffers[1]), Some(buffers[0])], "a list of the pair was freed");
            let (c, d) = (Message::parse(b"C: 3\n\n").unwrap(), Message::parse(b"D: 4\n\n").unwrap());
            let mut again = [c.fields.as_ptr(), d.fields.as_ptr()];
            buffers.sort();
            again.sort();
            assert_eq!(again, buffers, "a list of the pair was allocated anew");
            assert_eq!((names(&c), names(&d)), (vec!["C: 3\n".to_string()], vec!["D: 4\n".to_string()]));
            drop((c, d));

            let many: Vec<u8> = (0..SPARE_FIELDS_KEPT + 1).flat_map(|i| format!("X{i}: v\n").into_bytes()).collect();
            let big = Message::parse(&many).unwrap();
            assert!(big.fields.capacity() > SPARE_FIELDS_KEPT);
            drop(big);
            // The big list was freed, not kept: the next parse starts a small one.
            let next = Message::parse(b"E: 5\n\n").unwrap();
            assert!(next.fields.capacity() <= SPARE_FIELDS_KEPT, "{}", next.fields.capacity());
        })
        .join()
        .unwrap();
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

    /// The indexed selection picks exactly what the scan picks,
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

    /// 9,999 From fields and an `h=` naming From 100k times
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

    /// Control characters in any header field are found, with their line
    /// and field; HTAB, line ends (LF or CRLF) and 8-bit UTF-8 are not; nor is the body.
    #[test]
    fn control_characters_in_fields() {
        let cc =
            |line, field: &str, octet| Err(HeaderError::ControlCharacter { line, field: field.to_string(), octet });
        let cases: &[(&[u8], Result<(), HeaderError>)] = &[
            (b"From: a@example.com\x0b\nTo: b\n\nbody", cc(1, "From", 0x0B)),
            (b"To: b\r\nFrom: a\x0c@example.com\r\n\r\n", cc(2, "From", 0x0C)),
            (b"To: b\nSubject: x\n folded \x00 here\nFrom: a\n\n", cc(3, "Subject", 0x00)),
            (b"From: a\nX-Esc: \x1b[31mred\n\n", cc(2, "X-Esc", 0x1B)),
            (b"From: a\x7f\n\n", cc(1, "From", 0x7F)),
            (b"From: a\rb\n\n", cc(1, "From", 0x0D)),
            (b"From: a\nTo: b\r", cc(2, "To", 0x0D)),
            (b"From: a\x01b\n\n", cc(1, "From", 0x01)),
            (b"From: a\x1f\n\n", cc(1, "From", 0x1F)),
            // Allowed: HTAB, LF and CRLF line ends, folding, 8-bit UTF-8 (RFC 6532, C1 controls
            // included: U+0085 is two 8-bit octets), controls in the body, no final line end.
            (b"From:\ta@example.com\t\nSubject: x\r\n\ty\r\n\r\n\x0b\x0c\x00\x7f", Ok(())),
            ("From: J\u{fc}rgen <j@b\u{fc}cher.example>\nSubject: \u{2603}\u{85}\n\n".as_bytes(), Ok(())),
            (b"From: a\xff\x80\n\n", Ok(())),
            (b"From: a", Ok(())),
        ];
        for (input, want) in cases {
            let m = Message::parse(input).unwrap();
            assert_eq!(m.check_field_octets(), *want, "{:?}", String::from_utf8_lossy(input));
        }
        let e = Message::parse(b"From: a\x0b\n\n").unwrap().check_field_octets().unwrap_err();
        assert!(
            e.to_string().starts_with("line 1: the From header field holds the control character 0x0B (vertical tab)"),
            "{e}"
        );
    }

    /// The block-at-a-time scan finds exactly what an octet-at-a-time scan finds: every octet
    /// value at every position of every length up to 70, over backgrounds of plain text and of
    /// text full of the controls that are allowed (HTAB, LF, CRLF), alone or after a CR.
    #[test]
    fn first_forbidden_equals_naive() {
        let naive = |raw: &[u8]| (0..raw.len()).find(|&i| is_forbidden_at(raw, i));
        for background in [&b"abcdefghijklmnopqrstuvwxyz0123456789"[..], b"a\tb\r\n\tc\n d\xc3\xa9\r\n"] {
            let text: Vec<u8> = background.iter().copied().cycle().take(70).collect();
            for len in 0..70 {
                assert_eq!(first_forbidden(&text[..len]), naive(&text[..len]));
                for pos in 0..len {
                    for b in 0..=255u8 {
                        let mut raw = text[..len].to_vec();
                        raw[pos] = b;
                        assert_eq!(first_forbidden(&raw), naive(&raw), "{raw:?}");
                        if pos > 0 {
                            raw[pos - 1] = b'\r';
                            assert_eq!(first_forbidden(&raw), naive(&raw), "{raw:?}");
                        }
                    }
                }
            }
        }
    }
}
