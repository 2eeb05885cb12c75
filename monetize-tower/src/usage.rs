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
//! attaches one small shared slot (reused from a per-thread pool) to that request, which
//! all its recorders share.
//!
//! Recorders decide when the exchange is metered: if every recorder of a request has
//! been dropped when its response head arrives (the handler returned, taking its `Usage`
//! with it), the exchange is metered then; if one is still alive (moved into a streaming
//! body or another task), metering waits for the end of the response body, and what is
//! added after that is not metered.

use std::borrow::Cow;
use std::fmt;

use monetize_core::ReportedUsage;

use crate::scope::with_current;
use crate::slots::{Slot, lock};

/// Adds handler-reported quantities to the request being served.
///
/// Take one with [`UsageRecorder::current`] from code that runs inside the monetized
/// service (the handler, or anything it awaits); it may then be moved anywhere, but only
/// what was added before the response body ends is metered. Holding it past the
/// response head (for example in a streaming body) makes the layer wait for the end of
/// the body to meter; dropping it when the handler returns lets the layer meter at once.
/// All recorders of one request (clones, and every [`current`](UsageRecorder::current)
/// taken for it) add to the same set.
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
            let slot = frame.metered.then(|| frame.slots.borrow_mut().attach());
            Some(UsageRecorder { slot })
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
    #[inline]
    pub fn add(&self, name: impl Into<Cow<'static, str>>, quantity: u64) {
        if let Some(slot) = &self.slot {
            lock(slot).add(name, quantity);
        }
    }

    /// What the request's recorders added so far (empty for a detached recorder).
    pub fn snapshot(&self) -> ReportedUsage {
        self.slot
            .as_ref()
            .map_or_else(ReportedUsage::new, |s| lock(s).clone())
    }
}

impl fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("attached", &self.is_attached())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::slots::{Slots, fresh_slot, pooled, with_reported};

    #[test]
    fn recorders_attach_to_the_innermost_scope() {
        use crate::scope::{Frame, set};

        assert!(UsageRecorder::current().is_none());
        let outer_slots = RefCell::new(Slots::default());
        let outer = Frame {
            metered: true,
            customer: None,
            slots: &outer_slots,
        };
        let (a, c) = set(&outer, || {
            let a = UsageRecorder::current().unwrap();
            a.add("tokens", 3);
            let inner_slots = RefCell::new(Slots::default());
            let inner = Frame {
                metered: false,
                customer: None,
                slots: &inner_slots,
            };
            set(&inner, || {
                let b = UsageRecorder::current().unwrap();
                assert!(!b.is_attached());
                b.add("tokens", 100);
                assert!(inner_slots.borrow().0.is_none());
                assert!(inner_slots.borrow().all_dropped());
                drop(b);
            });
            let c = UsageRecorder::current().unwrap();
            c.add("tokens", 4);
            (a, c)
        });
        assert!(UsageRecorder::current().is_none());
        let slots = outer_slots.into_inner();
        // One slot for the request, shared by its recorders.
        assert_eq!(a.snapshot().get("tokens"), Some(7));
        assert_eq!(c.snapshot().get("tokens"), Some(7));
        assert!(!slots.all_dropped());
        drop(a);
        assert!(!slots.all_dropped());
        let d = c.clone();
        drop(c);
        assert!(!slots.all_dropped(), "a clone is a recorder too");
        drop(d);
        assert!(slots.all_dropped());
        let mut ext = ReportedUsage::new();
        ext.add("tokens", 10);
        let before = pooled();
        assert_eq!(
            with_reported(Some(ext), slots, |r| r.unwrap().get("tokens")),
            Some(17)
        );
        assert_eq!(pooled(), before + 1, "recycled");
        // A recycled slot comes back empty.
        let again = fresh_slot();
        assert!(lock(&again).is_empty());
        assert_eq!(pooled(), before);
    }

    #[test]
    fn a_slot_still_held_is_read_but_not_recycled() {
        let mut slots = Slots::default();
        assert!(slots.all_dropped());
        assert!(with_reported(None, Slots::default(), |r| r.is_none()));
        let rec = UsageRecorder {
            slot: Some(slots.attach()),
        };
        assert!(
            with_reported(None, Slots(slots.0.clone()), |r| r.is_none()),
            "nothing added"
        );
        rec.add("tokens", 2);
        let before = pooled();
        assert_eq!(
            with_reported(None, slots, |r| r.unwrap().get("tokens")),
            Some(2)
        );
        assert_eq!(pooled(), before, "a recorder still holds it");
        // Adds after that are not read by anyone, and do not fail.
        rec.add("tokens", 5);
        assert_eq!(rec.snapshot().get("tokens"), Some(7));
        let detached = UsageRecorder::detached();
        detached.add("tokens", 1);
        assert!(detached.snapshot().is_empty());
    }

    #[test]
    fn recorders_add_from_several_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<UsageRecorder>();

        let mut slots = Slots::default();
        let rec = UsageRecorder {
            slot: Some(slots.attach()),
        };
        let (threads, adds) = if cfg!(miri) { (3, 20) } else { (8, 2_000) };
        std::thread::scope(|s| {
            for t in 0..threads {
                let rec = rec.clone();
                s.spawn(move || {
                    for i in 0..adds {
                        rec.add("tokens", 1);
                        if i % 2 == t % 2 {
                            rec.add(format!("rows{}", t % 2), 2);
                        }
                    }
                });
            }
        });
        drop(rec);
        assert!(slots.all_dropped());
        let (tokens, rows) = with_reported(None, slots, |r| {
            let r = r.unwrap();
            (
                r.get("tokens"),
                r.get("rows0").unwrap() + r.get("rows1").unwrap(),
            )
        });
        assert_eq!(tokens, Some(threads * adds));
        assert_eq!(rows, threads * adds);
    }
}
