//! Compiled components cached on disk, keyed by the component's digest and
//! the engine's compatibility hash, so a restart or a second host on the same
//! machine does not compile the same component again.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
}

/// A tag of the engine's compatibility: compiled components are used only
/// by engines with the same tag. `DefaultHasher::new()` uses fixed keys, so
/// the tag is stable for a given build of the host. A mismatch it misses is
/// caught when loading (wasmtime checks its own header) and leads to a
/// recompile.
pub(crate) fn engine_tag(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

impl ArtifactCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let engine_tag = engine_tag(engine);
        Ok(ArtifactCache { dir, engine_tag })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_tag))
    }

    /// Whether a compiled form of `digest` is on disk.
    pub(crate) fn has(&self, digest: &str) -> bool {
        self.path(digest).is_file()
    }

    /// Keeps `component`, compiled elsewhere, on disk too.
    pub(crate) fn keep(&self, digest: &str, component: &Component) {
        let path = self.path(digest);
        if let Err(e) = self.store(&path, component) {
            tracing::warn!(path = %path.display(), "cannot cache compiled component: {e}");
        }
    }

    /// The compiled component for `digest`, from disk when cached.
    ///
    /// A cached file that does not load (truncated, or written by another
    /// engine) is recompiled and replaced.
    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.path(digest);
        // Read into memory rather than mapping the file: a mapped artifact
        // that someone truncates later would fault the whole host.
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: files in the cache directory are only written by
            // `store` below, from `Component::serialize` of an engine with the
            // same compatibility hash (it is in the file name); wasmtime still
            // checks the header and rejects what it did not produce.
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    "recompiling: cached artifact unusable: {e}"
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), "cannot cache compiled component: {e}");
        }
        Ok((component, false))
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
