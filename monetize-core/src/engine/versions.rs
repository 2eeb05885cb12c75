//! Versions of the fields code changed directly: when [`Engine::apply`] sets a customer's
//! `delinquent`, `cancelled`, `blocked` or `plan`, the wall-clock millisecond of the change
//! is kept with the customer's state ([`AccountState::field_versions`]), so that webhook
//! deliveries and operator changes (whose versions the webhook log keeps per field) and
//! direct changes are ordered on one scale: the newest wins, live and when the webhook
//! log is re-applied at start (`WebhookProcessor::restore`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::customer::StateChange;
use crate::engine::Engine;
use crate::error::CoreError;
use crate::id::CustomerId;
use crate::store::AccountState;

/// The fields, in the order of the stamps.
const FIELDS: [&str; 4] = ["delinquent", "cancelled", "blocked", "plan"];

/// Per customer, the version of the last direct change of each field (0: none). Only
/// customers code changed directly are listed; never touched on the request path.
#[derive(Default)]
pub(crate) struct FieldVersions(Mutex<HashMap<CustomerId, [u64; 4]>>);

/// The stamp index of a change's field, for the fields whose last value wins.
fn index_of(change: &StateChange) -> Option<usize> {
    match change {
        StateChange::Delinquent(_) => Some(0),
        StateChange::Cancelled(_) => Some(1),
        StateChange::Blocked(_) => Some(2),
        StateChange::Plan(_) => Some(3),
        _ => None,
    }
}

impl FieldVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CustomerId, [u64; 4]>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises `id`'s version of field `i` to `version`.
    fn stamp(&self, id: &CustomerId, i: usize, version: u64) {
        let mut m = self.lock();
        let v = m.entry(id.clone()).or_default();
        if let Some(slot) = v.get_mut(i) {
            *slot = (*slot).max(version);
        }
    }

    /// The version of `field`'s last direct change for `id`, if any.
    pub(crate) fn get(&self, id: &CustomerId, field: &str) -> Option<u64> {
        let i = FIELDS.iter().position(|f| *f == field)?;
        self.lock()
            .get(id)
            .and_then(|v| v.get(i).copied())
            .filter(|v| *v > 0)
    }

    /// Writes the versions into the customers' durable states.
    pub(crate) fn fill(&self, out: &mut [(CustomerId, AccountState)]) {
        let m = self.lock();
        if m.is_empty() {
            return;
        }
        for (id, state) in out.iter_mut() {
            if let Some(v) = m.get(id) {
                state.field_versions = FIELDS
                    .iter()
                    .zip(v)
                    .filter(|(_, v)| **v > 0)
                    .map(|(f, v)| ((*f).to_owned(), *v))
                    .collect();
            }
        }
    }

    /// Takes in the versions a restored state carries (the newer of each).
    pub(crate) fn restore(&self, id: &CustomerId, versions: &BTreeMap<String, u64>) {
        for (field, v) in versions {
            if let Some(i) = FIELDS.iter().position(|f| f == field) {
                self.stamp(id, i, *v);
            }
        }
    }
}

impl Engine {
    /// Changes a customer's state (admitting it if new) on behalf of a source that orders
    /// its changes itself (the webhook processor and the operator, through their log):
    /// [`Engine::apply`] without stamping the field's version.
    pub(crate) fn apply_sourced(
        &self,
        customer: &str,
        change: StateChange,
    ) -> Result<(), CoreError> {
        self.apply_change(customer, change)
    }

    /// Stamps a direct change of `change`'s field for `customer` at now (wall-clock
    /// milliseconds).
    pub(super) fn stamp_direct(&self, customer: &CustomerId, change: &StateChange) {
        if let Some(i) = index_of(change) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.versions().stamp(customer, i, now);
        }
    }

    /// The version (wall-clock milliseconds) of the last direct change of `field`
    /// (`delinquent`, `cancelled`, `blocked`, `plan`) of `customer`, if any.
    pub(crate) fn direct_version(&self, customer: &CustomerId, field: &str) -> Option<u64> {
        self.versions().get(customer, field)
    }
}
