//! Typed records in a JetStream key-value bucket: every record of the host
//! (subscriptions, namespaces, pipelines, processors, agents, components)
//! is JSON under a key, listed, read and written the same way.
//!
//! One policy for a record that does not decode (written by a newer host,
//! or damaged): [`Records::get`] reports it as [`RecordError::Unreadable`],
//! never as absent, so nothing is created over it; [`Records::list`] logs
//! it with its bucket and key and skips it, so one bad record never hides
//! the others from a listing. Whoever decides on access from the records
//! (namespaces) reads each with `get`, so an unreadable one fails the
//! decision closed. Broker failures are [`RecordError::Unavailable`]
//! (transient).

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// Why a record operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The broker could not be asked, or failed: try again later.
    #[error("{bucket}: {reason}")]
    Unavailable {
        /// The bucket.
        bucket: String,
        /// What failed.
        reason: String,
    },
    /// The record exists but does not decode.
    #[error("{bucket}/{key}: the record is unreadable: {reason}")]
    Unreadable {
        /// The bucket.
        bucket: String,
        /// The record's key.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
}

/// The records of type `T` in one bucket.
#[derive(Clone)]
pub struct Records<T> {
    store: kv::Store,
    bucket: String,
    _records: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Records<T> {
    /// The records of `store`, a bucket named `bucket` (for messages).
    pub fn new(store: kv::Store, bucket: impl Into<String>) -> Records<T> {
        Records {
            store,
            bucket: bucket.into(),
            _records: PhantomData,
        }
    }

    /// The bucket underneath, for watches and compare-and-set updates.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> RecordError {
        RecordError::Unavailable {
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        }
    }

    /// Every key, sorted.
    pub async fn keys(&self) -> Result<Vec<String>, RecordError> {
        let mut keys = self.store.keys().await.map_err(|e| self.unavailable(e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            out.push(key.map_err(|e| self.unavailable(e))?);
        }
        out.sort();
        Ok(out)
    }

    /// The record under `key`, `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<T>, RecordError> {
        let Some(value) = self.store.get(key).await.map_err(|e| self.unavailable(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&value)
            .map(Some)
            .map_err(|e| RecordError::Unreadable {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Every record whose key starts with `prefix` (all with `""`), in key
    /// order; unreadable ones are logged and skipped.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, T)>, RecordError> {
        let mut out = Vec::new();
        for key in self.keys().await? {
            if !key.starts_with(prefix) {
                continue;
            }
            match self.get(&key).await {
                Ok(Some(record)) => out.push((key, record)),
                // Deleted between the listing and the read.
                Ok(None) => {}
                Err(e @ RecordError::Unreadable { .. }) => tracing::warn!("{e}: skipped"),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Writes `record` under `key`; returns the bucket's new revision.
    pub async fn put(&self, key: &str, record: &T) -> Result<u64, RecordError> {
        let json = serde_json::to_vec(record).map_err(|e| RecordError::Unreadable {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        self.store
            .put(key, json.into())
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// Deletes the record under `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), RecordError> {
        self.store
            .delete(key)
            .await
            .map_err(|e| self.unavailable(e))
    }
}
