//! Processors with access checks (`flow replicate|collect|distribute|signal`
//! and figure 6's lifecycle over FNAP). A processor belongs to the account
//! that created it; it needs `read` on its inputs and `write` on its outputs.

use super::access::{self, Principal};
use super::{Agent, AgentError, NewProcessor};
use flowd_broker::FlowName;
use flowd_core::Right;
use flowd_engine::spec::{ProcessorSpec, RunLimits, Status};
use flowd_wasm::Kind;

/// A processor request as `CREATE PROCESSOR` / `UPDATE PROCESSOR` carry it:
/// `key=value` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorRequest {
    pub kind: Option<Kind>,
    /// `sha256:<hex>` of an uploaded component.
    pub component: Option<String>,
    pub inputs: Vec<FlowName>,
    pub outputs: Vec<FlowName>,
    pub dead_letter: Option<FlowName>,
    /// `None`: unchanged (update) or empty (create).
    pub config: Option<Vec<(String, String)>>,
    pub limits: Vec<(String, u64)>,
}

impl ProcessorRequest {
    /// Reads `kind=`, `component=`, `input=` (repeatable), `output=`
    /// (repeatable), `dead-letter=`, `config.<key>=` and `limit.<name>=`.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ProcessorRequest, AgentError> {
        let mut r = ProcessorRequest::default();
        let flow = |v: &str| FlowName::parse(v).map_err(|e| AgentError::Invalid(e.to_string()));
        for (key, value) in pairs {
            match key {
                "kind" => {
                    r.kind = Some(value.parse().map_err(|_| {
                        AgentError::Invalid(format!(
                            "kind `{value}`: use bridge, collector, distributor or signal"
                        ))
                    })?)
                }
                "component" => r.component = Some(value.to_owned()),
                "input" => r.inputs.push(flow(value)?),
                "output" => r.outputs.push(flow(value)?),
                "dead-letter" => r.dead_letter = Some(flow(value)?),
                _ => {
                    if let Some(k) = key.strip_prefix("config.") {
                        r.config
                            .get_or_insert_with(Vec::new)
                            .push((k.to_owned(), value.to_owned()));
                    } else if let Some(name) = key.strip_prefix("limit.") {
                        let n = value.parse().map_err(|_| {
                            AgentError::Invalid(format!("limit.{name}: `{value}` is not a number"))
                        })?;
                        r.limits.push((name.to_owned(), n));
                    } else {
                        return Err(AgentError::Invalid(format!("unknown key `{key}`")));
                    }
                }
            }
        }
        Ok(r)
    }

    fn run_limits(
        &self,
        mut limits: RunLimits,
        maxima: &LimitMaxima,
    ) -> Result<RunLimits, AgentError> {
        let ranges = maxima.ranges();
        for (name, n) in &self.limits {
            let Some((_, low, high)) = ranges.iter().find(|(key, ..)| key == name) else {
                return Err(AgentError::Invalid(format!(
                    "unknown limit `{name}` (memory-mib, deadline-ms, batch, max-attempts, tick-ms)"
                )));
            };
            if !(*low..=*high).contains(n) {
                return Err(AgentError::Invalid(format!(
                    "limit.{name}={n}: use {low} to {high}"
                )));
            }
            // In range, so each fits its field on any platform.
            match name.as_str() {
                "memory-mib" => limits.memory_mib = *n as usize,
                "deadline-ms" => limits.deadline_ms = *n,
                "batch" => limits.batch = *n as usize,
                "max-attempts" => limits.max_attempts = *n as u32,
                _ => limits.tick_ms = *n,
            }
        }
        Ok(limits)
    }
}

/// What a processor's limits may be, whoever declares them (`limit.<name>=`
/// over FNAP, a pipeline manifest's `limits:`): a guest runs on the host's
/// CPU and memory, so a declaration cannot ask for a call of a day, a
/// batch that overflows or gigabytes of memory. The highs are the host's
/// `[limits.max]`; each is also held under a ceiling of this code's (so
/// that every value fits its field on any platform).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitMaxima {
    /// Highest `memory-mib` (ceiling 65536).
    pub memory_mib: u64,
    /// Highest `deadline-ms` (ceiling 3600000).
    pub deadline_ms: u64,
    /// Highest `batch` (ceiling 1000000).
    pub batch: u64,
    /// Highest `max-attempts` (ceiling 10000).
    pub max_attempts: u64,
    /// Highest `tick-ms` (ceiling 86400000).
    pub tick_ms: u64,
}

