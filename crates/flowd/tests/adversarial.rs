//! The host as an attacker meets it: each test drives a real host (real
//! nats-server, real DNS) the way a hostile client, peer or resolver
//! would, and asserts that the bound holds and that nothing leaks.
//! docs/security.md lists the threats and the limits these tests hold.

mod support;

use flowd::accounts::Accounts;
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd::peers::{PeerConfig, PeerTls};
use flowd_fnap::client::{Client, ClientError, Security};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Bind, Nats};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

struct Host {
    _nats: Nats,
    state: tempfile::TempDir,
    daemon: Daemon,
}

impl Host {
    fn addr(&self) -> String {
        self.daemon
            .fnap_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    async fn admin(&self) -> Client {
        support::admin(&self.addr(), self.state.path()).await
    }

    async fn login(&self, user: &str, password: &str) -> Result<Client, ClientError> {
        let mut client = Client::connect(&self.addr(), &Security::Plain).await?;
        client.authenticate_plain(user, password).await?;
        Ok(client)
    }

    async fn anonymous(&self) -> Client {
        let mut client = Client::connect(&self.addr(), &Security::Plain)
            .await
            .expect("connects");
        client.authenticate_anonymous().await.expect("anonymous");
        client
    }
}

/// A host `fnaa.emiliano.ar` serving `flows.emiliano.ar`, with accounts
/// `alice` and `bob` (password `<name>-password`).
async fn host(tune: impl FnOnce(&mut Config)) -> Host {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut accounts = Accounts::default();
    for user in ["alice", "bob"] {
        accounts
            .add(user, &format!("{user}-password"), false)
            .expect("account");
    }
    accounts.save(state.path()).expect("saved");
    let mut config = Config::default();
    config.participant.fqdn = "fnaa.emiliano.ar".into();
    config.participant.namespaces = vec!["flows.emiliano.ar".into()];
    config.participant.state_dir = state.path().to_owned();
    config.nats.urls = vec![nats.url()];
    config.metrics.listen = None;
    config.api.listen = None;
    config.console.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = None;
    tune(&mut config);
    let daemon = Daemon::start(config).await.expect("host starts");
    Host {
        _nats: nats,
        state,
        daemon,
    }
}

/// What the attacker's agent answers to a line: bytes to send, or
/// nothing ever again.
enum Answer {
    Send(Vec<u8>),
    Silence,
    /// A data block of `lines` lines of `bytes` bytes each (written line by
    /// line: the attacker's memory is not the host's).
    Flood {
        lines: usize,
        bytes: usize,
    },
}

/// An FNAA written by the attacker: it greets as `fnaa.unix.ar`, answers
/// each line as `answer` says, and keeps every line it was sent.
struct FakeAgent {
    port: u16,
    heard: Arc<Mutex<Vec<String>>>,
}

impl FakeAgent {
    async fn start(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> FakeAgent {
        let answer = Arc::new(answer);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let port = listener.local_addr().expect("address").port();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 fnaa.unix.ar FNAA\r\n").await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        log.lock().expect("log").push(line.clone());
                        match answer(&line) {
                            Answer::Send(bytes) => {
                                if w.write_all(&bytes).await.is_err() {
                                    break;
                                }
                            }
                            Answer::Silence => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            Answer::Flood { lines, bytes } => {
                                let mut line = vec![b'x'; bytes];
                                line.extend_from_slice(b"\r\n");
                                let _ = w.write_all(b"220 DATA\r\n").await;
                                for _ in 0..lines {
                                    if w.write_all(&line).await.is_err() {
                                        break;
                                    }
                                }
                                let _ = w.write_all(b"220 OK\r\n").await;
                            }
                        }
                    }
                });
            }
        });
        FakeAgent { port, heard }
    }

    fn heard(&self) -> Vec<String> {
        self.heard.lock().expect("log").clone()
    }
}

/// An agent that refuses STARTTLS and accepts any log-in.
fn strips_tls(line: &str) -> Answer {
    let reply: &[u8] = if line.starts_with("STARTTLS") {
        b"502 STARTTLS not available\r\n"
    } else if line.starts_with("AUTHENTICATE") {
        b"235 authenticated\r\n"
    } else if line.starts_with("QUIT") {
        b"221 bye\r\n"
    } else {
        b"550 no such flow\r\n"
    };
    Answer::Send(reply.to_vec())
}

