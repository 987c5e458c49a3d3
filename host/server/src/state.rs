//! What every handler shares, built once: the engine, the served model, the
//! configuration, plugins, limits, the response cache and the task store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln_chat::ChatTemplate;
use kiln_engine::Backend;
use kiln_pipeline::{PluginHost, Resolved};
use kiln_tokenizer::Tokenizer;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::ApiError;
use crate::config::ServerConfig;
use crate::response_cache::{CacheStats, ResponseCache, SharedAnswers};
use crate::tasks::Tasks;
use crate::time::unix_now;

/// The model being served, as the API presents it.
#[derive(Debug)]
pub struct ServedModel {
    /// The name clients pass as `model` (and see in `GET /v1/models`).
    pub id: String,
    /// Unix time the server loaded it.
    pub created: u64,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    /// Hex sha256 of the model file, for answers' fingerprints (empty: unknown).
    pub sha256: String,
}

impl ServedModel {
    pub fn new(id: impl Into<String>, tokenizer: Arc<Tokenizer>, template: ChatTemplate) -> Self {
        ServedModel { id: id.into(), created: unix_now(), tokenizer, template, sha256: String::new() }
    }

    /// The model file's sha256, which answers' fingerprints include.
    pub fn with_sha256(self, sha256: impl Into<String>) -> Self {
        ServedModel { sha256: sha256.into(), ..self }
    }
}

/// Callers with rate-limit state at most (idle ones are forgotten first).
const MAX_LIMITED_CALLERS: usize = 100_000;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    model: ServedModel,
    config: ServerConfig,
    /// Plugins and pipelines; `None`: serving without them (the `native`
    /// pipeline only).
    plugins: Option<Arc<PluginHost>>,
    limiter: Arc<kiln_access::RateLimiter>,
    cache: Arc<ResponseCache>,
    /// The async task store and its workers' state; `None`: no async tasks.
    tasks: Option<Arc<Tasks>>,
    /// Renders `/metrics`; `None`: the binary installed no recorder.
    metrics: Option<PrometheusHandle>,
    started: Instant,
    fingerprints: crate::fingerprint::Fingerprints,
    /// Warmed up (one forward pass done) and not draining.
    ready: AtomicBool,
    draining: AtomicBool,
}

/// Builds an [`AppState`]: the engine, the model and the configuration,
/// plus what a server may run without (plugins, tasks, metrics).
#[must_use]
pub struct AppStateBuilder {
    backend: Arc<dyn Backend>,
    model: ServedModel,
    config: ServerConfig,
    plugins: Option<Arc<PluginHost>>,
    tasks: Option<Arc<Tasks>>,
    metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for AppStateBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppStateBuilder").field("model", &self.model.id).finish_non_exhaustive()
    }
}

impl AppStateBuilder {
    /// Plugins and pipelines (without: the `native` pipeline only).
    pub fn plugins(mut self, plugins: Arc<PluginHost>) -> Self {
        self.plugins = Some(plugins);
        self
    }

    /// Async tasks (`/v1/generate/async`, `/v1/tasks`); start their workers
    /// with [`crate::spawn_workers`] once built.
    pub fn tasks(mut self, tasks: Arc<Tasks>) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// What `/metrics` renders ([`crate::install_metrics_recorder`]).
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    pub fn build(self) -> AppState {
        let config = self.config;
        let limiter = match config.redis.as_ref().filter(|r| r.limits) {
            Some(redis) => {
                kiln_access::RateLimiter::Shared(kiln_access::RedisLimiter::new(redis.conn.clone(), &redis.prefix))
            }
            None => kiln_access::RateLimiter::Local(kiln_access::Limiter::new(MAX_LIMITED_CALLERS)),
        };
        let cache = match config.redis.as_ref().filter(|r| r.cache) {
            Some(redis) => {
                ResponseCache::new(config.cache).shared(SharedAnswers::new(redis.conn.clone(), &redis.prefix))
            }
            None => ResponseCache::new(config.cache),
        };
        let inner = Inner {
            backend: self.backend,
            model: self.model,
            cache: Arc::new(cache),
            limiter: Arc::new(limiter),
            config,
            plugins: self.plugins,
            tasks: self.tasks,
            metrics: self.metrics,
            started: Instant::now(),
            fingerprints: Default::default(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        };
        AppState { inner: Arc::new(inner) }
    }
}

/// An [`AppState`] that does not keep the server alive: what threads of
/// its own hold, so they end once the server is dropped.
#[derive(Clone)]
pub(crate) struct WeakAppState(std::sync::Weak<Inner>);

impl WeakAppState {
    pub(crate) fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(|inner| AppState { inner })
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("model", &self.inner.model.id).finish_non_exhaustive()
    }
}

