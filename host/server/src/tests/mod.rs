//! The HTTP API through `Router::oneshot`, on the real default model (and,
//! for failures a real engine cannot be made to produce on demand, on fake
//! backends), plus cancellation over a real socket.

mod access;
mod allowance;
mod cache;
mod cancel;
mod choices;
mod connections;
mod docs;
mod errors;
mod generate;
mod json_schema;
mod metrics;
mod openai;
mod overload;
mod plugins;
mod rollout;
mod tasks;
mod tokenize;
mod tools;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use kiln_chat::ChatTemplate;
use kiln_engine::{Backend, EngineStats, ModelLimits, TokenEvent, TokenStream, ValidGenerateRequest};
use kiln_engine::{Engine, EngineConfig, EngineError};
use kiln_model::Model;
use kiln_pipeline::{PipelineSpec, PluginHost, PluginsConfig};
use kiln_tokenizer::Tokenizer;
use serde_json::Value;
use tower::ServiceExt;

use crate::{AppState, ServedModel, ServerConfig, router};

pub use crate::TaskConfig;

pub const MODEL_ID: &str = "smollm2-test";
/// A small context keeps the "prompt too long" tests cheap.
pub const CONTEXT: usize = 1024;

pub(crate) fn loaded() -> (Arc<Model>, Arc<Tokenizer>) {
    static LOADED: OnceLock<(Arc<Model>, Arc<Tokenizer>)> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = kiln_hub::resolve_model(None, false).expect("the default model is needed by these tests");
            let model = Model::load(&path, Some(CONTEXT)).expect("model loads");
            let mut f = std::fs::File::open(&path).unwrap();
            let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
            (Arc::new(model), Arc::new(Tokenizer::from_gguf(&content).unwrap()))
        })
        .clone()
}

pub(crate) fn served(tokenizer: Arc<Tokenizer>) -> ServedModel {
    let template = ChatTemplate::new(tokenizer.chat_template(), "", "<|im_end|>").unwrap();
    ServedModel::new(MODEL_ID, tokenizer, template)
}

/// Pipelines the tests use, on top of `default` and `native`: one per
/// misbehaviour of the hostile guest (installed as `hostile`), and a
/// redacting one.
fn test_pipelines() -> std::collections::BTreeMap<String, PipelineSpec> {
    let mut pipelines = std::collections::BTreeMap::new();
    for mode in ["loop", "memory", "trap", "garbage", "refuse", "fail"] {
        let spec = PipelineSpec {
            sampler: Some("hostile".into()),
            config: [("hostile".to_string(), [("mode".to_string(), mode.to_string())].into())].into(),
            ..PipelineSpec::first_party_default()
        };
        pipelines.insert(format!("hostile-{mode}"), spec);
    }
    let redacted = PipelineSpec { post: vec!["redact".into()], ..PipelineSpec::first_party_default() };
    // The same plugins configured differently: another fingerprint.
    let configured = PipelineSpec {
        config: [("redact".to_string(), [("note".to_string(), "x".to_string())].into())].into(),
        ..redacted.clone()
    };
    pipelines.insert("redacted".into(), redacted);
    pipelines.insert("redacted-configured".into(), configured);
    // A component built against the plugin contract 0.1.0.
    let legacy = PipelineSpec { post: vec!["shout".into()], ..PipelineSpec::first_party_default() };
    pipelines.insert("legacy".into(), legacy);
    pipelines
}

/// A plugin host of its own (admin tests change it), with the hostile guest
/// and the 0.1.0 one (as `shout`) in its plugin directory; compiled
/// components are cached across tests.
pub fn plugin_host() -> (Arc<PluginHost>, tempfile::TempDir) {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let hostile = kiln_pipeline::built_plugins_dir().join("hostile_sampler.wasm");
    std::fs::copy(hostile, dir.path().join("hostile.wasm")).unwrap();
    let legacy = kiln_pipeline::built_plugins_dir().join("legacy_shout.wasm");
    std::fs::copy(legacy, dir.path().join("shout.wasm")).unwrap();
    let (_, tokenizer) = loaded();
    let config = PluginsConfig {
        dir: Some(dir.path().to_path_buf()),
        watch: false,
        runtime: kiln_pipeline::RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..kiln_pipeline::RuntimeConfig::default()
        },
        pipelines: test_pipelines(),
        ..PluginsConfig::default()
    };
    (Arc::new(PluginHost::new(&tokenizer, config).expect("plugins load")), dir)
}

