//! A map keyed by stream name with a cheap hash: the runner and the targets look a stream up
//! once per record, where SipHash showed up in profiles (about 3% of a load's CPU). Stream
//! names come from the tap's own messages and are few, so hash flooding is not a concern.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` from stream name to `V`, hashed with [`NameHasher`].
pub type StreamMap<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// FxHash (rustc's hasher): a multiply and rotate per 8 bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct NameHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differing_anywhere_are_told_apart() {
        let mut m = StreamMap::default();
        let names = [
            "orders",
            "orders2",
            "orderz",
            "",
            "a",
            "public-orders",
            "ordersorders",
        ];
        for (i, n) in names.iter().enumerate() {
            m.insert((*n).to_owned(), i);
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(m.get(*n), Some(&i));
        }
        assert_eq!(m.get("order"), None);
    }
}
