//! Async tasks: workers take stored tasks and generate them on the same
//! path as `POST /v1/generate`, each under its owner's API key. A task is
//! stored before it is acknowledged; a worker that dies with the process
//! leaves it `running`, which the next start requeues or fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_api::generate::GenerateRequest;
use kiln_api::openai::ChatCompletionRequest;
use kiln_tasks::{OnRestart, SqliteStore, Task, TaskError, TaskStore};
use tokio::sync::Notify;

use crate::extract::RequestContext;
use crate::webhooks::WebhookConfig;
use crate::{ApiError, AppState, Auth, Caller, TokenMeter};

#[derive(Clone, Debug)]
pub struct TaskConfig {
    /// Tasks generated at once.
    pub workers: usize,
    /// Ended tasks are deleted this long after they end.
    pub retention: Duration,
    pub on_restart: OnRestart,
    /// How often a worker renews its claim on a running task (and hears of
    /// a cancellation made on another replica).
    pub heartbeat: Duration,
    pub webhooks: WebhookConfig,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            workers: 4,
            retention: Duration::from_secs(24 * 3600),
            on_restart: OnRestart::Requeue,
            heartbeat: Duration::from_secs(10),
            webhooks: WebhookConfig::default(),
        }
    }
}

/// The store and the workers' shared state.
pub struct Tasks {
    pub(crate) store: Box<dyn TaskStore>,
    config: TaskConfig,
    /// Running tasks, to stop on cancellation.
    running: Mutex<HashMap<String, Arc<Notify>>>,
    /// Rung when a task is stored, so an idle worker takes it at once.
    wake: Notify,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Tasks {
    /// Opens the SQLite store at `path` and settles what a previous process left running.
    pub fn open(path: &std::path::Path, config: TaskConfig) -> Result<Tasks, TaskError> {
        Tasks::new(Box::new(SqliteStore::open(path)?), config)
    }

    /// Runs tasks from `store`, first settling what a previous process left running.
    pub fn new(store: Box<dyn TaskStore>, config: TaskConfig) -> Result<Tasks, TaskError> {
        let recovered = store.recover(config.on_restart)?;
        if recovered > 0 {
            tracing::warn!(recovered, on_restart = ?config.on_restart, "tasks left running by the previous process");
        }
        Ok(Tasks { store, config, running: Mutex::new(HashMap::new()), wake: Notify::new() })
    }

    pub(crate) fn webhooks(&self) -> &WebhookConfig {
        &self.config.webhooks
    }

    pub(crate) fn woken(&self) {
        self.wake.notify_one();
    }

    /// Stops a running task's generation (its record is already `cancelled`).
    pub(crate) fn stop(&self, id: &str) {
        if let Some(stop) = self.lock().get(id) {
            stop.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts the workers and the retention sweep on the current runtime.
pub fn spawn_workers(state: &AppState) {
    let Some(tasks) = state.tasks_arc() else { return };
    for _ in 0..tasks.config.workers.max(1) {
        let (state, tasks) = (state.clone(), tasks.clone());
        tokio::spawn(async move {
            loop {
                let claimed = blocking(&tasks, |store| store.claim()).await;
                match claimed {
                    Ok(Some(task)) => run(&state, &tasks, task).await,
                    Ok(None) => {
                        // Nothing pending: wait for a new task (or look again soon,
                        // for tasks another process stored).
                        let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wake.notified()).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claiming a task");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let retention = tasks.config.retention.as_millis() as i64;
            if let Err(e) = blocking(&tasks, move |store| store.expire(retention)).await {
                tracing::error!(error = %e, "expiring old tasks");
            }
        }
    });
}

/// Runs `f` on the store off the async workers (SQLite calls block).
pub(crate) async fn blocking<T: Send + 'static>(
    tasks: &Arc<Tasks>,
    f: impl FnOnce(&dyn TaskStore) -> Result<T, TaskError> + Send + 'static,
) -> Result<T, TaskError> {
    let tasks = tasks.clone();
    tokio::task::spawn_blocking(move || f(&*tasks.store))
        .await
        .unwrap_or_else(|e| Err(TaskError::Corrupt(format!("task store worker: {e}"))))
}

/// Generates one task and records how it ended.
async fn run(state: &AppState, tasks: &Arc<Tasks>, task: Task) {
    let stop = Arc::new(Notify::new());
    tasks.lock().insert(task.id.clone(), stop.clone());
    let caller = caller(state, &task.owner);
    let key = caller.as_ref().and_then(|c| c.key.as_ref());
    let secret = key.and_then(|k| k.config.webhook_secret.as_ref()).map(|s| s.0.clone());
    // Tasks spend their owner's token allowance like its synchronous requests.
    let meter = key.and_then(|k| TokenMeter::for_key(state, k));
    let context = RequestContext { caller, meter, ..RequestContext::default() };
    let outcome = tokio::select! {
        outcome = generate(state, context, task.request.clone()) => outcome,
        () = stop.notified() => Err("cancelled by the client".to_string()),
        () = lost(tasks, &task) => Err("no longer this worker's task".to_string()),
    };
    tasks.lock().remove(&task.id);
    let (id, webhook) = (task.id.clone(), task.webhook_url.is_some());
    let status = if outcome.is_ok() { "completed" } else { "failed" };
    match blocking(tasks, move |store| store.finish(&task, outcome)).await {
        Ok(true) => {
            tracing::info!(task = id, status, "task ended");
            if webhook {
                notify(tasks, id, secret.or_else(|| tasks.config.webhooks.secret.as_ref().map(|s| s.0.clone())));
            }
        }
        Ok(false) => tracing::info!(task = id, "task no longer this worker's; its outcome is dropped"),
        Err(e) => tracing::error!(task = id, error = %e, "recording a task's end"),
    }
}

/// Renews the claim on `task` every heartbeat; returns once the task is no
/// longer this worker's (cancelled, perhaps through another replica, or
/// taken over after this process stalled past its lease).
async fn lost(tasks: &Arc<Tasks>, task: &Task) {
    loop {
        tokio::time::sleep(tasks.config.heartbeat).await;
        let claim = task.clone();
        match blocking(tasks, move |store| store.heartbeat(&claim)).await {
            Ok(true) => {}
            Ok(false) => return,
            // The store being unreachable for a moment is no reason to drop
            // the work; a lease that runs out meanwhile shows at the next beat.
            Err(e) => tracing::warn!(task = task.id, error = %e, "renewing a task's claim"),
        }
    }
}

/// Tells the task's webhook how it ended, in the background, signed with `secret`.
fn notify(tasks: &Arc<Tasks>, id: String, secret: Option<String>) {
    let tasks = tasks.clone();
    tokio::task::spawn_blocking(move || {
        let task = match tasks.store.get_any(&id) {
            Ok(Some(task)) => task,
            Ok(None) => return,
            Err(e) => return tracing::error!(task = id, error = %e, "reading a task for its webhook"),
        };
        let Some(url) = task.webhook_url.clone() else { return };
        let body = serde_json::to_vec(&crate::routes::tasks::view(task)).unwrap_or_default();
        crate::webhooks::deliver(&tasks.config.webhooks, secret.as_deref(), &url, &body, |attempt| {
            if let Err(e) = tasks.store.record_delivery(&id, &attempt) {
                tracing::error!(task = id, error = %e, "recording a webhook delivery");
            }
            let ok = attempt["status"].as_u64().is_some_and(|s| (200..300).contains(&s));
            metrics::counter!("kiln_webhook_deliveries_total", "outcome" => if ok { "delivered" } else { "failed" })
                .increment(1);
        });
    });
}

/// What a task asks for, as stored: the endpoint's name and its request.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "endpoint", rename_all = "snake_case")]
pub(crate) enum TaskRequest {
    /// `POST /v1/generate`'s request; the result is its answer.
    Generate(GenerateRequest),
    /// `POST /v1/chat/completions`'s; the result is a `chat.completion`.
    ChatCompletions(ChatCompletionRequest),
}

impl TaskRequest {
    fn parse(stored: serde_json::Value) -> Result<TaskRequest, String> {
        match serde_json::from_value(stored.clone()) {
            Ok(request) => Ok(request),
            // Stored before tasks named their endpoint: all were generate's.
            Err(e) => serde_json::from_value(stored)
                .map(TaskRequest::Generate)
                .map_err(|_| format!("the stored request is unreadable: {e}")),
        }
    }
}

async fn generate(
    state: &AppState,
    context: RequestContext,
    request: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let request = TaskRequest::parse(request)?;
    let message = |e: ApiError| e.body().error.message;
    // Over the owner's token allowance, a task waits for it rather than
    // failing: nobody is waiting on the answer.
    loop {
        let started = match request.clone() {
            TaskRequest::Generate(req) => {
                crate::routes::generate::start(state, context.clone(), req).await.map(|generation| (generation, None))
            }
            TaskRequest::ChatCompletions(req) => crate::routes::chat::start(state, context.clone(), req)
                .await
                .map(|(generation, logprobs)| (generation, Some(logprobs))),
        };
        let (generation, chat_logprobs) = match started {
            Err(ApiError::RateLimited { retry_after, .. }) => {
                tokio::time::sleep(retry_after).await;
                continue;
            }
            started => started.map_err(message)?,
        };
        let done = generation.collect().await.map_err(message)?;
        let result = match chat_logprobs {
            None => serde_json::to_value(crate::routes::generate::answer(state, done)),
            Some(logprobs) => serde_json::to_value(crate::routes::chat::completion(state, done, logprobs)),
        };
        return result.map_err(|e| e.to_string());
    }
}

/// The owner's key, so the task runs with its default pipeline and cache tenancy.
fn caller(state: &AppState, owner: &str) -> Option<Caller> {
    match &state.config().auth {
        Auth::Keys(keys) => keys.keys().iter().find(|k| k.name() == owner).map(|k| Caller { key: Some(k.clone()) }),
        Auth::Insecure => None,
    }
}
