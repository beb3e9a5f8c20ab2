//! Who may do what: namespaces, their owners and grants, and the principal
//! a session acts as.
//!
//! Every flow belongs to the nearest enclosing namespace the host knows
//! (like a DNS zone). A namespace has an owner (an account, or none for the
//! namespaces the host's configuration serves, which only administrators
//! hold) and grants (`read`, `write`, `admin`) to other accounts. Rights are
//! inherited downwards: an owner of `example.com` is an owner of
//! `team.example.com`. Flows marked public may be read by anyone, also
//! anonymously, like anonymous FTP.

use super::AgentError;
use crate::accounts::Identity;
use flowd_broker::NamespaceName;
use flowd_core::Right;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The host itself (start-up, its own bookkeeping).
    Host,
    /// An authenticated account.
    User(Identity),
    /// `AUTHENTICATE ANONYMOUS`: public flows only, read only.
    Anonymous,
}

impl Principal {
    pub fn user(&self) -> Option<&str> {
        match self {
            Principal::User(identity) => Some(&identity.user),
            _ => None,
        }
    }

    /// Host administrators (and the host) hold every right everywhere.
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Host => true,
            Principal::User(identity) => identity.admin,
            Principal::Anonymous => false,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::Host => "(host)",
            Principal::User(identity) => &identity.user,
            Principal::Anonymous => "(anonymous)",
        }
    }
}

/// A namespace as stored in the `flowd-namespaces` bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: NamespaceName,
    /// `None`: held by the host (administrators only).
    pub owner: Option<String>,
    /// New flows in it are public unless created `PRIVATE`.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub grants: BTreeMap<String, Right>,
    #[serde(default)]
    pub created: String,
}

/// The right `principal` holds through `chain` (a namespace and its
/// enclosing ones, nearest first), if any.
pub fn right_through(principal: &Principal, chain: &[NamespaceRecord]) -> Option<Right> {
    if principal.is_admin() {
        return Some(Right::Admin);
    }
    let user = principal.user()?;
    chain
        .iter()
        .filter_map(|ns| {
            if ns.owner.as_deref() == Some(user) {
                Some(Right::Admin)
            } else {
                ns.grants.get(user).copied()
            }
        })
        .max()
}

/// Fails with a "not permitted" error unless `held` covers `needed`.
pub fn require(
    principal: &Principal,
    held: Option<Right>,
    needed: Right,
    what: &str,
) -> Result<(), AgentError> {
    if held.is_some_and(|r| r.covers(needed)) {
        return Ok(());
    }
    Err(denied(principal, needed, what))
}

/// The "not permitted" error for `what`, which needs `needed`.
pub fn denied(principal: &Principal, needed: Right, what: &str) -> AgentError {
    AgentError::Forbidden(match principal {
        Principal::Anonymous => format!("anonymous sessions cannot {what}"),
        _ => format!("{} has no {needed} right to {what}", principal.name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, owner: Option<&str>, grants: &[(&str, Right)]) -> NamespaceRecord {
        NamespaceRecord {
            name: NamespaceName::parse(name).expect("valid"),
            owner: owner.map(str::to_owned),
            public: false,
            grants: grants.iter().map(|(u, r)| ((*u).to_owned(), *r)).collect(),
            created: String::new(),
        }
    }

    fn user(name: &str, admin: bool) -> Principal {
        Principal::User(Identity {
            user: name.into(),
            admin,
        })
    }

    #[test]
    fn rights_are_inherited_and_maximal() {
        let chain = [
            ns("team.example.com", Some("bob"), &[("carol", Right::Read)]),
            ns("example.com", Some("alice"), &[("carol", Right::Write)]),
        ];
        assert_eq!(
            right_through(&user("bob", false), &chain),
            Some(Right::Admin)
        );
        assert_eq!(
            right_through(&user("alice", false), &chain),
            Some(Right::Admin)
        );
        assert_eq!(
            right_through(&user("carol", false), &chain),
            Some(Right::Write)
        );
        assert_eq!(right_through(&user("dave", false), &chain), None);
        assert_eq!(
            right_through(&user("dave", true), &chain),
            Some(Right::Admin)
        );
        assert_eq!(right_through(&Principal::Anonymous, &chain), None);
        let p = user("carol", false);
        assert!(require(&p, Some(Right::Write), Right::Read, "read").is_ok());
        let err = require(&p, Some(Right::Read), Right::Write, "write to a.b").expect_err("no");
        assert_eq!(err.to_string(), "carol has no write right to write to a.b");
    }
}
