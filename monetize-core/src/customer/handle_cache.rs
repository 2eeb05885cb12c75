//! Each thread's cache of the customers it resolved lately, so that a customer's next
//! request on the same thread skips the map.
//!
//! A slot holds a [`Watch`]: it keeps the customer's state allocated but does not hold
//! the customer, so idle eviction never waits for a cache. A hit pins the state through
//! the watch (one atomic increment, the same as through the map); when the customer was
//! evicted since, the pin fails and the caller goes to the map, which admits it again.
//! Slots are four-way set-associative by the hash of the id (a new entry goes first, the
//! older one second) and tagged with the registry and the hash; a hit still compares the
//! id itself, so a collision or another engine's customer is only a miss.
//!
//! Memory: [`SLOTS`] slots of 24 bytes per thread that resolves customers (96 KiB),
//! allocated on the first resolve; an evicted customer's state stays allocated until its
//! slot is reused or the thread ends.

use std::cell::RefCell;

use super::resident::{Pinned, Watch};

/// Slots per thread (a power of two), in sets of [`WAYS`].
const SLOTS: usize = 4096;
const WAYS: usize = 4;

#[derive(Default)]
struct Slot {
    /// The registry the customer belongs to (0: empty).
    registry: u64,
    /// The hash of the id.
    hash: u64,
    watch: Option<Watch>,
}

thread_local! {
    static CACHE: RefCell<Option<Box<[Slot]>>> = const { RefCell::new(None) };
}

/// The first slot of the set of `hash`.
#[inline]
fn set(hash: u64) -> usize {
    (hash >> (64 - (SLOTS / WAYS).trailing_zeros())) as usize * WAYS
}

/// Byte equality of two ids, inline for the short ids most customers have.
#[inline]
fn same_id(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        17..=24 => {
            word(a, 0) == word(b, 0) && word(a, 8) == word(b, 8) && word(a, n - 8) == word(b, n - 8)
        }
        _ => a == b,
    }
}

/// The customer `id` of `registry`, pinned, if this thread resolved it lately and it was
/// not evicted since.
#[inline]
pub(crate) fn get(registry: u64, hash: u64, id: &str) -> Option<Pinned> {
    CACHE
        .try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            let slots = cache.as_ref()?.get(set(hash)..set(hash) + WAYS)?;
            let watch = slots
                .iter()
                .find(|s| s.hash == hash && s.registry == registry)?
                .watch
                .as_ref()?;
            if !same_id(watch.state().id.as_str(), id) {
                return None;
            }
            watch.pin()
        })
        .ok()
        .flatten()
}

/// Remembers a resolved customer on this thread.
pub(crate) fn put(registry: u64, hash: u64, pinned: &Pinned) {
    let _ = CACHE.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return;
        };
        let slots = cache.get_or_insert_with(|| (0..SLOTS).map(|_| Slot::default()).collect());
        if let Some(ways) = slots.get_mut(set(hash)..set(hash) + WAYS) {
            // The newest first; the oldest (or a stale entry for this id) drops here,
            // possibly freeing an evicted customer's state (which never touches this cache).
            let same = ways
                .iter()
                .position(|s| s.hash == hash && s.registry == registry)
                .unwrap_or(WAYS - 1);
            ways[..=same].rotate_right(1);
            ways[0] = Slot {
                registry,
                hash,
                watch: Some(pinned.watch()),
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
