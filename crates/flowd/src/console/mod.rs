//! The web console: what the host runs, live, in a browser. Served on its
//! own address (loopback by default), from pages shipped inside the binary
//! (no CDN, no build step), behind the host's accounts: a log-in with an
//! account's password or the administrator token opens a session, held in
//! an `HttpOnly`, `SameSite=Strict` cookie; every change (pause, replay,
//! discard) also needs a header a cross-site form cannot send.
//!
//! The pages read JSON from `/api/...`, decided by the same [`Agent`] and
//! [`Pipelines`](crate::pipeline::Pipelines) calls as FNAP and the gRPC
//! API, with the caller's rights; `/api/live` streams the overview every
//! second (server-sent events), from which the pages draw rates.
//!
//! With `[console] tls = true` it serves HTTPS with the host's certificate
//! (the FNAP one, like the API), its cookie marked `Secure`
//! ([`listener`]).
//!
//! [`Agent`]: crate::agent::Agent

mod listener;

use crate::agent::Principal;
use crate::api::ApiContext;
use crate::api::proto::DeadLettersRequest;
use anyhow::{Context as _, Result};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use cloudevents::AttributesReader;
use flowd_engine::spec::Port;
use flowd_engine::{ProcessorSpec, Status};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INDEX: &str = include_str!("assets/index.html");
const APP: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The session cookie.
const COOKIE: &str = "flowd_console";
/// The header every change must carry (a cross-site form cannot set it).
const CHANGE_HEADER: &str = "x-flowd-console";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at most (the oldest goes first).
const MAX_SESSIONS: usize = 1024;
/// Log records one page read returns at most.
const MAX_LOG_RECORDS: usize = 2000;
/// Live streams open at once (each reads the overview, or a flow's
/// newest events, every second).
const MAX_LIVE: usize = 64;
/// Live streams one session holds at once (so one cannot take them all).
const MAX_LIVE_PER_SESSION: usize = 4;
/// Events a flow's live tail shows per second at most (the newest; what
/// came between is counted as skipped).
const TAIL_EVENTS: usize = 20;
/// An event larger than this is shown by a tail as its size alone.
const TAIL_MAX_EVENT: usize = 64 * 1024;
/// The characters of an event's data a tail shows.
const TAIL_DATA: usize = 512;

struct Session {
    principal: Principal,
    expires: Instant,
    /// Room for its own live streams ([`MAX_LIVE_PER_SESSION`]).
    live: Arc<tokio::sync::Semaphore>,
}

/// A live stream's places: in its session's share, and in the console's.
type LiveRoom = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

struct Console {
    ctx: ApiContext,
    /// Served over TLS: the session cookie is `Secure`.
    secure: bool,
    sessions: Mutex<HashMap<String, Session>>,
    /// Room for live streams ([`MAX_LIVE`]).
    live: Arc<tokio::sync::Semaphore>,
}

