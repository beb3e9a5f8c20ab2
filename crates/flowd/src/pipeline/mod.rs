//! Pipelines: chains of processors declared by a YAML manifest that the
//! host keeps true (`flow apply -f pipeline.yaml`).
//!
//! [`manifest`] reads the YAML with the location of every value; [`plan`]
//! validates it and translates each step into a processor spec. Applying
//! writes only the specs that differ from what runs: an unchanged step
//! keeps running untouched, a changed one is updated in place by the
//! engine (which switches between two batches, losing and repeating
//! nothing), a step gone from the manifest is destroyed. The manifest and
//! its steps are stored in the `flowd-pipelines` bucket.
//!
//! Between two steps events travel through a durable internal flow, so
//! every step has the engine's at-least-once delivery with de-duplicated
//! outputs; see docs/pipelines.md.

pub mod manifest;
pub mod plan;

pub use plan::{Diagnostic, Plan};

use crate::agent::access::{self, Principal};
use crate::agent::{Agent, AgentError};
use async_nats::jetstream::kv;
use flowd_broker::{FlowName, FlowSettings};
use flowd_core::Right;
use flowd_engine::registry::Registry;
use flowd_engine::spec::{ProcessorSpec, RunLimits, Status};
use serde::{Deserialize, Serialize};

use flowd_broker::Records;
use flowd_core::buckets::PIPELINES;

/// Why a pipeline operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the manifest has {} error(s):\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("no such pipeline: {0}")]
    NotFound(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

fn unavailable(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Agent(AgentError::Unavailable(e.to_string()))
}

/// A pipeline as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub name: String,
    pub owner: Option<String>,
    /// The manifest as last applied.
    pub manifest: String,
    pub applied_ms: u64,
    /// The steps, in manifest order, and where they run.
    pub steps: Vec<plan::PlannedStep>,
    /// Flows the host made for the pipeline (removed with it).
    pub internal: Vec<FlowName>,
    /// The local flows of the subscriptions to remote inputs.
    #[serde(default)]
    pub subscriptions: Vec<FlowName>,
}

/// What an apply changed, by step name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub name: String,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
}

/// A pipeline with the state of its steps.
#[derive(Debug, Clone)]
pub struct PipelineView {
    pub record: PipelineRecord,
    /// (step name, spec, status) for the steps that exist.
    pub steps: Vec<(String, ProcessorSpec, Option<Status>)>,
}

/// The pipelines of a broker.
#[derive(Clone)]
pub struct Pipelines {
    agent: Agent,
    registry: Registry,
    records: kv::Store,
    defaults: RunLimits,
}

impl Pipelines {
    pub async fn open(
        agent: Agent,
        registry: Registry,
        defaults: RunLimits,
    ) -> Result<Pipelines, PipelineError> {
        let records = agent
            .broker()
            .kv(PIPELINES)
            .await
            .map_err(|e| PipelineError::Agent(e.into()))?;
        Ok(Pipelines {
            agent,
            registry,
            records,
            defaults,
        })
    }

    fn stored(&self) -> Records<PipelineRecord> {
        Records::new(self.records.clone(), PIPELINES)
    }

    async fn record(&self, name: &str) -> Result<Option<PipelineRecord>, PipelineError> {
        Ok(self.stored().get(name).await.map_err(AgentError::from)?)
    }

    fn may_manage(principal: &Principal, record: &PipelineRecord) -> Result<(), PipelineError> {
        if principal.is_admin()
            || (principal.user().is_some() && principal.user() == record.owner.as_deref())
        {
            Ok(())
        } else {
            // Answered as for a pipeline that does not exist.
            Err(PipelineError::NotFound(record.name.clone()))
        }
    }

