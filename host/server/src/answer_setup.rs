//! Each answer's plugin sessions: the sampler that steers it (the
//! pipeline's, or json-mode, json-schema or a forced tool call in its
//! place: then the output must parse) and its post-process chain (the
//! tool-call parser first when the request offers tools).

use kiln_engine::{SamplingParams, SamplingPolicy};
use kiln_pipeline::{CallConstraint, OutputSetup, PipelineError, PluginError, PostChain, Resolved};

use crate::{ApiError, AppState};

/// What one request's answers start their plugin sessions from.
pub(crate) struct AnswerSetup<'a> {
    pub params: &'a SamplingParams,
    pub prompt: &'a [u32],
    pub max_tokens: usize,
    /// `response_format: json_object`.
    pub json: bool,
    /// `response_format: json_schema`'s schema.
    pub json_schema: Option<&'a str>,
    /// The call `tool_choice` forces (`required` or a named function).
    pub forced_call: Option<&'a CallConstraint>,
    pub pipeline: Option<&'a Resolved>,
    /// The request offers tools: the answer is parsed for calls.
    pub parse_tool_calls: bool,
    pub output: OutputSetup<'a>,
}

impl AnswerSetup<'_> {
    /// A new sampler session for one answer; `None`: the engine samples alone.
    pub fn sampler(&self, state: &AppState) -> Result<Option<Box<dyn SamplingPolicy>>, ApiError> {
        let (params, prompt, max_tokens) = (self.params, self.prompt, self.max_tokens);
        let built_in = self.json || self.json_schema.is_some() || self.forced_call.is_some();
        let plugins = match (built_in, state.plugins()) {
            (false, _) => {
                let Some(pipeline) = self.pipeline else { return Ok(None) };
                return pipeline.sampler(params, prompt, max_tokens).map_err(|e| ApiError::Plugin(e.to_string()));
            }
            (true, Some(plugins)) => plugins,
            (true, None) => return Err(ApiError::Internal("a constrained output validated without plugins".into())),
        };
        // The plugin compiles the schema: what it refuses is the client's to fix.
        let refused = |param: &'static str| {
            move |e: PipelineError| match e {
                PipelineError::Plugin(PluginError::Refused { message, .. }) => ApiError::invalid(param, message),
                other => ApiError::from(other),
            }
        };
        let policy = match (self.forced_call, self.json_schema) {
            (Some(call), _) => plugins.tool_call_policy(params, prompt, max_tokens, call).map_err(refused("tools"))?,
            (None, Some(schema)) => plugins
                .json_schema_policy(params, prompt, max_tokens, schema)
                .map_err(refused("response_format.json_schema.schema"))?,
            (None, None) => plugins.json_policy(params, prompt, max_tokens)?,
        };
        Ok(Some(policy))
    }

    /// A new post-process chain for one answer.
    pub fn post_chain(&self, state: &AppState) -> Result<PostChain, ApiError> {
        let parser = match (self.parse_tool_calls, state.plugins()) {
            (true, Some(plugins)) => Some(plugins.tool_call_parser(&self.output)?),
            (true, None) => return Err(ApiError::Internal("tools validated without plugins".into())),
            (false, _) => None,
        };
        match self.pipeline {
            Some(pipeline) => pipeline.post_chain(&self.output, parser).map_err(|e| ApiError::Plugin(e.to_string())),
            None => Ok(PostChain::new(parser.into_iter().collect())),
        }
    }
}
