//! Between the host's types and the API's: errors to gRPC status codes,
//! specs and statuses to messages, and the caller's credentials to a
//! [`Principal`].

use super::proto;
use crate::agent::{AgentError, Principal};
use crate::pipeline::{PipelineError, PipelineView};
use base64::Engine as _;
use flowd_engine::registry::{ComponentRecord, RegistryError};
use flowd_engine::spec::{ProcessorSpec, RunLimits, Status};
use std::path::Path;
use tonic::Code;

pub(super) fn agent_status(e: AgentError) -> tonic::Status {
    let code = match &e {
        AgentError::NotFound { .. } => Code::NotFound,
        AgentError::Exists { .. } => Code::AlreadyExists,
        AgentError::Forbidden(_) => Code::PermissionDenied,
        AgentError::Invalid(_) => Code::InvalidArgument,
        AgentError::Unavailable(_) => Code::Unavailable,
        AgentError::Quota(_) => Code::ResourceExhausted,
    };
    tonic::Status::new(code, e.to_string())
}

pub(super) fn registry_status(e: RegistryError) -> tonic::Status {
    let code = match &e {
        RegistryError::InvalidName(_) | RegistryError::Refused(_) | RegistryError::TooLarge => {
            Code::InvalidArgument
        }
        RegistryError::NotFound(_) => Code::NotFound,
        RegistryError::VersionTaken { .. } => Code::AlreadyExists,
        RegistryError::InUse { .. } => Code::FailedPrecondition,
        RegistryError::NameOwned(_) => Code::PermissionDenied,
        RegistryError::Unavailable(_) => Code::Unavailable,
        RegistryError::Unreadable(_) => Code::Internal,
    };
    tonic::Status::new(code, e.to_string())
}

pub(super) fn pipeline_status(e: PipelineError) -> tonic::Status {
    match e {
        PipelineError::Agent(e) => agent_status(e),
        e @ PipelineError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
        e @ PipelineError::NotFound(_) => tonic::Status::not_found(e.to_string()),
    }
}

/// Who the request comes from, from its `authorization` metadata.
pub(super) async fn principal<T>(
    request: &tonic::Request<T>,
    agent: &crate::agent::Agent,
    state_dir: &Path,
) -> Result<Principal, tonic::Status> {
    let unauthenticated = || {
        tonic::Status::unauthenticated(
            "send `authorization: Bearer <admin token>` or `Basic <base64 of user:password>`",
        )
    };
    let header = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthenticated)?;
    let (scheme, value) = header.split_once(' ').ok_or_else(unauthenticated)?;
    let (user, password) = if scheme.eq_ignore_ascii_case("bearer") {
        (
            crate::accounts::local::LOCAL_ADMIN.to_owned(),
            value.trim().to_owned(),
        )
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(unauthenticated)?;
        let (user, password) = decoded.split_once(':').ok_or_else(unauthenticated)?;
        (user.to_owned(), password.to_owned())
    } else {
        return Err(unauthenticated());
    };
    let from = request
        .remote_addr()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let verified = agent
        .login(state_dir, from, &user, &password)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    match verified {
        Some(identity) => Ok(Principal::User(identity)),
        None => Err(tonic::Status::unauthenticated(
            "wrong user name or password",
        )),
    }
}

