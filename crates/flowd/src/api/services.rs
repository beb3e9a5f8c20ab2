//! The services of the management API.

use super::proto::{
    self, dead_letters_server, logs_server, pipelines_server, processors_server, registry_server,
};
use super::{ApiContext, convert};
use crate::agent::Principal;
use crate::agent::processors::ProcessorRequest;
use flowd_broker::FlowName;
use flowd_engine::registry::{self, ComponentRef};
use futures::StreamExt;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

type Reply<T> = Result<Response<T>, Status>;

async fn principal<T>(ctx: &ApiContext, request: &Request<T>) -> Result<Principal, Status> {
    convert::principal(request, &ctx.agent, &ctx.state_dir).await
}

fn reference(text: &str) -> Result<ComponentRef, Status> {
    text.parse().map_err(convert::registry_status)
}

/// The digest a component reference names.
async fn digest(ctx: &ApiContext, text: &str) -> Result<String, Status> {
    let record = ctx
        .registry
        .resolve(&reference(text)?)
        .await
        .map_err(convert::registry_status)?;
    Ok(record.digest)
}

pub(super) struct RegistryService(pub Arc<ApiContext>);

impl RegistryService {
    async fn used_by(&self, digest: &str) -> Vec<String> {
        self.0
            .agent
            .processors()
            .await
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(spec, _)| {
                let fused: Vec<(String, String)> = spec
                    .fused
                    .iter()
                    .map(|f| (f.id.clone(), f.component.clone()))
                    .collect();
                std::iter::once((spec.id, spec.component)).chain(fused)
            })
            .filter(|(_, component)| component == digest)
            .map(|(id, _)| id)
            .collect()
    }
}

