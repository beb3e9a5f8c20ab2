//! What the host keeps about processors in the broker: their specs (desired
//! state, written by users) and their status (written by the host), in
//! JetStream key-value buckets, so that they survive restarts and every host
//! on the same broker sees them.

use flowd_broker::FlowName;
use flowd_wasm::{Kind, Limits};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Checks a processor id: it names KV keys and consumers.
pub fn check_id(id: &str) -> Result<(), String> {
    if flowd_core::naming::is_processor_id(id) {
        Ok(())
    } else {
        Err(format!(
            "processor id `{id}`: use 1 to 64 lower-case letters, digits and `-`"
        ))
    }
}

/// Per-processor limits and batching, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunLimits {
    /// Memory cap of an instance, in MiB.
    pub memory_mib: usize,
    /// CPU deadline of one call, in milliseconds.
    pub deadline_ms: u64,
    /// Events per call.
    pub batch: usize,
    /// Attempts of a failing event before it is dead-lettered.
    pub max_attempts: u32,
    /// Tick interval of signal processors.
    pub tick_ms: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            memory_mib: 64,
            deadline_ms: 100,
            batch: 100,
            max_attempts: 3,
            tick_ms: 1000,
        }
    }
}

impl RunLimits {
    /// The sandbox limits these stand for (other limits at their defaults).
    pub fn wasm(&self) -> Limits {
        Limits {
            memory: self.memory_mib << 20,
            deadline: Duration::from_millis(self.deadline_ms),
            ..Limits::default()
        }
    }
}

/// A processor as users describe it (figure 6's create/update/pause).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessorSpec {
    /// The processor's id ([`check_id`]): its key in the buckets and the
    /// stem of its consumers' names.
    pub id: String,
    /// The kind its component is.
    pub kind: Kind,
    /// `sha256:<hex>` of the component in the components object store.
    pub component: String,
    /// `key=value` configuration handed to the component's `init`.
    pub config: Vec<(String, String)>,
    /// The flows it reads, in port order.
    pub inputs: Vec<FlowName>,
    /// The flows it writes, in port order.
    pub outputs: Vec<FlowName>,
    /// Where events that keep failing go.
    pub dead_letter: FlowName,
    /// Paused: no instance runs; its consumers keep their positions.
    #[serde(default)]
    pub paused: bool,
    /// Bumped by every update; the host restarts the processor between
    /// batches when it changes.
    #[serde(default)]
    pub generation: u64,
    /// Its limits and batching.
    #[serde(default)]
    pub limits: RunLimits,
    /// The account that created it (`None`: the host itself, e.g. for
    /// subscription bridges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The pipeline this processor is a step of (`None`: made directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Steps fused into this processor's runner: they get their events in
    /// memory from this processor (or from another fused step) instead of
    /// through a flow. Empty for a processor on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fused: Vec<FusedStep>,
    /// With fused steps: where each output port of this processor's own
    /// component goes (empty: port `i` writes `outputs[i]`; with fused
    /// steps `outputs` holds the flows the whole segment writes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// The port names its component is set up with (a pipeline's edge
    /// names); empty: the flows' names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_names: Vec<String>,
    /// The same for its output ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_names: Vec<String>,
    /// Instances to run, spread over the participant's live hosts and
    /// sharing one durable consumer per input (see [`flowd_broker::cluster`]).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub parallelism: u32,
    /// Keyed: events are partitioned by key, each partition (and its
    /// keyed state) owned by one instance at a time (see
    /// [`flowd_broker::partitions`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Keying>,
}

/// How a keyed step partitions its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keying {
    /// What the key is ([`crate::keyed::KeySelector`]): `data.<path>` or an
    /// attribute.
    pub selector: String,
    /// Fixed number of partitions (at least the largest parallelism).
    pub partitions: u32,
}

