//! What the benchmarks share: the standard components and a nats-server of
//! their own.

use anyhow::{Context, Result, anyhow};
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

/// The bytes of a component built by `scripts/build-processors`.
pub(crate) fn component(name: &str) -> Result<Vec<u8>> {
    let path = flowd_test_support::components_dir().join(format!("{name}.wasm"));
    std::fs::read(&path)
        .with_context(|| format!("{} (run scripts/build-processors)", path.display()))
}

/// A nats-server with JetStream on a loopback port, its data in a
/// temporary directory; stopped and removed on drop.
pub(crate) struct NatsServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn nats() -> Result<NatsServer> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let child = std::process::Command::new(flowd_broker::embedded::find_binary(None)?)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    for _ in 0..500 {
        if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(NatsServer {
                child,
                _dir: dir,
                url: format!("nats://127.0.0.1:{port}"),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(anyhow!("nats-server did not start"))
}