/// A running console server.
pub struct ConsoleServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ConsoleServer {
    /// Binds `addr` and serves the console; over TLS with `tls`.
    pub async fn start(
        addr: SocketAddr,
        ctx: ApiContext,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<ConsoleServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("console {addr}"))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let console = Arc::new(Console {
            ctx,
            secure: tls.is_some(),
            sessions: Mutex::new(HashMap::new()),
            live: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE)),
        });
        let service = router(console).into_make_service_with_connect_info::<SocketAddr>();
        let task = match tls {
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, service).await {
                    tracing::error!("console stopped: {e}");
                }
            }),
            Some(config) => {
                // `tap_io` makes axum hand the listener's own address type
                // (the peer's `SocketAddr`) to `ConnectInfo`, as for TCP.
                let listener = listener::TlsListener::new(listener, config)?.tap_io(|_| {});
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, service).await {
                        tracing::error!("console stopped: {e}");
                    }
                })
            }
        };
        tracing::info!(%addr, %scheme, "console listening");
        Ok(ConsoleServer { addr, task })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/app.js", get(|| async { asset("text/javascript", APP) }))
        .route("/style.css", get(|| async { asset("text/css", STYLE) }))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/overview", get(overview))
        .route("/api/live", get(live))
        .route("/api/tail", get(tail))
        .route("/api/subscriptions", get(subscriptions))
        .route("/api/logs", get(logs))
        .route("/api/deadletters", get(dead_letters))
        .route("/api/deadletters/{action}", post(handle_dead_letters))
        .route("/api/processors/{id}/{action}", post(pause_resume))
        .with_state(console)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An error as the pages get it: a status and a message.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::agent::AgentError> for Failure {
    fn from(e: crate::agent::AgentError) -> Self {
        use crate::agent::AgentError;
        let code = match &e {
            AgentError::NotFound { .. } => StatusCode::NOT_FOUND,
            AgentError::Forbidden(_) => StatusCode::FORBIDDEN,
            AgentError::Invalid(_) | AgentError::Exists { .. } => StatusCode::BAD_REQUEST,
            AgentError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure(code, e.to_string())
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        let code = match s.code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure(code, s.message().to_owned())
    }
}

type Answer = Result<Json<Value>, Failure>;

impl Console {
    /// The session's principal, from the cookie.
    fn who(&self, headers: &HeaderMap) -> Result<Principal, Failure> {
        let token = session_token(headers).map(str::to_owned);
        let unauthorised = || Failure(StatusCode::UNAUTHORIZED, "log in first".into());
        let token = token.ok_or_else(unauthorised)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&token) {
            Some(s) if s.expires > Instant::now() => Ok(s.principal.clone()),
            Some(_) => {
                sessions.remove(&token);
                Err(unauthorised())
            }
            None => Err(unauthorised()),
        }
    }

    /// Room for one more live stream of the session: its own share and the
    /// console's, both held for as long as the stream lives.
    fn live_room(&self, headers: &HeaderMap) -> Result<LiveRoom, Failure> {
        let busy = |what: String| Failure(StatusCode::TOO_MANY_REQUESTS, what);
        let session = session_token(headers)
            .and_then(|token| {
                let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                sessions.get(token).map(|s| s.live.clone())
            })
            .ok_or_else(|| Failure(StatusCode::UNAUTHORIZED, "log in first".into()))?;
        let own = session.try_acquire_owned().map_err(|_| {
            busy(format!(
                "this session has {MAX_LIVE_PER_SESSION} live views open: close one"
            ))
        })?;
        let all = self
            .live
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy(format!("{MAX_LIVE} live views are open: close one")))?;
        Ok((own, all))
    }

    /// The principal, for a change: also needs the change header.
    fn who_changes(&self, headers: &HeaderMap) -> Result<Principal, Failure> {
        if headers.get(CHANGE_HEADER).is_none() {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                format!("changes need the `{CHANGE_HEADER}` header"),
            ));
        }
        self.who(headers)
    }
}

/// The session token in the request's cookies, if any.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    /// The administrator token, instead of an account.
    #[serde(default)]
    token: String,
}

async fn login(
    State(c): State<Arc<Console>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(form): Json<LoginForm>,
) -> Result<Response, Failure> {
    if headers.get(CHANGE_HEADER).is_none() {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            format!("log-ins need the `{CHANGE_HEADER}` header"),
        ));
    }
    let (user, password) = if form.token.is_empty() {
        (form.user, form.password)
    } else {
        (crate::accounts::local::LOCAL_ADMIN.to_owned(), form.token)
    };
    // The same log-in (and throttling of wrong guesses) as FNAP and the API.
    let identity = c
        .ctx
        .agent
        .login(&c.ctx.state_dir, from.ip(), &user, &password)
        .await
        .map_err(|e| Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| Failure(StatusCode::UNAUTHORIZED, "wrong user or password".into()))?;
    // Two v4 UUIDs: 244 bits from the system's random source.
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let name = identity.user.clone();
    {
        let mut sessions = c.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            token.clone(),
            Session {
                principal: Principal::User(identity),
                expires: now + SESSION_TTL,
                live: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE_PER_SESSION)),
            },
        );
    }
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if c.secure { "; Secure" } else { "" }
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "user": name })),
    )
        .into_response())
}

async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(token) = session_token(&headers) {
        c.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Json(json!({}))).into_response()
}

async fn me(State(c): State<Arc<Console>>, headers: HeaderMap) -> Answer {
    let who = c.who(&headers)?;
    Ok(Json(json!({
        "user": who.user().unwrap_or("host"),
        "admin": who.is_admin(),
    })))
}

fn status_json(status: Option<&Status>) -> Value {
    match status {
        Some(s) => json!({
            "phase": s.phase, "generation": s.generation, "events_in": s.events_in,
            "events_out": s.events_out, "errors": s.errors, "dead_lettered": s.dead_lettered,
            "lag": s.lag, "last_error": s.last_error, "started_ms": s.started_ms,
            "updated_ms": s.updated_ms, "code": s.code.map(|c| c.as_str()),
            "partitions": s.partitions, "restarts": s.restarts,
        }),
        None => json!({ "phase": "pending" }),
    }
}

