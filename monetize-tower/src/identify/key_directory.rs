//! A directory of API keys: SHA-256 digests as the stored form, and a keyed MAC index so
//! that a lookup does not compute a SHA-256.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use monetize_core::{CustomerId, CustomerToken};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::key_mac::{Mac, MacKey};
use crate::Error;

/// The SHA-256 digest of an API key: the form in which keys are stored and exchanged
/// with a [`KeyDirectory`].
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

/// A hasher for keys that are already uniformly distributed (a digest prefix, a MAC).
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

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type Uniform = BuildHasherDefault<PrefixHasher>;

/// No entry (end of a prefix chain).
const NONE: u32 = u32::MAX;

struct Entry {
    digest: KeyDigest,
    /// The digest as words, for the constant-time comparison.
    words: [u64; 4],
    /// The key's MAC, when the key itself was given (not only its digest).
    mac: Option<Mac>,
    customer: CustomerId,
    /// The next entry whose digest has the same first 8 bytes, or [`NONE`].
    next: u32,
}

/// One version of the directory; changes copy it and swap the copy in.
struct Table {
    entries: Vec<Entry>,
    /// The first entry by the first 8 bytes of the digest (then `Entry::next`).
    by_prefix: HashMap<u64, u32, Uniform>,
    /// Entries by the MAC of their key, for keys given as keys.
    by_mac: HashMap<Mac, u32, Uniform>,
    /// How many keys are known only by their digest.
    digest_only: usize,
    /// Digest-only keys verified against this table's contents, by MAC. Shared with the
    /// next table when a change only adds keys (entry indices stay valid); a fresh one
    /// when a key is revoked or changes customer, so that no verification outlives the
    /// mapping it checked.
    verified: Arc<Verified>,
}

impl Table {
    fn new(capacity: usize) -> Self {
        Table {
            entries: Vec::new(),
            by_prefix: HashMap::default(),
            by_mac: HashMap::default(),
            digest_only: 0,
            verified: Arc::new(Verified::with_capacity_and_hasher(
                capacity,
                Uniform::default(),
            )),
        }
    }

    /// The entry with this digest, comparing every entry that shares its prefix in
    /// constant time.
    fn find(&self, digest: &KeyDigest) -> Option<u32> {
        let words = digest.words();
        let mut i = *self.by_prefix.get(&words[0])?;
        let mut found = None;
        while i != NONE {
            let e = &self.entries[i as usize];
            if bool::from(e.words[..].ct_eq(&words[..])) {
                found = Some(i);
            }
            i = e.next;
        }
        found
    }

    fn customer(&self, i: u32) -> Option<&CustomerId> {
        self.entries.get(i as usize).map(|e| &e.customer)
    }

    fn copy(&self) -> Table {
        Table {
            entries: self
                .entries
                .iter()
                .map(|e| Entry {
                    digest: e.digest,
                    words: e.words,
                    mac: e.mac,
                    customer: e.customer.clone(),
                    next: e.next,
                })
                .collect(),
            by_prefix: self.by_prefix.clone(),
            by_mac: self.by_mac.clone(),
            digest_only: self.digest_only,
            verified: self.verified.clone(),
        }
    }

    /// Rebuilds the indexes after entries were removed (indices moved).
    fn reindex(&mut self) {
        self.by_prefix.clear();
        self.by_mac.clear();
        self.digest_only = 0;
        for (i, e) in self.entries.iter_mut().enumerate() {
            let i = i as u32;
            e.next = self.by_prefix.insert(e.digest.prefix(), i).unwrap_or(NONE);
            match e.mac {
                Some(m) => {
                    self.by_mac.insert(m, i);
                }
                None => self.digest_only += 1,
            }
        }
    }

