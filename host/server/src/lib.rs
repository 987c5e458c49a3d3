//! kiln-server: kiln's HTTP API on axum.
//!
//! The guide's endpoints (`/v1/generate`, `/v1/generate/stream`), the
//! OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`), token counting (`/v1/tokenize`, `/v1/detokenize`) and the
//! OpenAPI document with an offline docs page (`/openapi.json`, `/docs`).
//! It reaches the engine only through [`kiln_engine::Backend`] with validated
//! requests, so it knows nothing of models or kernels; errors become HTTP
//! answers in one place ([`ApiError`]).

mod cache;
mod error;
mod extract;
mod generation;
mod middleware;
mod openapi;
mod routes;
mod tasks;
mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::routing::{get, post, put};
use kiln_chat::{ChatMessage, ChatTemplate};
use kiln_engine::Backend;
use kiln_pipeline::{ModelTemplate, PluginHost, Resolved};
use kiln_tokenizer::Tokenizer;

pub use cache::{CacheConfig, CacheStats};
pub use error::ApiError;
pub use middleware::admin::AdminAccess;
pub use middleware::auth::{Auth, Caller};
pub use middleware::rate_limit::TokenMeter;
pub use openapi::ApiDoc;
pub use tasks::{TaskConfig, Tasks, spawn_workers};
pub use webhooks::WebhookConfig;

/// The model being served, as the API presents it.
#[derive(Debug)]
pub struct ServedModel {
    /// The name clients pass as `model` (and see in `GET /v1/models`).
    pub id: String,
    /// Unix time the server loaded it.
    pub created: u64,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
}

impl ServedModel {
    pub fn new(id: impl Into<String>, tokenizer: Arc<Tokenizer>, template: ChatTemplate) -> Self {
        ServedModel { id: id.into(), created: unix_now(), tokenizer, template }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// A comment line is sent on a stream idle this long, so proxies keep it open.
    pub sse_keep_alive: Duration,
    /// After a shutdown signal, how long open requests and streams may run
    /// before their connections are closed.
    pub drain_timeout: Duration,
    /// Who may manage plugins.
    pub admin: AdminAccess,
    /// Larger plugin uploads get 413.
    pub max_plugin_bytes: usize,
    /// API keys, or none (`--insecure-no-auth`).
    pub auth: Auth,
    /// Limits of keys that set none of their own (and of anonymous callers, by address).
    pub limits: kiln_access::Limits,
    /// `/metrics` without a key (for scrapers inside a trusted network).
    pub public_metrics: bool,
    pub cache: CacheConfig,
    /// A generation still running after this is stopped: 504 (`code:
    /// timeout`), or as the last event of a stream.
    pub request_timeout: Duration,
    /// Redis, where replicas share rate limits and cached answers.
    pub redis: Option<RedisShared>,
}

/// A connection to the Redis that replicas share, and what they share in it.
#[derive(Clone, Debug)]
pub struct RedisShared {
    /// Multiplexed and reconnecting; cheap to clone.
    pub conn: redis::aio::ConnectionManager,
    /// Put before every key.
    pub prefix: String,
    /// Rate limits hold across replicas.
    pub limits: bool,
    /// Cached answers are served by every replica.
    pub cache: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 2 << 20,
            sse_keep_alive: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(30),
            admin: AdminAccess::default(),
            max_plugin_bytes: 64 << 20,
            auth: Auth::Insecure,
            limits: kiln_access::Limits::default(),
            public_metrics: true,
            cache: CacheConfig::default(),
            request_timeout: Duration::from_secs(120),
            redis: None,
        }
    }
}

/// What every handler shares: the engine, the model's tokenizer and template.
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
    cache: Arc<cache::ResponseCache>,
    /// The async task store and its workers' state, once attached.
    tasks: std::sync::OnceLock<Arc<Tasks>>,
    started: std::time::Instant,
    /// Warmed up (one forward pass done) and not draining.
    ready: std::sync::atomic::AtomicBool,
    draining: std::sync::atomic::AtomicBool,
}

/// Callers with rate-limit state at most (idle ones are forgotten first).
const MAX_LIMITED_CALLERS: usize = 100_000;

