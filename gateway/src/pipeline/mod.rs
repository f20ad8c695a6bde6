//! The request pipeline shared by both doors:
//! authenticate → resolve tenant → rate limit → policy → (cache) → route.
//!
//! Each stage is a plain async function over door-neutral types, so the HTTP
//! and Postgres-wire doors call the same code. Stages so far: [`auth`].

pub mod auth;
