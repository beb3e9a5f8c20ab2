//! The Flow Namespace Accessing Agent's operations: what FNAP commands do to
//! namespaces, flows, subscriptions and processors, over the broker.
//!
//! The methods of [`Agent`] in this file act as the host itself (no access
//! checks); the FNAP server calls the `*_as` methods of [`namespaces`],
//! [`flows`], [`subscriptions`] and [`processors`], which check what the
//! session's [`Principal`] may do first.

pub mod access;
pub mod deadletters;
pub mod flows;
pub mod namespaces;
pub mod processors;
pub mod quotas;
pub mod subscriptions;

pub use access::{NamespaceRecord, Principal};

use anyhow::Result;
use flowd_broker::codec;
use flowd_broker::{Broker, BrokerError, FlowInfo, FlowName, FlowSettings, Outgoing, Published};
use flowd_core::event::Event;
use flowd_engine::Buckets;
use flowd_engine::spec::{self, ProcessorSpec, RunLimits, Status};
use flowd_wasm::{Host, HostConfig, Kind};
use futures::StreamExt;
use std::time::Duration;

/// Why an agent operation failed; each variant has its FNAP reply code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no such {what}: {name}")]
    NotFound { what: &'static str, name: String },
    #[error("{what} already exists: {name}")]
    Exists { what: &'static str, name: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    /// The principal holds as much as [`quotas::Quotas`] allow: it may
    /// work once some of it is gone.
    #[error("{0}")]
    Quota(String),
}

impl From<BrokerError> for AgentError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NoSuchFlow(flow) => AgentError::NotFound {
                what: "flow",
                name: flow.to_string(),
            },
            BrokerError::FlowExists(flow) => AgentError::Exists {
                what: "flow",
                name: flow.to_string(),
            },
            BrokerError::Settings(s) => AgentError::Invalid(s),
            e @ (BrokerError::Connect { .. } | BrokerError::Request(_)) => {
                AgentError::Unavailable(e.to_string())
            }
        }
    }
}

impl From<crate::peers::PeerError> for AgentError {
    fn from(e: crate::peers::PeerError) -> Self {
        use crate::peers::PeerError;
        match e {
            PeerError::NotFound { what, name } => AgentError::NotFound { what, name },
            PeerError::Forbidden(s) => AgentError::Forbidden(s),
            PeerError::Refused(s) => AgentError::Invalid(s),
            PeerError::Unavailable(s) => AgentError::Unavailable(s),
        }
    }
}

impl From<flowd_broker::RecordError> for AgentError {
    fn from(e: flowd_broker::RecordError) -> Self {
        match e {
            e @ flowd_broker::RecordError::Unavailable { .. } => {
                AgentError::Unavailable(e.to_string())
            }
            e @ flowd_broker::RecordError::Unreadable { .. } => AgentError::Invalid(e.to_string()),
        }
    }
}

