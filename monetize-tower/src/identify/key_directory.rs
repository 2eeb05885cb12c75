//! A directory of API keys that stores only their SHA-256 digests.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use monetize_core::CustomerId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Error;

/// The SHA-256 digest of an API key: the only form in which a [`KeyDirectory`] keeps keys.
///
/// Store digests (for example as the hex from [`KeyDigest::to_hex`]) in your database or
/// configuration, never the keys. Its `Debug` shows only the first four bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Hashes a key.
    pub fn of(key: impl AsRef<[u8]>) -> Self {
        Self(Sha256::digest(key.as_ref()).into())
    }

    /// Parses a digest written as 64 hexadecimal characters.
    pub fn from_hex(hex_digest: &str) -> Result<Self, Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut out).map_err(|_| Error::InvalidDigest)?;
        Ok(Self(out))
    }

    /// The digest as 64 lowercase hexadecimal characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn prefix(&self) -> u64 {
        self.words()[0]
    }

    fn words(&self) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (i, chunk) in self.0.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w[i] = u64::from_le_bytes(b);
        }
        w
    }
}

impl From<[u8; 32]> for KeyDigest {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({}…)", hex::encode(&self.0[..4]))
    }
}

/// A hasher for keys that are already uniformly distributed (a digest prefix).
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Entry {
    digest: KeyDigest,
    /// The digest as words, for the constant-time comparison.
    words: [u64; 4],
    customer: CustomerId,
}

#[derive(Default)]
struct Table {
    /// By the first 8 bytes of the digest; the full digest is compared in constant time.
    by_prefix: HashMap<u64, Vec<Entry>, BuildHasherDefault<PrefixHasher>>,
    len: usize,
    /// Bumped by every change, so that cached verifications of an older table are ignored.
    generation: u64,
}

impl Table {
    fn find(&self, digest: &KeyDigest) -> Option<&CustomerId> {
        let words = digest.words();
        let mut found = None;
        for e in self.by_prefix.get(&words[0])? {
            if bool::from(e.words[..].ct_eq(&words[..])) {
                found = Some(&e.customer);
            }
        }
        found
    }

    fn copy(&self) -> Table {
        Table {
            by_prefix: self
                .by_prefix
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .iter()
                        .map(|e| Entry {
                            digest: e.digest,
                            words: e.words,
                            customer: e.customer.clone(),
                        })
                        .collect();
                    (*k, v)
                })
                .collect(),
            len: self.len,
            generation: self.generation + 1,
        }
    }

    fn insert(&mut self, digest: KeyDigest, customer: CustomerId) -> Option<CustomerId> {
        let list = self.by_prefix.entry(digest.prefix()).or_default();
        if let Some(e) = list.iter_mut().find(|e| e.digest == digest) {
            return Some(std::mem::replace(&mut e.customer, customer));
        }
        list.push(Entry {
            digest,
            words: digest.words(),
            customer,
        });
        self.len += 1;
        None
    }

    fn remove(&mut self, digest: &KeyDigest) -> Option<CustomerId> {
        let prefix = digest.prefix();
        let list = self.by_prefix.get_mut(&prefix)?;
        let pos = list.iter().position(|e| e.digest == *digest)?;
        let e = list.swap_remove(pos);
        if list.is_empty() {
            self.by_prefix.remove(&prefix);
        }
        self.len -= 1;
        Some(e.customer)
    }
}

/// API keys (by their SHA-256 digest) and the customer each belongs to.
///
/// Lookups are lock-free (one atomic load of the current table, one SHA-256 of the key
/// sent, one map read by digest prefix and a constant-time comparison of the full digest).
/// Changes copy the table and swap it in atomically, so they suit provisioning and
/// rotation, not per-request writes. Clones share the same directory: keep one to add and
/// revoke keys while the layer serves.
///
/// The directory never stores or prints a key; its `Debug` shows only the number of keys.
///
/// ```
/// use monetize_core::CustomerId;
/// use monetize_tower::identify::{KeyDigest, KeyDirectory};
///
/// let keys = KeyDirectory::new();
/// keys.insert("sk_live_123", CustomerId::new("acme").unwrap());
/// // Or from a digest stored in your database:
/// let digest = KeyDigest::of("sk_live_456").to_hex();
/// keys.insert_digest(KeyDigest::from_hex(&digest).unwrap(), CustomerId::new("globex").unwrap());
///
/// assert_eq!(keys.lookup("sk_live_123").unwrap().as_str(), "acme");
/// assert_eq!(keys.lookup("sk_live_456").unwrap().as_str(), "globex");
/// assert!(keys.lookup("sk_live_789").is_none());
/// ```
#[derive(Clone, Default)]
pub struct KeyDirectory {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    table: ArcSwap<Table>,
    cache: Option<VerifiedCache>,
}

/// A key verified against a table generation, found again by its MAC.
struct Verified {
    mac: [u64; 2],
    generation: u64,
    customer: CustomerId,
}

