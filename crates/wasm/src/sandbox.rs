//! What one processor instance's store holds, and the host side of the
//! imports it is granted: `log`, `state`, `clock`, and a WASI with no
//! capabilities (no files, sockets, environment or arguments).

use super::output::GuestOutput;
use super::state::KeyedState;
use crate::wit::{clock, log, state};
use std::sync::Arc;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The data of one instance's `Store`.
pub(crate) struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) output: GuestOutput,
    pub(crate) limiter: MemoryCap,
    pub(crate) state: KeyedState,
    /// Set when a `state.set` exceeded the quota (the call then traps).
    pub(crate) state_quota_hit: bool,
    name: Arc<str>,
}

impl Sandbox {
    pub(crate) fn new(
        name: Arc<str>,
        memory_cap: usize,
        state: KeyedState,
        output: GuestOutput,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(output.stdout())
            .stderr(output.stderr())
            .build();
        Sandbox {
            wasi,
            table: ResourceTable::new(),
            output,
            limiter: MemoryCap::new(memory_cap),
            state,
            state_quota_hit: false,
            name,
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps the linear memory of an instance and remembers whether the cap was
/// hit, so that the resulting trap is reported as a memory-cap error.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    cap: usize,
    hit: bool,
}

impl MemoryCap {
    fn new(cap: usize) -> Self {
        MemoryCap { cap, hit: false }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    pub(crate) fn hit(&self) -> bool {
        self.hit
    }

    pub(crate) fn reset(&mut self) {
        self.hit = false;
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a processor needs few.
        Ok(desired <= 100_000)
    }
}

impl log::Host for Sandbox {
    fn log(&mut self, level: log::Level, message: String) {
        // Kept (cut and counted) for the host to log under its budget; the
        // host's own log gets it only at trace level, cut, so that a guest
        // cannot flood it.
        self.output.log(level, &message);
        let mut end = message.len().min(super::output::MAX_LINE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        tracing::trace!(processor = &*self.name, ?level, "{}", &message[..end]);
    }
}

impl state::Host for Sandbox {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.state.get(&key).map(<[u8]>::to_vec)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        if self.state.set(&key, value).is_err() {
            self.state_quota_hit = true;
            wasmtime::bail!("state quota exceeded");
        }
        Ok(())
    }

    fn delete(&mut self, key: String) {
        self.state.delete(&key);
    }

    fn keys(&mut self, prefix: String) -> Vec<String> {
        self.state.keys(&prefix)
    }
}

impl clock::Host for Sandbox {
    fn now_ms(&mut self) -> u64 {
        chrono::Utc::now().timestamp_millis().max(0) as u64
    }
}

impl crate::wit::types::Host for Sandbox {}
