//! Handlers, one module per family of endpoints; `sse` streams a
//! generation as Server-Sent Events, `fallback` answers unknown routes.

pub mod chat;
pub mod completions;
pub mod fallback;
pub mod generate;
pub mod health;
pub mod metrics;
pub mod models;
pub mod plugins;
mod sse;
pub mod tasks;
pub mod tokenize;
