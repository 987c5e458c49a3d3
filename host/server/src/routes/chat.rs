//! `POST /v1/chat/completions`, in OpenAI's shapes.

use axum::Json;
use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use kiln_api::openai::{ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatDelta};
use kiln_api::tools::{FunctionCallDelta, ToolCallDelta};

use super::sse::{json_event, mark_cache, sse_choices};
use crate::extract::{ApiJson, RequestContext};
use crate::generation::{CacheStatus, Generation, collect_choices, total_usage};
use crate::openapi::GenerationErrors;
use crate::piece::Piece;
use crate::request::{self, Delivery};
use crate::responses::{chat_completion, chat_logprobs, completion_id};
use crate::time::unix_now;
use crate::{ApiError, AppState};

/// Answer a conversation, rendered with the model's chat template.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A `chat.completion`, or with `stream: true` `chat.completion.chunk` events ending with `data: [DONE]`",
            content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
        GenerationErrors,
    ))]
pub async fn chat_completions(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let valid = request::chat(&state, &context, req, Delivery::Respond)?;
    let logprobs = valid.generation.logprobs.is_some();
    let generations = Generation::start_choices(&state, valid.generation, context).await?;
    let cache = generations.first().map_or(CacheStatus::Off, Generation::cache_status);
    let fingerprint = generations.first().map(|g| g.fingerprint().to_string());
    if !valid.stream {
        let done = collect_choices(generations).await?;
        return Ok(mark_cache(Json(chat_completion(&state, done, logprobs)).into_response(), cache));
    }
    let (include_usage, offers_tools) = (valid.include_usage, valid.offers_tools);
    let (id, created, model) = (completion_id("chatcmpl"), unix_now(), state.model().id.clone());
    let chunk = move |choices, usage| ChatCompletionChunk {
        id: id.clone(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.clone(),
        choices,
        usage,
        system_fingerprint: fingerprint.clone(),
    };
    // Each answer opens with the assistant's role; usage, when asked for,
    // follows the last answer's finish and counts the prompt once.
    let mut opened = vec![false; generations.len()];
    let mut calls = vec![0u32; generations.len()];
    let mut usages = Vec::with_capacity(generations.len());
    let state2 = state.clone();
    Ok(sse_choices(&state, generations, move |i, piece| {
        let index = i as u32;
        let mut events: Vec<Event> = Vec::with_capacity(3);
        if !std::mem::replace(&mut opened[i], true) {
            // As OpenAI's: an answer that may be only calls opens without content.
            let content = (!offers_tools).then(String::new);
            let delta = ChatDelta { role: Some("assistant".into()), content, tool_calls: None };
            events.push(json_event(&chunk(
                vec![ChatChunkChoice { index, delta, logprobs: None, finish_reason: None }],
                None,
            )));
        }
        match piece {
            Piece::Text { text, tokens } => events.push(json_event(&chunk(
                vec![ChatChunkChoice {
                    index,
                    delta: ChatDelta { role: None, content: Some(text), tool_calls: None },
                    logprobs: logprobs.then(|| chat_logprobs(&state2, &tokens)),
                    finish_reason: None,
                }],
                None,
            ))),
            // Each call goes out whole, in one delta, as clients assemble them.
            Piece::ToolCall { id, name, arguments } => {
                calls[i] += 1;
                let delta = ToolCallDelta {
                    index: calls[i] - 1,
                    id: Some(id),
                    kind: Some("function".into()),
                    function: FunctionCallDelta { name: Some(name), arguments: Some(arguments) },
                };
                events.push(json_event(&chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta: ChatDelta { role: None, content: None, tool_calls: Some(vec![delta]) },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )));
            }
            Piece::Finished { reason, usage } => {
                events.push(json_event(&chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta: ChatDelta::default(),
                        logprobs: None,
                        finish_reason: Some(reason),
                    }],
                    None,
                )));
                usages.push(usage);
                if include_usage && usages.len() == opened.len() {
                    events.push(json_event(&chunk(Vec::new(), Some(total_usage(usages.iter().copied())))));
                }
            }
        }
        events
    }))
}
