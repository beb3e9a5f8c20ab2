//! Exports `eson:flow/bridge` but not `eson:flow/lifecycle`: the host must
//! refuse it and name the missing export.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        inline: "
            package test:halfway;
            world halfway {
                export eson:flow/bridge@0.1.0;
            }
        ",
        path: "../../../wit",
        world: "test:halfway/halfway",
        generate_all,
    });

    use eson::flow::types::{Batch, Error, Output};
    use exports::eson::flow::bridge::Guest;

    struct Halfway;

    impl Guest for Halfway {
        fn process(events: Batch) -> Result<Output, Error> {
            Ok(Output {
                created: Batch {
                    bytes: Vec::new(),
                    events: Vec::new(),
                    extensions: Vec::new(),
                },
                // Forward every input event (18 index words per event).
                emits: (0..(events.events.len() / 18) as u32).collect(),
            })
        }
    }

    export!(Halfway);
}