impl RegistryService {
    /// The component versions an account has stored and their bytes;
    /// `None` for administrators, who have no quota.
    async fn stored_by(&self, who: &Principal) -> Result<Option<(usize, u64)>, Status> {
        if who.is_admin() {
            return Ok(None);
        }
        let mine: Vec<_> = self
            .0
            .registry
            .list()
            .await
            .map_err(convert::registry_status)?
            .into_iter()
            .filter(|r| r.uploaded_by.as_deref() == who.user())
            .collect();
        Ok(Some((mine.len(), mine.iter().map(|r| r.size).sum())))
    }
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    async fn upload(
        &self,
        request: Request<Streaming<proto::UploadChunk>>,
    ) -> Reply<proto::Component> {
        let who = principal(&self.0, &request).await?;
        let mut chunks = request.into_inner();
        let header = match chunks.next().await {
            Some(Ok(proto::UploadChunk {
                part: Some(proto::upload_chunk::Part::Header(header)),
            })) => header,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of an upload is its header (name, version)",
                ));
            }
        };
        registry::check_name(&header.name).map_err(convert::registry_status)?;
        registry::check_version(&header.version).map_err(convert::registry_status)?;
        if header.size as usize > registry::MAX_COMPONENT_BYTES {
            return Err(convert::registry_status(registry::RegistryError::TooLarge));
        }
        // The quota is counted and the version stored under the account's
        // admission (one upload of an account at a time).
        let _admission = self.0.agent.admit(&who).await;
        let stored = self.stored_by(&who).await?;
        // The announced size is only a hint: capped, so a header alone
        // cannot reserve much memory.
        let mut bytes = Vec::with_capacity((header.size as usize).min(16 << 20));
        while let Some(chunk) = chunks.next().await {
            match chunk?.part {
                Some(proto::upload_chunk::Part::Data(data)) => {
                    if bytes.len() + data.len() > registry::MAX_COMPONENT_BYTES {
                        return Err(convert::registry_status(registry::RegistryError::TooLarge));
                    }
                    bytes.extend_from_slice(&data);
                }
                _ => return Err(Status::invalid_argument("only data may follow the header")),
            }
        }
        if header.size != 0 && header.size != bytes.len() as u64 {
            return Err(Status::invalid_argument(format!(
                "the header announced {} bytes, {} arrived",
                header.size,
                bytes.len()
            )));
        }
        if let Some((count, size)) = stored {
            let quotas = self.0.agent.quotas();
            if count >= quotas.components_per_account {
                return Err(convert::agent_status(crate::agent::quotas::exceeded(
                    "component versions per account",
                    quotas.components_per_account,
                )));
            }
            if size.saturating_add(bytes.len() as u64) > quotas.component_bytes_per_account {
                return Err(convert::agent_status(crate::agent::quotas::exceeded(
                    "bytes of components per account",
                    quotas.component_bytes_per_account,
                )));
            }
        }
        // The registry compiles the component: one of the host's component
        // check turns, moved into a task of its own so that a caller who
        // hangs up does not free it while the compile runs.
        let turn = crate::agent::check_turn()
            .await
            .map_err(convert::agent_status)?;
        let registry = self.0.registry.clone();
        let user = who.user().map(str::to_owned);
        let admin = who.is_admin();
        let record = tokio::spawn(async move {
            let _turn = turn;
            let uploader = registry::Uploader {
                user: user.as_deref(),
                admin,
            };
            registry
                .upload(&header.name, &header.version, bytes, uploader)
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("the upload: {e}")))?
        .map_err(convert::registry_status)?;
        tracing::info!(
            component = record.reference(),
            digest = record.digest,
            by = who.name(),
            "component uploaded"
        );
        let used_by = self.used_by(&record.digest).await;
        Ok(Response::new(convert::component(&record, used_by)))
    }

    async fn list(
        &self,
        request: Request<proto::ListComponentsRequest>,
    ) -> Reply<proto::ListComponentsResponse> {
        principal(&self.0, &request).await?;
        let records = self
            .0
            .registry
            .list()
            .await
            .map_err(convert::registry_status)?;
        let mut components = Vec::new();
        for record in &records {
            components.push(convert::component(
                record,
                self.used_by(&record.digest).await,
            ));
        }
        Ok(Response::new(proto::ListComponentsResponse { components }))
    }

    async fn describe(&self, request: Request<proto::ComponentRef>) -> Reply<proto::Component> {
        principal(&self.0, &request).await?;
        let reference = reference(&request.get_ref().reference)?;
        let record = self
            .0
            .registry
            .resolve(&reference)
            .await
            .map_err(convert::registry_status)?;
        let used_by = self.used_by(&record.digest).await;
        Ok(Response::new(convert::component(&record, used_by)))
    }

    async fn transfer(
        &self,
        request: Request<proto::TransferRequest>,
    ) -> Reply<proto::TransferResponse> {
        let who = principal(&self.0, &request).await?;
        if !who.is_admin() {
            return Err(Status::permission_denied(
                "only host administrators transfer component names",
            ));
        }
        let proto::TransferRequest { name, to } = request.into_inner();
        let known = self
            .0
            .agent
            .account_exists(&self.0.state_dir, &to)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !known {
            return Err(Status::not_found(format!("no such account: {to}")));
        }
        self.0
            .registry
            .transfer(&name, &to)
            .await
            .map_err(convert::registry_status)?;
        tracing::info!(
            component = name,
            to,
            by = who.name(),
            "component name transferred"
        );
        Ok(Response::new(proto::TransferResponse { name, owner: to }))
    }

    async fn delete(&self, request: Request<proto::ComponentRef>) -> Reply<proto::DeleteResponse> {
        let who = principal(&self.0, &request).await?;
        let reference = reference(&request.get_ref().reference)?;
        if !who.is_admin() {
            let all = self
                .0
                .registry
                .list()
                .await
                .map_err(convert::registry_status)?;
            if let Some(other) = all.iter().find(|r| {
                let named = match &reference {
                    ComponentRef::Version { name, version } => {
                        &r.name == name && &r.version == version
                    }
                    ComponentRef::Latest(name) => &r.name == name,
                    ComponentRef::Digest(digest) => &r.digest == digest,
                };
                named && r.uploaded_by.as_deref() != who.user()
            }) {
                return Err(Status::permission_denied(format!(
                    "{} was uploaded by {}",
                    other.reference(),
                    other.uploaded_by.as_deref().unwrap_or("the host")
                )));
            }
        }
        let processors: Vec<_> = self
            .0
            .agent
            .processors()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .into_iter()
            .map(|(spec, _)| spec)
            .collect();
        self.0
            .registry
            .delete(&reference, &processors)
            .await
            .map_err(convert::registry_status)?;
        Ok(Response::new(proto::DeleteResponse {}))
    }
}