fn consumer_name(id: &str, port: usize, shared: bool) -> String {
    if shared {
        format!("proc-{id}-in{port}-shared")
    } else {
        format!("proc-{id}-in{port}")
    }
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Where an output port of a fused segment's step sends its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Port {
    /// To `outputs[i]` of the segment's processor (a durable flow).
    Flow(usize),
    /// To fused step `fused[i]`, in memory.
    Step(usize),
}

/// A pipeline step run in memory inside another processor's runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FusedStep {
    /// Its processor id: the key of its status and keyed state.
    pub id: String,
    /// The kind its component is.
    pub kind: Kind,
    /// `sha256:<hex>` of its component.
    pub component: String,
    /// Its `key=value` configuration.
    pub config: Vec<(String, String)>,
    /// The flow of its input edge (for display; no flow exists for it).
    pub input: String,
    /// The flows of its output edges, in port order (for display).
    pub outputs: Vec<String>,
    /// The port names its component is set up with (the edge names).
    pub input_name: String,
    /// The same for its output ports.
    pub output_names: Vec<String>,
    /// Where each output port goes.
    pub ports: Vec<Port>,
    /// Its own limits (batching follows the segment's processor).
    pub limits: RunLimits,
    /// Bumped when the step itself changes.
    pub generation: u64,
}

impl FusedStep {
    /// Whether two definitions run the same component the same way.
    pub fn same_work(&self, other: &FusedStep) -> bool {
        self.kind == other.kind
            && self.component == other.component
            && self.config == other.config
            && self.limits == other.limits
    }

    /// Whether two definitions sit in the same place of the segment.
    pub fn same_place(&self, other: &FusedStep) -> bool {
        self.id == other.id
            && self.input == other.input
            && self.outputs == other.outputs
            && self.input_name == other.input_name
            && self.output_names == other.output_names
            && self.ports == other.ports
    }
}

/// The component name of the host's built-in relay: a bridge that copies
/// every event unchanged, run natively (subscriptions use it).
pub const RELAY: &str = "builtin:relay";

impl ProcessorSpec {
    /// The input port names this processor's component is set up with.
    pub fn own_inputs(&self) -> Vec<String> {
        if self.input_names.is_empty() {
            self.inputs.iter().map(ToString::to_string).collect()
        } else {
            self.input_names.clone()
        }
    }

    /// The output port names this processor's own component is set up with.
    pub fn own_outputs(&self) -> Vec<String> {
        if self.output_names.is_empty() {
            self.outputs.iter().map(ToString::to_string).collect()
        } else {
            self.output_names.clone()
        }
    }

    /// Whether two specs run the same component the same way on the same
    /// flows (generation, pause and owner are bookkeeping).
    pub fn same_work(&self, other: &ProcessorSpec) -> bool {
        self.kind == other.kind
            && self.component == other.component
            && self.config == other.config
            && self.inputs == other.inputs
            && self.outputs == other.outputs
            && self.dead_letter == other.dead_letter
            && self.limits == other.limits
            && self.parallelism == other.parallelism
            && self.key == other.key
    }

    /// Whether `other` only changes components, configurations or limits of
    /// steps in place: same wiring, same fused steps in the same places.
    /// The engine then updates the changed steps inside the running runner.
    pub fn same_shape(&self, other: &ProcessorSpec) -> bool {
        !self.fused.is_empty()
            && self.kind == other.kind
            && self.inputs == other.inputs
            && self.outputs == other.outputs
            && self.dead_letter == other.dead_letter
            && self.ports == other.ports
            && self.input_names == other.input_names
            && self.output_names == other.output_names
            && self.paused == other.paused
            && self.parallelism == other.parallelism
            && self.key == other.key
            && self.limits.batch == other.limits.batch
            && self.fused.len() == other.fused.len()
            && self
                .fused
                .iter()
                .zip(&other.fused)
                .all(|(a, b)| a.same_place(b))
    }

    /// Whether the processor is the built-in relay rather than a component.
    pub fn is_relay(&self) -> bool {
        self.component == RELAY
    }

