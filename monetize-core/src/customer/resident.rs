//! Who keeps a customer's state alive, and how eviction knows that no request holds it.
//!
//! A customer's [`CustomerState`] lives in one allocation with two kinds of owner:
//!
//! - the registry's map holds one [`Resident`] while the customer is in memory;
//! - every [`CustomerHandle`](super::CustomerHandle) holds one [`Pinned`] reference.
//!
//! - a thread's cache of resolved customers holds a [`Watch`]: it keeps the allocation,
//!   not the customer (eviction does not wait for it).
//!
//! All are counted in one word, [`CustomerState::refs`]: pinned references, watches, and
//! two flags.
//!
//! - **Pinning** (resolving a handle from the map or a watch) is one `fetch_add` on that
//!   word. It fails when the word is [`SEALED`]: the customer is being evicted, and the caller goes
//!   to the admission path, which waits for the eviction of that one customer to finish
//!   and restores it from its dormant record.
//! - **Sealing** (eviction) is one `compare_exchange` from "no pinned reference" to
//!   [`SEALED`].
//!   After it succeeds nobody can pin the state, so nothing can record into it: the
//!   evictor drains its usage cells and copies it into a dormant record knowing that both
//!   are final. Pinning and sealing are read-modify-writes of the same word, so one of them
//!   always sees the other: no fence, no lock, and no request ever waits for a seal.
//! - **Freeing**: dropping the [`Resident`] (the map's value, dropped by the map once no
//!   reader can still see it, or with the whole map) sets [`ORPHANED`]; the allocation is
//!   freed by whichever of the resident, the pinned references and the watches goes last
//!   (they all count on the one word, so exactly one sees nobody left). A handle may
//!   therefore outlive its engine, as an `Arc` would.
//!
//! The request path costs one read-modify-write to pin and one to unpin, on the
//! customer's own state (the same cache line as its flags and balance), and takes no
//! lock: unlike a reference count behind a locked map, a background pass over the map
//! never makes a request wait.

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

// Checked twice by `scripts/test`: the loom model below, and `scripts/memcheck`, which runs
// the tests of this module, the registry and eviction under valgrind (a use after free, a
// double free or a leak fails it).
//
// Under `--cfg monetize_loom` the fences are loom's (as is the count word, see
// `RefCount`), so that the loom model at the foot of this file explores every interleaving
// of pin, unpin, watch, seal and free (`scripts/test` runs it).
#[cfg(monetize_loom)]
use loom::sync::atomic::fence;
#[cfg(not(monetize_loom))]
use std::sync::atomic::fence;

use super::state::CustomerState;

// What the `unsafe impl Send/Sync` below rely on: the state they point to is itself
// `Send + Sync`.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<CustomerState>();
};

/// Set by the evictor once no handle exists: pinning fails from then on.
const SEALED: u64 = 1 << 63;
/// Set when the registry drops its [`Resident`]: the last reference frees.
const ORPHANED: u64 = 1 << 62;
/// One pinned reference (bits 0..31).
const PIN: u64 = 1;
const PINS: u64 = (1 << 31) - 1;
/// One watch (bits 31..62).
const WATCH: u64 = 1 << 31;
const WATCHES: u64 = PINS << 31;
/// More references of one kind than this means handles are being leaked (`mem::forget`
/// in a loop): abort, as `Arc` does, rather than let a count run into the next field.
const MAX_PINS: u64 = PINS >> 1;

/// The ids of the states freed (the loom model checks that each is freed exactly once).
#[cfg(all(test, monetize_loom))]
static FREED: std::sync::Mutex<Vec<crate::id::CustomerId>> = std::sync::Mutex::new(Vec::new());

/// Whether `after` (the word after an operation) leaves nobody holding the allocation.
#[inline]
fn nobody_left(after: u64) -> bool {
    after & ORPHANED != 0 && after & (PINS | WATCHES) == 0
}

/// Frees the allocation.
///
/// # Safety
///
/// `nobody_left` held for the word this caller's own operation left: no resident, pin or
/// watch remains, and none can be made (each needs one of those to start from).
unsafe fn free(ptr: NonNull<CustomerState>) {
    // Acquire: every use of the state through other references happens before the free.
    fence(Ordering::Acquire);
    // SAFETY: allocated by `Resident::new` with `Box`, and the last reference is ours
    // (`nobody_left` held for the word our own operation left).
    let state = unsafe { Box::from_raw(ptr.as_ptr()) };
    #[cfg(all(test, monetize_loom))]
    FREED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(state.id.clone());
    drop(state);
}

