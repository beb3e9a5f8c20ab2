//! Flows with access checks: figure 5's "CRUD Flow", "List Flows", "Read
//! Flow" and "Write Flow".

use super::access::{self, NamespaceRecord, Principal};
use super::{Agent, AgentError};
use flowd_broker::{BrokerError, FlowInfo, FlowName, FlowSettings, NamespaceName};
use flowd_core::{FlowOptions, Right};

impl Agent {
    /// The namespaces enclosing a flow that the host knows, nearest first.
    pub async fn flow_chain(&self, flow: &FlowName) -> Result<Vec<NamespaceRecord>, AgentError> {
        self.chain(flow.parents().collect()).await
    }

    /// The right the principal holds on a flow, and the flow's namespace.
    pub async fn flow_right(
        &self,
        principal: &Principal,
        flow: &FlowName,
    ) -> Result<(Option<Right>, Option<NamespaceName>), AgentError> {
        let chain = self.flow_chain(flow).await?;
        Ok((
            access::right_through(principal, &chain),
            chain.first().map(|r| r.name.clone()),
        ))
    }

    /// Fails unless the principal may read `flow` (a `read` right, or the
    /// flow is public); returns its description.
    pub async fn check_read(
        &self,
        principal: &Principal,
        flow: &FlowName,
    ) -> Result<FlowInfo, AgentError> {
        let (right, _) = self.flow_right(principal, flow).await?;
        let readable = right.is_some_and(|r| r.covers(Right::Read));
        match self.broker.flow_info(flow).await {
            Ok(info) if readable || info.settings.public => Ok(info),
            // A revoked subscription copy: its subscriber learns why it is
            // gone.
            Err(BrokerError::NoSuchFlow(_))
                if let Some(reason) = self.revocation_of(flow, principal).await =>
            {
                Err(AgentError::NotFound {
                    what: "subscription",
                    name: format!("{flow} (revoked: {reason})"),
                })
            }
            Err(e) if readable => Err(e.into()),
            // A fault says nothing of the flow: transient for anyone.
            Err(e @ (BrokerError::Connect { .. } | BrokerError::Request(_))) => Err(e.into()),
            // Without a right, a missing flow and a private one look the same.
            _ => Err(access::denied(
                principal,
                Right::Read,
                &format!("read {flow}"),
            )),
        }
    }

    /// Fails unless the principal may write to `flow`.
    pub async fn check_write(
        &self,
        principal: &Principal,
        flow: &FlowName,
    ) -> Result<FlowInfo, AgentError> {
        let (right, _) = self.flow_right(principal, flow).await?;
        access::require(principal, right, Right::Write, &format!("write to {flow}"))?;
        Ok(self.broker.flow_info(flow).await?)
    }

    /// Fails unless `flow` lies in a namespace of this host where the
    /// principal may create flows; returns that namespace.
    pub async fn check_create(
        &self,
        principal: &Principal,
        flow: &FlowName,
    ) -> Result<NamespaceRecord, AgentError> {
        let chain = self.flow_chain(flow).await?;
        let Some(namespace) = chain.first() else {
            return Err(AgentError::NotFound {
                what: "namespace",
                name: format!("for {flow} (this host serves none that encloses it)"),
            });
        };
        access::require(
            principal,
            access::right_through(principal, &chain),
            Right::Write,
            &format!("create flows in {}", namespace.name),
        )?;
        Ok(namespace.clone())
    }

    /// Creates a flow in one of the host's namespaces; needs `write` there.
    /// New flows are public when their namespace is, unless `PRIVATE`.
    pub async fn create_flow_as(
        &self,
        principal: &Principal,
        flow: &FlowName,
        options: &FlowOptions,
    ) -> Result<FlowInfo, AgentError> {
        let namespace = self.check_create(principal, flow).await?;
        let mut settings = FlowSettings {
            public: namespace.public,
            ..FlowSettings::default()
        };
        apply(&mut settings, options);
        let info = self.broker.create_flow(flow, &settings).await?;
        self.changed();
        Ok(info)
    }

    pub async fn describe_flow_as(
        &self,
        principal: &Principal,
        flow: &FlowName,
    ) -> Result<FlowInfo, AgentError> {
        self.check_read(principal, flow).await
    }

    /// Changes retention or access in place; needs `write`.
    pub async fn update_flow_as(
        &self,
        principal: &Principal,
        flow: &FlowName,
        options: &FlowOptions,
    ) -> Result<FlowInfo, AgentError> {
        let info = self.check_write(principal, flow).await?;
        let was_public = info.settings.public;
        let mut settings = info.settings;
        apply(&mut settings, options);
        let updated = self.broker.update_flow(flow, &settings).await?;
        if was_public && !settings.public {
            // Its copies follow it, and anonymous copies go.
            self.make_copies_private(flow).await?;
            self.review_subscribers_after("UPDATE FLOW").await;
        }
        Ok(updated)
    }