impl From<flowd_engine::ComponentError> for AgentError {
    fn from(e: flowd_engine::ComponentError) -> Self {
        match e {
            flowd_engine::ComponentError::NotFound(digest) => AgentError::NotFound {
                what: "component",
                name: digest,
            },
            e @ flowd_engine::ComponentError::Unavailable { .. } => {
                AgentError::Unavailable(e.to_string())
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> AgentError {
    AgentError::Unavailable(e.to_string())
}

/// The host's records in the broker, and the operations on them.
#[derive(Clone)]
pub struct Agent {
    broker: Broker,
    buckets: Buckets,
    namespaces: async_nats::jetstream::kv::Store,
    subscriptions: async_nats::jetstream::kv::Store,
    /// The registry's bucket, where `PUT COMPONENT` uploads are counted
    /// per account (`upload.<hex user>.<hex digest>`).
    registry: async_nats::jetstream::kv::Store,
    /// Bumped when flows are created or deleted (name service publishers
    /// follow it).
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// The namespace records as last read (access checks read them all the
    /// time).
    namespace_cache: std::sync::Arc<std::sync::Mutex<namespaces::NamespaceCache>>,
    /// How to reach other participants (remote subscriptions).
    federation: Option<std::sync::Arc<crate::peers::Federation>>,
    /// Who issues subscribers broker credentials of their own, when this
    /// host can (its embedded broker, or an operator-run NATS that gave it
    /// a signing key).
    issuer: Option<flowd_broker::grants::Issuer>,
    /// The accounts the participant's hosts share.
    shared_accounts: Option<crate::accounts::SharedAccounts>,
    logins: std::sync::Arc<crate::logins::Logins>,
    quotas: quotas::Quotas,
    /// Each principal's turn to create what its quotas count.
    admissions: std::sync::Arc<quotas::Admissions>,
    limit_maxima: processors::LimitMaxima,
    /// Remote subscriptions this host marked `failing`.
    relays_failing: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Where the spans of writes and relays go, and this host's id for
    /// them.
    traces: flowd_engine::traces::Traces,
    host_id: std::sync::Arc<str>,
}

/// How events reach a flow, for their spans.
#[derive(Clone, Copy)]
enum Hop<'a> {
    /// Written by a client of this host.
    Publish,
    /// Carried from a remote participant's flow.
    Relay(&'a FlowName),
}

/// Reads a flow batch by batch (FNAP `READ FLOW`).
pub struct FlowReader {
    consumer: async_nats::jetstream::consumer::PullConsumer,
    stream: String,
    flow: FlowName,
    broker: Broker,
}

/// A reader's consumer goes with it, whatever ended the read (the command,
/// an error, the session): the broker's inactivity threshold only catches
/// what this misses, so a client opening reads in a loop holds at most the
/// reads it has open.
impl Drop for FlowReader {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let name = self.consumer.cached_info().name.clone();
        let (broker, flow) = (self.broker.clone(), self.flow.clone());
        runtime.spawn(async move {
            if let Err(e) = broker.delete_consumer(&flow, &name).await {
                tracing::debug!(%flow, consumer = name, "reader not removed (it expires): {e}");
            }
        });
    }
}

impl FlowReader {
    /// Up to `max` next events with their stream sequences, waiting at most
    /// `wait` when none is there yet.
    pub async fn next(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(u64, Event)>, AgentError> {
        let flow = self.flow.clone();
        self.next_each(max, wait)
            .await?
            .into_iter()
            .map(|(sequence, event)| {
                event
                    .map(|e| (sequence, e))
                    .map_err(|e| AgentError::Invalid(format!("event {sequence} of {flow}: {e}")))
            })
            .collect()
    }

    /// As [`FlowReader::next`], but a stored message that is not an event
    /// is handed over as its error instead of failing the batch: for flows
    /// whose writers are not all the engine (a dead-letter flow holds what
    /// anyone allowed to write to it put there).
    pub async fn next_each(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(u64, Result<Event, String>)>, AgentError> {
        let flow = &self.flow;
        let mut batch = self
            .consumer
            .batch()
            .max_messages(max.max(1))
            .expires(wait)
            .messages()
            .await
            .map_err(|e| AgentError::Unavailable(format!("reading {flow}: {e}")))?;
        let mut events = Vec::new();
        while let Some(message) = batch.next().await {
            let message =
                message.map_err(|e| AgentError::Unavailable(format!("reading {flow}: {e}")))?;
            let (sequence, event) = codec::stored_event(&message, &self.stream);
            events.push((sequence, event.map_err(|e| e.to_string())));
        }
        Ok(events)
    }
}

/// What a new processor is made of.
#[derive(Debug, Clone)]
pub struct NewProcessor {
    pub id: String,
    /// The kind the command asks for (`flow replicate` is a bridge, ...).
    pub kind: Kind,
    pub component: Vec<u8>,
    pub config: Vec<(String, String)>,
    pub inputs: Vec<FlowName>,
    pub outputs: Vec<FlowName>,
    pub dead_letter: Option<FlowName>,
    pub limits: RunLimits,
    pub owner: Option<String>,
}

/// The name service publishes the agent's namespaces and flows.
#[async_trait::async_trait]
impl flowd_fns::Source for Agent {
    async fn namespaces(&self) -> Result<Vec<flowd_core::NamespaceName>, flowd_fns::SourceError> {
        Ok(self
            .namespace_records()
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect())
    }

    /// The flows published in DNS: the public ones. A private flow is
    /// answered like a missing one (no enumeration through DNS); peers with
    /// an account find its agent through the namespace's `_fnaa._tcp`
    /// record.
    async fn flows(&self) -> Result<Vec<FlowName>, flowd_fns::SourceError> {
        let copies: std::collections::HashSet<FlowName> = self
            .subscribers()
            .await
            .map_err(|e| flowd_fns::SourceError::from(e.to_string()))?
            .into_iter()
            .map(|s| s.copy)
            .collect();
        let mut public = Vec::new();
        for flow in self.broker.flows().await? {
            // A subscriber's copy is its subscriber's (an anonymous one's
            // name is its secret): never published.
            if copies.contains(&flow) {
                continue;
            }
            match self.broker.flow_info(&flow).await {
                Ok(info) if info.settings.public => public.push(flow),
                Ok(_) | Err(BrokerError::NoSuchFlow(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(public)
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        Agent::changes(self)
    }
}

impl Agent {
    pub async fn connect(urls: &[String]) -> Result<Agent> {
        let broker = Broker::connect(urls, "flow").await?;
        Agent::new(broker).await
    }

    pub async fn new(broker: Broker) -> Result<Agent> {
        let buckets = Buckets::open(&broker).await?;
        let namespaces = broker.kv(flowd_core::buckets::NAMESPACES).await?;
        let subscriptions = broker.kv(flowd_core::buckets::SUBSCRIPTIONS).await?;
        let registry = broker.kv(flowd_core::buckets::REGISTRY).await?;
        Ok(Agent {
            broker,
            buckets,
            namespaces,
            subscriptions,
            registry,
            changes: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            federation: None,
            issuer: None,
            shared_accounts: None,
            logins: std::sync::Arc::new(crate::logins::Logins::new(Default::default())),
            quotas: quotas::Quotas::default(),
            admissions: Default::default(),
            limit_maxima: processors::LimitMaxima::default(),
            relays_failing: Default::default(),
            traces: flowd_engine::traces::Traces::off(),
            host_id: "".into(),
            namespace_cache: Default::default(),
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Lets `SUBSCRIBE` reach flows of other participants.
    pub fn with_federation(
        mut self,
        federation: std::sync::Arc<crate::peers::Federation>,
    ) -> Agent {
        self.federation = Some(federation);
        self
    }

    /// Gives subscribers broker users of their own (see
    /// [`flowd_broker::grants`]).
    pub fn with_issuer(mut self, issuer: flowd_broker::grants::Issuer) -> Agent {
        self.issuer = Some(issuer);
        self
    }

    /// Bounds password checks by `limits` (`[logins]`).
    pub fn with_login_limits(mut self, limits: crate::logins::LoginLimits) -> Agent {
        self.logins = std::sync::Arc::new(crate::logins::Logins::new(limits));
        self
    }

    /// What one principal may hold.
    pub fn quotas(&self) -> &quotas::Quotas {
        &self.quotas
    }

    /// Where the spans of writes and relays go (`[telemetry]`), and the
    /// id of this host they name.
    pub fn with_traces(mut self, traces: flowd_engine::traces::Traces, host_id: &str) -> Agent {
        self.traces = traces;
        self.host_id = host_id.into();
        self
    }

    /// The highest limits a processor may ask for (`[limits.max]`).
    pub fn with_limit_maxima(mut self, maxima: processors::LimitMaxima) -> Agent {
        self.limit_maxima = maxima;
        self
    }

    /// The highest limits a processor may ask for.
    pub fn limit_maxima(&self) -> &processors::LimitMaxima {
        &self.limit_maxima
    }

    /// `principal`'s turn to count a quota and create what it counts
    /// (held until the creation is stored).
    pub(crate) async fn admit(&self, principal: &Principal) -> quotas::Admission {
        self.admissions.admit(principal).await
    }

    /// Holds principals to `quotas` (`[quotas]`).
    pub fn with_quotas(mut self, quotas: quotas::Quotas) -> Agent {
        self.quotas = quotas;
        self
    }

    /// Also accepts the accounts other hosts of the participant share.
    pub fn with_shared_accounts(mut self, shared: crate::accounts::SharedAccounts) -> Agent {
        self.shared_accounts = Some(shared);
        self
    }

    /// Checks a log-in (FNAP and the management API) from a client at
    /// `from`: the host's local administrator, then the host's own
    /// accounts, then those shared by the participant's other hosts. The
    /// password check is bounded by [`crate::logins`].
    pub async fn login(
        &self,
        state_dir: &std::path::Path,
        from: std::net::IpAddr,
        user: &str,
        password: &str,
    ) -> Result<Option<crate::accounts::Identity>, crate::accounts::AccountError> {
        use crate::accounts::{AccountError, Accounts, local};
        use crate::logins::Checked;
        let joined = |e: tokio::task::JoinError| AccountError::Invalid(e.to_string());
        let dir = state_dir.to_owned();
        if user == local::LOCAL_ADMIN {
            let group = flowd_fnap::session::address_group(from);
            tokio::time::sleep(self.logins.failure_delay(group)).await;
            let token = password.to_owned();
            let found =
                tokio::task::spawn_blocking(move || crate::accounts::local_admin(&dir, &token))
                    .await
                    .map_err(joined)?;
            if found.is_none() {
                self.logins.record_failure(from);
            }
            return Ok(found);
        }
        let local = tokio::task::spawn_blocking(move || Accounts::load(&dir))
            .await
            .map_err(joined)??;
        let account = match (local.accounts.get(user), &self.shared_accounts) {
            (Some(account), _) => Some(account.clone()),
            (None, Some(shared)) => shared.account(user).await?,
            (None, None) => None,
        };
        match self.logins.check(from, account, user, password).await {
            Checked::Verified(identity) => Ok(Some(identity)),
            Checked::Wrong => Ok(None),
            Checked::Busy => Err(AccountError::Busy),
        }
    }

    /// Whether `user` is an account of the host or, shared, of the
    /// participant's other hosts.
    pub async fn account_exists(
        &self,
        state_dir: &std::path::Path,
        user: &str,
    ) -> Result<bool, crate::accounts::AccountError> {
        let dir = state_dir.to_owned();
        let local = tokio::task::spawn_blocking(move || crate::accounts::Accounts::load(&dir))
            .await
            .map_err(|e| crate::accounts::AccountError::Invalid(e.to_string()))??;
        if local.accounts.contains_key(user) {
            return Ok(true);
        }
        match &self.shared_accounts {
            Some(shared) => Ok(shared.account(user).await?.is_some()),
            None => Ok(false),
        }
    }

    /// Whether this agent can reach other participants (remote
    /// subscriptions).
    pub fn reaches_others(&self) -> bool {
        self.federation.is_some()
    }

    /// Changes after flows are created or deleted through this agent.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    pub async fn create_flow(&self, flow: &FlowName, settings: &FlowSettings) -> Result<FlowInfo> {
        Ok(self.broker.create_flow(flow, settings).await?)
    }

    pub async fn delete_flow(&self, flow: &FlowName) -> Result<()> {
        Ok(self.broker.delete_flow(flow).await?)
    }

    pub async fn describe_flow(&self, flow: &FlowName) -> Result<FlowInfo> {
        Ok(self.broker.flow_info(flow).await?)
    }

    pub async fn flows(&self) -> Result<Vec<FlowInfo>> {
        let mut infos = Vec::new();
        for flow in self.broker.flows().await? {
            infos.push(self.broker.flow_info(&flow).await?);
        }
        Ok(infos)
    }

    /// Writes events to a flow; acknowledged when stored. Writing the same
    /// event (same `source` and `id`) again within the flow's duplicate
    /// window stores it once.
    pub async fn write(&self, flow: &FlowName, events: &[Event]) -> Result<Published, BrokerError> {
        self.write_scoped(flow, events, "write").await
    }

    /// Writes events with message ids in `scope`: the same event written
    /// twice in one scope (within the duplicate window) is stored once.
    pub async fn write_scoped(
        &self,
        flow: &FlowName,
        events: &[Event],
        scope: &str,
    ) -> Result<Published, BrokerError> {
        self.store_events(flow, events, scope, Hop::Publish).await
    }

    /// Writes events relayed from `remote` (a subscription's copy), with
    /// message ids in `scope`; each keeps its `traceparent` (the trace it
    /// was created in), which the relay's span continues.
    pub(crate) async fn write_relayed(
        &self,
        flow: &FlowName,
        events: &[Event],
        scope: &str,
        remote: &FlowName,
    ) -> Result<Published, BrokerError> {
        self.store_events(flow, events, scope, Hop::Relay(remote))
            .await
    }

    async fn store_events(
        &self,
        flow: &FlowName,
        events: &[Event],
        scope: &str,
        hop: Hop<'_>,
    ) -> Result<Published, BrokerError> {
        self.broker.flow_info(flow).await?;
        // Collected first: a borrowing iterator held across the publish
        // would make this future not `Send`.
        let mut messages: Vec<Outgoing> = events
            .iter()
            .map(|event| {
                let (headers, payload) = codec::message_for_event(event);
                Outgoing {
                    subject: flow.subject().into(),
                    message_id: codec::message_id(
                        scope,
                        0,
                        cloudevents::AttributesReader::source(event).as_bytes(),
                        cloudevents::AttributesReader::id(event).as_bytes(),
                    ),
                    headers,
                    payload,
                }
            })
            .collect();
        let spans = self.hop_spans(flow, hop, &mut messages);
        let published = self.broker.publish(messages).await;
        for mut span in spans {
            use flowd_engine::traces::Span as _;
            if let Err(e) = &published {
                span.set_status(flowd_engine::traces::Status::error(
                    flowd_engine::traces::bounded(e.to_string()),
                ));
            }
            span.end();
        }
        published
    }

    /// The spans of a write or a relay (none when tracing is off): one per
    /// event that carries a sampled context, as its child (at most
    /// [`traces::EVENT_SPANS`](flowd_engine::traces::EVENT_SPANS) per
    /// call); and for a client's write, one more whose context the events
    /// written without any become part of (when it is sampled).
    fn hop_spans(
        &self,
        flow: &FlowName,
        hop: Hop<'_>,
        messages: &mut [Outgoing],
    ) -> Vec<flowd_engine::traces::HostSpan> {
        use flowd_engine::traces::{self, Context, KeyValue, SpanKind};
        if !self.traces.is_on() {
            return Vec::new();
        }
        let (name, kind) = match hop {
            Hop::Publish => ("flowd.publish", SpanKind::Producer),
            Hop::Relay(_) => ("flowd.relay", SpanKind::Consumer),
        };
        let attributes = |id: Option<String>| {
            let mut a = vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.destination.name", flow.to_string()),
                KeyValue::new("flowd.host", self.host_id.to_string()),
            ];
            if let Hop::Relay(remote) = hop {
                a.push(KeyValue::new("flowd.remote_flow", remote.to_string()));
            }
            if let Some(id) = id {
                a.push(KeyValue::new(
                    "cloudevents.event_id",
                    flowd_engine::traces::bounded(id),
                ));
            }
            a
        };
        let mut spans = Vec::new();
        let mut untraced = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match traces::event_context(Some(&m.headers)) {
                Some(cx) if cx.is_sampled() && spans.len() < traces::EVENT_SPANS => {
                    let id =
                        flowd_broker::codec::attribute(&m.headers, "id").map(|s| s.into_owned());
                    spans.extend(self.traces.start(
                        name,
                        kind.clone(),
                        &traces::parent(&cx),
                        attributes(id),
                        Vec::new(),
                        None,
                    ));
                }
                Some(_) => {}
                // No context (or none that is valid W3C trace context,
                // which is left as the producer wrote it).
                None if flowd_broker::codec::attribute(&m.headers, "traceparent").is_none() => {
                    untraced.push(i)
                }
                None => {}
            }
        }
        if let (Hop::Publish, false) = (hop, untraced.is_empty()) {
            let mut a = attributes(None);
            a.push(KeyValue::new(
                "messaging.batch.message_count",
                untraced.len() as i64,
            ));
            if let Some(span) = self
                .traces
                .start(name, kind, &Context::new(), a, Vec::new(), None)
            {
                if let Some(cx) = traces::recorded(&span) {
                    for i in untraced {
                        traces::set_event_context(&mut messages[i].headers, &cx);
                    }
                }
                spans.push(span);
            }
        }
        spans
    }

    /// Reads a flow: from its first event (`from_start`) or only new ones,
    /// until `count` events, or forever with `follow` (else until no event
    /// arrives for `idle`).
    pub async fn read(
        &self,
        flow: &FlowName,
        from_start: bool,
        count: Option<usize>,
        follow: bool,
        idle: Duration,
        mut each: impl FnMut(Event) -> Result<()>,
    ) -> Result<usize> {
        let mut reader = self.reader(flow, from_start.then_some(1)).await?;
        let mut seen = 0;
        loop {
            let want = count.map_or(256, |c| (c - seen).min(256));
            if want == 0 {
                return Ok(seen);
            }
            let batch = reader.next(want, idle).await?;
            if batch.is_empty() && !follow {
                return Ok(seen);
            }
            for (_, event) in batch {
                each(event)?;
                seen += 1;
            }
        }
    }

    /// A reader of a flow from `start` (a stream sequence; `None`: only
    /// events written from now on).
    pub async fn reader(
        &self,
        flow: &FlowName,
        start: Option<u64>,
    ) -> Result<FlowReader, AgentError> {
        Ok(FlowReader {
            consumer: self.broker.reader(flow, start).await?,
            stream: flow.stream(),
            flow: flow.clone(),
            broker: self.broker.clone(),
        })
    }

    /// Stores a component in the broker's object store; returns its digest.
    pub async fn upload_component(&self, bytes: &[u8]) -> Result<String, AgentError> {
        Ok(flowd_engine::store_component(&self.buckets.components, bytes).await?)
    }

    /// Declares a processor; the host starts it. The component is checked
    /// here first: it must be of the kind the command asked for and accept
    /// its configuration.
    pub async fn create_processor(&self, new: NewProcessor) -> Result<ProcessorSpec, AgentError> {
        spec::check_id(&new.id).map_err(|e| AgentError::Invalid(e.to_string()))?;
        if new.inputs.is_empty() || new.outputs.is_empty() {
            return Err(AgentError::Invalid(
                "a processor needs at least one input and one output flow".into(),
            ));
        }
        // A broker that cannot be asked is not an absent processor.
        if self.specs().get(&new.id).await?.is_some() {
            return Err(AgentError::Exists {
                what: "processor",
                name: new.id,
            });
        }
        let relay = new.component == spec::RELAY.as_bytes();
        if !relay {
            check_component(&new).await?;
        }
        for flow in new.inputs.iter().chain(&new.outputs) {
            self.broker.flow_info(flow).await?;
        }
        let digest = if relay {
            spec::RELAY.to_owned()
        } else {
            self.upload_component(&new.component).await?
        };
        let dead_letter = match new.dead_letter {
            Some(flow) => flow,
            None => FlowName::parse(&format!("{}.deadletter.{}", new.id, new.outputs[0]))
                .or_else(|_| FlowName::parse(&format!("{}.deadletter.flowd", new.id)))
                .map_err(|e| AgentError::Invalid(format!("dead-letter flow: {e}")))?,
        };
        let spec = ProcessorSpec {
            id: new.id,
            kind: new.kind,
            component: digest,
            config: new.config,
            inputs: new.inputs,
            outputs: new.outputs,
            dead_letter,
            paused: false,
            generation: 1,
            limits: new.limits,
            owner: new.owner,
            pipeline: None,
            fused: Vec::new(),
            ports: Vec::new(),
            input_names: Vec::new(),
            output_names: Vec::new(),
            parallelism: 1,
            key: None,
        };
        self.put(&spec).await?;
        Ok(spec)
    }

    pub(crate) async fn put(&self, spec: &ProcessorSpec) -> Result<(), AgentError> {
        let json = serde_json::to_vec(spec)
            .map_err(|e| AgentError::Invalid(format!("processor {}: {e}", spec.id)))?;
        self.buckets
            .processors
            .put(&spec.id, json.into())
            .await
            .map_err(|e| unavailable(format!("storing processor {}: {e}", spec.id)))?;
        Ok(())
    }

    /// A processor's spec and last status. A broker that cannot be asked is
    /// [`AgentError::Unavailable`], never "not found".
    pub async fn processor(&self, id: &str) -> Result<(ProcessorSpec, Option<Status>), AgentError> {
        let spec = self
            .specs()
            .get(id)
            .await?
            .ok_or_else(|| AgentError::NotFound {
                what: "processor",
                name: id.to_owned(),
            })?;
        let status = self.status(id).await;
        Ok((spec, status))
    }

    /// The processor specs, as typed records.
    fn specs(&self) -> flowd_broker::Records<ProcessorSpec> {
        flowd_broker::Records::new(
            self.buckets.processors.clone(),
            flowd_core::buckets::PROCESSORS,
        )
    }

    /// What the host last reported of a processor (or of a fused step).
    pub async fn status(&self, id: &str) -> Option<Status> {
        self.buckets
            .status
            .get(id)
            .await
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
    }

    pub async fn processors(&self) -> Result<Vec<(ProcessorSpec, Option<Status>)>, AgentError> {
        let specs = self.specs().list("").await?;
        let mut out = Vec::new();
        for (id, spec) in specs {
            let status = self.status(&id).await;
            out.push((spec, status));
        }
        Ok(out)
    }

    /// Pauses or resumes a processor (figure 6).
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<ProcessorSpec, AgentError> {
        let (mut spec, _) = self.processor(id).await?;
        spec.paused = paused;
        self.put(&spec).await?;
        Ok(spec)
    }

    /// Updates a processor in place (figure 6): a new configuration and/or
    /// component version. The host switches between two batches: no event is
    /// lost or processed twice.
    pub async fn update_processor(
        &self,
        id: &str,
        config: Option<Vec<(String, String)>>,
        component: Option<Vec<u8>>,
    ) -> Result<ProcessorSpec, AgentError> {
        let (mut spec, _) = self.processor(id).await?;
        let check = NewProcessor {
            id: spec.id.clone(),
            kind: spec.kind,
            component: match &component {
                Some(bytes) => bytes.clone(),
                None => {
                    flowd_engine::read_component(&self.buckets.components, &spec.component).await?
                }
            },
            config: config.clone().unwrap_or_else(|| spec.config.clone()),
            inputs: spec.inputs.clone(),
            outputs: spec.outputs.clone(),
            dead_letter: Some(spec.dead_letter.clone()),
            limits: spec.limits.clone(),
            owner: spec.owner.clone(),
        };
        check_component(&check).await?;
        if let Some(bytes) = component {
            spec.component = self.upload_component(&bytes).await?;
        }
        if let Some(config) = config {
            spec.config = config;
        }
        spec.generation += 1;
        self.put(&spec).await?;
        Ok(spec)
    }

    /// Destroys a processor (figure 6); the host stops it and removes its
    /// consumers and state.
    ///
    /// Its log records and its dead letters go with it (the dead-letter
    /// flow itself stays, as others may share it): a processor made later
    /// under the same id, perhaps by another account, starts with neither.
    /// Dead letters are removed up to [`deadletters::MAX_LISTED`]; a
    /// processor's own default dead-letter flow is removed whole.
    pub async fn delete_processor(&self, id: &str) -> Result<(), AgentError> {
        let (spec, _) = self.processor(id).await?;
        self.buckets
            .processors
            .delete(id)
            .await
            .map_err(|e| unavailable(format!("deleting processor {id}: {e}")))?;
        if let Ok(logs) =
            flowd_broker::logs::Logs::open(&self.broker, flowd_broker::logs::Retention::default())
                .await
        {
            for step in std::iter::once(&spec.id).chain(spec.fused.iter().map(|f| &f.id)) {
                if let Err(e) = logs.purge(step).await {
                    tracing::warn!(processor = step, "log records not removed: {e}");
                }
            }
        }
        if spec
            .dead_letter
            .as_str()
            .starts_with(&format!("{id}.deadletter."))
        {
            let _ = self.broker.delete_flow(&spec.dead_letter).await;
        } else if let Ok(letters) = self
            .dead_letters(
                std::slice::from_ref(&spec),
                &[],
                &deadletters::Which::All,
                deadletters::MAX_LISTED,
            )
            .await
        {
            for letter in letters {
                let _ = self
                    .broker
                    .remove_stored(&letter.flow, letter.sequence)
                    .await;
            }
        }
        Ok(())
    }
}

/// Loads the component in a local sandbox: right kind, ports that fit, and a
/// configuration it accepts. Compiling and running a guest's `init` is CPU
/// work bounded by the processor's limits, done on the blocking pool so that
/// it never stalls the sessions the async workers serve.
///
/// At most [`CONCURRENT_CHECKS`] checks run at once (each compiles a
/// component and may run a guest for its whole deadline); one that waits
/// longer than [`CHECK_WAIT`] for its turn is told to try again (`450`).
async fn check_component(new: &NewProcessor) -> Result<(), AgentError> {
    let turn = check_turn().await?;
    let setup = flowd_wasm::ProcessorSetup {
        name: new.id.clone(),
        config: new.config.clone(),
        inputs: new.inputs.iter().map(|f| f.to_string()).collect(),
        outputs: new.outputs.iter().map(|f| f.to_string()).collect(),
    };
    let (component, kind, limits) = (new.component.clone(), new.kind, new.limits.wasm());
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let host = Host::new(HostConfig {
            max_instances: 2,
            ..HostConfig::default()
        })
        .map_err(|e| AgentError::Unavailable(format!("the processor sandbox: {e:#}")))?;
        host.check(&component, Some(kind), setup, limits)
            .map_err(|e| AgentError::Invalid(format!("{e:#}")))
    })
    .await
    .map_err(|e| AgentError::Unavailable(format!("the processor check: {e}")))??;
    Ok(())
}

/// Component checks (processor declarations, `PUT COMPONENT`) running at
/// once: as many as a small host has cores.
pub const CONCURRENT_CHECKS: usize = 2;

/// How long a check waits for its turn.
pub const CHECK_WAIT: Duration = Duration::from_secs(10);

static CHECKS: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| {
        std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CHECKS))
    });

/// A turn to check a component. It is moved into the blocking task that
/// checks, so a request dropped meanwhile does not free it early.
pub(crate) async fn check_turn() -> Result<tokio::sync::OwnedSemaphorePermit, AgentError> {
    match tokio::time::timeout(CHECK_WAIT, CHECKS.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(AgentError::Unavailable(
            "the host is checking other components; try again later".into(),
        )),
    }
}

/// Checks that `bytes` are a processor component this host would run (of
/// any kind, with imports the sandbox allows), as the registry does for an
/// upload. Bounded like [`check_component`].
async fn validate_component(bytes: &[u8]) -> Result<(), AgentError> {
    let turn = check_turn().await?;
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let host = Host::new(HostConfig {
            max_instances: 1,
            ..HostConfig::default()
        })
        .map_err(|e| AgentError::Unavailable(format!("the processor sandbox: {e:#}")))?;
        host.load_quick(&bytes)
            .map(drop)
            .map_err(|e| AgentError::Invalid(format!("refused: {e}")))
    })
    .await
    .map_err(|e| AgentError::Unavailable(format!("the component check: {e}")))?
}