/// Adds one pinned reference unless the state is sealed or orphaned; undoes it otherwise.
/// The caller holds something that keeps the allocation (a resident under the map's
/// guard, or a watch), so the undo never frees.
#[inline]
fn try_pin(ptr: NonNull<CustomerState>) -> Option<Pinned> {
    // SAFETY: the caller keeps the allocation alive.
    let refs = unsafe { &ptr.as_ref().refs };
    // Relaxed: the state's contents were published with the map entry (read with acquire
    // by the map, or by the thread that made the watch), and the seal is decided on this
    // word alone.
    let prev = refs.fetch_add(PIN, Ordering::Relaxed);
    if prev & (SEALED | ORPHANED) != 0 {
        refs.fetch_sub(PIN, Ordering::Relaxed);
        return None;
    }
    if prev & PINS >= MAX_PINS {
        std::process::abort();
    }
    Some(Pinned(ptr))
}

/// The registry's ownership of a customer's state while the customer is in memory.
pub(crate) struct Resident(NonNull<CustomerState>);

// SAFETY: `CustomerState` is `Send + Sync` (atomics and immutable fields); a `Resident` is
// an owning pointer to one, freed under the protocol above.
unsafe impl Send for Resident {}
unsafe impl Sync for Resident {}

impl Resident {
    /// Moves `state` into its own allocation.
    pub(crate) fn new(state: CustomerState) -> Resident {
        Resident(NonNull::from(Box::leak(Box::new(state))))
    }

    /// The state.
    #[inline]
    pub(crate) fn state(&self) -> &CustomerState {
        // SAFETY: the allocation is freed only after this resident is dropped (the
        // `ORPHANED` flag), so it is live while `self` is.
        unsafe { self.0.as_ref() }
    }

    /// A pinned reference, unless the customer is sealed for eviction.
    #[inline]
    pub(crate) fn pin(&self) -> Option<Pinned> {
        try_pin(self.0)
    }

    /// Whether a handle holds the state now (a hint for the eviction scan).
    pub(crate) fn is_pinned(&self) -> bool {
        self.state().refs.load(Ordering::Relaxed) & PINS != 0
    }

