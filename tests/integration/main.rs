//! Integration tests against the real stack (see tests/README.md).

mod support;

mod admin_api;
mod auth;
mod collections;
mod examples;
mod http_basics;
mod migrations;
mod openapi;
mod plugins;
mod provisioning;
mod sql;
