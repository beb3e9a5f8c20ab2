//! A running processor: one live instance of a component, recreated after
//! any trap, with its configuration, ports, limits and keyed state.

use super::output::{GuestOutput, Said};
use super::sandbox::Sandbox;
use super::state::KeyedState;
use super::{
    CallError, CreateError, GuestError, Host, Kind, KindIndices, Limits, ProcessorComponent,
};
use crate::wit::{self, types};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::TypedFunc;
use wasmtime::{Engine, Store, Trap};

type InitFunc = TypedFunc<(types::Setup,), (Result<(), types::Error>,)>;
type UpdateFunc = TypedFunc<(Vec<(String, String)>,), (Result<(), types::Error>,)>;
type TeardownFunc = TypedFunc<(), ()>;

/// What a processor is created with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorSetup {
    /// Name used in logs and errors.
    pub name: String,
    /// `key=value` configuration, in order.
    pub config: Vec<(String, String)>,
    /// Input port names (flows), in port order.
    pub inputs: Vec<String>,
    /// Output port names (flows), in port order.
    pub outputs: Vec<String>,
}

/// The result of one call: the events the processor created and what it
/// emits, in order (see the `output` type of the contract).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The events the processor created, packed.
    pub created: types::Batch,
    /// Emit words: a forwarded input index or a created index (bit 31).
    pub emits: Vec<u32>,
    /// The output port of each emit; `None` for bridge and collector (port 0).
    pub ports: Option<Vec<u32>>,
}

impl Outcome {
    fn single(output: types::Output) -> Self {
        Outcome {
            created: output.created,
            emits: output.emits,
            ports: None,
        }
    }

    fn routed(output: types::RoutedOutput) -> Self {
        Outcome {
            created: output.created,
            emits: output.emits,
            ports: Some(output.ports),
        }
    }

    /// Resolves the emits into `(port, event)`s, given the call's input
    /// events and the processor's number of outputs.
    pub fn resolve(
        &self,
        inputs: &[flowd_core::event::Event],
        outputs: usize,
    ) -> Result<Vec<(u32, flowd_core::event::Event)>, flowd_core::event::packed::PackError> {
        flowd_core::event::packed::resolve(
            inputs,
            &self.created,
            &self.emits,
            self.ports.as_deref(),
            outputs,
        )
    }
}

enum Exports {
    Bridge(wit::bridge::Guest),
    Collector(wit::collector::Guest),
    Distributor(wit::distributor::Guest),
    Signal(wit::signal::Guest),
}

struct Live {
    store: Store<Sandbox>,
    exports: Exports,
    update: UpdateFunc,
    teardown: TeardownFunc,
}

/// A processor instance managed by the host.
pub struct Processor {
    component: Arc<ProcessorComponent>,
    engine: Engine,
    name: Arc<str>,
    setup: types::Setup,
    limits: Limits,
    deadline_ticks: u64,
    fuel_enabled: bool,
    live: Option<Live>,
    /// The keyed state while no instance is live.
    parked: Option<KeyedState>,
    /// Instances discarded after a trap or a limit hit.
    recycled: u64,
    /// What its instances said (`log`, stdout, stderr), until collected.
    output: GuestOutput,
}

/// Instantiates `component` once without calling it, to type-check the
/// lifecycle and kind exports at load time.
pub(crate) fn typecheck(host: &Host, component: &ProcessorComponent) -> Result<(), String> {
    let sandbox = Sandbox::new(
        "typecheck".into(),
        host.config().max_memory,
        KeyedState::new(0),
        GuestOutput::default(),
    );
    let mut store = Host::new_store(component, sandbox);
    let ticks = host.deadline_ticks(Duration::from_secs(5));
    arm(&mut store, ticks, host.config().fuel, &Limits::default());
    store.epoch_deadline_trap();
    let instance = component
        .pre
        .instantiate(&mut store)
        .map_err(|e| format!("{e:#}"))?;
    load_exports(&mut store, &instance, component).map(|_| ())
}

/// The typed exports of one instance.
struct Found {
    init: InitFunc,
    update: UpdateFunc,
    teardown: TeardownFunc,
    exports: Exports,
}

fn load_exports(
    store: &mut Store<Sandbox>,
    instance: &wasmtime::component::Instance,
    component: &ProcessorComponent,
) -> Result<Found, String> {
    let err = |what: &str, e: wasmtime::Error| format!("`{what}`: {e:#}");
    let [init, update, teardown] = &component.lifecycle;
    let init = instance
        .get_typed_func::<(types::Setup,), (Result<(), types::Error>,)>(&mut *store, init)
        .map_err(|e| err("init", e))?;
    let update = instance
        .get_typed_func::<(Vec<(String, String)>,), (Result<(), types::Error>,)>(
            &mut *store,
            update,
        )
        .map_err(|e| err("update", e))?;
    let teardown = instance
        .get_typed_func::<(), ()>(&mut *store, teardown)
        .map_err(|e| err("teardown", e))?;
    let kind_err = |e: wasmtime::Error| format!("{}: {e:#}", component.kind().interface());
    let exports = match &component.indices {
        KindIndices::Bridge(i) => Exports::Bridge(i.load(&mut *store, instance).map_err(kind_err)?),
        KindIndices::Collector(i) => {
            Exports::Collector(i.load(&mut *store, instance).map_err(kind_err)?)
        }
        KindIndices::Distributor(i) => {
            Exports::Distributor(i.load(&mut *store, instance).map_err(kind_err)?)
        }
        KindIndices::Signal(i) => Exports::Signal(i.load(&mut *store, instance).map_err(kind_err)?),
    };
    Ok(Found {
        init,
        update,
        teardown,
        exports,
    })
}

