//! NAME (signal): counts the events it reads in keyed state and, on every
//! tick, emits the count since the last tick (`{"count": n, "at_ms": t}`) on
//! its first output, then starts again.

use flow_sdk::host::state;
use flow_sdk::{Batch, Error, NewEvent, Processor, RoutedOutput, Setup, Signal};

pub struct Processor_;

impl Processor for Processor_ {
    fn init(setup: &Setup) -> Result<Self, Error> {
        setup.config.reject_unknown(&[], &[])?;
        Ok(Processor_)
    }
}

impl Signal for Processor_ {
    fn process(&mut self, _input: u32, batch: &Batch, _out: &mut RoutedOutput) -> Result<(), Error> {
        let count = state::get_json::<u64>("count").unwrap_or(0) + batch.len() as u64;
        state::set_json("count", &count);
        Ok(())
    }

    fn tick(&mut self, now_ms: u64, out: &mut RoutedOutput) -> Result<(), Error> {
        let count = state::get_json::<u64>("count").unwrap_or(0);
        if count == 0 {
            return Ok(());
        }
        let event = NewEvent::new(format!("count-{now_ms}"), "urn:NAME", "NAME.count")
            .with_json(&flow_sdk::serde_json::json!({"count": count, "at_ms": now_ms}))?;
        out.emit_to(0, &event);
        state::set_json("count", &0u64);
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::signal!(Processor_);
