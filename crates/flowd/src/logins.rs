//! What a log-in may cost the host. A password check is argon2: about
//! 20 MiB of memory and tens of milliseconds of CPU, which anyone who can
//! reach the FNAA or the management API can ask for. So:
//!
//! - at most [`LoginLimits::concurrent_checks`] checks run at once, on as
//!   many threads of their own (the allocator keeps a thread's memory for
//!   it: checks spread over the blocking pool would each leave their 20
//!   MiB behind); a log-in that waits longer than
//!   [`LoginLimits::check_wait_ms`] for its turn is told to try again later
//!   (`4xx`), never "wrong password";
//! - a client address (IPv6: its /64) whose log-ins failed waits before its
//!   next check, the wait doubling with each failure of the last minute
//!   (FNAP and the gRPC API alike), so guessing is slow and cheap for the
//!   host;
//! - credentials verified once are remembered for
//!   [`LoginLimits::cache_secs`]: a client that logs in often (the gRPC API
//!   authenticates every call) costs one hash per cache lifetime. An entry
//!   is a salted SHA-256 of the user, the password and the account's stored
//!   hash, so a changed password or a removed account misses it.

use crate::accounts::{Account, Identity};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `[logins]`: the bounds on password checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginLimits {
    /// Password checks running at once (each holds about 20 MiB).
    pub concurrent_checks: usize,
    /// Checks of one address group (IPv6: a /64) running or waiting for a
    /// slot at once, so that one address cannot take every slot.
    pub checks_per_address: usize,
    /// How long a log-in waits for a check slot before `4xx`.
    pub check_wait_ms: u64,
    /// How long verified credentials are remembered; 0 disables the cache.
    pub cache_secs: u64,
    /// Credentials remembered at most.
    pub cache_entries: usize,
    /// The wait before checking the next log-in of an address whose last
    /// one failed; it doubles with each failure of the last minute, up to
    /// 32 times this.
    pub failure_delay_ms: u64,
    /// Addresses whose failures are remembered at most.
    pub failure_addresses: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            concurrent_checks: 2,
            checks_per_address: 1,
            check_wait_ms: 2_000,
            cache_secs: 300,
            cache_entries: 4_096,
            failure_delay_ms: 250,
            failure_addresses: 65_536,
        }
    }
}

/// How long failures of an address are remembered.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The outcome of a password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The password is right.
    Verified(Identity),
    /// Wrong user name or password.
    Wrong,
    /// No check slot came free in time: try again later.
    Busy,
}

struct Failures {
    count: u32,
    last: Instant,
}

/// A password check for the checking threads.
type Job = Box<dyn FnOnce() + Send>;

