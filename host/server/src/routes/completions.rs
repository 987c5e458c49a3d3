//! `POST /v1/completions` (OpenAI's legacy text completions): the prompt goes
//! to the model as is, no chat template.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kiln_api::FinishReason;
use kiln_api::openai::{Completion, CompletionChoice, CompletionRequest};

use super::sse::{json_event, mark_cache, sse_choices};
use crate::extract::{ApiJson, RequestContext};
use crate::generation::{CacheStatus, Generation, collect_choices, total_usage};
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
    let generations = Generation::start_choices(&state, valid.generation, context).await?;
    let cache = generations.first().map_or(CacheStatus::Off, Generation::cache_status);
    let fingerprint = generations.first().map(|g| g.fingerprint().to_string());

    let (id, created, model) = (completion_id("cmpl"), unix_now(), state.model().id.clone());
    let completion = move |choices, usage| Completion {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: model.clone(),
        choices,
        usage,
        system_fingerprint: fingerprint.clone(),
    };
    let choice = |index: usize, text: String, logprobs, finish_reason: Option<FinishReason>| CompletionChoice {
        index: index as u32,
        text,
        logprobs,
        finish_reason,
    };
    // `text_offset` counts characters from the start of each returned text.
    let echoed = valid.echo.as_ref().map_or(0, |e| e.chars().count());
    let mut offsets = vec![echoed; generations.len()];
    if !valid.stream {
        let done = collect_choices(generations).await?;
        let usage = total_usage(done.iter().map(|d| d.usage));
        let choices = (done.into_iter().zip(&mut offsets).enumerate())
            .map(|(i, (done, offset))| {
                let listed = logprobs.then(|| completion_logprobs(&state, &done.tokens, offset));
                let text = valid.echo.clone().unwrap_or_default() + &done.text;
                choice(i, text, listed, Some(done.reason))
            })
            .collect();
        return Ok(mark_cache(Json(completion(choices, Some(usage))).into_response(), cache));
    }

    let include_usage = valid.include_usage;
    let echo = valid.echo.filter(|e| !e.is_empty());
    let mut echoed = vec![echo.is_none(); generations.len()];
    let mut usages = Vec::with_capacity(generations.len());
    let state2 = state.clone();
    Ok(sse_choices(&state, generations, move |i, piece| {
        let mut events = Vec::with_capacity(3);
        if let Some(prompt) = echo.as_ref().filter(|_| !std::mem::replace(&mut echoed[i], true)) {
            events.push(json_event(&completion(vec![choice(i, prompt.clone(), None, None)], None)));
        }
        match piece {
            Piece::Text { text, tokens } => {
                let listed = logprobs.then(|| completion_logprobs(&state2, &tokens, &mut offsets[i]));
                events.push(json_event(&completion(vec![choice(i, text, listed, None)], None)));
            }
            // Completions offer no tools: a prompt cannot lead to a call.
            Piece::ToolCall { .. } => {}
            Piece::Finished { reason, usage } => {
                events.push(json_event(&completion(vec![choice(i, String::new(), None, Some(reason))], None)));
                usages.push(usage);
                if include_usage && usages.len() == offsets.len() {
                    events.push(json_event(&completion(Vec::new(), Some(total_usage(usages.iter().copied())))));
                }
            }
        }
        events
    }))
}
