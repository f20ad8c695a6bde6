//! Helpers for Sluice plugins written in Rust (`wasm32-wasip2`).
//!
//! A plugin crate generates its bindings with [`world!`] (wit-bindgen over the
//! `wit/` package `sluice:plugin@0.1.0`), implements the generated `Guest`
//! trait and calls `export!`. This crate adds what most plugins need: reading
//! the JSON config ([`config`]), looking at SQL text ([`sql`]) and vector maths
//! ([`vector`]). Plugins run with no filesystem, network, environment, clock or
//! randomness: everything they may use arrives as input.

pub use wit_bindgen;

pub mod sql;
pub mod vector;

/// Generate the bindings of one world of `sluice:plugin@0.1.0` in the calling
/// crate (which must sit two folders below `plugins/`, like every example).
///
/// ```ignore
/// sluice_plugin_sdk::world!("policy");
/// ```
#[macro_export]
macro_rules! world {
    ($world:literal) => {
        $crate::wit_bindgen::generate!({
            world: $world,
            path: "../../../wit",
            runtime_path: "::sluice_plugin_sdk::wit_bindgen::rt",
        });
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