/// DNS for `unix.ar` as the attacker's resolver answers it: the flow
/// `time.flows.unix.ar` served by `agent` (a name in the zone) on `port`,
/// with no `tls` TXT record.
fn hostile_dns(agent: &str, port: u16) -> Bind {
    Bind::start_with(
        "unix.ar",
        &format!(
            "time.flows IN PTR _flow._tcp.time.flows.unix.ar.\n\
             _flow._tcp.time.flows IN SRV 0 0 {port} {agent}.\n\
             fnaa IN A 127.0.0.1\n\
             relay IN A 127.0.0.1\n"
        ),
    )
}

/// A host whose `[[peers]]` entry for `flows.unix.ar` holds a password,
/// resolving through `dns`.
async fn peer_host(dns: &Bind, tls: PeerTls, ca: Option<std::path::PathBuf>) -> Host {
    let port = dns.port;
    host(move |c| {
        c.fns.nameserver = Some(([127, 0, 0, 1], port).into());
        c.peers = vec![PeerConfig {
            namespace: "flows.unix.ar".into(),
            username: Some("emiliano".into()),
            password: Some("peer-secret".into()),
            ca,
            tls,
            hosts: vec!["fnaa.unix.ar".into()],
            ..PeerConfig::default()
        }];
    })
    .await
}

async fn subscribe_remote(host: &Host) -> ClientError {
    host.admin()
        .await
        .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
        .await
        .expect_err("the remote agent is the attacker's")
}

fn leaked(heard: &[String]) -> bool {
    use base64::Engine as _;
    let plain = base64::engine::general_purpose::STANDARD.encode("\0emiliano\0peer-secret");
    heard
        .iter()
        .any(|l| l.starts_with("AUTHENTICATE") || l.contains("peer-secret") || l.contains(&plain))
}

/// A resolver that drops the `tls` TXT record, and an agent that refuses
/// STARTTLS, do not get the peer's password: TLS is the configuration's
/// choice (`required` by default), and the subscription fails with a
/// reason, to be tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_cannot_downgrade_a_peer_session_to_clear_text() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, _, _) = support::issue_certificate(pki.path(), &["fnaa.unix.ar"]);
    let fake = FakeAgent::start(strips_tls).await;
    let dns = hostile_dns("fnaa.unix.ar", fake.port);
    let a = peer_host(&dns, PeerTls::Required, Some(ca)).await;
    let refused = subscribe_remote(&a).await;
    assert_eq!(refused.code().map(u16::from), Some(450), "{refused}");
    assert!(refused.to_string().contains("TLS"), "{refused}");
    let heard = fake.heard();
    assert!(heard.iter().any(|l| l == "STARTTLS"), "{heard:?}");
    assert!(!leaked(&heard), "the password stayed home: {heard:?}");

    // The same agent, with clear text chosen explicitly for the peer:
    // then, and only then, the password goes (the test can see a leak).
    let b = peer_host(&dns, PeerTls::Plain, None).await;
    let _ = subscribe_remote(&b).await;
    assert!(leaked(&fake.heard()), "clear text by choice");
}

/// A resolver that names another host as the agent of the peer's
/// namespace (one neither under it nor in the entry's `hosts`) gets no
/// connection at all, even with clear text configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_cannot_send_a_peer_password_to_another_host() {
    let fake = FakeAgent::start(strips_tls).await;
    let dns = hostile_dns("relay.unix.ar", fake.port);
    let a = peer_host(&dns, PeerTls::Plain, None).await;
    let refused = subscribe_remote(&a).await;
    assert_eq!(refused.code().map(u16::from), Some(450), "{refused}");
    assert!(refused.to_string().contains("relay.unix.ar"), "{refused}");
    assert!(fake.heard().is_empty(), "{:?}", fake.heard());
}

/// A peer entry that requires TLS and trusts nothing is refused at start,
/// with the way out named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_without_a_ca_is_refused_at_start() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.participant.state_dir = state.path().to_owned();
    config.nats.urls = vec![nats.url()];
    config.peers = vec![PeerConfig {
        namespace: "flows.unix.ar".into(),
        ..PeerConfig::default()
    }];
    let err = match Daemon::start(config).await {
        Ok(_) => panic!("a host that would send a password it cannot protect"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("flows.unix.ar") && err.contains("ca"), "{err}");
}

