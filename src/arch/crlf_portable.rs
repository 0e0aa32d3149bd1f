//! Word-at-a-time line-end kernels for any CPU: the fallback of [`super`]'s AVX2 kernels, and
//! their reference in tests. Public only to the fuzz targets (feature `fuzzing`).

const LFS: u64 = 0x0a0a_0a0a_0a0a_0a0a;
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Flags octets of `w` that equal LF in their high bit. The lowest flag is always right;
/// flags above a true one can be false (the borrow of the subtraction), so only the lowest
/// is used.
#[inline]
fn lf_flags(w: u64) -> u64 {
    let t = w ^ LFS;
    t.wrapping_sub(ONES) & !t & HIGH
}

/// See [`super::has_bare_lf`]. A branch-free pass over fixed-size chunks that the compiler
/// vectorizes with the baseline SIMD of the target.
pub fn has_bare_lf(b: &[u8], before: u8) -> bool {
    if b.first() == Some(&b'\n') && before != b'\r' {
        return true;
    }
    const CHUNK: usize = 256;
    let mut start = 1;
    while start < b.len() {
        let end = (start + CHUNK).min(b.len());
        let cur = &b[start..end];
        let prev = &b[start - 1..end - 1];
        let mut acc = 0u8;
        for (c, p) in cur.iter().zip(prev) {
            acc |= u8::from(*c == b'\n') & u8::from(*p != b'\r');
        }
        if acc != 0 {
            return true;
        }
        start = end;
    }
    false
}

/// See [`super::relaxed_event`]: one octet at a time.
pub fn relaxed_event(b: &[u8], from: usize, bare: bool) -> Option<usize> {
    (from..b.len()).find(|&i| match b[i] {
        b'\t' => true,
        b' ' => matches!(b.get(i + 1), None | Some(b' ' | b'\r' | b'\n')),
        b'\n' => bare,
        _ => false,
    })
}

/// See [`super::to_crlf_relaxed`]: the octets relaxed rewriting may touch, found one octet at
/// a time; [`to_crlf`] of the text between them, and CRLF for a single space that ends an LF
/// line.
pub fn to_crlf_relaxed(input: &[u8], before: u8, out: &mut [u8]) -> (usize, usize) {
    // input[from..] is not written yet.
    let (mut from, mut o) = (0, 0);
    loop {
        let prev = if from == 0 { before } else { input[from - 1] };
        let hit = (from..input.len()).find(|&i| {
            input[i] == b'\t'
                || (input[i] == b' ' && matches!(input.get(i + 1), None | Some(b' ' | b'\t' | b'\r' | b'\n')))
        });
        let Some(at) = hit else {
            return (input.len(), o + to_crlf(&input[from..], prev, &mut out[o..]));
        };
        o += to_crlf(&input[from..at], prev, &mut out[o..]);
        let before_space = if at == 0 { before } else { input[at - 1] };
        if input[at] != b' ' || input.get(at + 1) != Some(&b'\n') || matches!(before_space, b' ' | b'\t') {
            return (at, o);
        }
        out[o..o + 2].copy_from_slice(b"\r\n");
        o += 2;
        from = at + 2;
    }
}

/// Writes the line end for an LF at output position `o` whose preceding octet is
/// `before`: CRLF, or just LF when `before` is the CR. Returns the position after it.
#[inline]
pub(super) fn put_line_end(out: &mut [u8], mut o: usize, before: u8) -> usize {
    if before != b'\r' {
        out[o] = b'\r';
        o += 1;
    }
    out[o] = b'\n';
    o + 1
}

/// See [`super::to_crlf`] (the caller checks the output size). Eight-octet words are
/// copied whole, and the cursor then moves by as much as was meant.
pub fn to_crlf(input: &[u8], before: u8, out: &mut [u8]) -> usize {
    let mut i = 0;
    let mut o = 0;
    let mut prev = before;
    while i + 8 <= input.len() {
        let word: [u8; 8] = input[i..i + 8].try_into().expect("eight octets");
        out[o..o + 8].copy_from_slice(&word);
        let lf = lf_flags(u64::from_le_bytes(word));
        if lf == 0 {
            i += 8;
            o += 8;
            prev = word[7];
            continue;
        }
        let k = (lf.trailing_zeros() / 8) as usize;
        o = put_line_end(out, o + k, if k > 0 { word[k - 1] } else { prev });
        i += k + 1;
        prev = b'\n';
    }
    for &b in &input[i..] {
        if b == b'\n' && prev != b'\r' {
            out[o] = b'\r';
            o += 1;
        }
        out[o] = b;
        o += 1;
        prev = b;
    }
    o
}
