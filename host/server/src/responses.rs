//! Answer bodies built from generations, in each API's shapes: what the
//! handlers send and what async tasks store as their result.

use std::collections::HashMap;

use kiln_api::generate::GenerationResponse;
use kiln_api::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob,
};
use kiln_api::tools::{FunctionCall, ToolCall};

use crate::AppState;
use crate::generation::{Collected, total_usage};
use crate::piece::TokenLogprobs;
use crate::time::unix_now;

/// A finished generation in the guide's shape.
pub(crate) fn generation_response(state: &AppState, done: Collected) -> GenerationResponse {
    GenerationResponse {
        text: done.text,
        tokens_used: done.usage.total_tokens,
        model: state.model().id.clone(),
        finish_reason: done.reason,
        usage: done.usage,
    }
}

/// A finished chat generation as a `chat.completion`.
/// A `chat.completion` of one or more answers, in order.
pub(crate) fn chat_completion(state: &AppState, done: Vec<Collected>, logprobs: bool) -> ChatCompletion {
    let usage = total_usage(done.iter().map(|d| d.usage));
    let system_fingerprint = done.first().map(|d| d.fingerprint.to_string());
    ChatCompletion {
        id: completion_id("chatcmpl"),
        object: "chat.completion".into(),
        created: unix_now(),
        model: state.model().id.clone(),
        choices: done
            .into_iter()
            .enumerate()
            .map(|(index, done)| ChatChoice {
                index: index as u32,
                message: assistant_message(done.text, done.tool_calls),
                logprobs: logprobs.then(|| chat_logprobs(state, &done.tokens)),
                finish_reason: done.reason,
            })
            .collect(),
        usage,
        system_fingerprint,
    }
}

/// An answer's message: its text (`null` when it only called tools) and calls.
fn assistant_message(text: String, calls: Vec<(String, String, String)>) -> AssistantMessage {
    let content = (calls.is_empty() || !text.is_empty()).then_some(text);
    let tool_calls = (!calls.is_empty()).then(|| {
        calls
            .into_iter()
            .map(|(id, name, arguments)| ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall { name, arguments },
            })
            .collect()
    });
    AssistantMessage { role: "assistant".into(), content, tool_calls }
}

/// Chat completions' log-probabilities of `tokens`.
pub(crate) fn chat_logprobs(state: &AppState, tokens: &[TokenLogprobs]) -> ChatLogprobs {
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

/// OpenAI's legacy logprobs; `offset` is where the first token starts in the
/// returned text, in characters, and is moved past the last.
pub(crate) fn completion_logprobs(
    state: &AppState,
    tokens: &[TokenLogprobs],
    offset: &mut usize,
) -> CompletionLogprobs {
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

/// A token's text for logprob listings: its bytes, lossily decoded.
fn token_text(state: &AppState, id: u32) -> (String, Vec<u8>) {
    let bytes = state.model().tokenizer.token_bytes(id).to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// A fresh id for an OpenAI answer (`chatcmpl-...`, `cmpl-...`).
pub(crate) fn completion_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
