//! [`LedgerProvider`]: an embedded billing provider for local runs and tests.
//!
//! It accepts every record and keeps it, in memory and optionally in a file of JSON lines,
//! and deduplicates on the idempotency key the way a real provider does:
//!
//! - a record whose key it already holds, with the same quantity, is answered `Accepted`
//!   and not stored again (a retry after a lost answer);
//! - a record whose key it already holds with a *different* quantity is answered
//!   `Rejected { reason: "idempotency key reused with different quantity" }` (Stripe's
//!   `idempotency_error`) and counted in [`LedgerProvider::conflicts`]: a correct reporter
//!   never causes one.
//!
//! With a file ([`LedgerProvider::open`]) every accepted record is appended as one line
//! before it is acknowledged, and the file is read back on open, so the ledger survives a
//! process restart (or a `kill -9`: a write cut short leaves an unterminated last line,
//! which was never acknowledged and is dropped on open). The file is not synced to disk on
//! each write: it survives the process, not a power cut.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use crate::provider::{BillingProvider, ProviderError, RecordOutcome, UsageRecord};

/// The reason given for a key reused with a different quantity.
pub const CONFLICT_REASON: &str = "idempotency key reused with different quantity";

/// Why a ledger file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The file cannot be opened, read or repaired: check the path and permissions.
    #[error("ledger file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A complete line of the file is not a usage record: fix or remove that line.
    #[error("ledger file {path}, line {line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Default)]
struct State {
    records: Vec<UsageRecord>,
    by_key: HashMap<String, usize>,
    deliveries: HashMap<String, u32>,
    conflicts: u64,
    file: Option<File>,
    /// Where the last complete line of the file ends: every append is written there and
    /// the file cut right after it, so bytes of a write cut short never stay in front of a
    /// later line (which would make the next open fail).
    good_len: u64,
}

/// An embedded billing provider that keeps what it is sent (see the module docs).
pub struct LedgerProvider {
    name: String,
    max_batch: usize,
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl std::fmt::Debug for LedgerProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerProvider")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Default for LedgerProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl LedgerProvider {
    /// A ledger in memory, named `ledger`.
    pub fn new() -> Self {
        Self {
            name: "ledger".to_owned(),
            max_batch: 100,
            path: None,
            state: Mutex::new(State::default()),
        }
    }