    /// Validates `manifest` and, unless `dry_run`, makes the running
    /// pipeline match it. Nothing is applied when anything is wrong.
    /// Refuses a plan whose steps would take the account that owns them
    /// over `processors_per_account`: its processors elsewhere, and this
    /// pipeline's steps as planned (each step counts, fused or not).
    fn check_processor_quota(
        &self,
        principal: &Principal,
        plan: &plan::Plan,
        running: &[ProcessorSpec],
    ) -> Result<(), PipelineError> {
        let ours = |p: &&ProcessorSpec| p.pipeline.as_deref() == Some(plan.name.as_str());
        // The steps keep the owner they had; a new pipeline's are the
        // principal's.
        let owner = match running.iter().find(ours) {
            Some(step) => step.owner.as_deref(),
            None => principal.user(),
        };
        let Some(owner) = owner.filter(|_| !principal.is_admin()) else {
            return Ok(());
        };
        let limit = self.agent.quotas().processors_per_account;
        let elsewhere: usize = running
            .iter()
            .filter(|p| !ours(p) && p.owner.as_deref() == Some(owner))
            .map(|p| p.fused.len().max(1))
            .sum();
        if elsewhere.saturating_add(plan.steps.len()) > limit {
            return Err(crate::agent::quotas::exceeded("processors per account", limit).into());
        }
        Ok(())
    }

