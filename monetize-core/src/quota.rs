//! Quotas: a limit on a meter's usage per period, and the [`Calendar`] that says where
//! periods begin and end.
//!
//! Minutes and hours are fixed lengths of time. Days and months are calendar days and
//! months in the configured time zone (`time_zone`, UTC by default; daylight-saving days
//! are 23 or 25 hours long). A billing cycle is a month starting at a customer's anchor
//! (for example the start of their subscription: anchored on the 31st, cycles start on
//! the last day of shorter months), and the calendar month for a customer without one.
//! Calendar arithmetic is `jiff`'s.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime};

use crate::config::Period;

/// A compiled quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    pub(crate) limit: u64,
    pub(crate) period: Period,
    /// The usages at which warning events fire, ascending; unused slots are `u64::MAX`.
    pub(crate) warn_at: [u64; 4],
}

/// Where periods begin and end: the configured time zone.
#[derive(Clone, Debug)]
pub(crate) struct Calendar {
    name: Box<str>,
    tz: TimeZone,
}

impl PartialEq for Calendar {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// One period: its number (increasing with time), and its bounds in unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) number: i64,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

impl Default for Calendar {
    fn default() -> Self {
        Self {
            name: "UTC".into(),
            tz: TimeZone::UTC,
        }
    }
}

impl Calendar {
    /// The calendar of an IANA time zone (`Europe/Paris`, `America/New_York`, `UTC`);
    /// `None` when the name is unknown.
    pub(crate) fn new(name: &str) -> Option<Calendar> {
        Some(Calendar {
            name: name.into(),
            tz: TimeZone::get(name).ok()?,
        })
    }

    /// The time zone's name, as configured.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn zoned(&self, unix: u64) -> Option<ZonedDateTime> {
        let ts = Timestamp::from_second(i64::try_from(unix).ok()?).ok()?;
        Some(ts.to_zoned_datetime(self.tz.clone()))
    }

    /// The period of kind `period` containing `unix` seconds. A billing cycle here is the
    /// calendar month (see [`Calendar::cycle`] for an anchored one). Times past the
    /// calendar's range (year 9999) fall in one last period that never ends.
    pub(crate) fn bounds(&self, period: Period, unix: u64) -> Bounds {
        let fixed = |len: u64| Bounds {
            number: (unix / len) as i64,
            start: unix / len * len,
            end: (unix / len + 1) * len,
        };
        match period {
            Period::Minute => fixed(60),
            Period::Hour => fixed(3600),
            _ => self.calendar_bounds(period, unix).unwrap_or(Bounds {
                number: i64::MAX,
                start: unix,
                end: u64::MAX,
            }),
        }
    }

    fn calendar_bounds(&self, period: Period, unix: u64) -> Option<Bounds> {
        let z = self.zoned(unix)?;
        let month_number = i64::from(z.year()) * 12 + i64::from(z.month()) - 1;
        let (number, start, end) = if period == Period::Day {
            let start = z.start_of_day().ok()?;
            let end = start.checked_add(1.day()).ok()?.start_of_day().ok()?;
            (month_number * 32 + i64::from(z.day()), start, end)
        } else {
            let start = z.first_of_month().ok()?.start_of_day().ok()?;
            let end = start.checked_add(1.month()).ok()?.start_of_day().ok()?;
            (month_number, start, end)
        };
        Some(Bounds {
            number,
            start: u64::try_from(start.timestamp().as_second()).ok()?,
            end: u64::try_from(end.timestamp().as_second()).ok()?,
        })
    }

    /// The billing cycle containing `unix` for a customer anchored at `anchor` (unix
    /// seconds): cycle `n` starts `n` months after the anchor (in this time zone; a day
    /// the month lacks becomes its last day), and cycles before the anchor count back.
    pub(crate) fn cycle(&self, anchor: u64, unix: u64) -> Bounds {
        self.cycle_bounds(anchor, unix)
            .unwrap_or_else(|| self.bounds(Period::Month, unix))
    }

