//! Tool calling in OpenAI's shapes: the functions a chat request offers,
//! `tool_choice`, and the calls in answers, whole and streamed.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"type": "function", "function": {...}}`: a function the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolSpec {
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionSpec {
    /// 1 to 64 of `a-z`, `A-Z`, `0-9`, `_` and `-`.
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema of the arguments (an object); none: no arguments.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Accepted; with `tool_choice` `required` or a named function the
    /// arguments match the schema whatever this says.
    pub strict: Option<bool>,
}

/// `"none"`, `"auto"`, `"required"`, or `{"type": "function", "function": {"name": ...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoiceParam {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionName,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionName {
    pub name: String,
}

/// A call the assistant made: in an answer, and in the history a client
/// sends back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments: a JSON object, as text.
    pub arguments: String,
}

/// A streamed piece of a call: kiln sends each call whole, in one delta
/// with its `index`, `id`, `type` and the whole `function`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCallDelta {
    /// The call's position in the answer's `tool_calls`.
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}
