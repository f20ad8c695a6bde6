//! The one place `bindgen!` runs: host bindings of `wit/` (`sluice:plugin@0.1.0`),
//! one module per world. The `policy` module owns the shared `types` and `log`
//! interfaces; the other worlds reuse them through `with`, so there is one Rust
//! type per WIT type. A later `@0.2.0` gets modules of its own beside these.

pub mod policy {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
    });
}

pub mod retention {
    wasmtime::component::bindgen!({
        world: "retention",
        path: "../wit",
        with: {
            "sluice:plugin/types@0.1.0": super::policy::sluice::plugin::types,
            "sluice:plugin/log@0.1.0": super::policy::sluice::plugin::log,
        },
    });
}

pub mod reranker {
    wasmtime::component::bindgen!({
        world: "reranker",
        path: "../wit",
        with: {
            "sluice:plugin/types@0.1.0": super::policy::sluice::plugin::types,
            "sluice:plugin/log@0.1.0": super::policy::sluice::plugin::log,
        },
    });
}

pub use policy::sluice::plugin::{log, types};
