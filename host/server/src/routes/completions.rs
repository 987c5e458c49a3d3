//! `POST /v1/completions` (OpenAI's legacy text completions): the prompt goes
//! to the model as is, no chat template.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kiln_api::FinishReason;
use kiln_api::openai::{Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptInput};

use super::openai::sampling;
use super::{completion_id, json_event, sse, token_text};
use crate::extract::{ApiJson, RequestContext};
use crate::generation::{GenerationSpec, Piece, TokenLogprobs};
use crate::openapi::GenerationErrors;
use crate::{ApiError, AppState, Prompt, unix_now};

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: u32 = 16;
/// OpenAI's limit on alternatives per position for completions.
const MAX_LOGPROBS: u32 = 5;

/// Continue a prompt (text or token ids).
#[utoipa::path(post, path = "/v1/completions", tag = "openai", request_body = CompletionRequest,
    responses(
        (status = 200, description = "A `text_completion`, or with `stream: true` `text_completion` chunks ending with `data: [DONE]`",
            content((Completion = "application/json"), (Completion = "text/event-stream"))),
        GenerationErrors,
    ))]
pub async fn completions(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(mut req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    if req.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "is not supported (no fill-in-the-middle)"));
    }
    if let Some(best_of) = req.best_of.filter(|b| *b != 1) {
        return Err(ApiError::invalid("best_of", format!("only best_of=1 is supported, got {best_of}")));
    }
    if let Some(n) = req.logprobs.filter(|n| *n > MAX_LOGPROBS) {
        return Err(ApiError::invalid("logprobs", format!("must be at most {MAX_LOGPROBS}, got {n}")));
    }
    let sampling = sampling(req.take_sampling())?;
    let pipeline = state.pipeline(context.pipeline(sampling.pipeline.as_deref()))?;
    let (prompt, echo) = prompt(&state, req.prompt, req.echo)?;
    let top = req.logprobs.map(|n| n as usize);
    let generation = GenerationSpec {
        params: sampling.params,
        max_tokens: req.max_tokens,
        default_max_tokens: Some(DEFAULT_MAX_TOKENS),
        stop: sampling.stop,
        ignore_eos: sampling.ignore_eos,
        logprobs: top.is_some(),
        top_logprobs: top.unwrap_or(0),
        json: false,
        pipeline,
        tenant: context.tenant(),
        meter: context.meter,
        no_cache: context.no_cache,
        ..GenerationSpec::default()
    }
    .start_from(&state, prompt)
    .await?;

    let (id, created, model) = (completion_id("cmpl"), unix_now(), state.model().id.clone());
    let completion = move |choices, usage| Completion {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: model.clone(),
        choices,
        usage,
    };
    let choice = |text: String, logprobs, finish_reason: Option<FinishReason>| CompletionChoice {
        index: 0,
        text,
        logprobs,
        finish_reason,
    };
    // `text_offset` counts characters from the start of the returned text.
    let mut offset = echo.as_ref().map_or(0, |e| e.chars().count());
    if !req.stream {
        let cache = generation.cache_status();
        let done = generation.collect().await?;
        let logprobs = top.map(|_| completion_logprobs(&state, &done.tokens, &mut offset));
        let text = echo.unwrap_or_default() + &done.text;
        let answer = completion(vec![choice(text, logprobs, Some(done.reason))], Some(done.usage));
        return Ok(super::mark_cache(Json(answer).into_response(), cache));
    }

    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let mut echo = echo.filter(|e| !e.is_empty());
    let state2 = state.clone();
    Ok(sse(&state, generation, move |piece| {
        let mut events = Vec::with_capacity(2);
        if let Some(prompt) = echo.take() {
            events.push(json_event(&completion(vec![choice(prompt, None, None)], None)));
        }
        match piece {
            Piece::Text { text, tokens } => {
                let logprobs = top.map(|_| completion_logprobs(&state2, &tokens, &mut offset));
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

/// The prompt as the model will see it (completions never apply the chat
/// template), and its text when `echo` wants it back. A list must hold
/// exactly one prompt.
fn prompt(state: &AppState, input: PromptInput, echo: bool) -> Result<(Prompt, Option<String>), ApiError> {
    let one = |n: usize| match n {
        1 => Ok(()),
        _ => Err(ApiError::invalid("prompt", format!("exactly one prompt per request is supported, got {n}"))),
    };
    let tokens = match input {
        PromptInput::Text(text) => return Ok((Prompt::Text(text.clone()), echo.then_some(text))),
        PromptInput::Texts(mut texts) => {
            one(texts.len())?;
            let text = texts.remove(0);
            return Ok((Prompt::Text(text.clone()), echo.then_some(text)));
        }
        PromptInput::Tokens(tokens) => tokens,
        PromptInput::TokenLists(mut lists) => {
            one(lists.len())?;
            lists.remove(0)
        }
    };
    // Decoding also checks every id against the vocabulary.
    let text = state.decode("prompt", &tokens)?;
    Ok((Prompt::Tokens(tokens), echo.then_some(text)))
}

/// OpenAI's legacy logprobs; `offset` is where the first token starts in the
/// returned text, in characters, and is moved past the last.
fn completion_logprobs(state: &AppState, tokens: &[TokenLogprobs], offset: &mut usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let (text, _) = token_text(state, t.id);
        out.text_offset.push(*offset as u32);
        *offset += text.chars().count();
        out.tokens.push(text);
        out.token_logprobs.push(t.logprob);
        out.top_logprobs.push(t.top.iter().map(|&(id, lp)| (token_text(state, id).0, lp)).collect::<HashMap<_, _>>());
    }
    out
}
