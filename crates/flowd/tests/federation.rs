//! The Flow Name Service and federation: hosts publish their flows in DNS
//! (the embedded authoritative server), and others find them through it.

mod support;

use flowd::accounts::Accounts;
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd::peers::{PeerConfig, PeerTls};
use flowd_broker::FlowName;
use flowd_fnap::client::{Client, ClientError, Security};
use flowd_fns::{Discovery, DiscoveryError};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use support::{Nats, code, eventually, free_port};

struct Participant {
    _nats: Nats,
    state: tempfile::TempDir,
    daemon: Daemon,
    config: Config,
}

impl Participant {
    /// Stops the host and starts it again on the same broker and state
    /// (its FNAP port changes; DNS tells peers the new one).
    async fn restart(self) -> Participant {
        let Participant {
            _nats,
            state,
            daemon,
            config,
        } = self;
        daemon.shutdown().await;
        let daemon = Daemon::start(config.clone()).await.expect("host restarts");
        Participant {
            _nats,
            state,
            daemon,
            config,
        }
    }

    async fn admin(&self) -> Client {
        let addr = self.daemon.fnap_addr().expect("FNAP").to_string();
        support::admin(&addr, self.state.path()).await
    }
}

/// A participant serving `namespace`, its FNAA named `fqdn`.
async fn participant(fqdn: &str, namespace: &str) -> Participant {
    participant_with(fqdn, namespace, |_| {}).await
}

async fn participant_with(
    fqdn: &str,
    namespace: &str,
    tune: impl FnOnce(&mut Config),
) -> Participant {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.participant.fqdn = fqdn.into();
    config.participant.namespaces = vec![namespace.into()];
    config.participant.state_dir = state.path().to_owned();
    config.nats.urls = vec![nats.url()];
    config.metrics.listen = None;
    config.api.listen = None;
    config.console.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = Some(([127, 0, 0, 1], 0).into());
    config.fns.ttl = 1;
    tune(&mut config);
    let daemon = Daemon::start(config.clone()).await.expect("host starts");
    Participant {
        _nats: nats,
        state,
        daemon,
        config,
    }
}

fn flow(name: &str) -> FlowName {
    FlowName::parse(name).expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_published_and_discovered_through_dns() {
    let b = participant("fnaa.unix.ar", "flows.unix.ar").await;
    let dns = b.daemon.fns_addr().expect("name service");
    let fnap = b.daemon.fnap_addr().expect("FNAP");
    let discovery = Discovery::new(Some(dns)).expect("resolver");

    let unknown = discovery.locate(&flow("time.flows.unix.ar")).await;
    assert!(
        matches!(unknown, Err(DiscoveryError::NoSuchFlow(_))),
        "{unknown:?}"
    );

    let mut admin = b.admin().await;
    // A private flow is not published: DNS answers for it as for a name
    // that does not exist, so it cannot be enumerated.
    admin
        .command("CREATE FLOW secret.flows.unix.ar")
        .await
        .expect("created");
    admin
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("created");
    let found = eventually(Duration::from_secs(10), "the flow is published", || async {
        discovery.locate(&flow("time.flows.unix.ar")).await.ok()
    })
    .await;
    assert_eq!(found.host, "fnaa.unix.ar");
    assert_eq!(found.port, fnap.port());
    assert_eq!(found.addresses, [fnap.ip()]);
    assert!(found.tls, "the FNAA offers STARTTLS: TXT \"tls\"");
    let private = discovery.locate(&flow("secret.flows.unix.ar")).await;
    let missing = discovery.locate(&flow("nothing.flows.unix.ar")).await;
    assert!(
        matches!(private, Err(DiscoveryError::NoSuchFlow(_)))
            && matches!(missing, Err(DiscoveryError::NoSuchFlow(_))),
        "{private:?} / {missing:?}"
    );
    // The namespace's agent is published, for peers with an account.
    let (agent, port, _) = discovery
        .namespace_agent("flows.unix.ar")
        .await
        .expect("_fnaa._tcp record");
    assert_eq!((agent.as_str(), port), ("fnaa.unix.ar", fnap.port()));
    let (broker_host, _, attrs) = found.broker.clone().expect("broker published");
    assert_eq!(broker_host, "fnaa.unix.ar");
    assert_eq!(attrs, ["broker-type=nats"]);
    // The FNAA reached through DNS is the host itself.
    let client = Client::connect(&found.agent_addrs()[0].to_string(), &Security::Plain)
        .await
        .expect("connects to the discovered FNAA");
    assert_eq!(client.greeting().text, "fnaa.unix.ar FNAA");
    client.quit().await.expect("quit");

    // Deleting the flow withdraws it.
    admin
        .command("DELETE FLOW time.flows.unix.ar")
        .await
        .expect("deleted");
    // (A fresh resolver: the first one rightly caches the answer for its TTL.)
    eventually(Duration::from_secs(10), "the flow is withdrawn", || async {
        let fresh = Discovery::new(Some(dns)).expect("resolver");
        matches!(
            fresh.locate(&flow("time.flows.unix.ar")).await,
            Err(DiscoveryError::NoSuchFlow(_))
        )
        .then_some(())
    })
    .await;
    // A name outside every zone of this server is refused, not found.
    let outside = discovery.locate(&flow("x.other.example")).await;
    assert!(outside.is_err(), "{outside:?}");
}

fn dns(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The ids of the events in a flow, read over FNAP.
async fn ids(client: &mut Client, flow: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    client
        .read(&format!("READ FLOW {flow} FROM START"), |line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("JSON");
            ids.insert(event["id"].as_str().unwrap_or_default().to_owned());
            true
        })
        .await
        .expect("read");
    ids
}

fn events(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| {
            format!(
                r#"{{"specversion":"1.0","id":"{prefix}-{i}","source":"urn:test","type":"tick","data":{{"n":{i}}}}}"#
            )
        })
        .collect()
}

