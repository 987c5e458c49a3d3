//! The guide's endpoints: `POST /v1/generate` and `POST /v1/generate/stream`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kiln_api::generate::{GenerateChunk, GenerateRequest, GenerateResponse, GenerateStreamEnd};
use kiln_chat::ChatMessage;

use super::{Knobs, json_event, sse};
use crate::extract::{ApiJson, RequestContext};
use crate::generation::{Generation, GenerationSpec, Piece};
use crate::openapi::GenerationErrors;
use crate::{ApiError, AppState, Prompt};

/// Generate an answer to a prompt; with `stream: true`, as Server-Sent Events.
#[utoipa::path(post, path = "/v1/generate", tag = "generate", request_body = GenerateRequest,
    responses(
        (status = 200, description = "The answer (or, with `stream: true`, events as from `/v1/generate/stream`)",
            content((GenerateResponse = "application/json"), (GenerateChunk = "text/event-stream"))),
        GenerationErrors,
    ))]
pub async fn generate(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    synchronous(&req)?;
    let stream = req.stream;
    let generation = start(&state, context, req).await?;
    if stream {
        return Ok(stream_events(&state, generation));
    }
    let cache = generation.cache_status();
    let done = generation.collect().await?;
    Ok(super::mark_cache(Json(answer(&state, done)).into_response(), cache))
}

/// A finished generation in the guide's shape (also an async task's result).
pub(crate) fn answer(state: &AppState, done: crate::generation::Collected) -> GenerateResponse {
    GenerateResponse {
        text: done.text,
        tokens_used: done.usage.total_tokens,
        model: state.model().id.clone(),
        finish_reason: done.reason,
        usage: done.usage,
    }
}

/// Stream the answer as Server-Sent Events: one `{"text"}` event per decoded
/// chunk, then `{"finish_reason", "usage", ...}`, then `[DONE]`.
#[utoipa::path(post, path = "/v1/generate/stream", tag = "generate", request_body = GenerateRequest,
    responses(
        (status = 200, description = "`data: {\"text\": ...}` events, a `GenerateStreamEnd` event, then `data: [DONE]`",
            content((GenerateChunk = "text/event-stream"))),
        GenerationErrors,
    ))]
pub async fn generate_stream(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    synchronous(&req)?;
    let generation = start(&state, context, req).await?;
    Ok(stream_events(&state, generation))
}

/// The guide's `max_tokens` default.
const DEFAULT_MAX_TOKENS: u32 = 512;

/// Refuses what only `POST /v1/generate/async` takes.
fn synchronous(req: &GenerateRequest) -> Result<(), ApiError> {
    match req.webhook_url {
        Some(_) => Err(ApiError::invalid("webhook_url", "only POST /v1/generate/async takes a webhook")),
        None => Ok(()),
    }
}

pub(crate) async fn start(
    state: &AppState,
    context: RequestContext,
    req: GenerateRequest,
) -> Result<Generation, ApiError> {
    state.check_model(req.model.as_deref())?;
    if req.prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "must not be empty"));
    }
    let prompt = if req.raw {
        Prompt::Text(req.prompt)
    } else {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = req.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", req.prompt));
        Prompt::Chat { messages, add_generation_prompt: true }
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
    let pipeline = state.pipeline(context.pipeline(req.pipeline.as_deref()))?;
    GenerationSpec {
        params: knobs.into_params(Vec::new()),
        max_tokens: req.max_tokens,
        default_max_tokens: Some(DEFAULT_MAX_TOKENS),
        stop: req.stop.map(|s| s.into_vec()).unwrap_or_default(),
        ignore_eos: req.ignore_eos,
        pipeline,
        tenant: context.tenant(),
        meter: context.meter,
        no_cache: context.no_cache,
        ..GenerationSpec::default()
    }
    .start_from(state, prompt)
    .await
}

fn stream_events(state: &AppState, generation: Generation) -> Response {
    let model = state.model().id.clone();
    sse(state, generation, move |piece| match piece {
        Piece::Text { text, .. } if text.is_empty() => vec![],
        Piece::Text { text, .. } => vec![json_event(&GenerateChunk { text })],
        Piece::Finished { reason, usage } => vec![json_event(&GenerateStreamEnd {
            finish_reason: reason,
            tokens_used: usage.total_tokens,
            model: model.clone(),
            usage,
        })],
    })
}