pub(super) struct ProcessorsService(pub Arc<ApiContext>);

impl ProcessorsService {
    async fn set_paused(
        &self,
        request: Request<proto::ProcessorRef>,
        paused: bool,
    ) -> Reply<proto::Processor> {
        let who = principal(&self.0, &request).await?;
        let spec = self
            .0
            .agent
            .pause_processor_as(&who, &request.get_ref().id, paused)
            .await
            .map_err(convert::agent_status)?;
        Ok(Response::new(convert::processor(&spec, None)))
    }
}

fn flows(names: &[String]) -> Result<Vec<FlowName>, Status> {
    names
        .iter()
        .map(|n| FlowName::parse(n).map_err(|e| Status::invalid_argument(format!("`{n}`: {e}"))))
        .collect()
}

#[tonic::async_trait]
impl processors_server::Processors for ProcessorsService {
    async fn create(
        &self,
        request: Request<proto::CreateProcessorRequest>,
    ) -> Reply<proto::Processor> {
        let who = principal(&self.0, &request).await?;
        let r = request.into_inner();
        let kind = r.kind.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "kind `{}`: use bridge, collector, distributor or signal",
                r.kind
            ))
        })?;
        let dead_letter = if r.dead_letter.is_empty() {
            None
        } else {
            flows(std::slice::from_ref(&r.dead_letter))?.pop()
        };
        let request = ProcessorRequest {
            kind: Some(kind),
            component: Some(digest(&self.0, &r.component).await?),
            inputs: flows(&r.inputs)?,
            outputs: flows(&r.outputs)?,
            dead_letter,
            config: Some(convert::pairs(r.config)),
            limits: r
                .limits
                .as_ref()
                .map(convert::limit_pairs)
                .unwrap_or_default(),
        };
        let spec = self
            .0
            .agent
            .create_processor_as(&who, &r.id, request, &self.0.defaults)
            .await
            .map_err(convert::agent_status)?;
        Ok(Response::new(convert::processor(&spec, None)))
    }

    async fn update(
        &self,
        request: Request<proto::UpdateProcessorRequest>,
    ) -> Reply<proto::Processor> {
        let who = principal(&self.0, &request).await?;
        let r = request.into_inner();
        let component = if r.component.is_empty() {
            None
        } else {
            Some(digest(&self.0, &r.component).await?)
        };
        let request = ProcessorRequest {
            component,
            config: r.replace_config.then(|| convert::pairs(r.config)),
            ..ProcessorRequest::default()
        };
        let spec = self
            .0
            .agent
            .update_processor_as(&who, &r.id, request)
            .await
            .map_err(convert::agent_status)?;
        Ok(Response::new(convert::processor(&spec, None)))
    }

    async fn pause(&self, request: Request<proto::ProcessorRef>) -> Reply<proto::Processor> {
        self.set_paused(request, true).await
    }

    async fn resume(&self, request: Request<proto::ProcessorRef>) -> Reply<proto::Processor> {
        self.set_paused(request, false).await
    }

    async fn destroy(&self, request: Request<proto::ProcessorRef>) -> Reply<proto::DeleteResponse> {
        let who = principal(&self.0, &request).await?;
        self.0
            .agent
            .delete_processor_as(&who, &request.get_ref().id)
            .await
            .map_err(convert::agent_status)?;
        Ok(Response::new(proto::DeleteResponse {}))
    }

    async fn list(
        &self,
        request: Request<proto::ListProcessorsRequest>,
    ) -> Reply<proto::ListProcessorsResponse> {
        let who = principal(&self.0, &request).await?;
        let found = self
            .0
            .agent
            .list_processors_as(&who)
            .await
            .map_err(convert::agent_status)?;
        Ok(Response::new(proto::ListProcessorsResponse {
            processors: found
                .iter()
                .map(|(spec, st)| convert::processor(spec, st.as_ref()))
                .collect(),
        }))
    }

    async fn status(&self, request: Request<proto::ProcessorRef>) -> Reply<proto::Processor> {
        let who = principal(&self.0, &request).await?;
        let (spec, st) = self
            .0
            .agent
            .describe_processor_as(&who, &request.get_ref().id)
            .await
            .map_err(convert::agent_status)?;
        Ok(Response::new(convert::processor(&spec, st.as_ref())))
    }
}

