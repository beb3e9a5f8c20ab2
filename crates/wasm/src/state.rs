//! Keyed state of one processor, transactional per call.
//!
//! Writes made during a call go to a journal; a call that returns `ok`
//! commits them, a call that fails or traps rolls them back. A retried batch
//! therefore sees exactly the state it saw the first time, and a poisoned
//! instance cannot leave half-written state behind.
//!
//! A call that returned `ok` may still be refused afterwards (its outputs
//! do not resolve, or another step of its fused segment fails): a
//! savepoint taken before the call keeps the previous values of what its
//! commits changed, so [`KeyedState::revert`] puts the state back without
//! copying all of it.

use std::collections::BTreeMap;

/// Keyed state with a byte quota (keys plus values).
#[derive(Debug, Clone, Default)]
pub struct KeyedState {
    committed: BTreeMap<String, Vec<u8>>,
    /// Uncommitted writes of the current call (`None` deletes).
    journal: BTreeMap<String, Option<Vec<u8>>>,
    /// Keys written since the last [`KeyedState::take_changes`].
    dirty: BTreeMap<String, ()>,
    /// Bytes the committed state would take with the journal applied.
    size: usize,
    committed_size: usize,
    quota: usize,
    /// Since [`KeyedState::savepoint`]: what the commits replaced.
    undo: Option<Savepoint>,
}

/// What [`KeyedState::revert`] needs to put the state back.
#[derive(Debug, Clone, Default)]
struct Savepoint {
    /// `(key, value before)` of every commit since, oldest first.
    replaced: Vec<(String, Option<Vec<u8>>)>,
    /// Keys the commits since made dirty: after a revert they are as they
    /// were, nothing to persist (a stale write or a tombstone for a key
    /// never persisted would otherwise go to the broker).
    newly_dirty: Vec<String>,
    committed_size: usize,
}

/// The state write exceeded the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// The quota in bytes.
    pub quota: usize,
}

impl KeyedState {
    /// Empty state allowed `quota` bytes.
    pub fn new(quota: usize) -> Self {
        KeyedState {
            quota,
            ..KeyedState::default()
        }
    }

    /// Starts from state persisted elsewhere (e.g. the broker's KV).
    pub fn restore(entries: impl IntoIterator<Item = (String, Vec<u8>)>, quota: usize) -> Self {
        let committed: BTreeMap<_, _> = entries.into_iter().collect();
        let size = committed.iter().map(|(k, v)| k.len() + v.len()).sum();
        KeyedState {
            committed,
            size,
            committed_size: size,
            quota,
            ..KeyedState::default()
        }
    }