impl Default for LimitMaxima {
    fn default() -> Self {
        LimitMaxima {
            memory_mib: 1024,
            deadline_ms: 10_000,
            batch: 10_000,
            max_attempts: 100,
            tick_ms: 3_600_000,
        }
    }
}

impl LimitMaxima {
    /// Each limit's name, lowest and highest value.
    pub fn ranges(&self) -> [(&'static str, u64, u64); 5] {
        [
            ("memory-mib", 1, self.memory_mib.clamp(1, 65_536)),
            ("deadline-ms", 1, self.deadline_ms.clamp(1, 3_600_000)),
            ("batch", 1, self.batch.clamp(1, 1_000_000)),
            ("max-attempts", 1, self.max_attempts.clamp(1, 10_000)),
            ("tick-ms", 10, self.tick_ms.clamp(10, 86_400_000)),
        ]
    }
}

/// Checks limits against `maxima`'s ranges.
pub fn check_limits(limits: &RunLimits, maxima: &LimitMaxima) -> Result<(), String> {
    let values = [
        ("memory-mib", limits.memory_mib as u64),
        ("deadline-ms", limits.deadline_ms),
        ("batch", limits.batch as u64),
        ("max-attempts", u64::from(limits.max_attempts)),
        ("tick-ms", limits.tick_ms),
    ];
    for ((name, value), (_, low, high)) in values.iter().zip(maxima.ranges()) {
        if !(low..=high).contains(value) {
            return Err(format!("limit {name}={value}: use {low} to {high}"));
        }
    }
    Ok(())
}

fn may_manage(principal: &Principal, spec: &ProcessorSpec) -> Result<(), AgentError> {
    if principal.is_admin()
        || (principal.user().is_some() && principal.user() == spec.owner.as_deref())
    {
        Ok(())
    } else {
        // Answered as for a processor that does not exist: who owns it,
        // and that it exists, are the owner's business.
        Err(AgentError::NotFound {
            what: "processor",
            name: spec.id.clone(),
        })
    }
}

/// A pipeline's steps change with its manifest, not one by one (the next
/// apply would undo it).
fn pipeline_step(spec: &ProcessorSpec) -> Result<(), AgentError> {
    match &spec.pipeline {
        Some(pipeline) => Err(AgentError::Invalid(format!(
            "processor {} is a step of pipeline {pipeline}: change or delete the pipeline instead",
            spec.id
        ))),
        None => Ok(()),
    }
}

impl Agent {
    /// Stores an uploaded component; anonymous sessions may not.
    pub async fn put_component_as(
        &self,
        principal: &Principal,
        bytes: &[u8],
    ) -> Result<String, AgentError> {
        if principal == &Principal::Anonymous {
            return Err(AgentError::Forbidden(
                "anonymous sessions cannot upload components".into(),
            ));
        }
        let _admission = self.admit(principal).await;
        let quota = match principal.user().filter(|_| !principal.is_admin()) {
            Some(user) => Some(self.uploaded_by(user).await?),
            None => None,
        };
        let digest = flowd_wasm::digest(bytes);
        let hex_digest = digest.trim_start_matches("sha256:").to_owned();
        if let Some((user, held)) = &quota {
            // The same bytes again cost nothing more.
            if !held.iter().any(|(d, _)| d == &hex_digest) {
                let q = self.quotas();
                if held.len() >= q.components_per_account {
                    return Err(super::quotas::exceeded(
                        "uploaded components per account",
                        q.components_per_account,
                    ));
                }
                let total: u64 = held.iter().map(|(_, size)| size).sum();
                if total.saturating_add(bytes.len() as u64) > q.component_bytes_per_account {
                    return Err(super::quotas::exceeded(
                        "bytes of uploaded components per account",
                        q.component_bytes_per_account,
                    ));
                }
            }
            super::validate_component(bytes).await?;
            let stored = self.upload_component(bytes).await?;
            self.registry
                .put(
                    format!("upload.{user}.{hex_digest}"),
                    bytes.len().to_string().into(),
                )
                .await
                .map_err(|e| AgentError::Unavailable(format!("counting the upload: {e}")))?;
            return Ok(stored);
        }
        super::validate_component(bytes).await?;
        self.upload_component(bytes).await
    }

