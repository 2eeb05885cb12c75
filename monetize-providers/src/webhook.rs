//! What the providers' webhook sources share: HMAC-SHA256 signature checks in constant
//! time, the timestamp tolerance, the provider-to-our customer mapping, JSON helpers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use monetize_core::webhook::WebhookError;
use monetize_core::{CustomerId, StateChange};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::Sha256;

use crate::mapping::Mapping;

/// How a webhook source turns the provider's customer id into ours.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum CustomerMap {
    /// The provider's id is ours (the default: no mapping configured).
    #[default]
    Same,
    /// Through the mapping the provider client uses (its `customers` table).
    Mapping(Mapping),
}

impl CustomerMap {
    /// Our customer for the provider's id, if any.
    pub fn ours(&self, theirs: &str) -> Option<CustomerId> {
        match self {
            CustomerMap::Same => CustomerId::new(theirs).ok(),
            CustomerMap::Mapping(m) => m.our_customer(theirs),
        }
    }
}

/// Whether `signature_hex` is the HMAC-SHA256 of `timestamp.body` under `secret`, compared
/// in constant time (`Mac::verify_slice`).
#[cfg_attr(not(any(feature = "stripe", feature = "recurly")), allow(dead_code))]
pub(crate) fn hmac_matches(
    secret: &SecretString,
    timestamp: &str,
    body: &[u8],
    signature_hex: &str,
) -> bool {
    let Ok(given) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Whether any of `signatures` matches under any of `secrets` (every pair is checked, so
/// the time taken does not tell which one matched).
#[cfg_attr(not(any(feature = "stripe", feature = "recurly")), allow(dead_code))]
pub(crate) fn any_matches<'a>(
    secrets: &[SecretString],
    timestamp: &str,
    body: &[u8],
    signatures: impl Iterator<Item = &'a str> + Clone,
) -> bool {
    let mut ok = false;
    for secret in secrets {
        for sig in signatures.clone() {
            ok |= hmac_matches(secret, timestamp, body, sig);
        }
    }
    ok
}

/// Refuses a signature timestamp (unix milliseconds) further than `tolerance` from now,
/// in the past (a replay) or the future.
#[cfg_attr(not(any(feature = "stripe", feature = "recurly")), allow(dead_code))]
pub(crate) fn check_time(signed_ms: u64, tolerance: Duration) -> Result<(), WebhookError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let tol = tolerance.as_millis() as u64;
    if signed_ms.saturating_add(tol) < now {
        return Err(WebhookError::Unauthorized(format!(
            "signature timestamp is older than the tolerance of {} s",
            tolerance.as_secs()
        )));
    }
    if signed_ms > now.saturating_add(tol) {
        return Err(WebhookError::Unauthorized(format!(
            "signature timestamp is more than {} s in the future",
            tolerance.as_secs()
        )));
    }
    Ok(())
}

/// Parses a JSON body.
pub(crate) fn parse(body: &[u8]) -> Result<Value, WebhookError> {
    serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(format!("not JSON: {e}")))
}

/// A required string field.
pub(crate) fn text<'a>(v: &'a Value, pointer: &str) -> Result<&'a str, WebhookError> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| WebhookError::Malformed(format!("missing string field `{pointer}`")))
}

/// An optional string field.
pub(crate) fn opt_text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The credits a provider's grant of `minor_units` (at `pointer`, minor currency units)
/// is worth at `micro_credits` per unit.
pub(crate) fn granted_credits(
    v: &Value,
    pointer: &str,
    micro_credits: i64,
) -> Result<StateChange, WebhookError> {
    let minor_units = v
        .pointer(pointer)
        .and_then(Value::as_i64)
        .ok_or_else(|| WebhookError::Malformed(format!("missing number field `{pointer}`")))?;
    Ok(StateChange::GrantCredits(
        minor_units.saturating_mul(micro_credits),
    ))
}

/// The header's value as text, if present and visible ASCII.
pub(crate) fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `hex(HMAC-SHA256(secret, "{t}.{body}"))`, as the providers sign.
    pub(crate) fn sign(secret: &str, t: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn hmac_and_time_checks() {
        let s = SecretString::from("whsec_test");
        let sig = sign("whsec_test", "123", b"{}");
        assert!(hmac_matches(&s, "123", b"{}", &sig));
        assert!(!hmac_matches(&s, "124", b"{}", &sig));
        assert!(!hmac_matches(&s, "123", b"{ }", &sig));
        assert!(!hmac_matches(&s, "123", b"{}", "zz"));
        let other = SecretString::from("other");
        assert!(any_matches(
            &[other.clone(), s],
            "123",
            b"{}",
            ["00", sig.as_str()].into_iter()
        ));
        assert!(!any_matches(
            &[other],
            "123",
            b"{}",
            [sig.as_str()].into_iter()
        ));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let tol = Duration::from_secs(300);
        assert!(check_time(now, tol).is_ok());
        assert!(check_time(now - 290_000, tol).is_ok());
        assert!(check_time(now - 310_000, tol).is_err());
        assert!(check_time(now + 310_000, tol).is_err());
    }
}
