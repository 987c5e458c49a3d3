//! kiln-plugins: the plugin runtime. Loads WebAssembly components written
//! against `wit/` and runs them under a deadline per call and a memory cap
//! per instance, on wasmtime.
//!
//! A new version serves from a fast baseline build at once; a second later
//! its optimized build is made on a thread of its own (`tiering`). The optimized
//! build is compiled once: the compiled artifact is cached on disk
//! by the file's sha256 and the engine's compatibility hash, so a restart (or
//! another replica sharing the cache) loads it in a millisecond. Each
//! request gets its own cheap instance (pre-instantiated, pooling
//! allocator): a plugin that traps, loops or exhausts its memory fails that
//! request only, with an error naming the plugin and its version.

mod legacy;
mod limits;
mod metrics;
mod post_process;
mod runtime;
mod sampler;
mod state;
mod template;
mod tiering;

use std::fmt;

pub use legacy::Contract;
pub use metrics::{MetricsSnapshot, PluginMetrics};
pub use post_process::{ChunkAction, Emitted, FinishReason, OutputOptions, PostProcessPlugin, PostProcessSession};
pub use runtime::{Loaded, Runtime, RuntimeConfig};
pub use sampler::{Candidate, SamplerPlugin, SamplerSession, SamplingParams, StepPlan};
pub use template::{ChatMessage, Rendered, TemplateInput, TemplatePlugin, Tool, ToolCall, ToolChoice, ToolSyntax};
pub use tiering::{Compiler, Tier};

/// Writes through a temporary file in the same folder and a rename, so a
/// reader (the plugin watcher, another replica sharing the folder) never
/// sees half a file. The folder is created if needed.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Not `<name>.wasm`: the watcher ignores it until the rename.
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Where `build.rs` put the first-party plugins (and the test guests) it
/// built from source.
pub fn built_plugins_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("KILN_BUILT_PLUGINS"))
}

/// The first-party plugins, built from source by `build.rs` and embedded in
/// the binary, so a server has them without a plugin directory.
pub mod first_party {
    macro_rules! embedded {
        ($file:literal) => {
            include_bytes!(concat!(env!("KILN_BUILT_PLUGINS"), "/", $file))
        };
    }
    pub const JSON_MODE: &[u8] = embedded!("json_mode.wasm");
    pub const JSON_SCHEMA: &[u8] = embedded!("json_schema.wasm");
    pub const DEFAULT_SAMPLER: &[u8] = embedded!("default_sampler.wasm");
    pub const CHAT_TEMPLATE: &[u8] = embedded!("chat_template.wasm");
    pub const STOP_SEQUENCES: &[u8] = embedded!("stop_sequences.wasm");
    pub const REDACT: &[u8] = embedded!("redact.wasm");
    pub const TOOL_CALLS: &[u8] = embedded!("tool_calls.wasm");
}

/// The three kinds of plugin, one WIT world each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginKind {
    Template,
    Sampler,
    PostProcess,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Template => "template",
            PluginKind::Sampler => "sampler",
            PluginKind::PostProcess => "post-process",
        })
    }
}

/// Who a plugin says it is, with the sha256 of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub kind: PluginKind,
    /// The contract version the component was built against.
    pub contract: Contract,
    /// Hex sha256 of the component file.
    pub sha256: String,
}

/// What a component's `info` call answers: name, version, description.
pub(crate) type Who = (String, String, String);

impl PluginInfo {
    /// Another build of the same bytes must say the same of itself.
    pub(crate) fn check_same(&self, (name, version, description): &Who) -> wasmtime::Result<()> {
        if (name, version, description) != (&self.name, &self.version, &self.description) {
            wasmtime::bail!("the optimized build says it is {name}@{version}, not {self}");
        }
        Ok(())
    }
}

impl fmt::Display for PluginInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// The model's vocabulary, as samplers see it through their host import:
/// every token's bytes laid end to end (built once, copied into each
/// sampler instance that asks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vocabulary {
    bytes: Vec<u8>,
    /// Where each token's bytes end in `bytes`.
    ends: Vec<u32>,
    stop_ids: Vec<u32>,
}

impl Vocabulary {
    pub fn new<T: AsRef<[u8]>>(tokens: impl IntoIterator<Item = T>, stop_ids: Vec<u32>) -> Self {
        let mut bytes = Vec::new();
        let ends = tokens
            .into_iter()
            .map(|t| {
                bytes.extend_from_slice(t.as_ref());
                bytes.len() as u32
            })
            .collect();
        Vocabulary { bytes, ends, stop_ids }
    }

    /// Valid ids are `0..len()`.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The bytes and the end offsets, as the contract's `token-table`.
    pub(crate) fn table(&self) -> (&[u8], &[u32]) {
        (&self.bytes, &self.ends)
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin file {path}: {message}")]
    Read { path: String, message: String },
    /// Not a component, not one of kiln's worlds, or failing its smoke call.
    #[error("{path} is not a usable kiln plugin: {message}")]
    Invalid { path: String, message: String },
    /// The plugin ran past its per-call deadline.
    #[error("plugin {plugin} exceeded its time limit of {limit_ms} ms")]
    Timeout { plugin: String, limit_ms: u64 },
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin {plugin} exceeded its memory limit of {limit_mib} MiB")]
    OutOfMemory { plugin: String, limit_mib: usize },
    /// The plugin trapped (a panic, an unreachable, a bad memory access).
    #[error("plugin {plugin} crashed: {message}")]
    Trap { plugin: String, message: String },
    /// The plugin answered, but with an error of its own or an answer the
    /// host cannot use (e.g. a token id outside the vocabulary).
    #[error("plugin {plugin} failed: {message}")]
    Refused { plugin: String, message: String },
    /// Every pooled plugin instance is in use (`max_instances`): retry shortly.
    #[error("plugin {plugin} has no free instance: all {instances} are in use")]
    Busy { plugin: String, instances: u32 },
    #[error("plugin runtime: {0}")]
    Runtime(String),
}

#[cfg(test)]
mod tests;
