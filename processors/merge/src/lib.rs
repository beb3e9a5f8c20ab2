//! `merge` (collector): merges N input flows into one, tagging every event
//! with the name of the input it came from.
//!
//! Configuration:
//! - `tag=<extension name>` (default `input`): the extension attribute that
//!   receives the input's name.

use flow_sdk::{Batch, Collector, Error, ExtensionValue, Output, Processor, Setup};

pub struct Merge {
    tag: String,
    inputs: Vec<String>,
}

impl Processor for Merge {
    fn init(setup: &Setup) -> Result<Self, Error> {
        setup.config.reject_unknown(&["tag"], &[])?;
        let tag = setup.config.get("tag").unwrap_or("input").to_owned();
        let valid = !tag.is_empty()
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid {
            return Err(Error::config(format!(
                "`tag={tag}`: an extension name is lower-case letters and digits"
            )));
        }
        Ok(Merge {
            tag,
            inputs: setup.inputs.clone(),
        })
    }
}

impl Collector for Merge {
    fn process(&mut self, input: u32, batch: &Batch, out: &mut Output) -> Result<(), Error> {
        let name = self
            .inputs
            .get(input as usize)
            .cloned()
            .unwrap_or_else(|| input.to_string());
        for event in batch.iter() {
            let mut new = event.to_new();
            new.set_extension(&self.tag, ExtensionValue::String(name.clone()));
            out.emit(&new);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::collector!(Merge);
