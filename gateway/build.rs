//! Rebuild when embedded files change (migrations and the config schema are
//! compiled into the binary with `include_dir!`/`include_str!`).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=../config/sluice.schema.json");
}
