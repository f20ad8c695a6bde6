//! Integration tests against the real stack (see tests/README.md).

mod support;

mod bombs;

mod admin_api;
mod auth;
mod backup_api;
mod backups;
mod cli;
mod collections;
mod examples;
mod garage_cluster;
mod guardrails;
mod http_basics;
mod kv;
mod migrations;
mod objects;
mod openapi;
mod pg_compat;
mod pg_door;
mod pg_drivers;
mod pg_wire;
mod plugin_guardrails;
mod plugins;
mod provisioning;
mod ratelimit;
mod redis_cluster;
mod replicas;
mod s3_door;
mod s3_multipart;
mod s3_tools;
mod semcache;
mod sql;
mod sql_model;
