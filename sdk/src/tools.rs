//! Tool calling as plugins see it: the request's functions, whether the
//! model must call one, the syntax a prompt asked calls to be written in,
//! and the calls themselves.

/// A function the model may call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model (may be empty).
    pub description: String,
    /// A JSON schema of its arguments, as text.
    pub parameters: String,
}

/// A call of one of the request's functions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id; a post-processor may leave it empty (the host gives
    /// the call one).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments: a JSON object, as compact text.
    pub arguments: String,
}

/// Whether and how the model is to call tools (OpenAI's `tool_choice`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No calls: the tools are context only.
    None,
    /// At least one call.
    Required,
    /// A call of this function.
    Function(String),
}

/// How a prompt asks the model to write its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolSyntax {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes,
    /// Qwen 2.5, and kiln's fallback for templates without tools).
    Hermes,
    /// The whole answer is `{"name": ..., "parameters": {...}}` (Llama 3.1).
    LlamaJson,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}]` (Mistral).
    Mistral,
}

/// Conversions to and from one world's generated `types` module; each world
/// has its own copy of the contract's types.
macro_rules! tool_conversions {
    ($types:path) => {
        use $types as t;

        impl From<t::Tool> for $crate::Tool {
            fn from(x: t::Tool) -> Self {
                $crate::Tool { name: x.name, description: x.description, parameters: x.parameters }
            }
        }

        impl From<t::ToolCall> for $crate::ToolCall {
            fn from(x: t::ToolCall) -> Self {
                $crate::ToolCall { id: x.id, name: x.name, arguments: x.arguments }
            }
        }

        impl From<$crate::ToolCall> for t::ToolCall {
            fn from(x: $crate::ToolCall) -> Self {
                t::ToolCall { id: x.id, name: x.name, arguments: x.arguments }
            }
        }

        impl From<t::ToolSyntax> for $crate::ToolSyntax {
            fn from(x: t::ToolSyntax) -> Self {
                match x {
                    t::ToolSyntax::Hermes => $crate::ToolSyntax::Hermes,
                    t::ToolSyntax::LlamaJson => $crate::ToolSyntax::LlamaJson,
                    t::ToolSyntax::Mistral => $crate::ToolSyntax::Mistral,
                }
            }
        }

        impl From<$crate::ToolSyntax> for t::ToolSyntax {
            fn from(x: $crate::ToolSyntax) -> Self {
                match x {
                    $crate::ToolSyntax::Hermes => t::ToolSyntax::Hermes,
                    $crate::ToolSyntax::LlamaJson => t::ToolSyntax::LlamaJson,
                    $crate::ToolSyntax::Mistral => t::ToolSyntax::Mistral,
                }
            }
        }
    };
}
pub(crate) use tool_conversions;