    /// After a change: a fresh verified cache when `invalidate` (a key was revoked or
    /// changed customer), sized for the digest-only keys left (or `capacity`, the size the
    /// directory was made with); otherwise the cache is kept (it grows by itself).
    fn settle(&mut self, invalidate: bool, capacity: Option<usize>) {
        if invalidate {
            let want = capacity.unwrap_or(self.digest_only);
            self.verified = Arc::new(Verified::with_capacity_and_hasher(want, Uniform::default()));
        }
    }

    /// Adds or re-assigns a key; returns the previous customer, and whether the change
    /// invalidates verifications (the key changed customer).
    fn insert(
        &mut self,
        digest: KeyDigest,
        mac: Option<Mac>,
        customer: CustomerId,
    ) -> (Option<CustomerId>, bool) {
        if let Some(i) = self.find(&digest) {
            let e = &mut self.entries[i as usize];
            let moved = e.customer != customer;
            if e.mac.is_none()
                && let Some(m) = mac
            {
                e.mac = Some(m);
                self.by_mac.insert(m, i);
                self.digest_only -= 1;
            }
            return (Some(std::mem::replace(&mut e.customer, customer)), moved);
        }
        let i = u32::try_from(self.entries.len()).expect("fewer than 2^32 keys");
        match mac {
            Some(m) => {
                self.by_mac.insert(m, i);
            }
            None => self.digest_only += 1,
        }
        let next = self.by_prefix.insert(digest.prefix(), i).unwrap_or(NONE);
        self.entries.push(Entry {
            digest,
            words: digest.words(),
            mac,
            customer,
            next,
        });
        (None, false)
    }

    fn remove(&mut self, digest: &KeyDigest) -> Option<CustomerId> {
        let i = self.find(digest)?;
        let e = self.entries.swap_remove(i as usize);
        self.reindex();
        Some(e.customer)
    }

    fn remove_customer(&mut self, customer: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| e.customer.as_str() != customer);
        let removed = before - self.entries.len();
        if removed > 0 {
            self.reindex();
        }
        removed
    }
}

/// API keys and the customer each belongs to, stored as SHA-256 digests, found by a keyed
/// MAC.
///
/// # Cost
///
/// A lookup computes one 128-bit MAC of the key sent under a secret key drawn when the
/// directory is made (AES-CMAC from the `cmac` and `aes` crates, with the CPU's AES
/// instructions where it has them: three block encryptions for a 30-byte key) and reads
/// one map: no SHA-256, no lock, no allocation. In front of
/// [`MonetizeLayer`](crate::MonetizeLayer) a key a thread has seen twice skips even the
/// map: the thread remembers its customer under a token made of the MAC and the
/// directory's version (see [`Identify::key_directory`](super::Identify::key_directory)),
/// which every change to the directory changes. Keys given as keys ([`insert`](Self::insert),
/// [`extend`](Self::extend), `collect`) are in that map from the start. Keys given only as
/// digests ([`insert_digest`](Self::insert_digest), [`extend_digests`](Self::extend_digests),
/// for example from your database) are verified once: the first request with such a key
/// computes its SHA-256, compares it in constant time with the stored digests, and caches
/// the MAC in a lock-free map that never holds more entries than there are digest-only
/// keys (its starting size can be set with
/// [`with_verified_cache`](Self::with_verified_cache)); later requests with it cost the
/// MAC and the map read. Unknown keys always cost a SHA-256 and are
/// never cached.
///
/// Changes copy the table and swap it in atomically, so they suit provisioning and
/// rotation, not per-request writes. Revoking a key or moving it to another customer
/// invalidates every cached verification at once (each key is verified again on its next
/// request); adding keys invalidates nothing. Clones share the same directory: keep one to
/// add and revoke keys while the layer serves.
///
/// # Secrecy
///
/// The directory never stores or prints a key; its `Debug` shows only counts. What it
/// holds per key is the SHA-256 digest (the storage and import format) and, for keys it
/// was given or has verified, a 128-bit MAC of the key under a 128-bit secret drawn from
/// the operating system's random source, held only in this process's memory.
///
/// The MAC is at least as safe in memory as the digest next to it: whoever can read the
/// MACs can read the digests, and an unkeyed SHA-256 already lets them test guesses of a
/// key offline; the MAC adds no shortcut (AES-CMAC is a pseudo-random function:
/// without the secret their outputs say nothing about the key, and with it, testing a
/// guess is no cheaper than with SHA-256 — for keys of 128 random bits or more, neither
/// can be searched). Unlike a digest, a leaked MAC without the process's secret (a log line, a
/// copied table) cannot be used to test guesses at all, and the secret is never exported.
/// A forged match needs another key with the same 128-bit MAC: about 2^128 requests. The
/// map read by MAC is not constant-time, but the timing it could leak is about the MAC of
/// the key the client sent, which without the secret tells nothing about any stored key;
/// the first verification of a digest-only key compares full digests in constant time.
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
#[derive(Clone)]
pub struct KeyDirectory {
    inner: Arc<Inner>,
}

