//! FNAP end to end: a real host (real nats-server) spoken to over TCP, raw
//! and through the client library: the draft's proof-of-concept transcripts,
//! every command, TLS, authorization and hostile clients.

mod support;

use flowd::accounts::Accounts;
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd_fnap::client::{Client, ClientError, Security};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use support::{Nats, code, component, eventually};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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

    fn tls_addr(&self) -> String {
        self.daemon
            .fnap_tls_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    fn cert(&self) -> PathBuf {
        self.state.path().join("tls/cert.pem")
    }

    async fn login(&self, user: &str) -> Client {
        let mut client = Client::connect(&self.addr(), &Security::Plain)
            .await
            .expect("connects");
        client
            .authenticate_plain(user, &format!("{user}-password"))
            .await
            .expect("authenticates");
        client
    }

    async fn admin(&self) -> Client {
        let mut client = Client::connect(&self.addr(), &Security::Plain)
            .await
            .expect("connects");
        client
            .authenticate_plain("test", "test")
            .await
            .expect("authenticates");
        client
    }

    async fn anonymous(&self) -> Client {
        let mut client = Client::connect(&self.addr(), &Security::Plain)
            .await
            .expect("connects");
        client.authenticate_anonymous().await.expect("anonymous");
        client
    }
}

/// A host `fnaa.unix.ar` serving `flows.unix.ar`, with accounts `test`
/// (password `test`, administrator), `alice` and `bob` (`<name>-password`).
async fn host(tune: impl FnOnce(&mut Config)) -> Host {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut accounts = Accounts::default();
    accounts.add("test", "test", true).expect("account");
    accounts
        .add("alice", "alice-password", false)
        .expect("account");
    accounts.add("bob", "bob-password", false).expect("account");
    accounts.save(state.path()).expect("saved");
    let mut config = Config::default();
    config.participant.fqdn = "fnaa.unix.ar".into();
    config.participant.namespaces = vec!["flows.unix.ar".into()];
    config.participant.state_dir = state.path().to_owned();
    config.nats.urls = vec![nats.url()];
    config.metrics.listen = None;
    config.api.listen = None;
    config.console.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.auth_failure_delay_ms = 10;
    // The host's own name service is also its resolver: lookups stay local.
    let dns = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.fns.listen = Some(dns);
    config.fns.nameserver = Some(dns);
    tune(&mut config);
    let daemon = Daemon::start(config).await.expect("host starts");
    Host {
        _nats: nats,
        state,
        daemon,
    }
}

/// A raw FNAP connection, as with telnet.
struct Raw {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        let (r, w) = TcpStream::connect(addr)
            .await
            .expect("connects")
            .into_split();
        Raw {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("sent");
    }

    /// The next line, without its CRLF; "" at EOF.
    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
            .await
            .expect("the server answers in time")
            .expect("reads");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    async fn exchange(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line().await
    }