    fn cycle_bounds(&self, anchor: u64, unix: u64) -> Option<Bounds> {
        let (a, z) = (self.zoned(anchor)?, self.zoned(unix)?);
        let months = |z: &ZonedDateTime| i64::from(z.year()) * 12 + i64::from(z.month());
        let start_of = |n: i64| a.checked_add(n.months()).ok();
        // An estimate from the calendar months, corrected by at most one either way.
        let mut n = months(&z) - months(&a);
        while start_of(n)?.timestamp() > z.timestamp() {
            n -= 1;
        }
        while start_of(n + 1)?.timestamp() <= z.timestamp() {
            n += 1;
        }
        Some(Bounds {
            number: n,
            start: u64::try_from(start_of(n)?.timestamp().as_second()).ok()?,
            end: u64::try_from(start_of(n + 1)?.timestamp().as_second()).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> Calendar {
        Calendar::default()
    }

    #[test]
    fn utc_months() {
        // 2026-11-25T10:00:00Z
        let t = 1_795_600_800;
        let b = utc().bounds(Period::Month, t);
        assert_eq!(b.start, 1_793_491_200); // 2026-11-01
        assert_eq!(b.end, 1_796_083_200); // 2026-12-01
        // December rolls into the next year
        let dec = utc().bounds(Period::Month, 1_796_083_200 + 86_400);
        assert_eq!(dec.end, 1_798_761_600); // 2027-01-01
        assert_eq!(dec.number, b.number + 1);
        assert_eq!(utc().bounds(Period::Hour, 7_199).start, 3_600);
    }

    #[test]
    fn short_periods() {
        assert_eq!(utc().bounds(Period::Minute, 61).end, 120);
        assert_eq!(utc().bounds(Period::Hour, 3600).end, 7200);
        assert_eq!(utc().bounds(Period::Day, 0).end, 86_400);
        assert_eq!(
            utc().bounds(Period::Day, 86_399).number + 1,
            utc().bounds(Period::Day, 86_400).number
        );
    }

    #[test]
    fn months_and_days_follow_the_time_zone() {
        let tokyo = Calendar::new("Asia/Tokyo").expect("a known zone");
        // 2026-11-30T15:00:00Z is 2026-12-01T00:00 in Tokyo (UTC+9).
        let t = 1_796_050_800;
        assert_eq!(tokyo.bounds(Period::Month, t).start, t);
        assert_eq!(tokyo.bounds(Period::Month, t - 1).end, t);
        assert_eq!(
            tokyo.bounds(Period::Month, t - 1).number + 1,
            tokyo.bounds(Period::Month, t).number
        );
        assert_eq!(utc().bounds(Period::Month, t).end, t + 9 * 3600);
        // A daylight-saving day in Paris is 23 hours long (2026-03-29).
        let paris = Calendar::new("Europe/Paris").expect("a known zone");
        let b = paris.bounds(Period::Day, 1_774_785_600); // 2026-03-29T12:00Z
        assert_eq!(b.end - b.start, 23 * 3600);
        assert!(Calendar::new("Mars/Olympus_Mons").is_none());
    }

    #[test]
    fn billing_cycles_start_on_the_anchor_day() {
        // Anchored 2026-01-31T12:00:00Z: cycles start Feb 28, Mar 31, Apr 30 at 12:00.
        let anchor = 1_769_860_800;
        let cal = utc();
        let feb28 = 1_772_280_000;
        let c = cal.cycle(anchor, feb28 - 1);
        assert_eq!((c.number, c.start, c.end), (0, anchor, feb28));
        let c = cal.cycle(anchor, feb28);
        assert_eq!((c.number, c.start), (1, feb28));
        let mar31 = 1_774_958_400;
        assert_eq!(c.end, mar31);
        assert_eq!(cal.cycle(anchor, mar31 + 5).number, 2);
        // Before the anchor: earlier cycles, still ordered.
        assert_eq!(cal.cycle(anchor, anchor - 1).number, -1);
    }
}
