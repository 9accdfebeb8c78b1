//! Classifying 64 bytes at a time into bitmasks (bit `k` describes byte `k`), for the
//! framer's scanner and the structural skip.
//!
//! Everything here is portable safe code, written so that LLVM vectorizes it. `core::arch`
//! intrinsics are out of reach: even SSE2, which every x86_64 target has, may only be called
//! from a function marked `#[target_feature(enable = "sse2")]`, and calling that one needs
//! `unsafe`, which `forbid(unsafe_code)` rules out. LLVM does not turn a byte loop that
//! builds a bitmask into `pmovmskb` either, but it does turn "sum these 8 bytes" into
//! `psadbw`: so each class is computed as "byte `i` of every 8 is `1 << i` when it matches,
//! else 0", summed per 8 bytes. On x86_64 that is `pcmpeqb`, `pand`, `psadbw` per 8 bytes;
//! on other targets it is whatever LLVM makes of the same code, and correct either way.
//!
//! The other building blocks are the ones simdjson's stage 1 uses: odd-length backslash runs
//! for escapes (carried across blocks) and a prefix XOR of the unescaped quotes for the
//! in-string mask.

/// Bytes per block.
pub(super) const BLOCK: usize = 64;

/// The classes every block needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Masks {
    /// `"`
    pub quote: u64,
    /// `{`, `[`, `}` and `]` (opening ones have bit 1 set: 0x7B, 0x5B; closing ones do not:
    /// 0x7D, 0x5D).
    pub bracket: u64,
    /// Whether the block has a backslash or a control character (a byte below 0x20,
    /// including `\t`, `\r`, `\n`) anywhere.
    pub special: bool,
}

/// The bit weight of each byte within its group of 8. Read through `black_box` so that LLVM
/// does not see the constants: when it does, it recognises the sum as a bitmask and goes
/// back to a scalar loop.
static WEIGHTS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/// The mask of the bytes for which `class` holds.
///
/// The shape of this code matters for what LLVM makes of it: with an indexed outer loop, or a
/// different spelling of the predicates, some classes come out as scalar code 4 to 6 times
/// longer (the benchmark shows it). The plain inner loops also keep unoptimised test builds
/// reasonably fast.
#[inline(always)]
fn bits(block: &[u8; BLOCK], weights: &[u8; 16], class: impl Fn(u8) -> bool) -> u64 {
    let mut mask = 0;
    for (k, chunk) in block.chunks_exact(16).enumerate() {
        let mut selected = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            selected[i] = u8::from(class(chunk[i])).wrapping_neg() & weights[i];
            i += 1;
        }
        let (mut low, mut high) = (0u32, 0u32);
        let mut i = 0;
        while i < 8 {
            low += u32::from(selected[i]);
            i += 1;
        }
        while i < 16 {
            high += u32::from(selected[i]);
            i += 1;
        }
        mask |= u64::from(low | (high << 8)) << (16 * k);
    }
    mask
}

// One function per class, kept out of line: inlined together, LLVM vectorizes them worse.
#[inline(never)]
fn quotes(block: &[u8; BLOCK], weights: &[u8; 16]) -> u64 {
    bits(block, weights, |b| b == b'"')
}

#[inline(never)]
fn brackets(block: &[u8; BLOCK], weights: &[u8; 16]) -> u64 {
    // `{` 0x7B and `[` 0x5B, `}` 0x7D and `]` 0x5D differ only in bit 0x20.
    bits(block, weights, |b| matches!(b | 0x20, b'{' | b'}'))
}

#[inline(never)]
fn backslashes(block: &[u8; BLOCK], weights: &[u8; 16]) -> u64 {
    bits(block, weights, |b| b == b'\\')
}

// (`controls` and `backslashes` in one function vectorizes badly.)
#[inline(never)]
fn controls(block: &[u8; BLOCK], weights: &[u8; 16]) -> u64 {
    bits(block, weights, |b| b < 0x20)
}

#[inline(never)]
fn newlines(block: &[u8; BLOCK], weights: &[u8; 16]) -> u64 {
    bits(block, weights, |b| b == b'\n')
}

/// Whether the block has a backslash or a control character.
#[inline(always)]
fn any_special(block: &[u8; BLOCK]) -> bool {
    block
        .iter()
        .fold(0, |acc, &b| acc | u8::from((b == b'\\') | (b < 0x20)))
        != 0
}

/// Classifies one block.
#[inline(always)]
pub(super) fn classify(block: &[u8; BLOCK]) -> Masks {
    let weights = core::hint::black_box(&WEIGHTS);
    Masks {
        quote: quotes(block, weights),
        bracket: brackets(block, weights),
        special: any_special(block),
    }
}

/// The backslashes and the control characters of a block.
#[inline(always)]
pub(super) fn backslashes_and_controls(block: &[u8; BLOCK]) -> (u64, u64) {
    let weights = core::hint::black_box(&WEIGHTS);
    (backslashes(block, weights), controls(block, weights))
}

