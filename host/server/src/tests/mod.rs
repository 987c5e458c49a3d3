//! The HTTP API through `Router::oneshot`, on the real default model (and,
//! for failures a real engine cannot be made to produce on demand, on fake
//! backends), plus cancellation over a real socket.

mod access;
mod cache;
mod cancel;
mod docs;
mod errors;
mod generate;
mod metrics;
mod openai;
mod plugins;
mod tasks;
mod tokenize;

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

/// The API on the real model; the engine is returned to watch its counters.
pub fn real_app() -> (Router, Arc<Engine>) {
    real_app_with(ServerConfig::default())
}

pub fn real_app_with(config: ServerConfig) -> (Router, Arc<Engine>) {
    let (model, tokenizer) = loaded();
    let engine = Arc::new(Engine::start(model, tokenizer.clone(), EngineConfig::default()));
    let state = AppState::with_plugins(engine.clone(), served(tokenizer), config, shared_plugins());
    (router(state), engine)
}

/// Pipelines the tests use, on top of `default` and `native`: one per
/// misbehaviour of the hostile guest (installed as `hostile`), and a
/// redacting one.
fn test_pipelines() -> std::collections::BTreeMap<String, PipelineSpec> {
    let mut pipelines = std::collections::BTreeMap::new();
    for mode in ["loop", "memory", "trap", "garbage", "refuse"] {
        let spec = PipelineSpec {
            sampler: Some("hostile".into()),
            config: [("hostile".to_string(), [("mode".to_string(), mode.to_string())].into())].into(),
            ..PipelineSpec::first_party_default()
        };
        pipelines.insert(format!("hostile-{mode}"), spec);
    }
    let redacted = PipelineSpec { post: vec!["redact".into()], ..PipelineSpec::first_party_default() };
    pipelines.insert("redacted".into(), redacted);
    pipelines
}

/// A plugin host of its own (admin tests change it), with the hostile guest
/// in its plugin directory; compiled components are cached across tests.
pub fn plugin_host() -> (Arc<PluginHost>, tempfile::TempDir) {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let hostile = kiln_plugins::built_plugins_dir().join("hostile_sampler.wasm");
    std::fs::copy(hostile, dir.path().join("hostile.wasm")).unwrap();
    let (_, tokenizer) = loaded();
    let config = PluginsConfig {
        dir: Some(dir.path().to_path_buf()),
        watch: false,
        runtime: kiln_plugins::RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..kiln_plugins::RuntimeConfig::default()
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

/// The API on the real model with `plugins`, as a client at `peer` sees it.
pub fn app_with_plugins(plugins: Arc<PluginHost>, peer: std::net::SocketAddr) -> Router {
    let (model, tokenizer) = loaded();
    let engine = Arc::new(Engine::start(model, tokenizer.clone(), EngineConfig::default()));
    let state = AppState::with_plugins(engine, served(tokenizer), ServerConfig::default(), plugins);
    router(state).layer(axum::extract::connect_info::MockConnectInfo(peer))
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
                Ok(scripted(texts, TokenEvent::Failed("matmul kernel fault at 0xdeadbeef".into())))
            }
            Fake::Say(texts) => {
                let usage = kiln_engine::Usage { prompt_tokens: 1, completion_tokens: texts.len() };
                let reason = kiln_engine::FinishReason::Length;
                Ok(scripted(texts, TokenEvent::Finished { reason, usage, tail: String::new() }))
            }
            Fake::Slow(delay) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let delay = *delay;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let token = TokenEvent::Token { id: 0, text: "late".into(), logprob: None, top_logprobs: vec![] };
                    let usage = kiln_engine::Usage { prompt_tokens: 1, completion_tokens: 1 };
                    let finish =
                        TokenEvent::Finished { reason: kiln_engine::FinishReason::Length, usage, tail: String::new() };
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

pub fn fake_app(fake: Fake) -> Router {
    fake_app_with(fake, ServerConfig::default())
}

pub fn fake_app_with(fake: Fake, config: ServerConfig) -> Router {
    let (_, tokenizer) = loaded();
    let vocab_size = tokenizer.vocab_size() + PADDED_IDS;
    let limits = ModelLimits { vocab_size, max_context: CONTEXT, default_stop_ids: vec![] };
    let backend = FakeBackend { fake, limits, stats: EngineStats::default() };
    router(AppState::new(Arc::new(backend), served(tokenizer), config))
}

/// A fake model with async tasks in a fresh SQLite file, workers running.
pub fn fake_app_with_tasks(fake: Fake, config: ServerConfig) -> (Router, tempfile::TempDir) {
    fake_app_with_task_config(fake, config, crate::TaskConfig::default())
}

pub fn fake_app_with_task_config(
    fake: Fake,
    config: ServerConfig,
    tasks: crate::TaskConfig,
) -> (Router, tempfile::TempDir) {
    let (_, tokenizer) = loaded();
    let limits = ModelLimits { vocab_size: tokenizer.vocab_size(), max_context: CONTEXT, default_stop_ids: vec![] };
    let backend = FakeBackend { fake, limits, stats: EngineStats::default() };
    let state = AppState::new(Arc::new(backend), served(tokenizer), config);
    let dir = tempfile::tempdir().unwrap();
    let tasks = crate::Tasks::open(&dir.path().join("tasks.db"), tasks).unwrap();
    state.attach_tasks(Arc::new(tasks));
    crate::spawn_workers(&state);
    (router(state), dir)
}

/// A fake model behind the test pipelines.
pub fn fake_app_with_plugins(fake: Fake) -> Router {
    let (_, tokenizer) = loaded();
    let limits = ModelLimits { vocab_size: tokenizer.vocab_size(), max_context: CONTEXT, default_stop_ids: vec![] };
    let backend = FakeBackend { fake, limits, stats: EngineStats::default() };
    router(AppState::with_plugins(Arc::new(backend), served(tokenizer), ServerConfig::default(), shared_plugins()))
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
