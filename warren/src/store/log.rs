//! The Raft log, vote and commit index in redb (`raft-log.redb` in the data dir).
//! Appends are durable before openraft is told they are flushed; reads go through a
//! cloneable reader over the same database.

// openraft's storage traits return its own (large) StorageError; boxing it here
// would only move the allocation.
#![allow(clippy::result_large_err)]

use super::types::{Entry, LogId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, redb::DatabaseError> {
        let db = Database::create(path)?;
        let store = LogStore { db: Arc::new(db) };
        // Create the tables so that readers never see them missing.
        if let Ok(txn) = store.db.begin_write() {
            let ok = txn.open_table(LOG).is_ok() && txn.open_table(META).is_ok();
            if ok {
                let _ = txn.commit();
            }
        }
        Ok(store)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(io_read)?;
        let table = txn.open_table(META).map_err(io_read)?;
        match table.get(key).map_err(io_read)? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(io_read),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(io_write)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let txn = db.begin_write().map_err(io_write)?;
            {
                let mut t = txn.open_table(META).map_err(io_write)?;
                t.insert(key, bytes.as_slice()).map_err(io_write)?;
            }
            txn.commit().map_err(io_write)
        })
        .await
        .map_err(io_write)?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let txn = self.db.begin_read().map_err(io_read)?;
        let table = txn.open_table(LOG).map_err(io_read)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(io_read)? {
            let (_, v) = item.map_err(io_read)?;
            out.push(serde_json::from_slice(v.value()).map_err(io_read)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let txn = self.db.begin_read().map_err(io_read)?;
        let table = txn.open_table(LOG).map_err(io_read)?;
        let last = match table.last().map_err(io_read)? {
            Some((_, v)) => {
                let e: Entry = serde_json::from_slice(v.value()).map_err(io_read)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(KEY_COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, serde_json::to_vec(&e).map_err(io_write)?));
        }
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    t.insert(index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(io_write)?;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_write(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let txn = db.begin_write().map_err(io_write)?;
            {
                let mut t = txn.open_table(LOG).map_err(io_write)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(io_write)?;
            }
            txn.commit().map_err(io_write)
        })
        .await
        .map_err(io_write)?
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(io_write)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let txn = db.begin_write().map_err(io_write)?;
            {
                let mut m = txn.open_table(META).map_err(io_write)?;
                m.insert(KEY_PURGED, bytes.as_slice()).map_err(io_write)?;
                let mut t = txn.open_table(LOG).map_err(io_write)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(io_write)?;
            }
            txn.commit().map_err(io_write)
        })
        .await
        .map_err(io_write)?
    }
}
