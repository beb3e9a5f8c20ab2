//! Long reads per principal: a log read holds a broker consumer and a
//! stream for as long as the caller keeps it open (a follow until it ends
//! it), and a dead-letter scan reads up to 100 000 messages. One account opening many of them at once
//! would take the host's broker connections and memory from everyone, so
//! each principal gets a few of each at a time; beyond that a call is
//! refused with `RESOURCE_EXHAUSTED` (retry once one has ended).

use crate::agent::Principal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::Status;

/// Log reads (follows or not) one principal may hold open at once.
pub const LOG_READS_PER_PRINCIPAL: usize = 8;
/// Dead-letter scans (listings, replays, discards) one principal may run
/// at once.
pub const SCANS_PER_PRINCIPAL: usize = 2;

/// The long reads of each principal in progress.
#[derive(Debug, Default)]
pub struct LongReads {
    log_reads: Turns,
    scans: Turns,
}

impl LongReads {
    /// A turn for a log read (a follow or not), held until its stream
    /// ends.
    pub fn log_read(&self, who: &Principal) -> Result<Turn, Status> {
        self.log_reads
            .take(who, LOG_READS_PER_PRINCIPAL, "log reads")
    }

    /// A turn for a dead-letter scan, held while it and the replay or
    /// discard that follows run.
    pub fn scan(&self, who: &Principal) -> Result<Turn, Status> {
        self.scans
            .take(who, SCANS_PER_PRINCIPAL, "dead-letter scans")
    }
}

#[derive(Debug, Default)]
struct Turns(Arc<Mutex<HashMap<String, usize>>>);

impl Turns {
    fn take(&self, who: &Principal, max: usize, what: &str) -> Result<Turn, Status> {
        let key = match who {
            Principal::User(identity) => format!("user {}", identity.user),
            Principal::Host => "the host".to_owned(),
            Principal::Anonymous => "anonymous".to_owned(),
        };
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(key.clone()).or_default();
        if *count >= max {
            return Err(Status::resource_exhausted(format!(
                "{max} {what} of {key} run already: retry when one has ended"
            )));
        }
        *count += 1;
        Ok(Turn {
            turns: self.0.clone(),
            key,
        })
    }
}

/// One long read's place; given back when dropped.
#[derive(Debug)]
pub struct Turn {
    turns: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut held = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_principal_has_its_own_turns_given_back_on_drop() {
        let reads = LongReads::default();
        let host = Principal::Host;
        let first = reads.scan(&host).expect("one");
        let _second = reads.scan(&host).expect("two");
        let refused = reads.scan(&host).expect_err("a third");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("2 dead-letter scans of the host")
        );
        // Another principal is not held up, and log reads are counted apart.
        let _theirs = reads.scan(&Principal::Anonymous).expect("theirs");
        let _read = reads.log_read(&host).expect("a log read");
        drop(first);
        let _again = reads.scan(&host).expect("a turn came back");
    }
}
