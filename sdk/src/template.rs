//! Template plugins: a conversation in, the prompt text out.
//!
//! Implement [`Template`] and export it with
//! [`export_template!`](crate::export_template).

use std::marker::PhantomData;

use crate::{Config, PluginInfo};

/// Bindings generated from `wit/` (the `template-plugin` world).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "kiln:plugin/template-plugin",
        pub_export_macro: true,
        export_macro_name: "export_template_world",
        default_bindings_module: "kiln_sdk::template::bindings",
    });
}

use bindings::exports::kiln::plugin::template as wit;
use bindings::kiln::plugin::types as wit_types;

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The turn's text.
    pub content: String,
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
        let input = TemplateInput {
            messages: input.messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect(),
            add_generation_prompt: input.add_generation_prompt,
            chat_template: input.chat_template,
            bos_token: input.bos_token,
            eos_token: input.eos_token,
            config: Config(input.config),
        };
        T::render(input).map(|r| wit::Rendered { prompt: r.prompt, stop: r.stop })
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
