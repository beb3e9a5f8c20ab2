//! NAME (bridge): counts the events of each type in keyed state and
//! stamps every event with its type's count so far, in the extension
//! `seen` (configurable with `extension=<name>`).

use flow_sdk::host::state;
use flow_sdk::{Batch, Bridge, Error, ExtensionValue, Output, Processor, Setup};

pub struct Processor_ {
    extension: String,
}

impl Processor for Processor_ {
    fn init(setup: &Setup) -> Result<Self, Error> {
        setup.config.reject_unknown(&["extension"], &[])?;
        Ok(Processor_ {
            extension: setup.config.get("extension").unwrap_or("seen").to_owned(),
        })
    }
}

impl Bridge for Processor_ {
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<(), Error> {
        for event in batch.iter() {
            let key = format!("count/{}", event.ty());
            let count = state::get_json::<i64>(&key).unwrap_or(0) + 1;
            state::set_json(&key, &count);
            let mut new = event.to_new();
            new.set_extension(&self.extension, ExtensionValue::Integer(count));
            out.emit(&new);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::bridge!(Processor_);
