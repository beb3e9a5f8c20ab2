//! Several hosts of one participant on one NATS (usually a cluster): who is
//! alive, and which host runs which processor instance.
//!
//! Every host writes a heartbeat into the `flowd-agents` bucket, whose
//! entries age out after the failover time: the hosts whose entry is there
//! are the live ones. A processor with `parallelism: N` has instances
//! `0..N`; each is placed on one live host by [`owner`], which every host
//! computes alike from the same live set. Before running an instance, a
//! host takes its lease in `flowd-leases` (an entry that also ages out after
//! the failover time, renewed with every heartbeat by compare-and-set), so
//! that two hosts never run the same instance at once even while their views
//! of the live set differ. A host that dies stops renewing: after the
//! failover time its heartbeat and leases are gone and the others take its
//! instances over. When it comes back, [`owner`] gives it its share again;
//! the host that ran an instance meanwhile stops it after its current batch
//! and releases the lease, and the returning host takes it.

use crate::{Broker, BrokerError};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

use flowd_core::buckets::{AGENTS, LEASES};

/// How hosts find each other and share the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This host's id among the participant's hosts (default: made once
    /// and kept in `<state_dir>/host-id`, so a restarted host is the same
    /// member).
    pub host_id: Option<String>,
    /// Interval of heartbeats and lease renewals.
    pub heartbeat_ms: u64,
    /// A host silent this long is gone; its processor instances move to
    /// the others.
    pub failover_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            host_id: None,
            heartbeat_ms: 1000,
            failover_ms: 5000,
        }
    }
}

impl ClusterConfig {
    /// The heartbeat interval, never shorter than 50 ms.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(50))
    }

    /// The failover time, never shorter than three heartbeats.
    pub fn failover(&self) -> Duration {
        Duration::from_millis(self.failover_ms.max(3 * self.heartbeat_ms.max(50)))
    }
}

/// A host as its heartbeat describes it (`flow get agents`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentRecord {
    /// The host's id ([`ClusterConfig::host_id`]), also its key in the bucket.
    pub id: String,
    /// The host's domain name.
    pub fqdn: String,
    /// FNAP address, when served.
    pub fnap: Option<String>,
    /// gRPC API address, when served.
    pub api: Option<String>,
    /// When the host started (Unix milliseconds).
    pub started_ms: u64,
    /// When this heartbeat was written (Unix milliseconds).
    pub heartbeat_ms: u64,
    /// Processor instances running on the host.
    pub instances: u32,
    /// Events its processors took in since it started.
    pub events_in: u64,
    /// Events per second over the last heartbeat interval.
    pub rate: f64,
}

/// The host id of `state_dir`: made once, then read back.
pub fn host_id(state_dir: &Path) -> std::io::Result<String> {
    let file = state_dir.join("host-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if valid_id(id) {
            return Ok(id.to_owned());
        }
    }
    let id = format!("h-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    std::fs::write(&file, &id)?;
    Ok(id)
}

/// Host ids name KV keys: letters, digits, `-` and `_`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn rank(processor: &str, instance: u32, host: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(processor.as_bytes());
    hash.update([0]);
    hash.update(instance.to_le_bytes());
    hash.update(host.as_bytes());
    hash.finalize().into()
}

/// The host that runs instance `instance` of `processor` among the live
/// `hosts` (rendezvous hashing: every host computes the same answer).
/// Instance by instance, each takes the host that ranks highest for it
/// (by a hash of the processor, the instance and the host) among those the
/// instances before it did not take, so a processor's instances go to
/// distinct hosts while there are enough. A host joining or leaving moves
/// the instances it gets or had, and those whose choice those moves
/// change; a single instance moves only if its host leaves or a host
/// ranking higher for it joins.
pub fn owner<'a>(processor: &str, instance: u32, hosts: &'a [String]) -> Option<&'a str> {
    placement(processor, instance.saturating_add(1), hosts)
        .pop()
        .flatten()
}

/// The hosts of instances `0..instances` of `processor` among the live
/// `hosts`, as [`owner`] places each, computed in one pass (`None` for
/// each when there is no live host).
pub fn placement<'a>(processor: &str, instances: u32, hosts: &'a [String]) -> Vec<Option<&'a str>> {
    let mut candidates: Vec<&String> = hosts.iter().collect();
    candidates.sort();
    candidates.dedup();
    let Some(first) = candidates.first().copied() else {
        return vec![None; instances as usize];
    };
    let mut taken: Vec<&String> = Vec::new();
    let mut out = Vec::with_capacity(instances as usize);
    for i in 0..instances {
        if taken.len() == candidates.len() {
            taken.clear();
        }
        let chosen = candidates
            .iter()
            .filter(|h| !taken.contains(h))
            .max_by_key(|h| rank(processor, i, h))
            .copied()
            .unwrap_or(first);
        taken.push(chosen);
        out.push(Some(chosen.as_str()));
    }
    out
}

/// The lease key of a processor instance.
pub fn lease_key(processor: &str, instance: u32) -> String {
    format!("{processor}.{instance}")
}

/// This host's membership: its heartbeat, the live set, its leases.
#[derive(Clone)]
pub struct Membership {
    /// This host's id.
    pub id: String,
    agents: kv::Store,
    leases: kv::Store,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Request(e.to_string())
}

