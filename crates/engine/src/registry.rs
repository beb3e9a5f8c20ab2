//! The component registry: processor components uploaded to a running host,
//! named and versioned (`filter@1.2.0`).
//!
//! The bytes live once per content in the broker's object store
//! (`flowd-components`, keyed by `sha256:<hex>`, the store processors are
//! started from), and a record per `name@version` in the KV bucket
//! `flowd-registry`. Both are in JetStream, so every host on the same NATS
//! sees every upload. A version is immutable: uploading other bytes under a
//! taken `name@version` is refused, uploading the same bytes again is a
//! no-op.
//!
//! A name belongs to the account that first uploaded under it (a record
//! `owner.<name>`, created atomically, so two first uploads cannot both
//! win): other accounts cannot add versions to it, so a pipeline naming
//! `filter` without a version never runs a stranger's upload. The host's
//! administrators may upload under any name.

use crate::spec::ProcessorSpec;
use async_nats::jetstream::{kv, object_store::ObjectStore};
use flowd_broker::{Broker, BrokerError};
use flowd_core::buckets::COMPONENTS;
use flowd_wasm::{Host, Kind, LoadError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use flowd_broker::{RecordError, Records};
use flowd_core::buckets::REGISTRY;

/// Largest component accepted (the object store chunks it; a host loads it
/// whole into memory to compile it).
pub const MAX_COMPONENT_BYTES: usize = 256 << 20;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A name, version or digest that is not well-formed.
    #[error("{0}")]
    InvalidName(String),
    /// The bytes do not load as a processor component.
    #[error("refused: {0}")]
    Refused(#[from] LoadError),
    /// The component exceeds [`MAX_COMPONENT_BYTES`].
    #[error("refused: the component is larger than {MAX_COMPONENT_BYTES} bytes")]
    TooLarge,
    /// No record (or no stored bytes) for the reference.
    #[error("no such component: {0}")]
    NotFound(String),
    /// Uploading other bytes under a `name@version` already taken.
    #[error("{reference} already holds another component ({digest}); versions are immutable")]
    VersionTaken {
        /// The `name@version` concerned.
        reference: String,
        /// The digest it already holds.
        digest: String,
    },
    /// Deleting a component that processors still run.
    #[error("{reference} is in use by processor(s) {}", .by.join(", "))]
    InUse {
        /// The reference given.
        reference: String,
        /// The ids of the processors (or fused steps) running it.
        by: Vec<String>,
    },
    /// Uploading under a name another account owns.
    #[error("the component name `{0}` belongs to another account")]
    NameOwned(String),
    /// The broker failed; worth retrying.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A stored record that does not decode.
    #[error("{0}")]
    Unreadable(String),
}

impl From<BrokerError> for RegistryError {
    fn from(e: BrokerError) -> Self {
        RegistryError::Unavailable(e.to_string())
    }
}

/// A broker failure is transient; an unreadable record is not.
fn record_error(e: RecordError) -> RegistryError {
    match e {
        e @ RecordError::Unavailable { .. } => RegistryError::Unavailable(e.to_string()),
        e @ RecordError::Unreadable { .. } => RegistryError::Unreadable(e.to_string()),
    }
}

fn unavailable(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

/// What the registry knows of one `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// The name it was uploaded under.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `sha256:<hex>` of the bytes, their key in the object store.
    pub digest: String,
    /// The processor kind it is.
    pub kind: Kind,
    /// The WIT world it implements.
    pub world: String,
    /// The interfaces it imports.
    pub imports: Vec<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub uploaded_ms: u64,
    /// The user who uploaded it (`None`: the host itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_by: Option<String>,
}

impl ComponentRecord {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// How a component is named: `name@version`, `name` (the newest upload of
/// that name) or `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentRef {
    /// `name@version`: one upload.
    Version {
        /// The component's name.
        name: String,
        /// Its version.
        version: String,
    },
    /// `name`: the newest upload of that name.
    Latest(String),
    /// `sha256:<hex>`: the bytes themselves, whatever they are named.
    Digest(String),
}

impl std::str::FromStr for ComponentRef {
    type Err = RegistryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Some(hex) = text.strip_prefix("sha256:") {
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(ComponentRef::Digest(format!(
                    "sha256:{}",
                    hex.to_ascii_lowercase()
                )));
            }
            return Err(RegistryError::InvalidName(format!(
                "`{text}`: a digest is sha256: and 64 hex digits"
            )));
        }
        match text.split_once('@') {
            Some((name, version)) => {
                check_name(name)?;
                check_version(version)?;
                Ok(ComponentRef::Version {
                    name: name.to_owned(),
                    version: version.to_owned(),
                })
            }
            None => {
                check_name(text)?;
                Ok(ComponentRef::Latest(text.to_owned()))
            }
        }
    }
}

