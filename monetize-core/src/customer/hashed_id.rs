//! The live customer map's key: an id with its hash, computed once per lookup.
//!
//! A lookup hashes the id once (the registry's keyed hasher) and uses that hash for the
//! thread's cache, the admission stripe and the map: the map's hasher only passes the
//! stored hash through.

use std::hash::{Hash, Hasher};

use crate::id::CustomerId;

/// A stored key: the id and its hash.
#[derive(Clone, Debug)]
pub(crate) struct HashedId {
    pub(crate) hash: u64,
    pub(crate) id: CustomerId,
}

impl PartialEq for HashedId {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.id == other.id
    }
}

impl Eq for HashedId {}

impl Hash for HashedId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A lookup key: an id being resolved and its hash.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdQuery<'a> {
    pub(crate) hash: u64,
    pub(crate) id: &'a str,
}

impl Hash for IdQuery<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl papaya::Equivalent<HashedId> for IdQuery<'_> {
    fn equivalent(&self, key: &HashedId) -> bool {
        self.hash == key.hash && same_id(self.id, key.id.as_str())
    }
}

/// Byte equality of two ids.
#[inline]
pub(crate) fn same_id(a: &str, b: &str) -> bool {
    a == b
}

/// The map's hasher: the key's stored hash, as is (it is already a keyed hash).
pub(crate) type PassHash = nohash_hasher::BuildNoHashHasher<HashedId>;

// Keys hash with one `write_u64` of their stored hash, which is what `nohash_hasher`
// passes through.
impl nohash_hasher::IsEnabled for HashedId {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn same_id_is_byte_equality() {
        let base: String = (0..40u8).map(|i| char::from(b'a' + i % 26)).collect();
        for n in 0..=base.len() {
            let a = &base[..n];
            assert!(same_id(a, a));
            for i in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[i] ^= 1;
                let b = String::from_utf8(b).unwrap();
                assert!(!same_id(a, &b), "length {n}, byte {i}");
            }
            if n > 0 {
                assert!(!same_id(a, &base[..n - 1]));
            }
        }
    }

    #[test]
    fn a_query_finds_its_key_through_the_map() {
        let h = foldhash::fast::RandomState::default();
        let map = papaya::HashMap::builder()
            .hasher(PassHash::default())
            .build();
        let pinned = map.pin();
        for i in 0..1_000 {
            let id = format!("cus_{i:06}");
            let key = HashedId {
                hash: h.hash_one(id.as_str()),
                id: CustomerId::new(&id).unwrap(),
            };
            pinned.insert(key, i);
        }
        for i in 0..1_000 {
            let id = format!("cus_{i:06}");
            let q = IdQuery {
                hash: h.hash_one(id.as_str()),
                id: &id,
            };
            assert_eq!(pinned.get(&q), Some(&i));
        }
        let q = IdQuery {
            hash: h.hash_one("cus_999999"),
            id: "cus_999999",
        };
        assert_eq!(pinned.get(&q), None);
        // Same hash, another id: not a match.
        let q = IdQuery {
            hash: h.hash_one("cus_000001"),
            id: "cus_000002",
        };
        assert_eq!(pinned.get(&q), None);
    }
}
