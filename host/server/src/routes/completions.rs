//! `POST /v1/completions` (OpenAI's legacy text completions): the prompt goes
//! to the model as is, no chat template.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kiln_api::FinishReason;
use kiln_api::openai::{Completion, CompletionChoice, CompletionRequest};

use super::sse::{json_event, mark_cache, sse};
use crate::extract::{ApiJson, RequestContext};
use crate::generation::Generation;
use crate::openapi::GenerationErrors;
use crate::piece::Piece;
use crate::request;
use crate::responses::{completion_id, completion_logprobs};
use crate::time::unix_now;
use crate::{ApiError, AppState};

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
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let valid = request::completion(&state, &context, req)?;
    let logprobs = valid.generation.logprobs.is_some();
    let generation = Generation::start(&state, valid.generation, context).await?;

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
    let mut offset = valid.echo.as_ref().map_or(0, |e| e.chars().count());
    if !valid.stream {
        let cache = generation.cache_status();
        let done = generation.collect().await?;
        let listed = logprobs.then(|| completion_logprobs(&state, &done.tokens, &mut offset));
        let text = valid.echo.unwrap_or_default() + &done.text;
        let answer = completion(vec![choice(text, listed, Some(done.reason))], Some(done.usage));
        return Ok(mark_cache(Json(answer).into_response(), cache));
    }

    let include_usage = valid.include_usage;
    let mut echo = valid.echo.filter(|e| !e.is_empty());
    let state2 = state.clone();
    Ok(sse(&state, generation, move |piece| {
        let mut events = Vec::with_capacity(2);
        if let Some(prompt) = echo.take() {
            events.push(json_event(&completion(vec![choice(prompt, None, None)], None)));
        }
        match piece {
            Piece::Text { text, tokens } => {
                let listed = logprobs.then(|| completion_logprobs(&state2, &tokens, &mut offset));
                events.push(json_event(&completion(vec![choice(text, listed, None)], None)));
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
