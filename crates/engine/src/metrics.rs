//! Prometheus metrics of the processor engine, per processor: events in and
//! out, errors, dead-lettered events, batch latency, lag; for keyed steps,
//! the partitions each instance holds and the lag of each partition.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The label set of every engine metric: which processor it counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessorLabel {
    /// The processor's id.
    pub processor: String,
}

/// A keyed step's partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// The step's processor id.
    pub processor: String,
    /// The partition.
    pub partition: u32,
}

/// An instance of a processor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabel {
    /// The processor's id.
    pub processor: String,
    /// The instance.
    pub instance: u32,
}

/// The engine's metrics; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Events read from input flows.
    pub events_in: Family<ProcessorLabel, Counter>,
    /// Events written to output flows.
    pub events_out: Family<ProcessorLabel, Counter>,
    /// Failed processor calls.
    pub errors: Family<ProcessorLabel, Counter>,
    /// Events sent to the dead-letter flow.
    pub dead_lettered: Family<ProcessorLabel, Counter>,
    /// Time to process one batch: call, store outputs, acknowledge.
    pub batch_seconds: Family<ProcessorLabel, Histogram>,
    /// Events waiting at the processor's inputs: stored and not yet
    /// acknowledged (consumer lag).
    pub lag: Family<ProcessorLabel, Gauge>,
    /// Events stored in a keyed step's partition, not yet purged (reported
    /// by the host running the step's instance 0).
    pub partition_lag: Family<PartitionLabel, Gauge>,
    /// Partitions of a keyed step an instance on this host holds.
    pub partitions_held: Family<InstanceLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flowd_processor");
        let events_in = Family::<ProcessorLabel, Counter>::default();
        let events_out = Family::<ProcessorLabel, Counter>::default();
        let errors = Family::<ProcessorLabel, Counter>::default();
        let dead_lettered = Family::<ProcessorLabel, Counter>::default();
        let batch_seconds = Family::<ProcessorLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        registry.register(
            "events_in",
            "Events read from input flows",
            events_in.clone(),
        );
        registry.register(
            "events_out",
            "Events written to output flows",
            events_out.clone(),
        );
        registry.register("errors", "Failed processor calls", errors.clone());
        registry.register(
            "dead_lettered",
            "Events sent to the dead-letter flow",
            dead_lettered.clone(),
        );
        registry.register(
            "batch_seconds",
            "Time to process one batch: call, store outputs, acknowledge",
            batch_seconds.clone(),
        );
        let lag = Family::<ProcessorLabel, Gauge>::default();
        registry.register(
            "lag",
            "Events waiting at the processor's inputs (stored, not yet acknowledged)",
            lag.clone(),
        );
        let partition_lag = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "partition_lag",
            "Events stored in a keyed step's partition and not yet purged",
            partition_lag.clone(),
        );
        let partitions_held = Family::<InstanceLabel, Gauge>::default();
        registry.register(
            "partitions_held",
            "Partitions of a keyed step an instance on this host holds",
            partitions_held.clone(),
        );
        Metrics {
            lag,
            partition_lag,
            partitions_held,
            registry: Arc::new(registry),
            events_in,
            events_out,
            errors,
            dead_lettered,
            batch_seconds,
        }
    }
}

impl Metrics {
    /// The label of processor `processor`.
    pub fn label(processor: &str) -> ProcessorLabel {
        ProcessorLabel {
            processor: processor.to_owned(),
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