/// Keys already verified, by a 128-bit MAC (two SipHash-2-4 with secret random keys drawn
/// when the directory is made): a hit costs two SipHash runs instead of one SHA-256.
/// Holds neither keys nor anything that helps recover one; only keys that verified are
/// cached, so unknown keys cannot fill it. Each key may sit in one of two slots; keys
/// that find both taken evict one (correct, only slower).
struct VerifiedCache {
    keys: [u64; 4],
    slots: Box<[ArcSwapOption<Verified>]>,
    mask: usize,
}

impl VerifiedCache {
    fn new(slots: usize) -> Self {
        let n = slots.clamp(16, 1 << 20).next_power_of_two();
        let seed = RandomState::new();
        let keys = [0u64, 1, 2, 3].map(|i| seed.hash_one(i ^ 0x6d6f_6e65_7469_7a65));
        Self {
            keys,
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            mask: n - 1,
        }
    }

    #[inline]
    fn mac(&self, key: &[u8]) -> [u64; 2] {
        #[allow(deprecated)] // SipHash-2-4 with our own keys; std has no other keyed MAC.
        let (mut a, mut b) = (
            std::hash::SipHasher::new_with_keys(self.keys[0], self.keys[1]),
            std::hash::SipHasher::new_with_keys(self.keys[2], self.keys[3]),
        );
        a.write(key);
        b.write(key);
        [a.finish(), b.finish()]
    }

    fn lookup(&self, table: &Table, key: &[u8]) -> Option<CustomerId> {
        let mac = self.mac(key);
        let gen_ = table.generation;
        let two = [mac[0] as usize & self.mask, mac[1] as usize & self.mask];
        // Whether each of the key's two slots is free (empty or from an older table).
        let mut free = [false; 2];
        for (i, pos) in two.iter().enumerate() {
            match &*self.slots[*pos].load() {
                Some(v) if v.generation == gen_ => {
                    if v.mac == mac {
                        return Some(v.customer.clone());
                    }
                }
                _ => free[i] = true,
            }
        }
        let customer = table.find(&KeyDigest::of(key))?.clone();
        // Prefer a free slot; else evict one of the two, picked by the MAC.
        let pos = match free {
            [true, _] => two[0],
            [false, true] => two[1],
            _ => two[(mac[0] >> 63) as usize],
        };
        self.slots[pos].store(Some(Arc::new(Verified {
            mac,
            generation: gen_,
            customer: customer.clone(),
        })));
        Some(customer)
    }
}

impl KeyDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty directory that also remembers keys it has verified, in `slots` slots
    /// (rounded up to a power of two; give about twice the number of keys in use).
    ///
    /// Without it every lookup computes the SHA-256 of the key sent (about 65 ns with the
    /// CPU's SHA extensions, a few thousand instructions without). With it, a key seen
    /// before costs two SipHash-2-4 runs and an atomic load. The cache holds, per slot, a
    /// 128-bit MAC of a verified key under secret keys drawn at start-up and the customer:
    /// no key, and nothing that helps recover one beyond what the stored digests already
    /// allow. Any change to the directory invalidates it.
    pub fn with_verified_cache(slots: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                table: ArcSwap::default(),
                cache: Some(VerifiedCache::new(slots)),
            }),
        }
    }

    /// Adds (or re-assigns) a key, hashing it first. Returns the customer it belonged to.
    pub fn insert(&self, key: impl AsRef<[u8]>, customer: CustomerId) -> Option<CustomerId> {
        self.insert_digest(KeyDigest::of(key), customer)
    }

    /// Adds (or re-assigns) a key by its digest. Returns the customer it belonged to.
    pub fn insert_digest(&self, digest: KeyDigest, customer: CustomerId) -> Option<CustomerId> {
        let mut previous = None;
        self.inner.table.rcu(|t| {
            let mut t = t.copy();
            previous = t.insert(digest, customer.clone());
            t
        });
        previous
    }

    /// Adds many keys by digest in one change (one table copy, rather than one per key).
    pub fn extend_digests(&self, keys: impl IntoIterator<Item = (KeyDigest, CustomerId)>) {
        let keys: Vec<(KeyDigest, CustomerId)> = keys.into_iter().collect();
        self.inner.table.rcu(|t| {
            let mut t = t.copy();
            for (d, c) in &keys {
                t.insert(*d, c.clone());
            }
            t
        });
    }

    /// Revokes a key. Returns the customer it belonged to.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Option<CustomerId> {
        self.remove_digest(&KeyDigest::of(key))
    }

    /// Revokes a key by its digest. Returns the customer it belonged to.
    pub fn remove_digest(&self, digest: &KeyDigest) -> Option<CustomerId> {
        let mut previous = None;
        self.inner.table.rcu(|t| {
            let mut t = t.copy();
            previous = t.remove(digest);
            t
        });
        previous
    }

    /// Revokes every key of a customer. Returns how many were revoked.
    pub fn remove_customer(&self, customer: &str) -> usize {
        let mut removed = 0;
        self.inner.table.rcu(|t| {
            let mut t = t.copy();
            removed = 0;
            t.by_prefix.retain(|_, list| {
                let before = list.len();
                list.retain(|e| e.customer.as_str() != customer);
                removed += before - list.len();
                !list.is_empty()
            });
            t.len -= removed;
            t
        });
        removed
    }

    /// The customer a key belongs to.
    pub fn lookup(&self, key: impl AsRef<[u8]>) -> Option<CustomerId> {
        let key = key.as_ref();
        let table = self.inner.table.load();
        match &self.inner.cache {
            Some(cache) => cache.lookup(&table, key),
            None => table.find(&KeyDigest::of(key)).cloned(),
        }
    }

    /// The customer a key digest belongs to.
    pub fn lookup_digest(&self, digest: &KeyDigest) -> Option<CustomerId> {
        self.inner.table.load().find(digest).cloned()
    }

    /// How many keys are known.
    pub fn len(&self) -> usize {
        self.inner.table.load().len
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDirectory")
            .field("keys", &self.len())
            .field(
                "verified_cache",
                &self.inner.cache.as_ref().map(|c| c.slots.len()),
            )
            .finish()
    }
}