/// Two participants, each with its own broker and name service, each
/// resolving the other's names through the other's name service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_subscribe_to_each_other_through_dns() {
    let (dns_a, dns_b) = (free_port(), free_port());
    // A lives on 127.0.0.2, B on 127.0.0.1: they share nothing but DNS and
    // routed TCP (their brokers are their own).
    let a_ip = std::net::Ipv4Addr::new(127, 0, 0, 2);
    // B knows an account for A's host and grants it read on its namespace.
    // B runs the embedded broker, so it issues broker credentials and A
    // pulls from B's broker; A does not, so B reads A's copy over FNAP.
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.nats.urls.clear();
        c.fns.listen = Some(dns(dns_b));
        c.fns.nameserver = Some(SocketAddr::from((a_ip, dns_a)));
        let mut accounts = Accounts::default();
        accounts
            .add("emiliano", "peer-secret", false)
            .expect("account");
        accounts.save(&c.participant.state_dir).expect("saved");
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fnap.listen = Some(SocketAddr::from((a_ip, 0)));
        c.fns.listen = Some(SocketAddr::from((a_ip, dns_a)));
        c.fns.nameserver = Some(dns(dns_b));
        c.peers = vec![PeerConfig {
            namespace: "flows.unix.ar".into(),
            username: Some("emiliano".into()),
            password: Some("peer-secret".into()),
            // Loopback: clear text, by explicit choice.
            tls: PeerTls::Plain,
            hosts: vec!["fnaa.unix.ar".into()],
            ..PeerConfig::default()
        }];
    })
    .await;
    assert_eq!(a.daemon.fnap_addr().map(|a| a.ip()), Some(a_ip.into()));
    let mut admin_b = b.admin().await;
    let mut admin_a = a.admin().await;
    admin_b
        .command("CREATE FLOW time.flows.unix.ar")
        .await
        .expect("private flow on B");
    admin_b
        .command("GRANT emiliano READ ON flows.unix.ar")
        .await
        .expect("granted");
    admin_a
        .command("CREATE FLOW news.flows.emiliano.ar PUBLIC")
        .await
        .expect("public flow on A");

    // Unknown flows and failed subscriptions leave nothing behind.
    assert_eq!(
        code(
            admin_a
                .data("SUBSCRIBE nope.flows.unix.ar LOCAL nope.flows.emiliano.ar")
                .await
                .expect_err("unknown")
        ),
        550
    );
    assert_eq!(
        code(
            admin_a
                .command("DESCRIBE FLOW nope.flows.emiliano.ar")
                .await
                .expect_err("no half-created flow")
        ),
        550
    );

    // A subscribes to B's private flow (with its peer account), B to A's
    // public flow (anonymously), at the same time.
    let (a_to_b, b_to_a) = tokio::join!(
        eventually(Duration::from_secs(20), "A subscribes to B", || async {
            let mut c = a.admin().await;
            c.data("SUBSCRIBE time.flows.unix.ar LOCAL unix-time.flows.emiliano.ar")
                .await
                .ok()
        }),
        eventually(Duration::from_secs(20), "B subscribes to A", || async {
            let mut c = b.admin().await;
            c.data("SUBSCRIBE news.flows.emiliano.ar LOCAL emiliano-news.flows.unix.ar")
                .await
                .ok()
        }),
    );
    let copy_on_b = a_to_b.0[0].clone();
    assert!(copy_on_b.ends_with(".time.flows.unix.ar"), "{copy_on_b}");
    assert!(b_to_a.0[0].ends_with(".news.flows.emiliano.ar"));

    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 0..2000))
        .await
        .expect("written on B");
    admin_a
        .block("WRITE FLOW news.flows.emiliano.ar", events("n", 0..300))
        .await
        .expect("written on A");
    let expected: BTreeSet<String> = (0..2000).map(|i| format!("t-{i}")).collect();
    eventually(Duration::from_secs(60), "B's events reach A", || async {
        let mut c = a.admin().await;
        (ids(&mut c, "unix-time.flows.emiliano.ar").await == expected).then_some(())
    })
    .await;
    let expected_news: BTreeSet<String> = (0..300).map(|i| format!("n-{i}")).collect();
    eventually(Duration::from_secs(60), "A's events reach B", || async {
        let mut c = b.admin().await;
        (ids(&mut c, "emiliano-news.flows.unix.ar").await == expected_news).then_some(())
    })
    .await;

    // Both sides list it.
    let (subscribers, _) = admin_b
        .data("LIST SUBSCRIBERS time.flows.unix.ar")
        .await
        .expect("listed");
    assert_eq!(subscribers, [format!("{copy_on_b} emiliano")]);
    let (subscriptions, _) = admin_a.data("LIST SUBSCRIPTIONS").await.expect("listed");
    assert_eq!(subscriptions.len(), 1, "{subscriptions:?}");
    assert!(
        subscriptions[0].starts_with(&format!(
            "unix-time.flows.emiliano.ar time.flows.unix.ar {copy_on_b} remote+nats:"
        )) && subscriptions[0].ends_with(" running"),
        "{subscriptions:?}"
    );

    // Pause: B's new events wait; resume: they come, once.
    admin_a
        .command("PAUSE SUBSCRIPTION unix-time.flows.emiliano.ar")
        .await
        .expect("paused");
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 2000..2100))
        .await
        .expect("written");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ids(&mut admin_a, "unix-time.flows.emiliano.ar").await.len(),
        2000,
        "paused"
    );
    admin_a
        .command("RESUME SUBSCRIPTION unix-time.flows.emiliano.ar")
        .await
        .expect("resumed");
    eventually(
        Duration::from_secs(30),
        "the paused events arrive",
        || async {
            let mut c = a.admin().await;
            (ids(&mut c, "unix-time.flows.emiliano.ar").await.len() == 2100).then_some(())
        },
    )
    .await;

    // B revokes A's subscription: nothing more arrives, A shows it revoked.
    admin_b
        .command(&format!("REMOVE SUBSCRIBER {copy_on_b}"))
        .await
        .expect("removed");
    eventually(Duration::from_secs(15), "A sees the revocation", || async {
        let mut c = a.admin().await;
        let (subs, _) = c.data("LIST SUBSCRIPTIONS").await.ok()?;
        subs.iter().any(|s| s.contains(" revoked")).then_some(())
    })
    .await;
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 2100..2200))
        .await
        .expect("written after revocation");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ids(&mut admin_a, "unix-time.flows.emiliano.ar").await.len(),
        2100,
        "nothing arrives after revocation"
    );

    // B stops its subscription to A: A's copy is gone.
    let copy_on_a = b_to_a.0[0].clone();
    admin_b
        .command("STOP SUBSCRIPTION emiliano-news.flows.unix.ar")
        .await
        .expect("stopped");
    assert_eq!(
        code(
            admin_a
                .data(&format!("DESCRIBE FLOW {copy_on_a}"))
                .await
                .expect_err("copy removed at A")
        ),
        550
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_peer_password_is_a_clear_error() {
    let dns_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
        let mut accounts = Accounts::default();
        accounts.add("emiliano", "right", false).expect("account");
        accounts.save(&c.participant.state_dir).expect("saved");
        c.fnap.auth_failure_delay_ms = 10;
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
        c.peers = vec![PeerConfig {
            namespace: "flows.unix.ar".into(),
            username: Some("emiliano".into()),
            password: Some("wrong".into()),
            tls: PeerTls::Plain,
            hosts: vec!["fnaa.unix.ar".into()],
            ..PeerConfig::default()
        }];
    })
    .await;
    let mut admin_b = b.admin().await;
    admin_b
        .command("CREATE FLOW time.flows.unix.ar")
        .await
        .expect("created");
    let mut admin_a = a.admin().await;
    let err = eventually(Duration::from_secs(20), "the flow is published", || async {
        let mut c = a.admin().await;
        match c
            .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
            .await
        {
            Err(ClientError::Refused(reply)) if reply.code != 550 => Some(reply),
            _ => None,
        }
    })
    .await;
    assert_eq!(err.code, 554, "{err:?}");
    assert!(err.text.contains("authentication failed"), "{err:?}");
    assert_eq!(
        code(
            admin_a
                .command("DESCRIBE FLOW t.flows.emiliano.ar")
                .await
                .expect_err("nothing created")
        ),
        550
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_fnap_survives_a_restart_of_the_remote_host() {
    survives_a_restart_of_the_remote_host(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_through_the_remote_broker_survives_its_restart() {
    survives_a_restart_of_the_remote_host(true).await;
}

/// 10 000 events cross while B restarts, each once. With `embedded`, B
/// supervises its broker and issues broker credentials, so A pulls the
/// copy from B's broker (restarted with B); otherwise A reads it over FNAP.
async fn survives_a_restart_of_the_remote_host(embedded: bool) {
    let dns_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
        if embedded {
            c.nats.urls.clear();
        }
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
    })
    .await;
    b.admin()
        .await
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("created");
    eventually(Duration::from_secs(20), "A subscribes", || async {
        a.admin()
            .await
            .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
            .await
            .ok()
    })
    .await;
    let (subscriptions, _) = a
        .admin()
        .await
        .data("LIST SUBSCRIPTIONS")
        .await
        .expect("listed");
    let bridge = if embedded {
        " remote+nats:"
    } else {
        " remote:"
    };
    assert!(
        subscriptions.len() == 1 && subscriptions[0].contains(bridge),
        "{subscriptions:?}"
    );
    b.admin()
        .await
        .block("WRITE FLOW time.flows.unix.ar", events("t", 0..5000))
        .await
        .expect("first half");
    let b = b.restart().await;
    b.admin()
        .await
        .block("WRITE FLOW time.flows.unix.ar", events("t", 5000..10_000))
        .await
        .expect("second half");
    let expected: BTreeSet<String> = (0..10_000).map(|i| format!("t-{i}")).collect();
    eventually(Duration::from_secs(60), "every event reaches A", || async {
        let mut c = a.admin().await;
        (ids(&mut c, "t.flows.emiliano.ar").await == expected).then_some(())
    })
    .await;
    let (described, _) = a
        .admin()
        .await
        .data("DESCRIBE FLOW t.flows.emiliano.ar")
        .await
        .expect("described");
    assert!(
        described.contains(&"events=10000".to_owned()),
        "each event once: {described:?}"
    );
}

/// Errors keep their class end to end: B's broker goes down while A relays
/// B's flow. B's FNAP sessions stay up and answer 450 (try later) to what
/// needs the broker, never "no such ..."; A's relay retries, does not take
/// the outage for a revocation, and carries on once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_transient_for_commands_and_relays() {
    let dns_b = free_port();
    let mut b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
    })
    .await;
    let mut admin_b = b.admin().await;
    for command in [
        "CREATE FLOW time.flows.unix.ar PUBLIC",
        "CREATE FLOW out.flows.unix.ar",
    ] {
        admin_b.command(command).await.expect(command);
    }
    let bytes = std::fs::read(support::component("flow_passthrough")).expect("component");
    let digest = admin_b.put_component(&bytes).await.expect("uploaded");
    admin_b
        .block(
            "CREATE PROCESSOR copy-time",
            [
                "kind=bridge".to_owned(),
                format!("component={digest}"),
                "input=time.flows.unix.ar".to_owned(),
                "output=out.flows.unix.ar".to_owned(),
            ],
        )
        .await
        .expect("processor created");
    eventually(Duration::from_secs(20), "A subscribes", || async {
        a.admin()
            .await
            .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
            .await
            .ok()
    })
    .await;
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 0..1000))
        .await
        .expect("first events");
    let first: BTreeSet<String> = (0..1000).map(|i| format!("t-{i}")).collect();
    eventually(
        Duration::from_secs(60),
        "the first events reach A",
        || async {
            let mut c = a.admin().await;
            (ids(&mut c, "t.flows.emiliano.ar").await == first).then_some(())
        },
    )
    .await;

    b._nats.stop();
    for command in [
        "DESCRIBE FLOW time.flows.unix.ar",
        "DESCRIBE PROCESSOR copy-time",
        "PAUSE PROCESSOR copy-time",
        "DELETE PROCESSOR copy-time",
    ] {
        let refused = admin_b
            .data(command)
            .await
            .expect_err("nothing answers without the broker");
        assert_eq!(
            code(refused),
            450,
            "{command} during the outage is transient"
        );
    }
    // The relay has been failing all along; it must not have given up.
    let (subscriptions, _) = a
        .admin()
        .await
        .data("LIST SUBSCRIPTIONS")
        .await
        .expect("listed");
    assert!(
        subscriptions.len() == 1 && !subscriptions[0].contains("revoked"),
        "an outage is not a revocation: {subscriptions:?}"
    );

    b._nats.resume();
    eventually(Duration::from_secs(30), "B writes again", || async {
        b.admin()
            .await
            .block("WRITE FLOW time.flows.unix.ar", events("t", 1000..2000))
            .await
            .ok()
    })
    .await;
    let all: BTreeSet<String> = (0..2000).map(|i| format!("t-{i}")).collect();
    eventually(Duration::from_secs(60), "the relay resumes", || async {
        let mut c = a.admin().await;
        (ids(&mut c, "t.flows.emiliano.ar").await == all).then_some(())
    })
    .await;
    let (subscriptions, _) = a
        .admin()
        .await
        .data("LIST SUBSCRIPTIONS")
        .await
        .expect("listed");
    assert!(!subscriptions[0].contains("revoked"), "{subscriptions:?}");
    let (described, _) = b
        .admin()
        .await
        .data("DESCRIBE PROCESSOR copy-time")
        .await
        .expect("the processor was neither paused nor deleted by the outage");
    assert!(
        !described.iter().any(|l| l == "paused=true"),
        "{described:?}"
    );
}

/// B (`unix.ar`) runs the embedded broker, so it issues broker
/// credentials; A (`emiliano.ar`, tuned by `tune_a`) resolves through B's
/// name server.
async fn embedded_and_subscriber(tune_a: impl FnOnce(&mut Config)) -> (Participant, Participant) {
    let dns_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
        c.nats.urls.clear();
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
        tune_a(c);
    })
    .await;
    (b, a)
}

/// What the broker told a client it refused (`-ERR` lines).
#[derive(Clone, Default)]
struct Refusals(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Refusals {
    fn options(&self, user: &str, password: &str, inbox: &str) -> async_nats::ConnectOptions {
        self.watching(
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
                .custom_inbox_prefix(inbox),
        )
    }

    /// [`Refusals::options`] for a subscriber's credentials, whichever
    /// kind they are.
    fn options_for(
        &self,
        creds: &flowd_broker::grants::PullCredentials,
    ) -> async_nats::ConnectOptions {
        self.watching(creds.connect_options())
    }

    /// `options` that record what the broker refuses.
    fn watching(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let seen = self.clone();
        options.event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event
                    && let Ok(mut seen) = seen.0.lock()
                {
                    seen.push(e.to_string().to_lowercase());
                }
            }
        })
    }

    async fn wait_for(&self, what: &str) {
        eventually(Duration::from_secs(5), what, || async {
            let seen = self.0.lock().ok()?;
            seen.iter().any(|e| e.contains(what)).then_some(())
        })
        .await;
    }
}

