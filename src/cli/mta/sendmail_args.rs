//! A sendmail command line and message as Postfix sendmail(1) reads them: its getopt options
//! (what is asked for, `-i`, the envelope sender) and the end of a message at a lone `.` line.
//!
//! Only notes what the arguments say: they are passed on unchanged.

use std::ffi::OsString;
use std::io::{BufRead, Read};

/// What a sendmail command line asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendmailMode {
    /// Read a message on stdin and queue it (the default, `-bm`).
    #[default]
    Enqueue,
    /// `-bs`: an SMTP session on stdin/stdout.
    Smtp,
    /// Anything that submits no message: `-bp` (mailq), `-bi`/`-I` (newaliases), `-bd`,
    /// `-bv`, `-bh`, `-q...`, and command lines sendmail would refuse (it says why).
    Other,
}

/// A sendmail command line as Postfix sendmail(1) reads it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SendmailArgs {
    /// The arguments as given (passed on unchanged).
    pub args: Vec<OsString>,
    /// `-i`, `-oi`, `-o i` (also grouped: `-ti`, `-it`): a line with only `.` does not end
    /// the message.
    pub ignore_dots: bool,
    /// What is asked for.
    pub mode: SendmailMode,
    /// `-f` / `-r`: the envelope sender.
    pub sender: Option<String>,
}

/// Postfix sendmail(1)'s getopt string (`GETOPT_LIST` in postfix/src/sendmail/sendmail.c).
/// A letter followed by `:` takes a value, attached (`-fme@x`) or in the next argument.
const SENDMAIL_OPTIONS: &[u8] = b"A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx";

/// Reads sendmail's command line exactly as Postfix sendmail(1) does: POSIX getopt with
/// grouped flags (`-ti`), values attached or separate (`-oi`, `-o i`), options ending at the
/// first recipient or `--`, and its two exceptions to getopt (a bare `-q`; the old `-V xx`).
/// Nothing is changed, only noted.
pub fn parse_sendmail_args(args: Vec<OsString>) -> SendmailArgs {
    let mut out = SendmailArgs { args, ..SendmailArgs::default() };
    let mut mode = SendmailMode::Enqueue;
    let mut queue_run = false;
    let mut usage_error = false;
    let args = &out.args;
    let mut i = 0;
    'args: while let Some(arg) = args.get(i) {
        let a = arg.as_encoded_bytes();
        match a {
            // Not getopt compatible: -q alone flushes the queue.
            b"-q" => {
                queue_run = true;
                i += 1;
                continue;
            }
            // Deprecated VERP form `-V xx`: -V alone, the next argument left in place.
            b"-V" if args.get(i + 1).is_some_and(|n| n.len() == 2) => {
                i += 1;
                continue;
            }
            b"--" => break,
            _ if a.len() < 2 || a[0] != b'-' => break, // the first recipient
            _ => {}
        }
        i += 1;
        let mut j = 1;
        while j < a.len() {
            let letter = a[j];
            j += 1;
            let Some(at) = SENDMAIL_OPTIONS.iter().position(|&o| o == letter && o != b':') else {
                usage_error = true; // sendmail: "usage: ..." (EX_USAGE)
                break 'args;
            };
            if SENDMAIL_OPTIONS.get(at + 1) != Some(&b':') {
                match letter {
                    b'i' => out.ignore_dots = true,
                    b'I' => mode = SendmailMode::Other,
                    _ => {}
                }
                continue;
            }
            let value: &[u8] = if j < a.len() {
                let v = &a[j..];
                j = a.len();
                v
            } else if let Some(next) = args.get(i) {
                i += 1;
                next.as_encoded_bytes()
            } else {
                usage_error = true; // option requires an argument
                break 'args;
            };
            match letter {
                b'b' => {
                    mode = match value.first() {
                        Some(b'm') => SendmailMode::Enqueue,
                        Some(b's') => SendmailMode::Smtp,
                        _ => SendmailMode::Other,
                    }
                }
                b'f' | b'r' => out.sender = Some(String::from_utf8_lossy(value).into_owned()),
                b'o' if value.first() == Some(&b'i') => out.ignore_dots = true,
                b'q' => queue_run = true,
                _ => {}
            }
        }
    }
    out.mode = if usage_error || queue_run { SendmailMode::Other } else { mode };
    out
}

/// A message in `R` as sendmail reads it: to end of file, or (without `-i`) up to a line
/// holding only `.`, reading no further. Lines are taken at most [`LINE_PIECE`] octets at a
/// time, so that a line without an end is not held whole.
pub struct SendmailInput<R> {
    inner: R,
    ignore_dots: bool,
    /// The next octet read starts a line.
    at_line_start: bool,
    /// The dot line, or the end of the input, has been seen.
    ended: bool,
    /// Read, not handed out yet: `piece[at..]`.
    piece: Vec<u8>,
    at: usize,
}

/// How much of a line [`SendmailInput`] holds at a time.
const LINE_PIECE: u64 = 64 * 1024;

impl<R: BufRead> SendmailInput<R> {
    /// The message in `inner`; `ignore_dots`: `-i`, a lone `.` is data.
    pub fn new(inner: R, ignore_dots: bool) -> Self {
        SendmailInput { inner, ignore_dots, at_line_start: true, ended: false, piece: vec![], at: 0 }
    }
}