pub(super) struct PipelinesService(pub Arc<ApiContext>);

#[tonic::async_trait]
impl pipelines_server::Pipelines for PipelinesService {
    async fn apply(&self, request: Request<proto::ApplyRequest>) -> Reply<proto::ApplyResponse> {
        let who = principal(&self.0, &request).await?;
        let r = request.get_ref();
        let report = self
            .0
            .pipelines
            .apply_as(&who, &r.manifest, r.dry_run)
            .await
            .map_err(convert::pipeline_status)?;
        Ok(Response::new(proto::ApplyResponse {
            name: report.name,
            created: report.created,
            updated: report.updated,
            unchanged: report.unchanged,
            removed: report.removed,
        }))
    }

    async fn get(&self, request: Request<proto::PipelineRef>) -> Reply<proto::Pipeline> {
        let who = principal(&self.0, &request).await?;
        let view = self
            .0
            .pipelines
            .get_as(&who, &request.get_ref().name)
            .await
            .map_err(convert::pipeline_status)?;
        Ok(Response::new(convert::pipeline(&view, true)))
    }

    async fn list(
        &self,
        request: Request<proto::ListPipelinesRequest>,
    ) -> Reply<proto::ListPipelinesResponse> {
        let who = principal(&self.0, &request).await?;
        let views = self
            .0
            .pipelines
            .list_as(&who)
            .await
            .map_err(convert::pipeline_status)?;
        Ok(Response::new(proto::ListPipelinesResponse {
            pipelines: views.iter().map(|v| convert::pipeline(v, false)).collect(),
        }))
    }

    async fn delete(&self, request: Request<proto::PipelineRef>) -> Reply<proto::DeleteResponse> {
        let who = principal(&self.0, &request).await?;
        self.0
            .pipelines
            .delete_as(&who, &request.get_ref().name)
            .await
            .map_err(convert::pipeline_status)?;
        Ok(Response::new(proto::DeleteResponse {}))
    }

    async fn status(&self, request: Request<proto::PipelineRef>) -> Reply<proto::Pipeline> {
        let who = principal(&self.0, &request).await?;
        let view = self
            .0
            .pipelines
            .get_as(&who, &request.get_ref().name)
            .await
            .map_err(convert::pipeline_status)?;
        Ok(Response::new(convert::pipeline(&view, false)))
    }
}

pub(super) struct LogsService(pub Arc<ApiContext>);

/// What a name given to the log and dead-letter services stands for, as
/// the caller may see it.
pub(crate) struct Named {
    /// The processors (segments) concerned.
    pub specs: Vec<flowd_engine::ProcessorSpec>,
    /// Only this fused step of theirs (a step's name was given).
    pub step: Option<String>,
}

