//! Deterministic generated mail corpora for benchmarks (`dkimpress bench`, `benches/`): a
//! seeded generator of mbox archives with fixed or log-normal message sizes and real-world
//! header blocks. Same seed, same bytes. Does not measure anything itself.

/// How message sizes are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeDist {
    /// Every message about this many bytes.
    Fixed(usize),
    /// Log-normal around this median (sigma 1), clamped to 300 B .. 64x the median.
    LogNormal(usize),
}

impl std::fmt::Display for SizeDist {
    /// The form `--size` takes: `4k`, `1m`, `lognormal:4k`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = |n: usize| match n {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}m", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}k", n >> 10),
            n => n.to_string(),
        };
        match self {
            SizeDist::Fixed(n) => write!(f, "{}", size(*n)),
            SizeDist::LogNormal(n) => write!(f, "lognormal:{}", size(*n)),
        }
    }
}

impl std::str::FromStr for SizeDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, size) = match s.split_once(':') {
            Some((k, v)) => (k, v),
            None => ("fixed", s),
        };
        let lower = size.to_ascii_lowercase();
        let (num, mult) = match lower.chars().last() {
            Some('k') => (&lower[..lower.len() - 1], 1024),
            Some('m') => (&lower[..lower.len() - 1], 1024 * 1024),
            _ => (lower.as_str(), 1),
        };
        let n: usize = num.parse().map_err(|_| format!("size {size:?}: expected e.g. 4k, 1m, 512"))?;
        let n = n * mult;
        match kind {
            "fixed" => Ok(SizeDist::Fixed(n)),
            "lognormal" => Ok(SizeDist::LogNormal(n)),
            _ => Err(format!("size distribution {kind:?}: expected fixed or lognormal")),
        }
    }
}

/// xorshift64*: deterministic, fast, good enough for corpus shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const WORDS: &[&str] = &[
    "the",
    "quarterly",
    "report",
    "is",
    "attached",
    "please",
    "review",
    "numbers",
    "by",
    "friday",
    "and",
    "send",
    "comments",
    "to",
    "team",
    "meeting",
    "agenda",
    "budget",
    "forecast",
    "update",
    "thanks",
    "regards",
];

/// A deterministic mboxrd archive of `count` messages: Received chain, From/To/Cc/Subject/Date/
/// Message-ID/MIME headers, text bodies with a few `>From ` lines, optional base64
/// attachments (every 7th message when `attachments`).
pub fn generate(count: usize, sizes: SizeDist, seed: u64, attachments: bool) -> Vec<u8> {
    let mut rng = Rng(seed.max(1));
    let mut out = Vec::with_capacity(count * 4500);
    for i in 0..count {
        let target = match sizes {
            SizeDist::Fixed(n) => n,
            SizeDist::LogNormal(median) => {
                // Box-Muller.
                let z = (-2.0 * rng.unit().max(1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.unit()).cos();
                ((median as f64) * z.exp()).clamp(300.0, median as f64 * 64.0) as usize
            }
        };
        let start = out.len();
        out.extend_from_slice(format!("From sender{i}@example.com Sat Nov 21 10:00:00 2026\n").as_bytes());
        let header = format!(
            "Received: from relay{r}.example.net (relay{r}.example.net [192.0.2.{r}])\n\tby mx.example.com with ESMTPS id {i:08X}\n\tfor <team@example.org>; Sat, 21 Nov 2026 10:00:00 +0000\n\
             Received: from client.example.com ([198.51.100.7])\n\tby relay{r}.example.net; Sat, 21 Nov 2026 09:59:58 +0000\n\
             From: Sender {i} <sender{i}@example.com>\nTo: Team <team@example.org>\nCc: archive@example.org\n\
             Subject: Quarterly report {i}, please review\nDate: Sat, 21 Nov 2026 10:00:00 +0000\n\
             Message-ID: <{i}.{s:x}@example.com>\nMIME-Version: 1.0\n",
            r = rng.next() % 200 + 1,
            s = rng.next()
        );
        out.extend_from_slice(header.as_bytes());
        let attach = attachments && i % 7 == 3;
        if attach {
            out.extend_from_slice(
                b"Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain; charset=utf-8\n\n",
            );
        } else {
            out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\n\n");
        }
        let body_target = start + target;
        let text_end = if attach { start + (target / 3).max(out.len() - start + 200) } else { body_target };
        while out.len() < text_end {
            if rng.next().is_multiple_of(50) {
                out.extend_from_slice(b">From the quoted line\n");
                continue;
            }
            let n = 6 + (rng.next() % 8) as usize;
            for w in 0..n {
                if w > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
            }
            out.push(b'\n');
            if rng.next().is_multiple_of(9) {
                out.push(b'\n');
            }
        }
        if attach {
            out.extend_from_slice(
                b"\n--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n",
            );
            let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            while out.len() < body_target {
                for _ in 0..76 {
                    out.push(b64[(rng.next() % 64) as usize]);
                }
                out.push(b'\n');
            }
            out.extend_from_slice(b"--b1--\n");
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::mbox::{self, MboxFormat};

    #[test]
    fn corpus_is_deterministic_and_splits() {
        let a = generate(50, SizeDist::LogNormal(4096), 7, true);
        assert_eq!(a, generate(50, SizeDist::LogNormal(4096), 7, true));
        assert_ne!(a, generate(50, SizeDist::LogNormal(4096), 8, true));
        assert_eq!(mbox::Splitter::new(&a, MboxFormat::Mboxrd).count(), 50);
        let f = generate(20, SizeDist::Fixed(10_000), 1, false);
        let sizes: Vec<usize> =
            mbox::Splitter::new(&f, MboxFormat::Mboxrd).map(|e| e.data.end - e.from_line.start).collect();
        assert!(sizes.iter().all(|&s| (10_000..10_200).contains(&s)), "{sizes:?}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("4k".parse::<SizeDist>().unwrap(), SizeDist::Fixed(4096));
        assert_eq!("lognormal:4k".parse::<SizeDist>().unwrap(), SizeDist::LogNormal(4096));
        assert_eq!("1m".parse::<SizeDist>().unwrap(), SizeDist::Fixed(1 << 20));
        assert!("big".parse::<SizeDist>().is_err());
    }
}
