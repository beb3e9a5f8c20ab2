use crate::{Batch, Error, Output, RoutedOutput, Setup};

/// What every processor has: construction from its setup, in-place update
/// and teardown (figure 6 of the draft; pause and resume are the host's).
pub trait Processor: Sized + 'static {
    /// Builds the processor; a bad configuration is an [`Error::Config`].
    fn init(setup: &Setup) -> Result<Self, Error>;

    /// Applies a new configuration in place. The default rebuilds the
    /// processor with [`Processor::init`]; on error the old one stays.
    fn update(&mut self, setup: &Setup) -> Result<(), Error> {
        *self = Self::init(setup)?;
        Ok(())
    }

    /// Called before the host drops the instance for good.
    fn teardown(&mut self) {}
}

/// 1 input flow to 1 output flow.
pub trait Bridge: Processor {
    /// Handles one batch of the input, writing what it emits to `out` in order.
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<(), Error>;
}

/// N input flows to 1 output flow; `input` is the input port of the batch.
pub trait Collector: Processor {
    /// Handles one batch of input port `input`, writing what it emits to `out` in order.
    fn process(&mut self, input: u32, batch: &Batch, out: &mut Output) -> Result<(), Error>;
}

/// 1 input flow to N output flows; each emitted event names its port.
pub trait Distributor: Processor {
    /// Handles one batch of the input, writing each emitted event to an output port of `out`.
    fn process(&mut self, batch: &Batch, out: &mut RoutedOutput) -> Result<(), Error>;
}

/// N input flows to N output flows, plus events on a timer tick.
pub trait Signal: Processor {
    /// Handles one batch of input port `input`, writing each emitted event to an output port of `out`.
    fn process(&mut self, input: u32, batch: &Batch, out: &mut RoutedOutput) -> Result<(), Error>;

    /// Called by the host every tick interval; `now_ms` is the wall clock.
    fn tick(&mut self, now_ms: u64, out: &mut RoutedOutput) -> Result<(), Error>;
}
