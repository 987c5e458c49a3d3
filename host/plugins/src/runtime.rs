//! The wasmtime engine, the compiled-artifact cache and plugin loading.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::post_process::PostProcessPlugin;
use crate::sampler::SamplerPlugin;
use crate::template::TemplatePlugin;
use crate::{Contract, PluginError, PluginKind, Vocabulary};

/// How often the deadline clock ticks: the resolution of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(2);

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled artifacts are kept (`None`: compile on every load).
    pub cache_dir: Option<PathBuf>,
    /// Cap on a plugin instance's linear memory.
    pub memory_limit: usize,
    /// Longest a single plugin call may run.
    pub call_timeout: Duration,
    /// Plugin instances alive at once (one per running request and plugin).
    pub max_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            memory_limit: 64 << 20,
            call_timeout: Duration::from_millis(100),
            max_instances: 256,
        }
    }
}

/// The shared wasmtime engine and what every plugin is loaded with.
#[derive(Debug)]
pub struct Runtime {
    shared: Arc<Shared>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    compilations: AtomicU64,
}

/// What loaded plugins keep of the runtime to make stores and report errors.
#[derive(Debug)]
pub(crate) struct Shared {
    pub engine: Engine,
    pub config: RuntimeConfig,
    pub vocabulary: Arc<Vocabulary>,
    /// Deadline of one call, in clock ticks.
    pub deadline_ticks: u64,
}

/// A loaded plugin of any kind, ready to serve requests.
#[derive(Debug, Clone)]
pub enum Loaded {
    Template(Arc<TemplatePlugin>),
    Sampler(Arc<SamplerPlugin>),
    PostProcess(Arc<PostProcessPlugin>),
}

impl Loaded {
    pub fn info(&self) -> &crate::PluginInfo {
        match self {
            Loaded::Template(p) => p.info(),
            Loaded::Sampler(p) => p.info(),
            Loaded::PostProcess(p) => p.info(),
        }
    }

    pub fn kind(&self) -> PluginKind {
        self.info().kind
    }