impl<K: AsRef<[u8]>> FromIterator<(K, CustomerId)> for KeyDirectory {
    fn from_iter<T: IntoIterator<Item = (K, CustomerId)>>(iter: T) -> Self {
        let mut t = Table::default();
        for (k, c) in iter {
            t.insert(KeyDigest::of(k), c);
        }
        Self {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(t),
                cache: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CustomerId {
        CustomerId::new(s).unwrap()
    }

    #[test]
    fn insert_lookup_rotate_revoke() {
        let d = KeyDirectory::new();
        assert!(d.is_empty());
        assert_eq!(d.insert("k1", id("a")), None);
        assert_eq!(d.insert("k2", id("a")), None);
        assert_eq!(d.insert("k3", id("b")), None);
        assert_eq!(d.len(), 3);
        assert_eq!(d.lookup("k1"), Some(id("a")));
        assert_eq!(d.lookup("k4"), None);
        // Re-assigning a key returns the old owner.
        assert_eq!(d.insert("k3", id("c")), Some(id("b")));
        assert_eq!(d.len(), 3);
        assert_eq!(d.remove("k1"), Some(id("a")));
        assert_eq!(d.lookup("k1"), None);
        assert_eq!(d.remove_customer("a"), 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d.lookup("k3"), Some(id("c")));
    }

    #[test]
    fn digests_round_trip_and_never_show_keys() {
        let dg = KeyDigest::of("secret-key");
        assert_eq!(KeyDigest::from_hex(&dg.to_hex()).unwrap(), dg);
        assert!(KeyDigest::from_hex("zz").is_err());
        let d: KeyDirectory = [("secret-key", id("a"))].into_iter().collect();
        let shown = format!("{d:?} {dg:?}");
        assert!(!shown.contains("secret-key"), "{shown}");
        assert!(!shown.contains(&dg.to_hex()), "{shown}");
        assert_eq!(d.lookup_digest(&dg), Some(id("a")));
    }

    #[test]
    fn verified_cache_follows_changes() {
        let d = KeyDirectory::with_verified_cache(4);
        d.insert("k1", id("a"));
        d.insert("k2", id("b"));
        for _ in 0..3 {
            assert_eq!(d.lookup("k1"), Some(id("a")));
            assert_eq!(d.lookup("k2"), Some(id("b")));
            assert_eq!(d.lookup("k3"), None);
        }
        // Re-assigned and revoked keys are not served from the cache.
        d.insert("k1", id("c"));
        assert_eq!(d.lookup("k1"), Some(id("c")));
        d.remove("k2");
        assert_eq!(d.lookup("k2"), None);
        // Many keys through few slots: evictions stay correct.
        let many = KeyDirectory::with_verified_cache(16);
        many.extend_digests(
            (0..200).map(|i| (KeyDigest::of(format!("key{i}")), id(&format!("c{i}")))),
        );
        for round in 0..2 {
            for i in 0..200 {
                assert_eq!(
                    many.lookup(format!("key{i}")),
                    Some(id(&format!("c{i}"))),
                    "{round}"
                );
            }
        }
        assert!(!format!("{d:?}").contains("k1"));
    }

    #[test]
    fn entries_sharing_a_prefix_are_told_apart() {
        let mut t = Table::default();
        let mut a = [7u8; 32];
        let mut b = [7u8; 32];
        a[31] = 1;
        b[31] = 2;
        t.insert(KeyDigest(a), id("a"));
        t.insert(KeyDigest(b), id("b"));
        assert_eq!(t.find(&KeyDigest(a)), Some(&id("a")));
        assert_eq!(t.find(&KeyDigest(b)), Some(&id("b")));
        assert_eq!(t.find(&KeyDigest([7u8; 32])), None);
    }
}
