//! The one place `bindgen!` runs: host bindings of `wit/` (`sluice:plugin@0.3.0`),
//! one module per world, and of the frozen `wit/legacy/0.2.0` and `0.1.0` in
//! [`v0_2`] and [`v0_1`]. The `policy` module owns the shared `types`, `sql`
//! and `log` interfaces; the other worlds reuse them through `with`, so there
//! is one Rust type per WIT type. The earlier worlds map their `types` (and
//! `sql`) onto the same Rust types (their records are the same ones, minus
//! those added since, and component types are structural), and get a `log`
//! import of their own (`sluice:plugin/log@0.2.0`, `@0.1.0`).

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
            "sluice:plugin/types@0.3.0": super::policy::sluice::plugin::types,
            "sluice:plugin/log@0.3.0": super::policy::sluice::plugin::log,
        },
    });
}

pub mod reranker {
    wasmtime::component::bindgen!({
        world: "reranker",
        path: "../wit",
        with: {
            "sluice:plugin/types@0.3.0": super::policy::sluice::plugin::types,
            "sluice:plugin/log@0.3.0": super::policy::sluice::plugin::log,
        },
    });
}

/// `sluice:plugin@0.2.0`: components built before the S3 door (their policy
/// gets no `origin`).
pub mod v0_2 {
    pub mod policy {
        wasmtime::component::bindgen!({
            world: "policy",
            path: "../wit/legacy/0.2.0",
            with: {
                "sluice:plugin/types@0.2.0": crate::plugins::bindings::policy::sluice::plugin::types,
                "sluice:plugin/sql@0.2.0": crate::plugins::bindings::policy::sluice::plugin::sql,
            },
        });
    }

    pub mod retention {
        wasmtime::component::bindgen!({
            world: "retention",
            path: "../wit/legacy/0.2.0",
            with: {
                "sluice:plugin/types@0.2.0": crate::plugins::bindings::policy::sluice::plugin::types,
                "sluice:plugin/log@0.2.0": super::policy::sluice::plugin::log,
            },
        });
    }

    pub mod reranker {
        wasmtime::component::bindgen!({
            world: "reranker",
            path: "../wit/legacy/0.2.0",
            with: {
                "sluice:plugin/types@0.2.0": crate::plugins::bindings::policy::sluice::plugin::types,
                "sluice:plugin/log@0.2.0": super::policy::sluice::plugin::log,
            },
        });
    }

    pub use policy::sluice::plugin::log;
}

/// `sluice:plugin@0.1.0`: components built before the statement model.
pub mod v0_1 {
    pub mod policy {
        wasmtime::component::bindgen!({
            world: "policy",
            path: "../wit/legacy/0.1.0",
            with: {
                "sluice:plugin/types@0.1.0": crate::plugins::bindings::policy::sluice::plugin::types,
            },
        });
    }

    pub mod retention {
        wasmtime::component::bindgen!({
            world: "retention",
            path: "../wit/legacy/0.1.0",
            with: {
                "sluice:plugin/types@0.1.0": crate::plugins::bindings::policy::sluice::plugin::types,
                "sluice:plugin/log@0.1.0": super::policy::sluice::plugin::log,
            },
        });
    }

    pub mod reranker {
        wasmtime::component::bindgen!({
            world: "reranker",
            path: "../wit/legacy/0.1.0",
            with: {
                "sluice:plugin/types@0.1.0": crate::plugins::bindings::policy::sluice::plugin::types,
                "sluice:plugin/log@0.1.0": super::policy::sluice::plugin::log,
            },
        });
    }

    pub use policy::sluice::plugin::log;
}

pub use policy::sluice::plugin::{log, sql, types};
