//! kiln-tasks: generation tasks that outlive the request that made them and
//! the process that runs them. A task is stored before the request that
//! made it is answered, moves `pending -> running -> completed | failed |
//! cancelled`, and is seen only by the API key that created it. Two stores
//! implement [`TaskStore`]: [`SqliteStore`], one SQLite file in WAL mode for
//! one machine (at start, tasks a crashed process left `running` are run
//! again or failed with a reason, as configured), and [`RedisStore`] for
//! several replicas (a Stream with a consumer group is the work queue; a
//! replica that dies leaves its entries unacknowledged, and another takes
//! them over once their lease runs out, to run them again or fail them, as
//! configured). None is silently lost.

#![forbid(unsafe_code)]

mod redis;
#[cfg(any(test, feature = "redis-server"))]
pub mod redis_server;
#[cfg(test)]
mod redis_tests;
mod sqlite;

use serde::{Deserialize, Serialize};

pub use redis::{RedisConnector, RedisStore, RedisTaskConfig};
pub use sqlite::SqliteStore;

/// Where tasks live. Every call blocks (a file or a socket): callers on an
/// async runtime run them on its blocking threads.
pub trait TaskStore: Send + Sync + std::fmt::Debug {
    /// Stores a new pending task; `webhook_url` hears of its end.
    fn create(&self, owner: &str, request: &serde_json::Value, webhook_url: Option<&str>) -> Result<Task, TaskError>;
    /// The task, if `owner` created it.
    fn get(&self, id: &str, owner: &str) -> Result<Option<Task>, TaskError>;
    /// The task by id alone (for the server's own use: webhooks).
    fn get_any(&self, id: &str) -> Result<Option<Task>, TaskError>;
    /// `owner`'s tasks, newest first, `limit` at most, after the task `after`.
    fn list(&self, owner: &str, after: Option<&str>, limit: usize) -> Result<Vec<Task>, TaskError>;
    /// Takes the oldest runnable task for a worker: it is `running` from now,
    /// its `attempts` counting this claim.
    fn claim(&self) -> Result<Option<Task>, TaskError>;
    /// Whether the claimed `task` is still this worker's to run (not
    /// cancelled, not taken over); keeps its claim alive where claims lapse.
    fn heartbeat(&self, task: &Task) -> Result<bool, TaskError>;
    /// Ends the claimed `task`. `false` if it is no longer this claim's to
    /// end (cancelled meanwhile, or taken over by another worker).
    fn finish(&self, task: &Task, result: Result<serde_json::Value, String>) -> Result<bool, TaskError>;
    /// Cancels `owner`'s task if it has not ended; the task as it now stands.
    fn cancel(&self, id: &str, owner: &str) -> Result<Option<Task>, TaskError>;
    /// At start: settles what a previous process left `running`. Returns how
    /// many tasks that touched.
    fn recover(&self, on_restart: OnRestart) -> Result<usize, TaskError>;
    /// While serving: settles tasks this process claimed at least
    /// `stale_ms` ago that none of its workers runs (`live` lists what they
    /// run): a task whose final write failed. Stores whose claims lapse
    /// (Redis leases) recover these by themselves and do nothing here.
    fn recover_orphans(&self, _live: &[String], _stale_ms: i64, _on_restart: OnRestart) -> Result<usize, TaskError> {
        Ok(0)
    }
    /// Deletes ended tasks that ended more than `retention_ms` ago.
    fn expire(&self, retention_ms: i64) -> Result<usize, TaskError>;
    /// When the oldest pending task was created (Unix ms), if any is pending.
    fn oldest_pending(&self) -> Result<Option<i64>, TaskError>;
    /// Tasks per status, for metrics.
    fn counts(&self) -> Result<Vec<(TaskStatus, u64)>, TaskError>;
    /// Pending tasks: all of them, and `owner`'s.
    fn pending(&self, owner: &str) -> Result<PendingCounts, TaskError>;
    /// Fails the tasks still pending that were created before `cutoff_ms`,
    /// with `reason` as their error. Returns how many.
    fn fail_pending_before(&self, cutoff_ms: i64, reason: &str) -> Result<usize, TaskError>;
    /// Deletes `owner`'s task, whatever its state (a running one's worker
    /// hears of it at its next heartbeat). Whether there was one.
    fn delete(&self, id: &str, owner: &str) -> Result<bool, TaskError>;
    /// Takes the task whose webhook delivery is due soonest, if one is due
    /// now, and moves its next delivery `lease_ms` ahead so no other
    /// deliverer takes it meanwhile (a deliverer that dies mid-attempt
    /// leaves it to be taken again: at least once). A task whose end is
    /// recorded (completed or failed) with a `webhook_url` is due at once;
    /// the due time is stored with the task, so a restart resumes delivery.
    fn claim_delivery(&self, lease_ms: i64) -> Result<Option<Task>, TaskError>;
    /// Notes one attempt to deliver the task's webhook, and when the next
    /// is due (`None`: no more attempts).
    fn record_delivery(&self, id: &str, attempt: &serde_json::Value, next_due: Option<i64>) -> Result<(), TaskError>;
}

/// How many tasks wait for a worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCounts {
    pub total: u64,
    /// The owner's asked about.
    pub owner: u64,
}

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
    /// The process that claimed it last (`<pid>-<random>`), so operators
    /// can tell which replica ran it.
    pub worker: Option<String>,
    /// Told of the task's end, if set.
    pub webhook_url: Option<String>,
    /// Each attempt to tell it, in order.
    pub deliveries: Vec<serde_json::Value>,
}

impl Task {
    /// A new task as every store first records it: pending, its id fresh.
    fn pending(owner: &str, request: &serde_json::Value, webhook_url: Option<&str>) -> Task {
        Task {
            id: uuid::Uuid::new_v4().to_string(),
            owner: owner.into(),
            status: TaskStatus::Pending,
            request: request.clone(),
            created_at: now_ms(),
            started_at: None,
            completed_at: None,
            result: None,
            error: None,
            attempts: 0,
            worker: None,
            webhook_url: webhook_url.map(str::to_string),
            deliveries: Vec::new(),
        }
    }
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
    #[error("task store (redis): {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("task store (redis): no connection: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("task store: a stored task is unreadable: {0}")]
    Corrupt(String),
}

/// This process's name as a worker: its pid and a random part (pids repeat
/// across machines and restarts).
fn worker_name() -> String {
    format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Now, in the store's unit (Unix milliseconds).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
