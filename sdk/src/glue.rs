//! The code behind the export macros: keeps the one processor value of this
//! instance and adapts WIT calls to the SDK traits. Not a public API.

use crate::bindings::types;
use crate::{
    Batch, Bridge, Collector, Config, Distributor, Error, Output, Processor, RoutedOutput, Setup,
    Signal,
};
use std::any::Any;
use std::cell::RefCell;

struct Slot {
    setup: Setup,
    processor: Box<dyn Any>,
}

thread_local! {
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

fn with<P: Processor, R>(f: impl FnOnce(&mut P, &Setup) -> Result<R, Error>) -> Result<R, Error> {
    SLOT.with(|slot| {
        let mut slot = slot.borrow_mut();
        let slot = slot
            .as_mut()
            .ok_or_else(|| Error::failed("processor called before init"))?;
        let processor = slot
            .processor
            .downcast_mut::<P>()
            .ok_or_else(|| Error::failed("processor slot holds another type"))?;
        f(processor, &slot.setup)
    })
}

pub fn init<P: Processor>(setup: types::Setup) -> Result<(), types::Error> {
    let setup = Setup {
        config: Config::new(setup.config),
        inputs: setup.inputs,
        outputs: setup.outputs,
    };
    let processor = P::init(&setup)?;
    SLOT.with(|slot| {
        *slot.borrow_mut() = Some(Slot {
            setup,
            processor: Box::new(processor),
        })
    });
    Ok(())
}

pub fn update<P: Processor>(config: Vec<(String, String)>) -> Result<(), types::Error> {
    SLOT.with(|slot| {
        let mut slot = slot.borrow_mut();
        let slot = slot
            .as_mut()
            .ok_or_else(|| Error::failed("processor updated before init"))?;
        let processor = slot
            .processor
            .downcast_mut::<P>()
            .ok_or_else(|| Error::failed("processor slot holds another type"))?;
        let setup = Setup {
            config: Config::new(config),
            ..slot.setup.clone()
        };
        processor.update(&setup)?;
        slot.setup = setup;
        Ok(())
    })
}

pub fn teardown<P: Processor>() {
    let _ = with::<P, ()>(|p, _| {
        p.teardown();
        Ok(())
    });
    SLOT.with(|slot| slot.borrow_mut().take());
}

pub fn bridge<P: Bridge>(batch: types::Batch) -> Result<types::Output, types::Error> {
    let batch = Batch::from_raw(batch);
    let mut out = Output::new();
    with::<P, ()>(|p, _| p.process(&batch, &mut out))?;
    Ok(out.into_raw())
}

pub fn collector<P: Collector>(
    input: u32,
    batch: types::Batch,
) -> Result<types::Output, types::Error> {
    let batch = Batch::from_raw(batch);
    let mut out = Output::new();
    with::<P, ()>(|p, _| p.process(input, &batch, &mut out))?;
    Ok(out.into_raw())
}

pub fn distributor<P: Distributor>(
    batch: types::Batch,
) -> Result<types::RoutedOutput, types::Error> {
    let batch = Batch::from_raw(batch);
    let mut out = RoutedOutput::new();
    with::<P, ()>(|p, _| p.process(&batch, &mut out))?;
    Ok(out.into_raw())
}

pub fn signal<P: Signal>(
    input: u32,
    batch: types::Batch,
) -> Result<types::RoutedOutput, types::Error> {
    let batch = Batch::from_raw(batch);
    let mut out = RoutedOutput::new();
    with::<P, ()>(|p, _| p.process(input, &batch, &mut out))?;
    Ok(out.into_raw())
}

pub fn tick<P: Signal>(now_ms: u64) -> Result<types::RoutedOutput, types::Error> {
    let mut out = RoutedOutput::new();
    with::<P, ()>(|p, _| p.tick(now_ms, &mut out))?;
    Ok(out.into_raw())
}

/// Implements the lifecycle export of one world for `$export`, delegating to
/// the processor type `$ty`.
#[doc(hidden)]
#[macro_export]
macro_rules! __lifecycle {
    ($world:ident, $export:ident, $ty:ty) => {
        impl $crate::bindings::$world::Guest for $export {
            fn init(
                setup: $crate::bindings::types::Setup,
            ) -> ::core::result::Result<(), $crate::bindings::types::Error> {
                $crate::glue::init::<$ty>(setup)
            }
            fn update(
                config: $crate::bindings::types::Config,
            ) -> ::core::result::Result<(), $crate::bindings::types::Error> {
                $crate::glue::update::<$ty>(config)
            }
            fn teardown() {
                $crate::glue::teardown::<$ty>()
            }
        }
    };
}

/// Exports a [`Bridge`](crate::Bridge) processor type as this component's
/// implementation of the `bridge-processor` world.
#[macro_export]
macro_rules! bridge {
    ($ty:ty) => {
        const _: () = {
            struct FlowExport;
            $crate::__lifecycle!(bridge, FlowExport, $ty);
            impl $crate::bindings::bridge::exports::eson::flow::bridge::Guest for FlowExport {
                fn process(
                    events: $crate::bindings::types::Batch,
                ) -> ::core::result::Result<
                    $crate::bindings::types::Output,
                    $crate::bindings::types::Error,
                > {
                    $crate::glue::bridge::<$ty>(events)
                }
            }
            $crate::bindings::bridge::export_bridge_world!(
                FlowExport with_types_in $crate::bindings::bridge
            );
        };
    };
}

/// Exports a [`Collector`](crate::Collector) processor type.
#[macro_export]
macro_rules! collector {
    ($ty:ty) => {
        const _: () = {
            struct FlowExport;
            $crate::__lifecycle!(collector, FlowExport, $ty);
            impl $crate::bindings::collector::exports::eson::flow::collector::Guest for FlowExport {
                fn process(
                    input: u32,
                    events: $crate::bindings::types::Batch,
                ) -> ::core::result::Result<
                    $crate::bindings::types::Output,
                    $crate::bindings::types::Error,
                > {
                    $crate::glue::collector::<$ty>(input, events)
                }
            }
            $crate::bindings::collector::export_collector_world!(
                FlowExport with_types_in $crate::bindings::collector
            );
        };
    };
}

/// Exports a [`Distributor`](crate::Distributor) processor type.
#[macro_export]
macro_rules! distributor {
    ($ty:ty) => {
        const _: () = {
            struct FlowExport;
            $crate::__lifecycle!(distributor, FlowExport, $ty);
            impl $crate::bindings::distributor::exports::eson::flow::distributor::Guest
                for FlowExport
            {
                fn process(
                    events: $crate::bindings::types::Batch,
                ) -> ::core::result::Result<
                    $crate::bindings::types::RoutedOutput,
                    $crate::bindings::types::Error,
                > {
                    $crate::glue::distributor::<$ty>(events)
                }
            }
            $crate::bindings::distributor::export_distributor_world!(
                FlowExport with_types_in $crate::bindings::distributor
            );
        };
    };
}

/// Exports a [`Signal`](crate::Signal) processor type.
#[macro_export]
macro_rules! signal {
    ($ty:ty) => {
        const _: () = {
            struct FlowExport;
            $crate::__lifecycle!(signal, FlowExport, $ty);
            impl $crate::bindings::signal::exports::eson::flow::signal::Guest for FlowExport {
                fn process(
                    input: u32,
                    events: $crate::bindings::types::Batch,
                ) -> ::core::result::Result<
                    $crate::bindings::types::RoutedOutput,
                    $crate::bindings::types::Error,
                > {
                    $crate::glue::signal::<$ty>(input, events)
                }
                fn tick(
                    now_ms: u64,
                ) -> ::core::result::Result<
                    $crate::bindings::types::RoutedOutput,
                    $crate::bindings::types::Error,
                > {
                    $crate::glue::tick::<$ty>(now_ms)
                }
            }
            $crate::bindings::signal::export_signal_world!(
                FlowExport with_types_in $crate::bindings::signal
            );
        };
    };
}