/// A raw session from a chosen loopback address: the lines it reads back
/// until a final reply, for commands `lines`.
struct Raw {
    reader: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn from(source: [u8; 4], host: &Host) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind((std::net::Ipv4Addr::from(source), 0).into())
            .expect("bound to the source address");
        let stream = socket
            .connect(host.addr().parse().expect("address"))
            .await
            .expect("connects");
        let (r, writer) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(r).lines(),
            writer,
        };
        raw.reply().await; // greeting
        raw
    }

    /// Sends `line`; the lines up to and including the final reply.
    async fn send(&mut self, line: &str) -> Vec<String> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("sent");
        self.reply().await
    }

    async fn reply(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_block = false;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.reader.next_line())
                .await
                .expect("answered in time")
                .expect("reads")
                .expect("open");
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let is_reply = code.is_some() && (line.len() == 3 || line.as_bytes()[3] == b' ');
            out.push(line.clone());
            if is_reply && line.starts_with("220 DATA") {
                in_block = true;
                continue;
            }
            if is_reply && (!in_block || !line.starts_with('.')) {
                return out;
            }
        }
    }
}

async fn public_flow(host: &Host, name: &str) {
    host.admin()
        .await
        .command(&format!("CREATE FLOW {name} PUBLIC"))
        .await
        .expect("public flow");
}

/// Anonymous subscriptions cost the host a copy, a relay and broker
/// resources each: a few per address (IPv6: per /64), freed as they end,
/// and a client elsewhere is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_subscriptions_are_few_per_address() {
    let a = host(|c| {
        c.quotas.anonymous_subscriptions_per_address = 3;
        c.fnap.plain_auth_from = vec!["127.0.0.0/8".parse().expect("net")];
    })
    .await;
    public_flow(&a, "news.flows.emiliano.ar").await;
    let mut attacker = Raw::from([127, 0, 0, 7], &a).await;
    assert!(attacker.send("AUTHENTICATE ANONYMOUS").await[0].starts_with("220"));
    let mut copies = Vec::new();
    for _ in 0..3 {
        let reply = attacker.send("SUBSCRIBE news.flows.emiliano.ar").await;
        assert!(reply.last().expect("reply").starts_with("220"), "{reply:?}");
        copies.push(reply[1].clone());
    }
    let refused = attacker.send("SUBSCRIBE news.flows.emiliano.ar").await;
    assert!(
        refused[0].starts_with("450 quota: at most 3 anonymous subscriptions per address"),
        "{refused:?}"
    );
    // Another client is served, anonymous or not.
    let mut other = Raw::from([127, 0, 0, 8], &a).await;
    other.send("AUTHENTICATE ANONYMOUS").await;
    let served = other.send("SUBSCRIBE news.flows.emiliano.ar").await;
    assert!(
        served.last().expect("reply").starts_with("220"),
        "{served:?}"
    );
    // Ending one frees its place.
    let ended = attacker.send(&format!("UNSUBSCRIBE {}", copies[0])).await;
    assert!(ended[0].starts_with("220"), "{ended:?}");
    let again = attacker.send("SUBSCRIBE news.flows.emiliano.ar").await;
    assert!(again.last().expect("reply").starts_with("220"), "{again:?}");
}

/// A subscription copy is its subscriber's: other clients do not see it
/// listed, and an anonymous one is cancelled only with its name, which is
/// long enough not to be guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_are_not_listed_or_cancelled_by_others() {
    let a = host(|_| {}).await;
    public_flow(&a, "news.flows.emiliano.ar").await;
    let mut subscriber = a.anonymous().await;
    let (lines, _) = subscriber
        .data("SUBSCRIBE news.flows.emiliano.ar")
        .await
        .expect("subscribed");
    let copy = lines[0].clone();
    let token = copy.split('.').next().expect("token");
    assert!(token.len() >= 22, "an unguessable name: {copy}");
    let mut alice = a.login("alice", "alice-password").await.expect("alice");
    let (alice_subscribed, _) = alice
        .data("SUBSCRIBE news.flows.emiliano.ar")
        .await
        .expect("alice subscribes");
    let alice_copy = alice_subscribed[0].clone();

    let listed = |lines: Vec<String>| lines.join("\n");
    for (who, mut client) in [
        ("another anonymous client", a.anonymous().await),
        ("bob", a.login("bob", "bob-password").await.expect("bob")),
    ] {
        let (flows, _) = client.data("LIST FLOWS").await.expect("listed");
        let flows = listed(flows);
        assert!(flows.contains("news.flows.emiliano.ar"), "{who}: {flows}");
        assert!(
            !flows.contains(&copy) && !flows.contains(&alice_copy),
            "{who} sees no copy: {flows}"
        );
        // A name one character off the real one.
        let last = if token.ends_with('x') { 'y' } else { 'x' };
        let guessed = format!("{}{last}.news.flows.emiliano.ar", &token[..token.len() - 1]);
        for target in [guessed, alice_copy.clone()] {
            let refused = client
                .command(&format!("UNSUBSCRIBE {target}"))
                .await
                .expect_err("not theirs");
            assert!(
                matches!(refused.code().map(u16::from), Some(550 | 554)),
                "{who}: {refused}"
            );
        }
    }
    let (flows, _) = alice.data("LIST FLOWS").await.expect("listed");
    assert!(
        listed(flows).contains(&alice_copy),
        "alice sees her own copy"
    );
    let (flows, _) = a.admin().await.data("LIST FLOWS").await.expect("listed");
    let flows = listed(flows);
    assert!(
        flows.contains(&copy) && flows.contains(&alice_copy),
        "{flows}"
    );
    subscriber
        .command(&format!("UNSUBSCRIBE {copy}"))
        .await
        .expect("the subscriber cancels with its copy's name");
}