/// Whether `bytes` has a backslash or a control character (eight at a time, for a part of a
/// block where [`Masks::special`] is too coarse).
#[inline]
pub(super) fn special_in(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w);
        let t = x ^ (ONES * u64::from(b'\\'));
        // A zero byte in `t` (a backslash) or a byte below 0x20 in `x`, possibly also flagging
        // bytes after one of those (borrows), which does not change the answer.
        if ((t.wrapping_sub(ONES) & !t) | (x.wrapping_sub(ONES * 0x20) & !x)) & HIGH != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'\\')
}

/// The newlines of a block (needed only when it has control characters).
#[inline(always)]
pub(super) fn newline_mask(block: &[u8; BLOCK]) -> u64 {
    newlines(block, core::hint::black_box(&WEIGHTS))
}

/// Bit `k` set when an odd number of the bits `0..=k` of `x` are set.
#[inline(always)]
pub(super) fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

const EVEN_BITS: u64 = 0x5555_5555_5555_5555;

/// The bytes escaped by a backslash: those right after an odd-length run of backslashes,
/// where a run may continue one carried in from the previous block (`carry`: the first byte
/// is escaped). Only `n` bytes are valid (`backslash` must be zero beyond them); returns the
/// escaped mask (limited to `n` bytes) and whether the byte after them is escaped.
#[inline(always)]
pub(super) fn escapes(backslash: u64, carry: bool, n: u32) -> (u64, bool) {
    let carry = u64::from(carry);
    let backslash = backslash & !carry;
    let follows_escape = (backslash << 1) | carry;
    let odd_starts = backslash & !EVEN_BITS & !follows_escape;
    let (even_starts, overflow) = odd_starts.overflowing_add(backslash);
    let escaped = (EVEN_BITS ^ (even_starts << 1)) & follows_escape;
    if n == 64 {
        (escaped, overflow)
    } else {
        (escaped & !(u64::MAX << n), (escaped >> n) & 1 != 0)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The byte-at-a-time definition of [`classify`], [`backslashes_and_controls`] and
    /// [`newline_mask`].
    fn classify_bytes(block: &[u8; BLOCK]) -> (Masks, (u64, u64), u64) {
        let mut m = Masks::default();
        let (mut backslash, mut control, mut newline) = (0, 0, 0);
        for (k, &b) in block.iter().enumerate() {
            let bit = 1u64 << k;
            match b {
                b'"' => m.quote |= bit,
                b'{' | b'[' | b'}' | b']' => m.bracket |= bit,
                b'\\' => backslash |= bit,
                _ => {}
            }
            if b < 0x20 {
                control |= bit;
            }
            if b == b'\n' {
                newline |= bit;
            }
        }
        m.special = backslash | control != 0;
        (m, (backslash, control), newline)
    }

    fn classify_all(block: &[u8; BLOCK]) -> (Masks, (u64, u64), u64) {
        (
            classify(block),
            backslashes_and_controls(block),
            newline_mask(block),
        )
    }

    /// The byte-at-a-time definition of [`escapes`].
    fn escapes_bytes(backslash: u64, carry: bool, n: u32) -> (u64, bool) {
        let mut escaped = 0;
        let mut next = carry;
        for k in 0..n {
            if next {
                escaped |= 1 << k;
                next = false;
            } else {
                next = backslash & (1 << k) != 0;
            }
        }
        (escaped, next)
    }

    #[test]
    fn every_byte_value_is_classified_exactly() {
        for b in 0..=255u8 {
            for pos in [0, 7, 8, 33, 63] {
                let mut block = [b'a'; BLOCK];
                block[pos] = b;
                assert_eq!(
                    classify_all(&block),
                    classify_bytes(&block),
                    "byte {b:#x} at {pos}"
                );
                for end in 0..=BLOCK {
                    let expected = block[..end].iter().any(|&b| b < 0x20 || b == b'\\');
                    assert_eq!(
                        special_in(&block[..end]),
                        expected,
                        "{b:#x} at {pos}, {end}"
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn classify_matches_the_byte_loop(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), prop::sample::select(b"\"\\{}[]\n\r\t x".to_vec())],
                BLOCK,
            )
        ) {
            let block: [u8; BLOCK] = bytes.try_into().unwrap();
            prop_assert_eq!(classify_all(&block), classify_bytes(&block));
            for end in [0, 1, 7, 8, 9, 31, 63, 64] {
                let expected = block[..end].iter().any(|&b| b < 0x20 || b == b'\\');
                prop_assert_eq!(special_in(&block[..end]), expected);
            }
        }

        #[test]
        fn escapes_match_the_byte_loop(backslash in any::<u64>(), dense in any::<u64>(), carry: bool, n in 1u32..=64) {
            // Mostly long runs of backslashes, which is where the carries are.
            let backslash = (backslash | dense) & (u64::MAX >> (64 - n));
            prop_assert_eq!(escapes(backslash, carry, n), escapes_bytes(backslash, carry, n));
        }

        #[test]
        fn prefix_xor_is_a_running_parity(x: u64) {
            let mut parity = false;
            let mut expected = 0;
            for k in 0..64 {
                parity ^= x & (1 << k) != 0;
                if parity {
                    expected |= 1 << k;
                }
            }
            prop_assert_eq!(prefix_xor(x), expected);
        }
    }
}