/// One plugin host for the tests that only read it.
fn shared_plugins() -> Arc<PluginHost> {
    static HOST: OnceLock<(Arc<PluginHost>, tempfile::TempDir)> = OnceLock::new();
    HOST.get_or_init(plugin_host).0.clone()
}

/// What a fake backend does with every request.
#[derive(Debug, Clone)]
pub enum Fake {
    Overloaded,
    /// Emits these texts as tokens, then fails.
    FailAfter(Vec<&'static str>),
    /// Says nothing for this long, then one token and the finish.
    Slow(std::time::Duration),
    /// Emits these texts as tokens, then finishes (`length`).
    Say(Vec<&'static str>),
}

#[derive(Debug)]
struct FakeBackend {
    fake: Fake,
    limits: ModelLimits,
    stats: EngineStats,
}

/// A stream of `texts` as tokens, then `last`.
fn scripted(texts: &[&str], last: TokenEvent) -> TokenStream {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, text) in texts.iter().enumerate() {
        let token = TokenEvent::Token { id: i as u32, text: text.to_string(), logprob: None, top_logprobs: vec![] };
        tx.send(token).unwrap();
    }
    tx.send(last).unwrap();
    TokenStream::from_receiver(rx)
}

impl Backend for FakeBackend {
    fn limits(&self) -> &ModelLimits {
        &self.limits
    }

    fn submit(&self, _: ValidGenerateRequest) -> Result<TokenStream, EngineError> {
        match &self.fake {
            Fake::Overloaded => Err(EngineError::Overloaded { queued: 64 }),
            Fake::FailAfter(texts) => {
                let fault = kiln_engine::GenerationError::Forward("matmul kernel fault at 0xdeadbeef".into());
                Ok(scripted(texts, TokenEvent::Failed(fault)))
            }
            Fake::Say(texts) => {
                let counts = kiln_engine::TokenCounts { prompt_tokens: 1, completion_tokens: texts.len() };
                let reason = kiln_engine::StopReason::Length;
                Ok(scripted(texts, TokenEvent::Finished { reason, counts, tail: String::new() }))
            }
            Fake::Slow(delay) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let delay = *delay;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let token = TokenEvent::Token { id: 0, text: "late".into(), logprob: None, top_logprobs: vec![] };
                    let counts = kiln_engine::TokenCounts { prompt_tokens: 1, completion_tokens: 1 };
                    let reason = kiln_engine::StopReason::Length;
                    let finish = TokenEvent::Finished { reason, counts, tail: String::new() };
                    let _ = tx.send(token).and_then(|()| tx.send(finish));
                });
                Ok(TokenStream::from_receiver(rx))
            }
        }
    }

    fn stats(&self) -> &EngineStats {
        &self.stats
    }
}

/// Ids past the tokenizer's list that the fake model accepts, as in GGUFs
/// whose embedding table is padded.
pub const PADDED_IDS: usize = 64;

/// How a test builds the API: on the real model or a fake backend, with or
/// without plugins and async tasks, as a client at some address sees it.
#[must_use]
pub struct TestApp {
    model: TestModel,
    config: ServerConfig,
    plugins: Option<Arc<PluginHost>>,
    tasks: Option<(crate::TaskConfig, Option<tempfile::TempDir>)>,
    peer: Option<std::net::SocketAddr>,
}

enum TestModel {
    Real,
    Fake(Fake),
}

/// A built API: its router (what requests go to), its state, the real
/// engine (to watch its counters) and the task store's folder, kept while
/// the app lives.
pub struct Built {
    pub router: Router,
    pub state: AppState,
    engine: Option<Arc<Engine>>,
    _tasks_dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Built {
    type Target = Router;

    fn deref(&self) -> &Router {
        &self.router
    }
}

impl Built {
    /// The real engine (not there for a fake backend).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone().expect("a real engine")
    }
}

impl TestApp {
    /// The real default model, behind the shared test pipelines.
    pub fn real() -> Self {
        TestApp { model: TestModel::Real, plugins: Some(shared_plugins()), ..TestApp::fake(Fake::Overloaded) }
    }

