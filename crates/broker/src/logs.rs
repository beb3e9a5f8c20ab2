//! Processor logs: what processors did wrong and what their guests said,
//! kept in one JetStream stream so that every host of the participant (and
//! the console) reads the same log, whichever host ran the instance.
//!
//! One subject per processor (`flowd.logs.<processor id>`), so a reader
//! asks the broker for the processors it wants (a pipeline's steps) and
//! never sees another account's. The stream is bounded by age, size and
//! record size; writing a record never waits for the broker: a log is
//! worth less than the events, so a slow broker drops log records rather
//! than slowing the runner.

use crate::{Broker, BrokerError, placed, request};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The stream's name.
pub const STREAM: &str = "FLOWD_LOGS";
/// Subjects of the stream: `flowd.logs.<processor id>`.
pub const SUBJECT_PREFIX: &str = "flowd.logs";
/// Bytes of one stored record, at most (longer messages are cut).
pub const MAX_RECORD: usize = 8 * 1024;
/// Records kept per processor (the oldest go first).
pub const MAX_PER_PROCESSOR: i64 = 50_000;
/// Records one read returns without `follow`.
pub const MAX_READ: usize = 10_000;

/// How serious a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Detail a developer asks for.
    Trace,
    /// Detail.
    Debug,
    /// Normal operation worth seeing.
    Info,
    /// Something failed and is retried, or a bound was hit.
    Warn,
    /// Something failed for good (an event dead-lettered).
    Error,
}

impl Level {
    /// Its lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When, in ms since the Unix epoch.
    pub time_ms: u64,
    /// How serious.
    pub level: Level,
    /// What happened: `trap`, `deadline`, `retry`, `dead-letter`,
    /// `replay`, `guest` (a `log` call), `stdout`, `stderr`, `dropped`.
    pub kind: String,
    /// The processor (or fused step) it is about.
    pub processor: String,
    /// The host that ran it.
    #[serde(default)]
    pub host: String,
    /// The instance (0 unless the processor runs several).
    #[serde(default)]
    pub instance: u32,
    /// The event it is about (`source` and `id`), if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// What happened, in words.
    pub message: String,
    /// Its sequence in the stream (set when read).
    #[serde(default, skip_serializing)]
    pub sequence: u64,
}

/// How long and how much the stream keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Records older than this are dropped.
    pub max_age: Duration,
    /// The oldest records are dropped beyond this many bytes.
    pub max_bytes: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 256 << 20,
        }
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy)]
pub enum Since {
    /// At the oldest record kept.
    Start,
    /// At the first record at or after this time (ms since the epoch).
    Time(u64),
    /// At records written from now on.
    Now,
}

/// The processor log.
#[derive(Clone)]
pub struct Logs {
    js: jetstream::Context,
    client: async_nats::Client,
}

/// The subject of a processor's records.
pub fn subject(processor: &str) -> String {
    format!("{SUBJECT_PREFIX}.{processor}")
}