/// A pipeline step's edges: the flows it reads and writes (for a fused
/// step, the in-memory edges by their display names).
fn step_edges(spec: &ProcessorSpec, processor: &str) -> (Vec<String>, Vec<String>, bool) {
    if let Some(step) = spec.fused.iter().find(|f| f.id == processor) {
        let outputs = step
            .ports
            .iter()
            .zip(&step.outputs)
            .map(|(port, shown)| match port {
                Port::Flow(i) => spec
                    .outputs
                    .get(*i)
                    .map_or_else(|| shown.clone(), ToString::to_string),
                Port::Step(_) => shown.clone(),
            })
            .collect();
        return (vec![step.input.clone()], outputs, true);
    }
    let inputs = spec.inputs.iter().map(ToString::to_string).collect();
    let outputs = if spec.ports.is_empty() {
        spec.outputs.iter().map(ToString::to_string).collect()
    } else {
        spec.ports
            .iter()
            .map(|port| match port {
                Port::Flow(i) => spec
                    .outputs
                    .get(*i)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                Port::Step(j) => spec
                    .fused
                    .get(*j)
                    .map(|f| f.input.clone())
                    .unwrap_or_default(),
            })
            .collect()
    };
    (inputs, outputs, false)
}

async fn overview_of(c: &Console, who: &Principal) -> Result<Value, Failure> {
    let agent = &c.ctx.agent;
    let hosts_records = agent.list_agents_as(who).await.unwrap_or_default();
    let live_hosts: Vec<String> = hosts_records.iter().map(|h| h.id.clone()).collect();
    let processors: Vec<Value> = agent
        .list_processors_as(who)
        .await?
        .iter()
        .map(|(spec, status)| {
            // Where its instances run: the same rendezvous placement every
            // host computes over the live hosts.
            let placement = if spec.paused {
                Vec::new()
            } else {
                flowd_broker::cluster::placement(&spec.id, spec.parallelism.max(1), &live_hosts)
            };
            json!({
                "placement": placement,
                "id": spec.id, "kind": spec.kind.to_string(), "paused": spec.paused,
                "pipeline": spec.pipeline, "owner": spec.owner,
                "component": spec.component, "parallelism": spec.parallelism,
                "inputs": spec.inputs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "outputs": spec.outputs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "dead_letter": spec.dead_letter.to_string(),
                "fused": spec.fused.iter().map(|f| f.id.clone()).collect::<Vec<_>>(),
                "status": status_json(status.as_ref()),
            })
        })
        .collect();
    let pipelines: Vec<Value> = c
        .ctx
        .pipelines
        .list_as(who)
        .await
        .map_err(|e| Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .iter()
        .map(|view| {
            let steps: Vec<Value> = view
                .record
                .steps
                .iter()
                .map(|planned| {
                    let found = view.steps.iter().find(|(name, _, _)| *name == planned.name);
                    let (inputs, outputs, fused) = found
                        .map(|(_, spec, _)| step_edges(spec, &planned.processor))
                        .unwrap_or_default();
                    json!({
                        "name": planned.name, "processor": planned.processor,
                        "runner": planned.runner, "inputs": inputs, "outputs": outputs,
                        "fused": fused,
                        "status": status_json(found.and_then(|(_, _, s)| s.as_ref())),
                    })
                })
                .collect();
            json!({
                "name": view.record.name, "owner": view.record.owner,
                "applied_ms": view.record.applied_ms, "steps": steps,
                "subscriptions": view.record.subscriptions.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let flows: Vec<Value> = agent
        .list_flows_as(who, None)
        .await?
        .iter()
        .map(|f| {
            json!({
                "name": f.name.to_string(), "events": f.events, "bytes": f.bytes,
                "first_sequence": f.first_sequence, "last_sequence": f.last_sequence,
                "max_age_secs": f.settings.max_age_secs, "max_bytes": f.settings.max_bytes,
                "public": f.settings.public,
            })
        })
        .collect();
    let hosts: Vec<Value> = hosts_records
        .iter()
        .map(|h| {
            json!({
                "id": h.id, "fqdn": h.fqdn, "fnap": h.fnap, "api": h.api,
                "started_ms": h.started_ms, "heartbeat_ms": h.heartbeat_ms,
                "instances": h.instances, "events_in": h.events_in, "rate": h.rate,
            })
        })
        .collect();
    let components: Vec<Value> = c
        .ctx
        .registry
        .list()
        .await
        .map(|records| {
            records
                .iter()
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    Ok(json!({
        "now_ms": now, "processors": processors, "pipelines": pipelines,
        "flows": flows, "hosts": hosts, "components": components,
    }))
}

async fn overview(State(c): State<Arc<Console>>, headers: HeaderMap) -> Answer {
    let who = c.who(&headers)?;
    Ok(Json(overview_of(&c, &who).await?))
}

/// The overview every second, as server-sent events, while the session
/// lasts.
async fn live(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>>, Failure> {
    c.who(&headers)?;
    // Held for as long as the stream lives.
    let permit = c.live_room(&headers)?;
    let stream = futures::stream::unfold(
        (c, headers, true, permit),
        |(c, headers, first, permit)| async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let who = c.who(&headers).ok()?;
            let event = match overview_of(&c, &who).await {
                Ok(value) => SseEvent::default()
                    .event("overview")
                    .data(value.to_string()),
                Err(Failure(_, message)) => SseEvent::default().event("trouble").data(message),
            };
            Some((Ok(event), (c, headers, false, permit)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct LogQuery {
    name: String,
    #[serde(default)]
    since_ms: u64,
}

async fn logs(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<LogQuery>,
) -> Answer {
    use futures::StreamExt;
    let who = c.who(&headers)?;
    let records = crate::api::read_logs(
        &c.ctx,
        &who,
        crate::api::proto::ReadLogsRequest {
            name: q.name,
            follow: false,
            since_ms: q.since_ms,
        },
    )
    .await?;
    let mut out = Vec::new();
    let mut records = std::pin::pin!(records);
    while let Some(r) = records.next().await {
        let r = r?;
        out.push(json!({
            "time_ms": r.time_ms, "level": r.level, "kind": r.kind, "processor": r.processor,
            "host": r.host, "instance": r.instance, "event": r.event, "message": r.message,
            "sequence": r.sequence,
        }));
    }
    // The newest, if there are more.
    let skip = out.len().saturating_sub(MAX_LOG_RECORDS);
    Ok(Json(Value::Array(out.split_off(skip))))
}

#[derive(Deserialize)]
struct NameQuery {
    name: String,
}

/// A flow's newest events, every second, as server-sent events (`events`:
/// `{last, skipped, events}`), while the session lasts and its read right
/// holds; counted among the live views.
async fn tail(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<NameQuery>,
) -> Result<Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>>, Failure> {
    let who = c.who(&headers)?;
    let flow = flowd_broker::FlowName::parse(&q.name)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("flow {}: {e}", q.name)))?;
    // Refused at once rather than as a stream that ends.
    c.ctx.agent.check_read(&who, &flow).await?;
    let permit = c.live_room(&headers)?;
    let stream = futures::stream::unfold(
        (c, headers, flow, None::<u64>, true, permit),
        |(c, headers, flow, after, first, permit)| async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let who = c.who(&headers).ok()?;
            let (event, next) = match c
                .ctx
                .agent
                .tail_as(&who, &flow, after, TAIL_EVENTS, TAIL_MAX_EVENT)
                .await
            {
                Ok(tail) => {
                    let events: Vec<Value> = tail
                        .events
                        .iter()
                        .map(|(sequence, event)| tail_event(*sequence, event))
                        .collect();
                    let data = json!({
                        "last": tail.last_sequence, "skipped": tail.skipped, "events": events,
                    });
                    (
                        SseEvent::default().event("events").data(data.to_string()),
                        Some(tail.last_sequence),
                    )
                }
                // The right taken away, or the flow deleted: the tail ends.
                Err(
                    e @ (crate::agent::AgentError::Forbidden(_)
                    | crate::agent::AgentError::NotFound { .. }),
                ) => {
                    tracing::debug!(%flow, "console tail ends: {e}");
                    return None;
                }
                Err(e) => (
                    SseEvent::default().event("trouble").data(e.to_string()),
                    after,
                ),
            };
            Some((Ok(event), (c, headers, flow, next, false, permit)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One event of a tail: its attributes and the start of its data.
fn tail_event(sequence: u64, event: &Result<cloudevents::Event, String>) -> Value {
    let event = match event {
        Ok(event) => event,
        Err(e) => return json!({ "sequence": sequence, "error": e }),
    };
    let data = match event.data() {
        Some(cloudevents::Data::Json(v)) => v.to_string(),
        Some(cloudevents::Data::String(s)) => s.clone(),
        Some(cloudevents::Data::Binary(b)) => String::from_utf8_lossy(b).into_owned(),
        None => String::new(),
    };
    let shown: String = data.chars().take(TAIL_DATA).collect();
    let cut = shown.len() < data.len();
    json!({
        "sequence": sequence, "id": event.id(), "type": event.ty(),
        "source": event.source().to_string(), "subject": event.subject(),
        "time": event.time().map(|t| t.to_rfc3339()),
        "data": shown, "cut": cut,
    })
}

/// Subscriptions both ways: the caller's own (local flows fed from another
/// flow, here or on another participant's host), and the subscribers of the
/// flows the caller may write to.
async fn subscriptions(State(c): State<Arc<Console>>, headers: HeaderMap) -> Answer {
    let who = c.who(&headers)?;
    let agent = &c.ctx.agent;
    let out: Vec<Value> = agent
        .list_subscriptions_as(&who)
        .await?
        .iter()
        .map(|s| {
            json!({
                "local": s.local.to_string(), "remote": s.remote.to_string(),
                "agent": s.agent, "processor": s.processor, "created": s.created,
                "paused": s.paused, "revoked": s.revoked, "failing": s.failing,
            })
        })
        .collect();
    // A subscriber is shown to those who may write to its source (as
    // `flow subscribers` does), each source checked once.
    let mut writable: HashMap<flowd_broker::FlowName, bool> = HashMap::new();
    let mut incoming = Vec::new();
    for s in agent.subscribers().await? {
        let allowed = match writable.get(&s.source) {
            Some(allowed) => *allowed,
            None => {
                let allowed = agent.check_write(&who, &s.source).await.is_ok();
                writable.insert(s.source.clone(), allowed);
                allowed
            }
        };
        if allowed {
            // A copy's name holds its subscriber's token: shown to the
            // host's administrators alone.
            let copy = who.is_admin().then(|| s.copy.to_string());
            incoming.push(json!({
                "source": s.source.to_string(), "copy": copy,
                "user": s.user.as_deref().unwrap_or(if s.host { "host" } else { "anonymous" }),
                "processor": s.processor, "created": s.created,
            }));
        }
    }
    Ok(Json(json!({ "out": out, "in": incoming })))
}

async fn dead_letters(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<NameQuery>,
) -> Answer {
    let who = c.who(&headers)?;
    let request = DeadLettersRequest {
        name: q.name,
        limit: 200,
        ..Default::default()
    };
    let (_, letters, _turn) = crate::api::chosen_letters(&c.ctx, &who, &request, false).await?;
    Ok(Json(Value::Array(
        letters
            .iter()
            .map(|l| {
                json!({
                    "flow": l.flow.to_string(), "sequence": l.sequence,
                    "processor": l.processor, "step": l.step, "input": l.input,
                    "error": l.error, "event_id": l.event.id(), "event_type": l.event.ty(),
                    "event": serde_json::to_value(&l.event).unwrap_or_default(),
                })
            })
            .collect(),
    )))
}

#[derive(Deserialize)]
struct LettersForm {
    name: String,
    #[serde(default)]
    sequences: Vec<u64>,
    #[serde(default)]
    all: bool,
}

async fn handle_dead_letters(
    State(c): State<Arc<Console>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    Json(form): Json<LettersForm>,
) -> Answer {
    let who = c.who_changes(&headers)?;
    let replay = match action.as_str() {
        "replay" => true,
        "discard" => false,
        other => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no action `{other}`: replay or discard"),
            ));
        }
    };
    let request = DeadLettersRequest {
        name: form.name,
        sequences: form.sequences,
        all: form.all,
        limit: 0,
    };
    let (specs, letters, _turn) = crate::api::chosen_letters(&c.ctx, &who, &request, true).await?;
    let done = if replay {
        c.ctx
            .agent
            .replay_dead_letters(&who, &specs, letters)
            .await?
    } else {
        let by = who.user().unwrap_or("the host administrator");
        c.ctx.agent.discard_dead_letters(letters, by).await?
    };
    Ok(Json(json!({
        "handled": done.iter().map(|h| json!({"sequence": h.sequence, "event_id": h.event, "to": h.to})).collect::<Vec<_>>(),
    })))
}

async fn pause_resume(
    State(c): State<Arc<Console>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    let who = c.who_changes(&headers)?;
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no action `{other}`: pause or resume"),
            ));
        }
    };
    let spec = c.ctx.agent.pause_processor_as(&who, &id, paused).await?;
    Ok(Json(json!({ "id": spec.id, "paused": spec.paused })))
}
