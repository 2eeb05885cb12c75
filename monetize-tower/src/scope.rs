//! The request being served on this thread: which customer, and whether it is metered.
//!
//! While the layer polls its inner service's response future it marks, on the running
//! thread, the request being served (like a task-local): a pointer to a [`Frame`] on the
//! stack of that poll. Extractors and handlers read it through [`current_customer`] and
//! [`UsageRecorder::current`](crate::UsageRecorder::current). Marking costs no
//! allocation, no reference count and no lock.

use std::cell::{Cell, RefCell};
use std::ptr;

use monetize_core::CustomerHandle;

use crate::slots::Slots;

/// The request being served, on the stack of the layer's poll.
pub(crate) struct Frame<'a> {
    /// Whether the request is metered (adds to a recorder count).
    pub(crate) metered: bool,
    /// The identified customer (none for anonymous requests).
    pub(crate) customer: Option<&'a CustomerHandle>,
    /// Where recorders taken during the poll are attached.
    pub(crate) slots: &'a RefCell<Slots>,
}

thread_local! {
    /// The innermost [`Frame`] being polled on this thread, or null.
    static CURRENT: Cell<*const ()> = const { Cell::new(ptr::null()) };
}

/// Runs `f` with `frame` marked as the request being served on this thread, then
/// restores the outer mark, also when `f` unwinds (in the manner of `scoped-tls`, whose
/// keys take only `'static` types). The frame is borrowed for the whole call and the mark
/// is restored before `set` returns, so no safe caller can leave it pointing at a frame
/// that is gone.
#[inline]
pub(crate) fn set<R>(frame: &Frame<'_>, f: impl FnOnce() -> R) -> R {
    /// Restores the outer mark when dropped: at the end of `set`, or while unwinding.
    struct Restore(*const ());
    impl Drop for Restore {
        #[inline]
        fn drop(&mut self) {
            let _ = CURRENT.try_with(|c| c.set(self.0));
        }
    }
    let p = ptr::from_ref(frame).cast::<()>();
    let _restore = Restore(CURRENT.with(|c| c.replace(p)));
    f()
}

/// Runs `f` with the request being served on this thread, if any.
#[inline]
pub(crate) fn with_current<T>(f: impl for<'x> FnOnce(Option<&'x Frame<'x>>) -> T) -> T {
    let p = CURRENT.try_with(Cell::get).unwrap_or(ptr::null());
    if p.is_null() {
        return f(None);
    }
    // SAFETY: a non-null `CURRENT` was set by a call of `set` that is still running on
    // this thread below us, from a `&Frame` that call borrows for its whole length (it
    // restores `CURRENT` before it returns, also when unwinding). So the frame is alive for the whole call of `f`, which cannot keep
    // the reference (`T` does not depend on `'x`). Frames are only read through shared
    // references (their slots through a `RefCell`). Checked: `scripts/memcheck` runs this
    // module's tests and the service tests whose handlers read the frame under valgrind.
    f(Some(unsafe { &*p.cast::<Frame<'_>>() }))
}

/// The customer of the request being served: the identified customer's handle, while the
/// monetize layer polls its inner service on this thread.
///
/// This is what `monetize-axum`'s `Customer` extractor reads. It answers inside the inner
/// service's response future (where axum runs extractors and handlers, and anything they
/// await directly), for governed, metered and exempt requests alike. It is `None` outside a
/// monetize layer, for anonymous requests, in the inner service's `call`, and in tasks the
/// handler spawns (pass the handle along instead). For inner services that run elsewhere
/// (behind a `Buffer`, in another task), have the layer also put the handle into the
/// request extensions with
/// [`MonetizeLayer::customer_extension`](crate::MonetizeLayer::customer_extension).
pub fn current_customer() -> Option<CustomerHandle> {
    with_current(|f| f?.customer.cloned())
}

/// Whether the request being served on this thread is metered and a usage recorder of it
/// is still alive (moved into a streaming body or another task): it may report more
/// after the response head.
pub(crate) fn recorders_alive() -> bool {
    with_current(|f| f.is_some_and(|f| f.metered && !f.slots.borrow().all_dropped()))
}

#[cfg(test)]
mod tests {
    use monetize_core::Engine;

    use super::*;

    #[test]
    fn the_innermost_scope_wins_and_unwinding_restores() {
        let engine = Engine::for_tests(&["calls"]);
        let a = engine.resolve("a").unwrap();
        let b = engine.resolve("b").unwrap();
        let slots = RefCell::new(Slots::default());
        assert!(current_customer().is_none());
        let outer = Frame {
            metered: true,
            customer: Some(&a),
            slots: &slots,
        };
        set(&outer, || {
            assert_eq!(current_customer().unwrap().id().as_str(), "a");
            let inner = Frame {
                metered: false,
                customer: Some(&b),
                slots: &slots,
            };
            set(&inner, || {
                assert_eq!(current_customer().unwrap().id().as_str(), "b");
            });
            let anonymous = Frame {
                metered: false,
                customer: None,
                slots: &slots,
            };
            set(&anonymous, || assert!(current_customer().is_none()));
            assert_eq!(current_customer().unwrap().id().as_str(), "a");
            let r = std::panic::catch_unwind(|| {
                let slots = RefCell::new(Slots::default());
                let inner = Frame {
                    metered: true,
                    customer: None,
                    slots: &slots,
                };
                set(&inner, || panic!("in the handler"));
            });
            assert!(r.is_err());
            assert_eq!(current_customer().unwrap().id().as_str(), "a");
        });
        assert!(current_customer().is_none());
    }
}