/// A host that supervises its broker gives each subscriber a broker user
/// that can pull its copy and do nothing else; removing the subscriber
/// removes the user and closes its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_credentials_pull_only_their_copy_and_removal_revokes_them() {
    use async_nats::jetstream;

    let (b, a) = embedded_and_subscriber(|_| {}).await;
    let mut admin_b = b.admin().await;
    admin_b
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("public flow");
    admin_b
        .command("CREATE FLOW secret.flows.unix.ar")
        .await
        .expect("private flow");
    admin_b
        .block("WRITE FLOW secret.flows.unix.ar", events("s", 0..10))
        .await
        .expect("written");

    // A subscribes through DNS and pulls from B's broker.
    eventually(Duration::from_secs(20), "A subscribes", || async {
        a.admin()
            .await
            .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
            .await
            .ok()
    })
    .await;

    // Another subscriber, anonymous, subscribes as A's host does and gets
    // the credentials itself.
    let b_fnap = b.daemon.fnap_addr().expect("FNAP").to_string();
    let mut peer = Client::connect(&b_fnap, &Security::Plain)
        .await
        .expect("connects");
    peer.authenticate_anonymous().await.expect("anonymous");
    let (lines, _) = peer
        .data("SUBSCRIBE time.flows.unix.ar")
        .await
        .expect("subscribed");
    let copy = lines[0].clone();
    let creds = flowd::peers::pull_credentials(&lines)
        .expect("well formed")
        .expect("B issues broker credentials");
    assert_eq!(creds.stream, flow(&copy).stream());

    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 0..100))
        .await
        .expect("written");

    // The credentials pull the copy.
    let url = b.daemon.nats_urls()[0].clone();
    let refusals = Refusals::default();
    let client = refusals
        .options(&creds.user, &creds.password, &creds.inbox)
        .connect(url.clone())
        .await
        .expect("the subscriber's user is admitted");
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .api_prefix(&creds.api_prefix)
        .build(client.clone());
    let _: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&creds.consumer, &creds.stream)
        .await
        .expect("its own consumer");
    let pulled: BTreeSet<String> = pull(&url, &creds, 100).await.into_iter().collect();
    let expected: BTreeSet<String> = (0..100).map(|i| format!("t-{i}")).collect();
    assert_eq!(pulled, expected);

    // Everything else is refused: other streams, the host's records, new
    // consumers, other subjects, publishing.
    assert!(
        js.get_stream(flow("secret.flows.unix.ar").stream())
            .await
            .is_err(),
        "another flow's stream"
    );
    assert!(
        js.get_stream(flow("time.flows.unix.ar").stream())
            .await
            .is_err(),
        "the original flow"
    );
    assert!(
        js.get_key_value("flowd-subscriptions").await.is_err(),
        "the host's records"
    );
    let _sub = client.subscribe("flow.>").await.expect("sent");
    refusals
        .wait_for("permissions violation for subscription to \"flow.>\"")
        .await;
    client
        .publish("flow.time.flows.unix.ar", "forged".into())
        .await
        .expect("sent");
    client.flush().await.expect("flushed");
    refusals
        .wait_for("permissions violation for publish to \"flow.time.flows.unix.ar\"")
        .await;
    let (described, _) = admin_b
        .data("DESCRIBE FLOW time.flows.unix.ar")
        .await
        .expect("described");
    assert!(
        described.contains(&"events=100".to_owned()),
        "nothing forged: {described:?}"
    );

    // Without credentials, or with a wrong password, B's broker admits no
    // one.
    let anonymous = async_nats::connect(url.clone()).await;
    assert!(
        matches!(&anonymous, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
        "{anonymous:?}"
    );
    let wrong = Refusals::default()
        .options(&creds.user, "not-the-password", &creds.inbox)
        .connect(url.clone())
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");

    // Removing the subscriber closes its connection and refuses its user.
    admin_b
        .command(&format!("REMOVE SUBSCRIBER {copy}"))
        .await
        .expect("removed");
    // (the reply comes once the broker has reloaded its users)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(
        client.connection_state(),
        async_nats::connection::State::Connected,
        "the removed user's connection is closed"
    );
    let again = Refusals::default()
        .options(&creds.user, &creds.password, &creds.inbox)
        .connect(url.clone())
        .await;
    assert!(
        matches!(&again, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
        "{again:?}"
    );

    // A received the 100 events; once B removes A's copy, A shows the
    // subscription revoked and nothing more arrives.
    eventually(Duration::from_secs(30), "A has the events", || async {
        let mut c = a.admin().await;
        (ids(&mut c, "t.flows.emiliano.ar").await == expected).then_some(())
    })
    .await;
    let (subscriptions, _) = a
        .admin()
        .await
        .data("LIST SUBSCRIPTIONS")
        .await
        .expect("listed");
    let a_copy = subscriptions[0]
        .split(' ')
        .nth(2)
        .expect("copy column")
        .to_owned();
    admin_b
        .command(&format!("REMOVE SUBSCRIBER {a_copy}"))
        .await
        .expect("removed");
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 100..200))
        .await
        .expect("written after revocation");
    eventually(Duration::from_secs(10), "A sees the revocation", || async {
        let mut c = a.admin().await;
        let (subs, _) = c.data("LIST SUBSCRIPTIONS").await.ok()?;
        subs.iter()
            .any(|s| {
                s.contains(" revoked ") && s.contains("removed by the owner of time.flows.unix.ar")
            })
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ids(&mut a.admin().await, "t.flows.emiliano.ar").await,
        expected,
        "nothing arrives after revocation"
    );
}

/// `dig +short` against a server.
fn dig(port: u16, ty: &str, name: &str) -> String {
    let out = std::process::Command::new("dig")
        .args(["+short", "-p", &port.to_string(), "@127.0.0.1", ty, name])
        .output()
        .expect("dig (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_through_bind9_with_tsig() {
    let bind = support::Bind::start("unix.ar");
    let bind_addr = dns(bind.port);
    let key_file = bind.key_file.clone();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = None;
        c.fns.update = Some(flowd_fns::update::UpdateConfig {
            server: bind_addr,
            zone: "unix.ar".into(),
            key_name: None,
            key_secret: None,
            key_file: Some(key_file),
        });
    })
    .await;
    let fnap_port = b.daemon.fnap_addr().expect("FNAP").port();
    b.admin()
        .await
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("created");
    eventually(Duration::from_secs(20), "BIND9 has the flow", || async {
        (!dig(bind.port, "PTR", "time.flows.unix.ar").is_empty()).then_some(())
    })
    .await;
    // The records of section 4.1.2, as dig shows them.
    assert_eq!(
        dig(bind.port, "PTR", "time.flows.unix.ar"),
        "_flow._tcp.time.flows.unix.ar."
    );
    assert_eq!(
        dig(bind.port, "SRV", "_flow._tcp.time.flows.unix.ar"),
        format!("10 10 {fnap_port} fnaa.unix.ar.")
    );
    assert_eq!(
        dig(bind.port, "TXT", "_flow._tcp.time.flows.unix.ar"),
        "\"tls\""
    );
    assert!(dig(bind.port, "SRV", "_queue._flow._tcp.time.flows.unix.ar").starts_with("10 10 "));
    assert_eq!(
        dig(bind.port, "TXT", "_queue._flow._tcp.time.flows.unix.ar"),
        "\"broker-type=nats\""
    );
    assert_eq!(dig(bind.port, "A", "fnaa.unix.ar"), "127.0.0.1");
    assert_eq!(
        dig(bind.port, "SRV", "_fnaa._tcp.flows.unix.ar"),
        format!("10 10 {fnap_port} fnaa.unix.ar.")
    );

    // Another participant resolving through BIND9 subscribes.
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(bind_addr);
    })
    .await;
    a.admin()
        .await
        .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
        .await
        .expect("subscribed through BIND9");
    b.admin()
        .await
        .block("WRITE FLOW time.flows.unix.ar", events("t", 0..500))
        .await
        .expect("written");
    let expected: BTreeSet<String> = (0..500).map(|i| format!("t-{i}")).collect();
    eventually(Duration::from_secs(60), "the events reach A", || async {
        let mut c = a.admin().await;
        (ids(&mut c, "t.flows.emiliano.ar").await == expected).then_some(())
    })
    .await;

    // An FNAA that is down (its records still in DNS) is a clear error,
    // and A creates nothing.
    b.admin()
        .await
        .command("CREATE FLOW later.flows.unix.ar PUBLIC")
        .await
        .expect("created");
    eventually(
        Duration::from_secs(20),
        "BIND9 has the second flow",
        || async { (!dig(bind.port, "PTR", "later.flows.unix.ar").is_empty()).then_some(()) },
    )
    .await;

    // Deleting the flow removes its records from BIND9.
    b.admin()
        .await
        .command("DELETE FLOW time.flows.unix.ar")
        .await
        .expect("deleted");
    eventually(Duration::from_secs(20), "BIND9 drops the flow", || async {
        dig(bind.port, "PTR", "time.flows.unix.ar")
            .is_empty()
            .then_some(())
    })
    .await;
    let Participant { daemon, .. } = b;
    daemon.shutdown().await;
    let down = a
        .admin()
        .await
        .data("SUBSCRIBE later.flows.unix.ar LOCAL later.flows.emiliano.ar")
        .await
        .expect_err("B is down");
    assert_eq!(code(down), 450);
    assert_eq!(
        code(
            a.admin()
                .await
                .command("DESCRIBE FLOW later.flows.emiliano.ar")
                .await
                .expect_err("nothing created")
        ),
        550
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_check_the_tls_name_of_the_agent_they_found() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = support::issue_certificate(pki.path(), &["someone-else.example"]);
    let dns_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
        c.fnap.tls.cert = Some(cert.clone());
        c.fnap.tls.key = Some(key.clone());
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
        c.peers = vec![PeerConfig {
            namespace: "flows.unix.ar".into(),
            ca: Some(ca.clone()),
            hosts: vec!["fnaa.unix.ar".into()],
            ..PeerConfig::default()
        }];
    })
    .await;
    b.admin()
        .await
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("created");
    let refused = eventually(Duration::from_secs(20), "the flow is published", || async {
        match a
            .admin()
            .await
            .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
            .await
        {
            Err(ClientError::Refused(reply)) if reply.code != 550 => Some(reply),
            _ => None,
        }
    })
    .await;
    assert_eq!(refused.code, 450, "{refused:?}");
    assert!(
        refused.text.contains("TLS"),
        "the reason is named: {refused:?}"
    );
    assert_eq!(
        code(
            a.admin()
                .await
                .command("DESCRIBE FLOW t.flows.emiliano.ar")
                .await
                .expect_err("nothing created")
        ),
        550
    );
}

/// `tls = "implicit"`: the session is TLS from the first byte, to the
/// port the entry names, the certificate checked against the agent DNS
/// named; a subscription through it works, and the same entry pointed at
/// the plain-text port fails with a TLS reason rather than speaking clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_may_speak_implicit_tls() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = support::issue_certificate(pki.path(), &["fnaa.unix.ar"]);
    let dns_b = free_port();
    let tls_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
        c.fnap.tls.cert = Some(cert.clone());
        c.fnap.tls.key = Some(key.clone());
        c.fnap.tls_listen = Some(([127, 0, 0, 1], tls_b).into());
    })
    .await;
    let peer = |port: Option<u16>| PeerConfig {
        namespace: "flows.unix.ar".into(),
        ca: Some(ca.clone()),
        tls: PeerTls::Implicit,
        tls_port: port,
        hosts: vec!["fnaa.unix.ar".into()],
        ..PeerConfig::default()
    };
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
        c.peers = vec![peer(Some(tls_b))];
    })
    .await;
    b.admin()
        .await
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("created");
    eventually(
        Duration::from_secs(20),
        "subscribed over implicit TLS",
        || async {
            a.admin()
                .await
                .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
                .await
                .ok()
        },
    )
    .await;

    let c = participant_with("fnaa.example.org", "flows.example.org", |c| {
        c.fns.nameserver = Some(dns(dns_b));
        c.peers = vec![peer(None)];
    })
    .await;
    let refused = c
        .admin()
        .await
        .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.example.org")
        .await
        .expect_err("a plain-text port does not speak TLS");
    let text = refused.to_string();
    assert_eq!(code(refused), 450, "{text}");
    assert!(text.contains("TLS") || text.contains("tls"), "{text}");
}

