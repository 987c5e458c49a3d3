//! kiln-pipeline: the request pipeline between the HTTP layer and the
//! engine. Plugins (loaded by `kiln-plugins`) are grouped into named
//! pipelines — a template, a sampler, a list of post-processors — and each
//! request takes a snapshot of the one it names: the versions it starts
//! with are the versions it finishes with, whatever is reloaded meanwhile.
//!
//! The engine sees sampler plugins through its own [`SamplingPolicy`] trait
//! and knows nothing of WebAssembly; the HTTP layer sees [`Resolved`]
//! pipelines and [`PipelineError`]s.

#![forbid(unsafe_code)]

mod config;
mod policy;
mod post;
mod registry;
mod resolved;
mod rollout;
mod tools;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_engine::{SamplingParams, SamplingPolicy};
use kiln_plugins::{Loaded, PluginKind, PostProcessSession, Runtime};
use kiln_tokenizer::Tokenizer;

// What the HTTP layer needs of the plugin runtime, so that it depends on the
// pipeline alone.
pub use kiln_plugins::{
    Compiler, FinishReason as PostFinishReason, MetricsSnapshot, PluginError, PluginInfo, RuntimeConfig, Tier,
    built_plugins_dir, first_party,
};

pub use config::{DEFAULT_PIPELINE, NAME_PATTERN, NATIVE_PIPELINE, PipelineSpec, PluginsConfig, check_name};
pub use policy::{PluginPolicy, plugin_params};
pub use post::{PostChain, PostOutput};
pub use registry::{LoadError, PluginEntry, Source};
use resolved::Stage;
pub use resolved::{Conversation, ModelTemplate, OutputSetup, RenderedPrompt, Resolved};
pub use rollout::{CANARY_DIR, Canary, Rollback, RolloutConfig, Routing, Sticky, verdict};
pub use tools::{CallConstraint, call_constraint};
pub use watch::DirWatcher;

use registry::Registry;

