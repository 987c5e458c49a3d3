//! `kiln.toml`: the configuration file of `kiln serve` and `kiln config
//! check`. It holds the server's settings (`[server]`; a flag or `KILN_*`
//! variable overrides each, see `serve::settings`), API keys and the default
//! limits, the async task store and its webhooks, the Redis that replicas
//! share, the plugin settings and the named pipelines. Unknown keys and bad
//! values are errors that name the key; relative paths are from the file's
//! folder.
//!
//! ```toml
//! [server]
//! port = 8080
//! admin = "none"               # loopback (the default), anyone or none
//!
//! [[keys]]                     # `kiln keys create` prints an entry
//! name = "ci"
//! sha256 = "<hex digest>"
//! scopes = ["generate"]
//!
//! [limits]                     # for keys that set none of their own
//! requests_per_minute = 600
//!
//! [tasks]
//! path = "tasks.sqlite3"
//!
//! [redis]                      # tasks, limits and cached answers, shared
//! url = "redis://127.0.0.1:6379/"
//!
//! [plugins]
//! dir = "plugins"              # <name>.wasm files, watched for changes
//! default_pipeline = "default"
//!
//! [pipelines.safe]
//! template = "chat-template"
//! sampler = "default-sampler"
//! post = ["redact"]
//! config.redact = { }          # per-plugin key/value configuration
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_access::KeyConfig;
use kiln_pipeline::{PipelineSpec, PluginsConfig};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `kiln serve`'s settings; a flag or `KILN_*` variable overrides each.
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub plugins: PluginsSection,
    /// Named pipelines, on top of the built-in `default` and `native`.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineSpec>,
    /// API keys (`kiln keys create` prints an entry).
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Limits of keys that set none of their own.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Async generation tasks.
    #[serde(default)]
    pub tasks: TasksSection,
    /// Redis, shared by replicas: tasks, rate limits, cached answers.
    #[serde(default)]
    pub redis: RedisSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://[user:password@]host[:port][/db]`; set, it makes the parts
    /// below shared (each can be turned off).
    pub url: Option<String>,
    /// Put before every key (default `kiln:`), so deployments can share one Redis.
    pub prefix: Option<String>,
    /// Async tasks in Redis instead of SQLite (default true).
    pub tasks: Option<bool>,
    /// Rate limits held across replicas (default true).
    pub rate_limits: Option<bool>,
    /// Cached answers served by every replica (default true).
    pub cache: Option<bool>,
    /// Seconds a running task's claim lasts unrenewed before another
    /// replica takes it over (default 30; renewed every third of it).
    pub lease_secs: Option<u64>,
}

impl RedisSection {
    pub fn lease(&self) -> Result<Duration> {
        let secs = self.lease_secs.unwrap_or(30);
        anyhow::ensure!((1..=3600).contains(&secs), "redis.lease_secs must be 1 to 3600, got {secs}");
        Ok(Duration::from_secs(secs))
    }

