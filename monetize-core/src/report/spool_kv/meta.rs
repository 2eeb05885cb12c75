//! The meta table: the spool's id, and numbers kept under a name (checkpoint numbers,
//! the prune watermark).

use rand::RngCore;

use super::key::{RowKey, Table};
use super::row::{decode, encode};
use super::{KvRead, KvWrite};
use crate::report::spool::SpoolError;

pub(super) fn get_u64<T: KvRead + ?Sized>(
    txn: &mut T,
    key: &RowKey,
) -> Result<Option<u64>, SpoolError> {
    match txn.get(Table::Meta, key)? {
        Some(bytes) => Ok(Some(decode(key, &bytes)?)),
        None => Ok(None),
    }
}

pub(super) fn put_u64<T: KvWrite + ?Sized>(
    txn: &mut T,
    key: &RowKey,
    v: u64,
) -> Result<(), SpoolError> {
    txn.put(Table::Meta, key, &encode(key, &v)?)
}

pub(super) const PRUNED_THROUGH: &str = "pruned_through";

/// The spool's id, created (in this transaction) when missing.
pub(crate) fn spool_id_in<T: KvWrite + ?Sized>(txn: &mut T) -> Result<String, SpoolError> {
    let key = RowKey::meta("spool_id", "");
    if let Some(bytes) = txn.get(Table::Meta, &key)? {
        return decode(&key, &bytes);
    }
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let id = hex::encode(raw);
    txn.put(Table::Meta, &key, &encode(&key, &id)?)?;
    Ok(id)
}
