//! `passthrough` (bridge): emits every input event unchanged. The reference
//! for the cost of crossing the component boundary.

use flow_sdk::{Batch, Bridge, Error, Output, Processor, Setup};

pub struct Passthrough;

impl Processor for Passthrough {
    fn init(setup: &Setup) -> Result<Self, Error> {
        setup.config.reject_unknown(&[], &[])?;
        Ok(Passthrough)
    }
}

impl Bridge for Passthrough {
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<(), Error> {
        for event in batch.iter() {
            out.forward(&event);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::bridge!(Passthrough);
