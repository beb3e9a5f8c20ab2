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
//!
//! [`load_quick`] is what uploads and processor starts use: when nobody
//! has compiled a component yet, it is checked and started on the baseline
//! compiler's code (about a second for the 18 MB Python component, against
//! five for the optimising compile), and the optimised code is compiled in
//! the background, stored here and taken up by the runners at their next
//! batch boundary.

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
    /// The baseline compiler's code, while the optimised code is compiled
    /// in the background ([`load_quick`]).
    Baseline,
}

/// Background compiles of optimised code at once, per process: each takes
/// the machine's cores for seconds.
static OPTIMISING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// [`load`], except that a component nobody has compiled yet comes back
/// at once as the baseline compiler's code ([`Source::Baseline`], checked
/// as thoroughly), while a background task compiles the optimised code and
/// stores it for every host ([`Host::optimised`] has it once done).
pub async fn load_quick(
    host: &Arc<Host>,
    store: &ObjectStore,
    bytes: Vec<u8>,
) -> Result<(Arc<ProcessorComponent>, Source, Vec<u8>), LoadError> {
    let digest = flowd_wasm::digest(&bytes);
    if !host.would_compile(&digest) {
        return load(host, store, bytes).await;
    }
    if let Some(artifact) = fetch(store, &host.artifact_key(&digest)).await {
        let loading = host.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let loaded = loading.load_shared(&bytes, Some(&artifact));
            (bytes, loaded)
        })
        .await;
        let (bytes, loaded) = joined.map_err(task_error)?;
        let (component, compiled) = loaded?;
        // An unusable artifact was compiled over: share the new one.
        let source = match compiled {
            Some(compiled) => {
                put(store, &host.artifact_key(&digest), compiled).await;
                Source::Compiled
            }
            None => Source::Shared,
        };
        return Ok((component, source, bytes));
    }
    let loading = host.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let loaded = loading.load_quick(&bytes);
        (bytes, loaded)
    })
    .await;
    let (bytes, loaded) = joined.map_err(task_error)?;
    let (component, compiled) = loaded?;
    if component.is_optimised() {
        // No baseline tier (or it refused the component): this compiled
        // the optimised code; share it.
        if let Some(compiled) = compiled {
            put(store, &host.artifact_key(&digest), compiled).await;
        }
        return Ok((component, Source::Compiled, bytes));
    }
    if let Some(claim) = host.optimising(&digest) {
        let (host, store, bytes) = (host.clone(), store.clone(), bytes.clone());
        tokio::spawn(async move {
            let _claim = claim;
            let Ok(_turn) = OPTIMISING.acquire().await else {
                return;
            };
            let started = std::time::Instant::now();
            match load(&host, &store, bytes).await {
                Ok(_) => tracing::info!(
                    digest,
                    secs = started.elapsed().as_secs_f64(),
                    "optimised code compiled and shared"
                ),
                Err(e) => tracing::warn!(digest, "compiling the optimised code: {e}"),
            }
        });
    }
    Ok((component, Source::Baseline, bytes))
}

fn task_error(e: tokio::task::JoinError) -> LoadError {
    LoadError::Compile {
        reason: format!("the compile task: {e}"),
    }
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
    let (bytes, loaded) = joined.map_err(task_error)?;
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
