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
