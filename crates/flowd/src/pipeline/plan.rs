//! Validation of a manifest and its translation into processors.
//!
//! A pipeline is a graph of *steps* (processors) joined by named *edges*.
//! An edge is written by exactly one producer (a pipeline input, or a
//! step's output port) and read by any number of steps (fan-out by copy);
//! a distributor or signal step writes several edges (fan-out by routing).
//! Each step becomes one processor `<pipeline>-<step>`; each edge is a
//! flow: the input's or output's flow, or an internal flow
//! `<edge>.<pipeline>.pipelines.flowd` between two steps.
//!
//! Every check runs before anything is applied, and every error carries
//! the manifest location it is about.

pub use super::manifest::Diagnostic;
use super::manifest::{self, Location, Manifest, Step, StepLimits, at};
use crate::agent::Agent;
use flowd_broker::{FlowName, partitions};
use flowd_engine::registry::{ComponentRef, Registry};
use flowd_engine::spec::{FusedStep, Keying, Port, ProcessorSpec, RunLimits};
use flowd_wasm::ProcessorSetup;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The most instances a step may ask for.
pub const MAX_PARALLELISM: u32 = 64;

/// The most steps a pipeline may have.
pub const MAX_STEPS: usize = 128;

/// Namespace of the flows between steps of a pipeline.
pub const INTERNAL_NAMESPACE: &str = "pipelines.flowd";

/// The flow of an edge between two steps.
pub fn internal_flow(pipeline: &str, edge: &str) -> FlowName {
    edge_flow(pipeline, edge).unwrap_or_else(|| unreachable_name(pipeline, edge))
}

/// The flow of an edge, if the names make one: validation goes on past
/// names it has already reported.
fn edge_flow(pipeline: &str, edge: &str) -> Option<FlowName> {
    FlowName::parse(&format!("{edge}.{pipeline}.{INTERNAL_NAMESPACE}")).ok()
}

/// Where a pipeline's failing events go.
pub fn dead_letter_flow(pipeline: &str) -> FlowName {
    internal_flow(pipeline, "deadletter")
}

/// Names are checked as DNS labels before any flow is named from them, so
/// this only guards against a bug.
fn unreachable_name(pipeline: &str, edge: &str) -> FlowName {
    panic!("pipeline `{pipeline}` edge `{edge}` passed label checks but is no flow name")
}

/// The processor that runs a step.
pub fn processor_id(pipeline: &str, step: &str) -> String {
    format!("{pipeline}-{step}")
}

/// A validated pipeline, ready to apply.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    /// The processors to run: one per segment of fused steps (a step on
    /// its own is a segment of one). Specs have generation 0 and no owner
    /// yet.
    pub segments: Vec<ProcessorSpec>,
    /// Every step, in manifest order.
    pub steps: Vec<PlannedStep>,
    /// Flows between steps that are not fused (and the dead-letter flow),
    /// to create.
    pub internal: Vec<FlowName>,
    /// Flows the pipeline reads and writes (access is checked on them).
    pub inputs: Vec<FlowName>,
    pub outputs: Vec<FlowName>,
    /// Inputs that are other participants' flows.
    pub remote: Vec<RemoteInput>,
}

/// An input served by another participant: the host subscribes to it
/// (`SUBSCRIBE <remote> LOCAL <local>`) and the pipeline reads `local`.
#[derive(Debug, Clone)]
pub struct RemoteInput {
    pub edge: String,
    pub remote: FlowName,
    pub local: FlowName,
    pub at: Location,
}

fn label_error(what: &str, name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    (!ok).then(|| {
        format!("{what} `{name}`: use lower-case letters, digits and `-` (a DNS label, at most 63)")
    })
}

/// Where a step runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedStep {
    pub name: String,
    /// Its processor id (status and keyed state).
    pub processor: String,
    /// The processor whose runner runs it: itself, or the first step of
    /// its fused segment.
    pub runner: String,
}

/// Who writes an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Producer {
    Input,
    Step(usize),
}

/// What validation needs from the host.
pub struct Checker<'a> {
    pub registry: &'a Registry,
    pub agent: &'a Agent,
    pub defaults: &'a RunLimits,
}

