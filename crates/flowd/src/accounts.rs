//! The host's user accounts: names with argon2 password hashes, kept in
//! `<state_dir>/accounts.json` (written atomically, mode 0600) and managed
//! with `flowd account add|remove|list`. The FNAP server reads the file at
//! each authentication, so changes apply without a restart.
//!
//! Several hosts of one participant share their accounts through the
//! broker ([`SharedAccounts`], bucket `flowd-accounts`): each host
//! publishes the accounts of its file when it starts and whenever the file
//! changes, and accepts a log-in that its own file or the shared accounts
//! allow.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid accounts file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("account `{0}` already exists")]
    Exists(String),
    #[error("no such account: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The shared accounts could not be read or written (the broker is
    /// unavailable): try again later.
    #[error("{0}")]
    Unavailable(#[from] flowd_broker::RecordError),
    /// Too many password checks are running ([`crate::logins`]): try
    /// again later.
    #[error("too many log-ins are being checked; try again later")]
    Busy,
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// PHC string of the argon2id hash.
    pub hash: String,
    /// Host administrators may create top-level namespaces and act on
    /// every namespace, flow and processor.
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub created: String,
}

/// The accounts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    pub accounts: BTreeMap<String, Account>,
}

/// Who a successful authentication says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub admin: bool,
}

impl Accounts {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("accounts.json")
    }

    /// Reads the file; a missing file means no accounts.
    pub fn load(state_dir: &Path) -> Result<Accounts, AccountError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| AccountError::Parse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Accounts::default()),
            Err(source) => Err(AccountError::Read { path, source }),
        }
    }

    /// Writes the file atomically (temporary file + rename), readable by
    /// the owner only.
    pub fn save(&self, state_dir: &Path) -> Result<(), AccountError> {
        let path = Self::path(state_dir);
        let write = |source| AccountError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(write)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| write(std::io::Error::other(e)))?;
        flowd_core::secret_file::write(&path, &json).map_err(write)
    }

    pub fn add(&mut self, user: &str, password: &str, admin: bool) -> Result<(), AccountError> {
        flowd_fnap::command::check_user(user).map_err(|e| AccountError::Invalid(e.to_string()))?;
        if user == local::LOCAL_ADMIN {
            return Err(AccountError::Invalid(format!(
                "`{user}` is reserved for the host's local administrator"
            )));
        }
        if password.is_empty() {
            return Err(AccountError::Invalid("empty password".into()));
        }
        if self.accounts.contains_key(user) {
            return Err(AccountError::Exists(user.to_owned()));
        }
        let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
            .map_err(|e| AccountError::Invalid(e.to_string()))?;
        let hash = argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AccountError::Invalid(e.to_string()))?
            .to_string();
        self.accounts.insert(
            user.to_owned(),
            Account {
                hash,
                admin,
                created: chrono::Utc::now().to_rfc3339(),
            },
        );
        Ok(())
    }

    pub fn remove(&mut self, user: &str) -> Result<(), AccountError> {
        self.accounts
            .remove(user)
            .map(|_| ())
            .ok_or_else(|| AccountError::NotFound(user.to_owned()))
    }

    /// Checks a password. Unknown users cost the same hashing work as known
    /// ones, so timing does not tell which names exist.
    pub fn verify(&self, user: &str, password: &str) -> Option<Identity> {
        verify_with(self.accounts.get(user), user, password)
    }
}

/// Checks `password` against `account`; without one, against a dummy hash
/// so that the time taken does not tell.
pub(crate) fn verify_with(
    account: Option<&Account>,
    user: &str,
    password: &str,
) -> Option<Identity> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| {
        SaltString::encode_b64(b"flowd-dummy-salt")
            .ok()
            .and_then(|salt| {
                argon2::Argon2::default()
                    .hash_password(b"-", &salt)
                    .ok()
                    .map(|h| h.to_string())
            })
            .unwrap_or_default()
    });
    let hash = account.map_or(dummy.as_str(), |a| a.hash.as_str());
    let parsed = PasswordHash::new(hash).ok()?;
    let ok = verify_in_place(password.as_bytes(), &parsed);
    match account {
        Some(a) if ok => Some(Identity {
            user: user.to_owned(),
            admin: a.admin,
        }),
        _ => None,
    }
}