impl std::fmt::Display for ComponentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComponentRef::Version { name, version } => write!(f, "{name}@{version}"),
            ComponentRef::Latest(name) => f.write_str(name),
            ComponentRef::Digest(digest) => f.write_str(digest),
        }
    }
}

/// Checks a component name: it is part of KV keys and manifests.
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(format!(
            "component name `{name}`: use 1 to 64 lower-case letters, digits, `-` and `_`"
        )))
    }
}

/// Checks a version (`1.2.0`, `2024-01-rc1` ...).
pub fn check_version(version: &str) -> Result<(), RegistryError> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(format!(
            "version `{version}`: use 1 to 64 letters, digits, `.`, `-` and `_`"
        )))
    }
}

fn key(name: &str, version: &str) -> String {
    format!("{name}/{version}")
}

/// The key of a name's owner record (no `/`: not a version).
fn owner_key(name: &str) -> String {
    format!("owner.{name}")
}

/// Who owns a component name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NameOwner {
    /// The account (`None`: the host itself).
    owner: Option<String>,
}

/// Who uploads a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploader<'a> {
    /// The account (`None`: the host itself).
    pub user: Option<&'a str>,
    /// Administrators may upload under any name.
    pub admin: bool,
}

/// The registry of one broker.
#[derive(Clone)]
pub struct Registry {
    records: kv::Store,
    objects: ObjectStore,
    /// Compiled forms of uploads, for every host ([`crate::artifacts`]).
    artifacts: ObjectStore,
    host: Arc<Host>,
}

impl Registry {
    /// Opens the registry's buckets; `host` validates uploads (its import
    /// policy is the one applied).
    pub async fn open(broker: &Broker, host: Arc<Host>) -> Result<Registry, RegistryError> {
        Ok(Registry {
            records: broker.kv(REGISTRY).await?,
            objects: broker.objects(COMPONENTS).await?,
            artifacts: broker.objects(flowd_core::buckets::ARTIFACTS).await?,
            host,
        })
    }

