//! The task workers: each takes a stored task, generates it under its
//! owner's API key (its default pipeline, token allowance and cache
//! tenancy) and records how it ended (which makes its webhook due). The
//! sweep expires ended tasks, fails those pending past their time to live
//! and settles running ones whose end could not be recorded.

use std::sync::Arc;
use std::time::Duration;

use kiln_tasks::{Task, now_ms};
use tokio::sync::Notify;

use super::delivery::spawn_deliverers;
use super::job::{ResultShape, TaskRequest};
use super::{Tasks, blocking};
use crate::config::Auth;
use crate::extract::{Caller, RequestContext};
use crate::generation::{Generation, collect_choices};
use crate::responses::{chat_completion, generation_response};
use crate::token_meter::TokenMeter;
use crate::{ApiError, AppState};

/// Starts the workers and the sweep on the current runtime, and the
/// webhook delivery threads.
pub fn spawn_workers(state: &AppState) {
    let Some(tasks) = state.tasks().cloned() else { return };
    spawn_deliverers(state.downgrade(), &tasks);
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
            tokio::time::sleep(tasks.config.sweep_every).await;
            sweep(&tasks).await;
        }
    });
}

/// Expires ended tasks, fails those pending too long and settles running
/// ones no worker runs.
async fn sweep(tasks: &Arc<Tasks>) {
    let retention = tasks.config.retention.as_millis() as i64;
    if let Err(e) = blocking(tasks, move |store| store.expire(retention)).await {
        tracing::error!(error = %e, "expiring old tasks");
    }
    let (cutoff, reason) = (now_ms() - tasks.config.pending_ttl.as_millis() as i64, tasks.expired_reason());
    match blocking(tasks, move |store| store.fail_pending_before(cutoff, &reason)).await {
        Ok(0) => {}
        Ok(failed) => {
            tracing::warn!(failed, ttl = ?tasks.config.pending_ttl, "tasks pending past their time to live");
            tasks.doorbell.ring();
        }
        Err(e) => tracing::error!(error = %e, "failing tasks pending past their time to live"),
    }
    // A task whose end could not be recorded is left `running` by no one:
    // settled as a restart would settle it.
    let live: Vec<String> = tasks.lock().keys().cloned().collect();
    let on_restart = tasks.config.on_restart;
    let stale = tasks.config.sweep_every.as_millis() as i64;
    match blocking(tasks, move |store| store.recover_orphans(&live, stale, on_restart)).await {
        Ok(0) => {}
        Ok(recovered) => {
            tracing::warn!(recovered, ?on_restart, "tasks left running by no worker");
            tasks.doorbell.ring();
        }
        Err(e) => tracing::error!(error = %e, "recovering tasks left running"),
    }
}
/// Tries at recording a task's end before it is left to the sweep.
const FINISH_TRIES: u32 = 3;

/// Generates one task and records how it ended.
async fn run(state: &AppState, tasks: &Arc<Tasks>, task: Task) {
    let stop = Arc::new(Notify::new());
    tasks.lock().insert(task.id.clone(), stop.clone());
    let caller = caller(state, &task.owner);
    // With keys, a task whose key has been revoked (a reload) does not run
    // unmetered: it fails, saying why.
    let revoked = caller.is_none() && matches!(state.config().auth, Auth::Keys(_));
    let key = caller.as_ref().and_then(|c| c.key.as_ref());
    // Tasks spend their owner's token allowance like its synchronous requests.
    let meter = key.and_then(|k| TokenMeter::for_key(state.limiter_arc(), k, state.config().limits));
    let context = RequestContext { request_id: task.id.clone(), caller, meter, ..RequestContext::default() };
    // Taken after its time to live (before the sweep got to it): its client
    // has likely given up, and the worker is better spent on another.
    let expired = now_ms() - task.created_at > tasks.config.pending_ttl.as_millis() as i64;
    let outcome = if expired {
        Err(tasks.expired_reason())
    } else if revoked {
        Err(format!("the API key {:?} that created this task is no longer configured", task.owner))
    } else {
        tokio::select! {
            outcome = generate(state, context, task.request.clone()) => outcome,
            () = stop.notified() => Err("cancelled by the client".to_string()),
            () = lost(tasks, &task) => Err("no longer this worker's task".to_string()),
        }
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
                tasks.doorbell.ring();
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

/// How long a task waits for an engine too far behind to take it.
const BEHIND_PATIENCE: Duration = Duration::from_secs(600);

async fn generate(
    state: &AppState,
    context: RequestContext,
    request: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let message = |e: ApiError| e.body().error.message;
    let request = TaskRequest::parse(request)?;
    // Over the owner's token allowance, or with the engine too far behind
    // to finish it in time, a task waits rather than failing: nobody is
    // waiting on the answer. (Behind for good, as a task too long for the
    // request timeout even alone is, it fails in the end.)
    let gave_up_at = std::time::Instant::now() + BEHIND_PATIENCE;
    loop {
        let (generation, shape) = request.clone().validate(state, &context).map_err(message)?;
        let generations = match Generation::start_choices(state, generation, context.clone()).await {
            Err(ApiError::RateLimited { retry_after, .. }) => {
                tokio::time::sleep(retry_after).await;
                continue;
            }
            Err(ApiError::Behind { retry_after, .. }) if std::time::Instant::now() < gave_up_at => {
                tokio::time::sleep(retry_after).await;
                continue;
            }
            started => started.map_err(message)?,
        };
        let mut done = collect_choices(generations).await.map_err(message)?;
        let result = match shape {
            ResultShape::Generation => {
                // The record names what produced it, as a chat completion does.
                let done = done.remove(0);
                let fingerprint = done.fingerprint.to_string();
                serde_json::to_value(generation_response(state, done)).map(|mut value| {
                    value["system_fingerprint"] = serde_json::Value::String(fingerprint);
                    value
                })
            }
            ResultShape::ChatCompletion { logprobs } => serde_json::to_value(chat_completion(state, done, logprobs)),
        };
        return result.map_err(|e| e.to_string());
    }
}

/// The owner's key, so the task runs with its default pipeline and cache
/// tenancy (and its webhook is signed with the key's secret).
pub(super) fn caller(state: &AppState, owner: &str) -> Option<Caller> {
    match &state.config().auth {
        Auth::Keys(keys) => {
            keys.current().keys().iter().find(|k| k.name() == owner).map(|k| Caller { key: Some(k.clone()) })
        }
        Auth::Insecure => None,
    }
}