/// The most memory a stored hash may ask a check for, in KiB (the
/// default cost is 19 MiB; a record from elsewhere asking for more is
/// refused, not honoured).
const MAX_HASH_KIB: u32 = 256 << 10;

thread_local! {
    /// The argon2 working memory of this thread, kept between checks: the
    /// threads that check passwords hold one each, instead of allocating
    /// (and leaving to the allocator) 19 MiB per check.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `password` matches `hash` (argon2, its parameters from the PHC
/// string), computed in this thread's kept memory.
fn verify_in_place(password: &[u8], hash: &PasswordHash<'_>) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = argon2::Params::try_from(hash) else {
        return false;
    };
    if params.m_cost() > MAX_HASH_KIB || params.t_cost() > 16 || params.p_cost() > 16 {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = argon2::Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let hashed = BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        blocks.resize(params.block_count(), argon2::Block::default());
        argon.hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..])
    });
    // A constant-time comparison, as the output type's own.
    hashed.is_ok() && password_hash_output(&out).is_some_and(|computed| &computed == expected)
}

fn password_hash_output(bytes: &[u8]) -> Option<argon2::password_hash::Output> {
    argon2::password_hash::Output::new(bytes).ok()
}

use flowd_core::buckets::ACCOUNTS as SHARED;

/// An account as shared: which host published it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Published {
    account: Account,
    by: String,
}

/// The accounts of the participant's hosts, shared through the broker.
#[derive(Clone)]
pub struct SharedAccounts {
    records: flowd_broker::Records<Published>,
    host_id: String,
    /// This host's state directory, whose accounts file is read first.
    local: Option<PathBuf>,
}

impl SharedAccounts {
    pub async fn open(
        broker: &flowd_broker::Broker,
        host_id: &str,
    ) -> Result<SharedAccounts, flowd_broker::BrokerError> {
        Ok(SharedAccounts {
            records: flowd_broker::Records::new(broker.kv(SHARED).await?, SHARED),
            host_id: host_id.to_owned(),
            local: None,
        })
    }

    /// Also looks accounts up in this host's own file (`state_dir`), so
    /// that an account is not taken for removed while publishing it fails.
    pub fn with_local(mut self, state_dir: &Path) -> SharedAccounts {
        self.local = Some(state_dir.to_owned());
        self
    }

