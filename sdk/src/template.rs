//! Template plugins: a conversation in, the prompt text out.
//!
//! Implement [`Template`] and export it with
//! [`export_template!`](crate::export_template).

use std::marker::PhantomData;

use crate::{Config, PluginInfo, Tool, ToolCall, ToolChoice, ToolSyntax};

/// Bindings generated from `wit/` (the `template-plugin` world).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/plugin.wit",
        world: "kiln:plugin/template-plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "export_template_world",
        default_bindings_module: "kiln_sdk::template::bindings",
    });
}

use bindings::exports::kiln::plugin::template as wit;
use bindings::kiln::plugin::types as wit_types;

crate::tools::tool_conversions!(bindings::kiln::plugin::types);

/// One chat turn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The turn's text (may be empty, e.g. an assistant turn that only
    /// calls tools).
    pub content: String,
    /// An assistant turn's calls, in order (empty otherwise).
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` turn: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// The participant's or the tool's name, when the client gave one.
    pub name: Option<String>,
}

impl ChatMessage {
    /// A turn with only a role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), ..ChatMessage::default() }
    }
}

/// What a template renders from, given anew for each request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateInput {
    /// The conversation, oldest turn first.
    pub messages: Vec<ChatMessage>,
    /// Whether to open the assistant's turn at the end: true for chat
    /// completions, false to render a conversation as it stands.
    pub add_generation_prompt: bool,
    /// The model's own Jinja chat template (from its GGUF), when it has one.
    pub chat_template: Option<String>,
    /// The model's beginning-of-sequence token as text (may be empty).
    pub bos_token: String,
    /// The model's end-of-sequence token as text (may be empty).
    pub eos_token: String,
    /// The pipeline's configuration for this plugin.
    pub config: Config,
    /// The functions the model may call (empty: none).
    pub tools: Vec<Tool>,
    /// Whether and how it is to call them.
    pub tool_choice: ToolChoice,
}

/// What a template produces: the prompt, and extra stop sequences.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The text the model continues, special tokens written out as text
    /// (the host turns them into their ids).
    pub prompt: String,
    /// Stop sequences on top of the request's own (e.g. the template's
    /// end-of-turn marker).
    pub stop: Vec<String>,
    /// The syntax the prompt asks the model to write tool calls in (`None`
    /// when it offers no tools).
    pub tool_syntax: Option<ToolSyntax>,
}

/// A prompt template. Stateless: one call per request.
pub trait Template: 'static {
    /// Renders the conversation; an error reaches the client as a 400.
    fn render(input: TemplateInput) -> Result<Rendered, String>;
}

#[doc(hidden)]
#[derive(Debug)]
pub struct Component<T>(PhantomData<T>);

#[doc(hidden)]
pub trait Described {
    fn info() -> PluginInfo;
}

impl<T: Template + Described> wit::Guest for Component<T> {
    fn info() -> wit_types::PluginInfo {
        let info = T::info();
        wit_types::PluginInfo { name: info.name, version: info.version, description: info.description }
    }

    fn render(input: wit::TemplateInput) -> Result<wit::Rendered, String> {
        let messages = input.messages.into_iter().map(|m| ChatMessage {
            role: m.role,
            content: m.content,
            tool_calls: m.tool_calls.into_iter().map(Into::into).collect(),
            tool_call_id: m.tool_call_id,
            name: m.name,
        });
        let tool_choice = match input.tool_choice {
            wit_types::ToolChoice::Auto => ToolChoice::Auto,
            wit_types::ToolChoice::None => ToolChoice::None,
            wit_types::ToolChoice::Required => ToolChoice::Required,
            wit_types::ToolChoice::Function(name) => ToolChoice::Function(name),
        };
        let input = TemplateInput {
            messages: messages.collect(),
            add_generation_prompt: input.add_generation_prompt,
            chat_template: input.chat_template,
            bos_token: input.bos_token,
            eos_token: input.eos_token,
            config: Config(input.config),
            tools: input.tools.into_iter().map(Into::into).collect(),
            tool_choice,
        };
        T::render(input).map(|r| wit::Rendered {
            prompt: r.prompt,
            stop: r.stop,
            tool_syntax: r.tool_syntax.map(Into::into),
        })
    }
}

/// Exports a [`Template`] as the plugin's template; its name, version and
/// description come from the plugin's `Cargo.toml`.
#[macro_export]
macro_rules! export_template {
    ($ty:ty) => {
        impl $crate::template::Described for $ty {
            fn info() -> $crate::PluginInfo {
                $crate::PluginInfo::from_cargo(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                )
            }
        }
        #[cfg(target_arch = "wasm32")]
        type __KilnTemplateComponent = $crate::template::Component<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::template::bindings::export_template_world!(__KilnTemplateComponent with_types_in $crate::template::bindings);
    };
}
