//! The names of the broker's key-value buckets, in one place: the host's
//! records live there, and the broker-isolation tests list them all.

/// Processor declarations, by id.
pub const PROCESSORS: &str = "flowd-processors";
/// Processor status, written by the host that runs it (running, paused,
/// failed, counts).
pub const STATUS: &str = "flowd-status";
/// Processors' keyed state (the WIT `state` interface), keyed
/// `<id>.<hex of the state key>`.
pub const STATE: &str = "flowd-state";
/// Namespaces, their owners and grants.
pub const NAMESPACES: &str = "flowd-namespaces";
/// Subscriptions, on both sides: `subscriber.<token>` (a copy of a flow of
/// ours for a subscriber) and `subscription.<token>` (a local flow fed from
/// a copy).
pub const SUBSCRIPTIONS: &str = "flowd-subscriptions";
/// Object store of uploaded components, named by digest.
pub const COMPONENTS: &str = "flowd-components";
/// Object store of compiled components, shared by the participant's
/// hosts, keyed `<hex digest>-<engine tag>`.
pub const ARTIFACTS: &str = "flowd-artifacts";
/// Named, versioned components.
pub const REGISTRY: &str = "flowd-registry";
/// Live hosts' heartbeats.
pub const AGENTS: &str = "flowd-agents";
/// Which host runs which processor.
pub const LEASES: &str = "flowd-leases";
/// Pipeline manifests, by name.
pub const PIPELINES: &str = "flowd-pipelines";
/// Accounts shared by the hosts of one participant.
pub const ACCOUNTS: &str = "flowd-accounts";

/// Every bucket, for tools and tests that look at all of them.
pub const ALL: [&str; 12] = [
    PROCESSORS,
    STATUS,
    STATE,
    NAMESPACES,
    SUBSCRIPTIONS,
    COMPONENTS,
    ARTIFACTS,
    REGISTRY,
    AGENTS,
    LEASES,
    PIPELINES,
    ACCOUNTS,
];