    /// Seals the state for eviction: succeeds only when no handle exists, and then no
    /// handle can be made from it again. Watches do not count: they are not handles.
    pub(crate) fn seal(&self) -> bool {
        let refs = &self.state().refs;
        let mut cur = refs.load(Ordering::Relaxed);
        loop {
            if cur & (PINS | SEALED) != 0 {
                return false;
            }
            // Acquire: every record made through a handle (released by its unpin) happens
            // before what the evictor reads next.
            match refs.compare_exchange_weak(
                cur,
                cur | SEALED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let prev = self.state().refs.fetch_or(ORPHANED, Ordering::AcqRel);
        if nobody_left(prev | ORPHANED) {
            // SAFETY: this operation left nobody.
            unsafe { free(self.0) }
        }
    }
}

/// A pinned reference to a customer's state: what a [`CustomerHandle`](super::CustomerHandle)
/// holds.
pub(crate) struct Pinned(NonNull<CustomerState>);

// SAFETY: as for `Resident`.
unsafe impl Send for Pinned {}
unsafe impl Sync for Pinned {}

impl Pinned {
    /// A watch on the same state.
    pub(crate) fn watch(&self) -> Watch {
        // The state is pinned by `self`, so its allocation is live.
        let prev = self.refs.fetch_add(WATCH, Ordering::Relaxed);
        if (prev & WATCHES) >> 31 >= MAX_PINS {
            std::process::abort();
        }
        Watch(self.0)
    }
}

impl Deref for Pinned {
    type Target = CustomerState;

    #[inline]
    fn deref(&self) -> &CustomerState {
        // SAFETY: a pinned reference keeps the allocation: it is freed only once no
        // reference of any kind is left.
        unsafe { self.0.as_ref() }
    }
}

impl Clone for Pinned {
    #[inline]
    fn clone(&self) -> Pinned {
        // The state is pinned by `self`, so it cannot be sealed meanwhile.
        let prev = self.refs.fetch_add(PIN, Ordering::Relaxed);
        if prev & PINS >= MAX_PINS {
            std::process::abort();
        }
        Pinned(self.0)
    }
}

impl Drop for Pinned {
    #[inline]
    fn drop(&mut self) {
        // Release: what this handle recorded happens before a seal (or a free) that reads
        // the word this leaves.
        let prev = self.refs.fetch_sub(PIN, Ordering::Release);
        if nobody_left(prev - PIN) {
            // SAFETY: this operation left nobody.
            unsafe { free(self.0) }
        }
    }
}

/// A reference that keeps a customer's state allocated without holding the customer:
/// eviction does not wait for it, and once the customer is sealed (or its registry is
/// gone) it can no longer be pinned. What a thread's cache of resolved customers holds
/// (see [`super::handle_cache`]).
pub(crate) struct Watch(NonNull<CustomerState>);

// SAFETY: as for `Resident`.
unsafe impl Send for Watch {}
unsafe impl Sync for Watch {}

impl Watch {
    /// The state (valid, but possibly evicted: only a pinned reference may record).
    #[inline]
    pub(crate) fn state(&self) -> &CustomerState {
        // SAFETY: a watch keeps the allocation.
        unsafe { self.0.as_ref() }
    }

    /// A pinned reference, unless the customer was evicted since (or its registry
    /// dropped).
    #[inline]
    pub(crate) fn pin(&self) -> Option<Pinned> {
        try_pin(self.0)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let prev = self.state().refs.fetch_sub(WATCH, Ordering::Release);
        if nobody_left(prev - WATCH) {
            // SAFETY: this operation left nobody.
            unsafe { free(self.0) }
        }
    }
}

#[cfg(all(test, not(monetize_loom)))]
mod tests {
    use super::*;
    use crate::id::CustomerId;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn state() -> CustomerState {
        CustomerState::new(
            CustomerId::new("c").unwrap(),
            &[],
            0,
            0,
            Arc::clone(crate::customer::metering::for_tests()),
        )
    }

    #[test]
    fn a_pinned_state_cannot_be_sealed_and_a_sealed_one_cannot_be_pinned() {
        let r = Resident::new(state());
        let p = r.pin().expect("pins");
        let q = p.clone();
        assert!(r.is_pinned());
        assert!(!r.seal(), "two handles hold it");
        drop(p);
        assert!(!r.seal(), "one handle holds it");
        drop(q);
        assert!(!r.is_pinned());
        assert!(r.seal());
        assert!(r.pin().is_none(), "sealed");
        assert!(!r.is_pinned(), "a failed pin leaves no count behind");
    }

    #[test]
    fn a_handle_outlives_the_resident() {
        let r = Resident::new(state());
        let p = r.pin().unwrap();
        drop(r);
        p.balance.store(7, Ordering::Relaxed);
        let q = p.clone();
        drop(p);
        assert_eq!(q.balance.load(Ordering::Relaxed), 7);
        drop(q);
    }

    #[test]
    fn a_watch_keeps_the_allocation_but_not_the_customer() {
        let r = Resident::new(state());
        let p = r.pin().unwrap();
        let w = p.watch();
        drop(p);
        let again = w.pin().expect("not sealed: the watch pins");
        assert!(!r.seal(), "pinned through the watch");
        drop(again);
        assert!(r.seal(), "a watch alone does not hold the customer");
        assert!(w.pin().is_none(), "sealed: the watch no longer pins");
        drop(r);
        // The resident is gone; the watch still reads the state, and frees it on drop.
        assert_eq!(w.state().id.as_str(), "c");
        drop(w);
    }

    #[test]
    fn an_orphaned_state_cannot_be_pinned_through_a_watch() {
        let r = Resident::new(state());
        let w = r.pin().unwrap().watch();
        drop(r);
        assert!(w.pin().is_none(), "the registry is gone");
    }

    /// Threads pin, record and unpin while another seals: a seal succeeds only when no
    /// pin is out, and after it nothing records. Each record adds 1 to the balance while
    /// pinned; the sealer reads the balance once sealed, and it never moves afterwards.
    #[test]
    fn seal_races_pins_and_nothing_records_after_it() {
        for _ in 0..200 {
            let r = Arc::new(Resident::new(state()));
            let recorded = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (r, recorded) = (r.clone(), recorded.clone());
                    std::thread::spawn(move || {
                        for _ in 0..2_000 {
                            let Some(p) = r.pin() else { return };
                            p.balance.fetch_add(1, Ordering::Relaxed);
                            recorded.fetch_add(1, Ordering::Relaxed);
                            drop(p);
                        }
                    })
                })
                .collect();
            let sealed_at = loop {
                if r.seal() {
                    break r.state().balance.load(Ordering::Relaxed);
                }
                std::hint::spin_loop();
            };
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(r.state().balance.load(Ordering::Relaxed), sealed_at);
            assert_eq!(sealed_at as usize, recorded.load(Ordering::Relaxed));
        }
    }
}

