//! Tools in a conversation: the functions offered, the calls an assistant
//! made, and how a template without tool support gets them anyway.
//!
//! Templates that know tools (they use the `tools` variable) get them as
//! Hugging Face's `apply_chat_template` passes them: `tools` as OpenAI's
//! `{"type": "function", "function": {...}}` objects, an assistant turn's
//! `tool_calls` with `arguments` as a JSON object (not its text). Other
//! templates get kiln's fallback, Hermes-style: the tools described in the
//! system turn, calls written as `<tool_call>` blocks in the assistant's
//! text, and tool results as user turns in `<tool_response>` blocks.

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::ChatMessage;

/// A function the model may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON schema of its arguments, as text.
    pub parameters: String,
}

/// A call an assistant turn made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// A JSON object, as text.
    pub arguments: String,
}

/// Whether and how the model is to call tools (OpenAI's `tool_choice`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No calls: the tools are not offered.
    None,
    /// At least one call.
    Required,
    /// A call of this function.
    Function(String),
}

/// How a prompt asks the model to write its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ToolSyntax {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
    Hermes,
    /// The whole answer is `{"name": ..., "parameters": {...}}`.
    LlamaJson,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`.
    Mistral,
}

/// JSON text as a value for the template; text that is not JSON stays text.
fn json_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

impl Serialize for Tool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let function = serde_json::json!({
            "name": self.name,
            "description": self.description,
            "parameters": json_value(&self.parameters),
        });
        let mut t = s.serialize_struct("Tool", 2)?;
        t.serialize_field("type", "function")?;
        t.serialize_field("function", &function)?;
        t.end()
    }
}

impl Serialize for ToolCall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let function = serde_json::json!({ "name": self.name, "arguments": json_value(&self.arguments) });
        let mut t = s.serialize_struct("ToolCall", 3)?;
        t.serialize_field("id", &self.id)?;
        t.serialize_field("type", "function")?;
        t.serialize_field("function", &function)?;
        t.end()
    }
}

/// Whether a template renders tools itself, and in which syntax it asks for
/// calls; `None`: it knows nothing of tools (kiln's fallback applies).
pub fn template_syntax(source: &str) -> Option<ToolSyntax> {
    if !source.contains("tools") {
        return None;
    }
    Some(if source.contains("<tool_call>") {
        ToolSyntax::Hermes
    } else if source.contains("[TOOL_CALLS]") {
        ToolSyntax::Mistral
    } else {
        ToolSyntax::LlamaJson
    })
}

/// The system text kiln's fallback adds: the tools, and how to call them
/// (the wording of Qwen 2.5's template, which small models follow best).
pub fn fallback_instructions(tools: &[Tool]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        text.push('\n');
        text.push_str(&serde_json::to_string(tool).unwrap_or_default());
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
         within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
         \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

/// A conversation rewritten for a template without tools: the tools in the
/// system turn, calls as `<tool_call>` blocks, results as user turns.
pub fn fallback_messages(messages: &[ChatMessage], tools: &[Tool]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let instructions = fallback_instructions(tools);
        match messages.first() {
            Some(m) if m.role == "system" || m.role == "developer" => {
                out.push(ChatMessage::new(m.role.clone(), format!("{}\n\n{instructions}", m.content)))
            }
            _ => out.push(ChatMessage::new("system", instructions)),
        }
    }
    let skip =
        usize::from(out.len() == 1 && messages.first().is_some_and(|m| m.role == "system" || m.role == "developer"));
    let mut last_was_tool = false;
    for m in &messages[skip..] {
        match m.role.as_str() {
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                // Several results in a row are one user turn, as Qwen's template renders them.
                match out.last_mut() {
                    Some(prev) if last_was_tool => {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::new("user", block)),
                }
                last_was_tool = true;
                continue;
            }
            "assistant" if !m.tool_calls.is_empty() => {
                let mut content = m.content.clone();
                for call in &m.tool_calls {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    let args = json_value(&call.arguments);
                    let json = serde_json::json!({ "name": call.name, "arguments": args });
                    content.push_str(&format!("<tool_call>\n{json}\n</tool_call>"));
                }
                out.push(ChatMessage::new("assistant", content));
            }
            _ => out.push(ChatMessage::new(m.role.clone(), m.content.clone())),
        }
        last_was_tool = false;
    }
    out
}
