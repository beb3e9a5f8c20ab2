//! What one principal may hold on the host: subscriptions (an anonymous
//! one costs a copy, a relay and, with the embedded broker, a broker
//! account), processors and uploaded components. Anonymous clients are
//! counted per address (IPv6: per /64), since that is all they are.
//!
//! A principal over its quota is told so with a `4xx` (`450 quota: ...`):
//! the quota frees as its subscriptions or processors end, so trying
//! again later may work. Administrators and the host itself have none.

use serde::{Deserialize, Serialize};

/// `[quotas]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Subscriptions to this host's flows held by one account.
    pub subscriptions_per_account: usize,
    /// Anonymous subscriptions held from one client address.
    pub anonymous_subscriptions_per_address: usize,
    /// Anonymous subscriptions held in all.
    pub anonymous_subscriptions: usize,
    /// Processors owned by one account (pipeline steps included).
    pub processors_per_account: usize,
    /// Component versions one account may have stored.
    pub components_per_account: usize,
    /// Bytes of components one account may have stored.
    pub component_bytes_per_account: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            subscriptions_per_account: 1_000,
            anonymous_subscriptions_per_address: 8,
            anonymous_subscriptions: 256,
            processors_per_account: 1_000,
            components_per_account: 500,
            component_bytes_per_account: 1 << 30,
        }
    }
}

/// The refusal of a principal over `what`'s quota of `limit`.
pub(crate) fn exceeded(what: &str, limit: impl std::fmt::Display) -> super::AgentError {
    super::AgentError::Quota(format!(
        "quota: at most {limit} {what}; end one, or try again later"
    ))
}

/// One principal's creations, one at a time: a quota is counted and the
/// thing made under the principal's admission, so that concurrent
/// requests of one principal cannot all pass a quota that has room for
/// one. (Hosts sharing a broker count apart; see `docs/security.md`.)
#[derive(Debug, Default)]
pub(crate) struct Admissions {
    held:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// A principal's admission, held while it creates what its quota counts.
pub(crate) type Admission = Option<tokio::sync::OwnedMutexGuard<()>>;

impl Admissions {
    /// Waits for `principal`'s turn. Administrators and the host have no
    /// quota and need none; anonymous clients share one (their quotas are
    /// counted together, per address and in all).
    pub(crate) async fn admit(&self, principal: &super::Principal) -> Admission {
        if principal.is_admin() || principal == &super::Principal::Host {
            return None;
        }
        let key = match principal.user() {
            Some(user) => format!("user {user}"),
            None => "anonymous".to_owned(),
        };
        let lock = {
            let mut held = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Entries nobody holds or awaits go, so the map stays as small
            // as the requests under way.
            held.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
            held.entry(key).or_default().clone()
        };
        Some(lock.lock_owned().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Principal;
    use std::time::Duration;

    #[tokio::test]
    async fn one_principal_creates_one_thing_at_a_time() {
        let admissions = std::sync::Arc::new(Admissions::default());
        let user = |name: &str| {
            Principal::User(crate::accounts::Identity {
                user: name.into(),
                admin: false,
            })
        };
        let (alice, bob) = (user("alice"), user("bob"));
        let first = admissions.admit(&alice).await;
        assert!(first.is_some());
        let waiting = {
            let admissions = admissions.clone();
            let alice = alice.clone();
            tokio::spawn(async move { admissions.admit(&alice).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "alice's second request waits");
        assert!(
            admissions.admit(&bob).await.is_some(),
            "bob is not held up by alice"
        );
        assert!(admissions.admit(&Principal::Host).await.is_none());
        drop(first);
        assert!(waiting.await.expect("joined"), "then it goes");
        let _ = admissions.admit(&bob).await;
        assert!(
            admissions.held.lock().expect("lock").len() <= 1,
            "finished turns are dropped"
        );
    }
}