impl Default for KeyDirectory {
    fn default() -> Self {
        Self::make(None)
    }
}

/// The next directory's [`Inner::id`].
static NEXT_DIRECTORY: AtomicU64 = AtomicU64::new(0);

struct Inner {
    table: ArcSwap<Table>,
    /// Bumped after every swap of `table`: part of every [`CustomerToken`], so that no
    /// thread resolves a key from what it remembered of an older table.
    version: AtomicU64,
    /// This directory's number, unique in the process (tokens are salted with it: an
    /// address could be reused by a later directory).
    id: u64,
    key: MacKey,
    /// The verified cache capacity given to `with_verified_cache`; else it follows the
    /// number of digest-only keys.
    capacity: Option<usize>,
}

/// Digest-only keys already verified: MAC → entry, in a lock-free `papaya` map (reads take
/// no lock). Holds no keys. Only keys that verified are put in, and distinct keys have
/// distinct digests, so it never holds more entries than the table has digest-only keys:
/// unknown keys cannot fill it, and it needs no eviction.
type Verified = papaya::HashMap<Mac, u32, Uniform>;

impl KeyDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty directory whose cache of verified digest-only keys starts with room for
    /// `capacity` keys (it grows as needed, up to the number of digest-only keys). By
    /// default it is sized for the digest-only keys the directory holds. Keys given as
    /// keys do not need it.
    pub fn with_verified_cache(capacity: usize) -> Self {
        Self::make(Some(capacity))
    }

    fn make(capacity: Option<usize>) -> Self {
        let table = Table::new(capacity.unwrap_or(0));
        Self {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(table),
                version: AtomicU64::new(0),
                id: NEXT_DIRECTORY.fetch_add(1, Ordering::Relaxed),
                key: MacKey::random(),
                capacity,
            }),
        }
    }

    /// Applies a change to a copy of the table and swaps it in.
    fn change<T>(&self, mut f: impl FnMut(&mut Table) -> (T, bool)) -> T {
        let mut out = None;
        self.inner.table.rcu(|t| {
            let mut t = t.copy();
            let (r, invalidate) = f(&mut t);
            t.settle(invalidate, self.inner.capacity);
            out = Some(r);
            t
        });
        // After the swap: a reader that sees the new version loads the new table.
        self.inner.version.fetch_add(1, Ordering::Release);
        out.expect("rcu runs the change at least once")
    }

    /// Runs `f` on the current table (an `ArcSwap` load: no lock, no reference count
    /// on its fast path).
    #[inline]
    fn with_table<T>(&self, f: impl Fn(&Table) -> T) -> T {
        f(&self.inner.table.load())
    }

    /// Adds (or re-assigns) a key. Returns the customer it belonged to.
    pub fn insert(&self, key: impl AsRef<[u8]>, customer: CustomerId) -> Option<CustomerId> {
        let key = key.as_ref();
        let (digest, mac) = (KeyDigest::of(key), self.inner.key.mac(key));
        self.change(|t| t.insert(digest, Some(mac), customer.clone()))
    }

    /// Adds many keys in one change (one table copy, rather than one per key).
    pub fn extend<K: AsRef<[u8]>>(&self, keys: impl IntoIterator<Item = (K, CustomerId)>) {
        let keys: Vec<(KeyDigest, Mac, CustomerId)> = keys
            .into_iter()
            .map(|(k, c)| {
                let k = k.as_ref();
                (KeyDigest::of(k), self.inner.key.mac(k), c)
            })
            .collect();
        self.change(|t| {
            let mut invalidate = false;
            for (d, m, c) in &keys {
                invalidate |= t.insert(*d, Some(*m), c.clone()).1;
            }
            ((), invalidate)
        });
    }

    /// Adds (or re-assigns) a key by its digest. Returns the customer it belonged to.
    pub fn insert_digest(&self, digest: KeyDigest, customer: CustomerId) -> Option<CustomerId> {
        self.change(|t| t.insert(digest, None, customer.clone()))
    }

    /// Adds many keys by digest in one change (one table copy, rather than one per key).
    pub fn extend_digests(&self, keys: impl IntoIterator<Item = (KeyDigest, CustomerId)>) {
        let keys: Vec<(KeyDigest, CustomerId)> = keys.into_iter().collect();
        self.change(|t| {
            let mut invalidate = false;
            for (d, c) in &keys {
                invalidate |= t.insert(*d, None, c.clone()).1;
            }
            ((), invalidate)
        });
    }

    /// Revokes a key. Returns the customer it belonged to.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Option<CustomerId> {
        self.remove_digest(&KeyDigest::of(key))
    }

    /// Revokes a key by its digest. Returns the customer it belonged to.
    pub fn remove_digest(&self, digest: &KeyDigest) -> Option<CustomerId> {
        self.change(|t| {
            let removed = t.remove(digest);
            let invalidate = removed.is_some();
            (removed, invalidate)
        })
    }

    /// Revokes every key of a customer. Returns how many were revoked.
    pub fn remove_customer(&self, customer: &str) -> usize {
        self.change(|t| {
            let n = t.remove_customer(customer);
            (n, n > 0)
        })
    }

    /// The customer a key belongs to.
    #[inline]
    pub fn lookup(&self, key: impl AsRef<[u8]>) -> Option<CustomerId> {
        let key = key.as_ref();
        self.lookup_mac(key, self.inner.key.mac(key))
    }

    /// The token that names the customer of `key` while the directory stays as it is now
    /// (see [`Identify::key_directory`](super::Identify::key_directory)), and the key's
    /// MAC (for [`KeyDirectory::lookup_mac`]). The token is the MAC combined with this
    /// directory's number and version: every change to the directory changes every token,
    /// so that no thread resolves a revoked or re-assigned key from what it remembered.
    #[inline]
    pub(crate) fn token(&self, key: &[u8]) -> (CustomerToken, Mac) {
        let inner = &*self.inner;
        // Before the table is read (in `lookup_mac`): a token remembered from a lookup is
        // never older than the table the lookup read.
        let version = inner.version.load(Ordering::Acquire);
        let mac = inner.key.mac(key);
        let salt = (u128::from(inner.id) << 64) | u128::from(version);
        (CustomerToken::new(mac ^ salt), mac)
    }

    /// [`KeyDirectory::lookup`] of a key whose MAC is known.
    #[inline]
    pub(crate) fn lookup_mac(&self, key: &[u8], mac: Mac) -> Option<CustomerId> {
        self.with_table(|table| {
            // Each index is probed only when it holds something (a directory of digests
            // only has an empty `by_mac`; one of keys only never verifies).
            let by_key = if table.by_mac.is_empty() {
                None
            } else {
                table.by_mac.get(&mac).copied()
            };
            let found = match by_key {
                Some(i) => Some(i),
                None if table.digest_only > 0 => table.verified.pin().get(&mac).copied(),
                None => None,
            };
            match found.and_then(|i| table.customer(i)) {
                Some(c) => Some(c.clone()),
                None => Self::verify(table, key, mac),
            }
        })
    }

    /// A key neither given as a key nor verified yet: its SHA-256, compared in constant
    /// time with the stored digests; remembered by MAC when it verifies.
    #[cold]
    fn verify(table: &Table, key: &[u8], mac: Mac) -> Option<CustomerId> {
        let i = table.find(&KeyDigest::of(key))?;
        table.verified.pin().insert(mac, i);
        table.customer(i).cloned()
    }

    /// The customer a key digest belongs to.
    pub fn lookup_digest(&self, digest: &KeyDigest) -> Option<CustomerId> {
        let table = self.inner.table.load();
        table.find(digest).and_then(|i| table.customer(i)).cloned()
    }

    /// How many keys are known.
    pub fn len(&self) -> usize {
        self.inner.table.load().entries.len()
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
            .field("verified_cache", &self.inner.table.load().verified.len())
            .finish()
    }
}

