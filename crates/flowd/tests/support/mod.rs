//! Shared by the binary and engine tests: built components, a real
//! nats-server per test, a `flowd serve` child process.

#![allow(dead_code)]

pub(crate) mod flows;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) use flowd_test_support::*;

/// A `flowd serve` process.
pub(crate) struct Flowd {
    child: Child,
}

impl Flowd {
    pub(crate) fn start(nats_url: &str, state_dir: &Path) -> Flowd {
        Flowd::start_on(nats_url, state_dir, "off")
    }

    /// [`Flowd::start`] with the web console on a free loopback port
    /// (its address is in the state directory's `host.json`).
    pub(crate) fn start_with_console(nats_url: &str, state_dir: &Path) -> Flowd {
        Flowd::start_on(nats_url, state_dir, "127.0.0.1:0")
    }

    /// Everything on free loopback ports or off; the console at `console`.
    fn start_on(nats_url: &str, state_dir: &Path, console: &str) -> Flowd {
        Flowd::serve(|c| {
            c.args([
                "--nats",
                nats_url,
                "--metrics",
                "off",
                "--fnap",
                "127.0.0.1:0",
                "--fnap-tls",
                "off",
                "--fns",
                "off",
                "--api",
                "127.0.0.1:0",
                "--console",
                console,
                "--state-dir",
            ])
            .arg(state_dir);
        })
    }

    /// `flowd serve --config <file>`.
    pub(crate) fn start_with_config(config: &Path) -> Flowd {
        Flowd::serve(|c| {
            c.arg("--config").arg(config);
        })
    }

    /// `flowd serve` with the arguments `args` adds.
    fn serve(args: impl FnOnce(&mut Command)) -> Flowd {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowd"));
        command.arg("serve");
        args(&mut command);
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("flowd starts");
        Flowd { child }
    }

    /// SIGKILL: no shutdown, no flushing, nothing.
    pub(crate) fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Flowd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API of the `flowd serve` whose state directory is `state`.
pub(crate) async fn api(state: &Path) -> flowd::api::client::ApiClient {
    let host = eventually(
        Duration::from_secs(20),
        "host.json with the API",
        || async { flowd::config::HostFile::read(state).and_then(|h| h.api) },
    )
    .await;
    let token = std::fs::read_to_string(flowd::user_agent::local_token_path(state)).expect("token");
    flowd::api::client::ApiClient::connect(
        &format!("http://{host}"),
        &flowd::api::client::Credentials::Token(token.trim().to_owned()),
        None,
    )
    .await
    .expect("API connects")
}

/// Runs `tests/console/console.mjs` (npm `playwright-core` driving Debian's
/// chromium, headless) in `phase` against the console at `console`,
/// logged in with the administrator `token`; returns what it said (an
/// `ok <phase> <step>` line per step passed) and panics, with that, if it
/// failed. Screenshots land in `target/console-screenshots/`.
pub(crate) fn browse(
    console: std::net::SocketAddr,
    token: &str,
    phase: &str,
    extra: &[(&str, String)],
) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut command = Command::new("node");
    command
        .arg(root.join("tests/console/console.mjs"))
        .env("CONSOLE_URL", format!("http://{console}"))
        .env("TOKEN", token)
        .env("PHASE", phase)
        .env("SHOTS", root.join("target/console-screenshots"));
    for (k, v) in extra {
        command.env(k, v);
    }
    let out = command.output().expect("node runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser, {phase}: {said}");
    said
}
