//! Async generation: `POST /v1/generate/async` and
//! `POST /v1/chat/completions/async` check the request as their synchronous
//! endpoint does, store a task and answer 202 at once (or 429/503 when the
//! key's share of the queue, or the queue, is full); `GET /v1/tasks/{id}`
//! reports it, `POST /v1/tasks/{id}/cancel` cancels it, `DELETE` deletes it;
//! `GET /v1/tasks` lists the caller's. A task is visible only to the API key
//! that created it: to any other it does not exist (404).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kiln_api::ErrorBody;
use kiln_api::generate::GenerationRequest;
use kiln_api::openai::ChatCompletionRequest;
use kiln_api::tasks::{TaskAccepted, TaskDeleted, TaskList, TaskView};
use kiln_tasks::{TaskError, TaskStore};

use crate::extract::{ApiJson, ApiPath, ApiQuery, RequestContext};
use crate::openapi::GenerationErrors;
use crate::tasks::Tasks;
use crate::tasks::job::TaskRequest;
use crate::tasks::view::view;
use crate::webhooks::refused;
use crate::{ApiError, AppState};

/// Most tasks one page lists.
pub(crate) const MAX_PAGE: usize = 100;

/// Generate in the background: the request is checked as `POST /v1/generate`
/// checks it, stored, then `202 {task_id, status: "pending"}`.
#[utoipa::path(post, path = "/v1/generate/async", tag = "tasks", request_body = GenerationRequest,
    responses(
        (status = 202, description = "Stored; poll `GET /v1/tasks/{task_id}`", body = TaskAccepted),
        GenerationErrors,
    ))]
pub async fn generate_async(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(req): ApiJson<GenerationRequest>,
) -> Result<(StatusCode, Json<TaskAccepted>), ApiError> {
    submit(&state, &context, TaskRequest::Generate(Box::new(req))).await
}

/// A chat completion in the background: checked as `POST /v1/chat/completions`
/// checks it, stored, then `202 {task_id, status: "pending"}`; the task's
/// result is a `chat.completion`.
#[utoipa::path(post, path = "/v1/chat/completions/async", tag = "tasks", request_body = ChatCompletionRequest,
    responses(
        (status = 202, description = "Stored; poll `GET /v1/tasks/{task_id}`", body = TaskAccepted),
        GenerationErrors,
    ))]
pub async fn chat_completions_async(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<(StatusCode, Json<TaskAccepted>), ApiError> {
    submit(&state, &context, TaskRequest::ChatCompletions(Box::new(req))).await
}

/// Validates a task's request as the synchronous endpoint would (a request
/// that would be 400 there is 400 here, not a failed task later), checks its
/// webhook is one the server may call, and stores it for the caller.
async fn submit(
    state: &AppState,
    context: &RequestContext,
    request: TaskRequest,
) -> Result<(StatusCode, Json<TaskAccepted>), ApiError> {
    request.clone().validate(state, context)?;
    let tasks = tasks(state)?;
    let webhook_url = request.webhook_url().map(str::to_string);
    if let Some(url) = webhook_url.clone() {
        // Resolving the host blocks: off the async workers.
        let allow_private = tasks.webhooks().allow_private;
        let refusal = tokio::task::spawn_blocking(move || refused(&url, allow_private))
            .await
            .map_err(|e| ApiError::Internal(format!("checking a webhook URL: {e}")))?;
        if let Some(reason) = refusal {
            return Err(ApiError::invalid("webhook_url", reason));
        }
    }
    let owner = context.tenant().unwrap_or_default();
    admit(&tasks, &owner).await?;
    let request = serde_json::to_value(&request).map_err(|e| ApiError::Internal(e.to_string()))?;
    let task = store(&tasks, move |s| s.create(&owner, &request, webhook_url.as_deref())).await?;
    tasks.woken();
    Ok((StatusCode::ACCEPTED, Json(TaskAccepted { task_id: task.id, status: "pending".into() })))
}

/// Refuses a task past the key's share of the queue (429) or the queue's
/// bound (503). Counted, then stored: submissions racing each other may
/// pass the bound by as many as race, never without limit.
async fn admit(tasks: &Arc<Tasks>, owner: &str) -> Result<(), ApiError> {
    let asking = owner.to_string();
    let pending = store(tasks, move |s| s.pending(&asking)).await?;
    let (per_key, total) = (tasks.config.max_pending_per_key, tasks.config.max_pending);
    if pending.owner >= per_key {
        metrics::counter!("kiln_tasks_refused_total", "reason" => "per_key").increment(1);
        return Err(ApiError::TooManyPendingTasks { limit: per_key });
    }
    if pending.total >= total {
        metrics::counter!("kiln_tasks_refused_total", "reason" => "queue_full").increment(1);
        return Err(ApiError::TaskQueueFull { limit: total });
    }
    Ok(())
}

/// A task of the caller's: its status, and its result or error once ended.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task for this API key", body = ErrorBody),
    ))]