    /// A ledger backed by a file of JSON lines at `path`: existing lines are loaded, new
    /// records are appended. The file is created if missing. An unterminated last line (a
    /// write cut short by a crash) is dropped; any other line that is not a usage record is
    /// an error naming its line number.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut state = State::default();
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        let mut good_len: u64 = 0;
        let mut number = 0;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io)?;
            if n == 0 {
                break;
            }
            number += 1;
            if !line.ends_with('\n') {
                tracing::warn!(
                    path = %path.display(),
                    line = number,
                    "dropping an unterminated last line (a write cut short)"
                );
                break;
            }
            good_len += n as u64;
            if line.trim().is_empty() {
                continue;
            }
            let record: UsageRecord =
                serde_json::from_str(&line).map_err(|e| LedgerError::Malformed {
                    path: path.clone(),
                    line: number,
                    reason: e.to_string(),
                })?;
            if state.by_key.contains_key(&record.idempotency_key) {
                return Err(LedgerError::Malformed {
                    path: path.clone(),
                    line: number,
                    reason: format!("idempotency key {} appears twice", record.idempotency_key),
                });
            }
            state
                .by_key
                .insert(record.idempotency_key.clone(), state.records.len());
            state.records.push(record);
        }
        drop(reader);
        if file.metadata().map_err(io)?.len() != good_len {
            file.set_len(good_len).map_err(io)?;
        }
        state.file = Some(file);
        state.good_len = good_len;
        Ok(Self {
            path: Some(path),
            state: Mutex::new(state),
            ..Self::new()
        })
    }

    /// Renames the provider (the name is part of every idempotency key and spool key).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the most records one call takes (default 100, at least 1).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// The backing file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every record stored, in the order accepted.
    pub fn records(&self) -> Vec<UsageRecord> {
        self.state().records.clone()
    }

    /// How many records are stored.
    pub fn len(&self) -> usize {
        self.state().records.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.state().records.is_empty()
    }

    /// The quantity stored for one meter and customer.
    pub fn total(&self, meter: &str, customer: &str) -> u64 {
        self.state()
            .records
            .iter()
            .filter(|r| r.meter.as_str() == meter && r.customer.as_str() == customer)
            .fold(0u64, |a, r| a.saturating_add(r.quantity))
    }

    /// The quantity stored, over every meter and customer.
    pub fn total_all(&self) -> u64 {
        self.state()
            .records
            .iter()
            .fold(0u64, |a, r| a.saturating_add(r.quantity))
    }

    /// How many times a key was reused with a different quantity (0 for a correct reporter).
    pub fn conflicts(&self) -> u64 {
        self.state().conflicts
    }

    /// How many times each idempotency key was delivered in this process (accepted or not).
    pub fn deliveries(&self) -> HashMap<String, u32> {
        self.state().deliveries.clone()
    }

    /// How many times one idempotency key was delivered in this process.
    pub fn deliveries_of(&self, idempotency_key: &str) -> u32 {
        self.state()
            .deliveries
            .get(idempotency_key)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl BillingProvider for LedgerProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            *state
                .deliveries
                .entry(record.idempotency_key.clone())
                .or_default() += 1;
            if let Some(&i) = state.by_key.get(&record.idempotency_key) {
                if state.records[i].quantity == record.quantity {
                    out.push(RecordOutcome::Accepted);
                } else {
                    state.conflicts += 1;
                    tracing::warn!(
                        key = %record.idempotency_key,
                        stored = state.records[i].quantity,
                        sent = record.quantity,
                        "{CONFLICT_REASON}"
                    );
                    out.push(RecordOutcome::Rejected {
                        reason: CONFLICT_REASON.to_owned(),
                    });
                }
                continue;
            }
            let good_len = state.good_len;
            if let Some(file) = state.file.as_mut() {
                let written = serde_json::to_vec(record)
                    .map_err(std::io::Error::other)
                    .and_then(|mut line| {
                        line.push(b'\n');
                        let end = good_len + line.len() as u64;
                        file.seek(SeekFrom::Start(good_len))?;
                        file.write_all(&line)?;
                        // Drops whatever a torn earlier write left past this line.
                        if file.metadata()?.len() != end {
                            file.set_len(end)?;
                        }
                        Ok(end)
                    });
                match written {
                    Ok(end) => state.good_len = end,
                    Err(e) => {
                        out.push(RecordOutcome::Retry {
                            reason: format!("cannot append to the ledger file: {e}"),
                        });
                        continue;
                    }
                }
            }
            state
                .by_key
                .insert(record.idempotency_key.clone(), state.records.len());
            state.records.push(record.clone());
            out.push(RecordOutcome::Accepted);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{CustomerId, MeterId};

    fn rec(customer: &str, window: u64, quantity: u64) -> UsageRecord {
        UsageRecord::new(
            "i",
            "ledger",
            MeterId::new("calls").unwrap(),
            CustomerId::new(customer).unwrap(),
            window,
            60,
            0,
            quantity,
        )
    }

    #[tokio::test]
    async fn deduplicates_and_flags_conflicts() {
        let l = LedgerProvider::new();
        let a = rec("c1", 0, 5);
        let b = rec("c2", 0, 7);
        let out = l.report(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(out, vec![RecordOutcome::Accepted, RecordOutcome::Accepted]);
        // a retry with the same quantity is accepted, not stored twice
        assert_eq!(
            l.report(std::slice::from_ref(&a)).await.unwrap(),
            vec![RecordOutcome::Accepted]
        );
        assert_eq!(l.len(), 2);
        assert_eq!(l.deliveries_of(&a.idempotency_key), 2);
        // the same key with another quantity is refused and counted
        let mut changed = a.clone();
        changed.quantity = 6;
        let out = l.report(&[changed]).await.unwrap();
        assert_eq!(
            out,
            vec![RecordOutcome::Rejected {
                reason: CONFLICT_REASON.into()
            }]
        );
        assert_eq!(l.conflicts(), 1);
        assert_eq!(l.total("calls", "c1"), 5);
        assert_eq!(l.total_all(), 12);
        assert_eq!(l.deliveries().len(), 2);
    }

    #[tokio::test]
    async fn file_survives_reopen_and_drops_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        {
            let l = LedgerProvider::open(&path).unwrap();
            l.report(&[rec("c1", 0, 5), rec("c1", 60, 6)])
                .await
                .unwrap();
        }
        // a write cut short by a crash
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"idempotency_key\":\"mz1_").unwrap();
        drop(f);
        let l = LedgerProvider::open(&path).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.total("calls", "c1"), 11);
        // the reopened ledger still deduplicates, and appends after the repaired end
        l.report(&[rec("c1", 0, 5), rec("c1", 120, 1)])
            .await
            .unwrap();
        assert_eq!(l.len(), 3);
        drop(l);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
        assert_eq!(LedgerProvider::open(&path).unwrap().total_all(), 12);
    }

    /// Issue 10 item 9: a write cut short while the ledger stays open (a full disk) must
    /// not end up in front of the next line, where it would make every later open fail.
    #[tokio::test]
    async fn a_torn_write_does_not_break_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let l = LedgerProvider::open(&path).unwrap();
        l.report(&[rec("c1", 0, 5)]).await.unwrap();
        // the torn bytes of a failed append
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"idempotency_key\":\"mz1_").unwrap();
        drop(f);
        l.report(&[rec("c1", 60, 2)]).await.unwrap();
        drop(l);
        let l = LedgerProvider::open(&path).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.total("calls", "c1"), 7);
    }

    #[test]
    fn malformed_line_names_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let good = serde_json::to_string(&rec("c1", 0, 1)).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n")).unwrap();
        let err = LedgerProvider::open(&path).unwrap_err();
        assert!(
            matches!(err, LedgerError::Malformed { line: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("line 2"));
    }

    #[test]
    fn name_and_batch_are_configurable() {
        let l = LedgerProvider::new().with_name("stripe").with_max_batch(0);
        assert_eq!(l.name(), "stripe");
        assert_eq!(l.max_batch(), 1);
        assert!(l.is_empty());
        assert!(l.path().is_none());
    }
}
