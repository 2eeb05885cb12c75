//! Quotas: a limit on a meter's usage per calendar period (UTC).

use crate::config::Period;

/// A compiled quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    pub(crate) limit: u64,
    pub(crate) period: Period,
    /// The usage at which the warning event fires.
    pub(crate) warn_at: u64,
}

/// The number of the period containing `unix` seconds (minutes, hours or days since the
/// epoch; months since January 1970).
pub(crate) fn period_number(period: Period, unix: u64) -> u64 {
    match period {
        Period::Minute => unix / 60,
        Period::Hour => unix / 3600,
        Period::Day => unix / 86_400,
        Period::Month => {
            let (y, m, _) = civil_from_days((unix / 86_400) as i64);
            (y as u64 - 1970) * 12 + (m as u64 - 1)
        }
    }
}

/// Unix seconds at which the period containing `unix` began.
pub(crate) fn period_start(period: Period, unix: u64) -> u64 {
    match period {
        Period::Minute => unix / 60 * 60,
        Period::Hour => unix / 3600 * 3600,
        Period::Day => unix / 86_400 * 86_400,
        Period::Month => {
            let (y, m, _) = civil_from_days((unix / 86_400) as i64);
            days_from_civil(y, m, 1) as u64 * 86_400
        }
    }
}

/// Unix seconds at which the period containing `unix` ends.
pub(crate) fn period_end(period: Period, unix: u64) -> u64 {
    match period {
        Period::Minute => (unix / 60 + 1) * 60,
        Period::Hour => (unix / 3600 + 1) * 3600,
        Period::Day => (unix / 86_400 + 1) * 86_400,
        Period::Month => {
            let (y, m, _) = civil_from_days((unix / 86_400) as i64);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(ny, nm, 1) as u64 * 86_400
        }
    }
}

/// Howard Hinnant's days-to-civil: (year, month 1-12, day 1-31) of a day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day number of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        // 2026-11-25T10:00:00Z
        let t = 1_795_600_800;
        assert_eq!(civil_from_days(t as i64 / 86_400), (2026, 11, 25));
        assert_eq!(period_end(Period::Month, t), 1_796_083_200); // 2026-12-01
        assert_eq!(period_number(Period::Month, t), 56 * 12 + 10);
        assert_eq!(period_start(Period::Month, t), 1_793_491_200); // 2026-11-01
        assert_eq!(period_start(Period::Hour, 7_199), 3_600);
        // December rolls into the next year
        let dec = 1_796_083_200 + 86_400;
        assert_eq!(period_end(Period::Month, dec), 1_798_761_600); // 2027-01-01
        assert_eq!(
            days_from_civil(2024, 2, 29) + 1,
            days_from_civil(2024, 3, 1)
        );
    }

    #[test]
    fn short_periods() {
        assert_eq!(period_end(Period::Minute, 61), 120);
        assert_eq!(period_end(Period::Hour, 3600), 7200);
        assert_eq!(period_end(Period::Day, 0), 86_400);
        assert_eq!(period_number(Period::Day, 86_399), 0);
    }
}
