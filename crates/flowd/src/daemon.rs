//! `flowd serve`: the participant host as a daemon. Starts (or connects to)
//! the broker, the Wasm host and the processor engine, serves `/metrics`,
//! and tells local clients where it is (`<state_dir>/host.json`).

use crate::agent::Agent;
use crate::api::{ApiContext, ApiServer};
use crate::config::{BrokerTls, Config, HostFile};
use crate::console::ConsoleServer;
use crate::peers::Federation;
use crate::pipeline::Pipelines;
use crate::relays::Relays;
use crate::server::{Server, ServerContext};
use anyhow::{Context, Result};
use flowd_broker::embedded::{EmbeddedNats, EmbeddedOptions};
use flowd_broker::grants::Issuer;
use flowd_broker::operator::Operator;
use flowd_broker::{Broker, BrokerAuth};
use flowd_engine::registry::Registry;
use flowd_engine::{Engine, Metrics};
use flowd_fns::update::Updater;
use flowd_fns::{NameService, Publication};
use flowd_wasm::{Host, HostConfig};
use std::sync::Arc;

/// A running host.
pub struct Daemon {
    broker: Broker,
    engine: Engine,
    embedded: Option<EmbeddedNats>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    nats_urls: Vec<String>,
    metrics_addr: Option<std::net::SocketAddr>,
    fnap: Server,
    fns: Option<NameService>,
    updater: Option<Updater>,
    relays: Relays,
    api: Option<ApiServer>,
    console: Option<ConsoleServer>,
    /// Publishes this host's accounts file to the other hosts.
    accounts: tokio::task::JoinHandle<()>,
    /// Revokes the copies of accounts removed on any host.
    reviews: Option<tokio::task::JoinHandle<()>>,
    /// Where spans go (`[telemetry]`).
    telemetry: crate::telemetry::Telemetry,
}

