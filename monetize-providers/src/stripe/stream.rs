//! The v2 meter event stream: a session token from `POST /v2/billing/meter_event_session`
//! (valid 15 minutes), reused until shortly before it expires and recreated when Stripe
//! answers `billing_meter_event_session_expired`; 100 events a call, up to `lanes` calls
//! at once.

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::stream::{self, StreamExt};
use monetize_core::{ProviderError, RecordOutcome, UsageRecord};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{Event, STREAM_BATCH, StreamEvent, StripeProvider};
use crate::batch::{unique_keys, worst};
use crate::http::unix_now;

/// A token is replaced this long before Stripe says it expires.
const EXPIRY_MARGIN_SECS: u64 = 60;

/// A stream call's body.
#[derive(serde::Serialize)]
struct StreamBody<'a, 'e> {
    events: &'a [StreamEvent<'e>],
}

/// The current session token.
#[derive(Default)]
pub(crate) struct SessionCache {
    current: Mutex<Option<Session>>,
}

struct Session {
    token: SecretString,
    expires_at: u64,
}

#[derive(Deserialize)]
struct SessionWire {
    authentication_token: String,
    expires_at: String,
}

impl StripeProvider {
    /// The current token, creating a session when there is none, it is about to expire,
    /// or it is `stale` (the token Stripe just called expired).
    async fn token(&self, stale: Option<&str>) -> Result<SecretString, ProviderError> {
        let i = &self.inner;
        let mut current = i.session.current.lock().await;
        let now = unix_now();
        if let Some(s) = current.as_ref() {
            let is_stale = stale.is_some_and(|t| t == s.token.expose_secret());
            if !is_stale && s.expires_at > now + EXPIRY_MARGIN_SECS {
                return Ok(s.token.clone());
            }
        }
        let req = self.authed(
            Method::POST,
            &format!("{}/v2/billing/meter_event_session", i.base_url),
        );
        let answer = i.client.send(req, 1).await?;
        if !answer.status.is_success() {
            return Err(answer.error(&i.name));
        }
        let wire: SessionWire = answer.json(&i.name)?;
        let expires_at = wire
            .expires_at
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| u64::try_from(t.as_second()).ok())
            .unwrap_or(now + 15 * 60);
        let token = SecretString::from(wire.authentication_token);
        *current = Some(Session {
            token: token.clone(),
            expires_at,
        });
        Ok(token)
    }

    /// One lane's chunk: `None` (not sent) once `stop` is set or while a throttle lasts;
    /// sets `stop` on a throttle or refused credentials.
    async fn stream_lane(
        &self,
        chunk: &[(usize, Event)],
        stop: &AtomicBool,
    ) -> Option<Result<(), ProviderError>> {
        let i = &self.inner;
        if stop.load(Ordering::Relaxed) || i.gate.check(&i.name).is_err() {
            return None;
        }
        let events: Vec<StreamEvent<'_>> =
            chunk.iter().map(|(_, e)| self.stream_event(e)).collect();
        let result = self.stream_chunk(&events).await;
        if let Err(e) = &result {
            i.gate.note(e);
            if matches!(
                e,
                ProviderError::Throttled { .. } | ProviderError::Unauthorized { .. }
            ) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        Some(result)
    }

    /// Sends one chunk of events, recreating the session once if it expired.
    async fn stream_chunk(&self, events: &[StreamEvent<'_>]) -> Result<(), ProviderError> {
        let i = &self.inner;
        let body = StreamBody { events };
        let mut stale: Option<String> = None;
        for _ in 0..2 {
            let token = self.token(stale.as_deref()).await?;
            let req = i
                .client
                .request(
                    Method::POST,
                    &format!("{}/v2/billing/meter_event_stream", i.stream_url),
                )
                .bearer_auth(token.expose_secret())
                .json(&body);
            let answer = i.client.send(req, 1).await?;
            if answer.status.is_success() {
                return Ok(());
            }
            if answer.fault().code.as_deref() == Some("billing_meter_event_session_expired") {
                tracing::debug!(provider = %i.name, "meter event session expired; creating a new one");
                stale = Some(token.expose_secret().to_owned());
                continue;
            }
            return Err(answer.error(&i.name));
        }
        Err(ProviderError::Retryable {
            message: format!("{}: a new meter event session expired at once", i.name),
        })
    }

    pub(super) async fn send_stream(
        &self,
        records: &[UsageRecord],
    ) -> Result<Vec<RecordOutcome>, ProviderError> {
        let i = &self.inner;
        i.gate.check(&i.name)?;
        let (unique, owner) = unique_keys(records);
        let now = unix_now();
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
        let mut to_send: Vec<(usize, Event)> = Vec::new();
        for &k in &unique {
            match self.event(&records[k], now) {
                Ok(Some(e)) => to_send.push((k, e)),
                Ok(None) => outcomes[k] = Some(RecordOutcome::Accepted),
                Err(reason) => outcomes[k] = Some(RecordOutcome::Rejected { reason }),
            }
        }
        // Chunks of 100 events go out on up to `lanes` calls at once (a backlog drains at
        // the stream's rate, not at one call's latency). A throttle or refused credentials
        // stops the chunks not yet sent: they stay pending, to be retried.
        let stop = AtomicBool::new(false);
        let chunks: Vec<&[(usize, Event)]> = to_send.chunks(STREAM_BATCH).collect();
        let sends: Vec<_> = chunks
            .iter()
            .map(|chunk| self.stream_lane(chunk, &stop))
            .collect();
        let results: Vec<Option<Result<(), ProviderError>>> =
            stream::iter(sends).buffered(i.lanes.max(1)).collect().await;
        let mut errors = Vec::new();
        for (chunk, result) in chunks.iter().zip(results) {
            let Some(result) = result else { continue };
            let outcome = match &result {
                Ok(()) => RecordOutcome::Accepted,
                Err(ProviderError::Permanent { message }) => RecordOutcome::Rejected {
                    reason: message.clone(),
                },
                Err(e) => RecordOutcome::Retry {
                    reason: e.to_string(),
                },
            };
            for (k, _) in *chunk {
                outcomes[*k] = Some(outcome.clone());
            }
            if let Err(e) = result {
                errors.push(e);
            }
        }
        let decided = outcomes
            .iter()
            .flatten()
            .any(|o| !matches!(o, RecordOutcome::Retry { .. }));
        if !decided && let Some(e) = worst(errors.into_iter()) {
            return Err(e);
        }
        Ok(owner
            .iter()
            .map(|&o| {
                outcomes[o].clone().unwrap_or(RecordOutcome::Retry {
                    reason: format!("{}: not sent (throttled or refused credentials)", i.name),
                })
            })
            .collect())
    }
}