/// The threads that check passwords, started with the first check.
struct Checkers {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Checkers {
    fn start(threads: usize) -> Option<Checkers> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("flowd-login-{i}"))
                .spawn(move || {
                    loop {
                        let job = lock(&queue).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if spawned.is_err() {
                return None;
            }
        }
        Some(Checkers { jobs })
    }
}

/// The host's password checks, shared by FNAP and the gRPC API.
pub struct Logins {
    limits: LoginLimits,
    checkers: std::sync::OnceLock<Option<Checkers>>,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Each address group's turns ([`LoginLimits::checks_per_address`]),
    /// kept while someone holds or awaits one.
    turns: Mutex<HashMap<IpAddr, std::sync::Arc<tokio::sync::Semaphore>>>,
    salt: [u8; 16],
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    failures: std::sync::Arc<Mutex<HashMap<IpAddr, Failures>>>,
}

impl Logins {
    /// Checks under `limits` (a `concurrent_checks` of 0 is taken as 1).
    pub fn new(limits: LoginLimits) -> Logins {
        Logins {
            checkers: std::sync::OnceLock::new(),
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                limits.concurrent_checks.max(1),
            )),
            turns: Mutex::new(HashMap::new()),
            salt: *uuid::Uuid::new_v4().as_bytes(),
            verified: Mutex::new(HashMap::new()),
            failures: Default::default(),
            limits,
        }
    }

    /// Checks `password` for `user`, whose stored account is `account`
    /// (`None`: no such account; the check costs the same), for a client
    /// at `from`.
    pub async fn check(
        &self,
        from: IpAddr,
        account: Option<Account>,
        user: &str,
        password: &str,
    ) -> Checked {
        let key = account.as_ref().map(|a| self.key(user, password, &a.hash));
        if let (Some(key), Some(a)) = (&key, &account)
            && self.remembered(key)
        {
            return Checked::Verified(Identity {
                user: user.to_owned(),
                admin: a.admin,
            });
        }
        let group = flowd_fnap::session::address_group(from);
        let delay = self.failure_delay(group);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let wait = Duration::from_millis(self.limits.check_wait_ms);
        // The address group's turn first, then one of the host's slots, both
        // within `wait`. They go with the job: a log-in dropped while its
        // check runs (a client that hung up) frees neither early.
        let turns = self.turns_of(group);
        let permits = tokio::time::timeout(wait, async {
            let turn = turns.acquire_owned().await?;
            let slot = self.slots.clone().acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>((turn, slot))
        })
        .await;
        let Ok(Ok(permits)) = permits else {
            return Checked::Busy;
        };
        let (u, p) = (user.to_owned(), password.to_owned());
        let checkers = self
            .checkers
            .get_or_init(|| Checkers::start(self.limits.concurrent_checks.max(1)));
        let Some(checkers) = checkers else {
            return Checked::Busy;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (failures, max) = (self.failures.clone(), self.limits.failure_addresses);
        let job: Job = Box::new(move || {
            let _permits = permits;
            let verified = crate::accounts::verify_with(account.as_ref(), &u, &p);
            // Counted here, so that hanging up does not dodge the delay.
            if verified.is_none() {
                record(&failures, max, group);
            }
            let _ = tx.send(verified);
        });
        if checkers.jobs.send(job).is_err() {
            return Checked::Busy;
        }
        match rx.await {
            Ok(Some(identity)) => {
                if let Some(key) = key {
                    self.remember(key);
                }
                Checked::Verified(identity)
            }
            Ok(None) => Checked::Wrong,
            Err(_) => Checked::Busy,
        }
    }

    /// The turns of `group`; entries nobody holds or awaits are dropped.
    fn turns_of(&self, group: IpAddr) -> std::sync::Arc<tokio::sync::Semaphore> {
        let mut turns = lock(&self.turns);
        turns.retain(|_, t| std::sync::Arc::strong_count(t) > 1);
        let per_address = self.limits.checks_per_address.max(1);
        turns
            .entry(group)
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(per_address)))
            .clone()
    }

    /// Records a failed log-in from `from` that was not a password check
    /// (the local administrator's token).
    pub fn record_failure(&self, from: IpAddr) {
        self.failed(flowd_fnap::session::address_group(from));
    }

    /// The wait before the next check from `group`.
    pub fn failure_delay(&self, group: IpAddr) -> Duration {
        let failures = lock(&self.failures);
        match failures.get(&group) {
            Some(f) if f.last.elapsed() < FAILURE_WINDOW && f.count > 0 => {
                let doublings = (f.count - 1).min(5);
                Duration::from_millis(self.limits.failure_delay_ms.saturating_mul(1 << doublings))
            }
            _ => Duration::ZERO,
        }
    }

    fn failed(&self, group: IpAddr) {
        record(&self.failures, self.limits.failure_addresses, group);
    }

    fn key(&self, user: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        for part in [user, password, hash] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.limits.cache_secs)
    }

    fn remembered(&self, key: &[u8; 32]) -> bool {
        let ttl = self.ttl();
        lock(&self.verified)
            .get(key)
            .is_some_and(|at| at.elapsed() < ttl)
    }

    fn remember(&self, key: [u8; 32]) {
        let ttl = self.ttl();
        if ttl.is_zero() {
            return;
        }
        let mut verified = lock(&self.verified);
        if verified.len() >= self.limits.cache_entries {
            verified.retain(|_, at| at.elapsed() < ttl);
            if verified.len() >= self.limits.cache_entries {
                return;
            }
        }
        verified.insert(key, Instant::now());
    }
}

