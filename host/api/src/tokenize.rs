//! `POST /v1/tokenize` and `POST /v1/detokenize` (vLLM's shapes).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::openai::ChatMessage;

/// Either `prompt` (text as the model would see it) or `messages` (rendered
/// with the chat template first, as a chat completion would be).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    /// With `messages`: open the assistant's turn, as chat completions do.
    #[serde(default = "yes")]
    pub add_generation_prompt: bool,
    /// With `messages`: render with this pipeline's template, as a chat completion naming it would.
    pub pipeline: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: u32,
    /// The context window: prompt plus output must fit in it.
    pub max_model_len: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    #[serde(deserialize_with = "crate::integer::list")]
    pub tokens: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