    /// Deletes a flow and its events; needs `write`.
    pub async fn delete_flow_as(
        &self,
        principal: &Principal,
        flow: &FlowName,
    ) -> Result<(), AgentError> {
        self.check_write(principal, flow).await?;
        self.broker.delete_flow(flow).await?;
        self.changed();
        // Its subscribers' copies go with it.
        self.review_subscribers_after("DELETE FLOW").await;
        Ok(())
    }

    /// The flows (of `namespace`, if given) the principal may read.
    pub async fn list_flows_as(
        &self,
        principal: &Principal,
        namespace: Option<&NamespaceName>,
    ) -> Result<Vec<FlowInfo>, AgentError> {
        let records = self.namespace_records().await?;
        // Subscription copies are the subscriber's business: listed to it
        // and to the namespace's owner (and administrators) only.
        let copies: std::collections::HashMap<FlowName, Option<String>> = self
            .subscribers()
            .await?
            .into_iter()
            .map(|s| (s.copy, s.user))
            .collect();
        let mut out = Vec::new();
        for flow in self.broker.flows().await? {
            if namespace.is_some_and(|ns| !ns.is_above(flow.as_str())) {
                continue;
            }
            let chain: Vec<NamespaceRecord> = records
                .iter()
                .filter(|r| r.name.is_above(flow.as_str()))
                .cloned()
                .collect();
            let Ok(info) = self.broker.flow_info(&flow).await else {
                continue; // deleted meanwhile
            };
            let right = access::right_through(principal, &chain);
            let visible = match copies.get(&flow) {
                Some(user) => {
                    right == Some(Right::Admin)
                        || (principal.user().is_some() && principal.user() == user.as_deref())
                }
                None => info.settings.public || right.is_some(),
            };
            if visible {
                out.push(info);
            }
        }
        Ok(out)
    }
}

/// What [`Agent::tail_as`] read: the newest events of a flow.
#[derive(Debug, Default)]
pub struct Tail {
    /// The flow's last sequence when read (the next read starts after it).
    pub last_sequence: u64,
    /// Events stored after the previous read but not returned (more came
    /// than one read returns).
    pub skipped: u64,
    /// The events returned, oldest first, by stream sequence; a stored
    /// message that is not an event comes as its error.
    pub events: Vec<(u64, Result<cloudevents::Event, String>)>,
}

impl Agent {
    /// The newest events of a flow the principal may read: at most `max`,
    /// those stored after sequence `after` (`None`, or a flow made again
    /// since: the last `max`). Each is read by its sequence, so a tail keeps
    /// up with any rate by skipping what it cannot show; the read right is
    /// checked on every call. An event larger than `max_bytes` comes as an
    /// error saying so, not decoded.
    pub async fn tail_as(
        &self,
        principal: &Principal,
        flow: &FlowName,
        after: Option<u64>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Tail, AgentError> {
        let info = self.check_read(principal, flow).await?;
        let last = info.last_sequence;
        let after = after.filter(|a| *a <= last);
        let max = max.max(1) as u64;
        let from = after.map_or(1, |a| a.saturating_add(1));
        let start = from
            .max(last.saturating_add(1).saturating_sub(max))
            .max(info.first_sequence);
        let mut tail = Tail {
            last_sequence: last,
            skipped: after.map_or(0, |_| start.saturating_sub(from)),
            events: Vec::new(),
        };
        if start > last {
            return Ok(tail);
        }
        for message in self.broker.stored_range(flow, start, last).await? {
            let sequence = message.sequence;
            if message.payload.len() > max_bytes {
                let size = message.payload.len();
                tail.events
                    .push((sequence, Err(format!("{size} bytes: too large to show"))));
                continue;
            }
            let event = flowd_broker::codec::event_from_message(
                Some(&message.headers),
                &message.payload,
                flowd_broker::codec::Origin {
                    stream: &info.stream,
                    sequence,
                    subject: &message.subject,
                },
            );
            tail.events
                .push((sequence, event.map_err(|e| e.to_string())));
        }
        Ok(tail)
    }
}

fn apply(settings: &mut FlowSettings, options: &FlowOptions) {
    if let Some(public) = options.public {
        settings.public = public;
    }
    if let Some(v) = options.max_age_secs {
        settings.max_age_secs = v;
    }
    if let Some(v) = options.max_bytes {
        settings.max_bytes = v;
    }
    if let Some(v) = options.duplicate_window_secs {
        settings.duplicate_window_secs = v;
    }
}
