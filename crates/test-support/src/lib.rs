//! What the tests and benchmarks of the workspace share: where the built
//! components are, free loopback ports, real nats-servers (one, or a
//! cluster), BIND9, certificates, polling, and FNAP log-in as the local
//! administrator. Real parts only: nothing here fakes a broker or a DNS
//! server.

#![allow(clippy::missing_panics_doc)]

use flowd_fnap::client::{Client, ClientError, Security};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Directory of the components built by `scripts/build-processors`:
/// `$FLOWD_COMPONENTS_DIR`, else `wasm32-wasip2/processor` under the target
/// directory.
pub fn components_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOWD_COMPONENTS_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("wasm32-wasip2/processor")
}

/// Path of a built component, e.g. `component("flow_filter")`.
pub fn component(name: &str) -> PathBuf {
    let path = components_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-processors first",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real nats-server with JetStream on loopback, owned by one test.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Nats {
    pub fn start() -> Nats {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut nats = Nats {
            child: None,
            port: free_port(),
            dir,
            _tmp: Some(tmp),
        };
        nats.spawn();
        nats
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let binary = flowd_broker::embedded::find_binary(None)
            .expect("nats-server installed by scripts/setup");
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and
    /// data directory.
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// Kills the server (SIGKILL); [`Nats::resume`] starts it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port and data directory.
    pub fn resume(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A local NATS cluster: `n` nats-servers with JetStream, routed to each
/// other on loopback (R3 streams need three).
pub struct NatsCluster {
    nodes: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    monitors: Vec<u16>,
    _tmp: tempfile::TempDir,
}

impl NatsCluster {
    /// `n` nodes in one cluster, every one JetStream-healthy. A start that
    /// does not become healthy (a node that could not bind a port picked
    /// for it, on a busy machine) is thrown away and made again on other
    /// ports, up to three times.
    pub fn start(n: usize) -> NatsCluster {
        for _ in 0..2 {
            if let Some(cluster) = NatsCluster::try_start(n, Duration::from_secs(40)) {
                return cluster;
            }
        }
        NatsCluster::try_start(n, Duration::from_secs(60))
            .expect("the NATS cluster never became healthy")
    }

    fn try_start(n: usize, within: Duration) -> Option<NatsCluster> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let binary = flowd_broker::embedded::find_binary(None)
            .expect("nats-server installed by scripts/setup");
        // 3n distinct ports (a port handed back by the system may come
        // again).
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < 3 * n {
            picked.insert(free_port());
        }
        let picked: Vec<u16> = picked.into_iter().collect();
        let ports: Vec<u16> = picked[..n].to_vec();
        let routes: Vec<u16> = picked[n..2 * n].to_vec();
        let monitors: Vec<u16> = picked[2 * n..].to_vec();
        let mut nodes = Vec::new();
        for i in 0..n {
            let others: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect();
            let child = Command::new(&binary)
                .args(["-a", "127.0.0.1", "-p", &ports[i].to_string()])
                .args(["-m", &monitors[i].to_string()])
                .args(["-js", "-sd"])
                .arg(tmp.path().join(format!("n{i}")))
                .args(["--server_name", &format!("n{i}")])
                .args(["--cluster_name", "flowd-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", routes[i])])
                .args(["--routes", &others.join(",")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            nodes.push(Some(child));
        }
        let mut cluster = NatsCluster {
            nodes,
            ports,
            monitors,
            _tmp: tmp,
        };
        // Ready when every node reports JetStream healthy and the meta
        // leader sees every other node current: a node healthy on its own
        // but not yet current with the leader makes an R3 stream's
        // placement fail ("no suitable peers").
        let deadline = Instant::now() + within;
        let healthy = cluster.monitors.iter().all(|port| {
            while !http_ok(*port, "/healthz") {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            true
        });
        if !healthy || !cluster.meta_current_by(deadline) {
            for i in 0..n {
                cluster.kill(i);
            }
            return None;
        }
        Some(cluster)
    }

    /// Whether, before `deadline`, a running node reports a meta leader
    /// whose replicas include every other running node as current and
    /// online (`/jsz`'s `meta_cluster`).
    fn meta_current_by(&self, deadline: Instant) -> bool {
        let running: Vec<String> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .map(|i| format!("n{i}"))
            .collect();
        loop {
            let current = self
                .nodes
                .iter()
                .zip(&self.monitors)
                .filter(|(node, _)| node.is_some())
                .filter_map(|(_, port)| http_get(*port, "/jsz"))
                .any(|body| meta_group_current(&body, &running));
            if current {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    /// SIGKILL of node `i` (it stays down).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `GET path` on a loopback port answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    http_get(port, path).is_some()
}

/// The body of `GET path` on a loopback port, if it answers 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    if !(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")) {
        return None;
    }
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

/// Whether a `/jsz` answer names a meta leader among `running` and lists
/// every other running node as a current, online replica.
fn meta_group_current(jsz: &str, running: &[String]) -> bool {
    let Ok(jsz) = serde_json::from_str::<serde_json::Value>(jsz) else {
        return false;
    };
    let meta = &jsz["meta_cluster"];
    let Some(leader) = meta["leader"].as_str() else {
        return false;
    };
    if !running.iter().any(|name| name == leader) {
        return false;
    }
    let replicas = meta["replicas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    running.iter().filter(|name| *name != leader).all(|name| {
        replicas.iter().any(|replica| {
            replica["name"].as_str() == Some(name)
                && replica["current"].as_bool() == Some(true)
                && replica["offline"].as_bool() != Some(true)
        })
    })
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} never opened");
}

/// A child process killed when the test ends, even by a panic (a leftover
/// child holding the test's output open would hang the test runner).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real BIND9 (Debian's `named`) serving one zone on a loopback port,
/// accepting RFC 2136 updates signed with a TSIG key made for this run.
pub struct Bind {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
    /// The `tsig-keygen` output (key `flowd-key`, hmac-sha256).
    pub key_file: PathBuf,
}

impl Bind {
    pub fn start(zone: &str) -> Bind {
        Bind::start_with(zone, "")
    }

    /// A zone holding `records` too (zone-file lines, relative to `zone`):
    /// DNS answers written by the test, as an attacker's resolver would
    /// give them.
    pub fn start_with(zone: &str, records: &str) -> Bind {
        let named = ["/usr/sbin/named", "/usr/bin/named"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("BIND9's named (scripts/setup installs Debian's bind9)");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        let port = free_port();
        let key = Command::new("tsig-keygen")
            .args(["-a", "hmac-sha256", "flowd-key"])
            .output()
            .expect("tsig-keygen (bind9-utils)");
        assert!(key.status.success(), "tsig-keygen failed");
        let key_file = path.join("tsig.key");
        std::fs::write(&key_file, &key.stdout).expect("key written");
        std::fs::write(
            path.join("zone.db"),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n{records}\n"
            ),
        )
        .expect("zone written");
        let dirname = path.display();
        std::fs::write(
            path.join("named.conf"),
            format!(
                "include \"{dirname}/tsig.key\";\n\
                 options {{ directory \"{dirname}\"; pid-file \"{dirname}/named.pid\";\n\
                   listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
                   recursion no; dnssec-validation no; allow-query {{ any; }}; }};\n\
                 zone \"{zone}\" {{ type primary; file \"{dirname}/zone.db\";\n\
                   update-policy {{ grant flowd-key zonesub ANY; }}; }};\n"
            ),
        )
        .expect("named.conf written");
        let conf = path.join("named.conf");
        let is_root = running_as_root();
        let mut command = if is_root {
            // named refuses to run as root without -u; run it as `bind`.
            let _ = Command::new("chown")
                .args(["-R", "bind:bind"])
                .arg(path)
                .status();
            let mut c = Command::new("setpriv");
            c.args(["--reuid=bind", "--regid=bind", "--init-groups", named]);
            c
        } else {
            Command::new(named)
        };
        let log = std::fs::File::create(std::env::temp_dir().join(format!("named-{port}.log")))
            .expect("log file");
        let child = command
            .args(["-g", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("named starts");
        let mut bind = Bind {
            child,
            _dir: dir,
            port,
            key_file,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            let log = || {
                std::fs::read_to_string(std::env::temp_dir().join(format!("named-{port}.log")))
                    .unwrap_or_default()
            };
            if let Ok(Some(status)) = bind.child.try_wait() {
                panic!("named exited ({status}):\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "named never listened:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bind
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a certificate it issued for `names`, as PEM files in
/// `dir`: (CA file, certificate file, key file).
pub fn issue_certificate(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "flowd test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("issued");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("written");
    std::fs::write(&paths.1, cert.pem()).expect("written");
    std::fs::write(&paths.2, key.serialize_pem()).expect("written");
    paths
}

/// An FNAP session at `addr` authenticated as the local administrator of
/// the host whose state directory is `state` (plain text: tests run on
/// loopback).
pub async fn admin(addr: &str, state: &Path) -> Client {
    let token = std::fs::read_to_string(state.join("admin.token")).expect("the admin token");
    let mut client = Client::connect(addr, &Security::Plain)
        .await
        .expect("connects");
    client
        .authenticate_plain("local", token.trim())
        .await
        .expect("local administrator");
    client
}

/// The reply code of a refusal, as a number (panics on any other error).
pub fn code(e: ClientError) -> u16 {
    e.code()
        .map(u16::from)
        .unwrap_or_else(|| panic!("expected an error reply, got {e}"))
}
