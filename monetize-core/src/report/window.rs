//! Report windows: fixed, aligned slices of unix time that usage is grouped into before it
//! is delivered.
//!
//! A window of length `secs` starts at a multiple of `secs` (unix seconds), so every
//! instance, and every restart of one instance, puts the same second in the same window.
//! A window is *closed* at `now` when its end is at or before `now`: no checkpoint taken
//! from then on merges into it (checkpoints merge into the window of their own time).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One report window: `[start, start + secs)` in unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReportWindow {
    start: u64,
    secs: u64,
}

impl ReportWindow {
    /// The window of length `secs` that contains the unix time `unix`.
    ///
    /// A length of 0 is taken as 1 second.
    pub fn containing(unix: u64, secs: u64) -> Self {
        let secs = secs.max(1);
        Self {
            start: window_start(unix, secs),
            secs,
        }
    }

    /// The window that starts at `start` and lasts `secs` (0 is taken as 1). `start` is
    /// used as given: pass an aligned value (see [`window_start`]).
    pub fn new(start: u64, secs: u64) -> Self {
        Self {
            start,
            secs: secs.max(1),
        }
    }

    /// Start of the window, unix seconds (inclusive).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length of the window, seconds (at least 1).
    pub fn secs(&self) -> u64 {
        self.secs
    }

    /// End of the window, unix seconds (exclusive).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.secs)
    }

    /// Whether the window is over at `now_unix`: its end is at or before `now_unix`.
    pub fn is_closed(&self, now_unix: u64) -> bool {
        self.end() <= now_unix
    }

    /// Whether `unix` falls inside the window.
    pub fn contains(&self, unix: u64) -> bool {
        unix >= self.start && unix < self.end()
    }

    /// The window right after this one.
    pub fn next(&self) -> Self {
        Self {
            start: self.end(),
            secs: self.secs,
        }
    }
}

/// Start of the window of length `secs` (0 is taken as 1) containing the unix time `unix`.
pub fn window_start(unix: u64, secs: u64) -> u64 {
    let secs = secs.max(1);
    unix - unix % secs
}

/// Whether the window `[start, start + secs)` is closed at `now_unix`.
pub fn is_closed(start: u64, secs: u64, now_unix: u64) -> bool {
    ReportWindow::new(start, secs).is_closed(now_unix)
}

/// The current unix time in whole seconds (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned() {
        let w = ReportWindow::containing(125, 60);
        assert_eq!(w.start(), 120);
        assert_eq!(w.end(), 180);
        assert!(w.contains(120));
        assert!(w.contains(179));
        assert!(!w.contains(180));
        assert_eq!(w.next().start(), 180);
        assert_eq!(window_start(59, 60), 0);
        assert_eq!(window_start(60, 60), 60);
    }

    #[test]
    fn closed_when_end_reached() {
        let w = ReportWindow::containing(125, 60);
        assert!(!w.is_closed(125));
        assert!(!w.is_closed(179));
        assert!(w.is_closed(180));
        assert!(is_closed(120, 60, 181));
        assert!(!is_closed(120, 60, 120));
    }

    #[test]
    fn zero_length_is_one_second() {
        let w = ReportWindow::containing(7, 0);
        assert_eq!((w.start(), w.secs(), w.end()), (7, 1, 8));
        assert_eq!(window_start(7, 0), 7);
    }

    #[test]
    fn far_future_does_not_overflow() {
        let w = ReportWindow::containing(u64::MAX, 60);
        assert_eq!(w.end(), u64::MAX);
        assert!(w.is_closed(u64::MAX));
    }

    #[test]
    fn now_is_after_2020() {
        assert!(unix_now() > 1_577_836_800);
    }
}