    pub fn prefix(&self) -> String {
        self.prefix.clone().unwrap_or_else(|| "kiln:".into())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksSection {
    /// The SQLite file (relative paths: from the config file's folder).
    pub path: Option<PathBuf>,
    /// Tasks generated at once (default 4).
    pub workers: Option<usize>,
    /// Seconds an ended task is kept (default 86400).
    pub retention_secs: Option<u64>,
    /// Tasks a crashed process left running: `requeue` (default) or `fail`.
    pub on_restart: Option<kiln_tasks::OnRestart>,
    /// The HMAC-SHA256 key signing webhook bodies (`X-Kiln-Signature`) of
    /// keys without their own `webhook_secret`.
    pub webhook_secret: Option<kiln_access::Secret>,
    /// Let webhooks reach loopback, link-local and private addresses (default false).
    pub allow_private_webhooks: Option<bool>,
    /// Delivery attempts per task, the first included (default 5).
    pub webhook_max_attempts: Option<u32>,
    /// Deliveries in flight at most, on threads of their own (default 4).
    pub webhook_workers: Option<usize>,
    /// Seconds one delivery attempt may take (default 10).
    pub webhook_timeout_secs: Option<u64>,
    /// Tasks waiting for a worker, all keys together; past it 503 (default 1000).
    pub max_pending: Option<u64>,
    /// Tasks waiting for a worker per API key; past it 429 (default 200).
    pub max_pending_per_key: Option<u64>,
    /// Seconds a task may wait for a worker before it fails (default 3600).
    pub pending_ttl_secs: Option<u64>,
}

impl TasksSection {
    pub fn config(&self) -> Result<kiln_server::TaskConfig> {
        let defaults = kiln_server::TaskConfig::default();
        let workers = self.workers.unwrap_or(defaults.workers);
        anyhow::ensure!((1..=256).contains(&workers), "tasks.workers must be 1 to 256, got {workers}");
        let hooks = defaults.webhooks;
        let max_attempts = self.webhook_max_attempts.unwrap_or(hooks.max_attempts);
        anyhow::ensure!((1..=20).contains(&max_attempts), "tasks.webhook_max_attempts must be 1 to 20");
        let webhook_workers = self.webhook_workers.unwrap_or(hooks.workers);
        anyhow::ensure!((1..=64).contains(&webhook_workers), "tasks.webhook_workers must be 1 to 64");
        let timeout = self.webhook_timeout_secs.map_or(hooks.timeout, Duration::from_secs);
        anyhow::ensure!((1..=300).contains(&timeout.as_secs()), "tasks.webhook_timeout_secs must be 1 to 300");
        let max_pending = self.max_pending.unwrap_or(defaults.max_pending);
        let max_pending_per_key = self.max_pending_per_key.unwrap_or(defaults.max_pending_per_key);
        anyhow::ensure!(max_pending >= 1, "tasks.max_pending must be at least 1");
        anyhow::ensure!(
            (1..=max_pending).contains(&max_pending_per_key),
            "tasks.max_pending_per_key must be 1 to tasks.max_pending ({max_pending})"
        );
        let pending_ttl = self.pending_ttl_secs.map_or(defaults.pending_ttl, Duration::from_secs);
        anyhow::ensure!(pending_ttl.as_secs() >= 1, "tasks.pending_ttl_secs must be at least 1");
        Ok(kiln_server::TaskConfig {
            workers,
            retention: self.retention_secs.map_or(defaults.retention, Duration::from_secs),
            on_restart: self.on_restart.unwrap_or(defaults.on_restart),
            heartbeat: defaults.heartbeat,
            webhooks: kiln_server::WebhookConfig {
                secret: self.webhook_secret.clone(),
                allow_private: self.allow_private_webhooks.unwrap_or(hooks.allow_private),
                max_attempts,
                first_retry: hooks.first_retry,
                workers: webhook_workers,
                timeout,
            },
            max_pending,
            max_pending_per_key,
            pending_ttl,
            sweep_every: defaults.sweep_every.min(pending_ttl),
        })
    }
}

/// The same names as `kiln serve`'s flags, with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// A local GGUF file (relative paths: from the config file's folder).
    pub model: Option<PathBuf>,
    pub model_id: Option<String>,
    pub max_context: Option<usize>,
    pub max_batch: Option<usize>,
    pub max_queue: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub prefix_cache_mib: Option<usize>,
    pub kv_cache_mib: Option<std::num::NonZeroUsize>,
    /// `f16` or `f32`.
    #[serde(default, deserialize_with = "from_str")]
    pub kv_cache_type: Option<kiln_model::KvType>,
    pub drain_timeout_secs: Option<u64>,
    pub drain_grace_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub cache_mib: Option<usize>,
    pub cache_ttl_secs: Option<u64>,
    pub admin: Option<kiln_access::AdminAccess>,
    /// `/metrics` without a key (default true).
    pub public_metrics: Option<bool>,
    /// Web origins browsers may call from (`https://app.example`): CORS,
    /// and not refused as cross-site without API keys.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub stream_stall_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub header_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// The plugin directory (relative paths: from the config file's folder).
    pub dir: Option<PathBuf>,
    /// Reload plugin files when they change (default true).
    pub watch: Option<bool>,
    pub default_pipeline: Option<String>,
    /// Cap on one plugin instance's memory.
    pub memory_limit_mib: Option<usize>,
    /// Longest one plugin call may run.
    pub call_timeout_ms: Option<u64>,
    /// How new versions are compiled: `tiered` (default), `optimized`, `baseline`.
    #[serde(default, deserialize_with = "from_str")]
    pub compiler: Option<kiln_pipeline::Compiler>,
    /// Canaries: their default share and when they are rolled back.
    #[serde(default)]
    pub rollout: kiln_pipeline::RolloutConfig,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: FileConfig = toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        if let Some(base) = path.parent() {
            for relative in [&mut config.plugins.dir, &mut config.server.model, &mut config.tasks.path] {
                if let Some(p) = relative.as_mut() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(config)
    }

    /// The default limits, checked.
    pub fn limits(&self) -> Result<kiln_access::Limits> {
        let l = &self.limits;
        anyhow::ensure!(
            l.requests_per_minute != Some(0) && l.tokens_per_minute != Some(0),
            "limits: a limit of 0 would refuse every request; leave it out for no limit"
        );
        Ok(kiln_access::Limits { requests_per_minute: l.requests_per_minute, tokens_per_minute: l.tokens_per_minute })
    }

    /// The plugin host's configuration; `dir` from the command line wins.
    pub fn plugins(&self, dir: Option<PathBuf>, cache_dir: PathBuf) -> Result<PluginsConfig> {
        let defaults = PluginsConfig::default();
        let p = &self.plugins;
        let mut runtime = defaults.runtime.clone();
        runtime.cache_dir = Some(cache_dir);
        if let Some(mib) = p.memory_limit_mib {
            anyhow::ensure!((1..=4096).contains(&mib), "plugins.memory_limit_mib must be 1 to 4096, got {mib}");
            runtime.memory_limit = mib << 20;
        }
        if let Some(ms) = p.call_timeout_ms {
            anyhow::ensure!((1..=60_000).contains(&ms), "plugins.call_timeout_ms must be 1 to 60000, got {ms}");
            runtime.call_timeout = Duration::from_millis(ms);
        }
        if let Some(compiler) = p.compiler {
            runtime.compiler = compiler;
        }
        Ok(PluginsConfig {
            dir: dir.or_else(|| p.dir.clone()),
            watch: p.watch.unwrap_or(defaults.watch),
            runtime,
            pipelines: self.pipelines.clone(),
            default_pipeline: p.default_pipeline.clone().unwrap_or(defaults.default_pipeline),
            rollout: {
                p.rollout.check().map_err(|e| anyhow::anyhow!(e))?;
                p.rollout.clone()
            },
        })
    }
}

/// A value given as a string its type parses (`FromStr`).
fn from_str<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err: std::fmt::Display>,
{
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
}

impl FileConfig {
    /// Everything that can be checked without loading the model: keys,
    /// limits, plugin settings, and that every plugin a pipeline (or a key)
    /// names is built in or has a file in the plugin directory.
    pub fn check(&self) -> Result<String> {
        let keys = kiln_access::KeyStore::new(self.keys.clone())?;
        self.limits()?;
        self.tasks.config()?;
        self.redis.lease()?;
        if let Some(url) = &self.redis.url {
            redis::Client::open(url.as_str()).map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        }
        let plugins = self.plugins(None, PathBuf::new())?;
        for (name, spec) in &self.pipelines {
            kiln_pipeline::check_name(name).map_err(|e| anyhow::anyhow!("pipelines.{name}: {e}"))?;
            let stages = spec.template.iter().chain(&spec.sampler).chain(&spec.post);
            for plugin in stages {
                let built_in = kiln_pipeline::built_in_plugins().any(|b| b == plugin);
                let file = plugins.dir.as_ref().is_some_and(|d| d.join(format!("{plugin}.wasm")).is_file());
                anyhow::ensure!(
                    built_in || file,
                    "pipelines.{name}: {plugin:?} is neither built in nor a {plugin}.wasm in the plugin directory"
                );
            }
        }
        let defined = |p: &str| {
            self.pipelines.contains_key(p)
                || [kiln_pipeline::DEFAULT_PIPELINE, kiln_pipeline::NATIVE_PIPELINE].contains(&p)
        };
        anyhow::ensure!(
            defined(&plugins.default_pipeline),
            "plugins.default_pipeline: {:?} is not defined",
            plugins.default_pipeline
        );
        for (i, key) in self.keys.iter().enumerate() {
            if let Some(p) = key.allowed_pipelines().find(|p| !defined(p)) {
                anyhow::bail!("keys[{i}] ({}): pipeline {p:?} is not defined", key.name);
            }
        }
        Ok(format!(
            "{} keys, {} pipelines, plugin directory {}",
            keys.keys().len(),
            self.pipelines.len() + 2,
            plugins.dir.map_or("none".into(), |d| d.display().to_string())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = toml::from_str::<FileConfig>("[pipelines.x]\nsampler = \"a\"\nsamplr = \"b\"\n").unwrap_err();
        assert!(err.to_string().contains("samplr"), "{err}");
        let err = toml::from_str::<FileConfig>("[plugins]\ndri = \"p\"\n").unwrap_err();
        assert!(err.to_string().contains("dri"), "{err}");
    }

    #[test]
    fn server_settings_parse_and_unknown_ones_are_named() {
        let config: FileConfig = toml::from_str("[server]\nport = 9000\nadmin = \"none\"\n").unwrap();
        assert_eq!(config.server.port, Some(9000));
        assert_eq!(config.server.admin, Some(kiln_access::AdminAccess::Nobody));
        let err = toml::from_str::<FileConfig>("[server]\nprot = 1\n").unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        let err = toml::from_str::<FileConfig>("[server]\nport = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn check_names_what_is_wrong() {
        let config: FileConfig = toml::from_str("[pipelines.p]\npost = [\"nowhere\"]\n").unwrap();
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("pipelines.p") && err.contains("nowhere"), "{err}");
        let config: FileConfig = toml::from_str("[pipelines.p]\npost = [\"redact\"]\n").unwrap();
        assert!(config.check().unwrap().contains("3 pipelines"));
        let config: FileConfig = toml::from_str("[[keys]]\nname = \"a\"\nsha256 = \"00\"\n").unwrap();
        assert!(config.check().unwrap_err().to_string().contains("keys[0] (a)"));
    }

    #[test]
    fn task_queue_and_webhook_settings_parse_and_bad_ones_are_named() {
        let text = "[tasks]\nmax_pending = 50\nmax_pending_per_key = 5\npending_ttl_secs = 30\n\
                    webhook_workers = 2\nwebhook_timeout_secs = 3\n";
        let config = toml::from_str::<FileConfig>(text).unwrap().tasks.config().unwrap();
        assert_eq!((config.max_pending, config.max_pending_per_key), (50, 5));
        assert_eq!((config.pending_ttl.as_secs(), config.sweep_every.as_secs()), (30, 30));
        assert_eq!((config.webhooks.workers, config.webhooks.timeout.as_secs()), (2, 3));
        let over = toml::from_str::<FileConfig>("[tasks]\nmax_pending = 5\nmax_pending_per_key = 6\n").unwrap();
        let err = over.tasks.config().unwrap_err().to_string();
        assert!(err.contains("max_pending_per_key"), "{err}");
        let none = toml::from_str::<FileConfig>("[tasks]\nwebhook_workers = 0\n").unwrap();
        assert!(none.tasks.config().unwrap_err().to_string().contains("webhook_workers"));
    }

    #[test]
    fn redis_settings_parse_and_bad_ones_are_named() {
        let config: FileConfig =
            toml::from_str("[redis]\nurl = \"redis://127.0.0.1:6379/\"\nlease_secs = 5\n").unwrap();
        assert_eq!(config.redis.lease().unwrap(), Duration::from_secs(5));
        assert_eq!(config.redis.prefix(), "kiln:");
        assert!(config.check().is_ok());
        let config: FileConfig = toml::from_str("[redis]\nlease_secs = 0\n").unwrap();
        assert!(config.check().unwrap_err().to_string().contains("redis.lease_secs"));
        let config: FileConfig = toml::from_str("[redis]\nurl = \"http://nope\"\n").unwrap();
        assert!(config.check().unwrap_err().to_string().contains("redis.url"));
        let err = toml::from_str::<FileConfig>("[redis]\nurll = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn pipelines_and_plugin_settings_parse() {
        let text = "[plugins]\ndir = \"p\"\ncall_timeout_ms = 50\n\n[pipelines.safe]\npost = [\"redact\"]\n\
                    config.redact = { mode = \"strict\" }\n";
        let config: FileConfig = toml::from_str(text).unwrap();
        let safe = &config.pipelines["safe"];
        assert_eq!(safe.post, ["redact"]);
        assert_eq!(safe.config["redact"]["mode"], "strict");
        let plugins = config.plugins(None, PathBuf::from("/cache")).unwrap();
        assert_eq!(plugins.runtime.call_timeout, Duration::from_millis(50));
        assert_eq!(plugins.dir.as_deref(), Some(Path::new("p")));
    }
}