impl Processor {
    pub(crate) fn create(
        host: &Host,
        component: Arc<ProcessorComponent>,
        setup: super::ProcessorSetup,
        limits: Limits,
        state: Option<KeyedState>,
    ) -> Result<Processor, CreateError> {
        let kind = component.kind();
        kind.check_ports(setup.inputs.len(), setup.outputs.len())
            .map_err(CreateError::Ports)?;
        if limits.memory > host.config().max_memory {
            return Err(CreateError::Ports(format!(
                "memory cap {} exceeds the host's ceiling {}",
                limits.memory,
                host.config().max_memory
            )));
        }
        let mut processor = Processor {
            engine: component.pre.engine().clone(),
            name: setup.name.as_str().into(),
            setup: types::Setup {
                config: setup.config,
                inputs: setup.inputs,
                outputs: setup.outputs,
            },
            deadline_ticks: host.deadline_ticks(limits.deadline),
            fuel_enabled: host.config().fuel,
            parked: Some(state.unwrap_or_else(|| KeyedState::new(limits.state))),
            limits,
            component,
            live: None,
            recycled: 0,
            output: GuestOutput::default(),
        };
        match processor.ensure_live() {
            Ok(()) => Ok(processor),
            Err(CallError::Guest(GuestError::Config(m))) => Err(CreateError::Config(m)),
            Err(e) => Err(CreateError::Init(e)),
        }
    }

    /// The kind of its component.
    pub fn kind(&self) -> Kind {
        self.component.kind()
    }

    /// The name it was set up with ([`ProcessorSetup::name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loaded component it runs.
    pub fn component(&self) -> &Arc<ProcessorComponent> {
        &self.component
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Its input port names, in port order.
    pub fn inputs(&self) -> &[String] {
        &self.setup.inputs
    }

    /// Its output port names, in port order.
    pub fn outputs(&self) -> &[String] {
        &self.setup.outputs
    }

    /// Its current configuration (as changed by [`Processor::update`]).
    pub fn config(&self) -> &[(String, String)] {
        &self.setup.config
    }

    /// How many instances were discarded after traps or limit hits.
    pub fn recycled(&self) -> u64 {
        self.recycled
    }

    /// Takes what the guest said (`log` calls, stdout and stderr lines)
    /// since the last time, so the host can log it.
    pub fn take_said(&self) -> Said {
        self.output.take()
    }

    /// Keyed state (committed writes and the current journal).
    pub fn state(&mut self) -> &mut KeyedState {
        if let Some(live) = &mut self.live {
            return &mut live.store.data_mut().state;
        }
        let quota = self.limits.state;
        self.parked.get_or_insert_with(|| KeyedState::new(quota))
    }

    /// Hands a batch that arrived on input port `input` to the processor.
    pub fn process(&mut self, input: u32, batch: &types::Batch) -> Result<Outcome, CallError> {
        let inputs = self.setup.inputs.len();
        if input as usize >= inputs {
            return Err(CallError::Instantiate {
                reason: format!("no input port {input}: the processor has {inputs}"),
            });
        }
        self.call(|store, exports| match exports {
            Exports::Bridge(g) => Ok(g.call_process(store, batch)?.map(Outcome::single)),
            Exports::Collector(g) => Ok(g.call_process(store, input, batch)?.map(Outcome::single)),
            Exports::Distributor(g) => Ok(g.call_process(store, batch)?.map(Outcome::routed)),
            Exports::Signal(g) => Ok(g.call_process(store, input, batch)?.map(Outcome::routed)),
        })
    }

    /// Timer tick: signal processors may emit events; other kinds emit none.
    pub fn tick(&mut self, now_ms: u64) -> Result<Outcome, CallError> {
        if self.kind() != Kind::Signal {
            return Ok(Outcome {
                created: flowd_core::event::packed::BatchBuilder::default()
                    .finish()
                    .into(),
                emits: Vec::new(),
                ports: None,
            });
        }
        self.call(|store, exports| match exports {
            Exports::Signal(g) => Ok(g.call_tick(store, now_ms)?.map(Outcome::routed)),
            _ => Ok(Err(types::Error::Failed(
                "tick on a non-signal processor".into(),
            ))),
        })
    }

    /// Applies a new configuration in place (figure 6 "update"). On error the
    /// processor keeps its old configuration.
    pub fn update(&mut self, config: Vec<(String, String)>) -> Result<(), CallError> {
        self.ensure_live()?;
        self.setup.config = self.run(move |live| {
            let (r,) = live.update.call(&mut live.store, (config.clone(),))?;
            Ok(r.map(|()| config))
        })?;
        Ok(())
    }

    /// Calls `teardown` (figure 6 "destroy") and drops the instance.
    pub fn teardown(mut self) -> Result<(), CallError> {
        if self.live.is_some() {
            self.run(|live| {
                live.teardown.call(&mut live.store, ())?;
                Ok(Ok(()))
            })?;
        }
        Ok(())
    }

    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<Sandbox>, &Exports) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<R, CallError> {
        self.ensure_live()?;
        self.run(|live| {
            let Live { store, exports, .. } = live;
            f(store, exports)
        })
    }