/// A pipeline whose input is another participant's flow: applying it
/// subscribes through DNS, events cross over and through the steps, and
/// deleting the pipeline ends the subscription on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_reads_a_remote_flow_through_a_subscription() {
    use flowd::api::client::{ApiClient, Credentials};
    use flowd::api::proto;
    let dns_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
        c.api.listen = Some(([127, 0, 0, 1], 0).into());
        c.console.listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let mut admin_b = b.admin().await;
    let mut admin_a = a.admin().await;
    admin_b
        .command("CREATE FLOW weather.flows.unix.ar PUBLIC")
        .await
        .expect("public flow on B");
    admin_a
        .command("CREATE FLOW weather.flows.emiliano.ar")
        .await
        .expect("output on A");
    let token = std::fs::read_to_string(a.state.path().join("admin.token")).expect("token");
    let api = ApiClient::connect(
        &format!("http://{}", a.daemon.api_addr().expect("API")),
        &Credentials::Token(token.trim().to_owned()),
        None,
    )
    .await
    .expect("API");
    let transform = std::fs::read(support::component("flow_transform")).expect("built");
    api.push("transform", "1.0.0", transform, |_| {})
        .await
        .expect("pushed");
    let manifest = "\
name: weather
inputs:
  remote: flow://weather.flows.unix.ar
outputs:
  local: flow://weather.flows.emiliano.ar
steps:
  - name: tag
    component: transform@1.0.0
    from: remote
    to: local
    config: {set.data.via: emiliano}
";
    let applied = eventually(Duration::from_secs(20), "the pipeline applies", || async {
        api.pipelines()
            .apply(proto::ApplyRequest {
                manifest: manifest.into(),
                dry_run: false,
            })
            .await
            .ok()
    })
    .await
    .into_inner();
    assert_eq!(applied.created, ["tag"]);
    admin_b
        .block("WRITE FLOW weather.flows.unix.ar", events("w", 0..200))
        .await
        .expect("written on B");
    let want: BTreeSet<String> = (0..200).map(|i| format!("w-{i}")).collect();
    eventually(
        Duration::from_secs(60),
        "events through the pipeline",
        || async {
            let mut c = a.admin().await;
            (ids(&mut c, "weather.flows.emiliano.ar").await == want).then_some(())
        },
    )
    .await;
    let mut tagged = 0;
    admin_a
        .read("READ FLOW weather.flows.emiliano.ar FROM START", |line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("JSON");
            assert_eq!(event["data"]["via"], "emiliano", "{line}");
            tagged += 1;
            true
        })
        .await
        .expect("read");
    assert_eq!(tagged, 200);
    // The console draws the remote input as such, with where it comes from.
    let console = a.daemon.console_addr().expect("console");
    let said = tokio::task::spawn_blocking(move || {
        support::browse(
            console,
            token.trim(),
            "remote",
            &[
                ("PIPELINE", "weather".to_owned()),
                ("REMOTE", "weather.flows.unix.ar".to_owned()),
            ],
        )
    })
    .await
    .expect("joined");
    assert!(said.contains("ok remote remote"), "{said}");
    // Applying again changes nothing and subscribes no second time.
    let again = api
        .pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest.into(),
            dry_run: false,
        })
        .await
        .expect("re-applied")
        .into_inner();
    assert_eq!(again.unchanged, ["tag"]);
    let subscribers = |text: String| text.lines().filter(|l| l.contains("weather")).count();
    let listed = admin_b
        .data("LIST SUBSCRIBERS weather.flows.unix.ar")
        .await
        .expect("subscribers");
    assert_eq!(subscribers(listed.0.join("\n")), 1, "{listed:?}");

    api.pipelines()
        .delete(proto::PipelineRef {
            name: "weather".into(),
        })
        .await
        .expect("deleted");
    let listed = admin_b
        .data("LIST SUBSCRIBERS weather.flows.unix.ar")
        .await
        .expect("subscribers");
    assert_eq!(subscribers(listed.0.join("\n")), 0, "{listed:?}");
}

/// Two network namespaces joined by a veth pair (10.231.0.1 and
/// 10.231.0.2), removed on drop.
struct NetPair {
    a: String,
    b: String,
}

impl NetPair {
    fn create() -> NetPair {
        let n = std::process::id() % 100_000;
        let pair = NetPair {
            a: format!("flowd-a{n}"),
            b: format!("flowd-b{n}"),
        };
        let (va, vb) = (format!("fva{n}"), format!("fvb{n}"));
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &pair.a]);
        ip(&["link", "set", &vb, "netns", &pair.b]);
        for (ns, dev, addr) in [
            (&pair.a, &va, "10.231.0.1/24"),
            (&pair.b, &vb, "10.231.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// `flowd serve` inside a network namespace, with its embedded nats-server.
struct NsHost {
    _child: support::KillOnDrop,
    state: tempfile::TempDir,
    ns: String,
    fnap: String,
}

impl NsHost {
    fn start(
        ns: &str,
        ip: &str,
        fqdn: &str,
        namespace: &str,
        nameserver: &str,
        extra: &str,
    ) -> NsHost {
        let state = tempfile::tempdir().expect("tempdir");
        let config = state.path().join("flowd.toml");
        std::fs::write(
            &config,
            format!(
                "[participant]\nfqdn = \"{fqdn}\"\nnamespaces = [\"{namespace}\"]\nstate_dir = \"{}\"\n\
                 [metrics]\nlisten = \"off\"\n[api]\nlisten = \"off\"\n\
                 [fnap]\nlisten = \"{ip}:61000\"\ntls_listen = \"off\"\nplain_auth_from = [\"10.231.0.0/24\"]\n\
                 [fns]\nlisten = \"{ip}:5353\"\nnameserver = \"{nameserver}\"\nttl = 1\n{extra}",
                state.path().display()
            ),
        )
        .expect("config written");
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                env!("CARGO_BIN_EXE_flowd"),
                "serve",
                "--config",
            ])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("flowd starts in its namespace");
        let host_file = state.path().join("host.json");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !host_file.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "flowd in {ns} never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        NsHost {
            _child: support::KillOnDrop(child),
            state,
            ns: ns.to_owned(),
            fnap: format!("{ip}:61000"),
        }
    }

    /// Runs `flow` in the host's namespace as its local administrator.
    fn flow(&self, args: &[&str]) -> std::process::Output {
        let token = std::fs::read_to_string(self.state.path().join("admin.token")).expect("token");
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_flow")])
            .args([
                "--address",
                &self.fnap,
                "--user",
                "local",
                "--password",
                token.trim(),
            ])
            .args(args)
            .output()
            .expect("flow runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.flow(args);
        assert!(
            out.status.success(),
            "flow {args:?} in {}: {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The participants share nothing but DNS and routed TCP: each in a network
/// namespace of its own with its own broker, joined by a veth pair.
#[test]
fn participants_in_separate_network_namespaces_subscribe_through_dns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root (CI runs as root)");
        return;
    }
    let net = NetPair::create();
    let b = NsHost::start(
        &net.b,
        "10.231.0.2",
        "fnaa.unix.ar",
        "flows.unix.ar",
        "10.231.0.1:5353",
        "",
    );
    // B's broker listens beyond loopback, so it speaks TLS with B's
    // certificate, which A trusts for B's namespace.
    let a = NsHost::start(
        &net.a,
        "10.231.0.1",
        "fnaa.emiliano.ar",
        "flows.emiliano.ar",
        "10.231.0.2:5353",
        &format!(
            "[[peers]]\nnamespace = \"flows.unix.ar\"\nhosts = [\"fnaa.unix.ar\"]\nca = \"{}\"\n",
            b.state.path().join("tls/cert.pem").display()
        ),
    );
    b.ok(&["create", "flow", "news.flows.unix.ar", "--public"]);
    // A knows only the flow's name: DNS (B's name service, across the
    // veth) tells it where B's FNAA is.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = a.flow(&[
            "subscribe",
            "news.flows.unix.ar",
            "--local",
            "news.flows.emiliano.ar",
        ]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "subscription never succeeded: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let lines = events("x", 0..500).join("\n");
    let file = a.state.path().join("events.jsonl");
    std::fs::write(&file, lines).expect("events file");
    b.ok(&[
        "write",
        "news.flows.unix.ar",
        "-f",
        file.to_str().unwrap_or_default(),
    ]);
    let want: BTreeSet<String> = (0..500).map(|i| format!("x-{i}")).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let read = a.ok(&["read", "news.flows.emiliano.ar", "--from-start"]);
        let got: BTreeSet<String> = read
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 500 events crossed",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each host runs in its own namespace (and talks to the other only
    // across the veth).
    for host in [&a, &b] {
        let out = std::process::Command::new("ip")
            .args(["netns", "identify", &host._child.0.id().to_string()])
            .output()
            .expect("ip netns identify");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), host.ns);
    }
    // A pulled the events from B's broker, across the veth, with the
    // credentials B issued for this subscription.
    let listed = a.ok(&["get", "subscriptions"]);
    assert!(listed.contains("news.flows.unix.ar"), "{listed}");
    assert!(listed.contains("remote+nats:10.231.0.2:61000"), "{listed}");
}

/// An administrator session with a host started from `state`.
async fn admin_of(daemon: &Daemon, state: &std::path::Path) -> Client {
    let addr = daemon.fnap_addr().expect("FNAP").to_string();
    support::admin(&addr, state).await
}

/// The subscribing participant runs two hosts on its broker: the relay of a
/// remote subscription runs on one of them, under a lease; when that host
/// stops, the other takes the relay over and the events keep coming, each
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_takes_the_relay_of_a_remote_subscription_over() {
    let (b, a) = embedded_and_subscriber(|c| {
        c.cluster.host_id = Some("a-1".into());
        c.cluster.heartbeat_ms = 200;
        c.cluster.failover_ms = 1000;
    })
    .await;
    let state2 = tempfile::tempdir().expect("tempdir");
    let mut config2 = a.config.clone();
    config2.participant.state_dir = state2.path().to_owned();
    config2.cluster.host_id = Some("a-2".into());
    let a2 = Daemon::start(config2).await.expect("second host starts");

    b.admin()
        .await
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("created");
    eventually(Duration::from_secs(20), "A subscribes", || async {
        a.admin()
            .await
            .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
            .await
            .ok()
    })
    .await;
    let broker = flowd_broker::Broker::connect(&a.config.nats.urls, "test")
        .await
        .expect("A's broker");
    let leases = eventually(Duration::from_secs(10), "the leases bucket", || async {
        broker
            .jetstream()
            .get_key_value(flowd_core::buckets::LEASES)
            .await
            .ok()
    })
    .await;
    let relay_holder = || async {
        let mut keys = leases.keys().await.ok()?;
        let mut held = Vec::new();
        while let Some(Ok(key)) = futures::StreamExt::next(&mut keys).await {
            if key.starts_with("relay-")
                && let Ok(Some(host)) = leases.get(&key).await
            {
                held.push(String::from_utf8_lossy(&host).into_owned());
            }
        }
        (held.len() == 1).then(|| held[0].clone())
    };
    let holder = eventually(Duration::from_secs(10), "one host holds the relay", || {
        relay_holder()
    })
    .await;
    b.admin()
        .await
        .block("WRITE FLOW time.flows.unix.ar", events("t", 0..2000))
        .await
        .expect("first half");
    let first: BTreeSet<String> = (0..2000).map(|i| format!("t-{i}")).collect();
    eventually(
        Duration::from_secs(60),
        "the first half reaches A",
        || async {
            let mut c = admin_of(&a2, state2.path()).await;
            (ids(&mut c, "t.flows.emiliano.ar").await == first).then_some(())
        },
    )
    .await;

    // The holder stops; the other host takes the relay over.
    let Participant {
        _nats,
        state: state1,
        daemon: a1,
        config: _,
    } = a;
    let (survivor, survivor_state) = if holder == "a-1" {
        a1.shutdown().await;
        (a2, state2.path().to_owned())
    } else {
        a2.shutdown().await;
        (a1, state1.path().to_owned())
    };
    let other = if holder == "a-1" { "a-2" } else { "a-1" };
    eventually(
        Duration::from_secs(15),
        "the other host takes the relay",
        || async { (relay_holder().await.as_deref() == Some(other)).then_some(()) },
    )
    .await;
    b.admin()
        .await
        .block("WRITE FLOW time.flows.unix.ar", events("t", 2000..4000))
        .await
        .expect("second half");
    let all: BTreeSet<String> = (0..4000).map(|i| format!("t-{i}")).collect();
    eventually(Duration::from_secs(60), "every event reaches A", || async {
        let mut c = admin_of(&survivor, &survivor_state).await;
        (ids(&mut c, "t.flows.emiliano.ar").await == all).then_some(())
    })
    .await;
    let (described, _) = admin_of(&survivor, &survivor_state)
        .await
        .data("DESCRIBE FLOW t.flows.emiliano.ar")
        .await
        .expect("described");
    assert!(
        described.contains(&"events=4000".to_owned()),
        "each event once: {described:?}"
    );
    drop(state1);
}