pub async fn get_task(
    State(state): State<AppState>,
    context: RequestContext,
    ApiPath(id): ApiPath,
) -> Result<Json<TaskView>, ApiError> {
    let tasks = tasks(&state)?;
    let owner = context.tenant().unwrap_or_default();
    let lookup = id.clone();
    let task = store(&tasks, move |s| s.get(&lookup, &owner)).await?;
    task.map(|t| Json(view(t))).ok_or(ApiError::NoSuchTask(id))
}

/// Cancel a task: a pending one never runs, a running one stops at its next
/// token. The task is kept (as `cancelled`) until the retention ends.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task as it now stands (`cancelled`, or how it had already ended)", body = TaskView),
        (status = 404, description = "No such task for this API key", body = ErrorBody),
    ))]
pub async fn cancel_task(
    State(state): State<AppState>,
    context: RequestContext,
    ApiPath(id): ApiPath,
) -> Result<Json<TaskView>, ApiError> {
    let tasks = tasks(&state)?;
    let owner = context.tenant().unwrap_or_default();
    let lookup = id.clone();
    let task = store(&tasks, move |s| s.cancel(&lookup, &owner)).await?.ok_or(ApiError::NoSuchTask(id))?;
    tasks.stop(&task.id);
    Ok(Json(view(task)))
}

/// Delete a task, whatever its state: a pending one never runs, a running
/// one stops; afterwards it is 404.
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Deleted", body = TaskDeleted),
        (status = 404, description = "No such task for this API key", body = ErrorBody),
    ))]
pub async fn delete_task(
    State(state): State<AppState>,
    context: RequestContext,
    ApiPath(id): ApiPath,
) -> Result<Json<TaskDeleted>, ApiError> {
    let tasks = tasks(&state)?;
    let owner = context.tenant().unwrap_or_default();
    let lookup = id.clone();
    if !store(&tasks, move |s| s.delete(&lookup, &owner)).await? {
        return Err(ApiError::NoSuchTask(id));
    }
    tasks.stop(&id);
    Ok(Json(TaskDeleted { task_id: id, deleted: true }))
}

#[derive(Debug, serde::Deserialize)]
pub struct Page {
    /// The last `task_id` of the previous page.
    after: Option<String>,
    /// Tasks per page (default 20, at most 100).
    limit: Option<usize>,
}

/// The caller's tasks, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks",
    params(
        ("after" = Option<String>, Query, description = "The last `task_id` of the previous page"),
        ("limit" = Option<usize>, Query, description = "Tasks per page (default 20, at most 100)"),
    ),
    responses(
        (status = 200, description = "A page of tasks", body = TaskList),
        (status = 400, description = "A query parameter out of range or of the wrong type (`param` names it)", body = ErrorBody),
    ))]
pub async fn list_tasks(
    State(state): State<AppState>,
    context: RequestContext,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<TaskList>, ApiError> {
    let limit = page.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1 to {MAX_PAGE}")));
    }
    let tasks = tasks(&state)?;
    let owner = context.tenant().unwrap_or_default();
    let mut found = store(&tasks, move |s| s.list(&owner, page.after.as_deref(), limit + 1)).await?;
    let has_more = found.len() > limit;
    found.truncate(limit);
    Ok(Json(TaskList { data: found.into_iter().map(view).collect(), has_more }))
}

fn tasks(state: &AppState) -> Result<Arc<Tasks>, ApiError> {
    state.tasks().cloned().ok_or_else(|| ApiError::Conflict("async tasks are not enabled on this server".into()))
}

async fn store<T: Send + 'static>(
    tasks: &Arc<Tasks>,
    f: impl FnOnce(&dyn TaskStore) -> Result<T, TaskError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::tasks::blocking(tasks, f).await.map_err(|e| ApiError::Internal(e.to_string()))
}