/// The consumers of the stream behind `flow`.
async fn consumers(nats_url: &str, flow: &str) -> usize {
    let client = async_nats::connect(nats_url).await.expect("broker");
    let js = async_nats::jetstream::new(client);
    let name = flowd_broker::FlowName::parse(flow).expect("flow").stream();
    let mut stream = js.get_stream(name).await.expect("stream");
    stream.info().await.expect("info").state.consumer_count
}

/// A read holds a broker consumer while it runs, not after: reads that ask
/// for nothing cost none, and ended reads leave none behind, so a client
/// opening reads in a loop cannot pile consumers up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_leave_no_consumers_behind() {
    let a = host(|_| {}).await;
    let url = a._nats.url();
    public_flow(&a, "news.flows.emiliano.ar").await;
    let mut admin = a.admin().await;
    admin
        .block(
            "WRITE FLOW news.flows.emiliano.ar",
            (0..5).map(|i| {
                format!(r#"{{"specversion":"1.0","id":"e{i}","source":"urn:t","type":"t"}}"#)
            }),
        )
        .await
        .expect("written");
    let before = consumers(&url, "news.flows.emiliano.ar").await;
    let mut reader = a.anonymous().await;
    for _ in 0..300 {
        let (lines, _) = reader
            .data("READ FLOW news.flows.emiliano.ar COUNT 0")
            .await
            .expect("read");
        assert!(lines.is_empty());
    }
    assert_eq!(consumers(&url, "news.flows.emiliano.ar").await, before);
    for _ in 0..50 {
        let (lines, _) = reader
            .data("READ FLOW news.flows.emiliano.ar FROM START")
            .await
            .expect("read");
        assert_eq!(lines.len(), 5);
    }
    support::eventually(
        Duration::from_secs(10),
        "ended reads are removed",
        || async { (consumers(&url, "news.flows.emiliano.ar").await == before).then_some(()) },
    )
    .await;
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Before logging in, a client's lines are short (4 KiB by default): 500
/// strangers each holding a partial line cost the host little, and a
/// normal client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_hold_little_memory() {
    let a = host(|_| {}).await;
    let mut stranger = Raw::from([127, 0, 0, 9], &a).await;
    let long = format!("DESCRIBE FLOW {}.flows.emiliano.ar", "x".repeat(5000));
    let refused = stranger.send(&long).await;
    assert!(
        refused[0].starts_with("500 line too long (at most 4096 bytes)"),
        "{refused:?}"
    );
    let shorter = format!("DESCRIBE FLOW {}.flows.emiliano.ar", "x".repeat(3000));
    let gated = stranger.send(&shorter).await;
    assert!(
        !gated[0].starts_with("500 line too long"),
        "within the limit: {gated:?}"
    );

    let base = rss();
    let mut held = Vec::new();
    for i in 0..500u32 {
        let source = [127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8];
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind((std::net::Ipv4Addr::from(source), 0).into())
            .expect("bound");
        let mut stream = socket
            .connect(a.addr().parse().expect("address"))
            .await
            .expect("connects");
        stream
            .write_all("A".repeat(4000).as_bytes())
            .await
            .expect("partial line");
        held.push(stream);
    }
    let mut noop = a.anonymous().await;
    noop.command("NOOP")
        .await
        .expect("a normal client is served");
    let grown = rss().saturating_sub(base);
    eprintln!(
        "500 pre-authentication sessions with partial lines: +{} KiB",
        grown >> 10
    );
    assert!(grown < 64 << 20, "500 strangers cost {grown} bytes");
}

