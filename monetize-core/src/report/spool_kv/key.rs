//! The spool's tables and the key of a row in them.

use std::fmt;

use crate::id::{CustomerId, MeterId};
use crate::provider::UsageRecord;
use crate::report::spool::{SpoolError, SpoolKey};

/// The tables of a spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Table {
    /// Open and sealed entries.
    Pending,
    /// Acknowledged records (audit).
    Acked,
    /// Records refused for good.
    Dead,
    /// Records past the provider's deduplication horizon with an unknown outcome.
    Reconcile,
    /// Rows that could not be decoded, moved out of the way.
    Quarantine,
    /// Per window (part 0 key): the next part number.
    Parts,
    /// Spool id, checkpoint numbers, prune watermark.
    Meta,
    /// Per customer: its state as of the last checkpoint that snapshotted it.
    Accounts,
}

impl Table {
    pub(crate) const ALL: [Table; 8] = [
        Table::Pending,
        Table::Acked,
        Table::Dead,
        Table::Reconcile,
        Table::Quarantine,
        Table::Parts,
        Table::Meta,
        Table::Accounts,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Table::Pending => "pending",
            Table::Acked => "acknowledged",
            Table::Dead => "dead_letters",
            Table::Reconcile => "reconcile",
            Table::Quarantine => "quarantine",
            Table::Parts => "parts",
            Table::Meta => "meta",
            Table::Accounts => "accounts",
        }
    }
}

/// A stored key, as raw strings (validated into a [`SpoolKey`] when read).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RowKey {
    pub(crate) provider: String,
    pub(crate) meter: String,
    pub(crate) customer: String,
    pub(crate) window_start: u64,
    pub(crate) part: u32,
}

impl RowKey {
    pub(crate) fn of_record(r: &UsageRecord) -> Self {
        Self::of_key(&SpoolKey::of(r))
    }

    pub(crate) fn of_key(k: &SpoolKey) -> Self {
        Self {
            provider: k.provider.clone(),
            meter: k.meter.as_str().to_owned(),
            customer: k.customer.as_str().to_owned(),
            window_start: k.window_start,
            part: k.part,
        }
    }

    /// The smallest key of `provider` (or of all when `None`).
    pub(super) fn first_of(provider: Option<&str>) -> Self {
        Self {
            provider: provider.unwrap_or_default().to_owned(),
            meter: String::new(),
            customer: String::new(),
            window_start: 0,
            part: 0,
        }
    }

    pub(super) fn meta(name: &str, sub: &str) -> Self {
        Self {
            provider: name.to_owned(),
            meter: sub.to_owned(),
            customer: String::new(),
            window_start: 0,
            part: 0,
        }
    }

    pub(super) fn with_part(&self, part: u32) -> Self {
        Self {
            part,
            ..self.clone()
        }
    }

    pub(super) fn same_window(&self, other: &RowKey) -> bool {
        self.provider == other.provider
            && self.meter == other.meter
            && self.customer == other.customer
            && self.window_start == other.window_start
    }

    pub(super) fn to_spool_key(&self) -> Result<SpoolKey, SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt {
            key: self.to_string(),
            reason,
        };
        let meter = MeterId::new(&self.meter).map_err(|e| corrupt(format!("meter: {e}")))?;
        let customer =
            CustomerId::new(&self.customer).map_err(|e| corrupt(format!("customer: {e}")))?;
        Ok(SpoolKey::new(
            self.provider.clone(),
            meter,
            customer,
            self.window_start,
            self.part,
        ))
    }
}

impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}#{}",
            self.provider, self.meter, self.customer, self.window_start, self.part
        )
    }
}
