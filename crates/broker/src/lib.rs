//! The Flow Events Broker (FEB): every flow is a durable NATS JetStream
//! stream (see [`FlowName`] for the mapping), events travel in the
//! CloudEvents NATS binding ([`codec`]), and the host's own records (flows,
//! processors, keyed state) live in JetStream key-value buckets and an object
//! store.
//!
//! - [`Broker`]: a connection to the broker, with flows, consumers,
//!   buckets and object stores;
//! - [`codec`]: events on the wire, to and from processor batches;
//! - [`records`]: typed JSON records in key-value buckets ([`Records`]);
//! - [`logs`]: the processor log, one stream for the participant;
//! - [`embedded`]: the `nats-server` the host starts and supervises when no
//!   broker is configured, and its users;
//! - [`grants`]: broker credentials for subscribers, issued and used;
//! - [`operator`]: the same credentials on an operator-run NATS (JWTs);
//! - [`jwt`]: the NATS JWTs the host mints for that;
//! - [`cluster`]: several hosts on one broker: heartbeats, placement of
//!   processor instances and their leases;
//! - [`partitions`]: keyed steps' partition streams, consumers and state
//!   records.

#![warn(missing_docs)]

pub mod cluster;
pub mod codec;
pub mod embedded;
pub mod grants;
pub mod jwt;
pub mod logs;
pub mod operator;
pub mod partitions;
pub mod records;

pub use flowd_core::naming::{FlowName, MAX_FLOW_NAME, NameError, NamespaceName};
pub use records::{RecordError, Records};

use async_nats::jetstream::{self, consumer, context, kv, object_store, stream};
use async_nats::{HeaderMap, header::NATS_MESSAGE_ID};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The first connection could not be made (unreachable server, bad
    /// credentials or TLS).
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect {
        /// The server URLs tried, comma-separated.
        urls: String,
        /// What the client reported.
        reason: String,
    },
    /// The broker says the flow's stream does not exist.
    #[error("no such flow: {0}")]
    NoSuchFlow(FlowName),
    /// Creating a flow whose stream is already there.
    #[error("flow already exists: {0}")]
    FlowExists(FlowName),
    /// The settings contradict each other (a de-duplication window longer
    /// than the maximum age).
    #[error("invalid flow settings: {0}")]
    Settings(String),
    /// Any other broker failure, usually transient (no leader, timeout,
    /// lost connection): worth retrying.
    #[error("broker request failed: {0}")]
    Request(String),
}

/// How the host authenticates to its broker.
#[derive(Clone, Copy)]
pub enum BrokerAuth<'a> {
    /// No credentials (a NATS open to anyone who reaches it).
    None,
    /// A user name and password (the embedded broker).
    Password(&'a str, &'a str),
    /// A credentials file's text: a user JWT and its nkey seed (an
    /// operator-run NATS).
    Credentials(&'a str),
}

fn request<E: std::fmt::Display>(e: E) -> BrokerError {
    BrokerError::Request(e.to_string())
}

/// Makes a stream with `create`, trying again while the cluster cannot place
/// it yet: a node that has just started, or a meta group that has just
/// elected a leader, is for a moment seen offline ("no suitable peers",
/// 10005) or the meta group unavailable (10008). Bounded: six tries over
/// about six seconds, then the last error.
async fn placed<F, Fut>(mut create: F) -> Result<stream::Stream, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<stream::Stream, context::CreateStreamError>>,
{
    let mut pause = Duration::from_millis(250);
    for _ in 1..6 {
        match create().await {
            Err(e) if placement_pending(&e) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            done => return done.map_err(request),
        }
    }
    create().await.map_err(request)
}

/// Whether a stream was refused only because the cluster is not ready to
/// place it yet (see [`placed`]).
fn placement_pending(e: &context::CreateStreamError) -> bool {
    match e.kind() {
        context::CreateStreamErrorKind::JetStream(js) => {
            let code = js.error_code();
            code == jetstream::ErrorCode::CLUSTER_NO_PEERS
                || code == jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE
        }
        _ => false,
    }
}

