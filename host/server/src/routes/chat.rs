//! `POST /v1/chat/completions`, in OpenAI's shapes.

use axum::Json;
use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use kiln_api::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChatDelta, ChatLogprobs, ChatMessage, MessageContent, TokenLogprob, TopLogprob,
};
use kiln_engine::MAX_TOP_LOGPROBS;

use super::openai::sampling;
use super::{completion_id, json_event, sse, token_text};
use crate::extract::{ApiJson, RequestContext};
use crate::generation::{GenerationSpec, Piece, TokenLogprobs};
use crate::openapi::GenerationErrors;
use crate::{ApiError, AppState, Prompt, unix_now};

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

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
    if req.webhook_url.is_some() {
        return Err(ApiError::invalid("webhook_url", "only POST /v1/chat/completions/async takes a webhook"));
    }
    let (stream, include_usage) = (req.stream, req.stream_options.as_ref().is_some_and(|o| o.include_usage));
    let (generation, logprobs) = start(&state, context, req).await?;
    if !stream {
        let cache = generation.cache_status();
        let done = generation.collect().await?;
        return Ok(super::mark_cache(Json(completion(&state, done, logprobs)).into_response(), cache));
    }
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

/// What a chat request asks of the server, checked without the model:
/// whether it wants JSON and log-probabilities.
pub(crate) fn check(state: &AppState, req: &ChatCompletionRequest) -> Result<(bool, bool, usize), ApiError> {
    state.check_model(req.model.as_deref())?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools", "tool calling is not supported"));
    }
    let json = match req.response_format.as_ref().map(|f| f.kind.as_str()) {
        None | Some("text") => false,
        Some("json_object") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!("`{other}` is not supported; use `text` or `json_object`"),
            ));
        }
    };
    let logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = req.top_logprobs.unwrap_or(0) as usize;
    if top_logprobs > 0 && !logprobs {
        return Err(ApiError::invalid("top_logprobs", "requires `logprobs: true`"));
    }
    if top_logprobs > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid("top_logprobs", format!("must be at most {MAX_TOP_LOGPROBS}")));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "must hold at least one message"));
    }
    Ok((json, logprobs, top_logprobs))
}

/// Starts a chat generation (for this endpoint and for async tasks); also
/// whether the answer carries log-probabilities.
pub(crate) async fn start(
    state: &AppState,
    context: RequestContext,
    mut req: ChatCompletionRequest,
) -> Result<(crate::generation::Generation, bool), ApiError> {
    let (json, logprobs, top_logprobs) = check(state, &req)?;
    let messages = chat_messages(std::mem::take(&mut req.messages))?;
    let sampling = sampling(req.take_sampling())?;
    let pipeline = state.pipeline(context.pipeline(sampling.pipeline.as_deref()))?;
    let prompt = Prompt::Chat { messages, add_generation_prompt: true };
    let max_tokens_field = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    let generation = GenerationSpec {
        params: sampling.params,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        default_max_tokens: None,
        stop: sampling.stop,
        ignore_eos: sampling.ignore_eos,
        logprobs,
        top_logprobs,
        json,
        pipeline,
        tenant: context.tenant(),
        meter: context.meter,
        no_cache: context.no_cache,
        ..GenerationSpec::default()
    }
    .start_from(state, prompt)
    .await
    .map_err(|e| match e {
        // Name the fields the client wrote: messages, not a prompt.
        ApiError::InvalidValue { param, message, code } if param == "prompt" => {
            ApiError::InvalidValue { param: "messages".into(), message, code }
        }
        ApiError::InvalidValue { param, message, code } if param == "max_tokens" => {
            ApiError::InvalidValue { param: max_tokens_field.into(), message, code }
        }
        other => other,
    })?;
    Ok((generation, logprobs))
}

/// A finished chat generation as a `chat.completion`.
pub(crate) fn completion(state: &AppState, done: crate::generation::Collected, logprobs: bool) -> ChatCompletion {
    ChatCompletion {
        id: completion_id("chatcmpl"),
        object: "chat.completion".into(),
        created: unix_now(),
        model: state.model().id.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage { role: "assistant".into(), content: done.text },
            logprobs: logprobs.then(|| chat_logprobs(state, &done.tokens)),
            finish_reason: done.reason,
        }],
        usage: done.usage,
    }
}

/// OpenAI's messages as the chat template takes them.
pub(crate) fn chat_messages(messages: Vec<ChatMessage>) -> Result<Vec<kiln_chat::ChatMessage>, ApiError> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {:?}; expected one of {}", m.role, ROLES.join(", ")),
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(text)) => text,
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            _ => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    format!("only text parts (with `text`) are supported, got type {:?}", part.kind),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(kiln_chat::ChatMessage::new(m.role, content))
        })
        .collect()
}

fn chat_logprobs(state: &AppState, tokens: &[TokenLogprobs]) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|t| {
            let (token, bytes) = token_text(state, t.id);
            let top_logprobs = t
                .top
                .iter()
                .map(|&(id, logprob)| {
                    let (token, bytes) = token_text(state, id);
                    TopLogprob { token, logprob, bytes }
                })
                .collect();
            TokenLogprob { token, logprob: t.logprob, bytes, top_logprobs }
        })
        .collect();
    ChatLogprobs { content }
}
