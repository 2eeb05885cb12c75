//! A customer's live state, shared by every request of that customer.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::customer::metering::Metering;
use crate::id::CustomerId;
use crate::meter::{Aggregation, UsageCells};

/// The type of [`CustomerState::refs`], the word of the reference protocol in
/// [`super::resident`]. Under `--cfg monetize_loom` it is loom's, so that the loom model
/// there explores every interleaving of pin, unpin, watch, seal and free.
#[cfg(monetize_loom)]
pub(crate) type RefCount = loom::sync::atomic::AtomicU64;
/// The type of [`CustomerState::refs`], the word of the reference protocol in
/// [`super::resident`].
#[cfg(not(monetize_loom))]
pub(crate) type RefCount = AtomicU64;

pub(crate) const DELINQUENT: u32 = 1;
pub(crate) const CANCELLED: u32 = 2;
pub(crate) const BLOCKED: u32 = 4;

pub(crate) use crate::plan::NO_PLAN;

/// Everything a request needs about one customer; reached through a [`CustomerHandle`].
///
/// Laid out for the request path: what every request reads or writes comes first (status,
/// plan, last seen, balance, then the usage cells), so deciding and recording touch as few
/// cache lines as possible. (Aligning it to 64 bytes measured a little faster but pushed
/// resident memory past 200 bytes per cell.)
#[repr(C)]
pub(crate) struct CustomerState {
    pub(crate) flags: AtomicU32,
    pub(crate) plan: AtomicU32,
    /// Engine-clock seconds of the last request (coarse), for idle eviction.
    pub(crate) last_seen: AtomicU32,
    /// Pinned references, watches and the eviction seal (see [`super::resident`]).
    pub(crate) refs: RefCount,
    /// Prepaid balance in micro-credits.
    pub(crate) balance: AtomicI64,
    /// The configuration of the engine that made this state (and a weak way to its event
    /// queue): a handle meters through it, with no reference to the engine of its own.
    pub(crate) metering: Arc<Metering>,
    /// Usage since the last checkpoint.
    pub(crate) cells: UsageCells,
    pub(crate) id: CustomerId,
    /// GCRA theoretical arrival time, nanoseconds on the engine's clock.
    pub(crate) rate_tat: AtomicU64,
    /// Engine-clock seconds (+1, 0 = never) of the last `Blocked` / `ShadowBlock` event, so
    /// a customer that keeps calling while blocked raises one event a minute, not one per
    /// request (which would crowd other customers' events out of the bounded queue).
    pub(crate) last_block_event: [AtomicU32; 2],
    /// Accounts for customers admitted past the cap.
    pub(crate) is_overflow: bool,
}

impl CustomerState {
    pub(crate) fn new(
        id: CustomerId,
        aggs: &[Aggregation],
        plan: u32,
        balance: i64,
        metering: Arc<Metering>,
    ) -> Self {
        Self {
            id,
            metering,
            flags: AtomicU32::new(0),
            plan: AtomicU32::new(plan),
            balance: AtomicI64::new(balance),
            rate_tat: AtomicU64::new(0),
            last_seen: AtomicU32::new(0),
            refs: RefCount::new(0),
            last_block_event: [AtomicU32::new(0), AtomicU32::new(0)],
            cells: UsageCells::new(aggs),
            is_overflow: false,
        }
    }

    #[inline]
    pub(crate) fn has(&self, flag: u32) -> bool {
        self.flags.load(Ordering::Relaxed) & flag != 0
    }

    pub(crate) fn set_flag(&self, flag: u32, on: bool) {
        if on {
            self.flags.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!flag, Ordering::Relaxed);
        }
    }

    /// Whether a block event of `kind` (0 blocked, 1 shadow) may be raised now, at most one
    /// per `every` seconds; records it when so.
    pub(crate) fn block_event_due(&self, kind: usize, now: u32, every: u32) -> bool {
        let Some(cell) = self.last_block_event.get(kind) else {
            return false;
        };
        let last = cell.load(Ordering::Relaxed);
        let stamp = now.saturating_add(1);
        if last != 0 && stamp.saturating_sub(last) < every {
            return false;
        }
        cell.compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    pub(crate) fn touch(&self, now: u32) {
        if self.last_seen.load(Ordering::Relaxed) != now {
            self.last_seen.store(now, Ordering::Relaxed);
        }
    }
}
