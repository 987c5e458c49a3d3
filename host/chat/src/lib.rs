//! kiln-chat: renders chat messages into prompt text with the model's own
//! Jinja chat template (the `tokenizer.chat_template` of its GGUF), as
//! Hugging Face's `apply_chat_template` does. Models without one get ChatML.
//! Tools render through the model's template when it knows them, and
//! through kiln's Hermes-style fallback when it does not (`tools`).

#![forbid(unsafe_code)]

mod tools;

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

pub use tools::{Tool, ToolCall, ToolChoice, ToolSyntax, fallback_instructions, fallback_messages, template_syntax};

/// One chat turn. The tool fields are left out of what the template sees
/// when empty: templates test `'tool_calls' in message`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` turn: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), ..ChatMessage::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model's chat template does not compile: {0}")]
    Compile(String),
    #[error("rendering the chat template failed: {0}")]
    Render(String),
}

/// ChatML, for models that ship no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// `source`: the model's template, or `None` for [`CHATML`].
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        // Python-style `str.strip()` etc., which Hugging Face templates use freely.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        let source = source.unwrap_or(CHATML).to_string();
        env.add_template_owned("chat", source.clone()).map_err(|e| ChatError::Compile(e.to_string()))?;
        Ok(ChatTemplate { env, source, bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// The Jinja source this template was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ChatError> {
        Ok(self.render_with_tools(messages, &[], add_generation_prompt)?.0)
    }

    /// Renders `messages` offering `tools`, and says which syntax the prompt
    /// asks calls in (`None` when no tools are offered). A template that
    /// knows tools renders them itself; for one that does not, the
    /// conversation is rewritten with kiln's Hermes-style fallback.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<(String, Option<ToolSyntax>), ChatError> {
        let uses_tools = !tools.is_empty() || messages.iter().any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        let native = template_syntax(&self.source);
        let rewritten;
        let messages = match native {
            None if uses_tools => {
                rewritten = fallback_messages(messages, tools);
                &rewritten[..]
            }
            _ => messages,
        };
        let template = self.env.get_template("chat").map_err(|e| ChatError::Render(e.to_string()))?;
        // `tools` is undefined, not empty, when none are offered: templates
        // test `tools is not none` / `tools is defined`.
        let tools_value = (native.is_some() && !tools.is_empty()).then_some(tools);
        let prompt = template
            .render(context! {
                messages => messages,
                tools => tools_value,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| ChatError::Render(e.to_string()))?;
        let syntax = (!tools.is_empty()).then(|| native.unwrap_or(ToolSyntax::Hermes));
        Ok((prompt, syntax))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_template() -> String {
        let path = kiln_hub::resolve_model(None, false).expect("the default model is needed by these tests");
        let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}; run `kiln pull`", path.display()));
        let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
        content.metadata["tokenizer.chat_template"].to_string().unwrap().clone()
    }

    #[test]
    fn smollm2_template_inserts_its_default_system_message() {
        let t = ChatTemplate::new(Some(&smollm_template()), "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "What is 2+2?")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_given_system_message_replaces_the_default() {
        let t = ChatTemplate::new(Some(&smollm_template()), "<|im_start|>", "<|im_end|>").unwrap();
        let msgs = [ChatMessage::new("system", "Be terse."), ChatMessage::new("user", "hi")];
        let out = t.render(&msgs, false).unwrap();
        assert_eq!(out, "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");
    }

    #[test]
    fn chatml_is_the_fallback() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        let out = t.render(&[ChatMessage::new("user", "hi")], true).unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn template_errors_are_reported_not_panicked() {
        assert!(matches!(ChatTemplate::new(Some("{% for %}"), "", ""), Err(ChatError::Compile(_))));
        let t = ChatTemplate::new(Some("{{ raise_exception('roles must alternate') }}"), "", "").unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    /// The tool parts of Qwen 2.5's template, trimmed.
    const HERMES_TEMPLATE: &str = "{%- if tools %}<|im_start|>system\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n{% endif %}\
        {%- for message in messages %}{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\
        {% for tool_call in message.tool_calls %}{% set tool_call = tool_call.function %}\n<tool_call>\n{\"name\": \"{{ tool_call.name }}\", \"arguments\": {{ tool_call.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n\
        {% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n\
        {% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}{%- endfor %}\
        {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: "The weather".into(),
            parameters: r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
        }
    }

    fn round_trip() -> Vec<ChatMessage> {
        let call =
            ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: r#"{"city": "Paris"}"#.into() };
        vec![
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") },
            ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", "sunny") },
        ]
    }

    #[test]
    fn a_template_that_knows_tools_gets_them_and_calls_with_object_arguments() {
        let t = ChatTemplate::new(Some(HERMES_TEMPLATE), "", "<|im_end|>").unwrap();
        let (out, syntax) = t.render_with_tools(&round_trip(), &[weather()], true).unwrap();
        assert_eq!(syntax, Some(ToolSyntax::Hermes));
        assert!(out.contains(r#""function":{"#) && out.contains(r#""name":"get_weather""#), "{out}");
        assert!(out.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}"), "{out}");
        assert!(out.contains("<tool_response>\nsunny\n</tool_response>"), "{out}");
        // Without tools offered, `tools` is undefined: no tools block.
        let (plain, syntax) = t.render_with_tools(&[ChatMessage::new("user", "hi")], &[], true).unwrap();
        assert_eq!((plain.as_str(), syntax), ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", None));
    }

    #[test]
    fn a_template_without_tools_gets_the_hermes_fallback() {
        let t = ChatTemplate::new(Some(&smollm_template()), "<|im_start|>", "<|im_end|>").unwrap();
        let (out, syntax) = t.render_with_tools(&round_trip(), &[weather()], true).unwrap();
        assert_eq!(syntax, Some(ToolSyntax::Hermes));
        assert!(out.starts_with("<|im_start|>system\n# Tools\n"), "the tools replace the default system turn: {out}");
        assert!(
            out.contains(
                r#"<tool_call>
{"arguments":{"city":"Paris"},"name":"get_weather"}
</tool_call><|im_end|>"#
            ),
            "{out}"
        );
        assert!(out.contains("<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>"), "{out}");
    }

    #[test]
    fn the_call_syntax_is_read_from_the_template() {
        assert_eq!(template_syntax(HERMES_TEMPLATE), Some(ToolSyntax::Hermes));
        assert_eq!(template_syntax("{{ tools }}[TOOL_CALLS]"), Some(ToolSyntax::Mistral));
        assert_eq!(template_syntax("{% if tools %}{{ tools | tojson }}{% endif %}"), Some(ToolSyntax::LlamaJson));
        assert_eq!(template_syntax(CHATML), None);
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(Some("{{ messages[0]['content'].strip() }}"), "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "  x  ")], false).unwrap(), "x");
    }
}
