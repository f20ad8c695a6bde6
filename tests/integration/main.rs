//! Integration tests against the real stack (see tests/README.md).

mod support;

mod admin_api;
mod auth;
mod collections;
mod http_basics;
mod migrations;
mod provisioning;
mod ratelimit;
mod semcache;
mod sql;
