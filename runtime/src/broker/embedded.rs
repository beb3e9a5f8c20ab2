//! The embedded default broker: when no NATS URL is configured, the host
//! starts and supervises its own `nats-server` (JetStream on, data under the
//! host's state directory), restarting it if it dies.
//!
//! The server requires a user name and password from every client: the host
//! connects as `flowd` with a password made at each start, and each
//! subscription to one of the host's flows gets a user of its own that may
//! only pull its copy ([`super::grants`]). The users live in
//! `<state>/nats/auth.conf`, included by the generated `server.conf`;
//! [`Users`] rewrites it and makes the server reload it (SIGHUP), which also
//! closes the connections of removed users. The issued users are kept in
//! `<state>/nats/users.json` (bcrypt hashes only), so they survive restarts.
//!
//! The server listens on the address given (by default the FNAP address, so
//! that the `_queue` records published in DNS lead subscribers to it); its
//! monitoring port stays on loopback.
//!
//! The server binary is looked up in this order: the configured path,
//! `$FLOWD_NATS_SERVER`, `nats-server` on `PATH`, and the copy that
//! `scripts/setup` installs under `~/.local/share/flowd/nats/bin/`.

use super::grants::{self, BrokerUser};
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
    #[error(
        "no nats-server found (looked at $FLOWD_NATS_SERVER, PATH and {0}); run scripts/setup or set `nats.url`"
    )]
    NotFound(String),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("nats-server did not reload its users within {0:?}")]
    NotReloaded(Duration),
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

/// A supervised nats-server. Dropping it stops the server.
pub struct EmbeddedNats {
    url: String,
    port: u16,
    password: String,
    users: Users,
    stop: watch::Sender<bool>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

struct Spec {
    binary: PathBuf,
    config: PathBuf,
    monitor_port: u16,
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
            if healthz(self.monitor_port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// `GET path` on the monitoring port: the body of a 200 answer, within
/// two seconds.
async fn monitor(port: u16, path: &str) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(2), monitor_once(port, path))
        .await
        .ok()
        .flatten()
}

async fn monitor_once(port: u16, path: &str) -> Option<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    if !(response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200")) {
        return None;
    }
    let body = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(response.split_off(body))
}

async fn healthz(port: u16) -> bool {
    monitor(port, "/healthz?js-enabled-only=true")
        .await
        .is_some()
}

/// When the server last read its configuration (`/varz`).
async fn config_load_time(port: u16) -> Option<String> {
    let body = monitor(port, "/varz").await?;
    let varz: serde_json::Value = serde_json::from_slice(&body).ok()?;
    varz["config_load_time"].as_str().map(str::to_owned)
}

impl EmbeddedNats {
    /// Starts nats-server on `listen` with its data in `state_dir/nats`.
    /// The client port is kept in `state_dir/nats/port` so that a restarted
    /// host is found at the same address (peers hold it from DNS).
    pub async fn start(
        state_dir: &Path,
        binary: Option<&Path>,
        listen: IpAddr,
    ) -> Result<EmbeddedNats, EmbeddedError> {
        let binary = find_binary(binary)?;
        let data_dir = state_dir.join("nats");
        std::fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
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
        let monitor_port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).map_err(io(state_dir))?;
        let password = grants::secret();
        let host = BrokerUser {
            user: HOST_USER.to_owned(),
            password_hash: grants::hash(&password)?,
            publish: Vec::new(),
            subscribe: Vec::new(),
        };
        let config = data_dir.join("server.conf");
        let text = format!(
            "# Written by flowd at each start.\n\
             listen: {}\nhttp: {}\njetstream {{ store_dir: {} }}\ninclude \"auth.conf\"\n",
            quoted(&SocketAddr::new(listen, port).to_string()),
            quoted(&format!("127.0.0.1:{monitor_port}")),
            quoted(&data_dir.to_string_lossy()),
        );
        write_private(&config, &text)?;
        let spec = Spec {
            binary,
            config,
            monitor_port,
            pid: Arc::new(AtomicU32::new(0)),
        };
        let users = Users {
            inner: Arc::new(UsersInner {
                dir: data_dir.clone(),
                host,
                pid: spec.pid.clone(),
                monitor_port,
                lock: tokio::sync::Mutex::new(()),
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
        tracing::info!(port, data = %data_dir.display(), "embedded nats-server ready");
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
            password,
            users,
            stop,
            supervisor: Some(supervisor),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host's own user and password.
    pub fn credentials(&self) -> (&str, &str) {
        (HOST_USER, &self.password)
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
    crate::secret_file::write(path, text.as_bytes()).map_err(io(path))
}

/// The users of the embedded server other than the host: added and removed
/// while it runs.
#[derive(Clone)]
pub struct Users {
    inner: Arc<UsersInner>,
}

struct UsersInner {
    dir: PathBuf,
    host: BrokerUser,
    pid: Arc<AtomicU32>,
    monitor_port: u16,
    /// One change at a time: each rewrites the whole file.
    lock: tokio::sync::Mutex<()>,
}

impl Users {
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

    /// Writes `users.json` and `auth.conf` (the host first, with all
    /// rights; every other user with its allow lists only).
    fn write(&self, users: &[BrokerUser]) -> Result<(), EmbeddedError> {
        let json = serde_json::to_string_pretty(users).unwrap_or_else(|_| "[]".into());
        write_private(&self.file(), &json)?;
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| quoted(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let host = &self.inner.host;
        let mut text = format!(
            "# Written by flowd: the host and its subscribers.\nauthorization {{\n  users = [\n    \
             {{ user: {}, password: {} }}\n",
            quoted(&host.user),
            quoted(&host.password_hash)
        );
        for user in users {
            text.push_str(&format!(
                "    {{ user: {}, password: {}, permissions: {{ publish: {{ allow: [{}] }}, \
                 subscribe: {{ allow: [{}] }} }} }}\n",
                quoted(&user.user),
                quoted(&user.password_hash),
                list(&user.publish),
                list(&user.subscribe),
            ));
        }
        text.push_str("  ]\n}\n");
        write_private(&self.inner.dir.join("auth.conf"), &text)
    }

    /// Rewrites the users and waits until the server has read them: a
    /// user issued is admitted, a user removed is refused and its
    /// connections closed, once this returns.
    async fn apply(&self, users: &[BrokerUser]) -> Result<(), EmbeddedError> {
        let within = Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + within;
        // The load time before the reload, to see it change.
        let before = loop {
            match config_load_time(self.inner.monitor_port).await {
                Some(t) => break Some(t),
                None if tokio::time::Instant::now() >= deadline => break None,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.write(users)?;
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
            let now = config_load_time(self.inner.monitor_port).await;
            if now.is_some() && now != before {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(EmbeddedError::NotReloaded(within))
    }

    /// Admits `user` (replacing one of the same name).
    pub async fn add(&self, user: BrokerUser) -> Result<(), EmbeddedError> {
        let _guard = self.inner.lock.lock().await;
        let mut users = self.load()?;
        users.retain(|u| u.user != user.user);
        users.push(user);
        self.apply(&users).await
    }

    /// Removes the users `keep` rejects; says whether any was.
    pub async fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<bool, EmbeddedError> {
        let _guard = self.inner.lock.lock().await;
        let mut users = self.load()?;
        let before = users.len();
        users.retain(|u| keep(&u.user));
        if users.len() == before {
            return Ok(false);
        }
        self.apply(&users).await?;
        Ok(true)
    }
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
