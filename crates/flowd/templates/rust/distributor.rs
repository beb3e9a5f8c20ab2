//! NAME (distributor): events whose type starts with `prefix=` (default
//! `created.`) go to the first output, the others to the second.

use flow_sdk::{Batch, Distributor, Error, Processor, RoutedOutput, Setup};

pub struct Processor_ {
    prefix: String,
}

impl Processor for Processor_ {
    fn init(setup: &Setup) -> Result<Self, Error> {
        setup.config.reject_unknown(&["prefix"], &[])?;
        if setup.outputs.len() != 2 {
            return Err(Error::config("two outputs: matching, then the others"));
        }
        Ok(Processor_ {
            prefix: setup.config.get("prefix").unwrap_or("created.").to_owned(),
        })
    }
}

impl Distributor for Processor_ {
    fn process(&mut self, batch: &Batch, out: &mut RoutedOutput) -> Result<(), Error> {
        for event in batch.iter() {
            let port = if event.ty().starts_with(&self.prefix) { 0 } else { 1 };
            out.forward_to(port, &event);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::distributor!(Processor_);
