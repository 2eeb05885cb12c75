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
//! A customer enters the cache only when this thread resolves it a second time within a
//! window (a bit set by hash, the "doorkeeper" of TinyLFU): with many customers each
//! calling rarely, filling the cache would cost two extra cache misses per request (the
//! slot and the reference count of the customer it displaces) and win nothing.
//!
//! Customers named by a [`CustomerToken`](super::CustomerToken) (an identification
//! layer's name for verified credentials) have slots of their own, keyed by the whole
//! 128-bit token, in two-way sets, two candidate sets per token: a hit costs no id hash
//! and no id comparison. Tokens go
//! through the same doorkeeper.
//!
//! Memory: [`SLOTS`] slots of 16 bytes (a set of four is one 64-byte cache line) and
//! [`SEEN_BITS`] bits per thread that resolves customers (72 KiB), allocated on the first
//! resolve; [`TOKEN_SLOTS`] slots of 32 bytes (128 KiB) when the thread first remembers a
//! token. An evicted customer's state stays allocated until its slot is reused or the
//! thread ends.

use std::cell::RefCell;

use super::hashed_id::same_id;
use super::resident::{Pinned, Watch};

/// Slots per thread (a power of two), in sets of [`WAYS`].
const SLOTS: usize = 4096;
const WAYS: usize = 4;
/// Bits of the doorkeeper (a power of two); cleared after [`SEEN_BITS`] / 16 customers
/// were seen once, so that "seen before" means lately (and a false "seen" stays rare).
const SEEN_BITS: usize = 1 << 16;

#[derive(Default)]
struct Slot {
    /// The hash of the id (its low half).
    hash: u32,
    /// The registry the customer belongs to (0: empty; registries numbered past
    /// `u32::MAX` are never cached).
    registry: u32,
    watch: Option<Watch>,
}

/// One set: a cache line.
#[derive(Default)]
#[repr(align(64))]
struct Set([Slot; WAYS]);

/// Token slots per thread (a power of two), in sets of [`TOKEN_WAYS`], each token with two
/// sets to choose from: customers known by a [`CustomerToken`](super::CustomerToken)
/// rather than their id.
const TOKEN_SLOTS: usize = 4096;
const TOKEN_WAYS: usize = 2;

#[derive(Default)]
struct TokenSlot {
    /// The token's two halves (the whole token is compared: it stands for the id).
    token: [u64; 2],
    /// As in [`Slot`].
    registry: u32,
    watch: Option<Watch>,
}

/// One set of token slots: a cache line.
#[derive(Default)]
#[repr(align(64))]
struct TokenSet([TokenSlot; TOKEN_WAYS]);

struct Cache {
    sets: Box<[Set]>,
    /// Allocated when this thread first remembers a token (128 KiB).
    tokens: Option<Box<[TokenSet]>>,
    seen: Box<[u64]>,
    /// Bits set in `seen` since it was last cleared.
    seen_count: usize,
}

impl Cache {
    fn new() -> Cache {
        Cache {
            sets: (0..SLOTS / WAYS).map(|_| Set::default()).collect(),
            tokens: None,
            seen: vec![0; SEEN_BITS / 64].into_boxed_slice(),
            seen_count: 0,
        }
    }

    /// Marks `hash` as seen; whether it was seen already.
    fn seen_before(&mut self, hash: u64) -> bool {
        let bit = hash as usize % SEEN_BITS;
        let Some(word) = self.seen.get_mut(bit / 64) else {
            return false;
        };
        let mask = 1u64 << (bit % 64);
        if *word & mask != 0 {
            return true;
        }
        *word |= mask;
        self.seen_count += 1;
        if self.seen_count >= SEEN_BITS / 16 {
            self.seen.fill(0);
            self.seen_count = 0;
        }
        false
    }
}

thread_local! {
    static CACHE: RefCell<Option<Cache>> = const { RefCell::new(None) };
}

/// The set of `hash`.
#[inline]
fn set(hash: u64) -> usize {
    (hash >> (64 - (SLOTS / WAYS).trailing_zeros())) as usize
}

/// What the cache answered.
pub(crate) enum Lookup {
    /// The customer, pinned.
    Hit(Pinned),
    /// Not here (or evicted since); `remember`: this thread saw it lately, so once
    /// resolved from the map it should be [`put`] here.
    Miss { remember: bool },
}

/// The customer `id` of `registry`, pinned, if this thread resolved it lately and it was
/// not evicted since. Allocates this thread's cache on its first call.
#[inline]
pub(crate) fn get(registry: u64, hash: u64, id: &str) -> Lookup {
    let (tag, Ok(registry)) = (hash as u32, u32::try_from(registry)) else {
        return Lookup::Miss { remember: false };
    };
    CACHE
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return Lookup::Miss { remember: false };
            };
            let cache = cache.get_or_insert_with(Cache::new);
            let found = cache.sets.get(set(hash)).and_then(|Set(ways)| {
                ways.iter()
                    .find(|s| s.hash == tag && s.registry == registry)?
                    .watch
                    .as_ref()
            });
            if let Some(watch) = found
                && same_id(watch.state().id.as_str(), id)
            {
                if let Some(p) = watch.pin() {
                    return Lookup::Hit(p);
                }
                // Evicted since: resolve it again from the map and replace the entry.
                return Lookup::Miss { remember: true };
            }
            Lookup::Miss {
                remember: cache.seen_before(hash),
            }
        })
        .unwrap_or(Lookup::Miss { remember: false })
}

