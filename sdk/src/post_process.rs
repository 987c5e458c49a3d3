//! Post-process plugins: shaping the streamed text.
//!
//! Implement [`PostProcess`] and export it with
//! [`export_post_process!`](crate::export_post_process). The host calls
//! [`PostProcess::on_chunk`] with each decoded chunk and
//! [`PostProcess::finish`] at the end; text a chunk does not return is held
//! back by the plugin until a later call returns it.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::{Config, PluginInfo};

/// Bindings generated from `wit/` (the `post-process-plugin` world).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "kiln:plugin/post-process-plugin",
        pub_export_macro: true,
        export_macro_name: "export_post_process_world",
        default_bindings_module: "kiln_sdk::post_process::bindings",
    });
}

use bindings::exports::kiln::plugin::post_process as wit;
use bindings::kiln::plugin::types as wit_types;

/// Why the generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop sequence, or a plugin's stop.
    Stop,
    /// The token limit or the end of the context window.
    Length,
}

/// What to do with a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkAction {
    /// Send this text on (may be empty: everything held back).
    Emit(String),
    /// Send this text on, then end the generation (finish reason `stop`).
    Stop(String),
    /// Fail the generation with this message.
    Abort(String),
}

/// An output filter: one value per generation.
pub trait PostProcess: Sized + 'static {
    /// A new stream with the request's stop sequences. An error fails the
    /// request with this message.
    fn new(stop: &[String], config: &Config) -> Result<Self, String>;

    /// Each decoded chunk, in order.
    fn on_chunk(&mut self, text: &str) -> ChunkAction;

    /// The end: the text still held back.
    fn finish(&mut self, reason: FinishReason) -> String;
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
    fn create(stop: Vec<String>, config: Vec<(String, String)>) -> Result<wit::Output, String> {
        let filter = T::new(&stop, &Config(config))?;
        Ok(wit::Output::new(Output(RefCell::new(filter))))
    }

    fn on_chunk(&self, text: String) -> wit::ChunkAction {
        match self.0.borrow_mut().on_chunk(&text) {
            ChunkAction::Emit(t) => wit::ChunkAction::Emit(t),
            ChunkAction::Stop(t) => wit::ChunkAction::Stop(t),
            ChunkAction::Abort(m) => wit::ChunkAction::Abort(m),
        }
    }

    fn finish(&self, reason: wit_types::FinishReason) -> String {
        let reason = match reason {
            wit_types::FinishReason::Stop => FinishReason::Stop,
            wit_types::FinishReason::Length => FinishReason::Length,
        };
        self.0.borrow_mut().finish(reason)
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