    /// Runs one call on the live instance under the limits; commits or rolls
    /// back state; discards the instance on a trap.
    fn run<R>(
        &mut self,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<R, CallError> {
        let Some(live) = self.live.as_mut() else {
            return unreachable_live();
        };
        arm(
            &mut live.store,
            self.deadline_ticks,
            self.fuel_enabled,
            &self.limits,
        );
        match f(live) {
            Ok(Ok(r)) => {
                live.store.data_mut().state.commit();
                Ok(r)
            }
            Ok(Err(e)) => {
                live.store.data_mut().state.rollback();
                Err(CallError::Guest(e.into()))
            }
            Err(trap) => {
                let error = classify(&trap, live.store.data(), &self.limits);
                if let Some(live) = self.live.take() {
                    self.park(live.store);
                }
                Err(error)
            }
        }
    }

    fn park(&mut self, store: Store<Sandbox>) {
        let mut state = store.into_data().state;
        state.rollback();
        self.parked = Some(state);
        self.recycled += 1;
    }

    /// Makes sure an instance is live (instantiated and initialised), so
    /// that what `init` writes to the state is committed before a call's
    /// savepoint is taken: reverting the call must not undo it.
    pub fn ready(&mut self) -> Result<(), CallError> {
        self.ensure_live()
    }

    /// Whether an instance is live (`false` after a trap or limit hit
    /// discarded it: the next call instantiates and initialises another).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Makes sure an instance is live: instantiates and initialises a fresh
    /// one if the last was discarded.
    fn ensure_live(&mut self) -> Result<(), CallError> {
        if self.live.is_some() {
            return Ok(());
        }
        let state = self
            .parked
            .take()
            .unwrap_or_else(|| KeyedState::new(self.limits.state));
        let sandbox = Sandbox::new(
            self.name.clone(),
            self.limits.memory,
            state,
            self.output.clone(),
        );
        let mut store = Store::new(&self.engine, sandbox);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        arm(
            &mut store,
            self.deadline_ticks,
            self.fuel_enabled,
            &self.limits,
        );

        let instance = match self.component.pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => {
                let error = match classify(&e, store.data(), &self.limits) {
                    CallError::Trap { message } => CallError::Instantiate { reason: message },
                    other => other,
                };
                self.park(store);
                return Err(error);
            }
        };
        let found = match load_exports(&mut store, &instance, &self.component) {
            Ok(found) => found,
            Err(reason) => {
                self.park(store);
                return Err(CallError::Instantiate { reason });
            }
        };
        let init = found.init;
        self.live = Some(Live {
            store,
            exports: found.exports,
            update: found.update,
            teardown: found.teardown,
        });
        let setup = self.setup.clone();
        self.run(move |live| {
            let (r,) = init.call(&mut live.store, (setup,))?;
            Ok(r)
        })
        .inspect_err(|_| {
            // A processor that failed init is not usable: drop the instance
            // (its state was rolled back by `run`).
            if let Some(live) = self.live.take() {
                self.parked = Some(live.store.into_data().state);
            }
        })
    }
}

fn unreachable_live<R>() -> Result<R, CallError> {
    Err(CallError::Instantiate {
        reason: "no live instance".into(),
    })
}

/// Sets the per-call budget: deadline, fuel, and clears the limit flags.
fn arm(store: &mut Store<Sandbox>, deadline_ticks: u64, fuel: bool, limits: &Limits) {
    store.set_epoch_deadline(deadline_ticks);
    if fuel {
        // Only fails when fuel is disabled, which `fuel` rules out.
        let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
    }
    let data = store.data_mut();
    data.state_quota_hit = false;
    data.limiter.reset();
    data.output.clear_recent();
}

/// Turns a trap into the error that says which limit (if any) caused it.
fn classify(error: &wasmtime::Error, sandbox: &Sandbox, limits: &Limits) -> CallError {
    if sandbox.state_quota_hit {
        return CallError::StateQuota {
            limit: limits.state,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Deadline {
            limit: limits.deadline,
        },
        Some(Trap::OutOfFuel) => CallError::OutOfFuel {
            fuel: limits.fuel.unwrap_or(u64::MAX),
        },
        _ if sandbox.limiter.hit() => CallError::MemoryCap {
            limit: sandbox.limiter.cap(),
        },
        Some(trap) => {
            let mut message = trap.to_string();
            if let Some(line) = sandbox.output.trap_context() {
                message = format!("{message}: {line}");
            }
            CallError::Trap { message }
        }
        None => CallError::Trap {
            message: format!("{error:#}"),
        },
    }
}
