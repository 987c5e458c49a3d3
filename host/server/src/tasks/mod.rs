//! Async tasks: the store and what its workers share. A task is stored
//! (its request validated first, as a synchronous one would be) before it
//! is acknowledged; workers ([`worker`]) take stored tasks and generate
//! them on the same path as the synchronous endpoints, each under its
//! owner's API key. A worker that dies with the process leaves its task
//! `running`, which the next start requeues or fails. Webhooks are
//! delivered by their own threads ([`delivery`]) from the store's schedule.

pub(crate) mod delivery;
pub(crate) mod job;
pub(crate) mod view;
pub(crate) mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_tasks::{OnRestart, SqliteStore, TaskError, TaskStore};
use tokio::sync::Notify;

use crate::webhooks::WebhookConfig;

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
    /// Tasks waiting for a worker, all keys together: past it, a new one is
    /// 503 (`task_queue_full`) with `Retry-After`.
    pub max_pending: u64,
    /// Tasks waiting for a worker per API key: past it, 429
    /// (`too_many_pending_tasks`) with `Retry-After`.
    pub max_pending_per_key: u64,
    /// A task still pending this long after it was stored fails, saying so,
    /// rather than run for a client that has likely given up.
    pub pending_ttl: Duration,
    /// How often ended tasks are expired, too-old pending ones failed and
    /// orphaned running ones recovered.
    pub sweep_every: Duration,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            workers: 4,
            retention: Duration::from_secs(24 * 3600),
            on_restart: OnRestart::Requeue,
            heartbeat: Duration::from_secs(10),
            webhooks: WebhookConfig::default(),
            max_pending: 1000,
            max_pending_per_key: 200,
            pending_ttl: Duration::from_secs(3600),
            sweep_every: Duration::from_secs(60),
        }
    }
}

/// The store and the workers' shared state.
pub struct Tasks {
    pub(crate) store: Box<dyn TaskStore>,
    pub(crate) config: TaskConfig,
    /// Running tasks, to stop on cancellation.
    running: Mutex<HashMap<String, Arc<Notify>>>,
    /// Rung when a task is stored, so an idle worker takes it at once.
    pub(crate) wake: Notify,
    /// Rung when a webhook delivery becomes due.
    pub(crate) doorbell: delivery::Doorbell,
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
        Ok(Tasks {
            store,
            config,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            doorbell: delivery::Doorbell::default(),
        })
    }

    pub(crate) fn webhooks(&self) -> &WebhookConfig {
        &self.config.webhooks
    }

    pub(crate) fn woken(&self) {
        self.wake.notify_one();
    }

    /// The error of a task that waited past `pending_ttl`.
    pub(crate) fn expired_reason(&self) -> String {
        format!(
            "the task waited longer than the server's pending_ttl_secs ({} s) for a worker",
            self.config.pending_ttl.as_secs()
        )
    }

    /// Stops a running task's generation (its record is already `cancelled`).
    pub(crate) fn stop(&self, id: &str) {
        if let Some(stop) = self.lock().get(id) {
            stop.notify_one();
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
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