/// Wrong passwords cost the guesser time, not the host memory: checks
/// are bounded in number, an address whose log-ins failed waits longer
/// before each next check (over FNAP and the gRPC API alike), and others
/// log in meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_slow_and_bounded() {
    let a = host(|c| {
        c.logins.failure_delay_ms = 40;
        c.logins.concurrent_checks = 2;
        c.fnap.auth_failure_delay_ms = 1;
        c.api.listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let base = rss();
    let guesses: Vec<_> = (0..24)
        .map(|_| {
            let addr = a.addr();
            tokio::spawn(async move {
                let mut c = Client::connect(&addr, &Security::Plain).await.ok()?;
                c.authenticate_plain("alice", "guess").await.err()
            })
        })
        .collect();
    let mut alice = a.login("alice", "alice-password").await;
    for _ in 0..10 {
        if alice.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        alice = a.login("alice", "alice-password").await;
    }
    alice.expect("alice logs in during the attack");
    for guess in guesses {
        let refused = guess.await.expect("joined").expect("refused");
        assert!(
            matches!(refused.code().map(u16::from), Some(535 | 450)),
            "{refused}"
        );
    }
    let grown = rss().saturating_sub(base);
    eprintln!("24 concurrent wrong log-ins: +{} MiB", grown >> 20);
    assert!(grown < 100 << 20, "{grown} bytes");

    // The gRPC API: from an address with failures, each guess waits longer.
    use flowd::api::client::{ApiClient, Credentials};
    let api = a.daemon.api_addr().expect("API");
    let guesser = ApiClient::connect(
        &format!("http://{api}"),
        &Credentials::Password {
            user: "bob".into(),
            password: "guess".into(),
        },
        None,
    )
    .await
    .expect("connects");
    let started = std::time::Instant::now();
    for _ in 0..8 {
        let e = guesser
            .registry()
            .list(flowd::api::proto::ListComponentsRequest {})
            .await
            .expect_err("wrong password");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    }
    // 40 ms doubling from the FNAP guesses before: at least 8 waits of
    // 640 ms or more... the bound asserted is far below that.
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "8 guesses in {:?}",
        started.elapsed()
    );
}

/// A component name belongs to whoever first uploaded under it: another
/// account cannot slip a newer version under it (which a pipeline naming
/// the component without a version would then run). `PUT COMPONENT`
/// stores only what loads as a component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_names_are_owned_and_uploads_checked() {
    use flowd::api::client::{ApiClient, Credentials};
    let a = host(|c| {
        c.api.listen = Some(([127, 0, 0, 1], 0).into());
        c.quotas.components_per_account = 2;
    })
    .await;
    let api = a.daemon.api_addr().expect("API");
    let as_user = |user: &str| {
        let credentials = Credentials::Password {
            user: user.into(),
            password: format!("{user}-password"),
        };
        async move {
            ApiClient::connect(&format!("http://{api}"), &credentials, None)
                .await
                .expect("connects")
        }
    };
    let bytes = std::fs::read(support::component("flow_filter")).expect("component");
    let alice = as_user("alice").await;
    alice
        .push("filter", "1.0.0", bytes.clone(), |_| {})
        .await
        .expect("alice names it first");
    let bob = as_user("bob").await;
    let refused = bob
        .push("filter", "9.9.9", bytes.clone(), |_| {})
        .await
        .expect_err("bob cannot add a version");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(!refused.message().contains("alice"), "{refused}");
    alice
        .push("filter", "1.1.0", bytes.clone(), |_| {})
        .await
        .expect("alice adds one");
    bob.push("bobs-filter", "1", bytes.clone(), |_| {})
        .await
        .expect("bob has names of his own");

    // Only the host's administrators give a name away, and only to an
    // account that exists.
    use flowd::api::proto::TransferRequest;
    let transfer = |to: &str| TransferRequest {
        name: "filter".into(),
        to: to.into(),
    };
    let refused = alice
        .registry()
        .transfer(transfer("bob"))
        .await
        .expect_err("alice is no administrator");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    let token = std::fs::read_to_string(a.state.path().join("admin.token")).expect("token");
    let admin = ApiClient::connect(
        &format!("http://{api}"),
        &Credentials::Token(token.trim().to_owned()),
        None,
    )
    .await
    .expect("connects");
    let refused = admin
        .registry()
        .transfer(transfer("nobody"))
        .await
        .expect_err("no such account");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused}");
    admin
        .registry()
        .transfer(transfer("bob"))
        .await
        .expect("transferred");
    bob.push("filter", "9.9.9", bytes.clone(), |_| {})
        .await
        .expect("the name is bob's now");

    let mut fnap = a.login("bob", "bob-password").await.expect("bob");
    let junk = fnap
        .put_component(b"not a component at all")
        .await
        .expect_err("refused");
    assert_eq!(junk.code().map(u16::from), Some(555), "{junk}");
    fnap.put_component(&bytes)
        .await
        .expect("a component is stored");
    let merge = std::fs::read(support::component("flow_merge")).expect("component");
    fnap.put_component(&merge).await.expect("a second one");
    let third = std::fs::read(support::component("flow_passthrough")).expect("component");
    let over = fnap
        .put_component(&third)
        .await
        .expect_err("over the quota");
    assert_eq!(over.code().map(u16::from), Some(450), "{over}");
    assert!(over.to_string().contains("quota"), "{over}");
    fnap.put_component(&bytes)
        .await
        .expect("the same bytes again cost nothing");
    let mut alice_fnap = a.login("alice", "alice-password").await.expect("alice");
    alice_fnap
        .put_component(&third)
        .await
        .expect("another account has its own quota");
}