    /// A fake backend doing `fake` with every request, without plugins.
    pub fn fake(fake: Fake) -> Self {
        TestApp {
            model: TestModel::Fake(fake),
            config: ServerConfig::default(),
            plugins: None,
            tasks: None,
            peer: None,
        }
    }

    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// The shared test pipelines (for tests that only read the plugin host).
    pub fn shared_plugins(mut self) -> Self {
        self.plugins = Some(shared_plugins());
        self
    }

    /// A plugin host of the test's own (tests that change it).
    pub fn plugins(mut self, plugins: Arc<PluginHost>) -> Self {
        self.plugins = Some(plugins);
        self
    }

    /// Async tasks in a fresh SQLite file, workers running.
    pub fn tasks(mut self, config: crate::TaskConfig) -> Self {
        self.tasks = Some((config, None));
        self
    }

    /// Async tasks in `dir`'s `tasks.db` (one a previous server left), workers running.
    pub fn tasks_in(mut self, dir: tempfile::TempDir, config: crate::TaskConfig) -> Self {
        self.tasks = Some((config, Some(dir)));
        self
    }

    /// Requests come from `peer` (the admin check reads it).
    pub fn peer(mut self, peer: std::net::SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    pub fn build(self) -> Built {
        let (model, tokenizer) = loaded();
        let (backend, engine): (Arc<dyn Backend>, _) = match self.model {
            TestModel::Real => {
                let engine = Arc::new(Engine::start(model, tokenizer.clone(), EngineConfig::default()));
                (engine.clone(), Some(engine))
            }
            TestModel::Fake(fake) => {
                // Ids past the tokenizer's list that the fake model accepts
                // (as in GGUFs whose embedding table is padded), unless the
                // fake sits behind plugins, which see the tokenizer's list.
                let padded = if self.plugins.is_some() { 0 } else { PADDED_IDS };
                let vocab_size = tokenizer.vocab_size() + padded;
                let limits = ModelLimits { vocab_size, max_context: CONTEXT, default_stop_ids: vec![] };
                (Arc::new(FakeBackend { fake, limits, stats: EngineStats::default() }), None)
            }
        };
        let mut state =
            AppState::builder(backend, served(tokenizer), self.config).metrics(crate::install_metrics_recorder());
        if let Some(plugins) = self.plugins {
            state = state.plugins(plugins);
        }
        let mut tasks_dir = None;
        if let Some((config, dir)) = self.tasks {
            let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
            let tasks = crate::Tasks::open(&dir.path().join("tasks.db"), config).unwrap();
            state = state.tasks(Arc::new(tasks));
            tasks_dir = Some(dir);
        }
        let state = state.build();
        if tasks_dir.is_some() {
            crate::spawn_workers(&state);
        }
        let mut router = router(state.clone());
        if let Some(peer) = self.peer {
            router = router.layer(axum::extract::connect_info::MockConnectInfo(peer));
        }
        Built { router, state, engine, _tasks_dir: tasks_dir }
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of a Server-Sent Events body, in order.
    pub fn events(&self) -> Vec<String> {
        let text = std::str::from_utf8(&self.body).unwrap();
        text.split("\n\n")
            .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_string))
            .collect()
    }

    /// The JSON events, without the final `[DONE]` (asserted present).
    pub fn json_events(&self) -> Vec<Value> {
        let mut events = self.events();
        assert_eq!(events.pop().as_deref(), Some("[DONE]"), "a stream ends with [DONE]");
        events.iter().map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"))).collect()
    }

    /// The error envelope, after checking the status.
    pub fn error(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.body));
        let body = self.json();
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert!(body["error"]["type"].is_string(), "{body}");
        body["error"].clone()
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body }
}

pub async fn post(app: &Router, path: &str, body: Value) -> Answer {
    post_raw(app, path, body.to_string()).await
}

pub async fn post_raw(app: &Router, path: &str, body: impl Into<Body>) -> Answer {
    let request = Request::post(path).header("content-type", "application/json").body(body.into()).unwrap();
    send(app, request).await
}

pub async fn get(app: &Router, path: &str) -> Answer {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}
