//! The Flow Processor host: WebAssembly components run sandboxed.
//!
//! - [`Host`], [`HostConfig`], [`Limits`]: the engine, what it grants and
//!   what each processor may use;
//! - [`ProcessorComponent`], [`Kind`]: a loaded component and which of the
//!   four processor kinds it is;
//! - [`Processor`], [`ProcessorSetup`], [`Outcome`]: a running processor,
//!   how it is set up and what one call returns;
//! - [`LoadError`], [`CheckError`], [`CreateError`], [`CallError`],
//!   [`GuestError`]: why loading, checking, creating or calling failed;
//! - [`state`]: a processor's keyed state, transactional per call;
//! - [`wit`]: the processor contract as wasmtime bindings (they do not
//!   leave this crate except as [`Batch`]);
//! - [`pipe`]: one processor over event files (`flowd run`).
//!
//! A [`Host`] owns one wasmtime engine (pooling allocator, epoch
//! interruption), the linker with the imports a processor is granted, and the
//! on-disk cache of compiled components. [`Host::load`] turns component bytes
//! into a [`ProcessorComponent`] (compiled once, pre-instantiated, its
//! [`Kind`] detected); [`Host::create`] makes a running [`Processor`] of it.
//!
//! Every call runs under the processor's [`Limits`]: a memory cap, a CPU
//! deadline (epoch interruption), optional fuel and a state quota. A call that
//! traps or hits a limit returns a typed [`CallError`]; the poisoned instance
//! is discarded and the next call gets a fresh one, so one bad event never
//! takes the processor, or the host, down.

#![warn(missing_docs)]

mod cache;
mod error;
mod kind;
pub mod output;
pub mod pipe;
mod processor;
mod sandbox;
pub mod state;
pub mod wit;

pub use error::{CallError, CheckError, CreateError, GuestError, LoadError};
pub use kind::Kind;
pub use output::{Line, Said, Source};
pub use processor::{Outcome, Processor, ProcessorSetup};
/// A packed batch as the bindings type it: what [`Processor::process`]
/// takes. [`flowd_core::event::packed`] builds the same record.
pub use wit::types::Batch;

impl From<flowd_core::event::packed::Batch> for Batch {
    fn from(b: flowd_core::event::packed::Batch) -> Batch {
        Batch {
            bytes: b.bytes,
            events: b.events,
            extensions: b.extensions,
        }
    }
}

impl flowd_core::event::packed::Packed for Batch {
    fn view(&self) -> flow_abi::View<'_> {
        flow_abi::View::new(&self.bytes, &self.events, &self.extensions)
    }
}

use cache::ArtifactCache;
use sandbox::Sandbox;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{ComponentExportIndex, HasSelf, InstancePre, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Strategy,
};

/// Engine-wide settings of a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Processor instances that can be alive at once (pooling allocator).
    pub max_instances: u32,
    /// Ceiling for any processor's memory cap (size of a pool slot).
    pub max_memory: usize,
    /// Granularity of CPU deadlines.
    pub epoch_tick: Duration,
    /// Enables fuel metering, so [`Limits::fuel`] can be used. It slows
    /// guests down, so it is off by default.
    pub fuel: bool,
    /// WASI interface families a component may import although they reach
    /// outside the sandbox (`wasi:sockets`, `wasi:http`). Processors get no
    /// network capability either way; refusing the import at load time
    /// tells the author at upload rather than at the first failed call.
    pub granted: Vec<String>,
    /// Starts components that are not yet compiled on the baseline
    /// compiler (Winch: about a fifth of the optimising compile's time,
    /// slower code), so that an upload is checked and a first processor
    /// runs within a second or two while the optimised code is compiled
    /// ([`Host::load_quick`]). Off with fuel (Winch meters no fuel) and
    /// where Winch does not run (it targets x86-64).
    pub quick_start: bool,
}

/// `sha256:<hex>` of a component's bytes: its identity in the compile
/// cache and the key it is stored under in the broker.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// WASI packages refused unless granted in [`HostConfig::granted`].
pub const GUARDED_WASI: [&str; 2] = ["wasi:sockets", "wasi:http"];

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cache_dir: None,
            max_instances: 256,
            max_memory: 1 << 30,
            epoch_tick: Duration::from_millis(5),
            fuel: false,
            granted: Vec::new(),
            quick_start: true,
        }
    }
}

