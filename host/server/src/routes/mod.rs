//! Handlers, one module per family of endpoints, and what they share:
//! Server-Sent Events plumbing and the JSON fallbacks.

pub mod chat;
pub mod completions;
pub mod generate;
pub mod health;
pub mod metrics;
pub mod models;
mod openai;
pub mod plugins;
pub mod tasks;
pub mod tokenize;

use std::convert::Infallible;

use axum::http::{HeaderValue, Method, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use kiln_engine::SamplingParams;

use crate::generation::{CacheStatus, Generation, Piece};
use crate::{ApiError, AppState};

/// Streams a generation as Server-Sent Events: `format` turns each piece
/// into events; an error midway becomes a last `{"error": ...}` event; the
/// stream ends with `data: [DONE]`. Dropping the response body (the client
/// went away) drops the generation, which cancels it in the engine.
pub(crate) fn sse<F>(state: &AppState, generation: Generation, format: F) -> Response
where
    F: FnMut(Piece) -> Vec<Event> + Send + 'static,
{
    let cache = generation.cache_status();
    let events = stream::unfold((Some(generation), format), |(generation, mut format)| async move {
        let mut generation = generation?;
        match generation.next().await? {
            Ok(piece) => Some((format(piece), (Some(generation), format))),
            Err(e) => {
                tracing::error!(error = %e, "stream failed midway");
                Some((vec![json_event(&e.body())], (None, format)))
            }
        }
    })
    .flat_map(stream::iter)
    .chain(stream::once(async { Event::default().data("[DONE]") }))
    .map(Ok::<_, Infallible>);
    let mut response =
        Sse::new(events).keep_alive(KeepAlive::new().interval(state.config().sse_keep_alive)).into_response();
    // Reverse proxies (nginx) buffer responses unless told not to.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    mark_cache(response, cache)
}

/// The `x-kiln-cache` header: whether the answer came from the response cache.
pub(crate) fn mark_cache(mut response: Response, status: CacheStatus) -> Response {
    if let Some(value) = status.header() {
        response.headers_mut().insert("x-kiln-cache", HeaderValue::from_static(value));
    }
    response
}

pub(crate) fn json_event<T: serde::Serialize>(value: &T) -> Event {
    // Serializing our own types cannot fail; an empty event would be harmless.
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

/// Sampling fields shared by kiln's and OpenAI's requests; absent means neutral.
pub(crate) struct Knobs {
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Knobs {
    pub fn into_params(self, logit_bias: Vec<(u32, f32)>) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k.unwrap_or(0) as usize,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            seed: self.seed,
            logit_bias,
        }
    }
}

/// A token's text for logprob listings: its bytes, lossily decoded.
pub(crate) fn token_text(state: &AppState, id: u32) -> (String, Vec<u8>) {
    let bytes = state.model().tokenizer.token_bytes(id).to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

pub(crate) fn completion_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound { method: method.to_string(), path: uri.path().to_string() }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
}
