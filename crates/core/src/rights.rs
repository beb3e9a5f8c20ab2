//! What an account may do in a namespace, and the options a flow is created
//! with. Both are spoken by FNAP (`GRANT`, `CREATE FLOW`) and stored in the
//! broker's records, so they live below both.

use std::fmt;

/// A right a namespace owner grants to another account. Rights are ordered:
/// a higher one includes the lower ones.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Read flows and subscribe to them.
    Read,
    /// Write events, create and delete flows and processors.
    Write,
    /// Everything the owner can do, including granting.
    Admin,
}

impl Right {
    /// Every right, lowest first.
    pub const ALL: [Right; 3] = [Right::Read, Right::Write, Right::Admin];

    /// Parses `READ`, `WRITE` or `ADMIN`, in any case.
    pub fn parse(word: &str) -> Option<Right> {
        Right::ALL
            .into_iter()
            .find(|r| r.keyword().eq_ignore_ascii_case(word))
    }

    /// The protocol keyword (`READ`, `WRITE`, `ADMIN`).
    pub fn keyword(self) -> &'static str {
        match self {
            Right::Read => "READ",
            Right::Write => "WRITE",
            Right::Admin => "ADMIN",
        }
    }

    /// Whether holding `self` allows what `needed` allows.
    pub fn covers(self, needed: Right) -> bool {
        self >= needed
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        })
    }
}

/// Retention and access options of `CREATE FLOW` / `UPDATE FLOW`; `None`
/// leaves a setting as it is (or at the host's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowOptions {
    /// Whether anonymous sessions may read the flow.
    pub public: Option<bool>,
    /// Events older than this are dropped.
    pub max_age_secs: Option<u64>,
    /// The oldest events are dropped beyond this size.
    pub max_bytes: Option<i64>,
    /// Events with the same id within this window are stored once.
    pub duplicate_window_secs: Option<u64>,
}