    /// The components `user` uploaded with `PUT COMPONENT`: its key part
    /// (the hex of the name) and each upload's hex digest and size.
    async fn uploaded_by(&self, user: &str) -> Result<(String, Vec<(String, u64)>), AgentError> {
        use futures::StreamExt;
        let unavailable = |e: &dyn std::fmt::Display| {
            AgentError::Unavailable(format!("reading the upload counts: {e}"))
        };
        let key = hex::encode(user);
        let prefix = format!("upload.{key}.");
        let mut keys = self.registry.keys().await.map_err(|e| unavailable(&e))?;
        let mut held = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| unavailable(&e))?;
            let Some(digest) = k.strip_prefix(&prefix) else {
                continue;
            };
            let size = self
                .registry
                .get(&k)
                .await
                .map_err(|e| unavailable(&e))?
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
                .unwrap_or(0);
            held.push((digest.to_owned(), size));
        }
        Ok((key, held))
    }

    pub async fn create_processor_as(
        &self,
        principal: &Principal,
        id: &str,
        request: ProcessorRequest,
        defaults: &RunLimits,
    ) -> Result<ProcessorSpec, AgentError> {
        let kind = request
            .kind
            .ok_or_else(|| AgentError::Invalid("missing kind=".into()))?;
        let digest = request.component.as_deref().ok_or_else(|| {
            AgentError::Invalid("missing component= (PUT COMPONENT first)".into())
        })?;
        let _admission = self.admit(principal).await;
        let all = self.processors().await?;
        let fused_step = all.iter().any(|(p, _)| p.fused.iter().any(|f| f.id == id));
        if let Some(user) = principal.user().filter(|_| !principal.is_admin()) {
            let limit = self.quotas().processors_per_account;
            let owned = all
                .iter()
                .filter(|(p, _)| p.owner.as_deref() == Some(user))
                .map(|(p, _)| p.fused.len().max(1))
                .sum::<usize>();
            if owned >= limit {
                return Err(super::quotas::exceeded("processors per account", limit));
            }
        }
        if fused_step || self.processor(id).await.is_ok() {
            return Err(AgentError::Exists {
                what: "processor",
                name: id.to_owned(),
            });
        }
        for flow in &request.inputs {
            self.check_read(principal, flow).await?;
        }
        for flow in request.outputs.iter().chain(&request.dead_letter) {
            let (right, _) = self.flow_right(principal, flow).await?;
            access::require(principal, right, Right::Write, &format!("write to {flow}"))?;
        }
        let component = flowd_engine::read_component(&self.buckets.components, digest).await?;
        if component == flowd_engine::spec::RELAY.as_bytes() {
            return Err(AgentError::Invalid(format!("{digest} is not a component")));
        }
        if request.inputs.is_empty() || request.outputs.is_empty() {
            return Err(AgentError::Invalid(
                "a processor needs input= and output= lines".into(),
            ));
        }
        let limits = request.run_limits(defaults.clone(), &self.limit_maxima)?;
        self.create_processor(NewProcessor {
            id: id.to_owned(),
            kind,
            component,
            config: request.config.unwrap_or_default(),
            inputs: request.inputs,
            outputs: request.outputs,
            dead_letter: request.dead_letter,
            limits,
            owner: principal.user().map(str::to_owned),
        })
        .await
    }

    pub async fn describe_processor_as(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(ProcessorSpec, Option<Status>), AgentError> {
        let found = self.processor(id).await?;
        may_manage(principal, &found.0)?;
        Ok(found)
    }

    /// The live hosts sharing this broker (their heartbeats); not for
    /// anonymous sessions.
    pub async fn list_agents_as(
        &self,
        principal: &Principal,
    ) -> Result<Vec<flowd_broker::cluster::AgentRecord>, AgentError> {
        if principal == &Principal::Anonymous {
            return Err(AgentError::Forbidden(
                "listing the hosts needs an account".into(),
            ));
        }
        let bucket = self
            .broker
            .jetstream()
            .get_key_value(flowd_core::buckets::AGENTS)
            .await
            .map_err(|e| AgentError::Unavailable(format!("the hosts' heartbeats: {e}")))?;
        let mut agents = flowd_broker::cluster::read_agents(&bucket).await?;
        if !principal.is_admin() {
            // The management API is for the participant's administrators:
            // where it listens is not told to every account.
            for agent in &mut agents {
                agent.api = None;
            }
        }
        Ok(agents)
    }

    pub async fn list_processors_as(
        &self,
        principal: &Principal,
    ) -> Result<Vec<(ProcessorSpec, Option<Status>)>, AgentError> {
        Ok(self
            .processors()
            .await?
            .into_iter()
            .filter(|(spec, _)| may_manage(principal, spec).is_ok())
            .collect())
    }

    pub async fn pause_processor_as(
        &self,
        principal: &Principal,
        id: &str,
        paused: bool,
    ) -> Result<ProcessorSpec, AgentError> {
        self.describe_processor_as(principal, id).await?;
        self.set_paused(id, paused).await
    }

    pub async fn update_processor_as(
        &self,
        principal: &Principal,
        id: &str,
        request: ProcessorRequest,
    ) -> Result<ProcessorSpec, AgentError> {
        let (spec, _) = self.describe_processor_as(principal, id).await?;
        pipeline_step(&spec)?;
        if spec.is_relay() {
            return Err(AgentError::Invalid(format!(
                "{id} is a subscription relay; it has no component or configuration"
            )));
        }
        if request.kind.is_some()
            || !request.inputs.is_empty()
            || !request.outputs.is_empty()
            || request.dead_letter.is_some()
            || !request.limits.is_empty()
        {
            return Err(AgentError::Invalid(
                "an update changes component= and config.* only; create a new processor to rewire"
                    .into(),
            ));
        }
        let component = match request.component.as_deref() {
            Some(digest) => {
                Some(flowd_engine::read_component(&self.buckets.components, digest).await?)
            }
            None => None,
        };
        self.update_processor(id, request.config, component).await
    }

    pub async fn delete_processor_as(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(), AgentError> {
        let (spec, _) = self.describe_processor_as(principal, id).await?;
        pipeline_step(&spec)?;
        self.delete_processor(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_key_value_lines() {
        let r = ProcessorRequest::from_pairs([
            ("kind", "distributor"),
            ("component", "sha256:ab"),
            ("input", "in.example.com"),
            ("output", "a.example.com"),
            ("output", "b.example.com"),
            ("config.expr", "a = b"),
            ("limit.batch", "10"),
        ])
        .expect("valid");
        assert_eq!(r.kind, Some(Kind::Distributor));
        assert_eq!(r.outputs.len(), 2);
        assert_eq!(r.config, Some(vec![("expr".into(), "a = b".into())]));
        assert_eq!(
            r.run_limits(RunLimits::default(), &LimitMaxima::default())
                .expect("ok")
                .batch,
            10
        );
        assert!(ProcessorRequest::from_pairs([("kind", "blender")]).is_err());
        assert!(ProcessorRequest::from_pairs([("colour", "red")]).is_err());
        assert!(ProcessorRequest::from_pairs([("input", "not a flow")]).is_err());
    }

    #[test]
    fn limits_outside_their_ranges_are_refused_with_the_range() {
        let limits = |pairs: &[(&str, &str)]| {
            ProcessorRequest::from_pairs(pairs.iter().copied())
                .and_then(|r| r.run_limits(RunLimits::default(), &LimitMaxima::default()))
        };
        let refused = |pairs: &[(&str, &str)]| match limits(pairs) {
            Err(AgentError::Invalid(why)) => why,
            other => panic!("{pairs:?} accepted: {other:?}"),
        };
        assert!(refused(&[("limit.deadline-ms", "86400000")]).contains("use 1 to 10000"));
        assert!(refused(&[("limit.batch", "18446744073709551615")]).contains("limit.batch"));
        assert!(refused(&[("limit.batch", "0")]).contains("use 1 to"));
        assert!(refused(&[("limit.memory-mib", "4096")]).contains("memory-mib"));
        assert!(refused(&[("limit.max-attempts", "4294967296")]).contains("max-attempts"));
        assert!(refused(&[("limit.tick-ms", "1")]).contains("tick-ms"));
        let ok =
            limits(&[("limit.deadline-ms", "10000"), ("limit.batch", "50")]).expect("in range");
        assert_eq!((ok.deadline_ms, ok.batch), (10_000, 50));
        let maxima = LimitMaxima::default();
        assert!(check_limits(&ok, &maxima).is_ok());
        let huge = RunLimits {
            batch: usize::MAX,
            ..ok.clone()
        };
        assert!(check_limits(&huge, &maxima).is_err());
        // A host may allow more, within the ceilings.
        let big_host = LimitMaxima {
            memory_mib: 4096,
            batch: u64::MAX,
            ..LimitMaxima::default()
        };
        let more = ProcessorRequest::from_pairs([("limit.memory-mib", "4096")])
            .and_then(|r| r.run_limits(RunLimits::default(), &big_host))
            .expect("allowed by this host");
        assert_eq!(more.memory_mib, 4096);
        assert_eq!(big_host.ranges()[2], ("batch", 1, 1_000_000), "capped");
        assert!(check_limits(&huge, &big_host).is_err());
    }
}
