//! The byte-order permutation between the wire words and a value's big-endian bytes. Each
//! order is its own inverse, so reading and writing share it.

use crate::config::WordOrder;

/// The value's bytes, most significant first, from the wire words per `order`.
pub(super) fn ordered<const N: usize>(words: &[u16], order: WordOrder) -> [u8; N] {
    let mut wire = [0u8; N];
    for (i, w) in words.iter().take(N / 2).enumerate() {
        wire[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
    }
    match order {
        WordOrder::Abcd => wire,
        WordOrder::Dcba => {
            wire.reverse();
            wire
        }
        WordOrder::Badc => {
            for pair in wire.chunks_exact_mut(2) {
                pair.swap(0, 1);
            }
            wire
        }
        WordOrder::Cdab => {
            let mut out = [0u8; N];
            let n_words = N / 2;
            for i in 0..n_words {
                let src = n_words - 1 - i;
                out[2 * i..2 * i + 2].copy_from_slice(&wire[2 * src..2 * src + 2]);
            }
            out
        }
    }
}