/// A stream's name, message count and last sequence, and (for a bucket)
/// its records.
type StreamSnapshot = (String, u64, u64, Vec<(String, Vec<u8>)>);

/// Everything of the host's account a subscriber could touch: each stream
/// (flows and buckets) with its message count and last sequence, and every
/// record of every bucket.
async fn host_snapshot(daemon: &Daemon) -> Vec<StreamSnapshot> {
    use futures::StreamExt;
    let js = daemon.broker().jetstream();
    let mut names: Vec<String> = Vec::new();
    let mut list = js.stream_names();
    while let Some(name) = list.next().await {
        names.push(name.expect("stream name"));
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let mut stream = js.get_stream(&name).await.expect("stream");
        let state = stream.info().await.expect("info").state.clone();
        let mut records = Vec::new();
        if let Some(bucket) = name.strip_prefix("KV_") {
            let kv = js.get_key_value(bucket).await.expect("bucket");
            let mut keys: Vec<String> = Vec::new();
            let mut stream = kv.keys().await.expect("keys");
            while let Some(key) = stream.next().await {
                keys.push(key.expect("key"));
            }
            keys.sort();
            for key in keys {
                let value = kv.get(&key).await.expect("get").unwrap_or_default();
                records.push((key, value.to_vec()));
            }
        }
        if name == flowd_broker::logs::STREAM {
            for sequence in state.first_sequence..=state.last_sequence {
                if let Ok(m) = stream.get_raw_message(sequence).await {
                    records.push((sequence.to_string(), m.payload.to_vec()));
                }
            }
        }
        out.push((name, state.messages, state.last_sequence, records));
    }
    out
}

/// The subscriber's broker credentials are confined to its own account:
/// whatever reply subject it names on the requests it may send, and
/// whatever else it publishes, subscribes to or creates, the host's flows
/// and buckets stay exactly as they were; it cannot open more connections
/// than its account allows; and its own copy still flows, every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_credential_cannot_reach_the_host_account() {
    let (b, _a) = embedded_and_subscriber(|_| {}).await;
    let mut admin_b = b.admin().await;
    let ((_, honest), (_, attacker)) = two_subscribers(&b, &mut admin_b).await;
    let url = b.daemon.nats_urls()[0].clone();
    let limit = b.config.nats.subscribers.connections as usize;
    attack(&b.daemon, &url, &attacker, &honest, limit).await;

    // The honest subscriber pulls its copy: the 50 events and 10 000 more,
    // each once.
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 50..10_050))
        .await
        .expect("written");
    let expected: Vec<String> = (0..10_050).map(|i| format!("t-{i}")).collect();
    assert_eq!(
        pull(&url, &honest, expected.len()).await,
        expected,
        "every event once, in order"
    );
}

/// B's public flow `time` (50 events) with two anonymous subscribers, an
/// honest one and an attacker, each with its copy (fed) and broker
/// credentials; and the private flow `secret` (10 events).
async fn two_subscribers(
    b: &Participant,
    admin_b: &mut Client,
) -> (
    (String, flowd_broker::grants::PullCredentials),
    (String, flowd_broker::grants::PullCredentials),
) {
    admin_b
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("public flow");
    admin_b
        .command("CREATE FLOW secret.flows.unix.ar")
        .await
        .expect("private flow");
    admin_b
        .block("WRITE FLOW secret.flows.unix.ar", events("s", 0..10))
        .await
        .expect("written");
    let b_fnap = b.daemon.fnap_addr().expect("FNAP").to_string();
    let subscribe = || async {
        let mut peer = Client::connect(&b_fnap, &Security::Plain)
            .await
            .expect("connects");
        peer.authenticate_anonymous().await.expect("anonymous");
        let (lines, _) = peer
            .data("SUBSCRIBE time.flows.unix.ar")
            .await
            .expect("subscribed");
        let creds = flowd::peers::pull_credentials(&lines)
            .expect("well formed")
            .expect("B issues broker credentials");
        (lines[0].clone(), creds)
    };
    let honest = subscribe().await;
    let attacker = subscribe().await;
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 0..50))
        .await
        .expect("written");
    // Both copies have the 50 events before anything else.
    eventually(Duration::from_secs(20), "the copies are fed", || async {
        let js = b.daemon.broker().jetstream();
        let mut all = true;
        for stream in [&honest.1.stream, &attacker.1.stream] {
            let mut s = js.get_stream(stream).await.ok()?;
            all &= s.info().await.ok()?.state.messages == 50;
        }
        all.then_some(())
    })
    .await;
    (honest, attacker)
}

/// With `attacker`'s credentials, tries everything it should not be able
/// to do on the host's broker at `url` (reply subjects into the host's
/// account, forbidden publishes and subscriptions, streams of its own,
/// more than `limit` connections) and checks the host's streams and
/// buckets are unchanged. `honest` is another subscriber, whose inbox is
/// one of the targets.
async fn attack(
    daemon: &Daemon,
    url: &str,
    attacker: &flowd_broker::grants::PullCredentials,
    honest: &flowd_broker::grants::PullCredentials,
    limit: usize,
) {
    use async_nats::jetstream;
    let url = url.to_owned();
    let before = host_snapshot(daemon).await;
    let refusals = Refusals::default();
    let client = refusals
        .options_for(attacker)
        .connect(url.clone())
        .await
        .expect("the attacker's user is admitted");
    let next = format!(
        "{}.CONSUMER.MSG.NEXT.{}.{}",
        attacker.api_prefix, attacker.stream, attacker.consumer
    );
    let info = format!(
        "{}.CONSUMER.INFO.{}.{}",
        attacker.api_prefix, attacker.stream, attacker.consumer
    );
    // Reply subjects naming the host's flows, each bucket's records, the
    // JetStream API, the system account, the host's and the honest
    // subscriber's inboxes.
    let mut targets = vec![
        flow("secret.flows.unix.ar").subject(),
        flow("time.flows.unix.ar").subject(),
        format!("flow.{}", flow(&format!("x.{}", "time.flows.unix.ar"))),
        "$JS.API.STREAM.CREATE.EVIL".to_owned(),
        format!(
            "$JS.API.STREAM.DELETE.{}",
            flow("secret.flows.unix.ar").stream()
        ),
        format!(
            "$JS.API.STREAM.PURGE.{}",
            flow("secret.flows.unix.ar").stream()
        ),
        "$JS.API.INFO".to_owned(),
        "$SYS.REQ.SERVER.PING".to_owned(),
        "$SYS.REQ.ACCOUNT.FLOWD.CONNZ".to_owned(),
        "_INBOX.host.1".to_owned(),
        format!("{}.x", honest.inbox),
        next.clone(),
        format!(
            "$JS.ACK.{}.{}.1.1.1.1.1",
            attacker.stream, attacker.consumer
        ),
    ];
    for (_, _, _, records) in &before {
        for (key, _) in records {
            for (name, ..) in &before {
                if let Some(bucket) = name.strip_prefix("KV_") {
                    targets.push(format!("$KV.{bucket}.{key}"));
                }
            }
        }
    }
    targets.push("$KV.flowd-namespaces.flows.unix.ar".to_owned());
    targets.push(flowd_broker::logs::subject("forged"));
    targets.sort();
    targets.dedup();
    for target in &targets {
        client
            .publish_with_reply(next.clone(), target.clone(), r#"{"batch":3}"#.into())
            .await
            .expect("sent");
        client
            .publish_with_reply(info.clone(), target.clone(), "".into())
            .await
            .expect("sent");
    }
    // Subjects it may not publish or subscribe to.
    let host_next = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        attacker.stream, attacker.consumer
    );
    for subject in [
        "flow.secret.flows.unix.ar",
        "$KV.flowd-namespaces.flows.unix.ar",
        "$JS.API.STREAM.CREATE.EVIL",
        "$SYS.REQ.SERVER.PING",
        &host_next,
    ] {
        client
            .publish(subject.to_owned(), "forged".into())
            .await
            .expect("sent");
    }
    for subject in ["flow.>", "$KV.>", "$JS.API.>", "$SYS.>"] {
        let _ = client.subscribe(subject).await;
    }
    client.flush().await.expect("flushed");
    refusals
        .wait_for("permissions violation for publish to \"flow.secret.flows.unix.ar\"")
        .await;
    refusals
        .wait_for("permissions violation for subscription to \"$sys.>\"")
        .await;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone());
    assert!(
        js.create_stream(jetstream::stream::Config {
            name: "EVIL".into(),
            subjects: vec!["evil.>".into()],
            ..Default::default()
        })
        .await
        .is_err(),
        "no stream of its own"
    );
    assert!(
        js.get_stream(flow("secret.flows.unix.ar").stream())
            .await
            .is_err(),
        "another flow's stream"
    );
    // More connections than its account allows are refused.
    let mut extra = Vec::new();
    let mut refused = 0;
    for _ in 0..limit + 3 {
        match Refusals::default()
            .options_for(attacker)
            .connect(url.clone())
            .await
        {
            Ok(c) => {
                // A connection over the limit is closed once admitted.
                if c.flush().await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if c.connection_state() == async_nats::connection::State::Connected {
                    extra.push(c);
                } else {
                    refused += 1;
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        extra.len() < limit,
        "at most {limit} connections at once, with the first one: {} more admitted",
        extra.len()
    );
    assert!(refused >= 3, "{refused} refused");
    drop(extra);
    // Let whatever the server would deliver arrive, then compare.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = host_snapshot(daemon).await;
    let names = |s: &[StreamSnapshot]| s.iter().map(|(n, ..)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&before),
        names(&after),
        "no stream created or deleted"
    );
    // Heartbeats, leases and processor status change on their own: there,
    // no record may hold what a reply would have carried (JetStream's
    // answers, pulled events).
    // The processor log grows on its own too.
    let volatile = [
        "KV_flowd-agents",
        "KV_flowd-leases",
        "KV_flowd-status",
        flowd_broker::logs::STREAM,
    ];
    for (was, now) in before.iter().zip(&after) {
        if volatile.contains(&was.0.as_str()) {
            for (key, value) in &now.3 {
                let text = String::from_utf8_lossy(value);
                assert!(
                    !text.contains("io.nats.jetstream") && !text.contains("\"t-"),
                    "{} {key} holds a reply: {text}",
                    now.0
                );
            }
        } else {
            assert_eq!(was, now, "the host's {} is unchanged", was.0);
        }
    }
}

/// Pulls `count` events of a subscriber's copy with its credentials,
/// acknowledging each; their ids in the order they came.
async fn pull(
    url: &str,
    creds: &flowd_broker::grants::PullCredentials,
    count: usize,
) -> Vec<String> {
    use async_nats::jetstream;
    use futures::StreamExt;
    let client = Refusals::default()
        .options_for(creds)
        .connect(url.to_owned())
        .await
        .expect("the subscriber is admitted");
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .api_prefix(&creds.api_prefix)
        .build(client.clone());
    let consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&creds.consumer, &creds.stream)
        .await
        .expect("its own consumer");
    let mut pulled = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pulled.len() < count && tokio::time::Instant::now() < deadline {
        let mut batch = consumer
            .batch()
            .max_messages(256)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("pull");
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("ce-id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            pulled.push(id);
            message.ack().await.expect("acknowledged");
        }
    }
    pulled
}