/// Per-flow settings (retention and de-duplication), with the defaults a
/// flow gets when none are given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FlowSettings {
    /// Events older than this are dropped; 0 keeps them forever.
    pub max_age_secs: u64,
    /// Oldest events are dropped beyond this size; -1 is unlimited.
    pub max_bytes: i64,
    /// How long a message id is remembered to drop replays.
    pub duplicate_window_secs: u64,
    /// Stream replicas (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// Readable by anyone, also anonymously (kept in the stream's
    /// metadata as `flowd.public`).
    pub public: bool,
}

/// Stream metadata key of [`FlowSettings::public`].
const PUBLIC_KEY: &str = "flowd.public";

impl Default for FlowSettings {
    fn default() -> Self {
        FlowSettings {
            max_age_secs: 0,
            max_bytes: -1,
            duplicate_window_secs: 120,
            replicas: 1,
            public: false,
        }
    }
}

impl FlowSettings {
    fn stream_config(&self, flow: &FlowName) -> Result<stream::Config, BrokerError> {
        if self.max_age_secs != 0 && self.duplicate_window_secs > self.max_age_secs {
            return Err(BrokerError::Settings(format!(
                "the duplicate window ({} s) cannot exceed the maximum age ({} s)",
                self.duplicate_window_secs, self.max_age_secs
            )));
        }
        Ok(stream::Config {
            name: flow.stream(),
            subjects: vec![flow.subject()],
            max_age: Duration::from_secs(self.max_age_secs),
            max_bytes: self.max_bytes,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            num_replicas: self.replicas.max(1),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            description: Some(flow.uri()),
            metadata: if self.public {
                [(PUBLIC_KEY.to_owned(), "true".to_owned())].into()
            } else {
                Default::default()
            },
            ..Default::default()
        })
    }
}

/// A flow as the broker sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FlowInfo {
    /// The flow's name.
    pub name: FlowName,
    /// Its URI, as written in the stream's description.
    pub uri: String,
    /// The JetStream stream holding its events.
    pub stream: String,
    /// The subject its events are published on.
    pub subject: String,
    /// Events stored now.
    pub events: u64,
    /// Bytes stored now.
    pub bytes: u64,
    /// Sequence of the oldest stored event.
    pub first_sequence: u64,
    /// Sequence of the newest stored event (0: none yet).
    pub last_sequence: u64,
    /// The settings the stream has now.
    pub settings: FlowSettings,
}

/// One event to store.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The flow's subject ([`FlowName::subject`]); a `Subject` shares its
    /// bytes, so one for every event of a batch costs no allocation.
    pub subject: async_nats::Subject,
    /// The event's attributes as headers ([`codec`]).
    pub headers: HeaderMap,
    /// The event's data.
    pub payload: Bytes,
    /// De-duplication id (`Nats-Msg-Id`).
    pub message_id: String,
}

/// What a publish stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Events newly stored.
    pub stored: u64,
    /// Events the stream had already stored under the same message id.
    pub duplicates: u64,
}

/// Messages sent by [`Broker::send`], their acknowledgements to come.
#[must_use = "the messages may not be stored: await `stored`"]
pub struct Sending {
    acks: Vec<jetstream::context::PublishAckFuture>,
}

impl Sending {
    /// Waits until the stream stored every message (or had it stored
    /// already, under the same message id).
    pub async fn stored(self) -> Result<Published, BrokerError> {
        let mut published = Published::default();
        for ack in self.acks {
            let ack = ack.await.map_err(request)?;
            if ack.duplicate {
                published.duplicates += 1;
            } else {
                published.stored += 1;
            }
        }
        Ok(published)
    }
}

/// A connection to the broker.
#[derive(Clone)]
pub struct Broker {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Replicas of what this host creates (flows, buckets): 1 on a single
    /// server, 3 on a cluster.
    replicas: usize,
}

