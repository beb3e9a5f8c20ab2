//! What the benchmarks share: the standard components and a nats-server of
//! their own.

use anyhow::{Context, Result};

/// The bytes of a component built by `scripts/build-processors`.
pub(crate) fn component(name: &str) -> Result<Vec<u8>> {
    let path = flowd_test_support::components_dir().join(format!("{name}.wasm"));
    std::fs::read(&path)
        .with_context(|| format!("{} (run scripts/build-processors)", path.display()))
}

/// A nats-server with JetStream on a loopback port, its data in a
/// temporary directory; stopped and removed on drop.
pub(crate) use flowd_test_support::Nats;
