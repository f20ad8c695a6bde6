//! The doors clients come in through: [`http`] (JSON API) and [`pg`]
//! (Postgres wire protocol). Doors parse and render; the shared work happens in
//! `crate::pipeline`.

pub mod http;
pub mod pg;
pub mod s3;
