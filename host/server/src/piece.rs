//! What a generation yields, piece by piece: the unit streamed to clients,
//! collected into whole answers and kept by the response cache.

use kiln_api::{FinishReason, Usage};

/// A sampled token's log-probability and its most likely alternatives.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprobs {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Serializable: the shared response cache keeps answers as their pieces.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Piece {
    /// Text to send, with the log-probabilities of the tokens that produced it
    /// (empty unless asked for). The text is empty only for the last piece,
    /// when it carries the log-probabilities of tokens that left no text.
    Text {
        text: String,
        tokens: Vec<TokenLogprobs>,
    },
    /// A tool call the model made (chat completions offering tools), with
    /// the id it goes out with.
    ToolCall {
        id: String,
        name: String,
        /// A JSON object, as text.
        arguments: String,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
}
