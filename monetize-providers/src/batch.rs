//! Sending a batch one record per call (APIs without a batch endpoint): keys deduplicated
//! within the batch, records of one customer and meter in order on one lane, lanes in
//! parallel, and a throttle gate shared by every call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use monetize_core::{ProviderError, RecordOutcome, UsageRecord};

/// Remembers until when the provider asked us to wait.
#[derive(Debug, Default)]
pub(crate) struct ThrottleGate {
    until: Mutex<Option<Instant>>,
}

impl ThrottleGate {
    /// `Err(Throttled)` while the provider's last throttle lasts.
    pub(crate) fn check(&self, provider: &str) -> Result<(), ProviderError> {
        let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
        match until {
            Some(t) if t > Instant::now() => Err(ProviderError::Throttled {
                retry_after: t - Instant::now(),
                message: format!("{provider} asked to wait; nothing sent"),
            }),
            _ => Ok(()),
        }
    }

    /// Notes a throttle answer.
    pub(crate) fn note(&self, e: &ProviderError) {
        if let ProviderError::Throttled { retry_after, .. } = e {
            let t = Instant::now() + *retry_after;
            let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
            *until = Some(until.map_or(t, |u| u.max(t)));
        }
    }
}

/// Indices of the first record of each idempotency key, and for every record the index
/// of the one carrying its key: one call never carries a key twice.
pub(crate) fn unique_keys(records: &[UsageRecord]) -> (Vec<usize>, Vec<usize>) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut unique = Vec::new();
    let owner = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            *first.entry(r.idempotency_key.as_str()).or_insert_with(|| {
                unique.push(i);
                i
            })
        })
        .collect();
    (unique, owner)
}