/// Every way access is taken away cuts the subscriber's broker credential
/// off by the time the command is answered: its connection is closed, a
/// new one is refused, and nothing written after it arrives. Prints the
/// cut-off times (command sent to connection closed) for
/// docs/federation.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revocation_path_cuts_the_broker_credential_off() {
    let (b, _a) = embedded_and_subscriber(|_| {}).await;
    let url = b.daemon.nats_urls()[0].clone();
    let b_fnap = b.daemon.fnap_addr().expect("FNAP").to_string();
    let mut admin_b = b.admin().await;
    let tries: usize = std::env::var("FLOWD_REVOCATION_TRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut accounts = Accounts::load(b.state.path()).expect("accounts");
    for i in 0..tries {
        accounts
            .add(&format!("gone{i}"), "pw-gone-123456", false)
            .expect("account");
    }
    accounts
        .add("reader", "pw-reader-123456", false)
        .expect("account");
    accounts.save(b.state.path()).expect("saved");
    // The host shares its accounts through the broker before they are used.
    let shared = b
        .daemon
        .broker()
        .jetstream()
        .get_key_value("flowd-accounts")
        .await
        .expect("shared accounts");
    eventually(
        Duration::from_secs(10),
        "the accounts are shared",
        || async {
            shared
                .get(format!("gone{}", tries - 1))
                .await
                .ok()
                .flatten()
                .map(drop)
        },
    )
    .await;
    admin_b
        .command("CREATE NAMESPACE private.flows.unix.ar")
        .await
        .expect("namespace");
    admin_b
        .command("GRANT reader READ ON private.flows.unix.ar")
        .await
        .expect("granted");
    for i in 0..tries {
        admin_b
            .command(&format!("GRANT gone{i} READ ON private.flows.unix.ar"))
            .await
            .expect("granted");
    }

    // Subscribes as `user` (anonymous without) and connects to the broker.
    let subscribe = |user: Option<(String, String)>, flow: String| {
        let b_fnap = b_fnap.clone();
        let url = url.clone();
        async move {
            let mut peer = Client::connect(&b_fnap, &Security::Plain)
                .await
                .expect("connects");
            match &user {
                Some((u, p)) => peer.authenticate_plain(u, p).await.expect("logs in"),
                None => peer.authenticate_anonymous().await.expect("anonymous"),
            };
            let (lines, _) = peer
                .data(&format!("SUBSCRIBE {flow}"))
                .await
                .expect("subscribed");
            let creds = flowd::peers::pull_credentials(&lines)
                .expect("well formed")
                .expect("credentials");
            let client = Refusals::default()
                .options(&creds.user, &creds.password, &creds.inbox)
                .connect(url)
                .await
                .expect("admitted");
            let js = async_nats::jetstream::with_prefix(client.clone(), &creds.api_prefix);
            let _: async_nats::jetstream::consumer::PullConsumer = js
                .get_consumer_from_stream(&creds.consumer, &creds.stream)
                .await
                .expect("its consumer");
            (peer, lines[0].clone(), creds, client)
        }
    };
    // Waits until `client` is cut off; checks a new connection is refused.
    let cut_off = |creds: flowd_broker::grants::PullCredentials,
                   client: async_nats::Client,
                   since: std::time::Instant| {
        let url = url.clone();
        async move {
            let deadline = since + Duration::from_secs(10);
            while client.connection_state() == async_nats::connection::State::Connected {
                assert!(std::time::Instant::now() < deadline, "still connected");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let took = since.elapsed();
            let again = Refusals::default()
                .options(&creds.user, &creds.password, &creds.inbox)
                .connect(url)
                .await;
            assert!(
                matches!(&again, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
                "{again:?}"
            );
            took
        }
    };
    let mut report = Vec::new();
    for (n, path) in [
        "REMOVE SUBSCRIBER",
        "UNSUBSCRIBE",
        "REVOKE",
        "DELETE FLOW",
        "FLOW MADE PRIVATE",
        "ACCOUNT REMOVED",
    ]
    .into_iter()
    .enumerate()
    {
        let mut times = Vec::new();
        for i in 0..tries {
            let (user, flow_name, public) = match path {
                "REVOKE" => (
                    Some(("reader".to_owned(), "pw-reader-123456".to_owned())),
                    format!("r{i}.private.flows.unix.ar"),
                    false,
                ),
                "ACCOUNT REMOVED" => (
                    Some((format!("gone{i}"), "pw-gone-123456".to_owned())),
                    format!("g{i}.private.flows.unix.ar"),
                    false,
                ),
                _ => (None, format!("p{i}.n{n}.flows.unix.ar"), true),
            };
            admin_b
                .command(&format!(
                    "CREATE FLOW {flow_name}{}",
                    if public { " PUBLIC" } else { "" }
                ))
                .await
                .expect("flow");
            if path == "REVOKE" {
                admin_b
                    .command("GRANT reader READ ON private.flows.unix.ar")
                    .await
                    .expect("granted again");
            }
            let (mut peer, copy, creds, client) = subscribe(user, flow_name.clone()).await;
            let since = std::time::Instant::now();
            match path {
                "REMOVE SUBSCRIBER" => admin_b
                    .command(&format!("REMOVE SUBSCRIBER {copy}"))
                    .await
                    .map(drop),
                "UNSUBSCRIBE" => peer.command(&format!("UNSUBSCRIBE {copy}")).await.map(drop),
                "REVOKE" => admin_b
                    .command("REVOKE reader ON private.flows.unix.ar")
                    .await
                    .map(drop),
                "DELETE FLOW" => admin_b
                    .command(&format!("DELETE FLOW {flow_name}"))
                    .await
                    .map(drop),
                "FLOW MADE PRIVATE" => admin_b
                    .command(&format!("UPDATE FLOW {flow_name} PRIVATE"))
                    .await
                    .map(drop),
                _ => {
                    let mut accounts = Accounts::load(b.state.path()).expect("accounts");
                    accounts.remove(&format!("gone{i}")).expect("removed");
                    accounts.save(b.state.path()).expect("saved");
                    Ok(())
                }
            }
            .unwrap_or_else(|e| panic!("{path}: {e}"));
            times.push(cut_off(creds.clone(), client, since).await);
            // The copy is gone with a reason its holder can read (after a
            // command, once it is answered; after an account's removal,
            // which no command answers, once its revocation is done).
            let mut described = peer.data(&format!("DESCRIBE FLOW {copy}")).await;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while path == "ACCOUNT REMOVED"
                && described.is_ok()
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                described = peer.data(&format!("DESCRIBE FLOW {copy}")).await;
            }
            assert!(
                matches!(&described, Err(e) if e.code().map(u16::from) == Some(550) && e.to_string().contains("revoked")),
                "{path}: {described:?}"
            );
        }
        times.sort();
        let p50 = times[times.len() / 2];
        let max = times[times.len() - 1];
        report.push(format!("{path}: p50 {p50:?}, max {max:?} over {tries}"));
    }
    println!("revocation cut-off:\n{}", report.join("\n"));

    // A flow made private takes its copies along: the anonymous one is
    // revoked, the one of an account that may still read it stays but is
    // private too; why a copy went is told to its subscriber alone.
    admin_b
        .command("CREATE FLOW open.private.flows.unix.ar PUBLIC")
        .await
        .expect("flow");
    admin_b
        .command("GRANT reader READ ON private.flows.unix.ar")
        .await
        .expect("granted");
    let reader = Some(("reader".to_owned(), "pw-reader-123456".to_owned()));
    let (_reader_peer, reader_copy, reader_creds, reader_client) =
        subscribe(reader, "open.private.flows.unix.ar".into()).await;
    let (_anon_peer, anon_copy, _, _anon_client) =
        subscribe(None, "open.private.flows.unix.ar".into()).await;
    admin_b
        .command("UPDATE FLOW open.private.flows.unix.ar PRIVATE")
        .await
        .expect("made private");
    let mut stranger = Client::connect(&b_fnap, &Security::Plain)
        .await
        .expect("connects");
    stranger.authenticate_anonymous().await.expect("anonymous");
    assert_eq!(
        code(
            stranger
                .command(&format!("DESCRIBE FLOW {reader_copy}"))
                .await
                .expect_err("private now")
        ),
        554,
        "the reader's copy is no longer public"
    );
    assert_eq!(
        reader_client.connection_state(),
        async_nats::connection::State::Connected,
        "the reader keeps its copy"
    );
    let described = stranger
        .command(&format!("DESCRIBE FLOW {anon_copy}"))
        .await;
    assert!(
        matches!(&described, Err(e) if e.code().map(u16::from) == Some(550) && e.to_string().contains("no longer public")),
        "an anonymous copy's reason is told to anonymous sessions: {described:?}"
    );
    admin_b
        .command("REVOKE reader ON private.flows.unix.ar")
        .await
        .expect("revoked");
    cut_off(reader_creds, reader_client, std::time::Instant::now()).await;
    let described = stranger
        .command(&format!("DESCRIBE FLOW {reader_copy}"))
        .await;
    assert!(
        matches!(&described, Err(e) if e.code().map(u16::from) == Some(554) && !e.to_string().contains("reader")),
        "another session learns nothing of the reader's copy: {described:?}"
    );
}

/// With TLS on the embedded broker, the subscriber pulls through TLS and
/// checks the broker's certificate against the name DNS gave; a plain
/// connection is refused; credentials are issued only on a session that
/// protects them (TLS here, as B trusts no network for clear text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_speaks_tls_and_credentials_need_a_protected_session() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = support::issue_certificate(pki.path(), &["fnaa.unix.ar"]);
    let dns_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
        c.nats.urls.clear();
        c.nats.tls = flowd::config::BrokerTls::Required;
        c.fnap.tls.cert = Some(cert.clone());
        c.fnap.tls.key = Some(key.clone());
        // Clear text is trusted from 127.0.0.1 only (the test's
        // administrator), not from the other loopback addresses.
        c.fnap.plain_auth_from = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
        c.peers = vec![PeerConfig {
            namespace: "flows.unix.ar".into(),
            ca: Some(ca.clone()),
            hosts: vec!["fnaa.unix.ar".into()],
            ..PeerConfig::default()
        }];
    })
    .await;
    let mut admin_b = b.admin().await;
    admin_b
        .command("CREATE FLOW time.flows.unix.ar PUBLIC")
        .await
        .expect("created");

    // A plain-text session from an untrusted address (127.0.0.3) gets the
    // copy only.
    let b_fnap = b.daemon.fnap_addr().expect("FNAP").to_string();
    let lines = {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 3], 0)))
            .expect("bind 127.0.0.3");
        let stream = socket
            .connect(b.daemon.fnap_addr().expect("FNAP"))
            .await
            .expect("connects");
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read).lines();
        let greeting = read.next_line().await.expect("reads").expect("greeting");
        assert!(greeting.starts_with("220"), "{greeting}");
        write
            .write_all(b"AUTHENTICATE ANONYMOUS\r\nSUBSCRIBE time.flows.unix.ar\r\n")
            .await
            .expect("sent");
        let authenticated = read.next_line().await.expect("reads").expect("reply");
        assert!(authenticated.starts_with("220"), "{authenticated}");
        let data = read.next_line().await.expect("reads").expect("reply");
        assert_eq!(data, "220 DATA");
        let mut lines = Vec::new();
        loop {
            let line = read.next_line().await.expect("reads").expect("line");
            if line.starts_with("220 OK") {
                break;
            }
            lines.push(line);
        }
        lines
    };
    assert!(lines[0].ends_with(".time.flows.unix.ar"), "{lines:?}");
    assert_eq!(
        flowd::peers::pull_credentials(&lines).expect("well formed"),
        None,
        "no credentials in clear: {lines:?}"
    );
    // Over TLS they come, and say the broker requires TLS.
    let mut secure = Client::connect_named(
        &b_fnap,
        "fnaa.unix.ar",
        &Security::StartTls { ca: ca.clone() },
    )
    .await
    .expect("connects");
    secure.authenticate_anonymous().await.expect("anonymous");
    let (lines, _) = secure
        .data("SUBSCRIBE time.flows.unix.ar")
        .await
        .expect("subscribed");
    let creds = flowd::peers::pull_credentials(&lines)
        .expect("well formed")
        .expect("credentials over TLS");
    assert!(creds.tls, "{lines:?}");
    let url = b.daemon.nats_urls()[0].clone();
    let connect = |tls: Option<rustls::ClientConfig>| {
        let mut options = Refusals::default().options(&creds.user, &creds.password, &creds.inbox);
        if let Some(tls) = tls {
            options = options.require_tls(true).tls_client_config(tls);
        }
        options
            .connection_timeout(Duration::from_secs(3))
            .connect(url.clone())
    };
    assert!(
        connect(None).await.is_err(),
        "a plain connection is refused"
    );
    let wrong = flowd::tls::named_client_config(&ca, "other.unix.ar").expect("config");
    assert!(
        connect(Some(wrong)).await.is_err(),
        "a certificate that does not hold the expected name is refused"
    );
    let right = flowd::tls::named_client_config(&ca, "fnaa.unix.ar").expect("config");
    let client = connect(Some(right)).await.expect("TLS with the right name");
    let js = async_nats::jetstream::with_prefix(client, &creds.api_prefix);
    let _: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&creds.consumer, &creds.stream)
        .await
        .expect("its consumer, over TLS");

    // A's relay pulls over TLS.
    eventually(Duration::from_secs(20), "A subscribes", || async {
        a.admin()
            .await
            .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
            .await
            .ok()
    })
    .await;
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 0..300))
        .await
        .expect("written");
    let expected: BTreeSet<String> = (0..300).map(|i| format!("t-{i}")).collect();
    eventually(Duration::from_secs(30), "A has the events", || async {
        let mut c = a.admin().await;
        (ids(&mut c, "t.flows.emiliano.ar").await == expected).then_some(())
    })
    .await;
    // ... through B's broker: the copy's consumer there delivered them all.
    assert_eq!(
        relayed_through_broker(&a, &b).await,
        300,
        "acknowledged through the broker"
    );
    // B's own connection to its broker is TLS too (it works at all).
    let (described, _) = admin_b
        .data("DESCRIBE FLOW time.flows.unix.ar")
        .await
        .expect("described");
    assert!(
        described.contains(&"events=300".to_owned()),
        "{described:?}"
    );
}