impl Broker {
    /// Connects to one server or a cluster, and keeps reconnecting forever
    /// when the connection drops (in-flight requests fail and are retried by
    /// their callers).
    pub async fn connect(urls: &[String], name: &str) -> Result<Broker, BrokerError> {
        Broker::connect_as(urls, name, BrokerAuth::None, None).await
    }

    /// [`Broker::connect`] authenticated by `auth`, and over TLS with
    /// `tls`.
    pub async fn connect_as(
        urls: &[String],
        name: &str,
        auth: BrokerAuth<'_>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Broker, BrokerError> {
        let connect_error = |reason: String| BrokerError::Connect {
            urls: urls.join(","),
            reason,
        };
        let mut options = match auth {
            BrokerAuth::Password(user, password) => {
                async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            }
            BrokerAuth::Credentials(text) => async_nats::ConnectOptions::with_credentials(text)
                .map_err(|e| connect_error(format!("the credentials: {e}")))?,
            BrokerAuth::None => async_nats::ConnectOptions::new(),
        };
        if let Some(tls) = tls {
            options = options.require_tls(true).tls_client_config(tls);
        }
        let client = options
            .name(name)
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => tracing::warn!("broker: disconnected"),
                    async_nats::Event::Connected => tracing::info!("broker: connected"),
                    other => tracing::debug!("broker: {other}"),
                }
            })
            .connect(urls.to_vec())
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        // A publish whose stream lost its leader (a cluster node died) is
        // retried after this; a new leader is elected within seconds.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        Ok(Broker {
            client,
            js,
            replicas: 1,
        })
    }

    /// Creates flows and buckets with `replicas` copies (a flow asking for
    /// more keeps its own number).
    pub fn with_replicas(mut self, replicas: usize) -> Broker {
        self.replicas = replicas.max(1);
        self
    }

    fn stream_config(
        &self,
        flow: &FlowName,
        settings: &FlowSettings,
    ) -> Result<stream::Config, BrokerError> {
        let mut config = settings.stream_config(flow)?;
        config.num_replicas = config.num_replicas.max(self.replicas);
        Ok(config)
    }

    /// The underlying NATS client, for plain subjects and requests.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context, for what this type does not wrap.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates a flow; fails if it exists.
    pub async fn create_flow(
        &self,
        flow: &FlowName,
        settings: &FlowSettings,
    ) -> Result<FlowInfo, BrokerError> {
        let config = self.stream_config(flow, settings)?;
        if self.js.get_stream(flow.stream()).await.is_ok() {
            return Err(BrokerError::FlowExists(flow.clone()));
        }
        placed(|| self.js.create_stream(config.clone())).await?;
        self.flow_info(flow).await
    }

    /// Creates a flow if missing (leaving an existing one as it is).
    pub async fn ensure_flow(
        &self,
        flow: &FlowName,
        settings: &FlowSettings,
    ) -> Result<(), BrokerError> {
        let config = self.stream_config(flow, settings)?;
        placed(|| self.js.get_or_create_stream(config.clone())).await?;
        Ok(())
    }

    /// Changes a flow's retention and access settings in place.
    pub async fn update_flow(
        &self,
        flow: &FlowName,
        settings: &FlowSettings,
    ) -> Result<FlowInfo, BrokerError> {
        let config = self.stream_config(flow, settings)?;
        self.stream(flow).await?;
        self.js.update_stream(config).await.map_err(request)?;
        self.flow_info(flow).await
    }

    /// Deletes a flow and every event in it.
    pub async fn delete_flow(&self, flow: &FlowName) -> Result<(), BrokerError> {
        self.stream(flow).await?;
        self.js
            .delete_stream(flow.stream())
            .await
            .map_err(request)?;
        Ok(())
    }

    async fn stream(&self, flow: &FlowName) -> Result<stream::Stream, BrokerError> {
        use async_nats::jetstream::ErrorCode;
        use async_nats::jetstream::context::GetStreamErrorKind;
        // Only the broker saying so means the flow does not exist; a broker
        // that cannot be reached is a transient failure.
        self.js
            .get_stream(flow.stream())
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    BrokerError::NoSuchFlow(flow.clone())
                }
                _ => request(e),
            })
    }

    /// A flow's counters and settings, as the broker has them now.
    pub async fn flow_info(&self, flow: &FlowName) -> Result<FlowInfo, BrokerError> {
        let mut stream = self.stream(flow).await?;
        let info = stream.info().await.map_err(request)?;
        Ok(FlowInfo {
            name: flow.clone(),
            uri: flow.uri(),
            stream: flow.stream(),
            subject: flow.subject(),
            events: info.state.messages,
            bytes: info.state.bytes,
            first_sequence: info.state.first_sequence,
            last_sequence: info.state.last_sequence,
            settings: FlowSettings {
                max_age_secs: info.config.max_age.as_secs(),
                max_bytes: info.config.max_bytes,
                duplicate_window_secs: info.config.duplicate_window.as_secs(),
                replicas: info.config.num_replicas,
                public: info.config.metadata.get(PUBLIC_KEY).map(String::as_str) == Some("true"),
            },
        })
    }

    /// The message stored at `sequence` in a flow, with its headers
    /// (`None`: no message there, or it was removed).
    pub async fn stored(
        &self,
        flow: &FlowName,
        sequence: u64,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, BrokerError> {
        Ok(self.stored_range(flow, sequence, sequence).await?.pop())
    }

    /// The messages stored at sequences `from..=to` of a flow, oldest first
    /// (those removed meanwhile left out), the stream looked up once. The
    /// caller bounds the range: each is a request of its own.
    pub async fn stored_range(
        &self,
        flow: &FlowName,
        from: u64,
        to: u64,
    ) -> Result<Vec<async_nats::jetstream::message::StreamMessage>, BrokerError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let stream = self.stream(flow).await?;
        let mut out = Vec::new();
        for sequence in from..=to {
            match stream.get_raw_message(sequence).await {
                Ok(message) => out.push(message),
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {}
                Err(e) => return Err(request(e)),
            }
        }
        Ok(out)
    }

    /// Removes the message at `sequence` from a flow; `false` when there
    /// was none.
    pub async fn remove_stored(&self, flow: &FlowName, sequence: u64) -> Result<bool, BrokerError> {
        let stream = self.stream(flow).await?;
        match stream.delete_message(sequence).await {
            Ok(removed) => Ok(removed),
            // The broker answers "no message found" with an error.
            Err(e) if e.to_string().contains("no message found") => Ok(false),
            Err(e) => Err(request(e)),
        }
    }

    /// Every flow on the broker.
    pub async fn flows(&self) -> Result<Vec<FlowName>, BrokerError> {
        let mut names = self.js.stream_names();
        let mut flows = Vec::new();
        while let Some(name) = names.next().await {
            if let Some(flow) = FlowName::from_stream(&name.map_err(request)?) {
                flows.push(flow);
            }
        }
        flows.sort();
        Ok(flows)
    }

    /// Stores events, pipelined: sends them all, then waits for every ack.
    /// Safe to retry as a whole: message ids make a replay a no-op.
    pub async fn publish(
        &self,
        messages: impl IntoIterator<Item = Outgoing>,
    ) -> Result<Published, BrokerError> {
        let messages: Vec<Outgoing> = messages.into_iter().collect();
        self.send(&messages).await?.stored().await
    }

    /// Sends `messages` without waiting for the stream to store them: the
    /// returned [`Sending`] resolves once every one is stored. A caller
    /// keeps several such batches in flight to publish at the broker's
    /// speed rather than at one round trip per batch.
    ///
    /// `messages` stay the caller's, to send again should the broker lose
    /// them (their message ids make a second copy a no-op).
    pub async fn send(&self, messages: &[Outgoing]) -> Result<Sending, BrokerError> {
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let mut headers = m.headers.clone();
            headers.insert(NATS_MESSAGE_ID, m.message_id.as_str());
            acks.push(
                self.js
                    .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
                    .await
                    .map_err(request)?,
            );
        }
        Ok(Sending { acks })
    }

    /// The durable pull consumer of a flow's single reader (a processor
    /// input), created if missing. Its position survives restarts of the host
    /// and of the broker.
    ///
    /// Acknowledgement is cumulative (`AckPolicy::All`): the reader processes
    /// events in order, so acknowledging the last event of a batch
    /// acknowledges the batch, one message instead of one per event. The
    /// catch: events delivered to a reader that died are still pending, and
    /// a later cumulative ack would cover them unprocessed. So a reader that
    /// (re)starts calls this, which rewinds the consumer to just after its
    /// acknowledgement floor whenever events are pending: they are delivered
    /// again at once, in order.
    ///
    /// `previous` names the consumer this one replaces (the processor's
    /// parallelism changed): when `durable` does not exist yet, it starts
    /// after `previous`'s acknowledgement floor, and `previous` is removed.
    pub async fn durable_consumer(
        &self,
        flow: &FlowName,
        durable: &str,
        max_ack_pending: i64,
        previous: Option<&str>,
    ) -> Result<consumer::PullConsumer, BrokerError> {
        let stream = self.stream(flow).await?;
        let start = take_over(&stream, durable, previous).await;
        let config = |deliver_policy| {
            durable_config(
                durable,
                consumer::AckPolicy::All,
                max_ack_pending,
                deliver_policy,
            )
        };
        let mut consumer = stream
            .get_or_create_consumer(durable, config(start))
            .await
            .map_err(request)?;
        forget(&stream, previous).await;
        let info = consumer.info().await.map_err(request)?;
        if info.num_ack_pending == 0 {
            return Ok(consumer);
        }
        let start_sequence = info.ack_floor.stream_sequence + 1;
        tracing::info!(
            consumer = durable,
            pending = info.num_ack_pending,
            start_sequence,
            "rewinding consumer to its acknowledgement floor"
        );
        stream.delete_consumer(durable).await.map_err(request)?;
        stream
            .create_consumer(config(consumer::DeliverPolicy::ByStartSequence {
                start_sequence,
            }))
            .await
            .map_err(request)
    }

    /// The durable consumer a subscriber pulls a copy through from another
    /// host ([`grants`]). Each event is acknowledged on its own: the
    /// subscriber cannot rewind the consumer, so an event it received but
    /// did not store is delivered again after `ack_wait` rather than
    /// covered by a later acknowledgement. At most one batch is pending, so
    /// nothing newer is delivered before such events: the order holds.
    pub async fn subscriber_consumer(
        &self,
        flow: &FlowName,
        durable: &str,
    ) -> Result<(), BrokerError> {
        let stream = self.stream(flow).await?;
        stream
            .get_or_create_consumer(
                durable,
                durable_config(
                    durable,
                    consumer::AckPolicy::Explicit,
                    grants::BATCH as i64,
                    consumer::DeliverPolicy::All,
                ),
            )
            .await
            .map_err(request)?;
        Ok(())
    }

    /// The durable consumer that the instances of a processor with
    /// `parallelism` > 1 share, a work queue: each pulls its own batches and
    /// acknowledges each event on its own once its outputs are stored, so
    /// an instance that dies leaves only its own batch unacknowledged,
    /// delivered again to the others after `ack_wait`. `previous` as for
    /// [`Broker::durable_consumer`].
    pub async fn shared_consumer(
        &self,
        flow: &FlowName,
        durable: &str,
        max_ack_pending: i64,
        previous: Option<&str>,
    ) -> Result<consumer::PullConsumer, BrokerError> {
        let stream = self.stream(flow).await?;
        let start = take_over(&stream, durable, previous).await;
        let consumer = stream
            .get_or_create_consumer(
                durable,
                durable_config(
                    durable,
                    consumer::AckPolicy::Explicit,
                    max_ack_pending,
                    start,
                ),
            )
            .await
            .map_err(request)?;
        forget(&stream, previous).await;
        Ok(consumer)
    }

    /// An ephemeral consumer for reading a flow from a sequence (1: start).
    pub async fn reader(
        &self,
        flow: &FlowName,
        from_sequence: Option<u64>,
    ) -> Result<consumer::PullConsumer, BrokerError> {
        let stream = self.stream(flow).await?;
        let deliver_policy = match from_sequence {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None => consumer::DeliverPolicy::New,
        };
        stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(request)
    }

    /// Events a durable consumer of a flow has yet to be delivered or to
    /// have acknowledged.
    pub async fn consumer_lag(&self, flow: &FlowName, durable: &str) -> Result<u64, BrokerError> {
        let stream = self.stream(flow).await?;
        let info = stream.consumer_info(durable).await.map_err(request)?;
        Ok(info.num_pending.saturating_add(info.num_ack_pending as u64))
    }

    /// Removes a durable consumer of a flow, and with it its position.
    pub async fn delete_consumer(&self, flow: &FlowName, durable: &str) -> Result<(), BrokerError> {
        let stream = self.stream(flow).await?;
        stream.delete_consumer(durable).await.map_err(request)?;
        Ok(())
    }

    /// A key-value bucket, created if missing.
    pub async fn kv(&self, bucket: &str) -> Result<kv::Store, BrokerError> {
        self.kv_with_ttl(bucket, Duration::ZERO).await
    }

    /// A key-value bucket whose entries age out after `ttl` (zero: never),
    /// created if missing.
    pub async fn kv_with_ttl(&self, bucket: &str, ttl: Duration) -> Result<kv::Store, BrokerError> {
        let config = kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            max_age: ttl,
            num_replicas: self.replicas,
            ..Default::default()
        };
        // Several hosts starting together on a new cluster race to create
        // the same bucket: the losers find it made on the next round.
        let mut last = None;
        for _ in 0..20 {
            if let Ok(store) = self.js.get_key_value(bucket).await {
                return Ok(store);
            }
            match self.js.create_key_value(config.clone()).await {
                Ok(store) => return Ok(store),
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(BrokerError::Request(format!(
            "bucket {bucket}: {}",
            last.unwrap_or_default()
        )))
    }

    /// An object store bucket, created if missing.
    pub async fn objects(&self, bucket: &str) -> Result<object_store::ObjectStore, BrokerError> {
        let mut last = None;
        for _ in 0..20 {
            if let Ok(store) = self.js.get_object_store(bucket).await {
                return Ok(store);
            }
            match self
                .js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_owned(),
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await
            {
                Ok(store) => return Ok(store),
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(BrokerError::Request(format!(
            "bucket {bucket}: {}",
            last.unwrap_or_default()
        )))
    }
}

/// Where a new durable consumer starts: after the acknowledgement floor of
/// the consumer it replaces, when that one exists and it does not.
async fn take_over(
    stream: &stream::Stream,
    durable: &str,
    previous: Option<&str>,
) -> consumer::DeliverPolicy {
    if let Some(previous) = previous
        && stream.consumer_info(durable).await.is_err()
        && let Ok(info) = stream.consumer_info(previous).await
    {
        tracing::info!(
            consumer = durable,
            replaces = previous,
            "starting after the replaced consumer's acknowledgement floor"
        );
        return consumer::DeliverPolicy::ByStartSequence {
            start_sequence: info.ack_floor.stream_sequence + 1,
        };
    }
    consumer::DeliverPolicy::All
}

/// Removes a replaced consumer (gone already is fine).
async fn forget(stream: &stream::Stream, previous: Option<&str>) {
    if let Some(previous) = previous {
        let _ = stream.delete_consumer(previous).await;
    }
}

/// A durable pull consumer. Batches take milliseconds; one left
/// unacknowledged while its reader lives (a lost ack) comes back after
/// `ack_wait`, and output message ids make the replay harmless.
fn durable_config(
    durable: &str,
    ack_policy: consumer::AckPolicy,
    max_ack_pending: i64,
    deliver_policy: consumer::DeliverPolicy,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        ack_policy,
        ack_wait: Duration::from_secs(10),
        max_ack_pending,
        deliver_policy,
        ..Default::default()
    }
}