/// Sends every record with `send` (one call each) on up to `lanes` parallel lanes, the
/// records of one customer and meter on the same lane in order. A throttle stops every
/// lane. When no record got an answer, the most telling call error is returned; otherwise
/// records that failed or were not sent are `Retry`.
pub(crate) async fn per_record<'a, F, Fut>(
    provider: &str,
    records: &'a [UsageRecord],
    lanes: usize,
    gate: &ThrottleGate,
    send: F,
) -> Result<Vec<RecordOutcome>, ProviderError>
where
    F: Fn(&'a UsageRecord) -> Fut,
    Fut: Future<Output = Result<RecordOutcome, ProviderError>>,
{
    gate.check(provider)?;
    let (unique, owner) = unique_keys(records);
    let lanes = lanes.max(1);
    let mut lane_of: HashMap<(&str, &str), usize> = HashMap::new();
    let mut queues: Vec<Vec<usize>> = vec![Vec::new(); lanes];
    for &i in &unique {
        let r = &records[i];
        let next = lane_of.len() % lanes;
        let lane = *lane_of
            .entry((r.customer.as_str(), r.meter.as_str()))
            .or_insert(next);
        queues[lane].push(i);
    }
    let stop = AtomicBool::new(false);
    let send = &send;
    let stop = &stop;
    let results: Vec<Vec<(usize, Result<RecordOutcome, ProviderError>)>> =
        futures_util::future::join_all(queues.into_iter().map(|queue| async move {
            let mut out = Vec::with_capacity(queue.len());
            for i in queue {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let result = send(&records[i]).await;
                if let Err(e) = &result {
                    gate.note(e);
                    if matches!(
                        e,
                        ProviderError::Throttled { .. } | ProviderError::Unauthorized { .. }
                    ) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                out.push((i, result));
            }
            out
        }))
        .await;
    let mut answered: HashMap<usize, Result<RecordOutcome, ProviderError>> =
        results.into_iter().flatten().collect();
    if !answered.values().any(Result::is_ok) {
        return Err(
            worst(answered.into_values().filter_map(Result::err)).unwrap_or_else(|| {
                ProviderError::Retryable {
                    message: format!("{provider}: nothing was sent"),
                }
            }),
        );
    }
    let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
    for &i in &unique {
        outcomes[i] = Some(match answered.remove(&i) {
            Some(Ok(o)) => o,
            Some(Err(e)) => RecordOutcome::Retry {
                reason: e.to_string(),
            },
            None => RecordOutcome::Retry {
                reason: format!("{provider}: not sent (throttled or refused credentials)"),
            },
        });
    }
    Ok(owner
        .iter()
        .map(|&o| {
            outcomes[o].clone().unwrap_or(RecordOutcome::Retry {
                reason: "unreachable".into(),
            })
        })
        .collect())
}

/// The error to report for a call where nothing got through: a throttle (the longest
/// wait) first, then refused credentials, then a retryable failure, then a permanent one.
pub(crate) fn worst(errors: impl Iterator<Item = ProviderError>) -> Option<ProviderError> {
    let rank = |e: &ProviderError| match e {
        ProviderError::Throttled { .. } => 0,
        ProviderError::Unauthorized { .. } => 1,
        ProviderError::Retryable { .. } => 2,
        _ => 3,
    };
    errors.fold(None, |best: Option<ProviderError>, e| match best {
        None => Some(e),
        Some(b) if rank(&e) < rank(&b) => Some(e),
        Some(ProviderError::Throttled {
            retry_after: a,
            message,
        }) => match e {
            ProviderError::Throttled { retry_after: r, .. } => Some(ProviderError::Throttled {
                retry_after: a.max(r),
                message,
            }),
            _ => Some(ProviderError::Throttled {
                retry_after: a,
                message,
            }),
        },
        b => b,
    })
}

/// Stripe and Chargebee limits on how old a usage timestamp may be.
#[cfg_attr(not(any(feature = "stripe", feature = "chargebee")), allow(dead_code))]
pub(crate) fn too_old(timestamp: u64, now: u64, limit: Duration) -> bool {
    timestamp.saturating_add(limit.as_secs()) < now
}

#[cfg(test)]
mod tests {
    use super::*;
    use monetize_core::{CustomerId, MeterId};
    use std::sync::atomic::AtomicUsize;

    fn rec(customer: &str, window: u64) -> UsageRecord {
        UsageRecord::new(
            "i",
            "p",
            MeterId::new("m").unwrap(),
            CustomerId::new(customer).unwrap(),
            window,
            60,
            0,
            1,
        )
    }

    #[tokio::test]
    async fn duplicate_keys_are_sent_once_and_share_the_outcome() {
        let a = rec("a", 0);
        let records = vec![a.clone(), rec("b", 0), a];
        let calls = AtomicUsize::new(0);
        let gate = ThrottleGate::default();
        let out = per_record("p", &records, 4, &gate, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok(RecordOutcome::Accepted) }
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(out, vec![RecordOutcome::Accepted; 3]);
    }

    #[tokio::test]
    async fn a_throttle_stops_the_batch_and_closes_the_gate() {
        let records: Vec<_> = (0..5).map(|w| rec("a", w * 60)).collect();
        let gate = ThrottleGate::default();
        let calls = AtomicUsize::new(0);
        let out = per_record("p", &records, 1, &gate, |r| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let first = r.window_start == 0;
            async move {
                if first {
                    Ok(RecordOutcome::Accepted)
                } else {
                    let _ = n;
                    Err(ProviderError::Throttled {
                        retry_after: Duration::from_secs(60),
                        message: "slow down".into(),
                    })
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(out[0], RecordOutcome::Accepted);
        assert!(
            out[1..]
                .iter()
                .all(|o| matches!(o, RecordOutcome::Retry { .. }))
        );
        assert!(matches!(
            per_record("p", &records, 1, &gate, |_| async {
                Ok(RecordOutcome::Accepted)
            })
            .await,
            Err(ProviderError::Throttled { .. })
        ));
    }

    #[test]
    fn the_longest_throttle_wins() {
        let t = |s| ProviderError::Throttled {
            retry_after: Duration::from_secs(s),
            message: String::new(),
        };
        let r = ProviderError::Retryable {
            message: String::new(),
        };
        assert_eq!(worst([r, t(1), t(5), t(2)].into_iter()), Some(t(5)));
    }
}