/// How far B's broker saw A's relay acknowledge A's one remote
/// subscription (the stream sequence of the copy consumer's ack floor),
/// after checking A lists it as pulled from the broker.
async fn relayed_through_broker(a: &Participant, b: &Participant) -> u64 {
    use futures::StreamExt;
    let (subs, _) = a
        .admin()
        .await
        .data("LIST SUBSCRIPTIONS")
        .await
        .expect("listed");
    assert!(subs[0].contains(" remote+nats:"), "{subs:?}");
    let copy = flow(subs[0].split(' ').nth(2).expect("copy column"));
    let js = b.daemon.broker().jetstream();
    let stream = js.get_stream(copy.stream()).await.expect("A's copy");
    let consumers: Vec<String> = stream
        .consumer_names()
        .map(|n| n.expect("name"))
        .collect()
        .await;
    assert_eq!(consumers.len(), 1, "one consumer: {consumers:?}");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&consumers[0], copy.stream())
        .await
        .expect("the copy's consumer");
    consumer
        .info()
        .await
        .expect("info")
        .ack_floor
        .stream_sequence
}

/// A nats-server in operator mode (decentralized JWT authentication) as an
/// operator would run it for a participant: an operator with a signing
/// key, the system account, and the participant's account with JetStream,
/// exporting the subscriber pull services bound to the importing account's
/// key and importing `$SYS.REQ.CLAIMS.UPDATE`; a full resolver. Keys and
/// tokens are made here with the same code the host mints with.
struct OperatorNats {
    _server: support::KillOnDrop,
    dir: tempfile::TempDir,
    url: String,
    host_account: String,
}

impl OperatorNats {
    fn start() -> OperatorNats {
        use flowd_broker::jwt;
        use serde_json::json;
        let dir = tempfile::tempdir().expect("tempdir");
        let operator = nkeys::KeyPair::new_operator();
        let signing = nkeys::KeyPair::new_operator();
        let system = nkeys::KeyPair::new_account();
        let host = nkeys::KeyPair::new_account();
        let host_user = nkeys::KeyPair::new_user();
        let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
            "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
        let operator_jwt = jwt::encode(
            &operator.public_key(),
            "test-operator",
            json!({"type": "operator", "version": 2,
                   "signing_keys": [signing.public_key()],
                   "system_account": system.public_key()}),
            &operator,
        )
        .expect("operator");
        let system_jwt = jwt::encode(
            &system.public_key(),
            "SYS",
            json!({"type": "account", "version": 2, "limits": unlimited,
                   "exports": [{"name": "claims", "subject": "$SYS.REQ.CLAIMS.UPDATE",
                                "type": "service"}]}),
            &signing,
        )
        .expect("system account");
        let mut host_limits = unlimited.clone();
        host_limits["mem_storage"] = json!(-1);
        host_limits["disk_storage"] = json!(-1);
        host_limits["streams"] = json!(-1);
        host_limits["consumer"] = json!(-1);
        let host_jwt = jwt::encode(
            &host.public_key(),
            "participant",
            json!({"type": "account", "version": 2, "limits": host_limits,
                "exports": [
                    {"name": "info", "subject": "$JS.API.CONSUMER.INFO.*.*",
                     "type": "service", "account_token_position": 6},
                    {"name": "next", "subject": "$JS.API.CONSUMER.MSG.NEXT.*.*",
                     "type": "service", "response_type": "Stream", "account_token_position": 7},
                    {"name": "ack", "subject": "$JS.ACK.*.*.>",
                     "type": "service", "account_token_position": 4}],
                "imports": [{"name": "claims", "subject": "$SYS.REQ.CLAIMS.UPDATE",
                             "account": system.public_key(), "type": "service"}]}),
            &signing,
        )
        .expect("host account");
        let user_jwt = jwt::encode(
            &host_user.public_key(),
            "flowd",
            json!({"type": "user", "version": 2, "pub": {}, "sub": {},
                   "subs": -1, "data": -1, "payload": -1}),
            &host,
        )
        .expect("host user");
        std::fs::write(
            dir.path().join("host.creds"),
            jwt::creds(&user_jwt, &jwt::seed_of(&host_user).expect("seed")),
        )
        .expect("creds");
        std::fs::write(
            dir.path().join("signing.nk"),
            jwt::seed_of(&signing).expect("seed"),
        )
        .expect("signing key");
        let port = free_port();
        let config = dir.path().join("server.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\nserver_name: operated\n\
                 operator: \"{operator_jwt}\"\nsystem_account: \"{sys}\"\n\
                 jetstream {{ store_dir: \"{js}\" }}\n\
                 resolver {{ type: full, dir: \"{jwts}\", allow_delete: false, interval: \"2m\" }}\n\
                 resolver_preload {{ {sys}: \"{system_jwt}\", {hostpub}: \"{host_jwt}\" }}\n",
                sys = system.public_key(),
                hostpub = host.public_key(),
                js = dir.path().join("js").display(),
                jwts = dir.path().join("jwt").display(),
            ),
        )
        .expect("config");
        let binary = flowd_broker::embedded::find_binary(None).expect("nats-server");
        let child = std::process::Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OperatorNats {
            _server: support::KillOnDrop(child),
            dir,
            url: format!("nats://127.0.0.1:{port}"),
            host_account: host.public_key(),
        }
    }

    /// Points a host at this server with its account and signing key.
    fn configure(&self, c: &mut Config) {
        c.nats.urls = vec![self.url.clone()];
        c.nats.credentials = Some(self.dir.path().join("host.creds"));
        c.nats.operator = Some(flowd::config::OperatorConfig {
            signing_key: self.dir.path().join("signing.nk"),
            account: self.host_account.clone(),
        });
    }
}