impl Logs {
    /// Opens the log, creating its stream if missing.
    pub async fn open(broker: &Broker, retention: Retention) -> Result<Logs, BrokerError> {
        let js = broker.jetstream().clone();
        let config = stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            max_age: retention.max_age,
            max_bytes: retention.max_bytes,
            max_message_size: (MAX_RECORD + 1024) as i32,
            // One processor cannot push every other one's records out.
            max_messages_per_subject: MAX_PER_PROCESSOR,
            discard: stream::DiscardPolicy::Old,
            num_replicas: broker.replicas,
            ..Default::default()
        };
        placed(|| js.get_or_create_stream(config.clone())).await?;
        Ok(Logs {
            js,
            client: broker.client().clone(),
        })
    }

    /// Removes every record of `processor` (it was deleted: a processor
    /// made later under the same id must not read them).
    pub async fn purge(&self, processor: &str) -> Result<(), BrokerError> {
        let stream = self.js.get_stream(STREAM).await.map_err(request)?;
        stream
            .purge()
            .filter(subject(processor))
            .await
            .map_err(request)?;
        Ok(())
    }

    /// Appends a record without waiting for the broker to store it.
    pub async fn append(&self, record: &LogRecord) -> Result<(), BrokerError> {
        let mut record = record.clone();
        if record.message.len() > MAX_RECORD - 512 {
            let mut end = MAX_RECORD - 512;
            while !record.message.is_char_boundary(end) {
                end -= 1;
            }
            record.message.truncate(end);
            record.message.push('…');
        }
        let payload = serde_json::to_vec(&record).map_err(request)?;
        // A plain publish, which the stream stores: no acknowledgement is
        // waited for, and none holds a slot of the JetStream context the
        // events are published through.
        self.client
            .publish(subject(&record.processor), payload.into())
            .await
            .map_err(request)?;
        Ok(())
    }

    /// The records of `processors` from `since`: without `follow`, those
    /// stored when the read starts (at most [`MAX_READ`]); with it, then
    /// every new one as it comes.
    pub async fn read(
        &self,
        processors: &[String],
        since: Since,
        follow: bool,
    ) -> Result<futures::stream::BoxStream<'static, Result<LogRecord, BrokerError>>, BrokerError>
    {
        if processors.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let stream = self.js.get_stream(STREAM).await.map_err(request)?;
        let deliver_policy = match since {
            Since::Start => consumer::DeliverPolicy::All,
            Since::Now => consumer::DeliverPolicy::New,
            Since::Time(ms) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(ms) * 1_000_000,
                )
                .map_err(request)?,
            },
        };
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy,
                filter_subjects: processors.iter().map(|p| subject(p)).collect(),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(request)?;
        // A message that is no record (none should be: only hosts write
        // here) is shown as such rather than failing the read.
        let decode = |m: async_nats::jetstream::Message| -> Result<LogRecord, BrokerError> {
            let sequence = m.info().map_err(request)?.stream_sequence;
            let mut record: LogRecord =
                serde_json::from_slice(&m.payload).unwrap_or_else(|e| LogRecord {
                    time_ms: 0,
                    level: Level::Warn,
                    kind: "unreadable".into(),
                    processor: m
                        .subject
                        .as_str()
                        .rsplit('.')
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                    host: String::new(),
                    instance: 0,
                    event: None,
                    message: format!(
                        "a message of {} bytes that is no log record: {e}",
                        m.payload.len()
                    ),
                    sequence: 0,
                });
            record.sequence = sequence;
            Ok(record)
        };
        if follow {
            let messages = consumer.messages().await.map_err(request)?;
            return Ok(messages
                .map(move |m| m.map_err(request).and_then(decode))
                .boxed());
        }
        // Without `follow`: what is stored now, in batches, until a batch
        // comes back empty or the consumer has nothing pending.
        let pending = consumer.get_info().await.map_err(request)?.num_pending;
        let left = usize::try_from(pending).unwrap_or(usize::MAX).min(MAX_READ);
        let batches =
            futures::stream::unfold((consumer, left), move |(consumer, left)| async move {
                if left == 0 {
                    return None;
                }
                let batch = consumer
                    .fetch()
                    .max_messages(left.min(500))
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await;
                let mut messages = match batch {
                    Ok(messages) => messages,
                    Err(e) => return Some((vec![Err(request(e))], (consumer, 0))),
                };
                let mut records = Vec::new();
                let mut more = true;
                while let Some(m) = messages.next().await {
                    match m.map_err(request) {
                        Ok(m) => {
                            if m.info().map(|i| i.pending == 0).unwrap_or(false) {
                                more = false;
                            }
                            records.push(decode(m));
                        }
                        Err(e) => {
                            records.push(Err(e));
                            more = false;
                            break;
                        }
                    }
                }
                if records.is_empty() {
                    return None;
                }
                let left = if more {
                    left.saturating_sub(records.len())
                } else {
                    0
                };
                Some((records, (consumer, left)))
            });
        Ok(batches
            .flat_map(futures::stream::iter)
            .take(MAX_READ)
            .boxed())
    }
}
