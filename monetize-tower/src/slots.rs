//! Where the quantities a request's recorders add are kept: one slot per request, shared
//! by all its [`UsageRecorder`](crate::UsageRecorder)s, taken from (and given back to) a
//! per-thread pool so that taking a recorder rarely allocates.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use monetize_core::ReportedUsage;

/// What the recorders of one request add to, shared with them: the quantities behind a
/// lock that is almost never contended (recorders of one request rarely add from two
/// threads at once) and held only for one [`ReportedUsage::add`] or copy. Never
/// downgraded to a `Weak`, so its strong count alone tells whether a recorder holds it.
pub(crate) type Slot = Arc<Mutex<ReportedUsage>>;

/// Locks a slot; a recorder that panicked mid-add leaves the quantities as they were.
#[inline]
pub(crate) fn lock(slot: &Slot) -> MutexGuard<'_, ReportedUsage> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `slot` is the last reference to its slot (no recorder holds it). The acquire
/// fence pairs with the release decrement of the other references' drops (as in
/// `Arc::get_mut`): whatever they did before letting go happened before what follows.
#[inline]
fn is_unique(slot: &Slot) -> bool {
    let unique = Arc::strong_count(slot) == 1;
    if unique {
        fence(Ordering::Acquire);
    }
    unique
}

/// The slot of one request, once a recorder was taken: all its recorders share it (their
/// adds sum).
#[derive(Default)]
pub(crate) struct Slots(pub(crate) Option<Slot>);

impl Slots {
    /// A recorder's reference to the request's slot (from this thread's pool on the first
    /// call).
    #[inline]
    pub(crate) fn attach(&mut self) -> Slot {
        self.0.get_or_insert_with(fresh_slot).clone()
    }

    /// Whether no recorder of the request is left anywhere (none was taken, or the
    /// handler dropped them all), so nothing can be added any more.
    #[inline]
    pub(crate) fn all_dropped(&self) -> bool {
        self.0.as_ref().is_none_or(is_unique)
    }
}

/// Slots kept per thread for the next recorders (each saves an allocation).
const POOL_SIZE: usize = 64;

/// A thread's cleared slots: one at hand (a thread serving one request at a time needs no
/// more, and takes and gives it back without a `RefCell` borrow), the others in a list.
struct Pool {
    spare: Cell<Option<Slot>>,
    more: RefCell<Vec<Slot>>,
}

thread_local! {
    static POOL: Pool = const {
        Pool {
            spare: Cell::new(None),
            more: RefCell::new(Vec::new()),
        }
    };
}

/// A slot from this thread's pool (cleared when it was put back), or a new one.
#[inline]
pub(crate) fn fresh_slot() -> Slot {
    POOL.try_with(|p| p.spare.take().or_else(|| p.more.borrow_mut().pop()))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives a cleared slot that no recorder holds back to this thread's pool.
#[inline]
fn recycle(slot: Slot) {
    let _ = POOL.try_with(move |p| {
        if let Some(other) = p.spare.replace(Some(slot)) {
            let mut more = p.more.borrow_mut();
            if more.len() < POOL_SIZE - 1 {
                more.push(other);
            }
        }
    });
}

/// Runs `f` on everything reported for a request, the response extension and the
/// recorders' slot summed, then gives the slot back to this thread's pool if no recorder
/// holds it any more. Copies nothing in the common cases (one source or none, and no
/// recorder left: no lock either); with a recorder still alive, meters a copy.
pub(crate) fn with_reported<T>(
    from_response: Option<ReportedUsage>,
    slots: Slots,
    f: impl FnOnce(Option<&ReportedUsage>) -> T,
) -> T {
    let Some(mut slot) = slots.0 else {
        return f(from_response.as_ref());
    };
    // No recorder left (the common case): the quantities without locking.
    if let Some(m) = Arc::get_mut(&mut slot) {
        let got = m.get_mut().unwrap_or_else(PoisonError::into_inner);
        let out = match from_response {
            None => f((!got.is_empty()).then_some(&*got)),
            Some(mut r) => {
                r.extend_from(got);
                f(Some(&r))
            }
        };
        // Cleared in place: the next request's adds reuse its list.
        got.clear();
        recycle(slot);
        return out;
    }
    // A recorder is still alive (it may add while we meter, and its adds from now on are
    // not metered): meter a copy, without holding the lock.
    let mut merged = from_response;
    let got = lock(&slot);
    if !got.is_empty() {
        match &mut merged {
            Some(m) => m.extend_from(&got),
            None => merged = Some(got.clone()),
        }
    }
    drop(got);
    f(merged.as_ref())
}

/// How many cleared slots this thread's pool holds.
#[cfg(test)]
pub(crate) fn pooled() -> usize {
    POOL.with(|p| {
        let spare = p.spare.take();
        let n = usize::from(spare.is_some()) + p.more.borrow().len();
        p.spare.set(spare);
        n
    })
}
