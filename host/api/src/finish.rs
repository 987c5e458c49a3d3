//! How a generation ended, as every endpoint reports it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        let (p, c) = (prompt_tokens as u32, completion_tokens as u32);
        Usage { prompt_tokens: p, completion_tokens: c, total_tokens: p + c }
    }
}

/// Why generation ended: `stop` (an end-of-sequence token or a stop string),
/// `length` (`max_tokens` or the context window reached) or, on chat
/// completions, `tool_calls` (the model called tools).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
}