pub(super) fn config(entries: &[(String, String)]) -> Vec<proto::ConfigEntry> {
    entries
        .iter()
        .map(|(key, value)| proto::ConfigEntry {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

pub(super) fn pairs(entries: Vec<proto::ConfigEntry>) -> Vec<(String, String)> {
    entries.into_iter().map(|e| (e.key, e.value)).collect()
}

pub(super) fn limits(l: &RunLimits) -> proto::Limits {
    proto::Limits {
        memory_mib: l.memory_mib as u64,
        deadline_ms: l.deadline_ms,
        batch: l.batch as u64,
        max_attempts: u64::from(l.max_attempts),
        tick_ms: l.tick_ms,
    }
}

/// The `limit.<name>` entries of a processor request, for the fields set.
pub(super) fn limit_pairs(l: &proto::Limits) -> Vec<(String, u64)> {
    [
        ("memory-mib", l.memory_mib),
        ("deadline-ms", l.deadline_ms),
        ("batch", l.batch),
        ("max-attempts", l.max_attempts),
        ("tick-ms", l.tick_ms),
    ]
    .into_iter()
    .filter(|(_, v)| *v > 0)
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub(super) fn status(s: &Status) -> proto::ProcessorStatus {
    proto::ProcessorStatus {
        phase: serde_json::to_value(s.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        generation: s.generation,
        events_in: s.events_in,
        events_out: s.events_out,
        errors: s.errors,
        dead_lettered: s.dead_lettered,
        last_error: s.last_error.clone().unwrap_or_default(),
        started_ms: s.started_ms,
        updated_ms: s.updated_ms,
        code: s.code.map(|c| c.as_str().to_owned()).unwrap_or_default(),
        lag: s.lag,
        restarts: s.restarts,
        partitions: s
            .partitions
            .iter()
            .map(|p| proto::PartitionStatus {
                partition: p.partition,
                host: p.host.clone().unwrap_or_default(),
                lag: p.lag,
            })
            .collect(),
    }
}

pub(super) fn processor(spec: &ProcessorSpec, st: Option<&Status>) -> proto::Processor {
    proto::Processor {
        id: spec.id.clone(),
        kind: spec.kind.name().to_owned(),
        component: spec.component.clone(),
        config: config(&spec.config),
        inputs: spec.inputs.iter().map(ToString::to_string).collect(),
        outputs: spec.outputs.iter().map(ToString::to_string).collect(),
        dead_letter: spec.dead_letter.to_string(),
        paused: spec.paused,
        generation: spec.generation,
        limits: Some(limits(&spec.limits)),
        owner: spec.owner.clone().unwrap_or_default(),
        pipeline: spec.pipeline.clone().unwrap_or_default(),
        status: st.map(status),
        parallelism: spec.parallelism,
        key: spec
            .key
            .as_ref()
            .map(|k| k.selector.clone())
            .unwrap_or_default(),
        partitions: spec.key.as_ref().map_or(0, |k| k.partitions),
    }
}

pub(super) fn component(r: &ComponentRecord, used_by: Vec<String>) -> proto::Component {
    proto::Component {
        name: r.name.clone(),
        version: r.version.clone(),
        digest: r.digest.clone(),
        kind: r.kind.name().to_owned(),
        world: r.world.clone(),
        imports: r.imports.clone(),
        size: r.size,
        uploaded_ms: r.uploaded_ms,
        uploaded_by: r.uploaded_by.clone().unwrap_or_default(),
        used_by,
    }
}

pub(super) fn pipeline(view: &PipelineView, with_manifest: bool) -> proto::Pipeline {
    proto::Pipeline {
        name: view.record.name.clone(),
        owner: view.record.owner.clone().unwrap_or_default(),
        manifest: if with_manifest {
            view.record.manifest.clone()
        } else {
            String::new()
        },
        applied_ms: view.record.applied_ms,
        steps: view
            .steps
            .iter()
            .map(|(name, spec, st)| {
                let rate = st.as_ref().map_or(0.0, |s| {
                    let secs = s.updated_ms.saturating_sub(s.started_ms) as f64 / 1000.0;
                    if secs > 0.0 {
                        s.events_out as f64 / secs
                    } else {
                        0.0
                    }
                });
                let runner = view
                    .record
                    .steps
                    .iter()
                    .find(|s| &s.name == name)
                    .map(|s| s.runner.clone())
                    .unwrap_or_default();
                proto::Step {
                    name: name.clone(),
                    processor: Some(processor(spec, st.as_ref())),
                    rate,
                    runner,
                }
            })
            .collect(),
    }
}
