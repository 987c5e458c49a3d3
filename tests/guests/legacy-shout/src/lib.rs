//! A post-processor written against `kiln:plugin@0.1.0` with plain
//! `wit-bindgen`, as a plugin built before 0.2.0 was: it upper-cases every
//! chunk and ends with `!`. The host must keep loading and serving it.

// A component only: natively (the workspace's `cargo test`) it is empty.
#![cfg(target_arch = "wasm32")]
// No `forbid(unsafe_code)` here: wit-bindgen's export glue is `unsafe`
// (the SDK keeps it in its own crate); this file writes none itself.

wit_bindgen::generate!({
    path: "../../../wit/deps/kiln-plugin-0.1.0/plugin.wit",
    world: "kiln:plugin/post-process-plugin",
});

use exports::kiln::plugin::post_process::{ChunkAction, Guest, GuestOutput, Output};
use kiln::plugin::types::{FinishReason, PluginInfo};

#[derive(Debug)]
struct Shout;

impl Guest for Shout {
    type Output = Shout;

    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
        }
    }
}

impl GuestOutput for Shout {
    fn create(_stop: Vec<String>, _config: Vec<(String, String)>) -> Result<Output, String> {
        Ok(Output::new(Shout))
    }

    fn on_chunk(&self, text: String) -> ChunkAction {
        ChunkAction::Emit(text.to_uppercase())
    }

    fn finish(&self, _reason: FinishReason) -> String {
        "!".into()
    }
}

export!(Shout);
