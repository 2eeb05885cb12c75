//! Where the engine keeps its compiled configuration: read through `arc-swap` on the
//! request path, replaced by [`crate::Engine::reload`].

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::validate::Compiled;

/// How many replaced configurations stay available to requests that started under them.
/// Older ones are freed: reloading every second for a day keeps at most this many.
pub(crate) const RETIRED_KEPT: usize = 16;

/// The current compiled configuration, and the few it replaced last.
///
/// A request meters its response under the configuration its request half used (its
/// [`Compiled::generation`]), as long as that one is among the last [`RETIRED_KEPT`]
/// replaced; a request that outlives more reloads than that finishes under the current
/// configuration. Both have the same meters in the same order (a reload cannot change
/// meters), so its usage still lands in the right cells; only a changed filter or value
/// is read from the newer configuration.
pub(crate) struct ConfigCell {
    current: ArcSwap<Compiled>,
    retired: Mutex<VecDeque<Arc<Compiled>>>,
}

/// A configuration read from a [`ConfigCell`]: the current one, or one it replaced.
pub(crate) enum ConfigRef {
    Current(Guard<Arc<Compiled>>),
    Retired(Arc<Compiled>),
}

impl Deref for ConfigRef {
    type Target = Compiled;

    #[inline]
    fn deref(&self) -> &Compiled {
        match self {
            ConfigRef::Current(g) => g,
            ConfigRef::Retired(a) => a,
        }
    }
}

impl ConfigCell {
    pub(crate) fn new(mut c: Compiled) -> Self {
        c.generation = 0;
        Self {
            current: ArcSwap::from_pointee(c),
            retired: Mutex::new(VecDeque::new()),
        }
    }

    /// The current configuration.
    #[inline]
    pub(crate) fn load(&self) -> Guard<Arc<Compiled>> {
        self.current.load()
    }

    /// Makes `c` current; readers see either the old or the new configuration. Its
    /// [`Compiled::generation`] is one more than the one it replaces. The replaced one is
    /// kept for requests in flight, and the oldest kept beyond [`RETIRED_KEPT`] is freed.
    pub(crate) fn store(&self, mut c: Compiled) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        c.generation = old.generation.wrapping_add(1);
        self.current.store(Arc::new(c));
        retired.push_back(old);
        while retired.len() > RETIRED_KEPT {
            retired.pop_front();
        }
    }

    /// The configuration of `generation`: the current one if it is, a kept replaced one,
    /// or the current one when that generation was replaced too long ago to be kept.
    /// `None` for a generation this cell never stored (a match made by another engine).
    #[inline]
    pub(crate) fn at(&self, generation: u32) -> Option<ConfigRef> {
        let cur = self.load();
        if cur.generation == generation {
            return Some(ConfigRef::Current(cur));
        }
        if generation > cur.generation {
            return None;
        }
        Some(self.past(generation).unwrap_or(ConfigRef::Current(cur)))
    }

    #[cold]
    fn past(&self, generation: u32) -> Option<ConfigRef> {
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired
            .iter()
            .find(|c| c.generation == generation)
            .map(|c| ConfigRef::Retired(Arc::clone(c)))
    }

    /// The current configuration, owned (for tests).
    #[cfg(test)]
    pub(crate) fn load_full_for_tests(&self) -> Arc<Compiled> {
        self.current.load_full()
    }

    /// How many replaced configurations are kept (for tests).
    #[cfg(test)]
    pub(crate) fn retired(&self) -> usize {
        self.retired.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiled::validate::{Predicates, compile};
    use crate::config::Config;

    fn compiled() -> Compiled {
        compile(&Config::builder().build(), &Predicates::default()).unwrap()
    }

    /// Issue 15: reloading every second for a day does not grow memory: a replaced
    /// configuration is freed once [`RETIRED_KEPT`] newer ones replaced it.
    #[test]
    fn a_day_of_reloads_every_second_keeps_a_bounded_number_of_configs() {
        let cell = ConfigCell::new(compiled());
        let first = Arc::downgrade(&cell.load_full_for_tests());
        let mut recent = Vec::new();
        for i in 0..86_400u32 {
            cell.store(compiled());
            if i == 86_400 - 2 {
                recent.push(Arc::downgrade(&cell.load_full_for_tests()));
            }
            assert!(cell.retired() <= RETIRED_KEPT);
        }
        assert_eq!(cell.retired(), RETIRED_KEPT);
        assert!(
            first.upgrade().is_none(),
            "the first config was never freed"
        );
        assert!(
            recent[0].upgrade().is_some(),
            "a recent config was freed early"
        );
        assert_eq!(cell.load().generation, 86_400);
    }

    /// A request half's configuration is found while kept; one replaced too long ago
    /// finishes under the current one; a generation never stored is refused.
    #[test]
    fn a_generation_is_found_while_kept_then_falls_back_to_the_current_one() {
        let cell = ConfigCell::new(compiled());
        cell.store(compiled());
        assert_eq!(cell.at(0).map(|c| c.generation), Some(0));
        assert_eq!(cell.at(1).map(|c| c.generation), Some(1));
        assert!(cell.at(2).is_none());
        for _ in 0..RETIRED_KEPT {
            cell.store(compiled());
        }
        let current = cell.load().generation;
        assert_eq!(cell.at(0).map(|c| c.generation), Some(current));
        assert_eq!(cell.at(1).map(|c| c.generation), Some(1));
    }
}
