//! chat-template: renders the model's own Jinja chat template (the
//! `tokenizer.chat_template` of its GGUF) with minijinja, as Hugging Face's
//! `apply_chat_template` does; models without one get ChatML. The same code
//! as the host's built-in template (`kiln-chat`), compiled into the plugin.

#![forbid(unsafe_code)]

use kiln_chat::{ChatMessage, ChatTemplate as Jinja};
use kiln_sdk::template::{Rendered, Template, TemplateInput};

#[derive(Debug)]
pub struct ChatTemplate;

impl Template for ChatTemplate {
    fn render(input: TemplateInput) -> Result<Rendered, String> {
        let template = Jinja::new(input.chat_template.as_deref(), &input.bos_token, &input.eos_token)
            .map_err(|e| e.to_string())?;
        let messages: Vec<ChatMessage> =
            input.messages.into_iter().map(|m| ChatMessage::new(m.role, m.content)).collect();
        let prompt = template.render(&messages, input.add_generation_prompt).map_err(|e| e.to_string())?;
        Ok(Rendered { prompt, stop: Vec::new() })
    }
}

kiln_sdk::export_template!(ChatTemplate);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_sdk::template::ChatMessage as Message;

    fn input(template: Option<&str>) -> TemplateInput {
        TemplateInput {
            messages: vec![Message { role: "user".into(), content: "Hi".into() }],
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