/// The agent's answer to the log-in, then `then` for anything else.
fn after_login(line: &str, then: impl FnOnce(&str) -> Answer) -> Answer {
    if line.starts_with("AUTHENTICATE") {
        Answer::Send(b"220 Authenticated\r\n".to_vec())
    } else if line.starts_with("QUIT") {
        Answer::Send(b"220 Bye\r\n".to_vec())
    } else {
        then(line)
    }
}

/// A host without a `[[peers]]` entry for `unix.ar`, resolving through
/// `dns`.
async fn anonymous_peer_host(dns: &Bind) -> Host {
    let port = dns.port;
    host(move |c| c.fns.nameserver = Some(([127, 0, 0, 1], port).into())).await
}

/// A remote agent that answers `SUBSCRIBE` with 150 lines of 1 MiB: the
/// reply is refused once it passes the bound, and the error quotes it
/// short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_reply_is_bounded() {
    let fake = FakeAgent::start(|line| {
        after_login(line, |_| Answer::Flood {
            lines: 150,
            bytes: 1 << 20,
        })
    })
    .await;
    let dns = hostile_dns("fnaa.unix.ar", fake.port);
    let a = anonymous_peer_host(&dns).await;
    let base = rss();
    let refused = subscribe_remote(&a).await;
    assert_eq!(refused.code().map(u16::from), Some(450), "{refused}");
    let text = refused.to_string();
    assert!(text.len() < 2000, "quoted short: {} bytes", text.len());
    let grown = rss().saturating_sub(base);
    assert!(grown < 64 << 20, "the flood was not held: {grown} bytes");
    a.anonymous().await.command("NOOP").await.expect("served");
}

/// A remote agent that stops answering after its greeting: the local
/// `SUBSCRIBE` is answered `4xx` within the federation's step time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_remote_host_times_out() {
    let fake = FakeAgent::start(|_| Answer::Silence).await;
    let dns = hostile_dns("fnaa.unix.ar", fake.port);
    let a = anonymous_peer_host(&dns).await;
    let subscribing = tokio::spawn({
        let (addr, state) = (a.addr(), a.state.path().to_owned());
        async move {
            support::admin(&addr, &state)
                .await
                .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
                .await
        }
    });
    // Meanwhile the host serves others.
    a.anonymous().await.command("NOOP").await.expect("served");
    let refused = tokio::time::timeout(
        flowd::peers::REMOTE_STEP + Duration::from_secs(10),
        subscribing,
    )
    .await
    .expect("answered within the time-out")
    .expect("joined")
    .expect_err("no answer from the remote host");
    assert_eq!(refused.code().map(u16::from), Some(450), "{refused}");
    assert!(refused.to_string().contains("did not answer"), "{refused}");
}

/// A remote agent whose copy numbers its events backwards, or near
/// u64::MAX: the relay refuses them, and the subscription says it is
/// failing and why, never `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_sequences_are_checked_and_a_stuck_relay_says_so() {
    let fake = FakeAgent::start(|line| {
        after_login(line, |line| {
            let event = r#"{"specversion":"1.0","id":"x","source":"urn:x","type":"t"}"#;
            if line.starts_with("SUBSCRIBE") {
                Answer::Send(b"220 DATA\r\nabcdefg.time.flows.unix.ar\r\n220 OK\r\n".to_vec())
            } else if line.starts_with("READ FLOW") {
                Answer::Send(
                    format!("220 DATA\r\n18446744073709551615 {event}\r\n3 {event}\r\n")
                        .into_bytes(),
                )
            } else {
                Answer::Send(b"220 OK\r\n".to_vec())
            }
        })
    })
    .await;
    let dns = hostile_dns("fnaa.unix.ar", fake.port);
    let a = anonymous_peer_host(&dns).await;
    a.admin()
        .await
        .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
        .await
        .expect("the remote host accepts");
    let line = support::eventually(
        Duration::from_secs(30),
        "the relay says it fails",
        || async {
            let (lines, _) = a.admin().await.data("LIST SUBSCRIPTIONS").await.ok()?;
            lines.into_iter().find(|l| l.contains(" failing "))
        },
    )
    .await;
    assert!(line.contains("sequence"), "{line}");
    assert!(
        line.starts_with("t.flows.emiliano.ar time.flows.unix.ar"),
        "{line}"
    );
}

