//! The doors clients come in through: [`http`] (JSON API) and, later, `pg`
//! (Postgres wire protocol). Doors parse and render; the shared work happens in
//! `crate::pipeline`.

pub mod http;