    /// Publishes the accounts of this host's file, and withdraws those it
    /// published before that are no longer in it (an unreadable record is
    /// left alone: it cannot be told whose it is).
    pub async fn publish(&self, state_dir: &Path) -> Result<(), AccountError> {
        let local = load_blocking(state_dir.to_owned()).await?;
        for (name, published) in self.records.list("").await? {
            if published.by == self.host_id && !local.accounts.contains_key(&name) {
                self.records.store().purge(&name).await.map_err(|e| {
                    flowd_broker::RecordError::Unavailable {
                        bucket: SHARED.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
            }
        }
        for (name, account) in local.accounts {
            let published = Published {
                account,
                by: self.host_id.clone(),
            };
            self.records.put(&name, &published).await?;
        }
        Ok(())
    }

    /// Publishes the file now and again whenever it changes.
    pub fn follow(
        self,
        state_dir: PathBuf,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let path = Accounts::path(&state_dir);
            let mut seen = None;
            let mut first = true;
            loop {
                let now = modified(&path);
                if first || now != seen {
                    match self.publish(&state_dir).await {
                        Ok(()) => {
                            seen = now;
                            first = false;
                        }
                        Err(e) => tracing::warn!("accounts not shared: {e}"),
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Who `user` is now, if any host of the participant still has the
    /// account; `Err` when the broker cannot say (an unreadable record is
    /// an error too, never "no such account").
    pub async fn identity(&self, user: &str) -> Result<Option<Identity>, AccountError> {
        if let Some(dir) = self.local.clone() {
            let local = load_blocking(dir).await?;
            if let Some(account) = local.accounts.get(user) {
                return Ok(Some(Identity {
                    user: user.to_owned(),
                    admin: account.admin,
                }));
            }
        }
        Ok(self.records.get(user).await?.map(|p| Identity {
            user: user.to_owned(),
            admin: p.account.admin,
        }))
    }

    /// Follows the shared accounts: yields once per change (an account
    /// added, changed or removed on any host).
    pub async fn changes(&self) -> Result<impl futures::Stream<Item = ()> + use<>, AccountError> {
        let watch = self.records.store().watch_all().await.map_err(|e| {
            flowd_broker::RecordError::Unavailable {
                bucket: SHARED.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(futures::StreamExt::map(watch, |_| ()))
    }

    /// The shared account `user`, for a log-in to be checked against. A
    /// broker that cannot be asked, or an unreadable record, is an error
    /// (the client is told to try later), not a wrong password.
    pub async fn account(&self, user: &str) -> Result<Option<Account>, AccountError> {
        Ok(self.records.get(user).await?.map(|p| p.account))
    }
}

/// Whether `token` is the host's local administrator token.
pub fn local_admin(state_dir: &Path, token: &str) -> Option<Identity> {
    let stored = std::fs::read_to_string(local::local_token_path(state_dir)).ok()?;
    let stored = stored.trim();
    // Compare in constant time (length is not secret).
    let same = stored.len() == token.len()
        && stored
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    (same && !stored.is_empty()).then(|| Identity {
        user: local::LOCAL_ADMIN.to_owned(),
        admin: true,
    })
}

/// The host's local administrator: an account whose password is a token in
/// the state directory, readable only by whoever runs the host (and so by
/// `flow` on the same machine).
pub mod local {
    use std::path::{Path, PathBuf};

    /// Name of the built-in account whose password is the host's local token.
    pub const LOCAL_ADMIN: &str = "local";

    /// The token file of a host's local administrator.
    pub fn local_token_path(state_dir: &Path) -> PathBuf {
        state_dir.join("admin.token")
    }

    /// Creates the local administrator token if missing (mode 0600); returns it.
    pub fn ensure_local_token(state_dir: &Path) -> std::io::Result<String> {
        let path = local_token_path(state_dir);
        if let Ok(token) = std::fs::read_to_string(&path)
            && !token.trim().is_empty()
        {
            return Ok(token.trim().to_owned());
        }
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        flowd_core::secret_file::write(&path, token.as_bytes())?;
        Ok(token)
    }
}

/// Reads the accounts file of `state_dir` on the blocking pool.
async fn load_blocking(state_dir: PathBuf) -> Result<Accounts, AccountError> {
    tokio::task::spawn_blocking(move || Accounts::load(&state_dir))
        .await
        .map_err(|e| AccountError::Invalid(format!("reading the accounts: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_remove_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut accounts = Accounts::load(dir.path()).expect("missing file is empty");
        assert!(accounts.accounts.is_empty());
        accounts.add("alice", "s3cret", true).expect("added");
        assert!(matches!(
            accounts.add("alice", "x", false),
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            accounts.add("bad name", "x", false),
            Err(AccountError::Invalid(_))
        ));
        accounts.save(dir.path()).expect("saved");
        let text = std::fs::read_to_string(Accounts::path(dir.path())).expect("read");
        assert!(!text.contains("s3cret"), "only the hash is stored");
        let loaded = Accounts::load(dir.path()).expect("load");
        assert_eq!(
            loaded.verify("alice", "s3cret"),
            Some(Identity {
                user: "alice".into(),
                admin: true
            })
        );
        assert_eq!(loaded.verify("alice", "wrong"), None);
        assert_eq!(loaded.verify("bob", "s3cret"), None);
        let mut loaded = loaded;
        loaded.remove("alice").expect("removed");
        assert!(matches!(
            loaded.remove("alice"),
            Err(AccountError::NotFound(_))
        ));
    }
}