impl<R: BufRead> Read for SendmailInput<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.ignore_dots {
            return self.inner.read(out);
        }
        while self.at == self.piece.len() {
            if self.ended {
                return Ok(0);
            }
            self.piece.clear();
            self.at = 0;
            if (&mut self.inner).take(LINE_PIECE).read_until(b'\n', &mut self.piece)? == 0 {
                self.ended = true;
                return Ok(0);
            }
            let starts_line = self.at_line_start;
            self.at_line_start = self.piece.ends_with(b"\n");
            // A lone "." with no line end is the last octet of the input (a piece ends early
            // only there or at an LF).
            if starts_line && matches!(&self.piece[..], b".\n" | b".\r\n" | b".") {
                self.piece.clear();
                self.ended = true;
                return Ok(0);
            }
        }
        let n = out.len().min(self.piece.len() - self.at);
        out[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn sendmail_arguments() {
        use SendmailMode::*;
        for (a, dots, mode, sender) in [
            (&["-i", "-f", "a@b", "--", "x@y"][..], true, Enqueue, Some("a@b")),
            (&["-oi", "-t"][..], true, Enqueue, None),
            // Grouped flags and a separate -o value.
            (&["-ti"][..], true, Enqueue, None),
            (&["-it", "x@y"][..], true, Enqueue, None),
            (&["-o", "i", "x@y"][..], true, Enqueue, None),
            (&["-t", "-oi"][..], true, Enqueue, None),
            (&["-tif", "me@x", "r@y"][..], true, Enqueue, Some("me@x")),
            (&["-iF", "Name", "x@y"][..], true, Enqueue, None),
            (&["-om", "x@y"][..], false, Enqueue, None),
            (&["-o", "m", "-i"][..], true, Enqueue, None),
            (&["-fme@example.com", "-F", "Me Myself", "x@y"][..], false, Enqueue, Some("me@example.com")),
            (&["-r", "r@example.com", "x@y"][..], false, Enqueue, Some("r@example.com")),
            // A value is a value, even when it looks like a flag.
            (&["-F", "-i", "x@y"][..], false, Enqueue, None),
            // Options end at the first recipient (POSIX getopt, as Postfix builds it) or --.
            (&["x@y", "-i"][..], false, Enqueue, None),
            (&["--", "-i"][..], false, Enqueue, None),
            (&["-V", "+=", "-i"][..], false, Enqueue, None),
            (&["-bs"][..], false, Smtp, None),
            (&["-bs", "-bm"][..], false, Enqueue, None),
            (&["-bp"][..], false, Other, None),
            (&["-bi"][..], false, Other, None),
            (&["-I"][..], false, Other, None),
            (&["-bv", "x@y"][..], false, Other, None),
            (&["-bd"][..], false, Other, None),
            (&["-q"][..], false, Other, None),
            (&["-q1h"][..], false, Other, None),
            (&["-qR", "example.com"][..], false, Other, None),
            (&["-bm", "-i", "x@y"][..], true, Enqueue, None),
            (
                &["-N", "success,delay", "-R", "hdrs", "-V", "envid", "-B", "8BITMIME", "-C", "/etc/postfix", "x@y"][..],
                false,
                Enqueue,
                None,
            ),
            // What sendmail refuses goes to it unread, for it to say so.
            (&["-f"][..], false, Other, None),
            (&["-k", "x@y"][..], false, Other, None),
        ] {
            let p = parse_sendmail_args(args(a));
            assert_eq!((p.ignore_dots, p.mode, p.sender.as_deref()), (dots, mode, sender), "{a:?}");
            assert_eq!(p.args, args(a), "passed through unchanged");
        }
    }

    #[test]
    fn sendmail_input_dots() {
        for (input, dots, want, rest) in [
            (&b"A: b\n\nbody\n.\nafter\n"[..], false, &b"A: b\n\nbody\n"[..], &b"after\n"[..]),
            (b"A: b\n\nbody\n.\nafter\n", true, b"A: b\n\nbody\n.\nafter\n", b""),
            (b"A: b\r\n\r\n..stuffed\r\n.\r\nmore", false, b"A: b\r\n\r\n..stuffed\r\n", b"more"),
            (b"A: b\n\nno end", false, b"A: b\n\nno end", b""),
            (b"A: b\n\nlast\n.", false, b"A: b\n\nlast\n", b""),
            (b"A: b\n\n.x\n. \n", false, b"A: b\n\n.x\n. \n", b""),
        ] {
            let mut r = input;
            let mut got = vec![];
            SendmailInput::new(&mut r, dots).read_to_end(&mut got).unwrap();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(r, rest, "reads nothing after the dot line");
        }
        // A line longer than what is held at a time, and a dot line after it.
        let long = [&b"A: b\n\n"[..], &[b'x'; 200_000], b"\n.\nafter\n"].concat();
        let mut got = vec![];
        SendmailInput::new(&long[..], false).read_to_end(&mut got).unwrap();
        assert_eq!(got, long[..long.len() - b".\nafter\n".len()]);
        // A dot at the start of a piece that does not start a line is data.
        let cut = [&b"A: b\n\n"[..], &[b'x'; LINE_PIECE as usize - 1], b"y.\n", b".\n"].concat();
        let mut got = vec![];
        SendmailInput::new(&cut[..], false).read_to_end(&mut got).unwrap();
        assert_eq!(got, cut[..cut.len() - 2]);
    }
}
