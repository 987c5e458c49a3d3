//! Async generation tasks: `POST /v1/generate/async`,
//! `POST /v1/chat/completions/async`, `GET /v1/tasks`,
//! `GET /v1/tasks/{id}`, `POST /v1/tasks/{id}/cancel`, `DELETE /v1/tasks/{id}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Usage;

/// The answer to `POST /v1/generate/async` (status 202).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskAccepted {
    pub task_id: String,
    /// Always `pending`.
    pub status: String,
}

/// A task as its owner sees it. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub task_id: String,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub completed_at: Option<f64>,
    /// The answer, once `completed`: as `POST /v1/generate` answers, or a
    /// `chat.completion` for a task made by `POST /v1/chat/completions/async`;
    /// either carries the `system_fingerprint` of what produced it.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it `failed` (or that it was `cancelled`).
    pub error: Option<String>,
    pub usage: Option<Usage>,
    /// Times a worker took it up (more than 1 when a restart ran it again).
    pub attempts: u32,
    /// The server process that ran it last (`<pid>-<random>`): with several
    /// replicas, which one.
    pub worker: Option<String>,
    pub webhook_url: Option<String>,
    /// Each attempt to deliver the webhook: `{attempt, at, status}` or `{attempt, at, error}`.
    pub webhook_deliveries: Vec<serde_json::Value>,
}

/// A page of the caller's tasks, newest first.
/// The answer to `DELETE /v1/tasks/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskDeleted {
    pub task_id: String,
    /// Always `true`.
    pub deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub data: Vec<TaskView>,
    /// More tasks follow: ask again with `after` set to the last `task_id`.
    pub has_more: bool,
}
