//! A validated generation's response-cache key: the sha256 of everything
//! that decides its output (the model, the prompt as the client gave it,
//! every sampling parameter, the limits and stop strings, the answer's
//! fingerprint: the model file and every plugin version with its
//! configuration) and of the API key it is for. Only
//! requests whose output cannot vary have one: temperature 0, or a seed.

use serde::Serialize;
use sha2::{Digest, Sha256};

use kiln_chat::ToolChoice;

use crate::AppState;
use crate::prompt::Prompt;
use crate::request::ValidGeneration;
use crate::response_cache::CacheKey;

/// Everything that decides a generation's output, hashed.
#[derive(Serialize)]
struct KeyParts<'a> {
    model: &'a str,
    tenant: Option<&'a str>,
    /// As the client gave it (text, messages or token ids): a hit needs no
    /// rendering or tokenizing.
    prompt: &'a Prompt,
    params: &'a kiln_engine::SamplingParams,
    max_tokens: Option<u32>,
    default_max_tokens: Option<u32>,
    /// The client's stop strings (a template's follow from its version).
    stop: &'a [String],
    ignore_eos: bool,
    logprobs: bool,
    top_logprobs: usize,
    json: bool,
    json_schema: Option<&'a str>,
    single_tool_call: bool,
    /// The model file and every plugin the request runs, with its version
    /// and configuration ([`crate::fingerprint`]).
    fingerprint: &'a str,
}

impl KeyParts<'_> {
    fn key(&self) -> CacheKey {
        // Serializing plain data to JSON cannot fail; the field order is fixed.
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical).into()
    }
}

impl ValidGeneration {
    /// The key of this request's answer for `tenant` (an answer is never
    /// shared between API keys), when its output is fixed by its inputs and
    /// the cache is on.
    pub(crate) fn cache_key(&self, state: &AppState, tenant: Option<&str>, fingerprint: &str) -> Option<CacheKey> {
        // Several answers differ by design: not replayed as one.
        if !state.cache().enabled() || !deterministic(&self.params) || self.n > 1 {
            return None;
        }
        Some(self.key_parts(&state.model().id, tenant, fingerprint).key())
    }

    /// The built-in plugins this request runs beside its pipeline:
    /// json-mode or json-schema in place of its sampler (json-schema also
    /// for a forced tool call), tool-calls parsing an answer offered tools.
    pub(crate) fn built_ins_used(&self) -> Vec<&'static str> {
        let (tools, forced) = match &self.prompt {
            Prompt::Chat { tools, tool_choice, .. } if !tools.is_empty() => match tool_choice {
                ToolChoice::None => (false, false),
                ToolChoice::Auto => (true, false),
                ToolChoice::Required | ToolChoice::Function(_) => (true, true),
            },
            _ => (false, false),
        };
        let built_ins = [
            (self.json, kiln_pipeline::JSON_MODE),
            (self.json_schema.is_some() || forced, kiln_pipeline::JSON_SCHEMA),
            (tools, kiln_pipeline::TOOL_CALLS),
        ];
        built_ins.into_iter().filter(|(used, _)| *used).map(|(_, name)| name).collect()
    }

    fn key_parts<'a>(&'a self, model: &'a str, tenant: Option<&'a str>, fingerprint: &'a str) -> KeyParts<'a> {
        KeyParts {
            model,
            tenant,
            prompt: &self.prompt,
            params: &self.params,
            max_tokens: self.max_tokens.requested,
            default_max_tokens: self.max_tokens.default,
            stop: &self.stop,
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs.is_some(),
            top_logprobs: self.logprobs.unwrap_or(0),
            json: self.json,
            json_schema: self.json_schema.as_deref(),
            single_tool_call: self.single_tool_call,
            fingerprint,
        }
    }
}

/// Whether a request's output is fixed by its inputs.
fn deterministic(params: &kiln_engine::SamplingParams) -> bool {
    params.temperature == 0.0 || params.seed.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::TokenLimit;
    use kiln_engine::SamplingParams;

    fn generation(prompt: Prompt, params: SamplingParams, max_tokens: Option<u32>, stop: &[&str]) -> ValidGeneration {
        ValidGeneration {
            prompt,
            prompt_param: "prompt",
            params,
            max_tokens: TokenLimit { requested: max_tokens, default: Some(16), param: "max_tokens" },
            stop: stop.iter().map(|s| s.to_string()).collect(),
            ignore_eos: false,
            logprobs: None,
            json: false,
            json_schema: None,
            pipeline: None,
            n: 1,
            single_tool_call: false,
        }
    }

    #[test]
    fn every_input_that_decides_the_output_changes_the_key() {
        let params = SamplingParams::greedy();
        let seeded = SamplingParams { seed: Some(1), ..params.clone() };
        let hi = || Prompt::Text("hi".into());
        let chat = || Prompt::chat(vec![kiln_chat::ChatMessage::new("user", "hi")], true);
        let tool = kiln_chat::Tool { name: "f".into(), description: String::new(), parameters: "{}".into() };
        let with_tools = |tool_choice| match chat() {
            Prompt::Chat { messages, add_generation_prompt, .. } => {
                Prompt::Chat { messages, tools: vec![tool.clone()], tool_choice, add_generation_prompt }
            }
            other => other,
        };
        let single = ValidGeneration {
            single_tool_call: true,
            ..generation(with_tools(ToolChoice::Auto), params.clone(), Some(8), &[])
        };
        let key =
            |g: ValidGeneration, tenant: Option<&str>, fingerprint: &str| g.key_parts("m", tenant, fingerprint).key();
        let base = key(generation(hi(), params.clone(), Some(8), &[]), None, "p@1 abc");
        assert_eq!(base, key(generation(hi(), params.clone(), Some(8), &[]), None, "p@1 abc"));
        for changed in [
            key(generation(Prompt::Text("ho".into()), params.clone(), Some(8), &[]), None, "p@1 abc"),
            key(generation(chat(), params.clone(), Some(8), &[]), None, "p@1 abc"),
            key(generation(with_tools(ToolChoice::Auto), params.clone(), Some(8), &[]), None, "p@1 abc"),
            key(generation(with_tools(ToolChoice::Required), params.clone(), Some(8), &[]), None, "p@1 abc"),
            key(single, None, "p@1 abc"),
            key(generation(hi(), seeded, Some(8), &[]), None, "p@1 abc"),
            key(generation(hi(), params.clone(), Some(9), &[]), None, "p@1 abc"),
            key(generation(hi(), params.clone(), None, &[]), None, "p@1 abc"),
            key(generation(hi(), params.clone(), Some(8), &["x"]), None, "p@1 abc"),
            key(generation(hi(), params.clone(), Some(8), &[]), None, "p@1 abd"),
            key(generation(hi(), params.clone(), Some(8), &[]), Some("app"), "p@1 abc"),
        ] {
            assert_ne!(changed, base);
        }
    }

    #[test]
    fn only_greedy_or_seeded_requests_are_deterministic() {
        let greedy = SamplingParams::greedy();
        assert!(deterministic(&greedy));
        let warm = SamplingParams { temperature: 0.7, ..greedy.clone() };
        assert!(!deterministic(&warm));
        assert!(deterministic(&SamplingParams { seed: Some(3), ..warm }));
    }
}
