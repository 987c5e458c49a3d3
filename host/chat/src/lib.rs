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

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(Some("{{ messages[0]['content'].strip() }}"), "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "  x  ")], false).unwrap(), "x");
    }
}
