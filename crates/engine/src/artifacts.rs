//! Compiled components shared by the participant's hosts through the
//! broker: the object store `flowd-artifacts`, keyed by the component's
//! digest and the engine's compatibility tag ([`Host::artifact_key`]). The
//! first host to compile a component stores its compiled form; every other
//! host, and every restart without a disk cache, loads that instead of
//! compiling again (compiling the 18 MB Python component takes seconds,
//! loading its compiled form a fraction of one).
//!
//! A compiled form is native code, so the store is trusted as the host's
//! disk cache is: only the participant's hosts write it (it lives in the
//! host's broker account, which subscribers' and other accounts cannot
//! reach). An artifact that does not load (another engine, damaged) is
//! compiled over and replaced.

use async_nats::jetstream::object_store::ObjectStore;
use flowd_wasm::{Host, LoadError, ProcessorComponent};
use std::sync::Arc;

/// Largest compiled form fetched from the store.
const MAX_ARTIFACT_BYTES: usize = 1 << 30;

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This host had it (in memory or in its disk cache).
    Local,
    /// Another host's compiled form, from the broker.
    Shared,
    /// Compiled here (and stored for the others).
    Compiled,
}

/// Loads component `bytes` into `host`: from the host itself when it has
/// it, else from the compiled form in `store`, else by compiling, storing
/// the result for the participant's other hosts. The store is best effort:
/// when the broker cannot be read or written, the host compiles.
pub async fn load(
    host: &Arc<Host>,
    store: &ObjectStore,
    bytes: Vec<u8>,
) -> Result<(Arc<ProcessorComponent>, Source, Vec<u8>), LoadError> {
    let digest = flowd_wasm::digest(&bytes);
    let key = host.artifact_key(&digest);
    let local = !host.would_compile(&digest);
    let artifact = if local {
        None
    } else {
        fetch(store, &key).await
    };
    let fetched = artifact.is_some();
    let loading = host.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let loaded = loading.load_shared(&bytes, artifact.as_deref());
        (bytes, loaded)
    })
    .await;
    let (bytes, loaded) = joined.map_err(|e| LoadError::Compile {
        reason: format!("the compile task: {e}"),
    })?;
    let (component, compiled) = loaded?;
    let source = match (&compiled, local, fetched) {
        (Some(_), _, _) => Source::Compiled,
        (None, true, _) => Source::Local,
        (None, false, true) => Source::Shared,
        (None, false, false) => Source::Local,
    };
    if let Some(compiled) = compiled {
        put(store, &key, compiled).await;
    }
    Ok((component, source, bytes))
}

async fn fetch(store: &ObjectStore, key: &str) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let object = store.get(key).await.ok()?;
    if object.info().size > MAX_ARTIFACT_BYTES {
        tracing::warn!(key, "the shared artifact is too large; compiling");
        return None;
    }
    let mut bytes = Vec::with_capacity(object.info().size);
    let mut limited = object.take(MAX_ARTIFACT_BYTES as u64);
    match limited.read_to_end(&mut bytes).await {
        Ok(_) => Some(bytes),
        Err(e) => {
            tracing::debug!(key, "reading the shared artifact: {e}");
            None
        }
    }
}

async fn put(store: &ObjectStore, key: &str, compiled: Vec<u8>) {
    let mut reader = compiled.as_slice();
    if let Err(e) = store.put(key, &mut reader).await {
        tracing::warn!(key, "cannot share the compiled component: {e}");
    }
}