/// An agent of the draft's commands only: `SUBSCRIBE` answers with the
/// copy `ksdj898.time.flows.unix.ar`, `DESCRIBE FLOW` with its `flow=` line
/// and `described` (CRLF-separated `key=value` lines), anything else is
/// an unknown command.
async fn draft_agent(described: String) -> FakeAgent {
    FakeAgent::start(move |line| {
        after_login(line, |line| {
            let reply = if line.starts_with("SUBSCRIBE") {
                "220 DATA\r\nksdj898.time.flows.unix.ar\r\n220 OK\r\n".to_owned()
            } else if line.starts_with("DESCRIBE FLOW") {
                format!("220 DATA\r\nflow=ksdj898.time.flows.unix.ar\r\n{described}\r\n220 OK\r\n")
            } else {
                "500 unknown command\r\n".to_owned()
            };
            Answer::Send(reply.into_bytes())
        })
    })
    .await
}

/// A remote host that speaks only the draft's commands: `SUBSCRIBE`
/// answers with the copy's name, `READ FLOW` is not a command it knows,
/// and `DESCRIBE FLOW` names the copy's NATS JetStream stream on its own
/// address, which the relay then pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_only_remote_host_is_read_through_the_broker_it_describes() {
    let broker = Nats::start();
    let js = async_nats::jetstream::new(async_nats::connect(broker.url()).await.expect("broker"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "COPY_TIME".into(),
        subjects: vec!["copy.time".into()],
        ..Default::default()
    })
    .await
    .expect("the remote host's stream");
    for i in 0..3 {
        js.publish(
            "copy.time",
            format!(r#"{{"specversion":"1.0","id":"t{i}","source":"urn:unix","type":"tick"}}"#)
                .into(),
        )
        .await
        .expect("published")
        .await
        .expect("stored");
    }
    let fake = draft_agent(format!(
        "type=nats-jetstream\r\nstream=COPY_TIME\r\nserver={}",
        broker.url()
    ))
    .await;
    let dns = hostile_dns("fnaa.unix.ar", fake.port);
    let a = anonymous_peer_host(&dns).await;
    let mut admin = a.admin().await;
    admin
        .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
        .await
        .expect("the remote host accepts");
    let events = support::eventually(Duration::from_secs(30), "the events arrive", || async {
        let mut ids = Vec::new();
        a.admin()
            .await
            .read("READ FLOW t.flows.emiliano.ar FROM START", |line| {
                ids.push(line.to_owned());
                true
            })
            .await
            .ok()?;
        (ids.len() == 3).then_some(ids)
    })
    .await;
    assert!(events.iter().any(|e| e.contains("\"t2\"")), "{events:?}");
    let (subs, _) = admin.data("LIST SUBSCRIPTIONS").await.expect("listed");
    assert!(subs.iter().any(|l| l.ends_with(" running")), "{subs:?}");
}

/// The same host describing a Kafka topic: the subscription ends, saying
/// why, instead of claiming to run while nothing can arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_only_remote_host_on_kafka_ends_the_subscription_clearly() {
    let fake =
        draft_agent("type=kafka\r\ntopic=time.flows.unix.ar\r\nserver=kf1.unix.ar:9092".to_owned())
            .await;
    let dns = hostile_dns("fnaa.unix.ar", fake.port);
    let a = anonymous_peer_host(&dns).await;
    a.admin()
        .await
        .data("SUBSCRIBE time.flows.unix.ar LOCAL t.flows.emiliano.ar")
        .await
        .expect("the remote host accepts");
    let line = support::eventually(Duration::from_secs(30), "the subscription ends", || async {
        let (lines, _) = a.admin().await.data("LIST SUBSCRIPTIONS").await.ok()?;
        lines.into_iter().find(|l| l.contains(" revoked "))
    })
    .await;
    assert!(line.contains("broker type kafka not supported"), "{line}");
}

/// A remote refusal with a long text is quoted short, and handled like
/// any refusal (permanent here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_remote_refusal_is_quoted_short() {
    let fake = FakeAgent::start(|line| {
        after_login(line, |_| {
            Answer::Send(format!("555 {}\r\n", "no ".repeat(20_000)).into_bytes())
        })
    })
    .await;
    let dns = hostile_dns("fnaa.unix.ar", fake.port);
    let a = anonymous_peer_host(&dns).await;
    let refused = subscribe_remote(&a).await;
    assert!(
        matches!(refused.code().map(u16::from), Some(555)),
        "{refused}"
    );
    assert!(
        refused.to_string().len() < 1000,
        "{} bytes",
        refused.to_string().len()
    );
    a.anonymous().await.command("NOOP").await.expect("served");
}

