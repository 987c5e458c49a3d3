//! The guide's endpoints: `POST /v1/generate` and `POST /v1/generate/stream`,
//! with the guide's names for their bodies (`GenerationRequest`,
//! `GenerationResponse`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{FinishReason, SamplingKnobs, StopSequences, Usage};

/// A prompt to answer. By default the prompt is a user message rendered with
/// the model's chat template; `raw: true` sends it to the model as is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationRequest {
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Most tokens to generate. Unset: 512, or what the context window
    /// leaves after the prompt if that is less.
    #[schema(default = 512, minimum = 1)]
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub max_tokens: Option<u32>,
    /// 0 is greedy (deterministic).
    #[serde(default = "default_temperature")]
    #[schema(default = 0.7, minimum = 0.0, maximum = 2.0)]
    pub temperature: f32,
    /// Answer as Server-Sent Events (as `/v1/generate/stream` does).
    #[serde(default)]
    pub stream: bool,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f32>,
    /// 0 disables.
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub top_k: Option<u32>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub min_p: Option<f32>,
    #[schema(minimum = 0.01, maximum = 10.0)]
    pub repetition_penalty: Option<f32>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f32>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f32>,
    /// Same seed and request: same output.
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub seed: Option<u64>,
    /// Up to 16 strings that end generation (not included in the text).
    pub stop: Option<StopSequences>,
    /// Keep generating past end-of-sequence tokens, up to `max_tokens`.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Skip the chat template: the prompt is the model's input as is.
    #[serde(default)]
    pub raw: bool,
    /// A system message for the chat template (ignored with `raw`).
    pub system: Option<String>,
    /// Must name the served model when given.
    pub model: Option<String>,
    /// The plugin pipeline to run (see `GET /v1/plugins`); unset: the server's default.
    pub pipeline: Option<String>,
    /// `POST /v1/generate/async` only: told of the task's end by a signed POST.
    pub webhook_url: Option<String>,
}

fn default_temperature() -> f32 {
    0.7
}

impl GenerationRequest {
    /// The sampling knobs (the guide's temperature always has a value).
    pub fn knobs(&self) -> SamplingKnobs {
        crate::sampling::knobs_of!(self, Some(self.temperature))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationResponse {
    pub text: String,
    /// Prompt plus generated tokens.
    pub tokens_used: u32,
    pub model: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// One streamed event: the text decoded since the previous one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationChunk {
    pub text: String,
}

/// The last event before `data: [DONE]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationStreamEnd {
    pub finish_reason: FinishReason,
    pub tokens_used: u32,
    pub model: String,
    pub usage: Usage,
}
