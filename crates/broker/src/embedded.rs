//! The embedded default broker: when no NATS URL is configured, the host
//! starts and supervises its own `nats-server` (JetStream on, data under the
//! host's state directory), restarting it if it dies.
//!
//! The server requires a user name and password from every client. The
//! host connects as `flowd` (with a password made at each start) to the
//! host's account [`grants::HOST_ACCOUNT`], where its flows, buckets and
//! consumers live; each subscription to one of the host's flows gets an
//! account of its own with one user, which imports only what pulling its
//! copy takes ([`super::grants`]). The accounts live in
//! `<state>/nats/auth.conf`, included by the generated `server.conf`;
//! [`Users`] rewrites it and makes the server reload it (SIGHUP), which also
//! closes the connections of removed users. The issued users are kept in
//! `<state>/nats/users.json` (bcrypt hashes only), so they survive restarts.
//!
//! The server listens on the address given (by default the FNAP address, so
//! that the `_queue` records published in DNS lead subscribers to it); its
//! monitoring port (HTTP without authentication) stays on loopback: the
//! configured one, or a free port on the loopback address of the client
//! address's family ([`default_monitor_ip`]). Beyond loopback its client port
//! speaks TLS only, with the host's certificate (the one FNAP presents), so
//! that no password crosses a network in clear.
//!
//! The server binary is looked up in this order: the configured path,
//! `$FLOWD_NATS_SERVER`, `nats-server` on `PATH`, and the copy that
//! `scripts/setup` installs under `~/.local/share/flowd/nats/bin/`.

use super::grants::{self, BrokerUser, SubscriberLimits};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Why the embedded server could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No nats-server binary in any of the places looked at (the string
    /// names the installed location).
    #[error(
        "no nats-server found (looked at $FLOWD_NATS_SERVER, PATH and {0}); run scripts/setup or set `nats.url`"
    )]
    NotFound(String),
    /// A file or directory of the server's state could not be written or
    /// read (or a users file did not decode).
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What went wrong with it.
        source: std::io::Error,
    },
    /// The started server did not report itself healthy with JetStream on
    /// in time.
    #[error("nats-server did not become ready within {0:?}")]
    NotReady(Duration),
    /// The server did not read its rewritten users in time, so a change of
    /// users may not be in force yet.
    #[error("nats-server did not reload its users within {0:?}")]
    NotReloaded(Duration),
    /// Asked to listen beyond loopback without a TLS certificate.
    #[error(
        "the embedded broker would listen on {0} without TLS; subscribers' passwords would cross the network in clear"
    )]
    PlainBeyondLoopback(IpAddr),
    /// The monitoring endpoint answers anyone without a password: it is
    /// kept on loopback.
    #[error(
        "the embedded broker's monitoring endpoint cannot listen on {0}: it has no authentication, so it listens on a loopback address, and on a port of its own (not 0)"
    )]
    MonitorBeyondLoopback(SocketAddr),
    /// Making a user's credentials failed.
    #[error(transparent)]
    Grant(#[from] super::grants::GrantError),
}

/// Where `scripts/setup` installs nats-server.
pub fn installed_binary() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/flowd/nats/bin/nats-server"))
}

/// Finds a nats-server binary.
pub fn find_binary(configured: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    let candidates = configured
        .map(Path::to_path_buf)
        .into_iter()
        .chain(std::env::var_os("FLOWD_NATS_SERVER").map(PathBuf::from))
        .chain(std::env::var_os("PATH").into_iter().flat_map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("nats-server"))
                .collect::<Vec<_>>()
        }))
        .chain(installed_binary());
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(EmbeddedError::NotFound(
        installed_binary()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    ))
}

fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The user the host itself connects as.
pub const HOST_USER: &str = "flowd";

/// How the embedded server is set up beyond its address.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    /// The limits of each subscriber's account.
    pub limits: SubscriberLimits,
    /// The certificate and key (PEM files) of the client port; `None`:
    /// plain text, which [`EmbeddedNats::start`] accepts on loopback only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Where the server's monitoring endpoint (HTTP, no authentication)
    /// listens: a loopback address only. `None`: a free port on the
    /// loopback address of the client port's family (`::1` for an IPv6
    /// client address, the client address itself when it is a loopback
    /// one, else `127.0.0.1`).
    pub monitor: Option<SocketAddr>,
}