/// A loom model of the protocol: every interleaving of pins, unpins, watches, seals and the
/// resident's drop, checking that a seal never succeeds while a pin is out, that nothing
/// records after a seal, and that the state is freed exactly once, after its last
/// reference. Run with
/// `RUSTFLAGS="--cfg monetize_loom" cargo test -p monetize-core --lib --release loom`.
#[cfg(all(test, monetize_loom))]
mod loom_model {
    use super::*;
    use crate::id::CustomerId;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    /// A state named after its test, so that tests running side by side count only
    /// their own frees.
    fn state(test: &str) -> CustomerState {
        FREED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id| id.as_str() != test);
        CustomerState::new(
            CustomerId::new(test).unwrap(),
            &[],
            0,
            0,
            std::sync::Arc::clone(crate::customer::metering::for_tests()),
        )
    }

    /// How many times the state of `test` was freed.
    fn freed(test: &str) -> usize {
        let freed = FREED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        freed.iter().filter(|id| id.as_str() == test).count()
    }

    /// Resident lives in a loom `Arc` so that the threads share it; a `Resident` has no
    /// `Clone`.
    struct Shared(Resident);

    #[test]
    fn seal_excludes_pins_and_nothing_records_after_it() {
        loom::model(|| {
            const T: &str = "seal_excludes_pins_and_nothing_records_a";
            let r = Arc::new(Shared(Resident::new(state(T))));
            let recorded = Arc::new(AtomicUsize::new(0));
            let worker = {
                let (r, recorded) = (r.clone(), recorded.clone());
                loom::thread::spawn(move || {
                    if let Some(p) = r.0.pin() {
                        recorded.fetch_add(1, Ordering::Relaxed);
                        drop(p);
                    }
                })
            };
            let sealed = r.0.seal();
            // What the sealer sees once sealed is final.
            let seen = recorded.load(Ordering::Relaxed);
            worker.join().unwrap();
            if sealed {
                assert_eq!(
                    recorded.load(Ordering::Relaxed),
                    seen,
                    "recorded after the seal"
                );
                assert!(r.0.pin().is_none());
            }
            drop(r);
            assert_eq!(freed(T), 1, "freed exactly once");
        });
    }

    #[test]
    fn the_last_of_resident_pin_and_watch_frees() {
        loom::model(|| {
            const T: &str = "the_last_of_resident_pin_and_watch_frees";
            let r = Resident::new(state(T));
            let p = r.pin().expect("a new state pins");
            let w = p.watch();
            let t1 = loom::thread::spawn(move || drop(p));
            let t2 = loom::thread::spawn(move || {
                // Pinning through the watch may win or lose against the resident's drop.
                if let Some(again) = w.pin() {
                    drop(again);
                }
                drop(w);
            });
            drop(r);
            t1.join().unwrap();
            t2.join().unwrap();
            assert_eq!(freed(T), 1, "freed exactly once, after the last reference");
        });
    }

    #[test]
    fn a_seal_racing_a_pin_through_a_watch_excludes_it() {
        loom::model(|| {
            const T: &str = "a_seal_racing_a_pin_through_a_watch_excl";
            let r = Arc::new(Shared(Resident::new(state(T))));
            let w = r.0.pin().expect("a new state pins").watch();
            let recorded = Arc::new(AtomicUsize::new(0));
            let pinner = {
                let recorded = recorded.clone();
                loom::thread::spawn(move || {
                    let pinned = w.pin();
                    let held = pinned.is_some();
                    if held {
                        recorded.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(pinned);
                    drop(w);
                    held
                })
            };
            let sealed = r.0.seal();
            let seen = recorded.load(Ordering::Relaxed);
            let held = pinner.join().unwrap();
            if sealed {
                assert_eq!(
                    recorded.load(Ordering::Relaxed),
                    seen,
                    "recorded after the seal"
                );
            } else {
                assert!(held, "a seal fails only while a pin is out");
            }
            drop(r);
            assert_eq!(freed(T), 1);
        });
    }
}
