//! Keyed steps' partitions: the stream their events are sorted into, the
//! consumers that read a set of partitions, and the record that holds a
//! partition's state and position.
//!
//! A step declared with `key:` and `partitions: P` reads its inputs through
//! a partitioner (run by the step's instance 0): each event's key is hashed
//! ([`partition_of`]) and the event is copied, in input order, to
//! `keyed.<step>.<partition>.<port>` in the step's own stream
//! ([`stream_name`]). Every partition is owned by one
//! instance at a time (a lease); an instance reads its partitions through
//! one consumer filtered on them ([`Broker::partition_consumer`]), so the
//! events of one key reach one instance, in order.
//!
//! A partition's keyed state and the stream sequence of the last event it
//! took in are one record ([`PartitionRecord`]) in the state bucket, written
//! by compare-and-set after the batch's outputs are stored: the state and
//! the position move together (the consumer is only a cursor: a new owner
//! reads the partition again from its record's position), an
//! owner that lost the partition cannot overwrite its successor's, and a
//! batch delivered again after a crash is recognised by its sequence and
//! skipped, so no update is lost or applied twice. Events a record includes
//! are then purged from the stream ([`Broker::purge_partition`]).

use crate::{Broker, BrokerError, placed, request};
use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// Most partitions a step may declare.
pub const MAX_PARTITIONS: u32 = 1024;

/// Partitions of a keyed step that does not say.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The stream holding a keyed step's partitioned events.
pub fn stream_name(step: &str) -> String {
    format!("KEYED_{step}")
}

/// The subject of input `port`'s events in `partition`.
pub fn subject(step: &str, partition: u32, port: u32) -> String {
    format!("keyed.{step}.{partition}.{port}")
}

/// The subjects of every port of `partition`.
pub fn partition_filter(step: &str, partition: u32) -> String {
    format!("keyed.{step}.{partition}.*")
}

/// The partition and port of a subject of `step`'s stream.
pub fn parse_subject(step: &str, subject: &str) -> Option<(u32, u32)> {
    let rest = subject.strip_prefix("keyed.")?.strip_prefix(step)?;
    let (partition, port) = rest.strip_prefix('.')?.split_once('.')?;
    Some((partition.parse().ok()?, port.parse().ok()?))
}

/// The state bucket key of `partition`'s record (`p` is not a hex digit:
/// no keyed-state entry of the step has such a key).
pub fn record_key(step: &str, partition: u32) -> String {
    format!("{step}.p{partition}")
}

/// The lease key of `partition` in the leases bucket.
pub fn lease_key(step: &str, partition: u32) -> String {
    format!("{step}.part{partition}")
}

/// The partition of `key` among `partitions` (FNV-1a, 32 bits): fixed
/// forever for a given count, so a step's partition count cannot change
/// once it has state.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in key {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// The partitions instance `instance` of `parallelism` owns.
pub fn owned_by(instance: u32, parallelism: u32, partitions: u32) -> Vec<u32> {
    let parallelism = parallelism.max(1);
    (0..partitions)
        .filter(|p| p % parallelism == instance)
        .collect()
}

/// The stem of instance `instance`'s consumers of `step`'s partitions; each
/// consumer adds a nonce, so that a runner never pulls from a consumer
/// made for another (a stale runner of the same instance, still pulling,
/// would take events its successor then never sees: the consumer takes no
/// acknowledgements).
pub fn consumer_stem(step: &str, instance: u32) -> String {
    format!("keyed-{step}-i{instance}-")
}

/// A partition's keyed state and position, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionRecord {
    /// Stream sequence (in the step's partition stream) of the last event
    /// the state includes.
    pub last: u64,
    /// The state's entries.
    pub entries: Vec<(String, Vec<u8>)>,
}

