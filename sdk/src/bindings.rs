//! Guest bindings generated from `wit/`, one module per processor world.
//!
//! The types and host imports are generated once (in [`bridge`]) and shared by
//! the other worlds through `with`, so an [`Event`](crate::Event) is the same
//! Rust type whatever the kind.

#![allow(missing_docs, clippy::all)]

pub mod bridge {
    wit_bindgen::generate!({
        path: "../wit",
        world: "eson:flow/bridge-processor",
        pub_export_macro: true,
        export_macro_name: "export_bridge_world",
        default_bindings_module: "flow_sdk::bindings::bridge",
    });
}

pub mod collector {
    wit_bindgen::generate!({
        path: "../wit",
        world: "eson:flow/collector-processor",
        with: {
            "eson:flow/types@0.1.0": crate::bindings::bridge::eson::flow::types,
            "eson:flow/log@0.1.0": crate::bindings::bridge::eson::flow::log,
            "eson:flow/state@0.1.0": crate::bindings::bridge::eson::flow::state,
            "eson:flow/clock@0.1.0": crate::bindings::bridge::eson::flow::clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_collector_world",
        default_bindings_module: "flow_sdk::bindings::collector",
    });
}

pub mod distributor {
    wit_bindgen::generate!({
        path: "../wit",
        world: "eson:flow/distributor-processor",
        with: {
            "eson:flow/types@0.1.0": crate::bindings::bridge::eson::flow::types,
            "eson:flow/log@0.1.0": crate::bindings::bridge::eson::flow::log,
            "eson:flow/state@0.1.0": crate::bindings::bridge::eson::flow::state,
            "eson:flow/clock@0.1.0": crate::bindings::bridge::eson::flow::clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_distributor_world",
        default_bindings_module: "flow_sdk::bindings::distributor",
    });
}

pub mod signal {
    wit_bindgen::generate!({
        path: "../wit",
        world: "eson:flow/signal-processor",
        with: {
            "eson:flow/types@0.1.0": crate::bindings::bridge::eson::flow::types,
            "eson:flow/log@0.1.0": crate::bindings::bridge::eson::flow::log,
            "eson:flow/state@0.1.0": crate::bindings::bridge::eson::flow::state,
            "eson:flow/clock@0.1.0": crate::bindings::bridge::eson::flow::clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_signal_world",
        default_bindings_module: "flow_sdk::bindings::signal",
    });
}

/// The WIT types every kind shares.
pub use bridge::eson::flow::types;