    pub async fn apply_as(
        &self,
        principal: &Principal,
        manifest: &str,
        dry_run: bool,
    ) -> Result<ApplyReport, PipelineError> {
        if principal == &Principal::Anonymous {
            return Err(
                AgentError::Forbidden("anonymous sessions cannot apply pipelines".into()).into(),
            );
        }
        let checker = plan::Checker {
            registry: &self.registry,
            agent: &self.agent,
            defaults: &self.defaults,
        };
        let plan = checker
            .plan(manifest)
            .await
            .map_err(PipelineError::Invalid)?;
        let previous = self.record(&plan.name).await?;
        if let Some(previous) = &previous {
            Self::may_manage(principal, previous)?;
        }
        for flow in &plan.inputs {
            self.agent.check_read(principal, flow).await?;
        }
        for flow in &plan.outputs {
            let (right, _) = self.agent.flow_right(principal, flow).await?;
            access::require(principal, right, Right::Write, &format!("write to {flow}"))?;
        }
        // Counted and written under the principal's admission, like a
        // processor it creates alone.
        let _admission = self.agent.admit(principal).await;
        let running: Vec<ProcessorSpec> = self
            .agent
            .processors()
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|(spec, _)| spec)
            .collect();
        self.check_processor_quota(principal, &plan, &running)?;
        let mut report = ApplyReport {
            name: plan.name.clone(),
            ..ApplyReport::default()
        };
        // Every step's id must be free: no processor, and no fused step,
        // of anything but this pipeline may have it (its keyed state and
        // status are stored under it).
        for step in &plan.steps {
            let taken = running
                .iter()
                .filter(|p| p.pipeline.as_deref() != Some(plan.name.as_str()))
                .find(|p| p.id == step.processor || p.fused.iter().any(|f| f.id == step.processor));
            if let Some(other) = taken {
                return Err(AgentError::Exists {
                    what: "processor",
                    name: format!(
                        "{} (the id of step `{}`, already used by processor {})",
                        step.processor, step.name, other.id
                    ),
                }
                .into());
            }
        }
        if !plan.remote.is_empty() && !principal.is_admin() {
            return Err(AgentError::Forbidden(
                "a remote input is read with this host's own peer credentials: only host \
                 administrators may apply pipelines with remote inputs"
                    .into(),
            )
            .into());
        }
        let mut writes = Vec::new();
        let owner = principal.user().map(str::to_owned);
        let ours = |p: &&ProcessorSpec| p.pipeline.as_deref() == Some(plan.name.as_str());
        // The old definition of a fused step, wherever it ran.
        let old_fused = |id: &str| {
            running
                .iter()
                .filter(ours)
                .flat_map(|p| p.fused.iter())
                .find(|f| f.id == id)
        };
        let existed =
            |id: &str| running.iter().filter(ours).any(|p| p.id == id) || old_fused(id).is_some();
        let step_name = |id: &str| {
            plan.steps
                .iter()
                .find(|s| s.processor == id)
                .map_or_else(|| id.to_owned(), |s| s.name.clone())
        };
        let note = |report: &mut ApplyReport, id: &str, same: bool| {
            let name = step_name(id);
            if same {
                report.unchanged.push(name);
            } else if existed(id) {
                report.updated.push(name);
            } else {
                report.created.push(name);
            }
        };
        for segment in &plan.segments {
            let old = running.iter().find(|p| p.id == segment.id);
            if let Some(old) = old
                && old.pipeline.as_deref() != Some(plan.name.as_str())
            {
                return Err(AgentError::Exists {
                    what: "processor",
                    name: format!("{} (not a step of pipeline {})", old.id, plan.name),
                }
                .into());
            }
            // Same shape: the engine updates changed steps in place.
            let kept = old.is_some_and(|o| {
                (o.fused.is_empty() && segment.fused.is_empty()) || o.same_shape(segment)
            });
            let root_same = kept && old.is_some_and(|o| o.same_work(segment));
            let mut new = segment.clone();
            new.owner = old.map_or_else(|| owner.clone(), |o| o.owner.clone());
            new.paused = old.is_some_and(|o| o.paused);
            new.generation = old.map_or(1, |o| o.generation + u64::from(!root_same));
            note(&mut report, &segment.id, root_same);
            for (i, step) in new.fused.iter_mut().enumerate() {
                let same = kept
                    && old
                        .and_then(|o| o.fused.get(i))
                        .is_some_and(|f| f.same_work(step));
                step.generation =
                    old_fused(&step.id).map_or(1, |f| f.generation + u64::from(!same));
                note(&mut report, &step.id, same);
            }
            if old != Some(&new) {
                writes.push(new);
            }
        }
        let gone: Vec<&ProcessorSpec> = running
            .iter()
            .filter(ours)
            .filter(|p| !plan.segments.iter().any(|s| s.id == p.id))
            .collect();
        let planned: Vec<&str> = plan.steps.iter().map(|s| s.processor.as_str()).collect();
        let old_ids = running.iter().filter(ours).flat_map(|p| {
            std::iter::once(p.id.clone()).chain(p.fused.iter().map(|f| f.id.clone()))
        });
        for id in old_ids {
            if !planned.contains(&id.as_str()) {
                let name = previous
                    .as_ref()
                    .and_then(|r| r.steps.iter().find(|s| s.processor == id))
                    .map_or_else(|| id.clone(), |s| s.name.clone());
                report.removed.push(name);
            }
        }
        if dry_run {
            return Ok(report);
        }
        for flow in &plan.internal {
            self.agent
                .broker()
                .ensure_flow(flow, &FlowSettings::default())
                .await
                .map_err(|e| PipelineError::Agent(e.into()))?;
        }
        self.subscribe(&plan, previous.as_ref()).await?;
        // The record first: if a later write fails, the next apply (or a
        // delete) finds the pipeline, its steps and its subscriptions.
        let old_internal = previous
            .as_ref()
            .map(|r| r.internal.clone())
            .unwrap_or_default();
        let record = PipelineRecord {
            name: plan.name.clone(),
            owner: previous
                .and_then(|r| r.owner)
                .or_else(|| principal.user().map(str::to_owned)),
            manifest: manifest.to_owned(),
            applied_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
            steps: plan.steps.clone(),
            internal: plan.internal.clone(),
            subscriptions: plan.remote.iter().map(|r| r.local.clone()).collect(),
        };
        let json = serde_json::to_vec(&record).map_err(unavailable)?;
        self.records
            .put(&plan.name, json.into())
            .await
            .map_err(unavailable)?;
        for spec in &writes {
            self.agent.put(spec).await.map_err(unavailable)?;
        }
        for spec in &gone {
            self.agent
                .delete_processor(&spec.id)
                .await
                .map_err(unavailable)?;
        }
        for flow in old_internal.iter().filter(|f| !plan.internal.contains(f)) {
            let _ = self.agent.broker().delete_flow(flow).await;
        }
        tracing::info!(
            pipeline = plan.name,
            created = report.created.len(),
            updated = report.updated.len(),
            unchanged = report.unchanged.len(),
            removed = report.removed.len(),
            "pipeline applied"
        );
        Ok(report)
    }

    /// Subscribes to the remote inputs not subscribed yet, and stops the
    /// subscriptions of remote inputs gone from the manifest. If one
    /// subscription fails, those made by this call are stopped again.
    async fn subscribe(
        &self,
        plan: &Plan,
        previous: Option<&PipelineRecord>,
    ) -> Result<(), PipelineError> {
        let had: &[FlowName] = previous.map_or(&[], |r| r.subscriptions.as_slice());
        let mut made: Vec<&FlowName> = Vec::new();
        for input in &plan.remote {
            if had.contains(&input.local) {
                continue;
            }
            match self
                .agent
                .subscribe_as(
                    &Principal::Host,
                    None,
                    &input.remote,
                    Some(&input.local),
                    true,
                )
                .await
            {
                Ok(_) => made.push(&input.local),
                Err(e) => {
                    for local in made {
                        let _ = self
                            .agent
                            .stop_subscription_as(&Principal::Host, local)
                            .await;
                    }
                    return Err(PipelineError::Invalid(vec![Diagnostic {
                        at: input.at,
                        message: format!(
                            "input `{}`: subscribing to {}: {e}",
                            input.edge,
                            input.remote.uri()
                        ),
                    }]));
                }
            }
        }
        for local in had {
            if !plan.remote.iter().any(|r| &r.local == local) {
                let _ = self
                    .agent
                    .stop_subscription_as(&Principal::Host, local)
                    .await;
            }
        }
        Ok(())
    }

    async fn view(&self, record: PipelineRecord) -> Result<PipelineView, PipelineError> {
        let mut steps = Vec::new();
        for step in &record.steps {
            let Ok((runner, status)) = self.agent.processor(&step.runner).await else {
                continue;
            };
            if step.runner == step.processor {
                steps.push((step.name.clone(), runner, status));
                continue;
            }
            let Some(fused) = runner.fused.iter().find(|f| f.id == step.processor) else {
                continue;
            };
            // A fused step has no spec of its own: shown as the processor
            // it would be, with the status its runner writes for it.
            let flows = |names: &[String]| -> Vec<FlowName> {
                names
                    .iter()
                    .filter_map(|n| FlowName::parse(n).ok())
                    .collect()
            };
            let spec = ProcessorSpec {
                id: fused.id.clone(),
                kind: fused.kind,
                component: fused.component.clone(),
                config: fused.config.clone(),
                inputs: flows(std::slice::from_ref(&fused.input)),
                outputs: flows(&fused.outputs),
                dead_letter: runner.dead_letter.clone(),
                paused: runner.paused,
                generation: fused.generation,
                limits: fused.limits.clone(),
                owner: runner.owner.clone(),
                pipeline: runner.pipeline.clone(),
                fused: Vec::new(),
                ports: Vec::new(),
                input_names: Vec::new(),
                output_names: Vec::new(),
                parallelism: runner.parallelism,
                key: None,
            };
            let status = self.agent.status(&fused.id).await;
            steps.push((step.name.clone(), spec, status));
        }
        Ok(PipelineView { record, steps })
    }

    pub async fn get_as(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<PipelineView, PipelineError> {
        let record = self
            .record(name)
            .await?
            .ok_or_else(|| PipelineError::NotFound(name.to_owned()))?;
        Self::may_manage(principal, &record)?;
        self.view(record).await
    }

    pub async fn list_as(&self, principal: &Principal) -> Result<Vec<PipelineView>, PipelineError> {
        let mut out = Vec::new();
        for (_, record) in self.stored().list("").await.map_err(AgentError::from)? {
            if Self::may_manage(principal, &record).is_ok() {
                out.push(self.view(record).await?);
            }
        }
        Ok(out)
    }

    /// Destroys every step and the pipeline's internal flows (the
    /// dead-letter flow stays, with whatever failed).
    pub async fn delete_as(&self, principal: &Principal, name: &str) -> Result<(), PipelineError> {
        let record = self
            .record(name)
            .await?
            .ok_or_else(|| PipelineError::NotFound(name.to_owned()))?;
        Self::may_manage(principal, &record)?;
        for local in &record.subscriptions {
            if let Err(e) = self
                .agent
                .stop_subscription_as(&Principal::Host, local)
                .await
            {
                tracing::warn!(
                    pipeline = name,
                    "stopping the subscription into {local}: {e}"
                );
            }
        }
        let mut runners: Vec<&str> = record.steps.iter().map(|s| s.runner.as_str()).collect();
        runners.dedup();
        for id in runners {
            if self.agent.processor(id).await.is_ok() {
                self.agent.delete_processor(id).await.map_err(unavailable)?;
            }
        }
        let dead_letter = plan::dead_letter_flow(name);
        for flow in record.internal.iter().filter(|f| **f != dead_letter) {
            let _ = self.agent.broker().delete_flow(flow).await;
        }
        self.records.purge(name).await.map_err(unavailable)?;
        tracing::info!(pipeline = name, "pipeline deleted");
        Ok(())
    }
}
