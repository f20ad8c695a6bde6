//! Integration tests against the real stack (see tests/README.md).

mod support;

mod admin_api;
mod auth;
mod collections;
mod http_basics;
mod migrations;
mod pg_door;
mod provisioning;
mod sql;
