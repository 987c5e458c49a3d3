//! The guide's endpoints: `POST /v1/generate` and `POST /v1/generate/stream`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kiln_api::ErrorBody;
use kiln_api::generate::{GenerateChunk, GenerateRequest, GenerateResponse, GenerateStreamEnd};
use kiln_chat::ChatMessage;

use super::{Knobs, json_event, sse};
use crate::extract::ApiJson;
use crate::generation::{Generation, GenerationSpec, Piece};
use crate::{ApiError, AppState};

/// Generate an answer to a prompt; with `stream: true`, as Server-Sent Events.
#[utoipa::path(post, path = "/v1/generate", tag = "generate", request_body = GenerateRequest,
    responses(
        (status = 200, description = "The answer (or, with `stream: true`, events as from `/v1/generate/stream`)",
            content((GenerateResponse = "application/json"), (GenerateChunk = "text/event-stream"))),
        (status = 400, description = "Malformed JSON or a value out of range", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 422, description = "A missing field or one of the wrong type", body = ErrorBody),
        (status = 503, description = "At capacity; retry after `Retry-After` seconds", body = ErrorBody),
    ))]
pub async fn generate(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let stream = req.stream;
    let generation = start(&state, req)?;
    if stream {
        return Ok(stream_events(&state, generation));
    }
    let done = generation.collect().await?;
    Ok(Json(GenerateResponse {
        text: done.text,
        tokens_used: done.usage.total_tokens,
        model: state.model().id.clone(),
        finish_reason: done.reason,
        usage: done.usage,
    })
    .into_response())
}

/// Stream the answer as Server-Sent Events: one `{"text"}` event per decoded
/// chunk, then `{"finish_reason", "usage", ...}`, then `[DONE]`.
#[utoipa::path(post, path = "/v1/generate/stream", tag = "generate", request_body = GenerateRequest,
    responses(
        (status = 200, description = "`data: {\"text\": ...}` events, a `GenerateStreamEnd` event, then `data: [DONE]`",
            content((GenerateChunk = "text/event-stream"))),
        (status = 400, description = "Malformed JSON or a value out of range", body = ErrorBody),
        (status = 422, description = "A missing field or one of the wrong type", body = ErrorBody),
        (status = 503, description = "At capacity", body = ErrorBody),
    ))]
pub async fn generate_stream(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let generation = start(&state, req)?;
    Ok(stream_events(&state, generation))
}

fn start(state: &AppState, req: GenerateRequest) -> Result<Generation, ApiError> {
    state.check_model(req.model.as_deref())?;
    if req.prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "must not be empty"));
    }
    let text = if req.raw {
        req.prompt
    } else {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = req.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", req.prompt));
        state.render_chat(&messages, true)?
    };
    let knobs = Knobs {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
        seed: req.seed,
    };
    GenerationSpec {
        prompt_tokens: state.encode(&text)?,
        params: knobs.into_params(Vec::new()),
        max_tokens: Some(req.max_tokens),
        stop: req.stop.map(|s| s.into_vec()).unwrap_or_default(),
        ignore_eos: req.ignore_eos,
        ..GenerationSpec::default()
    }
    .start(state)
}

fn stream_events(state: &AppState, generation: Generation) -> Response {
    let model = state.model().id.clone();
    sse(state, generation, move |piece| match piece {
        Piece::Text { text, .. } => vec![json_event(&GenerateChunk { text })],
        Piece::Finished { reason, usage } => vec![json_event(&GenerateStreamEnd {
            finish_reason: reason,
            tokens_used: usage.total_tokens,
            model: model.clone(),
            usage,
        })],
    })
}