    /// Lines up to and including the next reply line.
    async fn data(&mut self, line: &str) -> Vec<String> {
        self.send(line).await;
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            let done = l.is_empty()
                || (l.len() >= 3
                    && l.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                    && l != "220 DATA");
            lines.push(l);
            if done {
                return lines;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drafts_proof_of_concept_transcripts_replay() {
    let host = host(|_| {}).await;
    let mut raw = Raw::connect(&host.addr()).await;
    // Use case 1: authenticating a user.
    assert_eq!(raw.line().await, "220 fnaa.unix.ar FNAA");
    assert_eq!(raw.exchange("AUTHENTICATE PLAIN").await, "220 OK");
    assert_eq!(raw.exchange("AHRlc3QAdGVzdA==").await, "220 Authenticated");
    // Use case 2: creating a flow.
    assert_eq!(
        raw.exchange("CREATE FLOW time.flows.unix.ar").await,
        "220 OK time.flows.unix.ar"
    );
    // Use case 3: describing a flow.
    let described = raw.data("DESCRIBE FLOW time.flows.unix.ar").await;
    assert_eq!(described.first().map(String::as_str), Some("220 DATA"));
    assert_eq!(described.last().map(String::as_str), Some("220 OK"));
    for expected in [
        "flow=time.flows.unix.ar",
        "type=nats-jetstream",
        "stream=FLOW_time_flows_unix_ar",
        "subject=flow.time.flows.unix.ar",
    ] {
        assert!(
            described.iter().any(|l| l == expected),
            "{expected} in {described:?}"
        );
    }
    assert!(
        described
            .iter()
            .any(|l| l.starts_with("server=nats://127.0.0.1:"))
    );
    // Use case 4: subscribing.
    let subscribed = raw
        .data("SUBSCRIBE time.flows.unix.ar LOCAL emiliano.ar-time.flows.unix.ar")
        .await;
    assert_eq!(subscribed.len(), 3, "{subscribed:?}");
    assert_eq!(subscribed[0], "220 DATA");
    let copy = &subscribed[1];
    let token = copy
        .strip_suffix(".time.flows.unix.ar")
        .expect("a copy of the flow");
    assert!(
        token.len() == 7
            && token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{copy}"
    );
    assert_eq!(subscribed[2], "220 OK");
    assert_eq!(raw.exchange("QUIT").await, "220 Bye");
    assert_eq!(raw.line().await, "", "the server closes after QUIT");

    // The subscription really carries events: flow -> copy -> local flow.
    let mut admin = host.admin().await;
    admin
        .block(
            "WRITE FLOW time.flows.unix.ar",
            [r#"{"specversion":"1.0","id":"t1","source":"urn:clock","type":"tick"}"#],
        )
        .await
        .expect("written");
    let got = eventually(
        Duration::from_secs(30),
        "the event reaches the local flow",
        || async {
            let mut events = Vec::new();
            host.admin()
                .await
                .read("READ FLOW emiliano.ar-time.flows.unix.ar FROM START", |l| {
                    events.push(l.to_owned());
                    true
                })
                .await
                .ok()?;
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    assert!(got[0].contains("\"id\":\"t1\""), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_succeeds_and_fails_as_documented() {
    let host = host(|_| {}).await;
    let mut raw = Raw::connect(&host.addr()).await;
    raw.line().await;
    // Before authentication: session commands only.
    assert!(raw.exchange("NOOP").await.starts_with("220"));
    assert!(raw.exchange("LIST FLOWS").await.starts_with("530 "));
    assert!(
        raw.exchange("frobnicate")
            .await
            .starts_with("500 unknown command")
    );
    assert!(
        raw.exchange("create flow")
            .await
            .starts_with("501 usage: CREATE FLOW")
    );
    let help = raw.data("help").await;
    assert!(
        help.iter()
            .any(|l| l.starts_with("SUBSCRIBE <remote-flow>")),
        "{help:?}"
    );
    let caps = raw.data("capabilities").await;
    for expected in [
        "AUTH PLAIN ANONYMOUS",
        "STARTTLS",
        "PROCESSORS bridge collector distributor signal",
    ] {
        assert!(caps.iter().any(|l| l == expected), "{expected} in {caps:?}");
    }
    assert_eq!(
        raw.exchange("AUTHENTICATE PLAIN AHRlc3QAdGVzdA==").await,
        "220 Authenticated"
    );
    assert!(raw.exchange("AUTHENTICATE PLAIN").await.starts_with("503 "));

    let mut c = host.admin().await;
    // Namespaces.
    c.command("CREATE NAMESPACE team.flows.unix.ar OWNER alice")
        .await
        .expect("created");
    assert_eq!(
        code(
            c.command("CREATE NAMESPACE team.flows.unix.ar")
                .await
                .expect_err("dup")
        ),
        553
    );
    let (lines, _) = c
        .data("DESCRIBE NAMESPACE team.flows.unix.ar")
        .await
        .expect("described");
    assert!(lines.contains(&"owner=alice".to_owned()), "{lines:?}");
    let (children, _) = c
        .data("LIST NAMESPACES flows.unix.ar")
        .await
        .expect("listed");
    assert_eq!(children, ["team.flows.unix.ar"]);
    assert_eq!(
        code(
            c.command("DESCRIBE NAMESPACE nope.unix.ar")
                .await
                .expect_err("none")
        ),
        550
    );
    // Flows, including one whose name starts with a digit (dot-stuffed in lists).
    c.command("CREATE FLOW 5min.team.flows.unix.ar MAX-AGE 3600")
        .await
        .expect("created");
    c.command("CREATE FLOW orders.team.flows.unix.ar")
        .await
        .expect("created");
    assert_eq!(
        code(
            c.command("CREATE FLOW orders.team.flows.unix.ar")
                .await
                .expect_err("dup")
        ),
        553
    );
    assert_eq!(
        code(
            c.command("CREATE FLOW x.elsewhere.org")
                .await
                .expect_err("no ns")
        ),
        550
    );
    let mut raw_list = raw.data("LIST FLOWS team.flows.unix.ar").await;
    assert!(
        raw_list.contains(&".5min.team.flows.unix.ar".to_owned()),
        "stuffed: {raw_list:?}"
    );
    raw_list.clear();
    let (flows, _) = c
        .data("LIST FLOWS team.flows.unix.ar")
        .await
        .expect("listed");
    assert_eq!(
        flows,
        ["5min.team.flows.unix.ar", "orders.team.flows.unix.ar"]
    );
    c.command("UPDATE FLOW orders.team.flows.unix.ar PUBLIC MAX-BYTES 1000000")
        .await
        .expect("updated");
    let (described, _) = c
        .data("DESCRIBE FLOW orders.team.flows.unix.ar")
        .await
        .expect("described");
    assert!(
        described.contains(&"public=true".to_owned()),
        "{described:?}"
    );
    assert!(
        described.contains(&"max-bytes=1000000".to_owned()),
        "{described:?}"
    );
    assert!(
        described.contains(&"namespace=team.flows.unix.ar".to_owned()),
        "{described:?}"
    );
    assert_eq!(
        code(
            c.command("DELETE NAMESPACE team.flows.unix.ar")
                .await
                .expect_err("not empty")
        ),
        555
    );

    // Write and read: CloudEvents and raw lines, positions, counts.
    let reply = c
        .block(
            "WRITE FLOW orders.team.flows.unix.ar",
            [
                r#"{"specversion":"1.0","id":"o1","source":"urn:shop","type":"order"}"#,
                r#"{"specversion":"1.0","id":"o2","source":"urn:shop","type":"order"}"#,
                r#"{"amount": 3}"#,
                r#"{"specversion":"1.0","id":"o1","source":"urn:shop","type":"order"}"#,
            ],
        )
        .await
        .expect("written");
    assert_eq!(reply.text, "OK 3 events written, 1 duplicates");
    let bad = c
        .block(
            "WRITE FLOW orders.team.flows.unix.ar",
            [r#"{"specversion":"1.0"}"#],
        )
        .await
        .expect_err("not a CloudEvent");
    assert_eq!(code(bad), 501);
    let mut seen = Vec::new();
    let end = c
        .read("READ FLOW orders.team.flows.unix.ar FROM START", |l| {
            seen.push(l.to_owned());
            true
        })
        .await
        .expect("read");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(end.text, "OK 3 events");
    seen.clear();
    c.read("READ FLOW orders.team.flows.unix.ar FROM 2 COUNT 1", |l| {
        seen.push(l.to_owned());
        true
    })
    .await
    .expect("read");
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("\"id\":\"o2\""), "{seen:?}");
    // FOLLOW streams until the client says stop.
    seen.clear();
    let end = c
        .read(
            "READ FLOW orders.team.flows.unix.ar FROM START FOLLOW",
            |l| {
                seen.push(l.to_owned());
                seen.len() < 2
            },
        )
        .await
        .expect("read stops");
    assert!(end.text.starts_with("OK"), "{end:?}");
    assert!(
        c.command("NOOP").await.is_ok(),
        "the session goes on after a stopped read"
    );

    // Processors.
    let bytes = std::fs::read(component("flow_passthrough")).expect("component");
    let digest = c.put_component(&bytes).await.expect("uploaded");
    assert!(digest.starts_with("sha256:"));
    c.block(
        "CREATE PROCESSOR copy-orders",
        [
            "kind=bridge".to_owned(),
            format!("component={digest}"),
            "input=orders.team.flows.unix.ar".to_owned(),
            "output=5min.team.flows.unix.ar".to_owned(),
        ],
    )
    .await
    .expect("created");
    let wrong = c
        .block(
            "CREATE PROCESSOR wrong-kind",
            [
                "kind=collector".to_owned(),
                format!("component={digest}"),
                "input=orders.team.flows.unix.ar".to_owned(),
                "output=5min.team.flows.unix.ar".to_owned(),
            ],
        )
        .await
        .expect_err("a bridge is not a collector");
    assert_eq!(code(wrong), 555);
    // Only components are stored: not the built-in relay's marker, not
    // any other bytes.
    let spoofed = c
        .put_component(b"builtin:relay")
        .await
        .expect_err("not a component");
    assert_eq!(code(spoofed), 555);
    let spoof = flowd_wasm::digest(b"builtin:relay");
    let refused = c
        .block(
            "CREATE PROCESSOR spoof",
            ["kind=bridge".to_owned(), format!("component={spoof}")],
        )
        .await
        .expect_err("not a component, no flows");
    assert!(matches!(code(refused), 550 | 555));
    let refused = c
        .block(
            "CREATE PROCESSOR no-outputs",
            [
                "kind=bridge".to_owned(),
                format!("component={digest}"),
                "input=orders.team.flows.unix.ar".to_owned(),
            ],
        )
        .await
        .expect_err("no output");
    assert_eq!(code(refused), 555);
    let (procs, _) = c.data("LIST PROCESSORS").await.expect("listed");
    let line = procs
        .iter()
        .find(|l| l.starts_with("copy-orders bridge "))
        .unwrap_or_else(|| panic!("{procs:?}"));
    // id kind phase events-in events-out dead-lettered, the counters those
    // DESCRIBE PROCESSOR reports.
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 6, "{line}");
    let (described, _) = c
        .data("DESCRIBE PROCESSOR copy-orders")
        .await
        .expect("described");
    for (field, name) in fields[3..]
        .iter()
        .zip(["events-in", "events-out", "dead-lettered"])
    {
        field.parse::<u64>().expect("a count");
        let reported = described
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or("0");
        assert!(
            field.parse::<u64>().ok() <= reported.parse::<u64>().ok(),
            "{name}: {line} / {described:?}"
        );
    }
    c.command("PAUSE PROCESSOR copy-orders")
        .await
        .expect("paused");
    let (described, _) = c
        .data("DESCRIBE PROCESSOR copy-orders")
        .await
        .expect("described");
    assert!(
        described.contains(&"paused=true".to_owned()),
        "{described:?}"
    );
    c.command("RESUME PROCESSOR copy-orders")
        .await
        .expect("resumed");
    let copied = eventually(
        Duration::from_secs(30),
        "the processor copies the orders",
        || async {
            let mut c = host.admin().await;
            let mut n = 0;
            c.read("READ FLOW 5min.team.flows.unix.ar FROM START", |_| {
                n += 1;
                true
            })
            .await
            .ok()?;
            (n == 3).then_some(n)
        },
    )
    .await;
    assert_eq!(copied, 3);
    let refused = c
        .block("UPDATE PROCESSOR copy-orders", ["config.note=v2"])
        .await
        .expect_err("no such key");
    assert_eq!(
        code(refused),
        555,
        "the component checks its configuration first"
    );
    let updated = c
        .block(
            "UPDATE PROCESSOR copy-orders",
            [format!("component={digest}")],
        )
        .await
        .expect("updated");
    assert_eq!(updated.text, "OK copy-orders generation 2");
    c.command("DELETE PROCESSOR copy-orders")
        .await
        .expect("deleted");
    assert_eq!(
        code(
            c.command("DELETE PROCESSOR copy-orders")
                .await
                .expect_err("gone")
        ),
        550
    );

    // Subscriptions, both sides.
    let (copy, _) = c
        .data("SUBSCRIBE orders.team.flows.unix.ar LOCAL mirror.flows.unix.ar")
        .await
        .expect("subscribed");
    let copy = copy[0].clone();
    let (subs, _) = c.data("LIST SUBSCRIPTIONS").await.expect("listed");
    assert!(
        subs.iter()
            .any(|l| l.starts_with("mirror.flows.unix.ar orders.team.flows.unix.ar")),
        "{subs:?}"
    );
    let (subscribers, _) = c
        .data("LIST SUBSCRIBERS orders.team.flows.unix.ar")
        .await
        .expect("listed");
    assert_eq!(subscribers, [format!("{copy} test")]);
    c.command("PAUSE SUBSCRIPTION mirror.flows.unix.ar")
        .await
        .expect("paused");
    c.command("RESUME SUBSCRIPTION mirror.flows.unix.ar")
        .await
        .expect("resumed");
    c.command("STOP SUBSCRIPTION mirror.flows.unix.ar")
        .await
        .expect("stopped");
    assert_eq!(
        code(
            c.command("STOP SUBSCRIPTION mirror.flows.unix.ar")
                .await
                .expect_err("gone")
        ),
        550
    );
    let (subscribers, _) = c
        .data("LIST SUBSCRIBERS orders.team.flows.unix.ar")
        .await
        .expect("listed");
    assert!(
        subscribers.is_empty(),
        "stopping removes the copy: {subscribers:?}"
    );
    let (copy2, _) = c
        .data("SUBSCRIBE orders.team.flows.unix.ar")
        .await
        .expect("subscribed");
    c.command(&format!("UNSUBSCRIBE {}", copy2[0]))
        .await
        .expect("unsubscribed");
    let (copy3, _) = c
        .data("SUBSCRIBE orders.team.flows.unix.ar")
        .await
        .expect("subscribed");
    c.command(&format!("REMOVE SUBSCRIBER {}", copy3[0]))
        .await
        .expect("removed");
    assert_eq!(
        code(
            c.command(&format!("DESCRIBE FLOW {}", copy3[0]))
                .await
                .expect_err("gone")
        ),
        550
    );
    assert_eq!(
        code(
            c.command("SUBSCRIBE time.other.example.net")
                .await
                .expect_err("remote")
        ),
        555,
        "another host's flow needs LOCAL"
    );
    assert_eq!(
        code(
            c.command("SUBSCRIBE time.other.example.net LOCAL here.flows.unix.ar")
                .await
                .expect_err("not in DNS")
        ),
        550,
        "the name service knows no such flow"
    );
    assert_eq!(
        code(
            c.command("DESCRIBE FLOW here.flows.unix.ar")
                .await
                .expect_err("no")
        ),
        550,
        "a failed subscription leaves no local flow behind"
    );

    // Deleting.
    c.command("DELETE FLOW 5min.team.flows.unix.ar")
        .await
        .expect("deleted");
    assert_eq!(
        code(
            c.command("DELETE FLOW 5min.team.flows.unix.ar")
                .await
                .expect_err("gone")
        ),
        550
    );
    c.command("GRANT bob READ ON team.flows.unix.ar")
        .await
        .expect("granted");
    c.command("REVOKE bob ON team.flows.unix.ar")
        .await
        .expect("revoked");
    assert_eq!(
        code(
            c.command("REVOKE bob ON team.flows.unix.ar")
                .await
                .expect_err("none")
        ),
        550
    );
    c.quit().await.expect("quit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_grants_and_anonymous_access() {
    let host = host(|_| {}).await;
    let mut admin = host.admin().await;
    admin
        .command("CREATE NAMESPACE alice.flows.unix.ar OWNER alice")
        .await
        .expect("ns");
    admin
        .command("CREATE NAMESPACE bob.flows.unix.ar OWNER bob")
        .await
        .expect("ns");

    let mut alice = host.login("alice").await;
    let mut bob = host.login("bob").await;
    alice
        .command("CREATE FLOW private.alice.flows.unix.ar")
        .await
        .expect("own namespace");
    alice
        .command("CREATE FLOW open.alice.flows.unix.ar PUBLIC")
        .await
        .expect("own namespace");
    alice
        .block(
            "WRITE FLOW private.alice.flows.unix.ar",
            [r#"{"secret": 1}"#],
        )
        .await
        .expect("owner writes");
    alice
        .block("WRITE FLOW open.alice.flows.unix.ar", [r#"{"news": 1}"#])
        .await
        .expect("owner writes");

    // Another user can neither write to, delete nor read alice's private flow.
    assert_eq!(
        code(
            bob.block("WRITE FLOW private.alice.flows.unix.ar", ["{}"])
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            bob.command("DELETE FLOW private.alice.flows.unix.ar")
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            bob.command("CREATE FLOW x.alice.flows.unix.ar")
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            bob.read("READ FLOW private.alice.flows.unix.ar FROM START", |_| true)
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            bob.command("CREATE NAMESPACE sub.alice.flows.unix.ar")
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            bob.command("GRANT bob ADMIN ON alice.flows.unix.ar")
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            bob.command("CREATE NAMESPACE rogue.example.org")
                .await
                .expect_err("no")
        ),
        554
    );
    // A public flow is readable by all.
    let mut n = 0;
    bob.read("READ FLOW open.alice.flows.unix.ar FROM START", |_| {
        n += 1;
        true
    })
    .await
    .expect("public");
    assert_eq!(n, 1);
    // A grant opens the private flow for reading, not for writing.
    alice
        .command("GRANT bob READ ON alice.flows.unix.ar")
        .await
        .expect("granted");
    let mut n = 0;
    bob.read("READ FLOW private.alice.flows.unix.ar FROM START", |_| {
        n += 1;
        true
    })
    .await
    .expect("granted read");
    assert_eq!(n, 1);
    assert_eq!(
        code(
            bob.block("WRITE FLOW private.alice.flows.unix.ar", ["{}"])
                .await
                .expect_err("no")
        ),
        554
    );
    let (visible, _) = bob.data("LIST FLOWS").await.expect("listed");
    assert!(
        visible.contains(&"private.alice.flows.unix.ar".to_owned()),
        "{visible:?}"
    );

    // Anonymous: public flows only, and read only.
    let mut anon = host.anonymous().await;
    let (visible, _) = anon.data("LIST FLOWS").await.expect("listed");
    assert_eq!(visible, ["open.alice.flows.unix.ar"]);
    let mut n = 0;
    anon.read("READ FLOW open.alice.flows.unix.ar FROM START", |_| {
        n += 1;
        true
    })
    .await
    .expect("public");
    assert_eq!(n, 1);
    assert_eq!(
        code(
            anon.read("READ FLOW private.alice.flows.unix.ar", |_| true)
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            anon.block("WRITE FLOW open.alice.flows.unix.ar", ["{}"])
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            anon.command("CREATE FLOW y.alice.flows.unix.ar")
                .await
                .expect_err("no")
        ),
        554
    );
    assert_eq!(
        code(
            anon.command("DELETE FLOW open.alice.flows.unix.ar")
                .await
                .expect_err("no")
        ),
        554
    );
    // Anonymous may subscribe to a public flow (a copy), not to a private one.
    anon.data("SUBSCRIBE open.alice.flows.unix.ar")
        .await
        .expect("public subscribe");
    assert_eq!(
        code(
            anon.data("SUBSCRIBE private.alice.flows.unix.ar")
                .await
                .expect_err("no")
        ),
        554
    );

    // Processors belong to their creator.
    let digest = alice
        .put_component(&std::fs::read(component("flow_passthrough")).expect("component"))
        .await
        .expect("uploaded");
    alice
        .block(
            "CREATE PROCESSOR alice-copy",
            [
                "kind=bridge".to_owned(),
                format!("component={digest}"),
                "input=private.alice.flows.unix.ar".to_owned(),
                "output=open.alice.flows.unix.ar".to_owned(),
            ],
        )
        .await
        .expect("created");
    assert_eq!(
        code(
            bob.command("DELETE PROCESSOR alice-copy")
                .await
                .expect_err("no")
        ),
        550
    );
    assert_eq!(
        code(
            bob.command("PAUSE PROCESSOR alice-copy")
                .await
                .expect_err("no")
        ),
        550
    );
    // Another's processor is answered exactly as a missing one.
    let refusal = bob
        .data("DESCRIBE PROCESSOR alice-copy")
        .await
        .expect_err("not bob's")
        .to_string();
    let missing = bob
        .data("DESCRIBE PROCESSOR nobody-copy")
        .await
        .expect_err("missing")
        .to_string();
    assert_eq!(
        refusal.replace("alice-copy", "<id>"),
        missing.replace("nobody-copy", "<id>"),
        "the refusal does not tell it exists, nor who owns it"
    );
    let bob_processor = bob
        .block(
            "CREATE PROCESSOR bob-steal",
            [
                "kind=bridge".to_owned(),
                format!("component={digest}"),
                "input=open.alice.flows.unix.ar".to_owned(),
                "output=private.alice.flows.unix.ar".to_owned(),
            ],
        )
        .await
        .expect_err("no write right on the output");
    assert_eq!(code(bob_processor), 554);
}

async fn tls_session(addr: &str, security: Security) -> Client {
    Client::connect(addr, &security).await.expect("TLS session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_starttls_and_plain_refused_in_clear() {
    // No trusted networks: PLAIN needs TLS even on loopback.
    let host = host(|c| c.fnap.plain_auth_from = Vec::new()).await;
    let mut clear = Client::connect(&host.addr(), &Security::Plain)
        .await
        .expect("connects");
    let (caps, _) = clear.data("CAPABILITIES").await.expect("caps");
    assert!(
        caps.contains(&"AUTH ANONYMOUS".to_owned()) && caps.contains(&"STARTTLS".to_owned()),
        "PLAIN is not offered in clear here: {caps:?}"
    );
    let refused = clear
        .authenticate_plain("test", "test")
        .await
        .expect_err("in clear");
    assert_eq!(code(refused), 534);

    let ca = host.cert();
    let mut upgraded = tls_session(&host.addr(), Security::StartTls { ca: ca.clone() }).await;
    upgraded
        .authenticate_plain("test", "test")
        .await
        .expect("PLAIN over STARTTLS");
    let (caps, _) = upgraded.data("CAPABILITIES").await.expect("caps");
    assert!(
        caps.contains(&"TLS".to_owned())
            && !caps.contains(&"STARTTLS".to_owned())
            && caps.contains(&"AUTH PLAIN ANONYMOUS".to_owned()),
        "{caps:?}"
    );
    assert_eq!(
        code(upgraded.command("STARTTLS").await.expect_err("twice")),
        503
    );

    let mut implicit = tls_session(&host.tls_addr(), Security::Implicit { ca: ca.clone() }).await;
    assert_eq!(implicit.greeting().text, "fnaa.unix.ar FNAA");
    implicit
        .authenticate_plain("test", "test")
        .await
        .expect("PLAIN over TLS");
    implicit
        .command("CREATE FLOW secure.flows.unix.ar")
        .await
        .expect("works over TLS");

    // A client that does not trust the certificate fails the handshake.
    let other = tempfile::tempdir().expect("tempdir");
    let stranger = support::issue_certificate(other.path(), &["127.0.0.1"]).0;
    let untrusted = Client::connect(&host.tls_addr(), &Security::Implicit { ca: stranger }).await;
    assert!(
        matches!(untrusted, Err(ClientError::Tls(_))),
        "untrusted certificate accepted"
    );

    // Wrong passwords are refused, slowed down, and end the session.
    let mut guesser = tls_session(&host.tls_addr(), Security::Implicit { ca }).await;
    for _ in 0..4 {
        assert_eq!(
            code(
                guesser
                    .authenticate_plain("test", "guess")
                    .await
                    .expect_err("bad")
            ),
            535
        );
    }
    let last = guesser
        .authenticate_plain("test", "guess")
        .await
        .expect_err("closed");
    assert_eq!(code(last), 421, "the fifth failure closes the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_certificate_issued_by_a_test_ca() {
    let pki = tempfile::tempdir().expect("tempdir");
    // Issued for `localhost` only.
    let (ca, cert, key) = support::issue_certificate(pki.path(), &["localhost"]);
    let host = host(|c| {
        c.fnap.tls.cert = Some(cert.clone());
        c.fnap.tls.key = Some(key.clone());
        c.fnap.plain_auth_from = Vec::new();
    })
    .await;
    assert!(
        !host.cert().exists(),
        "no self-signed certificate when one is configured"
    );
    let by_name = |addr: String| addr.replace("127.0.0.1", "localhost");
    let mut starttls =
        tls_session(&by_name(host.addr()), Security::StartTls { ca: ca.clone() }).await;
    starttls
        .authenticate_plain("test", "test")
        .await
        .expect("PLAIN over STARTTLS");
    starttls
        .command("CREATE FLOW ca.flows.unix.ar")
        .await
        .expect("served");
    let mut implicit = tls_session(
        &by_name(host.tls_addr()),
        Security::Implicit { ca: ca.clone() },
    )
    .await;
    implicit
        .authenticate_plain("alice", "alice-password")
        .await
        .expect("PLAIN over TLS");
    // The name must match: the certificate is for `localhost`, not 127.0.0.1.
    let mismatch = Client::connect(&host.tls_addr(), &Security::Implicit { ca }).await;
    assert!(
        matches!(mismatch, Err(ClientError::Tls(_))),
        "a name the certificate does not hold is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_hurt_the_others() {
    let host = host(|c| {
        c.fnap.max_line = 4096;
        c.fnap.idle_timeout_secs = 3;
        c.fnap.max_commands_before_auth = 5;
    })
    .await;
    let addr = host.addr();

    // An over-long line and binary garbage get errors; the session goes on.
    let mut raw = Raw::connect(&addr).await;
    raw.line().await;
    raw.send(&"A".repeat(100_000)).await;
    assert_eq!(raw.line().await, "500 line too long (at most 4096 bytes)");
    raw.writer
        .write_all(b"\xff\xfe\x00garbage\r\n")
        .await
        .expect("sent");
    assert_eq!(raw.line().await, "500 not a line of UTF-8 text");
    assert_eq!(raw.exchange("NOOP").await, "220 OK");
    // Too many commands before authenticating: closed.
    for _ in 0..4 {
        raw.exchange("NOOP").await;
    }
    assert_eq!(
        raw.exchange("NOOP").await,
        "421 too many commands before authentication"
    );
    assert_eq!(raw.line().await, "");

    // 1 000 idle connections, a half-open one and a slow writer.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(&addr).await.expect("idle connection"));
    }
    let mut half = TcpStream::connect(&addr).await.expect("connects");
    half.write_all(b"CREATE FLOW half")
        .await
        .expect("partial line");
    let slow = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut raw = Raw::connect(&addr).await;
            raw.line().await;
            for b in b"NOOP\r\n" {
                raw.writer.write_all(&[*b]).await.expect("byte");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            raw.line().await
        }
    });
    // A well-behaved client is served meanwhile.
    let mut good = Client::connect(&addr, &Security::Plain)
        .await
        .expect("served");
    good.authenticate_plain("test", "test").await.expect("auth");
    good.command("CREATE FLOW good.flows.unix.ar")
        .await
        .expect("served");
    assert_eq!(slow.await.expect("slow client"), "220 OK");
    // Idle sessions are closed by the timeout, which frees them.
    let mut first = BufReader::new(idle.remove(0));
    let mut greeting = String::new();
    first.read_line(&mut greeting).await.expect("greeting");
    let mut closing = String::new();
    tokio::time::timeout(Duration::from_secs(20), first.read_line(&mut closing))
        .await
        .expect("closed by the idle timeout")
        .expect("reads");
    assert_eq!(closing.trim_end(), "421 idle timeout, closing");
    drop(idle);
    drop(half);
    good.command("NOOP").await.expect("still served");
}

/// A client that pipelines commands and never reads its replies does not
/// hold the server: once the replies stop leaving for the idle timeout, the
/// session is closed, long before the commands it sent are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed() {
    let host = host(|c| c.fnap.idle_timeout_secs = 2).await;
    let mut raw = Raw::connect(&host.addr()).await;
    assert!(raw.line().await.starts_with("220 "));
    // Authenticated, so that the limit of commands before authentication
    // is not what closes it. (`\0test\0test`)
    assert_eq!(
        raw.exchange("AUTHENTICATE PLAIN AHRlc3QAdGVzdA==").await,
        "220 Authenticated"
    );
    const SENT: usize = 200_000;
    let Raw { mut reader, writer } = raw;
    // The writer blocks once the server stops reading; it runs on its own.
    let writing = tokio::spawn(async move {
        let mut writer = writer;
        let help = b"HELP\r\n".repeat(1000);
        for _ in 0..SENT / 1000 {
            if writer.write_all(&help).await.is_err() {
                return false;
            }
        }
        true
    });
    // Not reading: the server's writes block, then time out.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut answered = 0usize;
    let mut line = String::new();
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => answered += usize::from(line.starts_with("220 DATA")),
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server closed the session");
    assert!(
        answered < SENT / 2,
        "closed long before answering everything: {answered} of {SENT} answered"
    );
    writing.abort();
    // The host goes on serving.
    let mut other = Raw::connect(&host.addr()).await;
    assert!(other.line().await.starts_with("220 "));
    assert_eq!(other.exchange("NOOP").await, "220 OK");
}

/// `LIST AGENTS` tells where the management API listens to the
/// participant's administrators only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_administrators_see_where_the_api_listens() {
    let host = host(|c| c.api.listen = Some(([127, 0, 0, 1], 0).into())).await;
    let listed = eventually(Duration::from_secs(20), "the host's heartbeat", || async {
        let (lines, _) = host.admin().await.data("LIST AGENTS").await.ok()?;
        lines
            .iter()
            .any(|l| l.contains("api=127.0.0.1:"))
            .then_some(lines)
    })
    .await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let mut alice = host.login("alice").await;
    let (lines, _) = alice.data("LIST AGENTS").await.expect("listed");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(" api=- ") && lines[0].contains("fnap="),
        "an account sees the hosts, not their API: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_address_are_limited() {
    let host = host(|c| c.fnap.max_sessions_per_address = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(&host.addr()).await;
        assert!(raw.line().await.starts_with("220 "));
        held.push(raw);
    }
    let mut refused = Raw::connect(&host.addr()).await;
    assert_eq!(
        refused.line().await,
        "421 too many sessions from your address"
    );
    drop(held);
    let ok = eventually(Duration::from_secs(10), "a slot frees up", || async {
        let mut raw = Raw::connect(&host.addr()).await;
        let line = raw.line().await;
        line.starts_with("220 ").then_some(line)
    })
    .await;
    assert_eq!(ok, "220 fnaa.unix.ar FNAA");
    let _: Option<SocketAddr> = host.daemon.fnap_addr();
}
