//! OpenTelemetry traces, exported over OTLP/gRPC to a collector
//! (`[telemetry]`, off unless `otlp_endpoint` is set).
//!
//! What the spans are and how an event's `traceparent` travels is
//! [`flowd_engine::traces`]; this module sets up where they go: one tracer
//! provider per host (not the process-wide global, so that hosts sharing a
//! process keep their own), a parent-based sampler whose root decisions
//! keep `sample_ratio` of new traces, and a batch exporter with a bounded
//! queue (spans past it are dropped, never waited for).

use anyhow::{Context as _, Result};
use flowd_engine::traces::Traces;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Spans waiting to be exported at most; past it they are dropped.
const QUEUE: usize = 4_096;
/// How often waiting spans are sent.
const EXPORT_EVERY: Duration = Duration::from_millis(500);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// `[telemetry]`: OpenTelemetry traces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC endpoint of a collector (`http://127.0.0.1:4317`);
    /// `None`: no spans are made and events pass untouched.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, from 0 to 1 (events arriving with
    /// a `traceparent` follow its sampled flag).
    pub sample_ratio: Ratio,
    /// The spans' `service.name`.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            sample_ratio: Ratio(1.0),
            service_name: "flowd".into(),
        }
    }
}

/// A share from 0 to 1.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Ratio(f64);

impl TryFrom<f64> for Ratio {
    type Error = String;

    fn try_from(value: f64) -> Result<Ratio, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Ratio(value))
        } else {
            Err(format!("a ratio is from 0 to 1, not {value}"))
        }
    }
}

impl From<Ratio> for f64 {
    fn from(r: Ratio) -> f64 {
        r.0
    }
}

impl PartialEq for Ratio {
    fn eq(&self, other: &Ratio) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Ratio {}

/// A host's traces: where its spans go, and the provider to flush on
/// shutdown.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    traces: Traces,
}

impl Telemetry {
    /// Sets up the exporter `config` asks for (none without an endpoint).
    /// Must run inside the Tokio runtime (the gRPC channel lives on it).
    /// `host_id` and `participant` become resource attributes.
    pub fn start(config: &TelemetryConfig, host_id: &str, participant: &str) -> Result<Telemetry> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(Telemetry {
                provider: None,
                traces: Traces::off(),
            });
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("[telemetry] otlp_endpoint {endpoint}"))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes([
                opentelemetry::KeyValue::new("service.instance.id", host_id.to_owned()),
                opentelemetry::KeyValue::new("flowd.participant", participant.to_owned()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio.0,
            ))))
            .with_resource(resource)
            .build();
        let traces = Traces::new(provider.tracer("flowd"));
        tracing::info!(endpoint, "exporting traces over OTLP");
        Ok(Telemetry {
            provider: Some(provider),
            traces,
        })
    }

    /// Where the host's spans go.
    pub fn traces(&self) -> Traces {
        self.traces.clone()
    }

    /// Exports what is waiting and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // Blocks until the exporter's thread has sent what it holds.
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = provider.shutdown() {
                    tracing::debug!("trace exporter: {e}");
                }
            })
            .await;
        }
    }
}
