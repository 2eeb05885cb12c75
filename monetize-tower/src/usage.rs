//! Handler-reported usage: quantities only the handler knows (tokens, rows, seconds).
//!
//! Two ways to report, both read when the response is metered:
//!
//! - put a [`ReportedUsage`] into the **response** extensions (works with any service);
//! - take a [`UsageRecorder::current`] while the handler runs and [`add`](UsageRecorder::add)
//!   to it (what `monetize-axum`'s `Usage` extractor does).
//!
//! A recorder costs nothing unless it is taken: the layer marks, on the running thread,
//! the request whose inner service it is polling (like a task-local); taking a recorder
//! attaches one small shared slot (reused from a per-thread pool) to that request.
//!
//! Recorders decide when the exchange is metered: if every recorder of a request has
//! been dropped when its response head arrives (the handler returned, taking its `Usage`
//! with it), the exchange is metered then; if one is still alive (moved into a streaming
//! body or another task), metering waits for the end of the response body, and what is
//! added after that is not metered.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex};

use monetize_core::ReportedUsage;

use crate::scope::with_current;

pub(crate) type Slot = Arc<Mutex<ReportedUsage>>;

/// The recorders taken for one request: the first inline (no allocation), more in a
/// vector.
#[derive(Default)]
pub(crate) struct Slots {
    first: Option<Slot>,
    more: Vec<Slot>,
}

impl Slots {
    pub(crate) fn push(&mut self, slot: Slot) {
        match self.first {
            None => self.first = Some(slot),
            Some(_) => self.more.push(slot),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.first.iter().chain(&self.more)
    }

    /// Whether no recorder of the request is left anywhere (the handler dropped them all),
    /// so nothing can be added any more.
    pub(crate) fn all_dropped(&mut self) -> bool {
        self.first
            .iter_mut()
            .chain(&mut self.more)
            .all(|s| Arc::get_mut(s).is_some())
    }

    /// Gives the slots no recorder holds any more back to this thread's pool.
    pub(crate) fn recycle(self) {
        if self.first.is_none() {
            return;
        }
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            for mut slot in self.first.into_iter().chain(self.more) {
                if pool.len() < POOL_SIZE
                    && let Some(m) = Arc::get_mut(&mut slot)
                    && let Ok(usage) = m.get_mut()
                {
                    // Cleared in place: the next request's `add` reuses the list.
                    usage.clear();
                    pool.push(slot);
                }
            }
        });
    }
}

/// Slots kept per thread for the next recorders (each saves an allocation).
const POOL_SIZE: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// A slot from this thread's pool, or a new one.
fn fresh_slot() -> Slot {
    POOL.try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Adds handler-reported quantities to the request being served.
///
/// Take one with [`UsageRecorder::current`] from code that runs inside the monetized
/// service (the handler, or anything it awaits); it may then be moved anywhere, but only
/// what was added before the response body ends is metered. Holding it past the
/// response head (for example in a streaming body) makes the layer wait for the end of
/// the body to meter; dropping it when the handler returns lets the layer meter at once.
#[derive(Clone, Default)]
pub struct UsageRecorder {
    slot: Option<Slot>,
}

impl UsageRecorder {
    /// A recorder for the request whose inner service is being polled on this thread, or
    /// `None` when no monetize layer is polling (the layer is not installed, or this runs
    /// in a spawned task). For a request that is not metered (anonymous or exempt) the
    /// recorder is detached: adds are accepted and ignored.
    pub fn current() -> Option<UsageRecorder> {
        with_current(|frame| {
            let frame = frame?;
            if !frame.metered {
                return Some(UsageRecorder { slot: None });
            }
            let slot = fresh_slot();
            frame.slots.borrow_mut().push(slot.clone());
            Some(UsageRecorder { slot: Some(slot) })
        })
    }

    /// A recorder attached to no request: adds are ignored.
    pub fn detached() -> UsageRecorder {
        UsageRecorder { slot: None }
    }

    /// Whether adds reach a metered request.
    pub fn is_attached(&self) -> bool {
        self.slot.is_some()
    }

    /// Adds `quantity` under `name` (summed with earlier adds of the same name). Meters
    /// with `value = { reported = "name" }` pick it up when the response is metered.
    pub fn add(&self, name: impl Into<Cow<'static, str>>, quantity: u64) {
        if let Some(slot) = &self.slot {
            slot.lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(name, quantity);
        }
    }

    /// What was added so far.
    pub fn snapshot(&self) -> ReportedUsage {
        self.slot.as_ref().map_or_else(ReportedUsage::new, |s| {
            s.lock().unwrap_or_else(|e| e.into_inner()).clone()
        })
    }
}

impl fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("attached", &self.is_attached())
            .finish()
    }
}