impl<K: AsRef<[u8]>> FromIterator<(K, CustomerId)> for KeyDirectory {
    fn from_iter<T: IntoIterator<Item = (K, CustomerId)>>(iter: T) -> Self {
        let d = KeyDirectory::new();
        d.extend(iter);
        d
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
        assert_eq!(d.lookup("k3"), Some(id("c")));
        assert_eq!(d.remove("k1"), Some(id("a")));
        assert_eq!(d.lookup("k1"), None);
        assert_eq!(d.remove_customer("a"), 1);
        assert_eq!(d.lookup("k2"), None);
        assert_eq!(d.len(), 1);
        assert_eq!(d.lookup("k3"), Some(id("c")));
        // Removing by digest drops the key's MAC too.
        assert_eq!(d.remove_digest(&KeyDigest::of("k3")), Some(id("c")));
        assert_eq!(d.lookup("k3"), None);
        assert!(d.is_empty());
        let t = d.inner.table.load();
        assert!(t.by_mac.is_empty() && t.by_prefix.is_empty() && t.entries.is_empty());
    }

    #[test]
    fn rotation_keeps_the_old_key_until_revoked() {
        let d = KeyDirectory::new();
        d.insert("sk_old", id("acme"));
        assert_eq!(d.lookup("sk_old"), Some(id("acme")));
        // Rotate: the new key works at once, the old one until it is revoked.
        d.insert("sk_new", id("acme"));
        assert_eq!(d.lookup("sk_new"), Some(id("acme")));
        assert_eq!(d.lookup("sk_old"), Some(id("acme")));
        d.remove("sk_old");
        assert_eq!(d.lookup("sk_old"), None);
        assert_eq!(d.lookup("sk_new"), Some(id("acme")));
        // A key that differs in one byte, a prefix, an extension: unknown.
        for wrong in ["sk_nex", "sk_ne", "sk_new ", "SK_NEW", ""] {
            assert_eq!(d.lookup(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn digests_round_trip_and_never_show_keys() {
        let dg = KeyDigest::of("secret-key");
        assert_eq!(KeyDigest::from_hex(&dg.to_hex()).unwrap(), dg);
        assert!(KeyDigest::from_hex("zz").is_err());
        let d: KeyDirectory = [("secret-key", id("a"))].into_iter().collect();
        assert_eq!(d.lookup("secret-key"), Some(id("a")));
        let shown = format!("{d:?} {dg:?}");
        assert!(!shown.contains("secret-key"), "{shown}");
        assert!(!shown.contains(&dg.to_hex()), "{shown}");
        let mac = d.inner.key.mac(b"secret-key");
        assert!(!shown.contains(&format!("{mac:x}")), "{shown}");
        assert!(!shown.contains(&(mac as u64).to_string()), "{shown}");
        assert_eq!(d.lookup_digest(&dg), Some(id("a")));
    }

    #[test]
    fn digest_only_keys_are_verified_once_then_cached() {
        let d = KeyDirectory::with_verified_cache(4);
        d.insert_digest(KeyDigest::of("k1"), id("a"));
        d.insert_digest(KeyDigest::of("k2"), id("b"));
        for _ in 0..3 {
            assert_eq!(d.lookup("k1"), Some(id("a")));
            assert_eq!(d.lookup("k2"), Some(id("b")));
            assert_eq!(d.lookup("k3"), None);
        }
        let cached = |k: &str| {
            let t = d.inner.table.load();
            let mac = d.inner.key.mac(k.as_bytes());
            let i = t.verified.pin().get(&mac).copied();
            i.and_then(|i| t.customer(i).cloned())
        };
        assert_eq!(cached("k1"), Some(id("a")));
        assert_eq!(cached("k3"), None, "unknown keys are not cached");
        // Adding a key keeps cached verifications.
        d.insert_digest(KeyDigest::of("k4"), id("d"));
        assert_eq!(cached("k1"), Some(id("a")));
        // Re-assigned and revoked keys are not served from the cache.
        d.insert_digest(KeyDigest::of("k1"), id("c"));
        assert_eq!(cached("k1"), None);
        assert_eq!(d.lookup("k1"), Some(id("c")));
        d.remove("k2");
        assert_eq!(d.lookup("k2"), None);
        assert_eq!(d.lookup("k1"), Some(id("c")));
        d.remove_customer("c");
        assert_eq!(d.lookup("k1"), None);
        // Giving the key itself later puts it in the MAC index.
        d.insert("k4", id("d"));
        assert_eq!(d.inner.table.load().by_mac.len(), 1);
        assert_eq!(d.inner.table.load().digest_only, 0);
        assert_eq!(d.lookup("k4"), Some(id("d")));
        // More keys than the capacity given: the cache grows, one entry per verified key.
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
        assert_eq!(many.inner.table.load().verified.len(), 200);
        // Unknown keys never enter it.
        for i in 0..500 {
            assert_eq!(many.lookup(format!("unknown{i}")), None);
        }
        assert_eq!(many.inner.table.load().verified.len(), 200);
        assert!(!format!("{d:?}").contains("k1"));
    }

    #[test]
    fn the_verified_cache_grows_with_digest_only_keys_and_keeps_them() {
        let d = KeyDirectory::new();
        let key = |i: usize| format!("sk_{i:04}");
        d.extend_digests((0..100).map(|i| (KeyDigest::of(key(i)), id(&format!("c{i}")))));
        for i in 0..100 {
            assert_eq!(d.lookup(key(i)), Some(id(&format!("c{i}"))));
        }
        let verified = |d: &KeyDirectory| d.inner.table.load().verified.len();
        let n = verified(&d);
        assert_eq!(n, 100, "every verified key cached");
        // Adding keys keeps what was verified.
        d.extend_digests((100..1_000).map(|i| (KeyDigest::of(key(i)), id(&format!("c{i}")))));
        assert_eq!(verified(&d), n);
        for i in 0..1_000 {
            assert_eq!(d.lookup(key(i)), Some(id(&format!("c{i}"))));
        }
        assert_eq!(verified(&d), 1_000);
        // A revocation starts over.
        d.remove(key(0));
        assert_eq!(verified(&d), 0);
        assert_eq!(d.lookup(key(0)), None);
        assert_eq!(d.lookup(key(1)), Some(id("c1")));
    }

    #[test]
    fn lookups_race_with_changes() {
        let d = KeyDirectory::new();
        d.extend_digests((0..64).map(|i| (KeyDigest::of(format!("k{i}")), id("a"))));
        std::thread::scope(|s| {
            for t in 0..3 {
                let d = d.clone();
                s.spawn(move || {
                    for n in 0..3_000 {
                        let i = (n * 7 + t) % 64;
                        // Keys 0..32 are never touched; the others come and go.
                        let got = d.lookup(format!("k{i}"));
                        if i < 32 {
                            assert_eq!(got, Some(id("a")), "k{i}");
                        } else {
                            assert!(got.is_none() || got == Some(id("a")) || got == Some(id("b")));
                        }
                    }
                });
            }
            for n in 0..200 {
                let i = 32 + n % 32;
                match n % 3 {
                    0 => drop(d.remove(format!("k{i}"))),
                    1 => drop(d.insert_digest(KeyDigest::of(format!("k{i}")), id("b"))),
                    _ => drop(d.insert(format!("k{i}"), id("a"))),
                }
            }
        });
    }

    #[test]
    fn lookups_follow_changes_and_never_mix_directories() {
        let n = 7;
        let dirs: Vec<KeyDirectory> = (0..n).map(|_| KeyDirectory::new()).collect();
        for (i, d) in dirs.iter().enumerate() {
            d.insert("k", id(&format!("c{i}")));
        }
        // Many directories: each answers for itself.
        for _ in 0..3 {
            for (i, d) in dirs.iter().enumerate() {
                assert_eq!(d.lookup("k"), Some(id(&format!("c{i}"))));
            }
        }
        // A change made on another thread reaches this thread.
        let last = dirs[n - 1].clone();
        std::thread::spawn(move || {
            last.remove("k");
            last.insert("k2", id("moved"));
        })
        .join()
        .unwrap();
        assert_eq!(dirs[n - 1].lookup("k"), None);
        assert_eq!(dirs[n - 1].lookup("k2"), Some(id("moved")));
        assert_eq!(dirs[n - 2].lookup("k"), Some(id(&format!("c{}", n - 2))));
        // A directory made after others were dropped starts empty.
        drop(dirs);
        let fresh = KeyDirectory::new();
        assert_eq!(fresh.lookup("k"), None);
        fresh.insert("k", id("fresh"));
        assert_eq!(fresh.lookup("k"), Some(id("fresh")));
    }

    #[test]
    fn each_directory_has_its_own_secret() {
        let (a, b) = (KeyDirectory::new(), KeyDirectory::new());
        assert_ne!(a.inner.key.mac(b"k"), b.inner.key.mac(b"k"));
        assert_ne!(a.inner.key.mac(b"k"), a.inner.key.mac(b"l"));
        // Clones share the directory (and its secret).
        let c = a.clone();
        c.insert("k", id("x"));
        assert_eq!(a.lookup("k"), Some(id("x")));
    }

    #[test]
    fn entries_sharing_a_prefix_are_told_apart() {
        let mut t = Table::new(0);
        let mut a = [7u8; 32];
        let mut b = [7u8; 32];
        let mut c = [7u8; 32];
        a[31] = 1;
        b[31] = 2;
        c[31] = 3;
        t.insert(KeyDigest(a), None, id("a"));
        t.insert(KeyDigest(b), None, id("b"));
        t.insert(KeyDigest(c), None, id("c"));
        let of =
            |t: &Table, d: [u8; 32]| t.find(&KeyDigest(d)).and_then(|i| t.customer(i)).cloned();
        assert_eq!(of(&t, a), Some(id("a")));
        assert_eq!(of(&t, b), Some(id("b")));
        assert_eq!(of(&t, c), Some(id("c")));
        assert_eq!(of(&t, [7u8; 32]), None);
        // Removing from the middle of a chain keeps the others.
        assert_eq!(t.remove(&KeyDigest(b)), Some(id("b")));
        assert_eq!(of(&t, a), Some(id("a")));
        assert_eq!(of(&t, b), None);
        assert_eq!(of(&t, c), Some(id("c")));
    }
}
