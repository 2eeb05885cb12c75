//! [`StateSync`]: keeps a [`StateStore`] in step with the engine, so customer state
//! (status, plan, prepaid balance, quota usage this period) survives restarts.
//!
//! At start every stored customer is restored into the engine; then, every interval, the
//! customers whose state changed since the last save are written. `shutdown` saves
//! everything before returning.
//!
//! # Which copy wins
//!
//! With a [`Reporter`](crate::report::Reporter), every checkpoint also writes the state of
//! the customers it touched into the spool, in the transaction that stores their usage,
//! and [`Reporter::start`](crate::report::Reporter::start) restores those states after
//! this restore: **for a customer the spool holds, the spool is authoritative** (status,
//! plan, balance, quota usage as of the last merged checkpoint), because the store may
//! have been saved after that checkpoint, with credits spent by usage that a `kill -9`
//! then lost. The store remains the source for customers the spool does not hold (no
//! usage and no operator change since the spool was created), for engines without a
//! reporter, and for sharing state between instances. So start `StateSync` first, then
//! the reporter. Without a reporter, a `kill -9` loses at most the last interval of
//! balance and quota changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::engine::Engine;
use crate::id::CustomerId;
use crate::store::{AccountState, StateStore, StoreError};

/// What a restore at start found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreSummary {
    /// Customers restored into the engine.
    pub restored: usize,
    /// Customers skipped, with why (a plan the config no longer has, the customer cap).
    pub skipped: Vec<(CustomerId, String)>,
}

/// Starts state synchronisation.
pub struct StateSync;

/// Controls a running [`StateSync`].
pub struct StateSyncHandle {
    commands: mpsc::Sender<oneshot::Sender<Result<usize, StoreError>>>,
    task: JoinHandle<()>,
    restore: RestoreSummary,
}

impl std::fmt::Debug for StateSyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSyncHandle")
            .field("restore", &self.restore)
            .finish_non_exhaustive()
    }
}

impl StateSync {
    /// Restores every stored customer into `engine`, then saves changed customers every
    /// `every` in a background task. Fails only when the store cannot be read at all.
    pub async fn start(
        engine: Engine,
        store: Arc<dyn StateStore>,
        every: Duration,
    ) -> Result<StateSyncHandle, StoreError> {
        let mut saved: HashMap<CustomerId, AccountState> = HashMap::new();
        let mut restore = RestoreSummary::default();
        for (id, state) in store.load_all().await? {
            match engine.restore_account(id.as_str(), &state) {
                Ok(()) => {
                    restore.restored += 1;
                    saved.insert(id, state);
                }
                Err(e) => {
                    tracing::warn!(customer = %id, error = %e, "stored customer state not restored");
                    restore.skipped.push((id, e.to_string()));
                }
            }
        }
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Result<usize, StoreError>>>(4);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = save_changed(&engine, store.as_ref(), &mut saved).await {
                            tracing::warn!(error = %e, "customer state not saved; will retry");
                        }
                    }
                    cmd = rx.recv() => match cmd {
                        Some(reply) => {
                            let _ = reply.send(save_changed(&engine, store.as_ref(), &mut saved).await);
                        }
                        None => {
                            if let Err(e) = save_changed(&engine, store.as_ref(), &mut saved).await {
                                tracing::error!(error = %e, "customer state not saved at shutdown");
                            }
                            return;
                        }
                    },
                }
            }
        });
        Ok(StateSyncHandle {
            commands: tx,
            task,
            restore,
        })
    }
}

/// Saves every customer whose state differs from what was last saved; returns how many.
async fn save_changed(
    engine: &Engine,
    store: &dyn StateStore,
    saved: &mut HashMap<CustomerId, AccountState>,
) -> Result<usize, StoreError> {
    // Durable credits calls save under the same lock: a snapshot taken before one of
    // them never overwrites what it saved.
    let _write = engine.ledger().write_lock().await;
    let mut n = 0;
    let mut first_error = None;
    for (id, state) in engine.accounts() {
        if saved.get(&id) == Some(&state) {
            continue;
        }
        match store.save(&id, &state).await {
            Ok(()) => {
                saved.insert(id, state);
                n += 1;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

impl StateSyncHandle {
    /// What the restore at start found.
    pub fn restored(&self) -> &RestoreSummary {
        &self.restore
    }

    /// Saves changed customers now; returns how many were written.
    pub async fn sync_now(&self) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(tx)
            .await
            .map_err(|_| StoreError::Unavailable("state sync task stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("state sync task stopped".into()))?
    }

    /// Saves everything that changed, then stops.
    pub async fn shutdown(self) -> Result<usize, StoreError> {
        let n = self.sync_now().await?;
        drop(self.commands);
        self.task
            .await
            .map_err(|e| StoreError::Unavailable(format!("state sync task failed: {e}")))?;
        Ok(n)
    }
}