impl Named {
    /// Every processor id concerned, fused steps included.
    fn ids(&self) -> Vec<String> {
        match &self.step {
            Some(step) => vec![step.clone()],
            // Sorted and once each: the broker refuses overlapping filters
            // (a pipeline lists a fused segment under each of its steps).
            None => self
                .specs
                .iter()
                .flat_map(|s| {
                    std::iter::once(s.id.clone()).chain(s.fused.iter().map(|f| f.id.clone()))
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }
}

/// Resolves `name`: a processor, a fused step, or a pipeline's steps.
/// What `who` may not manage is answered as what does not exist.
pub(crate) async fn named(ctx: &ApiContext, who: &Principal, name: &str) -> Result<Named, Status> {
    let visible = ctx
        .agent
        .list_processors_as(who)
        .await
        .map_err(convert::agent_status)?;
    if let Some((spec, _)) = visible.iter().find(|(spec, _)| spec.id == name) {
        return Ok(Named {
            specs: vec![spec.clone()],
            step: None,
        });
    }
    if let Some((spec, _)) = visible
        .iter()
        .find(|(spec, _)| spec.fused.iter().any(|f| f.id == name))
    {
        return Ok(Named {
            specs: vec![spec.clone()],
            step: Some(name.to_owned()),
        });
    }
    match ctx.pipelines.get_as(who, name).await {
        Ok(view) => Ok(Named {
            specs: view.steps.into_iter().map(|(_, spec, _)| spec).collect(),
            step: None,
        }),
        Err(crate::pipeline::PipelineError::NotFound(_)) => Err(Status::not_found(format!(
            "no processor, fused step or pipeline `{name}`"
        ))),
        Err(e) => Err(convert::pipeline_status(e)),
    }
}

#[tonic::async_trait]
impl logs_server::Logs for LogsService {
    type ReadStream = futures::stream::BoxStream<'static, Result<proto::LogRecord, Status>>;

    async fn read(&self, request: Request<proto::ReadLogsRequest>) -> Reply<Self::ReadStream> {
        let who = principal(&self.0, &request).await?;
        Ok(Response::new(
            read_logs(&self.0, &who, request.into_inner()).await?,
        ))
    }
}

/// The log records `r` asks for, as `who` may read them.
pub(crate) async fn read_logs(
    ctx: &ApiContext,
    who: &Principal,
    r: proto::ReadLogsRequest,
) -> Result<futures::stream::BoxStream<'static, Result<proto::LogRecord, Status>>, Status> {
    use flowd_broker::logs::{Logs, Retention, Since};
    // A read holds a broker consumer, and its turn, for as long as its
    // stream lives (a follow until the caller ends it).
    let turn = ctx.long_reads.log_read(who)?;
    let processors = named(ctx, who, &r.name).await?.ids();
    let logs = Logs::open(ctx.agent.broker(), Retention::default())
        .await
        .map_err(|e| Status::unavailable(format!("processor log: {e}")))?;
    let since = match r.since_ms {
        0 => Since::Start,
        ms => Since::Time(ms),
    };
    let records = logs
        .read(&processors, since, r.follow)
        .await
        .map_err(|e| Status::unavailable(format!("processor log: {e}")))?;
    Ok(records
        .map(move |record| {
            let _turn = &turn;
            record
                .map(|r| proto::LogRecord {
                    time_ms: r.time_ms,
                    level: r.level.as_str().to_owned(),
                    kind: r.kind,
                    processor: r.processor,
                    host: r.host,
                    instance: r.instance,
                    event: r.event.unwrap_or_default(),
                    message: r.message,
                    sequence: r.sequence,
                })
                .map_err(|e| Status::unavailable(format!("processor log: {e}")))
        })
        .boxed())
}

pub(super) struct DeadLettersService(pub Arc<ApiContext>);

/// A dead-letter request's principal, processors and chosen letters, and
/// the principal's scan turn, held until the request is done.
type Chosen = (
    Principal,
    Vec<flowd_engine::ProcessorSpec>,
    Vec<crate::agent::deadletters::DeadLetter>,
    super::turns::Turn,
);

impl DeadLettersService {
    async fn chosen(
        &self,
        request: &Request<proto::DeadLettersRequest>,
        must_choose: bool,
    ) -> Result<Chosen, Status> {
        let who = principal(&self.0, request).await?;
        let (specs, letters, turn) =
            chosen_letters(&self.0, &who, request.get_ref(), must_choose).await?;
        Ok((who, specs, letters, turn))
    }
}

/// The processors `r.name` stands for and the dead letters `r` chooses, as
/// `who` may see them. A replay or discard (`must_choose`) needs the letters
/// named by sequence or `all`; a listing takes all up to `r.limit`. The
/// principal's scan turn comes with them: keep it while replaying or
/// discarding.
pub(crate) async fn chosen_letters(
    ctx: &ApiContext,
    who: &Principal,
    r: &proto::DeadLettersRequest,
    must_choose: bool,
) -> Result<
    (
        Vec<flowd_engine::ProcessorSpec>,
        Vec<crate::agent::deadletters::DeadLetter>,
        super::turns::Turn,
    ),
    Status,
> {
    use crate::agent::deadletters::Which;
    let turn = ctx.long_reads.scan(who)?;
    let which = if !r.sequences.is_empty() {
        Which::Sequences(r.sequences.iter().copied().collect())
    } else if r.all || !must_choose {
        Which::All
    } else {
        return Err(Status::invalid_argument(
            "name the dead letters by sequence, or ask for all of them",
        ));
    };
    let named = named(ctx, who, &r.name).await?;
    let steps: Vec<String> = named.step.iter().cloned().collect();
    let limit = match (must_choose, r.limit) {
        (true, _) => crate::agent::deadletters::MAX_LISTED,
        (false, 0) => 100,
        (false, n) => n as usize,
    };
    let letters = ctx
        .agent
        .dead_letters(&named.specs, &steps, &which, limit)
        .await
        .map_err(convert::agent_status)?;
    Ok((named.specs, letters, turn))
}

fn handled(done: Vec<crate::agent::deadletters::Handled>) -> proto::HandledResponse {
    proto::HandledResponse {
        handled: done
            .into_iter()
            .map(|h| proto::HandledLetter {
                sequence: h.sequence,
                event_id: h.event,
                to: h.to.unwrap_or_default(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl dead_letters_server::DeadLetters for DeadLettersService {
    async fn list(
        &self,
        request: Request<proto::DeadLettersRequest>,
    ) -> Reply<proto::DeadLettersResponse> {
        use cloudevents::AttributesReader;
        let (_, _, letters, _turn) = self.chosen(&request, false).await?;
        Ok(Response::new(proto::DeadLettersResponse {
            letters: letters
                .into_iter()
                .map(|l| proto::DeadLetter {
                    flow: l.flow.to_string(),
                    sequence: l.sequence,
                    processor: l.processor,
                    step: l.step.unwrap_or_default(),
                    input: l.input,
                    error: l.error,
                    event_id: l.event.id().to_owned(),
                    event_type: l.event.ty().to_owned(),
                    event_source: l.event.source().to_string(),
                    event_json: serde_json::to_string(&l.event).unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn replay(
        &self,
        request: Request<proto::DeadLettersRequest>,
    ) -> Reply<proto::HandledResponse> {
        let (who, specs, letters, _turn) = self.chosen(&request, true).await?;
        let done = self
            .0
            .agent
            .replay_dead_letters(&who, &specs, letters)
            .await
            .map_err(convert::agent_status)?;
        Ok(Response::new(handled(done)))
    }

    async fn discard(
        &self,
        request: Request<proto::DeadLettersRequest>,
    ) -> Reply<proto::HandledResponse> {
        let (who, _, letters, _turn) = self.chosen(&request, true).await?;
        let done = self
            .0
            .agent
            .discard_dead_letters(letters, who.user().unwrap_or("the host administrator"))
            .await
            .map_err(convert::agent_status)?;
        Ok(Response::new(handled(done)))
    }
}