    /// A key's value as the current call sees it (its own writes included).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        match self.journal.get(key) {
            Some(pending) => pending.as_deref(),
            None => self.committed.get(key).map(Vec::as_slice),
        }
    }

    fn current_len(&self, key: &str) -> usize {
        self.get(key).map(|v| key.len() + v.len()).unwrap_or(0)
    }

    /// Writes a key in the current call; refused, changing nothing, when
    /// the state would exceed its quota.
    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), QuotaExceeded> {
        let new_size = self.size - self.current_len(key) + key.len() + value.len();
        if new_size > self.quota {
            return Err(QuotaExceeded { quota: self.quota });
        }
        self.size = new_size;
        self.journal.insert(key.to_owned(), Some(value));
        Ok(())
    }

    /// Deletes a key in the current call.
    pub fn delete(&mut self, key: &str) {
        self.size -= self.current_len(key);
        self.journal.insert(key.to_owned(), None);
    }

    /// Keys starting with `prefix`, in byte order.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let committed = self
            .committed
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k);
        let journaled = self
            .journal
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k);
        let mut keys: Vec<String> = committed
            .chain(journaled)
            .filter(|k| self.get(k).is_some())
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Makes the writes of the current call permanent (until a
    /// [`KeyedState::revert`] to a savepoint taken before it).
    pub fn commit(&mut self) {
        for (key, value) in std::mem::take(&mut self.journal) {
            let was_dirty = self.dirty.insert(key.clone(), ()).is_some();
            if let Some(undo) = &mut self.undo
                && !was_dirty
            {
                undo.newly_dirty.push(key.clone());
            }
            let old = match value {
                Some(v) => self.committed.insert(key.clone(), v),
                None => self.committed.remove(&key),
            };
            if let Some(undo) = &mut self.undo {
                undo.replaced.push((key, old));
            }
        }
        self.committed_size = self.size;
    }

    /// Starts keeping what the following commits replace, so that they can
    /// be reverted together; replaces an earlier savepoint.
    pub fn savepoint(&mut self) {
        self.undo = Some(Savepoint {
            replaced: Vec::new(),
            newly_dirty: Vec::new(),
            committed_size: self.committed_size,
        });
    }

    /// The commits since the savepoint are final: forgets their undo.
    pub fn release(&mut self) {
        self.undo = None;
    }

    /// Puts the committed state back as it was at the savepoint (and drops
    /// any uncommitted write). Without a savepoint it only rolls back.
    pub fn revert(&mut self) {
        self.rollback();
        let Some(undo) = self.undo.take() else {
            return;
        };
        for key in &undo.newly_dirty {
            self.dirty.remove(key);
        }
        for (key, old) in undo.replaced.into_iter().rev() {
            // A key dirty before the savepoint stays so: its value put back
            // is what is persisted next.
            match old {
                Some(v) => {
                    self.committed.insert(key, v);
                }
                None => {
                    self.committed.remove(&key);
                }
            }
        }
        self.committed_size = undo.committed_size;
        self.size = undo.committed_size;
    }

    /// Forgets the writes of the current call.
    pub fn rollback(&mut self) {
        self.journal.clear();
        self.size = self.committed_size;
    }

    /// Committed keys changed since the last call to this method, with their
    /// values (`None`: deleted). For persisting state incrementally.
    pub fn take_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.dirty)
            .into_keys()
            .map(|k| {
                let v = self.committed.get(&k).cloned();
                (k, v)
            })
            .collect()
    }

    /// The committed entries, in key order (a whole snapshot, e.g. of one
    /// partition of a keyed step).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.committed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Bytes held (keys plus values), including uncommitted writes.
    pub fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_savepoint_reverts_several_commits_and_what_they_persist() {
        let mut s = KeyedState::restore([("a".to_owned(), b"1".to_vec())], 100);
        let _ = s.take_changes();
        s.savepoint();
        s.set("a", b"2".to_vec()).expect("fits");
        s.set("b", b"x".to_vec()).expect("fits");
        s.commit();
        s.set("a", b"3".to_vec()).expect("fits");
        s.delete("b");
        s.set("c", b"yy".to_vec()).expect("fits");
        s.commit();
        assert_eq!(s.get("a"), Some(&b"3"[..]));
        s.revert();
        assert_eq!(
            (s.get("a"), s.get("b"), s.get("c")),
            (Some(&b"1"[..]), None, None)
        );
        assert_eq!(s.size(), 2, "the size at the savepoint");
        // What went back as it was is not persisted again (no tombstones
        // for keys never persisted, no stale values).
        assert_eq!(s.take_changes(), []);
        // A key dirty before the savepoint stays dirty, with its value then.
        s.set("a", b"9".to_vec()).expect("fits");
        s.commit();
        s.savepoint();
        s.set("a", b"10".to_vec()).expect("fits");
        s.commit();
        s.revert();
        assert_eq!(s.take_changes(), [("a".to_owned(), Some(b"9".to_vec()))]);
        // Released commits stay; a revert without a savepoint only rolls back.
        s.savepoint();
        s.set("a", b"4".to_vec()).expect("fits");
        s.commit();
        s.release();
        s.set("a", b"5".to_vec()).expect("fits");
        s.revert();
        assert_eq!(s.get("a"), Some(&b"4"[..]));
        assert_eq!(s.take_changes(), [("a".to_owned(), Some(b"4".to_vec()))]);
    }

    #[test]
    fn commit_rollback_and_keys() {
        let mut s = KeyedState::new(1024);
        s.set("w/a", b"1".to_vec()).expect("fits");
        s.set("w/b", b"2".to_vec()).expect("fits");
        s.commit();
        s.set("w/c", b"3".to_vec()).expect("fits");
        s.delete("w/a");
        assert_eq!(s.keys("w/"), vec!["w/b", "w/c"]);
        s.rollback();
        assert_eq!(s.keys("w/"), vec!["w/a", "w/b"]);
        assert_eq!(s.get("w/a"), Some(&b"1"[..]));
        assert_eq!(s.size(), 8);
        let mut changes = s.take_changes();
        changes.sort();
        assert_eq!(changes.len(), 2);
        assert!(s.take_changes().is_empty());
    }

    #[test]
    fn quota_is_enforced_and_released() {
        let mut s = KeyedState::new(10);
        s.set("k", vec![0; 9]).expect("exactly the quota");
        assert_eq!(s.set("j", vec![0; 1]), Err(QuotaExceeded { quota: 10 }));
        s.set("k", vec![0; 2]).expect("overwriting shrinks");
        s.delete("k");
        s.set("j", vec![0; 9])
            .expect("deleted bytes are free again");
    }
}
