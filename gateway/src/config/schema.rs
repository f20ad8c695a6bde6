//! The JSON Schema of the config file.
//!
//! Generated from the types in [`super`] with `schemars`, checked in as
//! `config/sluice.schema.json` (a test fails when they drift; regenerate with
//! `sluice config schema > config/sluice.schema.json`). The checked-in copy is what
//! the gateway validates against at startup.

use std::sync::OnceLock;

/// The checked-in schema, compiled once.
pub const SCHEMA_JSON: &str = include_str!("../../../config/sluice.schema.json");

/// Generate the schema from the config types (pretty JSON with trailing newline).
pub fn generate() -> String {
    let schema = schemars::schema_for!(super::Config);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}

/// The compiled validator for [`SCHEMA_JSON`].
pub fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA_JSON).expect("checked-in schema is JSON");
        jsonschema::validator_for(&schema).expect("checked-in schema compiles")
    })
}