/// What one processor may use, per instance and per call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap in bytes (default 64 MiB).
    pub memory: usize,
    /// CPU deadline of one call (default 100 ms).
    pub deadline: Duration,
    /// Fuel per call, when the host has fuel enabled (`None`: unlimited).
    pub fuel: Option<u64>,
    /// Keyed state quota in bytes, keys plus values (default 16 MiB).
    pub state: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            deadline: Duration::from_millis(100),
            fuel: None,
            state: 16 << 20,
        }
    }
}

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The engine or its linker refused the configuration (e.g. a pool too
    /// large for the machine's address space).
    #[error("cannot configure the Wasm engine: {0}")]
    Engine(String),
    /// The cache directory could not be created or used.
    #[error("cannot use cache directory {path}: {source}")]
    Cache {
        /// The directory configured.
        path: PathBuf,
        /// Why it could not be used.
        source: std::io::Error,
    },
}

/// The exports of a kind, located once per component.
#[derive(Clone)]
pub(crate) enum KindIndices {
    Bridge(wit::bridge::GuestIndices),
    Collector(wit::collector::GuestIndices),
    Distributor(wit::distributor::GuestIndices),
    Signal(wit::signal::GuestIndices),
}

/// A component compiled, checked and ready to instantiate.
pub struct ProcessorComponent {
    kind: Kind,
    digest: String,
    size: usize,
    optimised: bool,
    imports: Vec<String>,
    pub(crate) pre: InstancePre<Sandbox>,
    pub(crate) indices: KindIndices,
    pub(crate) lifecycle: [ComponentExportIndex; 3],
}

impl ProcessorComponent {
    /// The processor kind its exports declare.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `sha256:<hex>` of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether this is the optimising compiler's code (else the baseline
    /// compiler's, from [`Host::load_quick`]).
    pub fn is_optimised(&self) -> bool {
        self.optimised
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The interfaces the component imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
}

impl std::fmt::Debug for ProcessorComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorComponent")
            .field("kind", &self.kind)
            .field("digest", &self.digest)
            .field("size", &self.size)
            .finish()
    }
}

/// The Wasm processor host. Cheap to share (`Arc`); one per process is enough.
pub struct Host {
    engine: Engine,
    linker: Linker<Sandbox>,
    /// The baseline compiler's engine, for [`Host::load_quick`].
    quick: Option<QuickTier>,
    cache: Option<ArtifactCache>,
    config: HostConfig,
    loaded: Mutex<HashMap<String, Arc<ProcessorComponent>>>,
    /// Digests whose optimised code is being compiled ([`Host::optimising`]).
    optimising: Arc<Mutex<std::collections::HashSet<String>>>,
    _ticker: EpochTicker,
}

/// Held while a component's optimised code is compiled in the
/// background; dropping it lets another compile start.
pub struct Optimising {
    digest: String,
    set: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Drop for Optimising {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.digest);
    }
}

/// The baseline tier: its own engine (the compiler is an engine setting),
/// linker, instance pool and epoch ticker, so its instances get the same
/// deadlines and memory caps as the optimised ones.
struct QuickTier {
    engine: Engine,
    linker: Linker<Sandbox>,
    loaded: Mutex<HashMap<String, Arc<ProcessorComponent>>>,
    _ticker: EpochTicker,
}

/// The linker every processor instance gets: WASI (sandboxed) and the
/// flow host interfaces.
fn new_linker(engine: &Engine) -> Result<Linker<Sandbox>, wasmtime::Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wit::Host_::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)?;
    Ok(linker)
}