impl Checker<'_> {
    /// Validates `text` and translates it; every error found is returned,
    /// in the order of their places. The phases (fields, graph, then
    /// components, flows and configurations) all run when the manifest
    /// could be read at all, so one pass reports everything.
    pub async fn plan(&self, text: &str) -> Result<Plan, Vec<Diagnostic>> {
        // Reading is CPU work of up to MAX_DIAGNOSTICS passes: off the
        // async workers.
        let owned = text.to_owned();
        let (manifest, mut errors) = tokio::task::spawn_blocking(move || manifest::read(&owned))
            .await
            .unwrap_or_else(|e| {
                (
                    None,
                    vec![Diagnostic {
                        at: Location::default(),
                        message: format!("reading the manifest: {e}"),
                    }],
                )
            });
        let Some(manifest) = manifest else {
            return Err(errors);
        };
        let structure = structure(&manifest, &mut errors);
        // Each step is a registry look-up and an instantiation: only for a
        // pipeline of a size that may run.
        let plan = if manifest.steps.len() <= MAX_STEPS {
            Some(self.resolve(&manifest, &structure, &mut errors).await)
        } else {
            None
        };
        match plan {
            Some(plan) if errors.is_empty() => Ok(plan),
            _ => {
                errors.sort_by_key(|e| (e.at.line, e.at.column));
                if errors.len() > manifest::MAX_DIAGNOSTICS {
                    let more = errors.len() - manifest::MAX_DIAGNOSTICS;
                    errors.truncate(manifest::MAX_DIAGNOSTICS);
                    errors.push(Diagnostic {
                        at: Location::default(),
                        message: format!("and {more} more"),
                    });
                }
                Err(errors)
            }
        }
    }

    /// Components, kinds, flows and configurations: the checks that ask
    /// the registry, the broker and the Wasm host.
    async fn resolve(&self, m: &Manifest, s: &Structure, errors: &mut Vec<Diagnostic>) -> Plan {
        // The structural checks have reported a name that makes no flow;
        // the checks here still run, under a stand-in name, and the plan
        // is not used.
        let name = if edge_flow(m.name.as_str(), "deadletter").is_some() {
            m.name.as_str().to_owned()
        } else {
            "invalid".to_owned()
        };
        let mut flow_of: HashMap<String, FlowName> = HashMap::new();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut remote = Vec::new();
        for (is_input, edges) in [(true, &m.inputs), (false, &m.outputs)] {
            for (edge, uri) in edges {
                match FlowName::parse(uri.as_str()) {
                    Ok(flow) => {
                        if let Err(e) = self.agent.broker().flow_info(&flow).await {
                            // A flow no namespace of this host holds is
                            // another participant's: read through a
                            // subscription into an internal flow.
                            let foreign = is_input
                                && self.agent.reaches_others()
                                && self
                                    .agent
                                    .flow_chain(&flow)
                                    .await
                                    .is_ok_and(|chain| chain.is_empty());
                            if foreign {
                                let Some(local) = edge_flow(&name, edge) else {
                                    continue;
                                };
                                remote.push(RemoteInput {
                                    edge: edge.clone(),
                                    remote: flow,
                                    local: local.clone(),
                                    at: at(uri),
                                });
                                flow_of.insert(edge.clone(), local);
                                continue;
                            }
                            errors.push(Diagnostic {
                                at: at(uri),
                                message: format!("unknown flow {}: {e}", flow.uri()),
                            });
                        }
                        flow_of.insert(edge.clone(), flow.clone());
                        if is_input { &mut inputs } else { &mut outputs }.push(flow);
                    }
                    Err(e) => errors.push(Diagnostic {
                        at: at(uri),
                        message: format!("`{}`: {e}", uri.as_str()),
                    }),
                }
            }
        }
        let mut between = Vec::new();
        for edge in s.producers.keys() {
            if !flow_of.contains_key(edge) {
                let Some(flow) = edge_flow(&name, edge) else {
                    continue;
                };
                between.push((edge.clone(), flow.clone()));
                flow_of.insert(edge.clone(), flow);
            }
        }

        let fallback = m.limits.clone().unwrap_or_default();
        let mut steps = Vec::new();
        for step in &m.steps {
            let step_name = step.name.as_str();
            let reference: ComponentRef = match step.component.parse() {
                Ok(r) => r,
                Err(e) => {
                    errors.push(Diagnostic {
                        at: at(&step.component),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let record = match self.registry.resolve(&reference).await {
                Ok(record) => record,
                Err(e) => {
                    errors.push(Diagnostic {
                        at: at(&step.component),
                        message: format!("step `{step_name}`: {e}"),
                    });
                    continue;
                }
            };
            if let Some(kind) = &step.kind
                && kind.as_str() != record.kind.name()
            {
                errors.push(Diagnostic {
                    at: at(kind),
                    message: format!(
                        "step `{step_name}` says kind {}, but {} is a {}",
                        kind.as_str(),
                        step.component.as_str(),
                        record.kind
                    ),
                });
                continue;
            }
            let to = s.outputs_of(step);
            if let Err(e) = record.kind.check_ports(step.from.0.len(), to.len()) {
                errors.push(Diagnostic {
                    at: at(&step.name),
                    message: format!(
                        "step `{step_name}` ({} {}): {e}",
                        record.kind,
                        step.component.as_str()
                    ),
                });
                continue;
            }
            let limits = match run_limits(
                self.defaults,
                &step.limits.clone().unwrap_or_default().or(&fallback),
                self.agent.limit_maxima(),
            ) {
                Ok(l) => l,
                Err(message) => {
                    errors.push(Diagnostic {
                        at: at(&step.name),
                        message: format!("step `{step_name}`: {message}"),
                    });
                    continue;
                }
            };
            let parallelism = step.parallelism();
            let key = match self.keying(step, step_name, &name).await {
                Ok(key) => key,
                Err(diagnostic) => {
                    errors.push(diagnostic);
                    continue;
                }
            };
            if !(1..=MAX_PARALLELISM).contains(&parallelism)
                || (parallelism > 1 && record.kind == flowd_wasm::Kind::Signal && key.is_none())
            {
                let at = step.parallelism.as_ref().map_or(at(&step.name), at);
                errors.push(Diagnostic {
                    at,
                    message: if parallelism > 1 && parallelism <= MAX_PARALLELISM {
                        format!(
                            "step `{step_name}`: a signal step ticks on its own timer and runs as one instance"
                        )
                    } else {
                        format!("step `{step_name}`: parallelism must be 1 to {MAX_PARALLELISM}")
                    },
                });
                continue;
            }
            let spec = ProcessorSpec {
                id: processor_id(&name, step_name),
                kind: record.kind,
                component: record.digest.clone(),
                config: step.config.0.clone(),
                inputs: step
                    .from
                    .0
                    .iter()
                    .filter_map(|e| flow_of.get(e.as_str()).cloned())
                    .collect(),
                outputs: to.iter().filter_map(|e| flow_of.get(e).cloned()).collect(),
                dead_letter: dead_letter_flow(&name),
                paused: false,
                generation: 0,
                limits,
                owner: None,
                pipeline: Some(name.clone()),
                fused: Vec::new(),
                ports: Vec::new(),
                // Components see the manifest's edge names as port names.
                input_names: step.from.0.iter().map(|e| e.as_str().to_owned()).collect(),
                output_names: to.clone(),
                parallelism,
                key,
            };
            if let Err(message) = self.check_config(&spec).await {
                errors.push(Diagnostic {
                    at: at(&step.name),
                    message: format!("step `{step_name}`: {message}"),
                });
                continue;
            }
            steps.push((step_name.to_owned(), spec));
        }
        // Signal steps tick on their own timer: they get a runner of their
        // own rather than being fused under another step.
        let mut parent = s.parent.clone();
        let mut fused_edges = s.fused_edges.clone();
        for (c, step) in m.steps.iter().enumerate() {
            let signal = steps
                .iter()
                .any(|(n, spec)| n == step.name.as_str() && spec.kind == flowd_wasm::Kind::Signal);
            if signal
                && parent[c].take().is_some()
                && let Some(edge) = step.from.0.first()
            {
                fused_edges.remove(edge.as_str());
            }
        }
        let mut internal: Vec<FlowName> = between
            .into_iter()
            .filter(|(edge, _)| !fused_edges.contains(edge))
            .map(|(_, flow)| flow)
            .collect();
        internal.extend(remote.iter().map(|r: &RemoteInput| r.local.clone()));
        internal.push(dead_letter_flow(&name));
        let (segments, steps) = if errors.is_empty() {
            fuse(m, &parent, steps, &flow_of)
        } else {
            (Vec::new(), Vec::new())
        };
        Plan {
            name,
            segments,
            steps,
            internal,
            inputs,
            outputs,
            remote,
        }
    }

    /// Instantiates the step's component with its configuration, as the
    /// host will.
    /// A step's `key:` and `partitions:`, checked: a valid selector, a
    /// partition count within bounds and at least the parallelism, and
    /// the same as the running step's (its state is partitioned by them).
    async fn keying(
        &self,
        step: &Step,
        step_name: &str,
        pipeline: &str,
    ) -> Result<Option<Keying>, Diagnostic> {
        let running = match self
            .agent
            .processor(&processor_id(pipeline, step_name))
            .await
        {
            Ok((spec, _)) => spec.key,
            Err(crate::agent::AgentError::NotFound { .. }) => None,
            Err(e) => {
                return Err(Diagnostic {
                    at: at(&step.name),
                    message: format!("step `{step_name}`: its running spec cannot be read: {e}"),
                });
            }
        };
        let Some(selector) = &step.key else {
            if let Some(old) = running {
                return Err(Diagnostic {
                    at: at(&step.name),
                    message: format!(
                        "step `{step_name}`: it is keyed (`{}`, {} partitions) and its state is \
                         partitioned: it cannot stop being keyed; name a new step instead",
                        old.selector, old.partitions
                    ),
                });
            }
            if let Some(partitions) = &step.partitions {
                return Err(Diagnostic {
                    at: at(partitions),
                    message: format!("step `{step_name}`: `partitions` needs a `key`"),
                });
            }
            return Ok(None);
        };
        flowd_engine::keyed::KeySelector::parse(selector).map_err(|e| Diagnostic {
            at: at(selector),
            message: format!("step `{step_name}`: {e}"),
        })?;
        let partitions = step
            .partitions
            .as_ref()
            .map_or(partitions::DEFAULT_PARTITIONS, |p| **p);
        let place = step.partitions.as_ref().map_or(at(selector), at);
        if !(1..=partitions::MAX_PARTITIONS).contains(&partitions) {
            return Err(Diagnostic {
                at: place,
                message: format!(
                    "step `{step_name}`: partitions must be 1 to {}",
                    partitions::MAX_PARTITIONS
                ),
            });
        }
        if step.parallelism() > partitions {
            return Err(Diagnostic {
                at: place,
                message: format!(
                    "step `{step_name}`: parallelism {} exceeds its {partitions} partitions",
                    step.parallelism()
                ),
            });
        }
        let keying = Keying {
            selector: selector.as_str().to_owned(),
            partitions,
        };
        if let Some(old) = running
            && old != keying
        {
            return Err(Diagnostic {
                at: place,
                message: format!(
                    "step `{step_name}`: its key and partitions are fixed (`{}`, {}): its state \
                     is partitioned by them; name a new step to change them",
                    old.selector, old.partitions
                ),
            });
        }
        Ok(Some(keying))
    }

    async fn check_config(&self, spec: &ProcessorSpec) -> Result<(), String> {
        let bytes = self
            .registry
            .bytes(&spec.component)
            .await
            .map_err(|e| e.to_string())?;
        let host = self.registry.host().clone();
        let setup = ProcessorSetup {
            name: spec.id.clone(),
            config: spec.config.clone(),
            inputs: spec.own_inputs(),
            outputs: spec.own_outputs(),
        };
        let limits = spec.limits.wasm();
        tokio::task::spawn_blocking(move || {
            host.check(&bytes, None, setup, limits)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("checking the configuration: {e}"))?
    }
}

fn run_limits(
    defaults: &RunLimits,
    set: &StepLimits,
    maxima: &crate::agent::processors::LimitMaxima,
) -> Result<RunLimits, String> {
    let mut limits = defaults.clone();
    if let Some(v) = set.memory_mib {
        limits.memory_mib = v;
    }
    if let Some(v) = set.deadline_ms {
        limits.deadline_ms = v;
    }
    if let Some(v) = set.batch {
        limits.batch = v;
    }
    if let Some(v) = set.max_attempts {
        limits.max_attempts = v;
    }
    if let Some(v) = set.tick_ms {
        limits.tick_ms = v;
    }
    crate::agent::processors::check_limits(&limits, maxima)?;
    Ok(limits)
}

/// The graph of a manifest: who writes each edge, and which steps run
/// fused into the step before them.
struct Structure {
    producers: BTreeMap<String, Producer>,
    /// For each step, the (step, output port) it is fused under.
    parent: Vec<Option<(usize, usize)>>,
    /// Edges passed in memory (no flow).
    fused_edges: BTreeSet<String>,
}

impl Structure {
    /// The edges a step writes, in port order.
    fn outputs_of(&self, step: &manifest::Step) -> Vec<String> {
        match &step.to {
            Some(to) => to.0.iter().map(|e| e.as_str().to_owned()).collect(),
            None => vec![step.name.as_str().to_owned()],
        }
    }
}

/// What is wrong with a manifest by itself (names, edges, producers and
/// readers, cycles), before any host is asked: the checks a fuzzer can
/// run on any text that parses.
pub fn structural_errors(m: &Manifest) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let _ = structure(m, &mut errors);
    errors
}

/// Names, edges, producers and readers, and cycles: the checks that need
/// nothing but the manifest.
fn structure(m: &Manifest, errors: &mut Vec<Diagnostic>) -> Structure {
    let mut push = |at: Location, message: String| errors.push(Diagnostic { at, message });
    if let Some(v) = &m.api_version
        && v.as_str() != "flowd/v1"
    {
        push(
            at(v),
            format!("apiVersion `{}`: this host reads flowd/v1", v.as_str()),
        );
    }
    if let Some(k) = &m.kind
        && k.as_str() != "Pipeline"
    {
        push(at(k), format!("kind `{}`: expected Pipeline", k.as_str()));
    }
    let name = m.name.as_str();
    if let Some(e) = label_error("pipeline name", name) {
        push(at(&m.name), e);
    }
    if m.steps.is_empty() {
        push(at(&m.name), "a pipeline needs at least one step".into());
    }
    if m.steps.len() > MAX_STEPS {
        push(
            at(&m.name),
            format!(
                "{} steps: a pipeline has at most {MAX_STEPS}",
                m.steps.len()
            ),
        );
    }
    let mut producers: BTreeMap<String, Producer> = BTreeMap::new();
    let mut produced_at: HashMap<String, Location> = HashMap::new();
    for (edge, uri) in &m.inputs {
        if let Some(e) = label_error("input", edge) {
            push(at(uri), e);
        }
        if edge == "deadletter" {
            push(
                at(uri),
                "edge name `deadletter` is reserved for failing events".into(),
            );
        }
        producers.insert(edge.clone(), Producer::Input);
        produced_at.insert(edge.clone(), at(uri));
    }
    for (edge, uri) in &m.outputs {
        if let Some(e) = label_error("output", edge) {
            push(at(uri), e);
        }
        if m.inputs.contains_key(edge) {
            push(at(uri), format!("`{edge}` is both an input and an output"));
        }
    }
    let mut seen_steps: HashMap<&str, Location> = HashMap::new();
    for (i, step) in m.steps.iter().enumerate() {
        let step_name = step.name.as_str();
        if let Some(e) = label_error("step name", step_name) {
            push(at(&step.name), e);
        } else if processor_id(name, step_name).len() > 64 {
            push(
                at(&step.name),
                format!("`{name}-{step_name}` (the step's processor id) is longer than 64"),
            );
        }
        if let Some(first) = seen_steps.insert(step_name, at(&step.name)) {
            push(
                at(&step.name),
                format!("step `{step_name}` is declared twice (first at {first})"),
            );
        }
        if step.from.0.is_empty() {
            push(
                at(&step.name),
                format!("step `{step_name}` reads nothing (`from:` is empty)"),
            );
        }
        let written: Vec<(String, Location)> = match &step.to {
            Some(to) if to.0.is_empty() => {
                push(
                    at(&step.name),
                    format!("step `{step_name}` writes nothing (`to:` is empty)"),
                );
                Vec::new()
            }
            Some(to) => {
                to.0.iter()
                    .map(|e| (e.as_str().to_owned(), at(e)))
                    .collect()
            }
            None => vec![(step_name.to_owned(), at(&step.name))],
        };
        for (edge, location) in written {
            if let Some(e) = label_error("edge", &edge) {
                push(location, e);
                continue;
            }
            if edge == "deadletter" {
                push(
                    location,
                    "edge name `deadletter` is reserved for failing events".into(),
                );
                continue;
            }
            if let Some(first) = produced_at.get(&edge) {
                push(
                    location,
                    format!("edge `{edge}` is written twice (first at {first})"),
                );
                continue;
            }
            producers.insert(edge.clone(), Producer::Step(i));
            produced_at.insert(edge, location);
        }
    }
    let mut read: BTreeSet<&str> = BTreeSet::new();
    for step in &m.steps {
        for edge in &step.from.0 {
            read.insert(edge.as_str());
            if !producers.contains_key(edge.as_str()) {
                push(
                    at(edge),
                    format!(
                        "step `{}` reads `{}`, which is no input and no step's output",
                        step.name.as_str(),
                        edge.as_str()
                    ),
                );
            }
        }
    }
    for (edge, uri) in &m.outputs {
        if !matches!(producers.get(edge), Some(Producer::Step(_))) {
            push(at(uri), format!("output `{edge}` is written by no step"));
        }
    }
    for (edge, producer) in &producers {
        if read.contains(edge.as_str()) || m.outputs.contains_key(edge) {
            continue;
        }
        let location = produced_at.get(edge).copied().unwrap_or_default();
        match producer {
            Producer::Input => push(location, format!("input `{edge}` is read by no step")),
            Producer::Step(i) => push(
                location,
                format!(
                    "edge `{edge}` of step `{}` is read by no step and is no output",
                    m.steps[*i].name.as_str()
                ),
            ),
        }
    }
    // Kahn's algorithm over steps; what remains sits on a cycle.
    let n = m.steps.len();
    let mut indegree = vec![0usize; n];
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (j, step) in m.steps.iter().enumerate() {
        for edge in &step.from.0 {
            if let Some(Producer::Step(i)) = producers.get(edge.as_str()) {
                next[*i].push(j);
                indegree[j] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &j in &next[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    if done < n {
        let cycle: Vec<&str> = (0..n)
            .filter(|&i| indegree[i] > 0)
            .map(|i| m.steps[i].name.as_str())
            .collect();
        let first = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
        push(
            at(&m.steps[first].name),
            format!("steps {} form a cycle", cycle.join(" -> ")),
        );
    }
    // A step is fused under the step before it when it reads exactly one
    // edge, that edge is another step's output that no one else reads and
    // that is not a pipeline output, and the step does not ask for a
    // durable edge.
    let mut readers: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &m.steps {
        for edge in &step.from.0 {
            *readers.entry(edge.as_str()).or_default() += 1;
        }
    }
    let mut parent = vec![None; m.steps.len()];
    let mut fused_edges = BTreeSet::new();
    for (c, step) in m.steps.iter().enumerate() {
        let [edge] = step.from.0.as_slice() else {
            continue;
        };
        let edge = edge.as_str();
        let Some(Producer::Step(p)) = producers.get(edge) else {
            continue;
        };
        // Steps fuse only with steps of the same parallelism: the segment
        // runs as many instances as its first step.
        if step.durable
            || *p == c
            || m.outputs.contains_key(edge)
            || readers.get(edge) != Some(&1)
            || step.parallelism() != m.steps[*p].parallelism()
            || step.key.is_some()
            || m.steps[*p].key.is_some()
        {
            continue;
        }
        let to: Vec<String> = match &m.steps[*p].to {
            Some(to) => to.0.iter().map(|e| e.as_str().to_owned()).collect(),
            None => vec![m.steps[*p].name.as_str().to_owned()],
        };
        if let Some(port) = to.iter().position(|e| e == edge) {
            parent[c] = Some((*p, port));
            fused_edges.insert(edge.to_owned());
        }
    }
    Structure {
        producers,
        parent,
        fused_edges,
    }
}

/// Groups the steps' specs into segments: each step that is fused under
/// another joins that step's segment, whose first step's spec carries it.
fn fuse(
    m: &Manifest,
    parent: &[Option<(usize, usize)>],
    specs: Vec<(String, ProcessorSpec)>,
    flow_of: &HashMap<String, FlowName>,
) -> (Vec<ProcessorSpec>, Vec<PlannedStep>) {
    let index: HashMap<&str, usize> = m
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| (st.name.as_str(), i))
        .collect();
    let spec_of: HashMap<usize, &ProcessorSpec> = specs
        .iter()
        .filter_map(|(name, spec)| Some((*index.get(name.as_str())?, spec)))
        .collect();
    let children = |p: usize| -> Vec<(usize, usize)> {
        (0..m.steps.len())
            .filter_map(|c| match parent[c] {
                Some((q, port)) if q == p => Some((port, c)),
                _ => None,
            })
            .collect()
    };
    let outputs_of = |i: usize| -> Vec<String> {
        match &m.steps[i].to {
            Some(to) => to.0.iter().map(|e| e.as_str().to_owned()).collect(),
            None => vec![m.steps[i].name.as_str().to_owned()],
        }
    };
    let mut segments = Vec::new();
    let mut steps = vec![None; m.steps.len()];
    for root in 0..m.steps.len() {
        if parent[root].is_some() {
            continue;
        }
        let Some(root_spec) = spec_of.get(&root) else {
            continue;
        };
        let mut spec = (*root_spec).clone();
        steps[root] = Some(PlannedStep {
            name: m.steps[root].name.as_str().to_owned(),
            processor: spec.id.clone(),
            runner: spec.id.clone(),
        });
        if children(root).is_empty() {
            segments.push(spec);
            continue;
        }
        // Breadth-first: every step of the segment gets a fused index.
        let mut order = vec![root];
        let mut k = 0;
        while k < order.len() {
            let mut kids: Vec<(usize, usize)> = children(order[k]);
            kids.sort();
            order.extend(kids.into_iter().map(|(_, c)| c));
            k += 1;
        }
        let fused_index: HashMap<usize, usize> = order
            .iter()
            .skip(1)
            .enumerate()
            .map(|(f, &i)| (i, f))
            .collect();
        let mut segment_outputs: Vec<FlowName> = Vec::new();
        let mut ports_of = |i: usize| -> Vec<Port> {
            let kids = children(i);
            outputs_of(i)
                .iter()
                .enumerate()
                .map(|(port, edge)| match kids.iter().find(|(p, _)| *p == port) {
                    Some((_, c)) => Port::Step(fused_index[c]),
                    None => {
                        segment_outputs.push(flow_of[edge].clone());
                        Port::Flow(segment_outputs.len() - 1)
                    }
                })
                .collect()
        };
        let mut fused = Vec::new();
        let root_ports = ports_of(root);
        for &i in order.iter().skip(1) {
            let Some(step_spec) = spec_of.get(&i) else {
                continue;
            };
            let ports = ports_of(i);
            fused.push(FusedStep {
                id: step_spec.id.clone(),
                kind: step_spec.kind,
                component: step_spec.component.clone(),
                config: step_spec.config.clone(),
                input: step_spec
                    .inputs
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                outputs: step_spec.outputs.iter().map(ToString::to_string).collect(),
                input_name: step_spec.input_names.first().cloned().unwrap_or_default(),
                output_names: step_spec.output_names.clone(),
                ports,
                limits: step_spec.limits.clone(),
                generation: 0,
            });
            steps[i] = Some(PlannedStep {
                name: m.steps[i].name.as_str().to_owned(),
                processor: step_spec.id.clone(),
                runner: spec.id.clone(),
            });
        }
        spec.outputs = segment_outputs;
        spec.ports = root_ports;
        spec.fused = fused;
        segments.push(spec);
    }
    (segments, steps.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        let m = manifest::parse(text).expect("parses");
        let mut errors = Vec::new();
        structure(&m, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_sound_graph_has_no_errors() {
        let text = "\
name: p
inputs: {in: flow://a.example.com}
outputs: {big: flow://b.example.com, small: flow://c.example.com}
steps:
  - {name: keep, component: filter@1, from: in}
  - {name: route, component: router@1, from: keep, to: [big, small]}
";
        assert_eq!(errors_of(text), Vec::<String>::new());
    }

    #[test]
    fn structural_errors_carry_their_line() {
        let text = "\
name: p
inputs:
  in: flow://a.example.com
outputs:
  out: flow://b.example.com
steps:
  - name: a
    component: x@1
    from: [in, c]
  - name: b
    component: x@1
    from: a
  - name: c
    component: x@1
    from: b
  - name: d
    component: x@1
    from: nowhere
    to: out
";
        let errors = errors_of(text);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("line 7") && e.contains("cycle")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("line 18") && e.contains("`nowhere`")),
            "{errors:?}"
        );
        let text = "\
name: P
inputs: {in: flow://a.example.com, unused: flow://x.example.com}
outputs: {out: flow://b.example.com, never: flow://c.example.com}
steps:
  - {name: a, component: x@1, from: in, to: out}
  - {name: a, component: x@1, from: in, to: [out, dangling]}
";
        let errors = errors_of(text).join("\n");
        for needle in [
            "pipeline name `P`",
            "input `unused` is read by no step",
            "output `never` is written by no step",
            "step `a` is declared twice",
            "edge `out` is written twice",
            "edge `dangling` of step `a` is read by no step",
        ] {
            assert!(errors.contains(needle), "{needle} missing in:\n{errors}");
        }
    }
}
