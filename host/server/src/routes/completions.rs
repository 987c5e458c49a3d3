//! `POST /v1/completions` (OpenAI's legacy text completions): the prompt goes
//! to the model as is, no chat template.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kiln_api::ErrorBody;
use kiln_api::FinishReason;
use kiln_api::openai::{Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptInput};

use super::openai::sampling;
use super::{completion_id, json_event, sse, token_text};
use crate::extract::ApiJson;
use crate::generation::{GenerationSpec, Piece, TokenLogprobs};
use crate::{ApiError, AppState, unix_now};

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: u32 = 16;

/// Continue a prompt (text or token ids).
#[utoipa::path(post, path = "/v1/completions", tag = "openai", request_body = CompletionRequest,
    responses(
        (status = 200, description = "A `text_completion`, or with `stream: true` `text_completion` chunks ending with `data: [DONE]`",
            content((Completion = "application/json"), (Completion = "text/event-stream"))),
        (status = 400, description = "A value out of range, an unknown model, a prompt over the context", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 422, description = "A missing field or one of the wrong type", body = ErrorBody),
        (status = 503, description = "At capacity; retry after `Retry-After` seconds", body = ErrorBody),
    ))]
pub async fn completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    if req.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "is not supported (no fill-in-the-middle)"));
    }
    if let Some(best_of) = req.best_of.filter(|b| *b != 1) {
        return Err(ApiError::invalid("best_of", format!("only best_of=1 is supported, got {best_of}")));
    }
    let (prompt_text, prompt_tokens) = prompt(&state, req.prompt)?;
    let top = req.logprobs.map(|n| n as usize);
    let sampling = sampling(req.sampling)?;
    let generation = GenerationSpec {
        prompt_tokens,
        params: sampling.params,
        max_tokens: Some(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        stop: sampling.stop,
        ignore_eos: sampling.ignore_eos,
        logprobs: top.is_some(),
        top_logprobs: top.unwrap_or(0),
    }
    .start(&state)?;

    let echo = req.echo.then_some(prompt_text);
    let (id, created, model) = (completion_id("cmpl"), unix_now(), state.model().id.clone());
    let completion = move |choices, usage| Completion {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: model.clone(),
        choices,
        usage,
    };
    if !req.stream {
        let done = generation.collect().await?;
        let mut text = echo.unwrap_or_default();
        let start = text.len();
        text.push_str(&done.text);
        let choice = CompletionChoice {
            index: 0,
            logprobs: top.map(|_| completion_logprobs(&state, &done.tokens, start)),
            text,
            finish_reason: Some(done.reason),
        };
        return Ok(Json(completion(vec![choice], Some(done.usage))).into_response());
    }

    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let mut offset = echo.as_ref().map_or(0, String::len);
    let mut echo = echo.filter(|e| !e.is_empty());
    let state2 = state.clone();
    let choice = |text: String, logprobs, finish_reason: Option<FinishReason>| CompletionChoice {
        index: 0,
        text,
        logprobs,
        finish_reason,
    };
    Ok(sse(&state, generation, move |piece| {
        let mut events = Vec::with_capacity(2);
        if let Some(prompt) = echo.take() {
            events.push(json_event(&completion(vec![choice(prompt, None, None)], None)));
        }
        match piece {
            Piece::Text { text, tokens } => {
                let logprobs = top.map(|_| completion_logprobs(&state2, &tokens, offset));
                offset += text.len();
                events.push(json_event(&completion(vec![choice(text, logprobs, None)], None)));
            }
            Piece::Finished { reason, usage } => {
                events.push(json_event(&completion(vec![choice(String::new(), None, Some(reason))], None)));
                if include_usage {
                    events.push(json_event(&completion(Vec::new(), Some(usage))));
                }
            }
        }
        events
    }))
}

/// The prompt's text (for `echo`) and its tokens. A list must hold one prompt.
fn prompt(state: &AppState, input: PromptInput) -> Result<(String, Vec<u32>), ApiError> {
    let one = |n: usize| match n {
        1 => Ok(()),
        _ => Err(ApiError::invalid("prompt", format!("exactly one prompt per request is supported, got {n}"))),
    };
    let tokens = match input {
        PromptInput::Text(text) => {
            let tokens = state.encode(&text)?;
            return Ok((text, tokens));
        }
        PromptInput::Texts(mut texts) => {
            one(texts.len())?;
            let text = texts.remove(0);
            let tokens = state.encode(&text)?;
            return Ok((text, tokens));
        }
        PromptInput::Tokens(tokens) => tokens,
        PromptInput::TokenLists(mut lists) => {
            one(lists.len())?;
            lists.remove(0)
        }
    };
    let vocab = state.backend().limits().vocab_size;
    if let Some(id) = tokens.iter().find(|id| **id as usize >= vocab) {
        return Err(ApiError::invalid("prompt", format!("token id {id} is outside the vocabulary ({vocab})")));
    }
    let text = state.model().tokenizer.decode(&tokens, false).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((text, tokens))
}

/// OpenAI's legacy logprobs; `text_offset` counts from `start` in the returned text.
fn completion_logprobs(state: &AppState, tokens: &[TokenLogprobs], start: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = start;
    for t in tokens {
        let (text, bytes) = token_text(state, t.id);
        out.text_offset.push(offset as u32);
        offset += bytes.len();
        out.tokens.push(text);
        out.token_logprobs.push(t.logprob);
        out.top_logprobs.push(t.top.iter().map(|&(id, lp)| (token_text(state, id).0, lp)).collect::<HashMap<_, _>>());
    }
    out
}
