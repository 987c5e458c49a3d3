//! The guide's endpoints: `POST /v1/generate` and `POST /v1/generate/stream`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kiln_api::generate::{GenerationChunk, GenerationRequest, GenerationResponse, GenerationStreamEnd};

use super::sse::{json_event, mark_cache, mark_fingerprint, sse};
use crate::extract::{ApiJson, RequestContext};
use crate::generation::Generation;
use crate::openapi::GenerationErrors;
use crate::piece::Piece;
use crate::request::{self, Delivery};
use crate::responses::generation_response;
use crate::{ApiError, AppState};

/// Generate an answer to a prompt; with `stream: true`, as Server-Sent Events.
#[utoipa::path(post, path = "/v1/generate", tag = "generate", request_body = GenerationRequest,
    responses(
        (status = 200, description = "The answer (or, with `stream: true`, events as from `/v1/generate/stream`)",
            content((GenerationResponse = "application/json"), (GenerationChunk = "text/event-stream"))),
        GenerationErrors,
    ))]
pub async fn generate(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(req): ApiJson<GenerationRequest>,
) -> Result<Response, ApiError> {
    let valid = request::generate(&state, &context, req, Delivery::Respond)?;
    let generation = Generation::start(&state, valid.generation, context).await?;
    if valid.stream {
        return Ok(stream_events(&state, generation));
    }
    let cache = generation.cache_status();
    let done = generation.collect().await?;
    let fingerprint = done.fingerprint.clone();
    let response = mark_cache(Json(generation_response(&state, done)).into_response(), cache);
    Ok(mark_fingerprint(response, &fingerprint))
}

/// Stream the answer as Server-Sent Events: one `{"text"}` event per decoded
/// chunk, then `{"finish_reason", "usage", ...}`, then `[DONE]`.
#[utoipa::path(post, path = "/v1/generate/stream", tag = "generate", request_body = GenerationRequest,
    responses(
        (status = 200, description = "`data: {\"text\": ...}` events, a `GenerationStreamEnd` event, then `data: [DONE]`",
            content((GenerationChunk = "text/event-stream"))),
        GenerationErrors,
    ))]
pub async fn generate_stream(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(req): ApiJson<GenerationRequest>,
) -> Result<Response, ApiError> {
    let valid = request::generate(&state, &context, req, Delivery::Respond)?;
    let generation = Generation::start(&state, valid.generation, context).await?;
    Ok(stream_events(&state, generation))
}

fn stream_events(state: &AppState, generation: Generation) -> Response {
    let model = state.model().id.clone();
    sse(state, generation, move |piece| match piece {
        Piece::Text { text, .. } if text.is_empty() => vec![],
        Piece::Text { text, .. } => vec![json_event(&GenerationChunk { text })],
        // The guide's requests offer no tools.
        Piece::ToolCall { .. } => vec![],
        Piece::Finished { reason, usage } => vec![json_event(&GenerationStreamEnd {
            finish_reason: reason,
            tokens_used: usage.total_tokens,
            model: model.clone(),
            usage,
        })],
    })
}
