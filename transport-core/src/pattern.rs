//! A payload pattern derived from a sequence number, for filling and verifying
//! test and benchmark frames without keeping a copy of what was sent.

const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn word(seq: u64, i: u64) -> u64 {
    (seq.wrapping_mul(K) ^ i).wrapping_mul(K) ^ seq
}

/// Fills `buf` with the pattern of frame `seq`.
pub fn fill(seq: u64, buf: &mut [u8]) {
    let mut chunks = buf.chunks_exact_mut(8);
    for (i, c) in (0u64..).zip(&mut chunks) {
        c.copy_from_slice(&word(seq, i).to_le_bytes());
    }
    let rem = chunks.into_remainder();
    let last = word(seq, u64::MAX).to_le_bytes();
    let n = rem.len();
    rem.copy_from_slice(&last[..n]);
}

/// True when `buf` holds exactly the pattern of frame `seq`.
pub fn check(seq: u64, buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(8);
    let mut ok = true;
    for (i, c) in (0u64..).zip(&mut chunks) {
        // Branch-free accumulation so the loop vectorizes.
        ok &= c == word(seq, i).to_le_bytes();
    }
    let rem = chunks.remainder();
    ok && rem == &word(seq, u64::MAX).to_le_bytes()[..rem.len()]
}

/// A new buffer of `len` bytes holding the pattern of frame `seq`.
pub fn make(seq: u64, len: usize) -> bytes::Bytes {
    let mut v = vec![0u8; len];
    fill(seq, &mut v);
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check() {
        for len in [0, 1, 7, 8, 9, 4096, 4099] {
            let b = make(42, len);
            assert!(check(42, &b));
            if len >= 8 {
                assert!(!check(43, &b));
            }
            if len > 0 {
                let mut c = b.to_vec();
                c[len / 2] ^= 1;
                assert!(!check(42, &c));
            }
        }
    }
}
