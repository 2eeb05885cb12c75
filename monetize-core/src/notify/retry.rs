//! [`RetryPolicy`]: how a channel's failed deliveries are retried, and whether a channel
//! that fails for good is disabled.
//!
//! Retries are scheduled, not slept: the channel's worker moves on to the next
//! notification and a timer puts the retry back on the channel's queue when it is due
//! (tokio time, so tests run them with `tokio::time::pause`). Pending retries live in
//! memory only: a restart forgets them (the notification's dedup mark stays, so it is
//! not sent again in its period).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How a channel's failed deliveries are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryPolicy {
    /// Exponential backoff with jitter (`backon`): the first retry after `min`, doubled
    /// each time up to `max`, at most `times` retries. The dispatcher's default, from
    /// [`NotifyConfig`](super::NotifyConfig)'s `max_retries`, `retry_min_ms` and
    /// `retry_max_ms`.
    Exponential {
        /// Retries after the first attempt.
        times: usize,
        /// The first delay.
        min: Duration,
        /// The longest delay.
        max: Duration,
    },
    /// An explicit list of delays between attempts, each moved at random by up to
    /// `jitter_percent` % either way.
    Schedule {
        /// The delay before each retry, in order.
        delays: Vec<Duration>,
        /// Jitter, in percent of each delay (0–100).
        jitter_percent: u8,
        /// When a notification fails for good (a permanent answer, or the schedule is
        /// used up), the channel is disabled: nothing more is sent to it until
        /// [`Dispatcher::enable`](super::Dispatcher::enable) or a restart.
        disable_on_failure: bool,
    },
}

impl RetryPolicy {
    /// Exponential backoff (see [`RetryPolicy::Exponential`]).
    pub fn exponential(times: usize, min: Duration, max: Duration) -> Self {
        Self::Exponential { times, min, max }
    }

    /// An explicit schedule, 10 % jitter, the channel kept enabled.
    pub fn schedule(delays: impl IntoIterator<Item = Duration>) -> Self {
        Self::Schedule {
            delays: delays.into_iter().collect(),
            jitter_percent: 10,
            disable_on_failure: false,
        }
    }

    /// The Standard Webhooks sender schedule: immediately, then after 5 s, 5 min, 30 min,
    /// 2 h, 5 h, 10 h, 14 h, 20 h and 24 h (10 % jitter); then the endpoint is disabled.
    pub fn standard_webhooks() -> Self {
        const M: u64 = 60;
        const H: u64 = 3600;
        Self::Schedule {
            delays: [
                5,
                5 * M,
                30 * M,
                2 * H,
                5 * H,
                10 * H,
                14 * H,
                20 * H,
                24 * H,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
            jitter_percent: 10,
            disable_on_failure: true,
        }
    }

    /// The same schedule, disabling the channel (or not) when a notification fails for
    /// good. An exponential policy is returned unchanged: it never disables.
    pub fn disable_on_failure(self, disable: bool) -> Self {
        match self {
            Self::Schedule {
                delays,
                jitter_percent,
                ..
            } => Self::Schedule {
                delays,
                jitter_percent,
                disable_on_failure: disable,
            },
            other => other,
        }
    }

    /// Whether a notification failing for good disables the channel.
    pub fn disables(&self) -> bool {
        matches!(
            self,
            Self::Schedule {
                disable_on_failure: true,
                ..
            }
        )
    }

    /// The delays of one notification's retries, jittered, in order.
    pub(crate) fn delays(&self) -> Delays {
        match self {
            Self::Exponential { times, min, max } => Delays(Box::new(
                ExponentialBuilder::default()
                    .with_min_delay(*min)
                    .with_max_delay(*max)
                    .with_max_times(*times)
                    .with_jitter()
                    .build(),
            )),
            Self::Schedule {
                delays,
                jitter_percent,
                ..
            } => {
                let share = f64::from((*jitter_percent).min(100)) / 100.0;
                Delays(Box::new(delays.clone().into_iter().map(move |d| {
                    if share == 0.0 {
                        return d;
                    }
                    d.mul_f64(rand::random_range(1.0 - share..=1.0 + share))
                })))
            }
        }
    }
}

/// The remaining retry delays of one notification.
pub(crate) struct Delays(Box<dyn Iterator<Item = Duration> + Send + Sync>);

impl Delays {
    /// The next delay; `None` when the retries are used up.
    pub(crate) fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_schedule_is_jittered_within_ten_percent_and_ends() {
        let p = RetryPolicy::standard_webhooks();
        assert!(p.disables());
        let base = [
            5, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 86_400u64,
        ];
        for _ in 0..20 {
            let mut d = p.delays();
            for b in base {
                let got = d.next().unwrap().as_secs_f64();
                let b = b as f64;
                assert!(got >= b * 0.9 && got <= b * 1.1, "{got} for {b}");
            }
            assert_eq!(d.next(), None);
        }
    }

    #[test]
    fn exponential_retries_are_counted_and_bounded() {
        let p = RetryPolicy::exponential(3, Duration::from_millis(10), Duration::from_millis(25));
        assert!(!p.disables());
        assert!(!p.clone().disable_on_failure(true).disables());
        let mut d = p.delays();
        for _ in 0..3 {
            // backon adds up to one more delay of jitter.
            assert!(d.next().unwrap() <= Duration::from_millis(50));
        }
        assert_eq!(d.next(), None);
        let s = RetryPolicy::schedule([Duration::from_secs(1)]);
        assert!(!s.disables());
        assert!(s.disable_on_failure(true).disables());
    }
}