    /// Calls into this version so far.
    pub fn metrics(&self) -> crate::MetricsSnapshot {
        match self {
            Loaded::Template(p) => p.metrics(),
            Loaded::Sampler(p) => p.metrics(),
            Loaded::PostProcess(p) => p.metrics(),
        }
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig, vocabulary: Arc<Vocabulary>) -> Result<Runtime, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .max_memory_size(config.memory_limit);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Plugins make plain synchronous calls: without component-model
            // concurrency each call costs a third as much.
            .concurrency_support(false)
            // A reservation the size of the cap keeps the pool's address space
            // proportionate; bounds checks stay cheap.
            .memory_reservation(config.memory_limit as u64)
            .memory_guard_size(64 << 10);
        let engine = Engine::new(&wasm).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kiln-plugin-clock".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Runtime(format!("starting the deadline clock: {e}")))?
        };
        // One tick more than the timeout: the call may start just before a tick.
        let deadline_ticks = (config.call_timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1;
        let shared = Arc::new(Shared { engine, config, vocabulary, deadline_ticks });
        Ok(Runtime { shared, ticker: Some((stop, ticker)), compilations: AtomicU64::new(0) })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// Components compiled by this runtime (loads served from the artifact
    /// cache do not count).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Loads, validates and prepares the component at `path`.
    pub fn load(&self, path: &Path) -> Result<Loaded, PluginError> {
        let bytes = std::fs::read(path)
            .map_err(|e| PluginError::Read { path: path.display().to_string(), message: e.to_string() })?;
        self.load_bytes(&path.display().to_string(), &bytes)
    }

    /// Loads a component from memory; `origin` names it in errors.
    pub fn load_bytes(&self, origin: &str, bytes: &[u8]) -> Result<Loaded, PluginError> {
        let invalid = |message: String| PluginError::Invalid { path: origin.to_string(), message };
        let sha256 = hex::encode(Sha256::digest(bytes));
        let component = self.compile(&sha256, bytes).map_err(|e| invalid(format!("{e:#}")))?;
        let shared = self.shared.clone();
        let Some((kind, contract)) = kind_of(&shared.engine, &component) else {
            return Err(invalid(
                "it exports none of kiln's plugin interfaces (template, sampler, post-process) \
                 at a contract version this host serves (0.1.0, 0.2.0)"
                    .into(),
            ));
        };
        let loaded = match kind {
            PluginKind::Template => {
                TemplatePlugin::new(shared, component, contract, sha256).map(|p| Loaded::Template(Arc::new(p)))
            }
            PluginKind::Sampler => {
                SamplerPlugin::new(shared, component, contract, sha256).map(|p| Loaded::Sampler(Arc::new(p)))
            }
            PluginKind::PostProcess => {
                PostProcessPlugin::new(shared, component, contract, sha256).map(|p| Loaded::PostProcess(Arc::new(p)))
            }
        };
        loaded.map_err(|e| invalid(format!("{e:#}")))
    }

    /// Compiles, or loads the artifact a previous compile left in the cache.
    ///
    /// An artifact is native code loaded as is, so the cache trusts nothing
    /// but what it can check: the directory is this user's alone (0700),
    /// the name binds the source's sha256 and the engine's compatibility
    /// hash (wasmtime's version and every setting that shapes the code),
    /// and the file starts with the sha256 of the rest, recorded when it was
    /// written, so a truncated, corrupted or swapped-in body is recompiled.
    fn compile(&self, sha256: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let engine = &self.shared.engine;
        let dir = self.shared.config.cache_dir.as_deref().filter(|dir| match private_dir(dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "not caching compiled plugins: the cache directory cannot be made private");
                false
            }
        });
        let Some(dir) = dir else {
            self.compilations.fetch_add(1, Ordering::Relaxed);
            return Component::new(engine, bytes);
        };
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let artifact = dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
        if let Ok(stored) = std::fs::read(&artifact) {
            match verified(&stored) {
                // SAFETY: the body is what `Component::serialize` of an engine
                // with the same compatibility hash (it is in the name) wrote
                // into this user's private directory: its digest, recorded
                // then, matches.
                Some(body) => match unsafe { Component::deserialize(engine, body) } {
                    Ok(component) => return Ok(component),
                    Err(e) => {
                        tracing::warn!(error = %e, path = %artifact.display(), "unusable cached artifact; recompiling")
                    }
                },
                None => tracing::warn!(path = %artifact.display(), "cached artifact fails its digest; recompiling"),
            }
        }
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(engine, bytes)?;
        let body = component.serialize()?;
        let stored = [Sha256::digest(&body).as_slice(), &body].concat();
        if let Err(e) = crate::write_atomically(&artifact, &stored) {
            tracing::warn!(error = %e, path = %artifact.display(), "cannot cache the compiled plugin");
        }
        Ok(component)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some((stop, ticker)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = ticker.join();
        }
    }
}

/// The body of a cached artifact whose leading sha256 matches it.
fn verified(stored: &[u8]) -> Option<&[u8]> {
    let (digest, body) = stored.split_at_checked(32)?;
    (Sha256::digest(body).as_slice() == digest).then_some(body)
}

/// Creates `dir` if need be and makes it this user's alone: another user
/// able to write there could plant native code.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(dir)?.permissions().mode() & 0o777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Which of kiln's interfaces the component exports.
fn kind_of(engine: &Engine, component: &Component) -> Option<(PluginKind, Contract)> {
    let ty = component.component_type();
    ty.exports(engine).find_map(|(name, _)| {
        let name = name.strip_prefix("kiln:plugin/")?;
        let contract = Contract::of_export(name)?;
        let kind = match name.split('@').next()? {
            "template" => PluginKind::Template,
            "sampler" => PluginKind::Sampler,
            "post-process" => PluginKind::PostProcess,
            _ => return None,
        };
        Some((kind, contract))
    })
}