impl Daemon {
    pub async fn start(config: Config) -> Result<Daemon> {
        let state_dir = config.participant.state_dir.clone();
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        config
            .nats
            .subscribers
            .check()
            .map_err(|e| anyhow::anyhow!("[nats.subscribers] {e}"))?;
        crate::agent::processors::check_limits(&config.limits.defaults, &config.limits.max)
            .map_err(|e| anyhow::anyhow!("[limits]: {e} (or raise [limits.max])"))?;
        for peer in &config.peers {
            peer.check().map_err(anyhow::Error::msg)?;
        }
        let (embedded, nats_urls) = if config.nats.urls.is_empty() {
            let listen = config
                .nats
                .listen
                .or(config.fnap.listen.map(|a| a.ip()))
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
            let tls = match config.nats.tls {
                BrokerTls::Required => true,
                BrokerTls::Auto => !flowd_broker::embedded::is_loopback(listen),
            };
            let options = EmbeddedOptions {
                limits: config.nats.subscribers,
                monitor: config.nats.monitor,
                tls: tls
                    .then(|| {
                        crate::tls::certificate_files(
                            &config.fnap.tls,
                            &state_dir,
                            &config.participant.fqdn,
                        )
                    })
                    .transpose()
                    .context("the embedded broker's TLS certificate")?,
            };
            let embedded =
                EmbeddedNats::start(&state_dir, config.nats.server.as_deref(), listen, &options)
                    .await?;
            let url = embedded.url().to_owned();
            (Some(embedded), vec![url])
        } else {
            (None, config.nats.urls.clone())
        };
        let host_credentials = config
            .nats
            .credentials
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("[nats] credentials {}", path.display()))
            })
            .transpose()?;
        let broker = Broker::connect_as(
            &nats_urls,
            &format!("flowd {}", config.participant.fqdn),
            match (&embedded, &host_credentials) {
                (Some(embedded), _) => {
                    let (user, password) = embedded.credentials();
                    BrokerAuth::Password(user, password)
                }
                (None, Some(text)) => BrokerAuth::Credentials(text),
                (None, None) => BrokerAuth::None,
            },
            embedded
                .as_ref()
                .and_then(EmbeddedNats::certificate)
                .map(crate::tls::pinned_client_config)
                .transpose()?,
        )
        .await?
        .with_replicas(config.nats.replicas);
        let host = Arc::new(Host::new(HostConfig {
            cache_dir: Some(state_dir.join("cache")),
            ..HostConfig::default()
        })?);
        let metrics = Metrics::default();
        let host_id = match &config.cluster.host_id {
            Some(id) if flowd_broker::cluster::valid_id(id) => id.clone(),
            Some(id) => anyhow::bail!(
                "[cluster] host_id `{id}`: use letters, digits, `-` and `_` (at most 64)"
            ),
            None => flowd_broker::cluster::host_id(&state_dir).context("the host id")?,
        };
        let telemetry = crate::telemetry::Telemetry::start(
            &config.telemetry,
            &host_id,
            &config.participant.fqdn,
        )?;
        let engine = Engine::start(
            broker.clone(),
            host.clone(),
            metrics.clone(),
            &host_id,
            &config.cluster,
            telemetry.traces(),
        )
        .await?;
        crate::accounts::local::ensure_local_token(&state_dir)
            .context("writing the local administrator token")?;
        let federation = Arc::new(
            Federation::new(config.fns.nameserver, config.peers.clone())
                .context("setting up the resolver")?,
        );
        let shared_accounts = crate::accounts::SharedAccounts::open(&broker, &host_id)
            .await?
            .with_local(&state_dir);
        let accounts = shared_accounts
            .clone()
            .follow(state_dir.clone(), std::time::Duration::from_millis(250));
        let mut agent = Agent::new(broker.clone())
            .await?
            .with_federation(federation.clone())
            .with_shared_accounts(shared_accounts)
            .with_login_limits(config.logins.clone())
            .with_quotas(config.quotas.clone())
            .with_limit_maxima(config.limits.max.clone())
            .with_traces(telemetry.traces(), &host_id);
        if let (None, Some(operator)) = (&embedded, &config.nats.operator) {
            let seed = std::fs::read_to_string(&operator.signing_key).with_context(|| {
                format!(
                    "[nats.operator] signing_key {}",
                    operator.signing_key.display()
                )
            })?;
            let key =
                flowd_broker::jwt::key_from_seed(&seed).context("[nats.operator] signing_key")?;
            let tls = config.nats.tls == BrokerTls::Required
                || nats_urls.iter().all(|u| u.starts_with("tls://"));
            agent = agent.with_issuer(Issuer::Operator(Operator::new(
                key,
                operator.account.clone(),
                broker.client().clone(),
                config.nats.subscribers,
                tls,
            )));
        }
        if let Some(embedded) = &embedded {
            agent = agent.with_issuer(Issuer::Embedded(embedded.users()));
            agent
                .forget_stale_broker_users()
                .await
                .context("checking the subscribers' broker users")?;
        }
        let reviews = agent.follow_accounts();
        let relays = Relays::start(
            agent.clone(),
            federation,
            engine.membership().clone(),
            config.cluster.heartbeat(),
        )
        .await
        .context("starting the relays of remote subscriptions")?;
        // On a cluster that just made the buckets, the first writes can
        // find no stream on the node this host talks to for a moment.
        let mut attempts = 0;
        while let Err(e) = agent.serve_namespaces(&config.participant.namespaces).await {
            attempts += 1;
            if attempts == 20 {
                return Err(e.into());
            }
            tracing::info!("recording the namespaces, retrying: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        let tls = if config.fnap.tls_listen.is_some() || config.fnap.listen.is_some() {
            let (server, cert) =
                crate::tls::server_config(&config.fnap.tls, &state_dir, &config.participant.fqdn)?;
            Some((server, cert))
        } else {
            None
        };
        let fnap = Server::start(ServerContext {
            agent: agent.clone(),
            config: config.fnap.clone(),
            fqdn: config.participant.fqdn.clone(),
            state_dir: state_dir.clone(),
            tls: tls.as_ref().map(|(server, _)| server.clone()),
            broker_urls: nats_urls.clone(),
            limits: config.limits.defaults.clone(),
        })
        .await
        .context("starting the FNAP server")?;
        let published = publication(&config, &nats_urls, fnap.plain, tls.is_some());
        let fns = match config.fns.listen {
            Some(addr) => Some(
                NameService::start(
                    addr,
                    config.participant.namespaces.clone(),
                    published.clone(),
                    std::sync::Arc::new(agent.clone()),
                )
                .await?,
            ),
            None => None,
        };
        let updater = config.fns.update.clone().map(|update| {
            Updater::start(
                update,
                config.participant.namespaces.clone(),
                published,
                std::sync::Arc::new(agent.clone()),
            )
        });

        // The API and the console share one context (registry, pipelines).
        let context = if config.api.listen.is_some() || config.console.listen.is_some() {
            let registry = Registry::open(&broker, host.clone()).await?;
            let pipelines = Pipelines::open(
                agent.clone(),
                registry.clone(),
                config.limits.defaults.clone(),
            )
            .await?;
            Some(ApiContext {
                agent: agent.clone(),
                registry,
                pipelines,
                state_dir: state_dir.clone(),
                defaults: config.limits.defaults.clone(),
                long_reads: Default::default(),
            })
        } else {
            None
        };
        let api = match (config.api.listen, &context) {
            (Some(addr), Some(ctx)) => {
                let tls = if config.api.tls {
                    let (cert, key) = crate::tls::certificate_files(
                        &config.fnap.tls,
                        &state_dir,
                        &config.participant.fqdn,
                    )?;
                    Some((
                        std::fs::read(&cert)
                            .with_context(|| format!("reading {}", cert.display()))?,
                        std::fs::read(&key)
                            .with_context(|| format!("reading {}", key.display()))?,
                    ))
                } else {
                    None
                };
                Some(ApiServer::start(addr, ctx.clone(), tls).await?)
            }
            _ => None,
        };
        let console = match (config.console.listen, context) {
            (Some(addr), Some(ctx)) => {
                let tls = if config.console.tls {
                    let (server, _) = crate::tls::server_config(
                        &config.fnap.tls,
                        &state_dir,
                        &config.participant.fqdn,
                    )?;
                    Some(server)
                } else {
                    None
                };
                Some(ConsoleServer::start(addr, ctx, tls).await?)
            }
            _ => None,
        };

        let (metrics_server, metrics_addr) = match config.metrics.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("metrics endpoint {addr}"))?;
                let bound = listener.local_addr()?;
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move || {
                        let metrics = metrics.clone();
                        async move {
                            (
                                [(
                                    axum::http::header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                metrics.render(),
                            )
                        }
                    }),
                );
                let task = tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!("metrics endpoint stopped: {e}");
                    }
                });
                (Some(task), Some(bound))
            }
            None => (None, None),
        };
        engine.announce(
            &config.participant.fqdn,
            fnap.plain.map(|a| a.to_string()),
            api.as_ref().map(|a| a.addr.to_string()),
        );
        HostFile {
            fqdn: config.participant.fqdn.clone(),
            nats_urls: nats_urls.clone(),
            metrics: metrics_addr,
            fnap: fnap.plain,
            fnap_tls: fnap.tls,
            fns: fns.as_ref().map(|f| f.addr),
            api: api.as_ref().map(|a| a.addr),
            api_tls: config.api.tls,
            console_tls: config.console.tls,
            console: console.as_ref().map(|c| c.addr),
            tls_cert: tls.map(|(_, cert)| cert),
            pid: std::process::id(),
        }
        .write(&state_dir)
        .with_context(|| format!("writing {}", HostFile::path(&state_dir).display()))?;
        tracing::info!(
            fqdn = config.participant.fqdn,
            nats = nats_urls.join(","),
            metrics = ?metrics_addr,
            fnap = ?fnap.plain,
            fnap_tls = ?fnap.tls,
            api = ?api.as_ref().map(|a| a.addr),
            console = ?console.as_ref().map(|c| c.addr),
            "flowd host ready"
        );
        Ok(Daemon {
            broker,
            engine,
            embedded,
            metrics_server,
            nats_urls,
            metrics_addr,
            fnap,
            fns,
            updater,
            relays,
            api,
            console,
            accounts,
            reviews,
            telemetry,
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn nats_urls(&self) -> &[String] {
        &self.nats_urls
    }

    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The FNAP plain-text address, if enabled.
    pub fn fnap_addr(&self) -> Option<std::net::SocketAddr> {
        self.fnap.plain
    }

    /// The embedded name service's address, if enabled.
    pub fn fns_addr(&self) -> Option<std::net::SocketAddr> {
        self.fns.as_ref().map(|f| f.addr)
    }

    /// The FNAP implicit-TLS address, if enabled.
    pub fn fnap_tls_addr(&self) -> Option<std::net::SocketAddr> {
        self.fnap.tls
    }

    /// The management API's address, if enabled.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().map(|a| a.addr)
    }

    /// The web console's address, if enabled.
    pub fn console_addr(&self) -> Option<std::net::SocketAddr> {
        self.console.as_ref().map(|c| c.addr)
    }

    /// Stops processors after their current batch, then the broker.
    pub async fn shutdown(self) {
        self.fnap.shutdown();
        if let Some(api) = self.api {
            api.stop();
        }
        if let Some(console) = self.console {
            console.stop();
        }
        self.relays.shutdown();
        self.accounts.abort();
        if let Some(reviews) = self.reviews {
            reviews.abort();
        }
        if let Some(updater) = self.updater {
            updater.shutdown();
        }
        if let Some(fns) = self.fns {
            fns.shutdown();
        }
        self.engine.shutdown().await;
        if let Some(task) = self.metrics_server {
            task.abort();
        }
        if let Some(embedded) = self.embedded {
            embedded.shutdown().await;
        }
        self.telemetry.shutdown().await;
    }
}

/// What this host publishes in DNS: its FNAA (name, port, addresses, TLS)
/// and its broker.
fn publication(
    config: &Config,
    nats_urls: &[String],
    fnap: Option<std::net::SocketAddr>,
    tls: bool,
) -> Publication {
    let fns = &config.fns;
    let agent_host = fns
        .agent_host
        .clone()
        .unwrap_or_else(|| config.participant.fqdn.clone());
    let addresses = if fns.addresses.is_empty() {
        fnap.map(|a| vec![a.ip()]).unwrap_or_default()
    } else {
        fns.addresses.clone()
    };
    let broker_port = nats_urls
        .first()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.port())
        .unwrap_or(4222);
    Publication {
        fnaa_host: agent_host.clone(),
        fnap_port: fns
            .fnap_port
            .or(fnap.map(|a| a.port()))
            .unwrap_or(flowd_fnap::DEFAULT_PORT),
        tls,
        addresses,
        broker_host: agent_host,
        broker_port,
        ttl: fns.ttl,
    }
}

/// Runs the host until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<()> {
    let daemon = Daemon::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    daemon.shutdown().await;
    Ok(())
}