impl Membership {
    /// Joins as host `id`, creating the agents and leases buckets (entries
    /// aging out after the failover time) if missing. The host is live
    /// only from its first [`Membership::beat`].
    pub async fn open(
        broker: &Broker,
        id: &str,
        config: &ClusterConfig,
    ) -> Result<Membership, BrokerError> {
        let ttl = config.failover();
        Ok(Membership {
            id: id.to_owned(),
            agents: broker.kv_with_ttl(AGENTS, ttl).await?,
            leases: broker.kv_with_ttl(LEASES, ttl).await?,
        })
    }

    /// Writes this host's heartbeat: it stays live for the failover time.
    pub async fn beat(&self, record: &AgentRecord) -> Result<(), BrokerError> {
        let json = serde_json::to_vec(record).map_err(unavailable)?;
        self.agents
            .put(&self.id, json.into())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Leaves: the others take this host's instances at once.
    pub async fn leave(&self) {
        let _ = self.agents.purge(&self.id).await;
    }

    /// The live hosts' records (heartbeat within the failover time).
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, BrokerError> {
        read_agents(&self.agents).await
    }

    /// Takes the lease of an instance: free, or already this host's (a
    /// restart). Returns its revision, or `None` when another host holds it.
    pub async fn acquire(&self, key: &str) -> Result<Option<u64>, BrokerError> {
        match self.leases.create(key, self.id.clone().into()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = self.leases.entry(key).await.map_err(unavailable)?;
                match entry {
                    Some(entry)
                        if entry.operation == kv::Operation::Put
                            && entry.value.as_ref() == self.id.as_bytes() =>
                    {
                        self.renew(key, entry.revision).await
                    }
                    _ => Ok(None),
                }
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Renews a held lease; `None` when it was lost (expired, or taken).
    pub async fn renew(&self, key: &str, revision: u64) -> Result<Option<u64>, BrokerError> {
        match self
            .leases
            .update(key, self.id.clone().into(), revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Keeps a held lease: renews it, or takes it again when it ran out
    /// while the broker was away (a node lost, a leader elected) and no one
    /// else took it. `None`: another host holds it now.
    pub async fn keep(&self, key: &str, revision: u64) -> Result<Option<u64>, BrokerError> {
        match self.renew(key, revision).await {
            Ok(None) => self.acquire(key).await,
            other => other,
        }
    }

    /// The host holding a lease, if any.
    pub async fn holder(&self, key: &str) -> Result<Option<String>, BrokerError> {
        Ok(self
            .leases
            .get(key)
            .await
            .map_err(unavailable)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Gives a lease back (if still held at `revision`).
    pub async fn release(&self, key: &str, revision: u64) {
        let _ = self
            .leases
            .delete_expect_revision(key, Some(revision))
            .await;
    }
}

/// The live hosts' records in an agents bucket.
pub async fn read_agents(agents: &kv::Store) -> Result<Vec<AgentRecord>, BrokerError> {
    let mut out: Vec<AgentRecord> = crate::Records::new(agents.clone(), AGENTS)
        .list("")
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(_, record)| record)
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placing_more_instances_keeps_where_the_first_ones_went() {
        let five = hosts(&["h-e", "h-a", "h-d", "h-b", "h-c"]);
        for p in ["orders-enrich", "x"] {
            let placed = placement(p, 12, &five);
            assert_eq!(placed.len(), 12);
            for (i, host) in placed.iter().enumerate() {
                assert_eq!(*host, owner(p, i as u32, &five), "{p} instance {i}");
            }
        }
        assert_eq!(placement("x", 3, &[]), vec![None, None, None]);
    }

    #[test]
    fn instances_spread_over_distinct_hosts_and_everyone_agrees() {
        let three = hosts(&["h-a", "h-b", "h-c"]);
        let reversed = hosts(&["h-c", "h-b", "h-a"]);
        for p in ["orders-enrich", "x", "pipeline-step-7"] {
            let placed: Vec<&str> = (0..3)
                .map(|i| owner(p, i, &three).expect("a host"))
                .collect();
            let mut distinct = placed.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{p}: {placed:?}");
            let again: Vec<&str> = (0..3)
                .map(|i| owner(p, i, &reversed).expect("a host"))
                .collect();
            assert_eq!(placed, again, "the order of the live set does not matter");
        }
        assert_eq!(owner("p", 0, &[]), None);
    }

    #[test]
    fn losing_a_host_moves_only_what_it_ran_to_the_others() {
        let three = hosts(&["h-a", "h-b", "h-c"]);
        let p = "orders-enrich";
        let gone = owner(p, 0, &three).expect("a host").to_owned();
        let two: Vec<String> = three.iter().filter(|h| **h != gone).cloned().collect();
        for i in 0..3 {
            let now = owner(p, i, &two).expect("a host");
            assert_ne!(now, gone);
        }
        // Single instance: it stays where it was unless its host is gone.
        let q = "single";
        let before = owner(q, 0, &three).expect("a host").to_owned();
        let other: Vec<String> = three.iter().filter(|h| **h != before).cloned().collect();
        let third = other[0].clone();
        let without_third: Vec<String> = three.iter().filter(|h| **h != third).cloned().collect();
        assert_eq!(owner(q, 0, &without_third), Some(before.as_str()));
    }

    #[test]
    fn failover_is_at_least_three_heartbeats() {
        let c = ClusterConfig {
            host_id: None,
            heartbeat_ms: 1000,
            failover_ms: 500,
        };
        assert_eq!(c.failover(), Duration::from_secs(3));
        assert!(valid_id("h-0123abcd"));
        assert!(!valid_id("h.x"));
    }
}
