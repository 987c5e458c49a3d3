//! kiln-api: the wire types of kiln's HTTP API, and nothing else.
//!
//! Two families share this crate: the endpoints of the guide kiln grew from
//! ([`generate`]) and the OpenAI-compatible API ([`openai`]), plus token
//! counting ([`tokenize`]). Every type derives its OpenAPI schema, so the
//! document served at `/openapi.json` is generated from the same definitions
//! the server (de)serializes. Validation against a model lives in the server.

#![forbid(unsafe_code)]

pub mod error;
pub mod fingerprint;
pub mod finish;
pub mod generate;
pub mod health;
mod integer;
pub mod openai;
pub mod plugins;
pub mod sampling;
pub mod tasks;
pub mod tokenize;
pub mod tools;

pub use error::{ErrorBody, ErrorDetail};
pub use finish::{FinishReason, Usage};
pub use sampling::{SamplingKnobs, StopSequences};