impl Inner {
    fn new(
        backend: Arc<dyn Backend>,
        model: ServedModel,
        config: ServerConfig,
        plugins: Option<Arc<PluginHost>>,
    ) -> Self {
        // Installs the metrics recorder before anything is recorded.
        routes::metrics::handle();
        let limiter = match config.redis.as_ref().filter(|r| r.limits) {
            Some(redis) => {
                kiln_access::RateLimiter::Shared(kiln_access::RedisLimiter::new(redis.conn.clone(), &redis.prefix))
            }
            None => kiln_access::RateLimiter::Local(kiln_access::Limiter::new(MAX_LIMITED_CALLERS)),
        };
        Inner {
            backend,
            model,
            cache: Arc::new(match config.redis.as_ref().filter(|r| r.cache) {
                Some(redis) => cache::ResponseCache::new(config.cache)
                    .shared(cache::SharedAnswers::new(redis.conn.clone(), &redis.prefix)),
                None => cache::ResponseCache::new(config.cache),
            }),
            limiter: Arc::new(limiter),
            config,
            plugins,
            tasks: std::sync::OnceLock::new(),
            started: std::time::Instant::now(),
            ready: Default::default(),
            draining: Default::default(),
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("model", &self.inner.model.id).finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(backend: Arc<dyn Backend>, model: ServedModel, config: ServerConfig) -> Self {
        AppState { inner: Arc::new(Inner::new(backend, model, config, None)) }
    }

    /// The same state with plugins.
    pub fn with_plugins(
        backend: Arc<dyn Backend>,
        model: ServedModel,
        config: ServerConfig,
        plugins: Arc<PluginHost>,
    ) -> Self {
        AppState { inner: Arc::new(Inner::new(backend, model, config, Some(plugins))) }
    }

    /// Enables async tasks (`/v1/generate/async`, `/v1/tasks`); start their
    /// workers with [`spawn_workers`]. A second call changes nothing.
    pub fn attach_tasks(&self, tasks: Arc<Tasks>) {
        let _ = self.inner.tasks.set(tasks);
    }

    pub(crate) fn tasks_arc(&self) -> Option<Arc<Tasks>> {
        self.inner.tasks.get().cloned()
    }

    pub(crate) fn limiter(&self) -> &kiln_access::RateLimiter {
        &self.inner.limiter
    }

    pub(crate) fn limiter_arc(&self) -> Arc<kiln_access::RateLimiter> {
        self.inner.limiter.clone()
    }

    pub(crate) fn cache(&self) -> &cache::ResponseCache {
        &self.inner.cache
    }

    pub(crate) fn cache_arc(&self) -> Arc<cache::ResponseCache> {
        self.inner.cache.clone()
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(std::sync::atomic::Ordering::Acquire)
            && !self.inner.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Runs one forward pass (a one-token generation) so the first client
    /// does not pay for cold caches, then reports ready.
    pub async fn warm_up(&self) -> Result<(), ApiError> {
        let spec = generation::GenerationSpec { max_tokens: Some(1), no_cache: true, ..Default::default() };
        spec.start_from(self, Prompt::Text("Hello".into())).await?.collect().await?;
        self.inner.ready.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// After a shutdown signal: `/ready` answers 503 so balancers stop sending.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn plugins(&self) -> Option<&PluginHost> {
        self.inner.plugins.as_deref()
    }

    /// The pipeline a request runs (`None`: the host alone, no plugins).
    pub(crate) fn pipeline(&self, requested: Option<&str>) -> Result<Option<Resolved>, ApiError> {
        match (self.plugins(), requested) {
            // Only the pipeline's name is the client's business; a plugin the
            // registry cannot provide is the server's fault.
            (Some(plugins), _) => plugins.resolve(requested).map(Some).map_err(|e| match e {
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

    pub fn backend(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    pub fn model(&self) -> &ServedModel {
        &self.inner.model
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// A request may omit `model`; if it names one, it must be the served one.
    pub(crate) fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(name) if name != self.inner.model.id => Err(ApiError::ModelNotFound(name.to_string())),
            _ => Ok(()),
        }
    }

    /// A prompt's token ids, rendered by the pipeline's template plugin or
    /// the host's. Rendering and tokenizing run on the blocking pool: a
    /// prompt can be megabytes, and the async workers serve every open stream.
    pub(crate) async fn prompt_tokens(
        &self,
        prompt: Prompt,
        pipeline: Option<&Resolved>,
    ) -> Result<PromptTokens, ApiError> {
        let state = self.clone();
        let pipeline = pipeline.cloned();
        tokio::task::spawn_blocking(move || {
            let model = &state.inner.model;
            let (text, stop) = match prompt {
                Prompt::Tokens(tokens) => {
                    state.decode("prompt", &tokens)?;
                    return Ok(PromptTokens { tokens, stop: Vec::new() });
                }
                Prompt::Text(text) => (text, Vec::new()),
                Prompt::Chat { messages, add_generation_prompt } => {
                    render(model, pipeline.as_ref(), &messages, add_generation_prompt)?
                }
            };
            // Special tokens written out in the text (as chat templates write
            // them) become their ids.
            let tokens =
                model.tokenizer.encode(&text, true).map_err(|e| ApiError::Internal(format!("tokenizer: {e}")))?;
            Ok(PromptTokens { tokens, stop })
        })
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizing task: {e}")))?
    }

    /// Token ids to text; ids the tokenizer does not know are the client's mistake.
    pub(crate) fn decode(&self, param: &str, tokens: &[u32]) -> Result<String, ApiError> {
        let vocab = self.inner.model.tokenizer.vocab_size().min(self.backend().limits().vocab_size);
        if let Some((i, id)) = tokens.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
            return Err(ApiError::invalid(
                format!("{param}[{i}]"),
                format!("{id} is outside the vocabulary ({vocab})"),
            ));
        }
        self.inner.model.tokenizer.decode(tokens, false).map_err(|e| ApiError::invalid(param, e.to_string()))
    }
}

/// A conversation as prompt text, with the template's own stop strings. A
/// template may refuse a conversation (`raise_exception`, e.g. roles out of
/// order): that is the client's to fix.
fn render(
    model: &ServedModel,
    pipeline: Option<&Resolved>,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<(String, Vec<String>), ApiError> {
    let template = ModelTemplate {
        source: model.template.source(),
        bos_token: model.template.bos_token(),
        eos_token: model.template.eos_token(),
    };
    let turns = messages.iter().map(|m| (m.role.as_str(), m.content.as_str()));
    match pipeline.and_then(|p| p.render(turns, add_generation_prompt, template)) {
        Some(Ok(rendered)) => Ok((rendered.prompt, rendered.stop)),
        Some(Err(kiln_plugins::PluginError::Refused { message, .. })) => Err(ApiError::invalid("messages", message)),
        Some(Err(e)) => Err(ApiError::Plugin(e.to_string())),
        None => {
            let text = model
                .template
                .render(messages, add_generation_prompt)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            Ok((text, Vec::new()))
        }
    }
}

/// A prompt's tokens, and stop strings its template added.
#[derive(Debug)]
pub(crate) struct PromptTokens {
    pub tokens: Vec<u32>,
    pub stop: Vec<String>,
}

/// What a request asks the model to continue.
#[derive(Debug, serde::Serialize)]
pub(crate) enum Prompt {
    /// Text as the model sees it.
    Text(String),
    /// Token ids as the model sees them (checked against the vocabulary).
    Tokens(Vec<u32>),
    /// Messages to render with the model's chat template.
    Chat { messages: Vec<ChatMessage>, add_generation_prompt: bool },
}

/// Every route of the API, with the body limit and JSON fallbacks.
pub fn router(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    let admin = Router::new()
        .route("/v1/plugins", get(routes::plugins::list_plugins))
        .route("/v1/plugins/{name}", put(routes::plugins::put_plugin).delete(routes::plugins::delete_plugin))
        .route("/v1/plugins/{name}/reload", post(routes::plugins::reload_plugin))
        // Runs after the outer limit's layer, so uploads get their own.
        .layer(DefaultBodyLimit::max(state.config().max_plugin_bytes))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::admin::require_admin));
    let routes = Router::new()
        .route("/health", get(routes::health::health))
        .route("/ready", get(routes::health::ready))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/v1/generate", post(routes::generate::generate))
        .route("/v1/generate/stream", post(routes::generate::generate_stream))
        .route("/v1/generate/async", post(routes::tasks::generate_async))
        .route("/v1/chat/completions/async", post(routes::tasks::chat_completions_async))
        .route("/v1/tasks", get(routes::tasks::list_tasks))
        .route("/v1/tasks/{id}", get(routes::tasks::get_task).delete(routes::tasks::cancel_task))
        .route("/v1/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route("/v1/models", get(routes::models::list_models))
        .route("/v1/models/{*id}", get(routes::models::retrieve_model))
        .route("/v1/tokenize", post(routes::tokenize::tokenize))
        .route("/v1/detokenize", post(routes::tokenize::detokenize))
        .merge(admin)
        .merge(openapi::docs_router())
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(extract::BodyLimit(limit)))
        .with_state(state.clone());
    middleware::apply(routes, &state)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// requests finish for up to `drain_timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm
    // would hold each one back waiting for the client's ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = signalled.send(true);
    });
    // A stream may run for minutes; past the drain timeout its connection is
    // closed (which cancels its sequence) rather than holding the exit.
    let deadline = async move {
        if on_signal.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(?drain_timeout, "requests still open after the drain timeout; closing them");
            Ok(())
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