/// Merges response-extension usage and recorder slots into one set.
fn merge<'a>(
    from_response: Option<ReportedUsage>,
    slots: impl IntoIterator<Item = &'a Slot>,
) -> Option<ReportedUsage> {
    let mut out = from_response;
    for slot in slots {
        let got = slot.lock().unwrap_or_else(|e| e.into_inner());
        if got.is_empty() {
            continue;
        }
        match &mut out {
            Some(o) => o.extend_from(&got),
            None => out = Some(got.clone()),
        }
    }
    out
}

/// Runs `f` on everything reported for a request: the response extension and the
/// recorders' slots. Copies nothing in the common cases (one source or none).
pub(crate) fn with_reported<T>(
    from_response: Option<ReportedUsage>,
    slots: &Slots,
    f: impl FnOnce(Option<&ReportedUsage>) -> T,
) -> T {
    match (from_response, &slots.first) {
        (r, None) => f(r.as_ref()),
        (None, Some(one)) if slots.more.is_empty() => {
            let got = one.lock().unwrap_or_else(|e| e.into_inner());
            f((!got.is_empty()).then_some(&*got))
        }
        (r, _) => f(merge(r, slots.iter()).as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_attach_to_the_innermost_scope() {
        use crate::scope::{Frame, enter};

        assert!(UsageRecorder::current().is_none());
        let outer_slots = RefCell::new(Slots::default());
        let outer = Frame {
            metered: true,
            customer: None,
            slots: &outer_slots,
        };
        let scope = enter(&outer);
        let a = UsageRecorder::current().unwrap();
        a.add("tokens", 3);
        {
            let inner_slots = RefCell::new(Slots::default());
            let inner = Frame {
                metered: false,
                customer: None,
                slots: &inner_slots,
            };
            let _s = enter(&inner);
            let b = UsageRecorder::current().unwrap();
            assert!(!b.is_attached());
            b.add("tokens", 100);
            assert!(inner_slots.borrow().first.is_none());
            drop(b);
        }
        let c = UsageRecorder::current().unwrap();
        c.add("tokens", 4);
        drop(scope);
        assert!(UsageRecorder::current().is_none());
        let mut slots = outer_slots.into_inner();
        assert_eq!(slots.iter().count(), 2);
        assert_eq!(
            with_reported(None, &slots, |r| r.unwrap().get("tokens")),
            Some(7)
        );
        let mut ext = ReportedUsage::new();
        ext.add("tokens", 10);
        assert_eq!(
            with_reported(Some(ext), &slots, |r| r.unwrap().get("tokens")),
            Some(17)
        );
        // Recorders still held: not recycled.
        assert!(!slots.all_dropped());
        drop((a, c));
        assert!(slots.all_dropped());
        let pooled = POOL.with(|p| p.borrow().len());
        slots.recycle();
        assert_eq!(POOL.with(|p| p.borrow().len()), pooled + 2);
        // A recycled slot comes back empty.
        let again = fresh_slot();
        assert!(again.lock().unwrap().is_empty());
    }
}