/// The monitoring endpoint's address for a server whose client port is on
/// `listen`, unless one is configured.
pub fn default_monitor_ip(listen: IpAddr) -> IpAddr {
    match listen {
        ip if is_loopback(ip) => ip,
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// Whether clients reach `ip` only from this machine.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// JetStream keeps each account's streams under `<store>/jetstream/<account>`:
/// a host that ran before accounts kept its flows in the global account
/// (`$G`), which become the host account's by moving that directory.
fn adopt_global_account(data_dir: &Path) -> Result<(), EmbeddedError> {
    let jetstream = data_dir.join("jetstream");
    let global = jetstream.join("$G");
    let host = jetstream.join(grants::HOST_ACCOUNT);
    let used = |dir: &Path| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if used(&global) && used(&host) {
        return Err(EmbeddedError::Io {
            path: global,
            source: std::io::Error::other(format!(
                "both the global account's and {}'s JetStream data exist: keep one",
                grants::HOST_ACCOUNT
            )),
        });
    }
    if global.is_dir() && !used(&host) {
        let _ = std::fs::remove_dir(&host);
        tracing::info!(
            "moving the flows of the global broker account to {}",
            grants::HOST_ACCOUNT
        );
        std::fs::rename(&global, &host).map_err(io(&global))?;
    }
    Ok(())
}

/// A supervised nats-server. Dropping it stops the server.
pub struct EmbeddedNats {
    url: String,
    port: u16,
    monitor: SocketAddr,
    password: String,
    /// The certificate the client port presents, when it speaks TLS.
    certificate: Option<PathBuf>,
    users: Users,
    stop: watch::Sender<bool>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

struct Spec {
    binary: PathBuf,
    config: PathBuf,
    monitor: SocketAddr,
    /// The running server's process id (0: none), for reloads.
    pid: Arc<AtomicU32>,
}

/// A string as a quoted nats-server configuration value (the format reads
/// JSON-style escapes in double quotes).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Spec {
    fn spawn(&self) -> std::io::Result<Child> {
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // send SIGTERM to the child when its parent dies, so a host killed
        // with SIGKILL does not leave its broker running.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        command.spawn()
    }

    /// Polls the monitoring endpoint until JetStream is up.
    async fn ready(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if healthz(self.monitor).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// `GET path` on the monitoring port: the body of a 200 answer, within
/// two seconds.
async fn monitor(at: SocketAddr, path: &str) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(2), monitor_once(at, path))
        .await
        .ok()
        .flatten()
}

async fn monitor_once(at: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(at).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {at}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    if !(response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200")) {
        return None;
    }
    let body = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(response.split_off(body))
}

async fn healthz(at: SocketAddr) -> bool {
    monitor(at, "/healthz?js-enabled-only=true").await.is_some()
}

/// When the server last read its configuration (`/varz`).
async fn config_load_time(at: SocketAddr) -> Option<String> {
    let body = monitor(at, "/varz").await?;
    let varz: serde_json::Value = serde_json::from_slice(&body).ok()?;
    varz["config_load_time"].as_str().map(str::to_owned)
}

impl EmbeddedNats {
    /// Starts nats-server on `listen` with its data in `state_dir/nats`.
    /// The client port is kept in `state_dir/nats/port` so that a restarted
    /// host is found at the same address (peers hold it from DNS).
    ///
    /// Without TLS in `options` the server listens on loopback only: a
    /// plain-text port beyond it would carry the subscribers' passwords in
    /// clear.
    pub async fn start(
        state_dir: &Path,
        binary: Option<&Path>,
        listen: IpAddr,
        options: &EmbeddedOptions,
    ) -> Result<EmbeddedNats, EmbeddedError> {
        if options.tls.is_none() && !is_loopback(listen) {
            return Err(EmbeddedError::PlainBeyondLoopback(listen));
        }
        let binary = find_binary(binary)?;
        let data_dir = state_dir.join("nats");
        std::fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
        adopt_global_account(&data_dir)?;
        let port_file = data_dir.join("port");
        let remembered = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| TcpListener::bind((listen, *p)).is_ok());
        let port = match remembered {
            Some(p) => p,
            None => free_port(listen).map_err(io(&data_dir))?,
        };
        std::fs::write(&port_file, port.to_string()).map_err(io(&port_file))?;
        let monitor = match options.monitor {
            Some(at) if !is_loopback(at.ip()) || at.port() == 0 => {
                return Err(EmbeddedError::MonitorBeyondLoopback(at));
            }
            Some(at) => at,
            None => {
                let ip = default_monitor_ip(listen);
                SocketAddr::new(ip, free_port(ip).map_err(io(state_dir))?)
            }
        };
        let password = grants::secret();
        let host_hash = grants::hash(&password)?;
        let config = data_dir.join("server.conf");
        let tls = match &options.tls {
            Some((cert, key)) => format!(
                "tls {{ cert_file: {}, key_file: {}, timeout: 5 }}\n",
                quoted(&cert.to_string_lossy()),
                quoted(&key.to_string_lossy())
            ),
            None => String::new(),
        };
        let text = format!(
            "# Written by flowd at each start.\n\
             listen: {}\nhttp: {}\njetstream {{ store_dir: {} }}\n{tls}include \"auth.conf\"\n",
            quoted(&SocketAddr::new(listen, port).to_string()),
            quoted(&monitor.to_string()),
            quoted(&data_dir.to_string_lossy()),
        );
        write_private(&config, &text)?;
        let spec = Spec {
            binary,
            config,
            monitor,
            pid: Arc::new(AtomicU32::new(0)),
        };
        let users = Users {
            inner: Arc::new(UsersInner {
                dir: data_dir.clone(),
                host_hash,
                limits: options.limits,
                tls: options.tls.is_some(),
                pid: spec.pid.clone(),
                monitor,
                lock: tokio::sync::Mutex::new(()),
                unread: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        users.write(&users.load()?)?;
        let mut child = spec.spawn().map_err(io(&spec.binary))?;
        let startup = Duration::from_secs(20);
        if !spec.ready(startup).await {
            let _ = child.kill().await;
            return Err(EmbeddedError::NotReady(startup));
        }
        // Signalled (reloads) only once it runs its handlers.
        spec.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        tracing::info!(port, %monitor, data = %data_dir.display(), "embedded nats-server ready");
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(spec, child, stopped));
        let connect_ip = if listen.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            listen
        };
        Ok(EmbeddedNats {
            url: format!("nats://{}", SocketAddr::new(connect_ip, port)),
            port,
            monitor,
            password,
            certificate: options.tls.as_ref().map(|(cert, _)| cert.clone()),
            users,
            stop,
            supervisor: Some(supervisor),
        })
    }

    /// The URL the host connects to the server at.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's client port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the server's monitoring endpoint listens.
    pub fn monitor(&self) -> SocketAddr {
        self.monitor
    }

    /// The host's own user and password.
    pub fn credentials(&self) -> (&str, &str) {
        (HOST_USER, &self.password)
    }

    /// The certificate file the client port presents (`None`: plain text
    /// on loopback).
    pub fn certificate(&self) -> Option<&Path> {
        self.certificate.as_deref()
    }

    /// The users this server admits besides the host.
    pub fn users(&self) -> Users {
        self.users.clone()
    }

    /// Stops the server and waits for it to exit.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let path = path.to_path_buf();
    move |source| EmbeddedError::Io { path, source }
}

/// Writes a file only its owner can read (it holds password hashes), by
/// renaming a complete temporary file over it.
fn write_private(path: &Path, text: &str) -> Result<(), EmbeddedError> {
    flowd_core::secret_file::write(path, text.as_bytes()).map_err(io(path))
}

/// The users of the embedded server other than the host: added and removed
/// while it runs.
#[derive(Clone)]
pub struct Users {
    inner: Arc<UsersInner>,
}

struct UsersInner {
    dir: PathBuf,
    /// bcrypt hash of the host's own password.
    host_hash: String,
    limits: SubscriberLimits,
    /// The client port speaks TLS only.
    tls: bool,
    pid: Arc<AtomicU32>,
    monitor: SocketAddr,
    /// One change at a time: each rewrites the whole file.
    lock: tokio::sync::Mutex<()>,
    /// The file was written but the server may not have read it (a reload
    /// failed): the next change reloads whatever it changes.
    unread: std::sync::atomic::AtomicBool,
}

impl Users {
    /// Whether the server's client port requires TLS.
    pub fn tls(&self) -> bool {
        self.inner.tls
    }

    fn file(&self) -> PathBuf {
        self.inner.dir.join("users.json")
    }

    /// The issued users (none when the file does not exist yet). Any other
    /// failure is an error: rewriting the file after it would revoke every
    /// subscriber.
    pub fn load(&self) -> Result<Vec<BrokerUser>, EmbeddedError> {
        let file = self.file();
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| EmbeddedError::Io {
                path: file,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&file)(e)),
        }
    }

    /// Writes `users.json` and `auth.conf`: the host's account with the
    /// host's user and JetStream, exporting each subscriber's three pull
    /// services to that subscriber's account only; then one account per
    /// subscriber importing them.
    fn write(&self, users: &[BrokerUser]) -> Result<(), EmbeddedError> {
        let json = serde_json::to_string_pretty(users).unwrap_or_else(|_| "[]".into());
        write_private(&self.file(), &json)?;
        write_private(
            &self.inner.dir.join("auth.conf"),
            &accounts_config(&self.inner.host_hash, &self.inner.limits, users),
        )
    }

    /// Rewrites the users and waits until the server has read them: a
    /// user issued is admitted, a user removed is refused and its
    /// connections closed, once this returns.
    ///
    /// `reloads` is how many times the server reloads: an account added
    /// takes two, because nats-server checks the new account's imports
    /// against the exports of the configuration it had (observed on
    /// 2.15.1: after one reload the new account connects, but its imported
    /// JetStream services have no responders until the next).
    async fn apply(&self, users: &[BrokerUser], reloads: usize) -> Result<(), EmbeddedError> {
        self.write(users)?;
        self.inner.unread.store(true, Ordering::SeqCst);
        for _ in 0..reloads {
            self.reload().await?;
        }
        self.inner.unread.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Makes the server read its configuration again (SIGHUP) and waits
    /// until `/varz` shows it did.
    async fn reload(&self) -> Result<(), EmbeddedError> {
        let within = Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + within;
        // The load time before the reload, to see it change.
        let before = loop {
            match config_load_time(self.inner.monitor).await {
                Some(t) => break Some(t),
                None if tokio::time::Instant::now() >= deadline => break None,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let pid = self.inner.pid.load(Ordering::SeqCst);
        if pid == 0 {
            // Not running: the supervisor's next start reads the file.
            return Ok(());
        }
        // SAFETY: kill(2) with a pid of our own child and SIGHUP, which
        // nats-server handles as "reload the configuration".
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGHUP);
        }
        let deadline = tokio::time::Instant::now() + within;
        while before.is_some() && tokio::time::Instant::now() < deadline {
            let now = config_load_time(self.inner.monitor).await;
            if now.is_some() && now != before {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(EmbeddedError::NotReloaded(within))
    }

    /// Admits `user` (replacing one of the same name).
    pub async fn add(&self, user: BrokerUser) -> Result<(), EmbeddedError> {
        let _guard = self.inner.lock.lock().await;
        let mut users = self.load()?;
        users.retain(|u| u.user != user.user);
        users.push(user);
        self.apply(&users, 2).await
    }

    /// Removes the users `keep` rejects; says whether any was.
    pub async fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<bool, EmbeddedError> {
        let _guard = self.inner.lock.lock().await;
        let mut users = self.load()?;
        let before = users.len();
        users.retain(|u| keep(&u.user));
        if users.len() == before {
            if self.inner.unread.load(Ordering::SeqCst) {
                self.apply(&users, 1).await?;
            }
            return Ok(false);
        }
        self.apply(&users, 1).await?;
        Ok(true)
    }
}

/// The `accounts` block of the server configuration (see [`Users::write`]).
fn accounts_config(host_hash: &str, limits: &SubscriberLimits, users: &[BrokerUser]) -> String {
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| quoted(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let host = grants::HOST_ACCOUNT;
    let mut text = format!(
        "# Written by flowd: the host's account and one account per subscriber.\n\
         accounts {{\n  {host} {{\n    jetstream: enabled\n    \
         users = [ {{ user: {}, password: {} }} ]\n    exports = [\n",
        quoted(HOST_USER),
        quoted(host_hash)
    );
    for user in users {
        for service in user.services() {
            let response = if service.streamed {
                ", response_type: stream"
            } else {
                ""
            };
            text.push_str(&format!(
                "      {{ service: {}{response}, accounts: [{}] }}\n",
                quoted(&service.exported),
                quoted(user.account())
            ));
        }
    }
    text.push_str("    ]\n  }\n");
    for user in users {
        text.push_str(&format!(
            "  {} {{\n    limits {{ max_connections: {}, max_subscriptions: {}, max_payload: {} }}\n    \
             users = [ {{ user: {}, password: {}, permissions: {{ publish: {{ allow: [{}] }}, \
             subscribe: {{ allow: [{}] }} }} }} ]\n    imports = [\n",
            quoted(user.account()),
            limits.connections,
            limits.subscriptions,
            limits.payload,
            quoted(&user.user),
            quoted(&user.password_hash),
            list(&user.publish()),
            list(&user.subscribe()),
        ));
        for service in user.services() {
            text.push_str(&format!(
                "      {{ service: {{ account: {}, subject: {} }}, to: {} }}\n",
                quoted(host),
                quoted(&service.exported),
                quoted(&service.local)
            ));
        }
        text.push_str("    ]\n  }\n");
    }
    text.push_str("}\n");
    text
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Restarts the server whenever it exits, until asked to stop.
async fn supervise(spec: Spec, mut child: Child, mut stopped: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            status = child.wait() => {
                spec.pid.store(0, Ordering::SeqCst);
                tracing::warn!(?status, "embedded nats-server exited; restarting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match spec.spawn() {
                    Ok(next) => {
                        child = next;
                        if spec.ready(Duration::from_secs(20)).await {
                            spec.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
                            tracing::info!("embedded nats-server back");
                            backoff = Duration::from_millis(100);
                        }
                    }
                    Err(e) => tracing::error!("cannot restart nats-server: {e}"),
                }
            }
            _ = stopped.changed() => {
                spec.pid.store(0, Ordering::SeqCst);
                let _ = child.start_kill();
                let _ = child.wait().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_stays_on_the_loopback_of_the_client_address_family() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(default_monitor_ip(ip("127.0.0.5")), ip("127.0.0.5"));
        assert_eq!(default_monitor_ip(ip("::1")), ip("::1"));
        assert_eq!(default_monitor_ip(ip("192.0.2.10")), ip("127.0.0.1"));
        assert_eq!(default_monitor_ip(ip("0.0.0.0")), ip("127.0.0.1"));
        assert_eq!(default_monitor_ip(ip("2001:db8::1")), ip("::1"));
        assert_eq!(default_monitor_ip(ip("::")), ip("::1"));
    }

    #[tokio::test]
    async fn the_monitor_listens_where_configured_and_never_beyond_loopback() {
        // An IPv6 broker is monitored on ::1, not on 127.0.0.1.
        let dir = tempfile::tempdir().expect("tempdir");
        let v6 = EmbeddedNats::start(
            dir.path(),
            None,
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            &EmbeddedOptions::default(),
        )
        .await
        .expect("an IPv6 broker");
        assert_eq!(v6.monitor().ip(), IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
        assert!(healthz(v6.monitor()).await, "answers on {}", v6.monitor());
        assert!(v6.url().starts_with("nats://[::1]:"), "{}", v6.url());
        drop(v6);

        // A configured loopback address is used as given.
        let dir = tempfile::tempdir().expect("tempdir");
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
        let at = SocketAddr::new(ip, free_port(ip).expect("port"));
        let options = EmbeddedOptions {
            monitor: Some(at),
            ..Default::default()
        };
        let chosen = EmbeddedNats::start(dir.path(), None, Ipv4Addr::LOCALHOST.into(), &options)
            .await
            .expect("a broker monitored where configured");
        assert_eq!(chosen.monitor(), at);
        assert!(healthz(at).await);
        drop(chosen);

        // Anything beyond loopback is refused before a server starts.
        for wide in [
            "0.0.0.0:8222",
            "192.0.2.10:8222",
            "[::]:8222",
            "127.0.0.1:0",
        ] {
            let options = EmbeddedOptions {
                monitor: Some(wide.parse().expect("address")),
                ..Default::default()
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let refused =
                EmbeddedNats::start(dir.path(), None, Ipv4Addr::LOCALHOST.into(), &options).await;
            assert!(
                matches!(refused, Err(EmbeddedError::MonitorBeyondLoopback(_))),
                "{wide}: {:?}",
                refused.err()
            );
        }
    }
}
