//! The task workers: each takes a stored task, generates it under its
//! owner's API key (its default pipeline, token allowance and cache
//! tenancy), records how it ended and calls its webhook.

use std::sync::Arc;
use std::time::Duration;

use kiln_tasks::Task;
use tokio::sync::Notify;

use super::job::{ResultShape, TaskRequest};
use super::view::view;
use super::{Tasks, blocking};
use crate::config::Auth;
use crate::extract::{Caller, RequestContext};
use crate::generation::Generation;
use crate::responses::{chat_completion, generation_response};
use crate::token_meter::TokenMeter;
use crate::{ApiError, AppState};

/// Starts the workers and the retention sweep on the current runtime.
pub fn spawn_workers(state: &AppState) {
    let Some(tasks) = state.tasks().cloned() else { return };
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
            tokio::time::sleep(SWEEP_EVERY).await;
            let retention = tasks.config.retention.as_millis() as i64;
            if let Err(e) = blocking(&tasks, move |store| store.expire(retention)).await {
                tracing::error!(error = %e, "expiring old tasks");
            }
            // A task whose end could not be recorded is left `running` by no
            // one: settled as a restart would settle it.
            let live: Vec<String> = tasks.lock().keys().cloned().collect();
            let on_restart = tasks.config.on_restart;
            let stale = SWEEP_EVERY.as_millis() as i64;
            match blocking(&tasks, move |store| store.recover_orphans(&live, stale, on_restart)).await {
                Ok(0) => {}
                Ok(recovered) => tracing::warn!(recovered, ?on_restart, "tasks left running by no worker"),
                Err(e) => tracing::error!(error = %e, "recovering tasks left running"),
            }
        }
    });
}

/// How often ended tasks are expired and orphaned ones recovered.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Tries at recording a task's end before it is left to the sweep.
const FINISH_TRIES: u32 = 3;

/// Generates one task and records how it ended.
async fn run(state: &AppState, tasks: &Arc<Tasks>, task: Task) {
    let stop = Arc::new(Notify::new());
    tasks.lock().insert(task.id.clone(), stop.clone());
    let caller = caller(state, &task.owner);
    let key = caller.as_ref().and_then(|c| c.key.as_ref());
    let secret = key.and_then(|k| k.config.webhook_secret.as_ref()).map(|s| s.0.clone());
    // Tasks spend their owner's token allowance like its synchronous requests.
    let meter = key.and_then(|k| TokenMeter::for_key(state.limiter_arc(), k, state.config().limits));
    let context = RequestContext { caller, meter, ..RequestContext::default() };
    let outcome = tokio::select! {
        outcome = generate(state, context, task.request.clone()) => outcome,
        () = stop.notified() => Err("cancelled by the client".to_string()),
        () = lost(tasks, &task) => Err("no longer this worker's task".to_string()),
    };
    tasks.lock().remove(&task.id);
    let (id, webhook) = (task.id.clone(), task.webhook_url.is_some());
    let status = if outcome.is_ok() { "completed" } else { "failed" };
    let mut tries = 0;
    let finished = loop {
        tries += 1;
        let (task, outcome) = (task.clone(), outcome.clone());
        match blocking(tasks, move |store| store.finish(&task, outcome)).await {
            // The store busy or the disk full for a moment: try again soon.
            Err(e) if tries < FINISH_TRIES => {
                tracing::warn!(task = id, error = %e, tries, "recording a task's end; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            finished => break finished,
        }
    };
    match finished {
        Ok(true) => {
            tracing::info!(task = id, status, "task ended");
            if webhook {
                notify(tasks, id, secret.or_else(|| tasks.config.webhooks.secret.as_ref().map(|s| s.0.clone())));
            }
        }
        Ok(false) => tracing::info!(task = id, "task no longer this worker's; its outcome is dropped"),
        Err(e) => tracing::error!(task = id, error = %e, "recording a task's end failed; the sweep will settle it"),
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
        let body = serde_json::to_vec(&view(task)).unwrap_or_default();
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

async fn generate(
    state: &AppState,
    context: RequestContext,
    request: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let message = |e: ApiError| e.body().error.message;
    let request = TaskRequest::parse(request)?;
    // Over the owner's token allowance, a task waits for it rather than
    // failing: nobody is waiting on the answer.
    loop {
        let (generation, shape) = request.clone().validate(state, &context).map_err(message)?;
        let generation = match Generation::start(state, generation, context.clone()).await {
            Err(ApiError::RateLimited { retry_after, .. }) => {
                tokio::time::sleep(retry_after).await;
                continue;
            }
            started => started.map_err(message)?,
        };
        let done = generation.collect().await.map_err(message)?;
        let result = match shape {
            ResultShape::Generation => serde_json::to_value(generation_response(state, done)),
            ResultShape::ChatCompletion { logprobs } => serde_json::to_value(chat_completion(state, done, logprobs)),
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