/// Counts a failure of `group` (at most `max` groups remembered).
fn record(failures: &Mutex<HashMap<IpAddr, Failures>>, max: usize, group: IpAddr) {
    let mut failures = lock(failures);
    if failures.len() >= max && !failures.contains_key(&group) {
        failures.retain(|_, f| f.last.elapsed() < FAILURE_WINDOW);
        if failures.len() >= max {
            return;
        }
    }
    let entry = failures.entry(group).or_insert(Failures {
        count: 0,
        last: Instant::now(),
    });
    if entry.last.elapsed() >= FAILURE_WINDOW {
        entry.count = 0;
    }
    entry.count = entry.count.saturating_add(1);
    entry.last = Instant::now();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Accounts;

    fn account(password: &str) -> Account {
        let mut a = Accounts::default();
        a.add("alice", password, false).expect("account");
        a.accounts.remove("alice").expect("added")
    }

    fn logins(cache_secs: u64) -> Logins {
        Logins::new(LoginLimits {
            cache_secs,
            failure_delay_ms: 40,
            ..LoginLimits::default()
        })
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn verified_credentials_are_remembered_until_the_account_changes() {
        let l = logins(300);
        let alice = account("right");
        assert!(matches!(
            l.check(HERE, Some(alice.clone()), "alice", "right").await,
            Checked::Verified(_)
        ));
        let key = l.key("alice", "right", &alice.hash);
        assert!(l.remembered(&key), "the second log-in costs no hash");
        assert_eq!(
            l.check(HERE, Some(alice.clone()), "alice", "wrong").await,
            Checked::Wrong
        );
        // A new password (a new stored hash) misses the entry.
        let changed = account("other");
        assert!(!l.remembered(&l.key("alice", "right", &changed.hash)));
        assert_eq!(
            l.check(HERE, Some(changed), "alice", "right").await,
            Checked::Wrong
        );
        assert_eq!(l.check(HERE, None, "alice", "right").await, Checked::Wrong);
        let off = logins(0);
        assert!(matches!(
            off.check(HERE, Some(alice.clone()), "alice", "right").await,
            Checked::Verified(_)
        ));
        assert!(!off.remembered(&off.key("alice", "right", &alice.hash)));
    }

    #[tokio::test]
    async fn failures_slow_down_their_address_group_only() {
        let l = logins(300);
        let attacker: IpAddr = "2001:db8:1:2::1".parse().expect("address");
        let neighbour: IpAddr = "2001:db8:1:2::99".parse().expect("address");
        let elsewhere: IpAddr = "2001:db8:9::1".parse().expect("address");
        let group = flowd_fnap::session::address_group;
        for _ in 0..3 {
            l.record_failure(attacker);
        }
        assert_eq!(
            l.failure_delay(group(neighbour)),
            Duration::from_millis(160)
        );
        assert_eq!(l.failure_delay(group(elsewhere)), Duration::ZERO);
        for _ in 0..40 {
            l.record_failure(attacker);
        }
        assert_eq!(
            l.failure_delay(group(attacker)),
            Duration::from_millis(40 * 32),
            "capped"
        );
    }

    #[tokio::test]
    async fn checks_beyond_the_slots_are_busy_not_wrong() {
        let l = Logins::new(LoginLimits {
            concurrent_checks: 1,
            check_wait_ms: 1,
            cache_secs: 0,
            ..LoginLimits::default()
        });
        let held = l.slots.acquire().await.expect("slot");
        assert_eq!(
            l.check(HERE, Some(account("right")), "alice", "right")
                .await,
            Checked::Busy
        );
        drop(held);
        assert!(matches!(
            l.check(HERE, Some(account("right")), "alice", "right")
                .await,
            Checked::Verified(_)
        ));
    }

    #[tokio::test]
    async fn one_address_group_cannot_take_every_slot() {
        let l = Logins::new(LoginLimits {
            concurrent_checks: 2,
            checks_per_address: 1,
            check_wait_ms: 50,
            cache_secs: 0,
            ..LoginLimits::default()
        });
        let attacker: IpAddr = "2001:db8:1:2::1".parse().expect("address");
        let neighbour: IpAddr = "2001:db8:1:2::2".parse().expect("address");
        let elsewhere: IpAddr = "2001:db8:9::1".parse().expect("address");
        let group = flowd_fnap::session::address_group;
        // The attacker's group holds its one turn (a check under way).
        let held = l
            .turns_of(group(attacker))
            .acquire_owned()
            .await
            .expect("turn");
        assert_eq!(
            l.check(neighbour, Some(account("right")), "alice", "right")
                .await,
            Checked::Busy,
            "a second check of the same /64 waits for the first"
        );
        assert_eq!(l.slots.available_permits(), 2, "and took no slot");
        assert!(matches!(
            l.check(elsewhere, Some(account("right")), "alice", "right")
                .await,
            Checked::Verified(_)
        ));
        drop(held);
        assert!(matches!(
            l.check(neighbour, Some(account("right")), "alice", "right")
                .await,
            Checked::Verified(_)
        ));
        assert!(lock(&l.turns).len() <= 1, "unused turns are dropped");
    }
}
