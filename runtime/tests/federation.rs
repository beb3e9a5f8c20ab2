//! The Flow Name Service and federation: hosts publish their flows in DNS
//! (the embedded authoritative server), and others find them through it.

mod support;

use flowd::broker::FlowName;
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd::fnap::client::{Client, Security};
use flowd::fns::{Discovery, DiscoveryError};
use std::time::Duration;
use support::{Nats, eventually};

struct Participant {
    _nats: Nats,
    state: tempfile::TempDir,
    daemon: Daemon,
}

impl Participant {
    async fn admin(&self) -> Client {
        let token = std::fs::read_to_string(self.state.path().join("admin.token")).expect("token");
        let addr = self.daemon.fnap_addr().expect("FNAP").to_string();
        let mut client = Client::connect(&addr, &Security::Plain)
            .await
            .expect("connects");
        client
            .authenticate_plain("local", token.trim())
            .await
            .expect("local administrator");
        client
    }
}

/// A participant serving `namespace`, its FNAA named `fqdn`.
async fn participant(fqdn: &str, namespace: &str) -> Participant {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.participant.fqdn = fqdn.into();
    config.participant.namespaces = vec![namespace.into()];
    config.participant.state_dir = state.path().to_owned();
    config.nats.urls = vec![nats.url()];
    config.metrics.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = Some(([127, 0, 0, 1], 0).into());
    let daemon = Daemon::start(config).await.expect("host starts");
    Participant {
        _nats: nats,
        state,
        daemon,
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
    admin
        .command("CREATE FLOW time.flows.unix.ar")
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