/// Remembers a customer this thread resolved from the map (after a [`Lookup::Miss`] that
/// said to).
pub(crate) fn put(registry: u64, hash: u64, pinned: &Pinned) {
    let (tag, Ok(registry)) = (hash as u32, u32::try_from(registry)) else {
        return;
    };
    let _ = CACHE.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return;
        };
        let cache = cache.get_or_insert_with(Cache::new);
        if let Some(Set(ways)) = cache.sets.get_mut(set(hash)) {
            // The newest first; the oldest (or a stale entry for this id) drops here,
            // possibly freeing an evicted customer's state (which never touches this cache).
            let same = ways
                .iter()
                .position(|s| s.hash == tag && s.registry == registry)
                .unwrap_or(WAYS - 1);
            ways[..=same].rotate_right(1);
            ways[0] = Slot {
                hash: tag,
                registry,
                watch: Some(pinned.watch()),
            };
        }
    });
}

/// The two sets `token` may sit in (from the top bits of each half; tokens are
/// pseudo-random): two choices keep a full set from evicting a customer the thread still
/// calls (with one choice, about one key in eleven of a thread's thousand shares a set with
/// two others and misses on every request).
#[inline]
fn token_sets(token: [u64; 2]) -> [usize; 2] {
    let shift = 64 - (TOKEN_SLOTS / TOKEN_WAYS).trailing_zeros();
    [(token[1] >> shift) as usize, (token[0] >> shift) as usize]
}

#[inline]
fn halves(token: u128) -> [u64; 2] {
    [token as u64, (token >> 64) as u64]
}

/// The customer of `token` in `registry`, pinned, if this thread remembered it and it was
/// not evicted since.
#[inline]
pub(crate) fn get_token(registry: u64, token: u128) -> Option<Pinned> {
    let Ok(registry) = u32::try_from(registry) else {
        return None;
    };
    let token = halves(token);
    CACHE
        .try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            let sets = cache.as_ref()?.tokens.as_ref()?;
            let find = |set: usize| {
                let TokenSet(ways) = sets.get(set)?;
                ways.iter()
                    .find(|s| s.token == token && s.registry == registry)
            };
            let [a, b] = token_sets(token);
            find(a).or_else(|| find(b))?.watch.as_ref()?.pin()
        })
        .ok()
        .flatten()
}

/// Marks `token` as seen on this thread; whether it was seen lately (the doorkeeper, as
/// for ids: a token is remembered on its second sighting).
pub(crate) fn token_seen_before(token: u128) -> bool {
    CACHE
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return false;
            };
            cache
                .get_or_insert_with(Cache::new)
                .seen_before(halves(token)[0])
        })
        .unwrap_or(false)
}

/// Remembers the customer of `token` (resolved by its id after [`get_token`] missed).
pub(crate) fn put_token(registry: u64, token: u128, pinned: &Pinned) {
    let Ok(registry) = u32::try_from(registry) else {
        return;
    };
    let token = halves(token);
    let _ = CACHE.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return;
        };
        let cache = cache.get_or_insert_with(Cache::new);
        let sets = cache.tokens.get_or_insert_with(|| {
            (0..TOKEN_SLOTS / TOKEN_WAYS)
                .map(|_| TokenSet::default())
                .collect()
        });
        let [a, b] = token_sets(token);
        let holds = |set: usize, f: &dyn Fn(&TokenSlot) -> bool| {
            sets.get(set)
                .is_some_and(|TokenSet(ways)| ways.iter().any(f))
        };
        let this = |s: &TokenSlot| s.token == token && s.registry == registry;
        let free = |s: &TokenSlot| s.watch.is_none();
        // Where the token already is (a customer evicted since), else the first set with
        // a free way, else the first set (its oldest entry goes).
        let set = if holds(a, &this) {
            a
        } else if holds(b, &this) {
            b
        } else if holds(a, &free) || !holds(b, &free) {
            a
        } else {
            b
        };
        if let Some(TokenSet(ways)) = sets.get_mut(set) {
            let same = ways
                .iter()
                .position(|s| this(s) || free(s))
                .unwrap_or(TOKEN_WAYS - 1);
            ways[..=same].rotate_right(1);
            ways[0] = TokenSlot {
                token,
                registry,
                watch: Some(pinned.watch()),
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doorkeeper_admits_on_the_second_sight_and_forgets_after_a_window() {
        let mut c = Cache::new();
        assert!(!c.seen_before(7));
        assert!(c.seen_before(7));
        assert!(
            c.seen_before(7 + SEEN_BITS as u64),
            "same bit: a false positive, harmless"
        );
        // A window of other customers seen once clears it.
        for h in 0..(SEEN_BITS / 16) as u64 {
            c.seen_before(1_000 + h);
        }
        assert!(!c.seen_before(7));
    }
}
