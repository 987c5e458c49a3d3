//! The wasmtime engine, the compiled-artifact cache and plugin loading.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use crate::post_process::PostProcessPlugin;
use crate::sampler::SamplerPlugin;
use crate::template::TemplatePlugin;
use crate::tiering::{Compiler, Tier, TierUps, Upgrade};
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
    /// How new versions are compiled.
    pub compiler: Compiler,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            memory_limit: 64 << 20,
            call_timeout: Duration::from_millis(100),
            max_instances: 256,
            compiler: Compiler::Tiered,
        }
    }
}

/// The wasmtime engines and what every plugin is loaded with.
pub struct Runtime {
    shared: Arc<Shared>,
    /// Optimized builds of versions serving from their baseline build.
    tier_ups: Option<TierUps>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

/// What loaded plugins keep of the runtime to make stores and report errors.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Cranelift: optimized code, and the only builds that are cached.
    pub engine: Engine,
    /// Winch, where the compiler setting uses it: fast builds, slower code.
    pub baseline: Option<Engine>,
    pub config: RuntimeConfig,
    pub vocabulary: Arc<Vocabulary>,
    /// Deadline of one call, in clock ticks.
    pub deadline_ticks: u64,
    compilations: AtomicU64,
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

    /// Which build serves it now.
    pub fn tier(&self) -> Tier {
        match self {
            Loaded::Template(p) => p.tier(),
            Loaded::Sampler(p) => p.tier(),
            Loaded::PostProcess(p) => p.tier(),
        }
    }

    /// The plugin, for its optimized build to replace its code.
    fn upgradable(&self) -> Weak<dyn Upgrade> {
        match self {
            Loaded::Template(p) => Arc::downgrade(p) as Weak<dyn Upgrade>,
            Loaded::Sampler(p) => Arc::downgrade(p) as Weak<dyn Upgrade>,
            Loaded::PostProcess(p) => Arc::downgrade(p) as Weak<dyn Upgrade>,
        }
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
        let runtime_error = |e: wasmtime::Error| PluginError::Runtime(format!("{e:#}"));
        let baseline = match config.compiler {
            Compiler::Optimized => None,
            // Winch is complete on x86_64 only (its aarch64 backend is not).
            Compiler::Tiered if !cfg!(target_arch = "x86_64") => {
                tracing::info!("no baseline compiler on this architecture: plugins are compiled optimized only");
                None
            }
            Compiler::Baseline if !cfg!(target_arch = "x86_64") => {
                return Err(PluginError::Runtime(
                    "plugins.compiler = \"baseline\" needs x86_64 (wasmtime's Winch); use \"tiered\" or \"optimized\""
                        .into(),
                ));
            }
            Compiler::Tiered | Compiler::Baseline => {
                Some(new_engine(&config, Strategy::Winch, false).map_err(runtime_error)?)
            }
        };
        // A parallel compile runs on the global thread pool, where its tasks
        // queue among the forward pass's: only worth it when a swap waits for
        // the optimized build (no baseline build serves first).
        let engine = new_engine(&config, Strategy::Cranelift, baseline.is_none()).map_err(runtime_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engines, stop) = ([Some(engine.clone()), baseline.clone()], stop.clone());
            std::thread::Builder::new()
                .name("kiln-plugin-clock".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engines.iter().flatten().for_each(Engine::increment_epoch);
                    }
                })
                .map_err(|e| PluginError::Runtime(format!("starting the deadline clock: {e}")))?
        };
        // One tick more than the timeout: the call may start just before a tick.
        let deadline_ticks = (config.call_timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1;
        let tiered = config.compiler == Compiler::Tiered && baseline.is_some();
        let shared =
            Arc::new(Shared { engine, baseline, config, vocabulary, deadline_ticks, compilations: AtomicU64::new(0) });
        let tier_ups = tiered
            .then(|| TierUps::start(shared.clone()))
            .transpose()
            .map_err(|e| PluginError::Runtime(format!("starting the optimizing compiler's thread: {e}")))?;
        Ok(Runtime { shared, tier_ups, ticker: Some((stop, ticker)) })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// Components compiled by this runtime (loads served from the artifact
    /// cache do not count).
    pub fn compilations(&self) -> u64 {
        self.shared.compilations.load(Ordering::Relaxed)
    }

    /// Blocks until every version loaded so far serves from its optimized
    /// build (or failed to get one): for benchmarks and tests that must
    /// measure the code that serves in the long run.
    pub fn wait_for_optimized_builds(&self) {
        if let Some(tier_ups) = &self.tier_ups {
            tier_ups.wait();
        }
    }

    /// Holds the optimized builds' queue until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn hold_optimized_builds(&self) -> std::sync::MutexGuard<'_, ()> {
        self.tier_ups.as_ref().expect("tiered compilation").hold()
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
        let shared = &self.shared;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (component, tier) = match (shared.cached(&sha256), &shared.baseline) {
            (Some(component), _) => (component, Tier::Optimized),
            (None, Some(baseline)) => {
                shared.compilations.fetch_add(1, Ordering::Relaxed);
                match Component::new(baseline, bytes) {
                    Ok(component) => (component, Tier::Baseline),
                    // Winch lacks some proposals (tail calls, relaxed SIMD)
                    // that Cranelift compiles: tiered still serves those.
                    Err(e) if self.tier_ups.is_some() => {
                        tracing::info!(plugin = origin, error = %format!("{e:#}"), "no baseline build; compiling it optimized");
                        let component =
                            shared.compile_optimized(&sha256, bytes).map_err(|e| invalid(format!("{e:#}")))?;
                        (component, Tier::Optimized)
                    }
                    Err(e) => return Err(invalid(format!("{e:#}"))),
                }
            }
            (None, None) => {
                (shared.compile_optimized(&sha256, bytes).map_err(|e| invalid(format!("{e:#}")))?, Tier::Optimized)
            }
        };
        let Some((kind, contract)) = kind_of(component.engine(), &component) else {
            return Err(invalid(
                "it exports none of kiln's plugin interfaces (template, sampler, post-process) \
                 at a contract version this host serves (0.1.0, 0.2.0)"
                    .into(),
            ));
        };
        let code = Built { component, tier, contract, sha256: sha256.clone() };
        let loaded = match kind {
            PluginKind::Template => TemplatePlugin::new(shared.clone(), code).map(|p| Loaded::Template(Arc::new(p))),
            PluginKind::Sampler => SamplerPlugin::new(shared.clone(), code).map(|p| Loaded::Sampler(Arc::new(p))),
            PluginKind::PostProcess => {
                PostProcessPlugin::new(shared.clone(), code).map(|p| Loaded::PostProcess(Arc::new(p)))
            }
        };
        let loaded = loaded.map_err(|e| invalid(format!("{e:#}")))?;
        if let (Tier::Baseline, Some(tier_ups)) = (tier, &self.tier_ups) {
            tier_ups.queue(sha256, bytes.into(), loaded.upgradable());
        }
        Ok(loaded)
    }
}

