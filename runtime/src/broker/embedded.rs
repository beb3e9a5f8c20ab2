//! The embedded default broker: when no NATS URL is configured, the host
//! starts and supervises its own `nats-server` (JetStream on, loopback only,
//! data under the host's state directory), restarting it if it dies.
//!
//! The server binary is looked up in this order: the configured path,
//! `$FLOWD_NATS_SERVER`, `nats-server` on `PATH`, and the copy that
//! `scripts/setup` installs under `~/.local/share/flowd/nats/bin/`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
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

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// A supervised nats-server. Dropping it stops the server.
pub struct EmbeddedNats {
    url: String,
    port: u16,
    stop: watch::Sender<bool>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

struct Spec {
    binary: PathBuf,
    data_dir: PathBuf,
    port: u16,
    monitor_port: u16,
}

impl Spec {
    fn spawn(&self) -> std::io::Result<Child> {
        let mut command = Command::new(&self.binary);
        command
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(&self.data_dir)
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

async fn healthz(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return false;
    };
    let request = "GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200")
}

impl EmbeddedNats {
    /// Starts nats-server with its data in `state_dir/nats`. The client
    /// port is kept in `state_dir/nats/port` so that a restarted host (and
    /// the `flow` CLI) find the broker at the same address.
    pub async fn start(
        state_dir: &Path,
        binary: Option<&Path>,
    ) -> Result<EmbeddedNats, EmbeddedError> {
        let binary = find_binary(binary)?;
        let data_dir = state_dir.join("nats");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EmbeddedError::Io { path, source }
        };
        std::fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
        let port_file = data_dir.join("port");
        let remembered = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_ok());
        let port = match remembered {
            Some(p) => p,
            None => free_port().map_err(io(&data_dir))?,
        };
        std::fs::write(&port_file, port.to_string()).map_err(io(&port_file))?;
        let spec = Spec {
            binary,
            data_dir,
            port,
            monitor_port: free_port().map_err(io(state_dir))?,
        };
        let mut child = spec.spawn().map_err(io(&spec.binary))?;
        let startup = Duration::from_secs(20);
        if !spec.ready(startup).await {
            let _ = child.kill().await;
            return Err(EmbeddedError::NotReady(startup));
        }
        tracing::info!(port, data = %spec.data_dir.display(), "embedded nats-server ready");
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(spec, child, stopped));
        Ok(EmbeddedNats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
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

    /// Stops the server and waits for it to exit.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
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
                tracing::warn!(?status, "embedded nats-server exited; restarting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match spec.spawn() {
                    Ok(next) => {
                        child = next;
                        if spec.ready(Duration::from_secs(20)).await {
                            tracing::info!("embedded nats-server back");
                            backoff = Duration::from_millis(100);
                        }
                    }
                    Err(e) => tracing::error!("cannot restart nats-server: {e}"),
                }
            }
            _ = stopped.changed() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return;
            }
        }
    }
}
