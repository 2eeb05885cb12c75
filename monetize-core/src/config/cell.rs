//! Where the engine keeps its compiled configuration: read with one atomic load on the
//! request path, replaced by [`crate::Engine::reload`].

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use super::validate::Compiled;

/// The current compiled configuration.
///
/// Every configuration ever stored stays alive until the cell is dropped, so a reference
/// handed out by [`ConfigCell::load`] never dangles. Reloads are operator actions (a few
/// KiB each), so keeping the old ones costs little and spares the request path the
/// reference counting a swap-and-free scheme needs (`arc-swap` costs ~60 instructions
/// a load; this costs one).
pub(crate) struct ConfigCell {
    current: AtomicPtr<Compiled>,
    kept: Mutex<Vec<Arc<Compiled>>>,
}

impl ConfigCell {
    pub(crate) fn new(c: Compiled) -> Self {
        let a = Arc::new(c);
        let p = Arc::as_ptr(&a).cast_mut();
        Self {
            current: AtomicPtr::new(p),
            kept: Mutex::new(vec![a]),
        }
    }

    /// The current configuration.
    #[inline]
    pub(crate) fn load(&self) -> &Compiled {
        // SAFETY: `current` only ever holds pointers obtained from `Arc::as_ptr` of an
        // `Arc` pushed into `kept` before the pointer was published (Release/Acquire).
        // `kept` only grows and is dropped together with `self`, so the pointee outlives
        // the returned reference, which borrows `self`. `Compiled` is only read through it
        // (its counters are atomics).
        unsafe { &*self.current.load(Ordering::Acquire) }
    }

    /// Makes `c` current; readers see either the old or the new configuration. Its
    /// [`Compiled::generation`] becomes its position among the configurations stored.
    pub(crate) fn store(&self, mut c: Compiled) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        c.generation = u32::try_from(kept.len()).unwrap_or(u32::MAX);
        let a = Arc::new(c);
        let p = Arc::as_ptr(&a).cast_mut();
        kept.push(a);
        self.current.store(p, Ordering::Release);
    }

    /// The configuration of `generation` (the current one if it is), or `None` if no
    /// configuration of that number was stored. Past generations are only asked for by
    /// requests that straddle a reload, so the lock here is taken rarely and briefly.
    #[inline]
    pub(crate) fn at(&self, generation: u32) -> Option<&Compiled> {
        let cur = self.load();
        if cur.generation == generation {
            return Some(cur);
        }
        self.past(generation)
    }

    #[cold]
    fn past(&self, generation: u32) -> Option<&Compiled> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let p = Arc::as_ptr(kept.get(generation as usize)?);
        // SAFETY: as in `load`: the `Arc` stays in `kept`, which only grows and lives as
        // long as `self`, so the pointee outlives the returned reference.
        Some(unsafe { &*p })
    }
}
