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
//! allocates one small shared slot and attaches it to that request.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex};

use monetize_core::ReportedUsage;

pub(crate) type Slot = Arc<Mutex<ReportedUsage>>;

struct Scope {
    /// Whether a layer is polling its inner service on this thread, and whether that
    /// request is metered.
    current: Option<bool>,
    /// Slots attached while a layer polls; each layer takes those attached during its poll.
    attached: Vec<Slot>,
}

thread_local! {
    static SCOPE: RefCell<Scope> = const {
        RefCell::new(Scope { current: None, attached: Vec::new() })
    };
}

/// Marks the request being polled on this thread until dropped.
pub(crate) struct Entered {
    prev: Option<bool>,
    mark: usize,
}

pub(crate) fn enter(metered: bool) -> Entered {
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let prev = s.current.replace(metered);
        Entered {
            prev,
            mark: s.attached.len(),
        }
    })
}

impl Entered {
    /// Ends the scope and moves the slots attached during it into `into`.
    pub(crate) fn exit(self, into: &mut Vec<Slot>) {
        let this = std::mem::ManuallyDrop::new(self);
        SCOPE.with(|s| {
            let mut s = s.borrow_mut();
            s.current = this.prev;
            if s.attached.len() > this.mark {
                into.extend(s.attached.drain(this.mark..));
            }
        });
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Unwinding out of the inner poll: restore the outer scope, forget our slots.
        let _ = SCOPE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                s.current = self.prev;
                s.attached.truncate(self.mark);
            }
        });
    }
}

/// Adds handler-reported quantities to the request being served.
///
/// Take one with [`UsageRecorder::current`] from code that runs inside the monetized
/// service (the handler, or anything it awaits); it may then be moved anywhere, but only
/// what was added before the response body ends is metered.
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
        SCOPE.with(|s| {
            let mut s = s.borrow_mut();
            match s.current? {
                false => Some(UsageRecorder { slot: None }),
                true => {
                    let slot = Slot::default();
                    s.attached.push(slot.clone());
                    Some(UsageRecorder { slot: Some(slot) })
                }
            }
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

/// Merges response-extension usage and recorder slots into one set, allocating only when
/// there is more than one source.
pub(crate) fn merge(from_response: Option<ReportedUsage>, slots: &[Slot]) -> Option<ReportedUsage> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_attach_to_the_innermost_scope() {
        assert!(UsageRecorder::current().is_none());
        let mut outer_slots = Vec::new();
        let outer = enter(true);
        let a = UsageRecorder::current().unwrap();
        a.add("tokens", 3);
        {
            let mut inner_slots = Vec::new();
            let inner = enter(false);
            let b = UsageRecorder::current().unwrap();
            assert!(!b.is_attached());
            b.add("tokens", 100);
            inner.exit(&mut inner_slots);
            assert!(inner_slots.is_empty());
        }
        let c = UsageRecorder::current().unwrap();
        c.add("tokens", 4);
        outer.exit(&mut outer_slots);
        assert!(UsageRecorder::current().is_none());
        assert_eq!(outer_slots.len(), 2);
        let merged = merge(None, &outer_slots).unwrap();
        assert_eq!(merged.get("tokens"), Some(7));
    }
}
