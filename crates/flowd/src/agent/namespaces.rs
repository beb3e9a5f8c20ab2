//! Namespaces: create, describe, delete, list, grant and revoke (figure 5's
//! "CRUD Namespace" and "List Namespace").

use super::access::{self, NamespaceRecord, Principal};
use super::{Agent, AgentError, unavailable};
use flowd_broker::Records;
use flowd_broker::{FlowName, NamespaceName};
use flowd_core::Right;
use flowd_core::buckets::NAMESPACES;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the namespace records read from the broker are trusted. Every
/// access check reads them, so they are cached; this host's own changes
/// clear the cache at once, other hosts' changes show within this delay.
const NAMESPACES_FRESH_FOR: Duration = Duration::from_secs(1);

/// The namespace records as last read.
#[derive(Default)]
pub(crate) struct NamespaceCache {
    read: Option<(Instant, Arc<BTreeMap<NamespaceName, NamespaceRecord>>)>,
}

impl Agent {
    /// Every namespace record, from the cache when fresh.
    async fn all_namespaces(
        &self,
    ) -> Result<Arc<BTreeMap<NamespaceName, NamespaceRecord>>, AgentError> {
        if let Ok(cache) = self.namespace_cache.lock()
            && let Some((read, records)) = &cache.read
            && read.elapsed() < NAMESPACES_FRESH_FOR
        {
            return Ok(records.clone());
        }
        // Access decisions need every record: one that cannot be read fails
        // the look-up (closed) instead of being skipped, which would hand
        // its flows to the parent namespace's rules or let it be created
        // again over the unreadable one.
        let stored = Records::<NamespaceRecord>::new(self.namespaces.clone(), NAMESPACES);
        let mut records = BTreeMap::new();
        for key in stored.keys().await? {
            let Ok(name) = NamespaceName::parse(&key) else {
                continue;
            };
            if let Some(record) = stored.get(&key).await? {
                records.insert(name, record);
            }
        }
        let records = Arc::new(records);
        if let Ok(mut cache) = self.namespace_cache.lock() {
            cache.read = Some((Instant::now(), records.clone()));
        }
        Ok(records)
    }

    fn forget_namespaces(&self) {
        if let Ok(mut cache) = self.namespace_cache.lock() {
            cache.read = None;
        }
    }

    /// The stored record of a namespace, if any.
    pub async fn namespace(
        &self,
        ns: &NamespaceName,
    ) -> Result<Option<NamespaceRecord>, AgentError> {
        Ok(self.all_namespaces().await?.get(ns).cloned())
    }

    async fn put_namespace(&self, record: &NamespaceRecord) -> Result<(), AgentError> {
        let json = serde_json::to_vec(record).map_err(|e| AgentError::Invalid(e.to_string()))?;
        self.namespaces
            .put(record.name.as_str(), json.into())
            .await
            .map_err(unavailable)?;
        self.forget_namespaces();
        Ok(())
    }

    /// The records of `names` that exist, in the same order.
    pub(crate) async fn chain(
        &self,
        names: Vec<NamespaceName>,
    ) -> Result<Vec<NamespaceRecord>, AgentError> {
        let mut chain = Vec::new();
        for name in names {
            if let Some(record) = self.namespace(&name).await? {
                chain.push(record);
            }
        }
        Ok(chain)
    }

    /// A namespace's record and those enclosing it, nearest first.
    async fn namespace_chain(
        &self,
        ns: &NamespaceName,
    ) -> Result<Vec<NamespaceRecord>, AgentError> {
        let names = std::iter::once(ns.clone()).chain(ns.parents()).collect();
        self.chain(names).await
    }

    /// A namespace's record and its chain (itself and the enclosing ones,
    /// nearest first); "no such namespace" when it does not exist.
    async fn existing(
        &self,
        ns: &NamespaceName,
    ) -> Result<(NamespaceRecord, Vec<NamespaceRecord>), AgentError> {
        let chain = self.namespace_chain(ns).await?;
        match chain.first() {
            Some(record) if &record.name == ns => Ok((record.clone(), chain)),
            _ => Err(AgentError::NotFound {
                what: "namespace",
                name: ns.to_string(),
            }),
        }
    }

    /// Every namespace record.
    pub async fn namespace_records(&self) -> Result<Vec<NamespaceRecord>, AgentError> {
        Ok(self.all_namespaces().await?.values().cloned().collect())
    }

