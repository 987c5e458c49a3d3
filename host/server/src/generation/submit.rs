//! Starting a generation: the prompt rendered and tokenized, the tokens it
//! may spend reserved, its plugin sessions started, and the request
//! submitted to the engine.

use std::collections::VecDeque;
use std::sync::Arc;

use kiln_chat::{ToolChoice, ToolSyntax};
use kiln_engine::GenerateRequest;
use kiln_pipeline::OutputSetup;
use kiln_stop::{MAX_STOP_BYTES, StopMatcher};

use super::{CacheStatus, Generation};
use crate::answer_setup::AnswerSetup;
use crate::prompt::{self, Prompt, PromptTokens};
use crate::request::ValidGeneration;
use crate::token_meter::TokenMeter;
use crate::{ApiError, AppState};

/// Renders and tokenizes the prompt, reserves the tokens the request may
/// spend, sets up its plugins and submits it to the engine.
pub(super) async fn submit(
    state: &AppState,
    generation: ValidGeneration,
    meter: Option<TokenMeter>,
) -> Result<Vec<Generation>, ApiError> {
    let ValidGeneration {
        prompt,
        params,
        max_tokens,
        stop,
        ignore_eos,
        logprobs,
        json,
        json_schema,
        pipeline,
        n,
        single_tool_call,
        ..
    } = generation;
    // The calls to parse (and maybe force) when the conversation offers tools.
    let tool_use = match &prompt {
        Prompt::Chat { tools, tool_choice, .. } if !tools.is_empty() && *tool_choice != ToolChoice::None => {
            Some((tools.clone(), tool_choice.clone()))
        }
        _ => None,
    };
    let PromptTokens { tokens: prompt_tokens, stop: template_stop, tool_syntax } =
        prompt::tokenize(state, prompt, pipeline.as_ref()).await?;
    let mut stop = stop;
    for extra in template_stop {
        if extra.is_empty() || extra.len() > MAX_STOP_BYTES {
            return Err(ApiError::Plugin(format!(
                "the template plugin returned a stop string of {} bytes (1 to {MAX_STOP_BYTES} allowed)",
                extra.len()
            )));
        }
        if !stop.contains(&extra) {
            stop.push(extra);
        }
    }
    let backend = state.backend();
    let limits = backend.limits();
    let prompt_len = prompt_tokens.len();
    // The engine refuses at once what it expects to finish past this.
    let admitted = tokio::time::Instant::now();
    let deadline = admitted + state.config().request_timeout;
    let room = limits.max_context.saturating_sub(prompt_len).max(1);
    let max_tokens = match (max_tokens.requested, max_tokens.default) {
        (Some(n), _) => n as usize,
        (None, Some(default)) => (default as usize).min(room),
        (None, None) => room,
    };
    // The most this request can spend is set aside before it runs: the
    // prompt once, every answer's tokens. Given back whole if anything below
    // refuses the request.
    let mut reservations = Vec::with_capacity(n);
    if let Some(meter) = &meter {
        for i in 0..n {
            let prompt = if i == 0 { prompt_len } else { 0 };
            reservations.push(Some(meter.reserve(prompt + max_tokens).await?));
        }
    } else {
        reservations.resize_with(n, || None);
    }
    // Each answer gets plugin instances of its own.
    let tools: &[kiln_chat::Tool] = tool_use.as_ref().map_or(&[], |(tools, _)| tools);
    let forced_call = tool_use.as_ref().and_then(|(tools, choice)| {
        kiln_pipeline::call_constraint(tools, choice, tool_syntax.unwrap_or(ToolSyntax::Hermes))
    });
    let setup = AnswerSetup {
        params: &params,
        prompt: &prompt_tokens,
        max_tokens,
        json,
        json_schema: json_schema.as_deref(),
        forced_call: forced_call.as_ref(),
        pipeline: pipeline.as_ref(),
        parse_tool_calls: tool_use.is_some(),
        output: OutputSetup { stop: &stop, tools, tool_syntax },
    };
    let mut policies = Vec::with_capacity(n);
    let mut posts = Vec::with_capacity(n);
    for _ in 0..n {
        policies.push(setup.sampler(state)?);
        posts.push(setup.post_chain(state)?);
    }
    let mut policies = policies.into_iter();
    let policy = policies.next().flatten();
    let sibling_policies: Vec<_> = policies.flatten().collect();
    let request = GenerateRequest {
        prompt_tokens,
        params,
        max_tokens,
        stop_token_ids: Vec::new(),
        ignore_eos,
        logprobs: logprobs.is_some(),
        top_logprobs: logprobs.unwrap_or(0),
        policy,
        deadline: Some(deadline.into_std()),
        n,
        sibling_policies,
    }
    .validate(limits)?;
    let streams = backend.submit_choices(request)?;
    let started = std::time::Instant::now();
    Ok(streams
        .into_iter()
        .zip(posts)
        .zip(reservations)
        .enumerate()
        .map(|(i, ((stream, post), reservation))| Generation {
            stream: Some(stream),
            stop: StopMatcher::new(stop.clone()),
            post,
            ready: VecDeque::new(),
            pending_logprobs: Vec::new(),
            prompt_tokens: prompt_len,
            generated: 0,
            reservation,
            charges_prompt: i == 0,
            cache_status: CacheStatus::Off,
            started,
            admitted,
            deadline,
            last_text: None,
            record: None,
            tool_calls: 0,
            offers_tools: tool_use.is_some(),
            single_tool_call,
            fingerprint: Arc::from(""),
        })
        .collect())
}
