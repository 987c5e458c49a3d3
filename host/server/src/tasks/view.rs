//! A stored task as the API shows it (`GET /v1/tasks/{id}`, webhooks).

use kiln_api::tasks::TaskView;
use kiln_tasks::Task;

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

pub(crate) fn view(task: Task) -> TaskView {
    let usage = task.result.as_ref().and_then(|r| serde_json::from_value(r["usage"].clone()).ok());
    TaskView {
        task_id: task.id,
        status: task.status.as_str().into(),
        created_at: seconds(task.created_at),
        started_at: task.started_at.map(seconds),
        completed_at: task.completed_at.map(seconds),
        usage,
        result: task.result,
        error: task.error,
        attempts: task.attempts,
        worker: task.worker,
        webhook_url: task.webhook_url,
        webhook_deliveries: task.deliveries,
    }
}