impl AppState {
    pub fn builder(backend: Arc<dyn Backend>, model: ServedModel, config: ServerConfig) -> AppStateBuilder {
        AppStateBuilder { backend, model, config, plugins: None, tasks: None, metrics: None }
    }

    pub(crate) fn downgrade(&self) -> WeakAppState {
        WeakAppState(Arc::downgrade(&self.inner))
    }

    pub fn backend(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    pub fn model(&self) -> &ServedModel {
        &self.inner.model
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub fn plugins(&self) -> Option<&PluginHost> {
        self.inner.plugins.as_deref()
    }

    pub(crate) fn tasks(&self) -> Option<&Arc<Tasks>> {
        self.inner.tasks.as_ref()
    }

    pub(crate) fn metrics_handle(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    pub(crate) fn limiter(&self) -> &kiln_access::RateLimiter {
        &self.inner.limiter
    }

    pub(crate) fn limiter_arc(&self) -> Arc<kiln_access::RateLimiter> {
        self.inner.limiter.clone()
    }

    /// The fingerprints served so far.
    pub(crate) fn fingerprints(&self) -> &crate::fingerprint::Fingerprints {
        &self.inner.fingerprints
    }

    pub(crate) fn cache(&self) -> &Arc<ResponseCache> {
        &self.inner.cache
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) && !self.inner.draining.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// `/ready` answers 200 from now on (unless draining).
    pub(crate) fn mark_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// After a shutdown signal: `/ready` answers 503 so balancers stop sending.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// The pipeline a request runs (`None`: the host alone, no plugins).
    pub(crate) fn pipeline(
        &self,
        requested: Option<&str>,
        context: &crate::extract::RequestContext,
    ) -> Result<Option<Resolved>, ApiError> {
        // Which side of a canary a request falls on: its id, or its key.
        let tenant = context.tenant();
        let request_id = match context.request_id.as_str() {
            "" => uuid::Uuid::new_v4().simple().to_string(),
            id => id.to_string(),
        };
        let routing = kiln_pipeline::Routing { request_id: &request_id, api_key: tenant.as_deref() };
        match (self.plugins(), requested) {
            // Only the pipeline's name is the client's business; a plugin the
            // registry cannot provide is the server's fault.
            (Some(plugins), _) => plugins.resolve_for(requested, Some(&routing)).map(Some).map_err(|e| match e {
                e @ kiln_pipeline::PipelineError::UnknownPipeline { .. } => e.into(),
                other => ApiError::Internal(other.to_string()),
            }),
            (None, None) => Ok(None),
            (None, Some(kiln_pipeline::NATIVE_PIPELINE)) => Ok(None),
            (None, Some(name)) => Err(ApiError::invalid(
                "pipeline",
                format!("unknown pipeline {name:?}: this server runs without plugins (only `native`)"),
            )),
        }
    }

    /// A request may omit `model`; if it names one, it must be the served one.
    pub(crate) fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(name) if name != self.inner.model.id => Err(ApiError::ModelNotFound(name.to_string())),
            _ => Ok(()),
        }
    }
}