/// A compiled component and what its plugin is made with.
pub(crate) struct Built {
    pub component: Component,
    pub tier: Tier,
    pub contract: Contract,
    pub sha256: String,
}

/// An engine for `strategy`, with the settings every plugin runs under.
fn new_engine(config: &RuntimeConfig, strategy: Strategy, parallel: bool) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(config.max_instances)
        .total_core_instances(config.max_instances * 8)
        .total_memories(config.max_instances * 2)
        .total_tables(config.max_instances * 4)
        .max_memory_size(config.memory_limit);
    let mut wasm = Config::new();
    wasm.strategy(strategy)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Plugins make plain synchronous calls: without component-model
        // concurrency each call costs a third as much.
        .concurrency_support(false)
        // A reservation the size of the cap keeps the pool's address space
        // proportionate; bounds checks stay cheap.
        .memory_reservation(config.memory_limit as u64)
        .memory_guard_size(64 << 10)
        .parallel_compilation(parallel);
    Engine::new(&wasm)
}

impl Shared {
    /// The optimized build a previous compile left in the cache, if any.
    ///
    /// An artifact is native code loaded as is, so the cache trusts nothing
    /// but what it can check: the directory is this user's alone (0700),
    /// the name binds the source's sha256 and the engine's compatibility
    /// hash (wasmtime's version and every setting that shapes the code),
    /// and the file starts with the sha256 of the rest, recorded when it was
    /// written, so a truncated, corrupted or swapped-in body is recompiled.
    fn cached(&self, sha256: &str) -> Option<Component> {
        let artifact = self.artifact(sha256)?;
        let stored = std::fs::read(&artifact).ok()?;
        let Some(body) = verified(&stored) else {
            tracing::warn!(path = %artifact.display(), "cached artifact fails its digest; recompiling");
            return None;
        };
        // SAFETY: the body is what `Component::serialize` of an engine with
        // the same compatibility hash (it is in the name) wrote into this
        // user's private directory: its digest, recorded then, matches.
        match unsafe { Component::deserialize(&self.engine, body) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(error = %e, path = %artifact.display(), "unusable cached artifact; recompiling");
                None
            }
        }
    }

    /// Where the optimized build of `sha256` is cached (`None`: no cache).
    fn artifact(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.config.cache_dir.as_deref().filter(|dir| match private_dir(dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "not caching compiled plugins: the cache directory cannot be made private");
                false
            }
        })?;
        let mut hasher = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish())))
    }

    /// Makes the optimized build and caches it.
    pub(crate) fn compile_optimized(&self, sha256: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(&self.engine, bytes)?;
        if let Some(artifact) = self.artifact(sha256) {
            let body = component.serialize()?;
            let stored = [Sha256::digest(&body).as_slice(), &body].concat();
            if let Err(e) = crate::write_atomically(&artifact, &stored) {
                tracing::warn!(error = %e, path = %artifact.display(), "cannot cache the compiled plugin");
            }
        }
        Ok(component)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // The optimizing thread first: its smoke calls run under deadlines,
        // which the clock below keeps.
        self.tier_ups.take();
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
