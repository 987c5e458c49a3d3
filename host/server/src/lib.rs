//! kiln-server: kiln's HTTP API on axum.
//!
//! The guide's endpoints (`/v1/generate`, `/v1/generate/stream`, async
//! tasks), the OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`), token counting (`/v1/tokenize`,
//! `/v1/detokenize`), plugin administration, probes, metrics and the
//! OpenAPI document with an offline docs page (`/openapi.json`, `/docs`).
//!
//! A request is checked once, at the boundary (`request.rs`), into a
//! validated generation; it reaches the engine only through
//! [`kiln_engine::Backend`], so this crate knows nothing of models or
//! kernels, and reaches plugins only through `kiln-pipeline`. Errors become
//! HTTP answers in one place ([`ApiError`]). This file only assembles.

#![forbid(unsafe_code)]

mod answer_setup;
mod cache_key;
mod config;
mod contract;
mod error;
mod extract;
mod fingerprint;
mod generation;
mod middleware;
mod openapi;
mod piece;
mod prompt;
mod recorder;
mod request;
mod response_cache;
mod responses;
mod router;
mod routes;
mod serve;
mod state;
mod tasks;
mod time;
mod token_meter;
mod tools;
mod webhooks;

pub use config::{Auth, ConnectionLimits, RedisShared, ServerConfig};
pub use error::ApiError;
pub use extract::Caller;
pub use middleware::admin::AdminAccess;
pub use openapi::ApiDoc;
pub use recorder::install_metrics_recorder;
pub use response_cache::{CacheConfig, CacheStats};
pub use router::router;
pub use serve::serve;
pub use state::{AppState, AppStateBuilder, ServedModel};
pub use tasks::worker::spawn_workers;
pub use tasks::{TaskConfig, Tasks};
pub use token_meter::TokenMeter;
pub use webhooks::WebhookConfig;

#[cfg(test)]
mod tests;
