//! Middleware, one file per concern.

pub mod admin;