fn lock<T>(map: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves the map consistent (inserts
    // are single operations), so a poisoned lock is still usable.
    map.lock().unwrap_or_else(|e| e.into_inner())
}

impl Host {
    /// Sets up the engine, the linker and the cache, and starts the epoch
    /// ticker that enforces deadlines.
    pub fn new(config: HostConfig) -> Result<Host, HostError> {
        let engine_error = |e: wasmtime::Error| HostError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_instances;
        // Components from other toolchains are made of many core modules
        // (componentize-py: an interpreter, libc and adapters, each with its
        // own memory and tables), so the per-component ceilings are well
        // above what a Rust guest (one module) needs. Slots are virtual
        // reservations; the memory cap is enforced per store.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8).max(128))
            .total_memories(n.saturating_mul(4).max(32))
            .total_tables(n.saturating_mul(8).max(128))
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_memory_size(config.max_memory);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool.clone()));
        let engine = Engine::new(&wasm).map_err(engine_error)?;
        let linker = new_linker(&engine).map_err(engine_error)?;
        let quick = if config.quick_start && !config.fuel && cfg!(target_arch = "x86_64") {
            wasm.strategy(Strategy::Winch);
            // Best effort: without it every component takes the optimising
            // compile, as it would with `quick_start` off.
            match Engine::new(&wasm).and_then(|engine| Ok((new_linker(&engine)?, engine))) {
                Ok((linker, engine)) => Some(QuickTier {
                    _ticker: EpochTicker::start(engine.clone(), config.epoch_tick),
                    engine,
                    linker,
                    loaded: Mutex::new(HashMap::new()),
                }),
                Err(e) => {
                    tracing::warn!("no baseline compiler, components start optimised: {e:#}");
                    None
                }
            }
        } else {
            None
        };

        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::new(dir.clone(), &engine).map_err(|source| {
                HostError::Cache {
                    path: dir.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick);
        Ok(Host {
            engine,
            linker,
            quick,
            optimising: Arc::default(),
            cache,
            config,
            loaded: Mutex::new(HashMap::new()),
            _ticker: ticker,
        })
    }

    /// The settings the host was made with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Loads a component file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<ProcessorComponent>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Compiles (or fetches from cache), checks and pre-instantiates a
    /// component. Loading the same bytes again returns the same component.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<ProcessorComponent>, LoadError> {
        self.load_shared(bytes, None).map(|(loaded, _)| loaded)
    }

    /// The key under which hosts share the compiled form of component
    /// `digest`: the digest and this engine's compatibility tag, so hosts
    /// of another build (another wasmtime, other settings) never take it.
    pub fn artifact_key(&self, digest: &str) -> String {
        format!(
            "{}-{}",
            digest.trim_start_matches("sha256:"),
            cache::engine_tag(&self.engine)
        )
    }

    /// Whether loading component `digest` would compile it: it is neither
    /// loaded nor in the disk cache.
    pub fn would_compile(&self, digest: &str) -> bool {
        !self.loaded_components().contains_key(digest)
            && !self
                .cache
                .as_ref()
                .is_some_and(|c| c.has(digest.trim_start_matches("sha256:")))
    }

    /// [`Host::load`], taking `artifact` (the compiled form another host
    /// of the participant stored under [`Host::artifact_key`]) instead of
    /// compiling, when it is one this engine accepts. Returns the component
    /// and, when this call compiled it, its compiled form for the others.
    ///
    /// An artifact is native code: it must come from where only the
    /// participant's hosts write (the broker's `flowd-artifacts` store,
    /// in the host's own account), as the disk cache does.
    pub fn load_shared(
        &self,
        bytes: &[u8],
        artifact: Option<&[u8]>,
    ) -> Result<(Arc<ProcessorComponent>, Option<Vec<u8>>), LoadError> {
        let digest = digest(bytes);
        if let Some(found) = self.loaded_components().get(&digest) {
            return Ok((found.clone(), None));
        }
        check_header(bytes)?;
        let compile_error = |e: wasmtime::Error| LoadError::Compile {
            reason: format!("{e:#}"),
        };
        let key = digest.trim_start_matches("sha256:");
        let shared = artifact.and_then(|artifact| {
            // SAFETY: `artifact` was written by `Component::serialize` of a
            // host of the participant (see above) with the same engine tag
            // (it is in the key); wasmtime checks its header and refuses
            // what another engine or configuration produced.
            match unsafe { wasmtime::component::Component::deserialize(&self.engine, artifact) } {
                Ok(component) => Some(component),
                Err(e) => {
                    tracing::warn!(digest, "compiling: the shared artifact is unusable: {e}");
                    None
                }
            }
        });
        let mut compiled = None;
        let component = match (shared, &self.cache) {
            (Some(component), cache) => {
                if let Some(cache) = cache {
                    cache.keep(key, &component);
                }
                component
            }
            (None, Some(cache)) => {
                let (component, cached) = cache
                    .get_or_compile(&self.engine, key, bytes)
                    .map_err(compile_error)?;
                if !cached {
                    compiled = component.serialize().ok();
                }
                component
            }
            (None, None) => {
                let component = wasmtime::component::Component::new(&self.engine, bytes)
                    .map_err(compile_error)?;
                compiled = component.serialize().ok();
                component
            }
        };
        let loaded = self.finish_load(digest, bytes.len(), component, None)?;
        Ok((loaded, compiled))
    }

    /// The component in `bytes`, as fast as it can be had: the optimised
    /// code when this host has it (loaded or in its disk cache), else the
    /// baseline compiler's, which compiles in a fraction of the time and
    /// runs slower (the caller compiles the optimised code meanwhile and
    /// moves to it with [`Host::optimised`]). Without a baseline tier, or
    /// for a component it does not compile (a proposal Winch lacks), this
    /// is [`Host::load`]. The checks are the same either way.
    ///
    /// Like [`Host::load_shared`], returns the compiled form to share when
    /// this call compiled optimised code.
    pub fn load_quick(
        &self,
        bytes: &[u8],
    ) -> Result<(Arc<ProcessorComponent>, Option<Vec<u8>>), LoadError> {
        let digest = digest(bytes);
        let Some(quick) = &self.quick else {
            return self.load_shared(bytes, None);
        };
        if !self.would_compile(&digest) {
            return self.load_shared(bytes, None);
        }
        if let Some(found) = lock(&quick.loaded).get(&digest) {
            return Ok((found.clone(), None));
        }
        check_header(bytes)?;
        match wasmtime::component::Component::new(&quick.engine, bytes) {
            Ok(component) => self
                .finish_load(digest, bytes.len(), component, Some(quick))
                .map(|loaded| (loaded, None)),
            Err(e) => {
                tracing::debug!(digest, "the baseline compiler refused: {e:#}");
                self.load_shared(bytes, None)
            }
        }
    }

    /// Claims the background compile of component `digest`'s optimised
    /// code: `None` when it is loaded already or another task compiles it,
    /// so that a component is compiled once however many start on it.
    pub fn optimising(&self, digest: &str) -> Option<Optimising> {
        if self.optimised(digest).is_some() || !lock(&self.optimising).insert(digest.to_owned()) {
            return None;
        }
        Some(Optimising {
            digest: digest.to_owned(),
            set: self.optimising.clone(),
        })
    }

    /// The optimised code of component `digest`, once this host has loaded
    /// it: what a processor started on [`Host::load_quick`]'s baseline
    /// code is restarted on.
    pub fn optimised(&self, digest: &str) -> Option<Arc<ProcessorComponent>> {
        self.loaded_components().get(digest).cloned()
    }

    /// Checks a compiled component and pre-instantiates it, in the tier
    /// that compiled it (`quick`: the baseline one).
    fn finish_load(
        &self,
        digest: String,
        size: usize,
        component: wasmtime::component::Component,
        quick: Option<&QuickTier>,
    ) -> Result<Arc<ProcessorComponent>, LoadError> {
        let (engine, linker) = match quick {
            Some(tier) => (&tier.engine, &tier.linker),
            None => (&self.engine, &self.linker),
        };
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let kind = Kind::detect(exports.iter().map(String::as_str))?;
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
        let foreign: Vec<&str> = imports
            .iter()
            .map(String::as_str)
            .filter(|i| !i.starts_with("wasi:") && !i.starts_with("eson:flow/"))
            .collect();
        if !foreign.is_empty() {
            return Err(LoadError::UnsatisfiedImport {
                reason: format!(
                    "{} (a processor may import eson:flow/log, state and clock, and WASI)",
                    foreign.join(", ")
                ),
            });
        }
        let guarded: Vec<&str> = imports
            .iter()
            .map(String::as_str)
            .filter(|i| {
                GUARDED_WASI.iter().any(|g| {
                    i.starts_with(&format!("{g}/")) && !self.config.granted.iter().any(|x| x == g)
                })
            })
            .collect();
        if !guarded.is_empty() {
            return Err(LoadError::NotGranted {
                imports: guarded.join(", "),
            });
        }
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnsatisfiedImport {
                reason: format!("{e:#}"),
            })?;

        let wrong = |e: wasmtime::Error| LoadError::WrongSignature {
            kind,
            reason: format!("{e:#}"),
        };
        let indices = match kind {
            Kind::Bridge => {
                KindIndices::Bridge(wit::bridge::GuestIndices::new(&pre).map_err(wrong)?)
            }
            Kind::Collector => {
                KindIndices::Collector(wit::collector::GuestIndices::new(&pre).map_err(wrong)?)
            }
            Kind::Distributor => {
                KindIndices::Distributor(wit::distributor::GuestIndices::new(&pre).map_err(wrong)?)
            }
            Kind::Signal => {
                KindIndices::Signal(wit::signal::GuestIndices::new(&pre).map_err(wrong)?)
            }
        };
        let lifecycle = kind::LIFECYCLE.map(|name| component.get_export_index(None, name));
        let [Some(init), Some(update), Some(teardown)] = lifecycle else {
            // `Kind::detect` saw all three names among the exports.
            return Err(LoadError::MissingExport {
                kind,
                missing: "init/update/teardown".into(),
            });
        };
        let loaded = Arc::new(ProcessorComponent {
            kind,
            digest: digest.clone(),
            size,
            optimised: quick.is_none(),
            imports,
            pre,
            indices,
            lifecycle: [init, update, teardown],
        });
        // Type-check every export once, now, rather than on first use.
        processor::typecheck(self, &loaded)
            .map_err(|e| LoadError::WrongSignature { kind, reason: e })?;
        match quick {
            Some(tier) => lock(&tier.loaded).insert(digest, loaded.clone()),
            None => {
                if let Some(tier) = &self.quick {
                    // The optimised code supersedes it.
                    lock(&tier.loaded).remove(&digest);
                }
                self.loaded_components().insert(digest, loaded.clone())
            }
        };
        Ok(loaded)
    }

    fn loaded_components(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ProcessorComponent>>> {
        lock(&self.loaded)
    }

    /// Loads `bytes` and sets an instance up with `setup`, as running them
    /// would, then drops it: whether the component is of the `expected`
    /// kind and accepts its configuration, before anything is stored.
    pub fn check(
        &self,
        bytes: &[u8],
        expected: Option<Kind>,
        setup: ProcessorSetup,
        limits: Limits,
    ) -> Result<(), CheckError> {
        let (component, _) = self.load_quick(bytes)?;
        if let Some(expected) = expected
            && component.kind() != expected
        {
            return Err(CheckError::WrongKind {
                found: component.kind(),
                expected,
            });
        }
        let processor = self.create(component, setup, limits)?;
        let _ = processor.teardown();
        Ok(())
    }

    /// Creates a running processor: instantiates the component and calls its
    /// `init` with the setup.
    pub fn create(
        &self,
        component: Arc<ProcessorComponent>,
        setup: ProcessorSetup,
        limits: Limits,
    ) -> Result<Processor, CreateError> {
        Processor::create(self, component, setup, limits, None)
    }

    /// [`Host::create`] with keyed state restored from elsewhere (the
    /// broker), so a processor resumes with the windows it had.
    pub fn create_with_state(
        &self,
        component: Arc<ProcessorComponent>,
        setup: ProcessorSetup,
        limits: Limits,
        state: state::KeyedState,
    ) -> Result<Processor, CreateError> {
        Processor::create(self, component, setup, limits, Some(state))
    }

    /// Epoch ticks that make up `deadline`, rounded up.
    pub(crate) fn deadline_ticks(&self, deadline: Duration) -> u64 {
        let tick = self.config.epoch_tick.as_nanos().max(1);
        (deadline.as_nanos().div_ceil(tick) as u64).max(1)
    }

    /// A store for an instance of `component`, on the engine (the tier)
    /// that compiled it.
    pub(crate) fn new_store(component: &ProcessorComponent, data: Sandbox) -> Store<Sandbox> {
        Store::new(component.pre.engine(), data)
    }
}

/// Rejects what is not a component before handing it to the compiler, with a
/// message a user can act on.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotAComponent {
            core_module: false,
            reason: "the file does not start with the WebAssembly magic number".into(),
        });
    }
    if bytes[4..8] == CORE {
        return Err(LoadError::NotAComponent {
            core_module: true,
            reason: "core module header".into(),
        });
    }
    Ok(())
}

/// Advances the engine's epoch every tick, which is what enforces deadlines.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("flowd-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .ok();
        EpochTicker {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
