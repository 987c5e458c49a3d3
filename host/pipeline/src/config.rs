//! What operators configure: named pipelines and where plugins come from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_plugins::RuntimeConfig;
use serde::Deserialize;

/// The pipeline requests get when they name none (unless configured otherwise).
pub const DEFAULT_PIPELINE: &str = "default";
/// The pipeline with no plugins at all: template, sampling and stop strings
/// done natively by the host. Always defined; it cannot be redefined.
pub const NATIVE_PIPELINE: &str = "native";

/// One named pipeline: plugin names for each stage (absent: the host's own).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Renders chat messages into the prompt (absent: the host's renderer).
    pub template: Option<String>,
    /// Steers every token (absent: the engine's sampler alone).
    pub sampler: Option<String>,
    /// Rewrites the output, in order.
    #[serde(default)]
    pub post: Vec<String>,
    /// Each plugin's configuration in this pipeline: plugin name, then key
    /// and value (the plugin contract's `config`).
    #[serde(default)]
    pub config: BTreeMap<String, BTreeMap<String, String>>,
}

impl PipelineSpec {
    /// The first-party default: the model's template and the request's
    /// parameters, both as plugins.
    pub fn first_party_default() -> Self {
        PipelineSpec {
            template: Some("chat-template".into()),
            sampler: Some("default-sampler".into()),
            ..PipelineSpec::default()
        }
    }

    /// Every plugin this pipeline uses, with the kind it needs.
    pub(crate) fn stages(&self) -> impl Iterator<Item = (&str, kiln_plugins::PluginKind)> {
        use kiln_plugins::PluginKind;
        let template = self.template.iter().map(|n| (n.as_str(), PluginKind::Template));
        let sampler = self.sampler.iter().map(|n| (n.as_str(), PluginKind::Sampler));
        let post = self.post.iter().map(|n| (n.as_str(), PluginKind::PostProcess));
        template.chain(sampler).chain(post)
    }
}

/// Everything the plugin host starts from.
#[derive(Clone, Debug)]
pub struct PluginsConfig {
    /// Plugins as `<name>.wasm` files, watched for changes (hot reload) and
    /// written by the admin API's uploads. `None`: the built-in plugins only.
    pub dir: Option<PathBuf>,
    /// Reload changed files in `dir` on their own (else only through the admin API).
    pub watch: bool,
    pub runtime: RuntimeConfig,
    /// Pipelines by name, on top of `default` and `native`.
    pub pipelines: BTreeMap<String, PipelineSpec>,
    /// What requests that name no pipeline get.
    pub default_pipeline: String,
    /// How canaries start and when they are rolled back.
    pub rollout: crate::RolloutConfig,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: None,
            watch: true,
            runtime: RuntimeConfig::default(),
            pipelines: BTreeMap::new(),
            default_pipeline: DEFAULT_PIPELINE.into(),
            rollout: crate::RolloutConfig::default(),
        }
    }
}

/// [`check_name`]'s rule as a regular expression (for the API's schema).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$";

/// Plugin and pipeline names: what can be a file name in any directory.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid name: use 1 to 64 letters, digits, '-' or '_', not starting with '-'"))
    }
}