/// The plugin a `response_format: {"type": "json_object"}` request samples with.
pub const JSON_MODE: &str = "json-mode";
/// The built-in sampler behind `response_format: json_schema`, and behind a
/// call the request forces (`tool_choice` `required` or a named function).
pub const JSON_SCHEMA: &str = "json-schema";
/// The built-in post-processor that parses the model's tool calls.
pub const TOOL_CALLS: &str = "tool-calls";

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("unknown pipeline {name:?}; this server has {known}")]
    UnknownPipeline { name: String, known: String },
    #[error("no plugin is named {0:?}")]
    UnknownPlugin(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("there is no plugin directory to load files from")]
    NoPluginDir,
    #[error("pipeline {pipeline:?} uses {name} as its {needed} plugin, but this is a {found} plugin")]
    WrongKind { name: String, pipeline: String, needed: PluginKind, found: PluginKind },
    #[error("plugin {name} was not loaded: {message}")]
    LoadFailed { name: String, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("pipeline configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// The plugins of one model and the pipelines made of them.
pub struct PluginHost {
    registry: Registry,
    pipelines: BTreeMap<String, Arc<CompiledSpec>>,
    default_pipeline: String,
    dir: Option<PathBuf>,
    watch: bool,
    rollout: RolloutConfig,
    /// Hashed with request ids to pick a canary's requests.
    routing_salt: [u8; 16],
    // Kept last: plugins hold the engine, the runtime owns its deadline clock.
    runtime: Runtime,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").field("pipelines", &self.pipelines.keys()).finish_non_exhaustive()
    }
}

/// One plugin's configuration in one pipeline, as the contract passes it.
type PluginConfig = Arc<Vec<(String, String)>>;

/// A pipeline as configured, with each plugin's configuration ready to pass.
#[derive(Debug)]
struct CompiledSpec {
    spec: PipelineSpec,
    configs: BTreeMap<String, PluginConfig>,
}

impl PluginHost {
    /// Loads the built-in plugins (compiled once, then from the runtime's
    /// cache directory), then every `<name>.wasm` in the plugin directory, and
    /// checks every pipeline against what loaded.
    pub fn new(tokenizer: &Tokenizer, config: PluginsConfig) -> Result<PluginHost, PipelineError> {
        config.rollout.check().map_err(PipelineError::Config)?;
        let runtime = Runtime::new(config.runtime.clone(), Arc::new(vocabulary(tokenizer)))?;
        let registry = Registry::new(&runtime)?;
        let mut pipelines = BTreeMap::new();
        pipelines.insert(DEFAULT_PIPELINE.to_string(), PipelineSpec::first_party_default());
        pipelines.insert(NATIVE_PIPELINE.to_string(), PipelineSpec::default());
        for (name, spec) in config.pipelines {
            check_name(&name).map_err(|e| PipelineError::Config(format!("pipelines.{name}: {e}")))?;
            if name == NATIVE_PIPELINE {
                return Err(PipelineError::Config(format!("pipelines.{NATIVE_PIPELINE} is built in (no plugins)")));
            }
            pipelines.insert(name, spec);
        }
        let pipelines = pipelines.into_iter().map(|(name, spec)| (name, Arc::new(compile(spec)))).collect();
        // The watcher reports absolute (and, on macOS, resolved) paths.
        let dir = match config.dir {
            Some(dir) => {
                let io = |e: std::io::Error| PipelineError::Io(format!("plugin directory {}: {e}", dir.display()));
                std::fs::create_dir_all(dir.join(CANARY_DIR)).map_err(io)?;
                Some(dir.canonicalize().map_err(io)?)
            }
            None => None,
        };
        let host = PluginHost {
            registry,
            pipelines,
            default_pipeline: config.default_pipeline,
            dir,
            watch: config.watch,
            rollout: config.rollout,
            routing_salt: rollout::routing_salt(),
            runtime,
        };
        if !host.pipelines.contains_key(&host.default_pipeline) {
            return Err(PipelineError::Config(format!(
                "default_pipeline {:?} is not defined; defined: {}",
                host.default_pipeline,
                host.pipeline_names()
            )));
        }
        host.load_dir()?;
        host.check_pipelines()?;
        Ok(host)
    }

    /// Blocks until every version loaded so far serves from its optimized
    /// build (for benchmarks: the code that serves in the long run).
    pub fn wait_for_optimized_builds(&self) {
        self.runtime.wait_for_optimized_builds();
    }

    /// Every plugin a pipeline names is loaded, and of the kind it needs.
    fn check_pipelines(&self) -> Result<(), PipelineError> {
        let plugins = self.registry.current.load();
        for (pipeline, compiled) in &self.pipelines {
            for (name, kind) in compiled.spec.stages() {
                let found = plugins.get(name).and_then(|e| e.loaded.as_ref()).map(Loaded::kind);
                match found {
                    Some(found) if found == kind => {}
                    Some(found) => {
                        return Err(PipelineError::WrongKind {
                            name: name.into(),
                            pipeline: pipeline.clone(),
                            needed: kind,
                            found,
                        });
                    }
                    None => {
                        return Err(PipelineError::Config(format!(
                            "pipelines.{pipeline} uses {name:?}, which is neither built in nor a loadable \
                             {name}.wasm in the plugin directory"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Pipelines using `name`, with the kind each needs of it.
    pub(crate) fn uses(&self, name: &str) -> Vec<(String, PluginKind)> {
        let mut uses: Vec<_> = self
            .pipelines
            .iter()
            .flat_map(|(p, c)| c.spec.stages().filter(|(n, _)| *n == name).map(|(_, k)| (p.clone(), k)))
            .collect();
        if name == JSON_MODE {
            uses.push(("response_format json_object".into(), PluginKind::Sampler));
        }
        if name == JSON_SCHEMA {
            uses.push(("response_format json_schema".into(), PluginKind::Sampler));
        }
        if name == TOOL_CALLS {
            uses.push(("tools".into(), PluginKind::PostProcess));
        }
        uses
    }

    pub fn default_pipeline(&self) -> &str {
        &self.default_pipeline
    }

    /// Pipelines by name.
    pub fn pipelines(&self) -> impl Iterator<Item = (&str, &PipelineSpec)> {
        self.pipelines.iter().map(|(n, c)| (n.as_str(), &c.spec))
    }

    fn pipeline_names(&self) -> String {
        self.pipelines.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }

    /// Whether the plugin directory is to be watched (see [`PluginHost::watch`]).
    pub fn watches(&self) -> bool {
        self.watch && self.dir.is_some()
    }

    /// The plugin directory, when there is one.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }

    /// A snapshot of the named pipeline (`None`: the default) on its stable
    /// versions.
    pub fn resolve(&self, name: Option<&str>) -> Result<Resolved, PipelineError> {
        self.resolve_for(name, None)
    }

    /// A snapshot of the named pipeline (`None`: the default) for one
    /// request: each plugin with a canary is the canary or the stable
    /// version, as `routing` falls. Canaries due a rollback are rolled
    /// back first.
    pub fn resolve_for(&self, name: Option<&str>, routing: Option<&Routing<'_>>) -> Result<Resolved, PipelineError> {
        let name = name.unwrap_or(&self.default_pipeline);
        let compiled = self
            .pipelines
            .get(name)
            .ok_or_else(|| PipelineError::UnknownPipeline { name: name.into(), known: self.pipeline_names() })?;
        if routing.is_some() {
            self.judge_canaries(compiled.spec.stages().map(|(n, _)| n));
        }
        let plugins = self.registry.current.load();
        let loaded = |plugin: &str| -> Result<(Loaded, PluginConfig), PipelineError> {
            let entry = plugins.get(plugin);
            let canary = entry
                .and_then(|e| e.canary.as_ref())
                .filter(|c| routing.is_some_and(|r| c.serves(plugin, r, &self.routing_salt)));
            let loaded = match canary {
                Some(canary) => Some(canary.loaded.clone()),
                None => entry.and_then(|e| e.loaded.clone()),
            };
            let loaded = loaded.ok_or_else(|| PipelineError::UnknownPlugin(plugin.into()))?;
            Ok((loaded, compiled.configs.get(plugin).cloned().unwrap_or_default()))
        };
        let mut resolved = Resolved { template: None, sampler: None, post: Vec::new() };
        // Kinds were checked when each version was loaded; a mismatch here
        // would be a registry bug, reported rather than ignored.
        let mismatch = |plugin: &str, needed, found: &Loaded| PipelineError::WrongKind {
            name: plugin.into(),
            pipeline: name.into(),
            needed,
            found: found.kind(),
        };
        if let Some(t) = &compiled.spec.template {
            match loaded(t)? {
                (Loaded::Template(plugin), config) => resolved.template = Some(Stage { plugin, config }),
                (other, _) => return Err(mismatch(t, PluginKind::Template, &other)),
            }
        }
        if let Some(s) = &compiled.spec.sampler {
            match loaded(s)? {
                (Loaded::Sampler(plugin), config) => resolved.sampler = Some(Stage { plugin, config }),
                (other, _) => return Err(mismatch(s, PluginKind::Sampler, &other)),
            }
        }
        for p in &compiled.spec.post {
            match loaded(p)? {
                (Loaded::PostProcess(plugin), config) => resolved.post.push(Stage { plugin, config }),
                (other, _) => return Err(mismatch(p, PluginKind::PostProcess, &other)),
            }
        }
        Ok(resolved)
    }

    /// The json-mode sampler, for `response_format: {"type": "json_object"}`:
    /// its output is one JSON object that closes within `max_tokens`.
    pub fn json_policy(
        &self,
        params: &SamplingParams,
        prompt: &[u32],
        max_tokens: usize,
    ) -> Result<Box<dyn SamplingPolicy>, PipelineError> {
        let plugins = self.registry.current.load();
        let Some(Loaded::Sampler(json)) = plugins.get(JSON_MODE).and_then(|e| e.loaded.clone()) else {
            return Err(PipelineError::UnknownPlugin(JSON_MODE.into()));
        };
        let config = vec![("max_tokens".to_string(), max_tokens.to_string())];
        let session = json.start(plugin_params(params), prompt, &config)?;
        Ok(Box::new(PluginPolicy::new(session, params.clone())))
    }

    /// The json-schema sampler, for `response_format: {"type": "json_schema"}`:
    /// its output validates against `schema` (JSON text) and closes within
    /// `max_tokens`. A schema it cannot take is refused here, by the
    /// plugin, naming the keyword.
    pub fn json_schema_policy(
        &self,
        params: &SamplingParams,
        prompt: &[u32],
        max_tokens: usize,
        schema: &str,
    ) -> Result<Box<dyn SamplingPolicy>, PipelineError> {
        self.schema_policy(params, prompt, max_tokens, vec![("schema".to_string(), schema.to_string())])
    }

    /// The json-schema sampler forcing one tool call: `constraint`'s schema
    /// between its prefix and suffix (see [`call_constraint`]).
    pub fn tool_call_policy(
        &self,
        params: &SamplingParams,
        prompt: &[u32],
        max_tokens: usize,
        constraint: &CallConstraint,
    ) -> Result<Box<dyn SamplingPolicy>, PipelineError> {
        let config = vec![
            ("schema".to_string(), constraint.schema.clone()),
            ("prefix".to_string(), constraint.prefix.to_string()),
            ("suffix".to_string(), constraint.suffix.to_string()),
        ];
        self.schema_policy(params, prompt, max_tokens, config)
    }

    fn schema_policy(
        &self,
        params: &SamplingParams,
        prompt: &[u32],
        max_tokens: usize,
        mut config: Vec<(String, String)>,
    ) -> Result<Box<dyn SamplingPolicy>, PipelineError> {
        let plugins = self.registry.current.load();
        let Some(Loaded::Sampler(sampler)) = plugins.get(JSON_SCHEMA).and_then(|e| e.loaded.clone()) else {
            return Err(PipelineError::UnknownPlugin(JSON_SCHEMA.into()));
        };
        config.push(("max_tokens".to_string(), max_tokens.to_string()));
        let session = sampler.start(plugin_params(params), prompt, &config)?;
        Ok(Box::new(PluginPolicy::new(session, params.clone())))
    }

    /// The tool-call parser for one generation that offers tools: it goes
    /// first in the post-process chain (see [`Resolved::post_chain`]).
    pub fn tool_call_parser(&self, output: &OutputSetup<'_>) -> Result<PostProcessSession, PipelineError> {
        let plugins = self.registry.current.load();
        let Some(Loaded::PostProcess(parser)) = plugins.get(TOOL_CALLS).and_then(|e| e.loaded.clone()) else {
            return Err(PipelineError::UnknownPlugin(TOOL_CALLS.into()));
        };
        Ok(parser.start(&output.options(Vec::new()))?)
    }
}

fn compile(spec: PipelineSpec) -> CompiledSpec {
    let configs = spec
        .config
        .iter()
        .map(|(plugin, kv)| (plugin.clone(), Arc::new(kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect())))
        .collect();
    CompiledSpec { spec, configs }
}

/// The names of the plugins built into the binary.
pub fn built_in_plugins() -> impl Iterator<Item = &'static str> {
    registry::BUILT_IN.iter().map(|(name, _)| *name)
}

/// The model's vocabulary as sampler plugins see it.
pub fn vocabulary(tokenizer: &Tokenizer) -> kiln_plugins::Vocabulary {
    let tokens = (0..tokenizer.vocab_size() as u32).map(|id| tokenizer.token_bytes(id));
    kiln_plugins::Vocabulary::new(tokens, tokenizer.stop_token_ids().to_vec())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_host;
#[cfg(test)]
mod tests_rollout;