    /// The Wasm host that validates components.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Validates and stores a component under `name@version`. Nothing is
    /// stored when the bytes are refused.
    ///
    /// The first upload under a name makes `by` its owner; later ones by
    /// another account (not an administrator) are refused.
    pub async fn upload(
        &self,
        name: &str,
        version: &str,
        bytes: Vec<u8>,
        uploader: Uploader<'_>,
    ) -> Result<ComponentRecord, RegistryError> {
        let by = uploader.user;
        check_name(name)?;
        check_version(version)?;
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(RegistryError::TooLarge);
        }
        // Refused early when the name is another's (no compile for it)...
        if let Some(owner) = self.owner(name).await?
            && !(uploader.admin || owner.as_deref() == uploader.user)
        {
            return Err(RegistryError::NameOwned(name.to_owned()));
        }
        let digest = flowd_wasm::digest(&bytes);
        if let Some(existing) = self.record(name, version).await? {
            if existing.digest == digest {
                return Ok(existing);
            }
            return Err(RegistryError::VersionTaken {
                reference: existing.reference(),
                digest: existing.digest,
            });
        }
        // Checked on the baseline compiler's code (quick); the optimised
        // code is compiled in the background and shared, so the hosts that
        // run it do not compile it again.
        let (component, _, bytes) =
            crate::artifacts::load_quick(&self.host, &self.artifacts, bytes).await?;
        // ...and claimed only by bytes that are a component: a refused
        // upload takes no name.
        self.claim(name, uploader).await?;
        crate::store_component(&self.objects, &bytes)
            .await
            .map_err(unavailable)?;
        let record = ComponentRecord {
            name: name.to_owned(),
            version: version.to_owned(),
            digest,
            kind: component.kind(),
            world: component.kind().world().to_owned(),
            imports: component.imports().to_vec(),
            size: bytes.len() as u64,
            uploaded_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
            uploaded_by: by.map(str::to_owned),
        };
        let json = serde_json::to_vec(&record).map_err(unavailable)?;
        // `create` fails if another host stored the same version meanwhile.
        if let Err(e) = self.records.create(key(name, version), json.into()).await {
            return match self.record(name, version).await? {
                Some(existing) if existing.digest == record.digest => Ok(existing),
                Some(existing) => Err(RegistryError::VersionTaken {
                    reference: existing.reference(),
                    digest: existing.digest,
                }),
                None => Err(unavailable(e)),
            };
        }
        Ok(record)
    }

    /// The owner of `name`, if anyone uploaded under it: its owner
    /// record, or for names uploaded before there were any, the uploader
    /// of its first version.
    pub async fn owner(&self, name: &str) -> Result<Option<Option<String>>, RegistryError> {
        let owners: Records<NameOwner> = Records::new(self.records.clone(), REGISTRY);
        if let Some(o) = owners.get(&owner_key(name)).await.map_err(record_error)? {
            return Ok(Some(o.owner));
        }
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|r| r.name == name)
            .min_by_key(|r| r.uploaded_ms)
            .map(|r| r.uploaded_by))
    }

    /// Gives `name` to `to` (the host's administrators decide who may):
    /// from then on only `to` (and administrators) add versions under it.
    /// Refused for a name nobody uploaded under.
    pub async fn transfer(&self, name: &str, to: &str) -> Result<(), RegistryError> {
        check_name(name)?;
        if self.owner(name).await?.is_none() {
            return Err(RegistryError::NotFound(name.to_owned()));
        }
        let record = NameOwner {
            owner: Some(to.to_owned()),
        };
        let json = serde_json::to_vec(&record).map_err(unavailable)?;
        self.records
            .put(owner_key(name), json.into())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Makes `uploader` the owner of `name` if nobody is, or checks that
    /// it may upload under it.
    async fn claim(&self, name: &str, uploader: Uploader<'_>) -> Result<(), RegistryError> {
        let mine = |owner: &Option<String>| uploader.admin || owner.as_deref() == uploader.user;
        match self.owner(name).await? {
            Some(owner) if mine(&owner) => return Ok(()),
            Some(_) => return Err(RegistryError::NameOwned(name.to_owned())),
            None => {}
        }
        let record = NameOwner {
            owner: uploader.user.map(str::to_owned),
        };
        let json = serde_json::to_vec(&record).map_err(unavailable)?;
        if self
            .records
            .create(owner_key(name), json.into())
            .await
            .is_err()
        {
            // Another upload claimed it first, or the broker failed.
            return match self.owner(name).await? {
                Some(owner) if mine(&owner) => Ok(()),
                Some(_) => Err(RegistryError::NameOwned(name.to_owned())),
                None => Err(unavailable("the name could not be claimed")),
            };
        }
        Ok(())
    }

    async fn record(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<ComponentRecord>, RegistryError> {
        self.stored()
            .get(&key(name, version))
            .await
            .map_err(record_error)
    }

    fn stored(&self) -> Records<ComponentRecord> {
        Records::new(self.records.clone(), REGISTRY)
    }

    /// Every record, by name then upload time.
    pub async fn list(&self) -> Result<Vec<ComponentRecord>, RegistryError> {
        // Versions only (`name/version`), not the names' owner records.
        let stored = self.stored();
        let mut records = Vec::new();
        for key in stored.keys().await.map_err(record_error)? {
            if !key.contains('/') {
                continue;
            }
            match stored.get(&key).await {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(e @ RecordError::Unreadable { .. }) => tracing::warn!("{e}: skipped"),
                Err(e) => return Err(record_error(e)),
            }
        }
        records.sort_by(|a, b| {
            (a.name.as_str(), a.uploaded_ms, a.version.as_str()).cmp(&(
                b.name.as_str(),
                b.uploaded_ms,
                b.version.as_str(),
            ))
        });
        Ok(records)
    }

    /// The record a reference names. A bare digest that was uploaded
    /// without a name (FNAP `PUT COMPONENT`) gets a record named after it.
    pub async fn resolve(
        &self,
        reference: &ComponentRef,
    ) -> Result<ComponentRecord, RegistryError> {
        let not_found = || RegistryError::NotFound(reference.to_string());
        match reference {
            ComponentRef::Version { name, version } => {
                self.record(name, version).await?.ok_or_else(not_found)
            }
            ComponentRef::Latest(name) => self
                .list()
                .await?
                .into_iter()
                .rfind(|r| &r.name == name)
                .ok_or_else(not_found),
            ComponentRef::Digest(digest) => {
                if let Some(found) = self.list().await?.into_iter().find(|r| &r.digest == digest) {
                    return Ok(found);
                }
                let bytes = self.bytes(digest).await.map_err(|_| not_found())?;
                let host = self.host.clone();
                let (component, _) = tokio::task::spawn_blocking(move || host.load_quick(&bytes))
                    .await
                    .map_err(unavailable)??;
                Ok(ComponentRecord {
                    name: String::new(),
                    version: String::new(),
                    digest: digest.clone(),
                    kind: component.kind(),
                    world: component.kind().world().to_owned(),
                    imports: component.imports().to_vec(),
                    size: component.size() as u64,
                    uploaded_ms: 0,
                    uploaded_by: None,
                })
            }
        }
    }

    /// The bytes stored under `digest`.
    pub async fn bytes(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        crate::read_component(&self.objects, digest)
            .await
            .map_err(|e| match e {
                crate::ComponentError::NotFound(d) => RegistryError::NotFound(d),
                e @ crate::ComponentError::Unavailable { .. } => {
                    RegistryError::Unavailable(e.to_string())
                }
            })
    }

    /// Removes `name@version` (or every version of `name`), refused while a
    /// processor in `processors` runs it. The bytes go when no record and
    /// no processor refers to them any more.
    pub async fn delete(
        &self,
        reference: &ComponentRef,
        processors: &[ProcessorSpec],
    ) -> Result<Vec<ComponentRecord>, RegistryError> {
        let all = self.list().await?;
        let doomed: Vec<ComponentRecord> = match reference {
            ComponentRef::Version { name, version } => all
                .iter()
                .filter(|r| &r.name == name && &r.version == version)
                .cloned()
                .collect(),
            ComponentRef::Latest(name) => all.iter().filter(|r| &r.name == name).cloned().collect(),
            ComponentRef::Digest(digest) => all
                .iter()
                .filter(|r| &r.digest == digest)
                .cloned()
                .collect(),
        };
        if doomed.is_empty() {
            return Err(RegistryError::NotFound(reference.to_string()));
        }
        let mut by: Vec<String> = processors
            .iter()
            .flat_map(|p| {
                std::iter::once((&p.id, &p.component))
                    .chain(p.fused.iter().map(|f| (&f.id, &f.component)))
            })
            .filter(|(_, component)| doomed.iter().any(|r| &&r.digest == component))
            .map(|(id, _)| id.clone())
            .collect();
        by.sort();
        if !by.is_empty() {
            return Err(RegistryError::InUse {
                reference: reference.to_string(),
                by,
            });
        }
        for record in &doomed {
            self.records
                .purge(key(&record.name, &record.version))
                .await
                .map_err(unavailable)?;
        }
        for record in &doomed {
            let still_named = all
                .iter()
                .any(|r| r.digest == record.digest && !doomed.contains(r));
            if !still_named && let Err(e) = self.objects.delete(record.digest.as_str()).await {
                tracing::debug!("deleting {}: {e}", record.digest);
            }
        }
        Ok(doomed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        assert_eq!(
            "filter@1.2.0".parse::<ComponentRef>().expect("valid"),
            ComponentRef::Version {
                name: "filter".into(),
                version: "1.2.0".into()
            }
        );
        assert_eq!(
            "filter".parse::<ComponentRef>().expect("valid"),
            ComponentRef::Latest("filter".into())
        );
        let digest = format!("sha256:{}", "AB".repeat(32));
        assert_eq!(
            digest.parse::<ComponentRef>().expect("valid"),
            ComponentRef::Digest(format!("sha256:{}", "ab".repeat(32)))
        );
        for bad in ["", "Filter@1", "a b", "x@", "x@1/2", "sha256:12", "@1"] {
            assert!(bad.parse::<ComponentRef>().is_err(), "{bad}");
        }
    }
}