/// Why a stored partition record cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("partition record: {0}")]
pub struct RecordFormatError(&'static str);

const MAGIC: &[u8; 4] = b"FKP1";

impl PartitionRecord {
    /// The record's bytes: magic, `last`, entry count, then each key and
    /// value with a 32-bit length (little-endian throughout).
    pub fn encode<'a>(last: u64, entries: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&last.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let mut count: u32 = 0;
        for (key, value) in entries {
            for part in [key.as_bytes(), value] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
            count = count.saturating_add(1);
        }
        out[12..16].copy_from_slice(&count.to_le_bytes());
        out
    }

    /// Reads a record, checking every length against what is there.
    pub fn decode(bytes: &[u8]) -> Result<PartitionRecord, RecordFormatError> {
        let mut rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(RecordFormatError("not a partition record"))?;
        let mut take = |n: usize| -> Result<&[u8], RecordFormatError> {
            if rest.len() < n {
                return Err(RecordFormatError("truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let last = u64::from_le_bytes(take(8)?.try_into().unwrap_or_default());
        let count = u32::from_le_bytes(take(4)?.try_into().unwrap_or_default());
        let mut entries = Vec::new();
        for _ in 0..count {
            let len = u32::from_le_bytes(take(4)?.try_into().unwrap_or_default()) as usize;
            let key = std::str::from_utf8(take(len)?)
                .map_err(|_| RecordFormatError("a key is not UTF-8"))?
                .to_owned();
            let len = u32::from_le_bytes(take(4)?.try_into().unwrap_or_default()) as usize;
            entries.push((key, take(len)?.to_vec()));
        }
        if !rest.is_empty() {
            return Err(RecordFormatError("trailing bytes"));
        }
        Ok(PartitionRecord { last, entries })
    }
}

impl Broker {
    /// The partition stream of `step`, created if missing. Events stay
    /// until their partition's owner purges them ([`Broker::purge_partition`]).
    pub async fn partition_stream(&self, step: &str) -> Result<stream::Stream, BrokerError> {
        let config = stream::Config {
            name: stream_name(step),
            subjects: vec![format!("keyed.{step}.>")],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            // A chunk copied again (its input's acknowledgement lost)
            // is stored once if it comes within this window.
            duplicate_window: Duration::from_secs(600),
            // Bounded: past it, copies wait (the partitioner retries).
            max_bytes: 1 << 30,
            discard: stream::DiscardPolicy::New,
            description: Some(format!("partitions of keyed step {step}")),
            ..Default::default()
        };
        placed(|| self.js.get_or_create_stream(config.clone())).await
    }

    /// Removes a keyed step's partition stream (gone already is fine).
    pub async fn delete_partition_stream(&self, step: &str) -> Result<(), BrokerError> {
        match self.js.delete_stream(stream_name(step)).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(request(e)),
        }
    }

    /// A fresh consumer of `partitions` of `step` for `instance`, reading
    /// each partition from its oldest event still stored. It takes no
    /// acknowledgements: the partitions' records are the position, and
    /// the reader skips what they include.
    ///
    /// The reader holds the leases of `partitions`: any other consumer of
    /// the stream reading one of them belongs to an owner that lost it (a
    /// dead host, a shrunk parallelism) and is removed, which also stops a
    /// stale owner still pulling.
    pub async fn partition_consumer(
        &self,
        step: &str,
        instance: u32,
        partitions: &[u32],
    ) -> Result<consumer::PullConsumer, BrokerError> {
        let stream = self.partition_stream(step).await?;
        let stem = consumer_stem(step, instance);
        let name = format!("{stem}{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let filters: Vec<String> = partitions
            .iter()
            .map(|&p| partition_filter(step, p))
            .collect();
        let mut consumers = stream.consumers();
        let mut stale = Vec::new();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(request)?;
            let mut theirs = info.config.filter_subjects.clone();
            if !info.config.filter_subject.is_empty() {
                theirs.push(info.config.filter_subject.clone());
            }
            if info.name.starts_with(&stem) || theirs.iter().any(|f| filters.contains(f)) {
                stale.push(info.name.clone());
            }
        }
        for other in stale {
            match stream.delete_consumer(&other).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(request(e)),
            }
        }
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name),
                filter_subjects: filters,
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                // The position is the partitions' records, not the
                // consumer: one left behind by a gone instance goes.
                inactive_threshold: Duration::from_secs(300),
                ..Default::default()
            })
            .await
            .map_err(request)
    }

    /// Removes `partition`'s events before sequence `before` (those its
    /// record includes).
    pub async fn purge_partition(
        &self,
        step: &str,
        partition: u32,
        before: u64,
    ) -> Result<(), BrokerError> {
        let stream = self
            .js
            .get_stream(stream_name(step))
            .await
            .map_err(request)?;
        stream
            .purge()
            .filter(partition_filter(step, partition))
            .sequence(before)
            .await
            .map_err(request)?;
        Ok(())
    }

    /// Events waiting in each partition of `step` (all ports), and in the
    /// partition stream as a whole.
    pub async fn partition_backlog(&self, step: &str) -> Result<BTreeMap<u32, u64>, BrokerError> {
        let stream = self
            .js
            .get_stream(stream_name(step))
            .await
            .map_err(request)?;
        let mut info = stream
            .info_with_subjects(format!("keyed.{step}.>"))
            .await
            .map_err(request)?;
        let mut out = BTreeMap::new();
        while let Some(entry) = info.next().await {
            let (subject, count) = entry.map_err(request)?;
            if let Some((partition, _)) = parse_subject(step, &subject) {
                *out.entry(partition).or_insert(0) += count as u64;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let entries = [("count/a", b"3".as_slice()), ("", b"".as_slice())];
        let bytes = PartitionRecord::encode(42, entries.iter().copied());
        let record = PartitionRecord::decode(&bytes).expect("decodes");
        assert_eq!(record.last, 42);
        assert_eq!(
            record.entries,
            vec![
                ("count/a".to_owned(), b"3".to_vec()),
                (String::new(), vec![])
            ]
        );
        for cut in 0..bytes.len() {
            assert!(
                PartitionRecord::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(PartitionRecord::decode(&long).is_err());
        // A count far larger than the bytes allocates nothing up front.
        let mut lying = bytes.clone();
        lying[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(PartitionRecord::decode(&lying).is_err());
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(
            partition_of(b"customer-1", 64),
            partition_of(b"customer-1", 64)
        );
        let mut seen = [0u32; 64];
        for i in 0..10_000 {
            seen[partition_of(format!("k{i}").as_bytes(), 64) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
        assert_eq!(
            parse_subject("count", &subject("count", 17, 2)),
            Some((17, 2))
        );
        assert_eq!(parse_subject("count", "keyed.counter.1.0"), None);
        let all: Vec<u32> = (0..4).flat_map(|i| owned_by(i, 4, 64)).collect();
        assert_eq!(all.len(), 64);
    }
}
