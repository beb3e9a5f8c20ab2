//! `router` (distributor): sends each event to the output named by the value
//! of an attribute or JSON field.
//!
//! Configuration:
//! - `by=<selector>` (required): `type`, `subject`, an extension, or
//!   `data.<json path>`.
//! - `route.<value>=<output>`, repeatable: events whose value is `<value>` go
//!   to `<output>`. Without a `route` entry, a value equal to an output name
//!   (or to the first label of an output flow's name, when unique) goes to
//!   that output.
//! - `default=<output>`: where the other events go. Without it they are
//!   dropped, or, with `unmatched=error`, reported as event errors (so the
//!   host dead-letters them).

use flow_sdk::serde_json::Value;
use flow_sdk::{Batch, Distributor, Error, Processor, RoutedOutput, Selector, Setup};
use std::collections::HashMap;

pub struct Router {
    by: Selector,
    routes: HashMap<String, u32>,
    outputs: HashMap<String, u32>,
    default: Option<u32>,
    error_unmatched: bool,
}

impl Processor for Router {
    fn init(setup: &Setup) -> Result<Self, Error> {
        let config = &setup.config;
        config.reject_unknown(&["by", "default", "unmatched"], &["route."])?;
        let by = Selector::parse("by", config.require("by")?)?;
        let mut routes = HashMap::new();
        for (key, output) in config.iter() {
            if let Some(value) = key.strip_prefix("route.") {
                routes.insert(value.to_owned(), setup.require_output(key, output)?);
            }
        }
        let default = config
            .get("default")
            .map(|name| setup.require_output("default", name))
            .transpose()?;
        let error_unmatched = match config.get("unmatched").unwrap_or("drop") {
            "drop" => false,
            "error" => true,
            other => {
                return Err(Error::config(format!(
                    "`unmatched={other}`: expected `drop` or `error`"
                )));
            }
        };
        let outputs = setup
            .outputs
            .iter()
            .filter_map(|name| {
                let short = name.split('.').next().unwrap_or(name);
                Some((short.to_owned(), setup.output(short)?))
            })
            .chain(
                setup
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (name.clone(), i as u32)),
            )
            .collect();
        Ok(Router {
            by,
            routes,
            outputs,
            default,
            error_unmatched,
        })
    }
}

impl Router {
    fn port_for(&self, value: Option<Value>) -> Option<u32> {
        let key = match value? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        self.routes
            .get(&key)
            .or_else(|| self.outputs.get(&key))
            .copied()
    }
}

impl Distributor for Router {
    fn process(&mut self, batch: &Batch, out: &mut RoutedOutput) -> Result<(), Error> {
        for event in batch.iter() {
            match self.port_for(self.by.get(&event)).or(self.default) {
                Some(port) => out.forward_to(port, &event),
                None if self.error_unmatched => {
                    return Err(Error::event(
                        event.index(),
                        "no route for this event and no `default` output",
                    ));
                }
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::distributor!(Router);
