//! kiln-tasks: generation tasks that outlive the request that made them and
//! the process that runs them. A task is stored before it is acknowledged,
//! moves `pending -> running -> completed | failed | cancelled`, and is seen
//! only by the API key that created it. The store is SQLite in WAL mode:
//! after a crash, tasks left `running` are run again or failed with a
//! reason, as configured — none is silently lost.

mod sqlite;

use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<TaskStatus> {
        Some(match s {
            "pending" => TaskStatus::Pending,
            "running" => TaskStatus::Running,
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            _ => return None,
        })
    }

    /// Completed, failed or cancelled: nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    }
}

/// One task as stored. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    /// The API key that created it (its name), or `""` without keys.
    pub owner: String,
    pub status: TaskStatus,
    /// The generation request, as the endpoint received it.
    pub request: serde_json::Value,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Times a worker took it (more than 1 after a restart re-ran it).
    pub attempts: u32,
    /// Told of the task's end, if set.
    pub webhook_url: Option<String>,
    /// Each attempt to tell it, in order.
    pub deliveries: Vec<serde_json::Value>,
}

/// What to do at start with tasks a previous process left `running`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRestart {
    /// Run them again (at-least-once).
    #[default]
    Requeue,
    /// Fail them, saying why.
    Fail,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("task store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("task store: a stored task is unreadable: {0}")]
    Corrupt(String),
}

/// Now, in the store's unit (Unix milliseconds).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
