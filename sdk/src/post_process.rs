//! Post-process plugins: shaping the streamed text.
//!
//! Implement [`PostProcess`] and export it with
//! [`export_post_process!`](crate::export_post_process). The host calls
//! [`PostProcess::on_chunk`] with each decoded chunk and
//! [`PostProcess::finish`] at the end; text a chunk does not return is held
//! back by the plugin until a later call returns it.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::{Config, PluginInfo, Tool, ToolCall, ToolSyntax};

/// Bindings generated from `wit/` (the `post-process-plugin` world).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/plugin.wit",
        world: "kiln:plugin/post-process-plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "export_post_process_world",
        default_bindings_module: "kiln_sdk::post_process::bindings",
    });
}

use bindings::exports::kiln::plugin::post_process as wit;
use bindings::kiln::plugin::types as wit_types;

crate::tools::tool_conversions!(bindings::kiln::plugin::types);

/// Why the generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop sequence, or a plugin's stop.
    Stop,
    /// The token limit or the end of the context window.
    Length,
}

/// What a new output stream is told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The request's stop sequences (with the template's).
    pub stop: Vec<String>,
    /// The functions the model may call (empty: none).
    pub tools: Vec<Tool>,
    /// The syntax the prompt asked for calls in, when it offered tools.
    pub tool_syntax: Option<ToolSyntax>,
    /// The pipeline's configuration for this plugin.
    pub config: Config,
}

/// What a post-processor lets out: text, and tool calls it found. Calls pass
/// the later stages of the pipeline untouched; only the text runs through
/// them. A `String` or `&str` converts into text alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Emitted {
    /// Text for the client (may be empty).
    pub text: String,
    /// Calls found, in order.
    pub tool_calls: Vec<ToolCall>,
}

impl From<String> for Emitted {
    fn from(text: String) -> Self {
        Emitted { text, tool_calls: Vec::new() }
    }
}

impl From<&str> for Emitted {
    fn from(text: &str) -> Self {
        text.to_string().into()
    }
}

/// What to do with a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkAction {
    /// Send this on (may be empty: everything held back).
    Emit(Emitted),
    /// Send this on, then end the generation (finish reason `stop`).
    Stop(Emitted),
    /// Fail the generation with this message.
    Abort(String),
}

impl ChunkAction {
    /// Send this text on.
    pub fn emit(text: impl Into<String>) -> Self {
        ChunkAction::Emit(Emitted::from(text.into()))
    }

    /// Send this text on, then end the generation.
    pub fn stop(text: impl Into<String>) -> Self {
        ChunkAction::Stop(Emitted::from(text.into()))
    }
}

/// An output filter: one value per generation.
pub trait PostProcess: Sized + 'static {
    /// A new stream for one generation. An error fails the request with
    /// this message.
    fn new(options: &Options) -> Result<Self, String>;

    /// Each decoded chunk, in order.
    fn on_chunk(&mut self, text: &str) -> ChunkAction;

    /// The end: what is still held back.
    fn finish(&mut self, reason: FinishReason) -> Emitted;
}

#[doc(hidden)]
#[derive(Debug)]
pub struct Component<T>(PhantomData<T>);

#[doc(hidden)]
#[derive(Debug)]
pub struct Output<T>(RefCell<T>);

#[doc(hidden)]
pub trait Described {
    fn info() -> PluginInfo;
}

impl<T: PostProcess + Described> wit::Guest for Component<T> {
    fn info() -> wit_types::PluginInfo {
        let info = T::info();
        wit_types::PluginInfo { name: info.name, version: info.version, description: info.description }
    }
    type Output = Output<T>;
}

impl<T: PostProcess> wit::GuestOutput for Output<T> {
    fn create(options: wit::OutputOptions) -> Result<wit::Output, String> {
        let options = Options {
            stop: options.stop,
            tools: options.tools.into_iter().map(Into::into).collect(),
            tool_syntax: options.tool_syntax.map(Into::into),
            config: Config(options.config),
        };
        let filter = T::new(&options)?;
        Ok(wit::Output::new(Output(RefCell::new(filter))))
    }

    fn on_chunk(&self, text: String) -> wit::ChunkAction {
        match self.0.borrow_mut().on_chunk(&text) {
            ChunkAction::Emit(e) => wit::ChunkAction::Emit(e.into()),
            ChunkAction::Stop(e) => wit::ChunkAction::Stop(e.into()),
            ChunkAction::Abort(m) => wit::ChunkAction::Abort(m),
        }
    }

    fn finish(&self, reason: wit_types::FinishReason) -> wit::Emitted {
        let reason = match reason {
            wit_types::FinishReason::Stop => FinishReason::Stop,
            wit_types::FinishReason::Length => FinishReason::Length,
        };
        self.0.borrow_mut().finish(reason).into()
    }
}

impl From<Emitted> for wit::Emitted {
    fn from(e: Emitted) -> Self {
        wit::Emitted { text: e.text, tool_calls: e.tool_calls.into_iter().map(Into::into).collect() }
    }
}

/// Exports a [`PostProcess`] as the plugin's post-processor; its name,
/// version and description come from the plugin's `Cargo.toml`.
#[macro_export]
macro_rules! export_post_process {
    ($ty:ty) => {
        impl $crate::post_process::Described for $ty {
            fn info() -> $crate::PluginInfo {
                $crate::PluginInfo::from_cargo(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                )
            }
        }
        #[cfg(target_arch = "wasm32")]
        type __KilnPostProcessComponent = $crate::post_process::Component<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::post_process::bindings::export_post_process_world!(__KilnPostProcessComponent with_types_in $crate::post_process::bindings);
    };
}
