//! The OpenAI-compatible API, in OpenAI's exact shapes: chat completions,
//! completions and models. Fields kiln adds (`top_k`, `min_p`,
//! `repetition_penalty`, `ignore_eos`) are extensions vLLM and llama.cpp
//! accept too; unknown fields are ignored, as OpenAI's clients expect.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::tools::{ToolCall, ToolCallDelta, ToolChoiceParam, ToolSpec};
use crate::{FinishReason, SamplingKnobs, StopSequences, Usage};

/// Sampling fields shared by chat completions and completions, moved out of
/// either request by its `take_sampling`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingFields {
    /// The knobs the guide's request has too.
    pub knobs: SamplingKnobs,
    pub n: Option<u32>,
    pub stop: Option<StopSequences>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub ignore_eos: Option<bool>,
    pub pipeline: Option<String>,
}

/// Declares a request struct with the shared sampling fields spelled out.
/// (`#[serde(flatten)]` would be shorter, but a flattened field with a wrong
/// type loses its name in the deserializer's error, and clients must be told
/// which field is wrong.)
macro_rules! with_sampling_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($body)*
            /// Default 1; 0 is greedy.
            #[schema(minimum = 0.0, maximum = 2.0)]
            pub temperature: Option<f32>,
            #[schema(minimum = 0.0, maximum = 1.0)]
            pub top_p: Option<f32>,
            /// Answers to generate, 1 to 8 (default 1): the prompt runs once
            /// and each answer samples on from it.
            #[schema(minimum = 1, maximum = 8)]
            #[serde(default, deserialize_with = "crate::integer::option")]
            pub n: Option<u32>,
            pub stop: Option<StopSequences>,
            #[schema(minimum = -2.0, maximum = 2.0)]
            pub presence_penalty: Option<f32>,
            #[schema(minimum = -2.0, maximum = 2.0)]
            pub frequency_penalty: Option<f32>,
            /// Token id (as a string) to a bias in [-100, 100] added to its logit.
            pub logit_bias: Option<HashMap<String, f32>>,
            #[serde(default, deserialize_with = "crate::integer::option")]
            pub seed: Option<u64>,
            /// Accepted and ignored (OpenAI uses it for abuse monitoring).
            pub user: Option<String>,
            /// Extension: keep the k most likely tokens (0 disables).
            #[serde(default, deserialize_with = "crate::integer::option")]
            pub top_k: Option<u32>,
            /// Extension: drop tokens less likely than `min_p` times the most likely one.
            #[schema(minimum = 0.0, maximum = 1.0)]
            pub min_p: Option<f32>,
            /// Extension: llama.cpp's repetition penalty (1 disables).
            #[schema(minimum = 0.01, maximum = 10.0)]
            pub repetition_penalty: Option<f32>,
            /// Extension: keep generating past end-of-sequence tokens, up to the token limit.
            pub ignore_eos: Option<bool>,
            /// Extension: the plugin pipeline to run (see `GET /v1/plugins`); unset: the server's default.
            pub pipeline: Option<String>,
        }

        impl $name {
            pub fn take_sampling(&mut self) -> SamplingFields {
                SamplingFields {
                    knobs: $crate::sampling::knobs_of!(self, self.temperature),
                    n: self.n,
                    stop: self.stop.take(),
                    logit_bias: self.logit_bias.take(),
                    ignore_eos: self.ignore_eos,
                    pipeline: self.pipeline.take(),
                }
            }
        }
    };
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// One chat turn. `content` is a string or a list of text parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    /// An assistant turn's calls, as an earlier answer returned them.
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` turn: the id of the call whose result it carries.
    pub tool_call_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A part of a message; only `{"type": "text", "text": ...}` is supported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `{"type": "text"}`, or `json_object` / `json_schema` (these need a
/// pipeline with a JSON-constraining sampler plugin).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<serde_json::Value>,
}

with_sampling_fields! {
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// The served model's id (see `GET /v1/models`); may be omitted.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; either works.
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub max_tokens: Option<u32>,
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub max_completion_tokens: Option<u32>,
    /// Return each output token's log-probability.
    pub logprobs: Option<bool>,
    /// With `logprobs`: the 0 to 20 most likely alternatives at each position.
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub top_logprobs: Option<u32>,
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call (at most 128). Calls come back in the
    /// message's `tool_calls`, with `finish_reason: tool_calls`.
    pub tools: Option<Vec<ToolSpec>>,
    /// `auto` (the default with tools), `none`, `required`, or a named
    /// function; with `required` or a name the call is constrained to the
    /// function's schema, so it always parses.
    pub tool_choice: Option<ToolChoiceParam>,
    /// Default true; false keeps only the first call of an answer.
    pub parallel_tool_calls: Option<bool>,
    /// kiln's extension, `POST /v1/chat/completions/async` only: told of the
    /// task's end by a signed POST.
    pub webhook_url: Option<String>,
}
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: FinishReason,
}

/// `object: "chat.completion"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    /// The model file and plugin versions that produced the answer
    /// (`GET /v1/fingerprints/{fp}` says which).
    pub system_fingerprint: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

/// `object: "chat.completion.chunk"`: one streamed event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Only on the last chunk, and only with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub system_fingerprint: Option<String>,
}

/// A prompt as text or token ids; a list must hold exactly one prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Tokens(#[serde(deserialize_with = "crate::integer::list")] Vec<u32>),
    Texts(Vec<String>),
    TokenLists(#[serde(deserialize_with = "crate::integer::lists")] Vec<Vec<u32>>),
}

with_sampling_fields! {
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptInput,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Default 16, as OpenAI's.
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub max_tokens: Option<u32>,
    /// The 0 to 5 most likely alternatives to report at each position.
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub logprobs: Option<u32>,
    /// Prepend the prompt to the returned text.
    #[serde(default)]
    pub echo: bool,
    /// Not supported (no fill-in-the-middle); refused when given.
    pub suffix: Option<String>,
    /// Only 1 is supported.
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub best_of: Option<u32>,
}
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<HashMap<String, f32>>,
    pub text_offset: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    /// `null` on streamed chunks until the last.
    pub finish_reason: Option<FinishReason>,
}

/// `object: "text_completion"`, whole or as one streamed chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub system_fingerprint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Extension: the context window (prompt plus output).
    pub max_model_len: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}
