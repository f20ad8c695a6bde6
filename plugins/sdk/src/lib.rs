//! Helpers for Sluice plugins written in Rust (`wasm32-wasip2`).
//!
//! A plugin crate generates its bindings with [`world!`] (wit-bindgen over the
//! `wit/` package `sluice:plugin@0.3.0`), implements the generated `Guest`
//! trait and calls `export!`. For the `policy` world, `world!` also adds
//! helpers to the generated `Statement` record (the gateway's statement model,
//! from Postgres's own parser): `changes_schema()`, `effective_kind()`,
//! `tables()`, `label()`. This crate adds what most plugins need besides:
//! reading the JSON config ([`config`]) and vector maths ([`vector`]).
//! Plugins run with no filesystem, network, environment, clock or randomness:
//! everything they may use arrives as input.
//!
//! [`world_v0_2!`] and [`world_v0_1!`] build against the frozen
//! `sluice:plugin@0.2.0` (no `origin`) and `@0.1.0` (SQL as text only), which
//! the gateway still accepts.

pub use wit_bindgen;

pub mod vector;

/// Generate the bindings of one world of `sluice:plugin@0.3.0` in the calling
/// crate (which must sit two folders below `plugins/`, like every example).
///
/// ```ignore
/// sluice_plugin_sdk::world!("policy");
/// ```
#[macro_export]
macro_rules! world {
    ("policy") => {
        $crate::wit_bindgen::generate!({
            world: "policy",
            path: "../../../wit",
            runtime_path: "::sluice_plugin_sdk::wit_bindgen::rt",
        });
        $crate::statement_helpers!();
    };
    ($world:literal) => {
        $crate::wit_bindgen::generate!({
            world: $world,
            path: "../../../wit",
            runtime_path: "::sluice_plugin_sdk::wit_bindgen::rt",
        });
    };
}

/// [`world!`] for the earlier package `sluice:plugin@0.2.0` (`wit/legacy/0.2.0`).
#[macro_export]
macro_rules! world_v0_2 {
    ("policy") => {
        $crate::wit_bindgen::generate!({
            world: "policy",
            path: "../../../wit/legacy/0.2.0",
            runtime_path: "::sluice_plugin_sdk::wit_bindgen::rt",
        });
        $crate::statement_helpers!();
    };
    ($world:literal) => {
        $crate::wit_bindgen::generate!({
            world: $world,
            path: "../../../wit/legacy/0.2.0",
            runtime_path: "::sluice_plugin_sdk::wit_bindgen::rt",
        });
    };
}

/// [`world!`] for the earlier package `sluice:plugin@0.1.0` (`wit/legacy/0.1.0`).
#[macro_export]
macro_rules! world_v0_1 {
    ($world:literal) => {
        $crate::wit_bindgen::generate!({
            world: $world,
            path: "../../../wit/legacy/0.1.0",
            runtime_path: "::sluice_plugin_sdk::wit_bindgen::rt",
        });
    };
}

/// Methods on the generated `sluice::plugin::sql::Statement` (called by
/// `world!("policy")`).
#[doc(hidden)]
#[macro_export]
macro_rules! statement_helpers {
    () => {
        impl sluice::plugin::sql::Statement {
            /// What actually executes: the inner statement of `EXPLAIN ANALYZE`.
            pub fn effective_kind(&self) -> sluice::plugin::sql::StatementKind {
                match &self.explain {
                    Some(e) if e.analyze => e.inner,
                    _ => self.kind,
                }
            }

            /// Changes the schema: DDL, `SELECT … INTO` (which creates a
            /// table) and `EXPLAIN ANALYZE` of DDL.
            pub fn changes_schema(&self) -> bool {
                self.ddl.is_some() || self.effective_kind() == sluice::plugin::sql::StatementKind::Ddl
            }

            /// The relations it names, `schema.name` when qualified.
            pub fn tables(&self) -> impl Iterator<Item = String> + '_ {
                self.relations.iter().map(|r| match &r.schema {
                    Some(s) => format!("{s}.{}", r.name),
                    None => r.name.clone(),
                })
            }

            /// A short label for messages: `CREATE TABLE`, `SELECT`, `DO`…
            pub fn label(&self) -> String {
                match &self.ddl {
                    Some(d) => format!("{} {}", d.action, d.object).trim().to_ascii_uppercase(),
                    None => format!("{:?}", self.effective_kind()).to_ascii_uppercase(),
                }
            }
        }
    };
}

/// Parse the plugin's JSON config; empty text means the default.
pub fn config<T: serde::de::DeserializeOwned + Default>(text: &str) -> Result<T, String> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(text).map_err(|e| format!("invalid plugin config: {e}"))
}

/// Milliseconds in a day, for age rules.
pub const DAY_MS: i64 = 86_400_000;