/// A quota with room for two holds against six requests at once: each
/// principal's requests are counted and made one at a time. A pipeline is
/// held to the processor quota like processors made one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_against_concurrent_requests_and_pipelines() {
    use flowd::api::client::{ApiClient, Credentials};
    use flowd::api::proto;
    let a = host(|c| {
        c.quotas.subscriptions_per_account = 2;
        c.quotas.processors_per_account = 2;
        c.api.listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    public_flow(&a, "news.flows.emiliano.ar").await;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(a.login("alice", "alice-password").await.expect("alice"));
    }
    let tries: Vec<_> = sessions
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.data("SUBSCRIBE news.flows.emiliano.ar").await }))
        .collect();
    let mut made = 0;
    for t in tries {
        match t.await.expect("joined") {
            Ok(_) => made += 1,
            Err(e) => {
                assert_eq!(e.code().map(u16::from), Some(450), "{e}");
                assert!(e.to_string().contains("quota"), "{e}");
            }
        }
    }
    assert_eq!(made, 2, "the quota's room, no more");

    let mut admin = a.admin().await;
    for line in [
        "CREATE FLOW in.flows.emiliano.ar",
        "CREATE FLOW out.flows.emiliano.ar",
        "GRANT alice WRITE ON flows.emiliano.ar",
    ] {
        admin.command(line).await.expect(line);
    }
    let api = ApiClient::connect(
        &format!("http://{}", a.daemon.api_addr().expect("API")),
        &Credentials::Password {
            user: "alice".into(),
            password: "alice-password".into(),
        },
        None,
    )
    .await
    .expect("connects");
    let bytes = std::fs::read(support::component("flow_filter")).expect("component");
    api.push("filter", "1.0.0", bytes, |_| {})
        .await
        .expect("pushed");
    let manifest = |steps: usize| {
        let mut text = String::from(
            "apiVersion: flowd/v1\nkind: Pipeline\nname: chain\n\
             inputs:\n  in: flow://in.flows.emiliano.ar\n\
             outputs:\n  out: flow://out.flows.emiliano.ar\nsteps:\n",
        );
        for i in 0..steps {
            let from = if i == 0 {
                "in".to_owned()
            } else {
                format!("s{}", i - 1)
            };
            let to = if i + 1 == steps {
                "out".to_owned()
            } else {
                format!("s{i}")
            };
            text.push_str(&format!(
                "  - name: s{i}\n    component: filter@1.0.0\n    from: {from}\n    to: {to}\n\
                 \x20   config:\n      where: type exists\n"
            ));
        }
        text
    };
    let apply = |steps: usize| {
        let api = api.clone();
        let manifest = manifest(steps);
        async move {
            api.pipelines()
                .apply(proto::ApplyRequest {
                    manifest,
                    dry_run: false,
                })
                .await
        }
    };
    let refused = apply(3).await.expect_err("three steps, room for two");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("processors per account"),
        "{refused}"
    );
    apply(2).await.expect("two steps fit");
    // Re-applying the same pipeline counts its own steps once.
    apply(2).await.expect("the same two steps again");

    // The processor log: alice reads her pipeline's; bob reads neither the
    // pipeline's nor a step's, and learns nothing more than for a name
    // that does not exist.
    use futures::StreamExt;
    let read = |api: ApiClient, name: &str| {
        let request = proto::ReadLogsRequest {
            name: name.into(),
            follow: false,
            since_ms: 0,
        };
        async move {
            let records = api.logs().read(request).await?.into_inner();
            Ok::<_, tonic::Status>(records.collect::<Vec<_>>().await.len())
        }
    };
    read(api.clone(), "chain").await.expect("alice reads hers");
    read(api.clone(), "chain-s0").await.expect("and a step's");
    let bob = ApiClient::connect(
        &format!("http://{}", a.daemon.api_addr().expect("API")),
        &Credentials::Password {
            user: "bob".into(),
            password: "bob-password".into(),
        },
        None,
    )
    .await
    .expect("connects");
    let unknown = read(bob.clone(), "no-such-thing")
        .await
        .expect_err("nothing there");
    for name in ["chain", "chain-s0"] {
        let refused = read(bob.clone(), name).await.expect_err("not bob's");
        assert_eq!(refused.code(), unknown.code(), "{name}: {refused}");
    }
}
