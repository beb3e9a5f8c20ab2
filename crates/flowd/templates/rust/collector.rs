//! NAME (collector): merges its inputs into one output, each event tagged
//! with the input it came from in the extension `input`.

use flow_sdk::{Batch, Collector, Error, ExtensionValue, Output, Processor, Setup};

pub struct Processor_ {
    inputs: Vec<String>,
}

impl Processor for Processor_ {
    fn init(setup: &Setup) -> Result<Self, Error> {
        setup.config.reject_unknown(&[], &[])?;
        Ok(Processor_ {
            inputs: setup.inputs.clone(),
        })
    }
}

impl Collector for Processor_ {
    fn process(&mut self, input: u32, batch: &Batch, out: &mut Output) -> Result<(), Error> {
        let name = self.inputs.get(input as usize).cloned().unwrap_or_default();
        for event in batch.iter() {
            let mut new = event.to_new();
            new.set_extension("input", ExtensionValue::String(name.clone()));
            out.emit(&new);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::collector!(Processor_);
