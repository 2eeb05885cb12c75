//! Quantities a handler reports for the current request (tokens used, rows scanned).

use std::borrow::Cow;

/// Handler-reported quantities, carried in response extensions to the metering layer.
///
/// Adding the same name twice sums the quantities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportedUsage {
    items: Vec<(Cow<'static, str>, u64)>,
}

impl ReportedUsage {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `quantity` under `name` (summed with earlier adds of the same name).
    #[inline]
    pub fn add(&mut self, name: impl Into<Cow<'static, str>>, quantity: u64) {
        let name = name.into();
        match self.items.iter_mut().find(|(n, _)| same(n, &name)) {
            Some((_, q)) => *q = q.saturating_add(quantity),
            None => self.items.push((name, quantity)),
        }
    }

    /// The quantity reported under `name`.
    #[inline]
    pub fn get(&self, name: &str) -> Option<u64> {
        self.items
            .iter()
            .find(|(n, _)| same(n, name))
            .map(|(_, q)| *q)
    }

    /// Removes every quantity, keeping the allocation for reuse.
    #[inline]
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Whether nothing was reported.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All reported quantities.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.items.iter().map(|(n, q)| (n.as_ref(), *q))
    }

    /// Adds everything from `other`.
    pub fn extend_from(&mut self, other: &ReportedUsage) {
        for (n, q) in &other.items {
            self.add(n.clone(), *q);
        }
    }
}

/// Whether two names are equal. Names are short: a byte loop beats a `memcmp` call.
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_same_name() {
        let mut r = ReportedUsage::new();
        r.add("tokens", 5);
        r.add("tokens", 7);
        r.add(String::from("rows"), 1);
        assert_eq!(r.get("tokens"), Some(12));
        assert_eq!(r.get("rows"), Some(1));
        assert_eq!(r.get("x"), None);
        r.clear();
        assert!(r.is_empty());
    }
}
