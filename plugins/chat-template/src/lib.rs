//! chat-template: renders the model's own Jinja chat template (the
//! `tokenizer.chat_template` of its GGUF) with minijinja, as Hugging Face's
//! `apply_chat_template` does; models without one get ChatML. The same code
//! as the host's built-in template (`kiln-chat`), compiled into the plugin.
//!
//! Tools render through the model's template when it knows them (it uses
//! `tools`: Qwen 2.5, Llama 3.1, Mistral, Hermes-style templates) and
//! through `kiln-chat`'s Hermes-style fallback when it does not; with
//! `tool_choice: none` they are not offered at all.

#![forbid(unsafe_code)]

use kiln_chat::{ChatMessage, ChatTemplate as Jinja, Tool, ToolCall};
use kiln_sdk::ToolChoice;
use kiln_sdk::template::{Rendered, Template, TemplateInput};

#[derive(Debug)]
pub struct ChatTemplate;

impl Template for ChatTemplate {
    fn render(input: TemplateInput) -> Result<Rendered, String> {
        let template = Jinja::new(input.chat_template.as_deref(), &input.bos_token, &input.eos_token)
            .map_err(|e| e.to_string())?;
        let messages: Vec<ChatMessage> = input
            .messages
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content,
                tool_calls: m
                    .tool_calls
                    .into_iter()
                    .map(|c| ToolCall { id: c.id, name: c.name, arguments: c.arguments })
                    .collect(),
                tool_call_id: m.tool_call_id,
                name: m.name,
            })
            .collect();
        let tools: Vec<Tool> = match input.tool_choice {
            ToolChoice::None => Vec::new(),
            _ => input
                .tools
                .into_iter()
                .map(|t| Tool { name: t.name, description: t.description, parameters: t.parameters })
                .collect(),
        };
        let (prompt, syntax) =
            template.render_with_tools(&messages, &tools, input.add_generation_prompt).map_err(|e| e.to_string())?;
        let tool_syntax = syntax.map(|s| match s {
            kiln_chat::ToolSyntax::Hermes => kiln_sdk::ToolSyntax::Hermes,
            kiln_chat::ToolSyntax::LlamaJson => kiln_sdk::ToolSyntax::LlamaJson,
            kiln_chat::ToolSyntax::Mistral => kiln_sdk::ToolSyntax::Mistral,
        });
        Ok(Rendered { prompt, stop: Vec::new(), tool_syntax })
    }
}

kiln_sdk::export_template!(ChatTemplate);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_sdk::template::ChatMessage as Message;

    fn input(template: Option<&str>) -> TemplateInput {
        TemplateInput {
            messages: vec![Message::new("user", "Hi")],
            add_generation_prompt: true,
            chat_template: template.map(str::to_string),
            ..TemplateInput::default()
        }
    }

    #[test]
    fn without_a_model_template_it_renders_chatml() {
        let out = ChatTemplate::render(input(None)).unwrap();
        assert_eq!(out.prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn a_template_that_raises_is_an_error_with_its_message() {
        let raising = "{{ raise_exception('roles must alternate') }}";
        assert!(ChatTemplate::render(input(Some(raising))).unwrap_err().contains("roles must alternate"));
    }
}