/// On an operator-run NATS the host mints each subscriber an account and a
/// user JWT of its own: the same attacks change nothing of the host's
/// account, the copy flows (10 000 events, ids checked) to a raw client and
/// to a peer host's relay, across a restart of the host, and removing the
/// subscriber cuts the credential off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_operator_run_nats_subscribers_get_accounts_of_their_own() {
    let nats = OperatorNats::start();
    let dns_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
        nats.configure(c);
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
    })
    .await;
    let mut admin_b = b.admin().await;
    let ((_, honest), (attacker_copy, attacker)) = two_subscribers(&b, &mut admin_b).await;
    assert!(honest.jwt.is_some() && honest.seed.is_some(), "{honest:?}");
    assert!(honest.password.is_empty());
    assert_ne!(honest.user, attacker.user, "an account each");
    let limit = b.config.nats.subscribers.connections as usize;
    attack(&b.daemon, &nats.url, &attacker, &honest, limit).await;

    // A peer host subscribes through DNS and relays from the broker.
    eventually(Duration::from_secs(20), "A subscribes", || async {
        a.admin()
            .await
            .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
            .await
            .ok()
    })
    .await;
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 50..10_050))
        .await
        .expect("written");
    let expected: Vec<String> = (0..10_050).map(|i| format!("t-{i}")).collect();
    assert_eq!(
        pull(&nats.url, &honest, expected.len()).await,
        expected,
        "every event once, in order"
    );
    let all: BTreeSet<String> = expected.iter().cloned().collect();
    eventually(Duration::from_secs(60), "A has the events", || async {
        let mut c = a.admin().await;
        (ids(&mut c, "t.flows.emiliano.ar").await == all).then_some(())
    })
    .await;
    assert_eq!(
        relayed_through_broker(&a, &b).await,
        10_050,
        "A pulled them through the broker"
    );

    // Across a restart of B, A's relay goes on.
    let b = b.restart().await;
    let mut admin_b = b.admin().await;
    admin_b
        .block("WRITE FLOW time.flows.unix.ar", events("t", 10_050..10_550))
        .await
        .expect("written after the restart");
    let all: BTreeSet<String> = (0..10_550).map(|i| format!("t-{i}")).collect();
    eventually(
        Duration::from_secs(60),
        "A has the events after the restart",
        || async {
            let mut c = a.admin().await;
            (ids(&mut c, "t.flows.emiliano.ar").await == all).then_some(())
        },
    )
    .await;

    // Removing a subscriber cuts its credential off by the reply.
    let client = Refusals::default()
        .options_for(&attacker)
        .connect(nats.url.clone())
        .await
        .expect("admitted");
    let since = std::time::Instant::now();
    admin_b
        .command(&format!("REMOVE SUBSCRIBER {attacker_copy}"))
        .await
        .expect("removed");
    let deadline = since + Duration::from_secs(5);
    while client.connection_state() == async_nats::connection::State::Connected {
        assert!(std::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "operator mode: REMOVE SUBSCRIBER cut the credential off in {:?}",
        since.elapsed()
    );
    let again = Refusals::default()
        .options_for(&attacker)
        .connect(nats.url.clone())
        .await;
    assert!(again.is_err(), "{again:?}");
}

/// An OTLP/gRPC receiver in the test: every span exported to it, with the
/// `service.instance.id` of the host that sent it.
mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::Span;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub(crate) struct Receiver {
        pub(crate) spans: Arc<Mutex<Vec<(String, Span)>>>,
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.spans.lock().expect("spans");
            for resource in request.into_inner().resource_spans {
                let host = resource
                    .resource
                    .as_ref()
                    .and_then(|r| text(&r.attributes, "service.instance.id"))
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        spans.push((host.clone(), span));
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// A string attribute.
    pub(crate) fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
        attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    }

    /// Serves the receiver on `port`.
    pub(crate) fn serve(port: u16) -> Receiver {
        let receiver = Receiver::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(([127, 0, 0, 1], port).into())
                .await
                .expect("OTLP receiver");
        });
        receiver
    }
}

/// An event's trace goes with it from one participant to another: the
/// writer's host records its write under the event's `traceparent`, the
/// subscriber's relay continues that trace, the pipeline's batch span links
/// to it with a span per fused step, and the event the pipeline creates
/// carries the context of the span that made it, in the same trace. An
/// event written without a context gets one from the write's span; one
/// whose `traceparent` is garbage is stored as written, and its processing
/// is not disturbed. Every span reaches an OTLP receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_follows_an_event_through_a_pipeline_and_across_participants() {
    use flowd::api::client::{ApiClient, Credentials};
    use flowd::api::proto;
    let collector = free_port();
    let receiver = otlp::serve(collector);
    let endpoint = format!("http://127.0.0.1:{collector}");
    let dns_b = free_port();
    let b = participant_with("fnaa.unix.ar", "flows.unix.ar", |c| {
        c.fns.listen = Some(dns(dns_b));
        c.cluster.host_id = Some("writer-host".into());
        c.telemetry.otlp_endpoint = Some(endpoint.clone());
    })
    .await;
    let a = participant_with("fnaa.emiliano.ar", "flows.emiliano.ar", |c| {
        c.fns.nameserver = Some(dns(dns_b));
        c.api.listen = Some(([127, 0, 0, 1], 0).into());
        c.cluster.host_id = Some("reader-host".into());
        c.telemetry.otlp_endpoint = Some(endpoint.clone());
    })
    .await;
    let mut admin_b = b.admin().await;
    let mut admin_a = a.admin().await;
    admin_b
        .command("CREATE FLOW traced.flows.unix.ar PUBLIC")
        .await
        .expect("public flow on B");
    admin_a
        .command("CREATE FLOW traced.flows.emiliano.ar")
        .await
        .expect("output on A");
    let token = std::fs::read_to_string(a.state.path().join("admin.token")).expect("token");
    let api = ApiClient::connect(
        &format!("http://{}", a.daemon.api_addr().expect("API")),
        &Credentials::Token(token.trim().to_owned()),
        None,
    )
    .await
    .expect("API");
    let transform = std::fs::read(support::component("flow_transform")).expect("built");
    api.push("transform", "1.0.0", transform, |_| {})
        .await
        .expect("pushed");
    // Two steps, fused into one runner.
    let manifest = "\
name: traced
inputs:
  remote: flow://traced.flows.unix.ar
outputs:
  local: flow://traced.flows.emiliano.ar
steps:
  - name: tag
    component: transform@1.0.0
    from: remote
    config: {set.data.via: emiliano}
  - name: mark
    component: transform@1.0.0
    from: tag
    to: local
    config: {set.data.marked: true}
";
    eventually(Duration::from_secs(20), "the pipeline applies", || async {
        api.pipelines()
            .apply(proto::ApplyRequest {
                manifest: manifest.into(),
                dry_run: false,
            })
            .await
            .ok()
    })
    .await;
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let line = |id: &str, traceparent: Option<&str>| {
        let mut event = serde_json::json!({
            "specversion": "1.0", "id": id, "source": "urn:test", "type": "tick",
            "data": {"n": 1},
        });
        if let Some(tp) = traceparent {
            event["traceparent"] = tp.into();
        }
        event.to_string()
    };
    admin_b
        .block(
            "WRITE FLOW traced.flows.unix.ar",
            vec![
                line("traced", Some(&format!("00-{trace}-{parent}-01"))),
                line("untraced", None),
                line("garbage", Some("00-not-a-trace-context-01")),
            ],
        )
        .await
        .expect("written on B");

    // What B stored: the traced event as written, the untraced one inside
    // the trace of B's write, the garbage as it was.
    let mut stored = std::collections::HashMap::new();
    admin_b
        .read("READ FLOW traced.flows.unix.ar FROM START", |line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("JSON");
            stored.insert(event["id"].as_str().unwrap_or_default().to_owned(), event);
            true
        })
        .await
        .expect("read on B");
    assert_eq!(
        stored["traced"]["traceparent"],
        format!("00-{trace}-{parent}-01")
    );
    assert_eq!(
        stored["garbage"]["traceparent"],
        "00-not-a-trace-context-01"
    );
    let started = stored["untraced"]["traceparent"]
        .as_str()
        .expect("the write started a trace")
        .to_owned();
    let started: Vec<&str> = started.split('-').collect();
    assert_eq!((started.len(), started[3]), (4, "01"), "{started:?}");

    // Through the pipeline on A.
    let mut out = std::collections::HashMap::new();
    eventually(
        Duration::from_secs(60),
        "events through the pipeline",
        || async {
            let mut c = a.admin().await;
            (ids(&mut c, "traced.flows.emiliano.ar").await.len() == 3).then_some(())
        },
    )
    .await;
    admin_a
        .read("READ FLOW traced.flows.emiliano.ar FROM START", |line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("JSON");
            out.insert(event["id"].as_str().unwrap_or_default().to_owned(), event);
            true
        })
        .await
        .expect("read on A");
    for id in ["traced", "untraced", "garbage"] {
        assert_eq!(out[id]["data"]["marked"], true, "{id} processed");
    }
    let created: Vec<String> = out["traced"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .split('-')
        .map(str::to_owned)
        .collect();
    assert_eq!(created[1], trace, "the created event stays in the trace");
    assert_ne!(created[2], parent, "created under a span of the processor");

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let spans = eventually(
        Duration::from_secs(30),
        "the spans are exported",
        || async {
            let spans = receiver.spans.lock().expect("spans").clone();
            let named = |n: &str| spans.iter().any(|(_, s)| s.name == n);
            let steps = spans.iter().filter(|(_, s)| s.name == "flowd.step").count();
            (named("flowd.publish") && named("flowd.relay") && named("flowd.process") && steps >= 2)
                .then_some(spans)
        },
    )
    .await;
    let in_trace = |name: &str| {
        spans
            .iter()
            .filter(|(_, s)| s.name == name && hex(&s.trace_id) == trace)
            .collect::<Vec<_>>()
    };
    // B recorded its write under the writer's span.
    let publish = in_trace("flowd.publish");
    assert_eq!(publish.len(), 1, "{publish:?}");
    assert_eq!(publish[0].0, "writer-host");
    assert_eq!(hex(&publish[0].1.parent_span_id), parent);
    // B's write of the untraced event is the root of the trace it started.
    assert!(spans.iter().any(|(host, s)| host == "writer-host"
        && s.name == "flowd.publish"
        && hex(&s.trace_id) == started[1]
        && hex(&s.span_id) == started[2]
        && s.parent_span_id.is_empty()));
    // A's relay continued the trace.
    let relay = in_trace("flowd.relay");
    assert_eq!(relay.len(), 1, "{relay:?}");
    assert_eq!(relay[0].0, "reader-host");
    assert_eq!(hex(&relay[0].1.parent_span_id), parent);
    assert_eq!(
        otlp::text(&relay[0].1.attributes, "flowd.remote_flow").as_deref(),
        Some("traced.flows.unix.ar")
    );
    // The event A's pipeline created carries the span that created it.
    let process = in_trace("flowd.process");
    assert_eq!(process.len(), 1, "{process:?}");
    assert_eq!(hex(&process[0].1.parent_span_id), parent);
    assert_eq!(hex(&process[0].1.span_id), created[2]);
    assert_eq!(
        otlp::text(&process[0].1.attributes, "cloudevents.event_id").as_deref(),
        Some("traced")
    );
    // The batch that did it links to the event's context, and its steps
    // are its children, one span each.
    let batch = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| {
            s.name == "flowd.batch" && process[0].1.links.iter().any(|l| l.span_id == s.span_id)
        })
        .expect("the process span links to its batch");
    assert!(
        batch
            .links
            .iter()
            .any(|l| hex(&l.trace_id) == trace && hex(&l.span_id) == parent),
        "the batch links to the event's context: {batch:?}"
    );
    let steps: BTreeSet<String> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "flowd.step" && s.parent_span_id == batch.span_id)
        .filter_map(|s| otlp::text(&s.attributes, "flowd.step"))
        .collect();
    assert_eq!(steps.len(), 2, "one span per fused step: {steps:?}");
    assert!(steps.iter().any(|s| s.ends_with("tag")) && steps.iter().any(|s| s.ends_with("mark")));
}
