//! kiln-sdk: write kiln pipeline plugins in Rust.
//!
//! A plugin is a WebAssembly component for one of three kinds, each a world
//! of the contract in `wit/` (the bindings here are generated from it):
//!
//! - a **template** ([`template::Template`]) renders a conversation into the
//!   prompt text;
//! - a **sampler** ([`sampler::Sampler`]) decides, before each token, how the
//!   host samples it: parameters, a sparse bias, an allowed set, forced
//!   tokens, stop, or a choice among the top candidates;
//! - a **post-process** ([`post_process::PostProcess`]) rewrites, holds back
//!   or stops the streamed text.
//!
//! Implement the trait, export it with one macro, and build with
//! `cargo build --release --target wasm32-wasip2`: the `.wasm` file is the
//! component. Test the logic natively with the helpers in [`testing`].
//!
//! The bindings target the contract `kiln:plugin@0.2.0`. Components built
//! with an SDK for 0.1.0 keep loading in the host as they are; to rebuild
//! one with this SDK, see the migration notes in `sdk/README.md`.
//!
//! # A complete sampler plugin
//!
//! `Cargo.toml`: `[lib] crate-type = ["cdylib", "rlib"]` and a dependency on
//! `kiln-sdk`. Then `src/lib.rs`:
//!
//! ```
//! use kiln_sdk::sampler::{Sampler, SamplingParams, StepPlan};
//! use kiln_sdk::{Config, vocabulary};
//!
//! /// Never lets the model end before `min_tokens` tokens.
//! pub struct MinLength {
//!     left: u32,
//! }
//!
//! impl Sampler for MinLength {
//!     fn new(_: SamplingParams, _: &[u32], config: &Config) -> Result<Self, String> {
//!         Ok(MinLength { left: config.parse_or("min_tokens", 16)? })
//!     }
//!
//!     fn step(&mut self, _last: Option<u32>) -> Result<StepPlan, String> {
//!         if self.left == 0 {
//!             return Ok(StepPlan::sample());
//!         }
//!         self.left -= 1;
//!         let vocab = vocabulary();
//!         Ok(StepPlan { bias: vocab.stop_ids().iter().map(|&id| (id, -100.0)).collect(), ..StepPlan::sample() })
//!     }
//! }
//!
//! kiln_sdk::export_sampler!(MinLength);
//!
//! # fn main() {
//! # use kiln_sdk::testing::{run_sampler, with_vocabulary};
//! # let vocab = kiln_sdk::Vocabulary::new(vec![b"a".to_vec(), b"<eos>".to_vec()], vec![1]);
//! # let out = with_vocabulary(vocab, || {
//! #     let mut s = MinLength::new(SamplingParams::default(), &[], &Config::default()).unwrap();
//! #     run_sampler(&mut s, |_| vec![0.0, 5.0], 20)
//! # });
//! # assert_eq!(out[..16], [0; 16]);
//! # }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod config;
pub mod post_process;
pub mod sampler;
pub mod template;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod tools;
pub mod trie;
mod vocabulary;

pub use config::Config;
pub use tools::{Tool, ToolCall, ToolChoice, ToolSyntax};
pub use vocabulary::{Vocabulary, vocabulary};

/// Who a plugin is, as the host shows it in errors, metrics and
/// `GET /v1/plugins`. The export macros fill it in from the plugin's
/// `Cargo.toml`; a plugin never builds one itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// The package name, e.g. `json-mode`.
    pub name: String,
    /// The package version (semver), e.g. `1.2.0`.
    pub version: String,
    /// The package `description`: one line saying what the plugin does.
    pub description: String,
}

impl PluginInfo {
    #[doc(hidden)]
    pub fn from_cargo(name: &str, version: &str, description: &str) -> Self {
        PluginInfo { name: name.into(), version: version.into(), description: description.into() }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