    /// Declares the namespaces the host serves (from its configuration),
    /// held by the host; existing records are left as they are.
    pub async fn serve_namespaces(&self, names: &[String]) -> Result<(), AgentError> {
        for name in names {
            let name = NamespaceName::parse(name)
                .map_err(|e| AgentError::Invalid(format!("served namespace: {e}")))?;
            if self.namespace(&name).await?.is_none() {
                self.put_namespace(&NamespaceRecord {
                    name,
                    owner: None,
                    public: false,
                    grants: Default::default(),
                    created: chrono::Utc::now().to_rfc3339(),
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Creates a namespace inside one this host serves; needs `admin` on
    /// the enclosing namespace (host administrators may create any).
    pub async fn create_namespace_as(
        &self,
        principal: &Principal,
        ns: &NamespaceName,
        owner: Option<String>,
        public: bool,
    ) -> Result<NamespaceRecord, AgentError> {
        if self.namespace(ns).await?.is_some() {
            return Err(AgentError::Exists {
                what: "namespace",
                name: ns.to_string(),
            });
        }
        let parents = self.chain(ns.parents().collect()).await?;
        if parents.is_empty() && !principal.is_admin() {
            return Err(AgentError::Forbidden(format!(
                "{ns} is not inside a namespace this host serves"
            )));
        }
        access::require(
            principal,
            access::right_through(principal, &parents),
            Right::Admin,
            &format!("create namespaces under {ns}"),
        )?;
        let owner = owner.or_else(|| principal.user().map(str::to_owned));
        let record = NamespaceRecord {
            name: ns.clone(),
            owner,
            public,
            grants: Default::default(),
            created: chrono::Utc::now().to_rfc3339(),
        };
        self.put_namespace(&record).await?;
        self.changed();
        Ok(record)
    }

    /// A namespace, its flows and child namespaces; needs `read` on it
    /// (public namespaces are readable by all).
    pub async fn describe_namespace_as(
        &self,
        principal: &Principal,
        ns: &NamespaceName,
    ) -> Result<(NamespaceRecord, Vec<FlowName>, Vec<NamespaceName>), AgentError> {
        let (record, chain) = self.existing(ns).await?;
        let right = access::right_through(principal, &chain);
        if !record.public {
            access::require(principal, right, Right::Read, &format!("describe {ns}"))?;
        }
        let (mut flows, children) = self.contents(ns).await?;
        if right.is_none() {
            // A public namespace shows strangers its public flows only.
            let mut public = Vec::new();
            for flow in flows {
                if self
                    .broker
                    .flow_info(&flow)
                    .await
                    .is_ok_and(|i| i.settings.public)
                {
                    public.push(flow);
                }
            }
            flows = public;
        }
        Ok((record, flows, children))
    }

    /// The flows whose nearest namespace is `ns`, and the namespaces below it.
    async fn contents(
        &self,
        ns: &NamespaceName,
    ) -> Result<(Vec<FlowName>, Vec<NamespaceName>), AgentError> {
        let records = self.namespace_records().await?;
        let children: Vec<NamespaceName> = records
            .iter()
            .filter(|r| ns.is_above(r.name.as_str()))
            .map(|r| r.name.clone())
            .collect();
        let flows = self
            .broker
            .flows()
            .await?
            .into_iter()
            .filter(|f| ns.is_above(f.as_str()))
            .filter(|f| !children.iter().any(|c| c.is_above(f.as_str())))
            .collect();
        Ok((flows, children))
    }

    /// Deletes an empty namespace; needs `admin` on it.
    pub async fn delete_namespace_as(
        &self,
        principal: &Principal,
        ns: &NamespaceName,
    ) -> Result<(), AgentError> {
        let (_, chain) = self.existing(ns).await?;
        access::require(
            principal,
            access::right_through(principal, &chain),
            Right::Admin,
            &format!("delete {ns}"),
        )?;
        let (flows, children) = self.contents(ns).await?;
        if !flows.is_empty() || !children.is_empty() {
            return Err(AgentError::Invalid(format!(
                "namespace {ns} is not empty: {} flows, {} namespaces",
                flows.len(),
                children.len()
            )));
        }
        self.namespaces
            .purge(ns.as_str())
            .await
            .map_err(unavailable)?;
        self.forget_namespaces();
        self.changed();
        self.review_subscribers_after("DELETE NAMESPACE").await;
        Ok(())
    }

    /// The namespaces (below `parent`, if given) the principal may see:
    /// public ones and those it holds a right on.
    pub async fn list_namespaces_as(
        &self,
        principal: &Principal,
        parent: Option<&NamespaceName>,
    ) -> Result<Vec<NamespaceRecord>, AgentError> {
        let records = self.namespace_records().await?;
        let mut visible = Vec::new();
        for record in &records {
            if parent.is_some_and(|p| !p.is_above(record.name.as_str())) {
                continue;
            }
            let chain: Vec<NamespaceRecord> = records
                .iter()
                .filter(|r| r.name == record.name || r.name.is_above(record.name.as_str()))
                .cloned()
                .collect();
            if record.public || access::right_through(principal, &chain).is_some() {
                visible.push(record.clone());
            }
        }
        Ok(visible)
    }

    /// Grants `right` on a namespace to `user` (replacing any former
    /// grant); needs `admin` on it.
    pub async fn grant_as(
        &self,
        principal: &Principal,
        user: &str,
        right: Option<Right>,
        ns: &NamespaceName,
    ) -> Result<NamespaceRecord, AgentError> {
        let (mut record, chain) = self.existing(ns).await?;
        access::require(
            principal,
            access::right_through(principal, &chain),
            Right::Admin,
            &format!("grant rights on {ns}"),
        )?;
        match right {
            Some(right) => {
                record.grants.insert(user.to_owned(), right);
            }
            None => {
                if record.grants.remove(user).is_none() {
                    return Err(AgentError::NotFound {
                        what: "grant",
                        name: format!("{user} on {ns}"),
                    });
                }
            }
        }
        self.put_namespace(&record).await?;
        // A right taken away (or lowered) takes the copies made with it.
        self.review_subscribers_after("a grant's change").await;
        Ok(record)
    }
}