    /// The durable consumer of input `port`: one name for a single
    /// instance (cumulative acknowledgement), another for instances that
    /// share it (one acknowledgement per event), since a consumer's
    /// acknowledgement policy cannot change.
    ///
    /// A keyed step's inputs have one reader whatever its parallelism (its
    /// partitioner), so its consumers are a single instance's.
    pub fn consumer(&self, port: usize) -> String {
        consumer_name(&self.id, port, self.shares_inputs())
    }

    /// The consumer of input `port` under the other parallelism (replaced
    /// when the parallelism changes between 1 and more).
    pub fn other_consumer(&self, port: usize) -> String {
        consumer_name(&self.id, port, !self.shares_inputs())
    }

    /// Whether instances share the input consumers (parallel, not keyed).
    pub fn shares_inputs(&self) -> bool {
        self.parallelism > 1 && self.key.is_none()
    }
}

/// Where a processor is, as the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Being set up: loading its component, opening its consumers.
    Starting,
    /// Processing its inputs.
    Running,
    /// Stopped by the user; resumes where it was.
    Paused,
    /// Its runner failed and restarts after a back-off (see
    /// [`Status::last_error`]).
    Failed,
}

/// A processor's status, written by the host that runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Where it is.
    pub phase: Phase,
    /// The [`ProcessorSpec::generation`] running.
    pub generation: u64,
    /// Events taken in, counted by the host running it since it took the
    /// processor up.
    pub events_in: u64,
    /// Events written to its output flows.
    pub events_out: u64,
    /// Failed calls (each attempt counts).
    pub errors: u64,
    /// Events sent to the dead-letter flow.
    pub dead_lettered: u64,
    /// The latest failure, cleared when the processor (re)starts running.
    pub last_error: Option<String>,
    /// When the current run started (ms since the Unix epoch): it changes
    /// exactly when the processor (re)starts.
    #[serde(default)]
    pub started_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// Which compiler's code the instance runs: a component nobody had
    /// compiled starts on the baseline compiler's and moves to the
    /// optimised code once that is compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    /// Events waiting at its inputs (stored, not yet acknowledged), as
    /// last measured; `None` for a fused step (its events wait in memory)
    /// or when the broker did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// A keyed step's partitions: who holds each and what waits in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionStatus>,
    /// Times the host running it restarted it after a failure (a lost
    /// broker, a component that would not load, an input gone), since it
    /// took the processor up.
    #[serde(default)]
    pub restarts: u64,
}

/// One partition of a keyed step, as its status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// The host whose instance holds it (`None`: no one right now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Events stored in it and not yet purged: waiting, plus those
    /// processed since the last purge (once a heartbeat).
    pub lag: u64,
}

/// Which compiler's code a processor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Code {
    /// The baseline compiler's (compiled in a fraction of the time, runs
    /// slower), while the optimised code is compiled.
    Baseline,
    /// The optimising compiler's.
    Optimised,
}

impl Code {
    /// The name `describe` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Baseline => "baseline",
            Code::Optimised => "optimised",
        }
    }
}

impl Status {
    /// A fresh status, with every counter at zero.
    pub fn new(phase: Phase, generation: u64) -> Self {
        Status {
            phase,
            generation,
            events_in: 0,
            events_out: 0,
            errors: 0,
            dead_lettered: 0,
            last_error: None,
            started_ms: 0,
            updated_ms: 0,
            code: None,
            lag: None,
            partitions: Vec::new(),
            restarts: 0,
        }
    }
}

/// The KV key of a processor's state entry.
pub fn state_key(id: &str, key: &str) -> String {
    format!("{id}.{}", hex::encode(key.as_bytes()))
}

/// The state key of a KV key of processor `id`, if it is one.
pub fn decode_state_key(id: &str, kv_key: &str) -> Option<String> {
    let hexed = kv_key.strip_prefix(id)?.strip_prefix('.')?;
    String::from_utf8(hex::decode(hexed).ok()?).ok()
}
