//! `POST /v1/chat/completions`, in OpenAI's shapes.

use axum::Json;
use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use kiln_api::openai::{ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatDelta};

use super::sse::{json_event, mark_cache, sse};
use crate::extract::{ApiJson, RequestContext};
use crate::generation::Generation;
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
    let generation = Generation::start(&state, valid.generation, context).await?;
    if !valid.stream {
        let cache = generation.cache_status();
        let done = generation.collect().await?;
        return Ok(mark_cache(Json(chat_completion(&state, done, logprobs)).into_response(), cache));
    }
    let include_usage = valid.include_usage;
    let (id, created, model) = (completion_id("chatcmpl"), unix_now(), state.model().id.clone());
    let chunk = move |choices, usage| ChatCompletionChunk {
        id: id.clone(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.clone(),
        choices,
        usage,
    };
    let first = chunk(
        vec![ChatChunkChoice {
            index: 0,
            delta: ChatDelta { role: Some("assistant".into()), content: Some(String::new()) },
            logprobs: None,
            finish_reason: None,
        }],
        None,
    );
    let mut opened = false;
    let state2 = state.clone();
    Ok(sse(&state, generation, move |piece| {
        let mut events: Vec<Event> = Vec::with_capacity(2);
        if !std::mem::replace(&mut opened, true) {
            events.push(json_event(&first));
        }
        match piece {
            Piece::Text { text, tokens } => events.push(json_event(&chunk(
                vec![ChatChunkChoice {
                    index: 0,
                    delta: ChatDelta { role: None, content: Some(text) },
                    logprobs: logprobs.then(|| chat_logprobs(&state2, &tokens)),
                    finish_reason: None,
                }],
                None,
            ))),
            Piece::Finished { reason, usage } => {
                events.push(json_event(&chunk(
                    vec![ChatChunkChoice {
                        index: 0,
                        delta: ChatDelta::default(),
                        logprobs: None,
                        finish_reason: Some(reason),
                    }],
                    None,
                )));
                if include_usage {
                    events.push(json_event(&chunk(Vec::new(), Some(usage))));
                }
            }
        }
        events
    }))
}
