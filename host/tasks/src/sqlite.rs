//! The embedded store: one SQLite file in WAL mode. Every change is one
//! statement (claiming a task is a single `UPDATE ... RETURNING`), so two
//! workers never take the same task and a crash leaves no half-made state.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{OnRestart, PendingCounts, Task, TaskError, TaskStatus, TaskStore, now_ms};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks(owner, seq);
-- Added with webhooks; ALTERed into stores made before them (see `open`).
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks(status, seq);
";

/// Makes a task that ends in this statement due for its webhook, if it has
/// one (`?1` is now in every statement that uses it).
const DUE_NOW: &str = "webhook_due = CASE WHEN webhook_url IS NULL THEN NULL ELSE ?1 END";

const COLUMNS: &str = "id, owner, status, request, created_at, started_at, completed_at, result, error, attempts, webhook_url, deliveries, worker";

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// This process's name, recorded on the tasks it claims.
    worker: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn task(row: &Row<'_>) -> rusqlite::Result<Task> {
    let json = |i: usize, text: Option<String>| -> rusqlite::Result<Option<serde_json::Value>> {
        text.map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
    };
    let status: String = row.get(2)?;
    let status = TaskStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, format!("status {status:?}").into())
    })?;
    Ok(Task {
        id: row.get(0)?,
        owner: row.get(1)?,
        status,
        request: json(3, row.get(3)?)?.unwrap_or_default(),
        created_at: row.get(4)?,
        started_at: row.get(5)?,
        completed_at: row.get(6)?,
        result: json(7, row.get(7)?)?,
        error: row.get(8)?,
        attempts: row.get(9)?,
        webhook_url: row.get(10)?,
        deliveries: json(11, row.get(11)?)?.and_then(|v| v.as_array().cloned()).unwrap_or_default(),
        worker: row.get(12)?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, TaskError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TaskError::Corrupt(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        // WAL: readers never wait for the writer; a commit survives the
        // process being killed at any point after it.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        for (column, kind) in
            [("webhook_url", "TEXT"), ("deliveries", "TEXT"), ("worker", "TEXT"), ("webhook_due", "INTEGER")]
        {
            let present: bool = conn.query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('tasks') WHERE name = ?1",
                params![column],
                |r| r.get(0),
            )?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE tasks ADD COLUMN {column} {kind}"))?;
            }
        }
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS tasks_by_webhook_due ON tasks(webhook_due) WHERE webhook_due IS NOT NULL",
        )?;
        Ok(SqliteStore { conn: Mutex::new(conn), worker: crate::worker_name() })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // Every change is one statement: a panic elsewhere leaves nothing half-done.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TaskStore for SqliteStore {
    fn create(&self, owner: &str, request: &serde_json::Value, webhook_url: Option<&str>) -> Result<Task, TaskError> {
        let task = Task::pending(owner, request, webhook_url);
        self.conn().execute(
            "INSERT INTO tasks (id, owner, status, request, created_at, webhook_url)
             VALUES (?1, ?2, 'pending', ?3, ?4, ?5)",
            params![task.id, owner, request.to_string(), task.created_at, webhook_url],
        )?;
        Ok(task)
    }

    fn record_delivery(&self, id: &str, attempt: &serde_json::Value, next_due: Option<i64>) -> Result<(), TaskError> {
        self.conn().execute(
            "UPDATE tasks SET deliveries = json_insert(COALESCE(deliveries, '[]'), '$[#]', json(?1)),
             webhook_due = ?2 WHERE id = ?3",
            params![attempt.to_string(), next_due, id],
        )?;
        Ok(())
    }

    fn claim_delivery(&self, lease_ms: i64) -> Result<Option<Task>, TaskError> {
        let now = now_ms();
        let sql = format!(
            "UPDATE tasks SET webhook_due = ?1 + ?2
             WHERE seq = (SELECT seq FROM tasks WHERE webhook_due <= ?1 ORDER BY webhook_due LIMIT 1)
             RETURNING {COLUMNS}"
        );
        Ok(self.conn().query_row(&sql, params![now, lease_ms], task).optional()?)
    }

    fn pending(&self, owner: &str) -> Result<PendingCounts, TaskError> {
        let (total, mine): (i64, i64) = self.conn().query_row(
            "SELECT COUNT(*), COALESCE(SUM(owner = ?1), 0) FROM tasks WHERE status = 'pending'",
            params![owner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(PendingCounts { total: total as u64, owner: mine as u64 })
    }

    fn fail_pending_before(&self, cutoff_ms: i64, reason: &str) -> Result<usize, TaskError> {
        Ok(self.conn().execute(
            &format!(
                "UPDATE tasks SET status = 'failed', completed_at = ?1, error = ?2, {DUE_NOW}
                 WHERE status = 'pending' AND created_at < ?3"
            ),
            params![now_ms(), reason, cutoff_ms],
        )?)
    }

    fn delete(&self, id: &str, owner: &str) -> Result<bool, TaskError> {
        Ok(self.conn().execute("DELETE FROM tasks WHERE id = ?1 AND owner = ?2", params![id, owner])? == 1)
    }

    fn get_any(&self, id: &str) -> Result<Option<Task>, TaskError> {
        let sql = format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1");
        Ok(self.conn().query_row(&sql, params![id], task).optional()?)
    }

    fn get(&self, id: &str, owner: &str) -> Result<Option<Task>, TaskError> {
        let sql = format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1 AND owner = ?2");
        Ok(self.conn().query_row(&sql, params![id, owner], task).optional()?)
    }

    fn list(&self, owner: &str, after: Option<&str>, limit: usize) -> Result<Vec<Task>, TaskError> {
        let conn = self.conn();
        let below = match after {
            Some(id) => conn
                .query_row("SELECT seq FROM tasks WHERE id = ?1 AND owner = ?2", params![id, owner], |r| r.get(0))
                .optional()?
                .unwrap_or(0i64),
            None => i64::MAX,
        };
        let sql = format!("SELECT {COLUMNS} FROM tasks WHERE owner = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3");
        let mut statement = conn.prepare(&sql)?;
        let rows = statement.query_map(params![owner, below, limit as i64], task)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn claim(&self) -> Result<Option<Task>, TaskError> {
        let sql = format!(
            "UPDATE tasks SET status = 'running', started_at = ?1, attempts = attempts + 1, worker = ?2
             WHERE seq = (SELECT seq FROM tasks WHERE status = 'pending' ORDER BY seq LIMIT 1)
             RETURNING {COLUMNS}"
        );
        Ok(self.conn().query_row(&sql, params![now_ms(), self.worker], task).optional()?)
    }

    fn heartbeat(&self, task: &Task) -> Result<bool, TaskError> {
        let mine = self
            .conn()
            .query_row(
                "SELECT 1 FROM tasks WHERE id = ?1 AND status = 'running' AND attempts = ?2",
                params![task.id, task.attempts],
                |_| Ok(()),
            )
            .optional()?;
        Ok(mine.is_some())
    }

    fn finish(&self, task: &Task, result: Result<serde_json::Value, String>) -> Result<bool, TaskError> {
        let (status, result, error) = match result {
            Ok(value) => (TaskStatus::Completed, Some(value.to_string()), None),
            Err(message) => (TaskStatus::Failed, None, Some(message)),
        };
        let changed = self.conn().execute(
            &format!(
                "UPDATE tasks SET status = ?2, completed_at = ?1, result = ?3, error = ?4, {DUE_NOW}
                 WHERE id = ?5 AND status = 'running' AND attempts = ?6"
            ),
            params![now_ms(), status.as_str(), result, error, task.id, task.attempts],
        )?;
        Ok(changed == 1)
    }

    fn cancel(&self, id: &str, owner: &str) -> Result<Option<Task>, TaskError> {
        let sql = format!(
            "UPDATE tasks SET status = 'cancelled', completed_at = ?1, error = 'cancelled by the client'
             WHERE id = ?2 AND owner = ?3 AND status IN ('pending', 'running')
             RETURNING {COLUMNS}"
        );
        let cancelled = self.conn().query_row(&sql, params![now_ms(), id, owner], task).optional()?;
        match cancelled {
            Some(task) => Ok(Some(task)),
            None => self.get(id, owner),
        }
    }

    fn recover(&self, on_restart: OnRestart) -> Result<usize, TaskError> {
        let changed = match on_restart {
            OnRestart::Requeue => {
                self.conn().execute("UPDATE tasks SET status = 'pending' WHERE status = 'running'", [])?
            }
            OnRestart::Fail => self.conn().execute(
                &format!(
                    "UPDATE tasks SET status = 'failed', completed_at = ?1,
                     error = 'the server stopped while this task was running', {DUE_NOW}
                     WHERE status = 'running'"
                ),
                params![now_ms()],
            )?,
        };
        Ok(changed)
    }

    fn recover_orphans(&self, live: &[String], stale_ms: i64, on_restart: OnRestart) -> Result<usize, TaskError> {
        // Claimed a while ago (not one a worker is just taking), by this
        // process, and run by none of its workers.
        let live = serde_json::to_string(live).map_err(|e| TaskError::Corrupt(e.to_string()))?;
        let orphans = "status = 'running' AND worker = ?1 AND started_at < ?2
                       AND id NOT IN (SELECT value FROM json_each(?3))";
        let cutoff = now_ms() - stale_ms;
        let changed = match on_restart {
            OnRestart::Requeue => self.conn().execute(
                &format!("UPDATE tasks SET status = 'pending' WHERE {orphans}"),
                params![self.worker, cutoff, live],
            )?,
            OnRestart::Fail => self.conn().execute(
                &format!(
                    "UPDATE tasks SET status = 'failed', completed_at = ?4,
                     error = 'the end of this task could not be recorded',
                     webhook_due = CASE WHEN webhook_url IS NULL THEN NULL ELSE ?4 END WHERE {orphans}"
                ),
                params![self.worker, cutoff, live, now_ms()],
            )?,
        };
        Ok(changed)
    }

    fn expire(&self, retention_ms: i64) -> Result<usize, TaskError> {
        let cutoff = now_ms() - retention_ms;
        Ok(self.conn().execute(
            "DELETE FROM tasks WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?1",
            params![cutoff],
        )?)
    }

    fn oldest_pending(&self) -> Result<Option<i64>, TaskError> {
        let oldest = self.conn().query_row("SELECT MIN(created_at) FROM tasks WHERE status = 'pending'", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?;
        Ok(oldest)
    }

    fn counts(&self) -> Result<Vec<(TaskStatus, u64)>, TaskError> {
        let conn = self.conn();
        let mut statement = conn.prepare("SELECT status, COUNT(*) FROM tasks GROUP BY status")?;
        let rows = statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut counts = Vec::new();
        for row in rows {
            let (status, n) = row?;
            let status = TaskStatus::parse(&status).ok_or_else(|| TaskError::Corrupt(format!("status {status:?}")))?;
            counts.push((status, n as u64));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("tasks.db")).unwrap()
    }

    #[test]
    fn a_task_moves_from_pending_to_completed_and_only_its_owner_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let created = store.create("app", &json!({"prompt": "hi"}), None).unwrap();
        assert_eq!(created.status, TaskStatus::Pending);
        assert!(store.get(&created.id, "other").unwrap().is_none());
        let claimed = store.claim().unwrap().unwrap();
        assert_eq!(
            (claimed.id.as_str(), claimed.status, claimed.attempts),
            (created.id.as_str(), TaskStatus::Running, 1)
        );
        assert!(store.claim().unwrap().is_none(), "a task is claimed once");
        assert!(store.heartbeat(&claimed).unwrap());
        assert!(store.finish(&claimed, Ok(json!({"text": "hello"}))).unwrap());
        let done = store.get(&created.id, "app").unwrap().unwrap();
        assert_eq!(done.status, TaskStatus::Completed);
        assert_eq!(done.result, Some(json!({"text": "hello"})));
        assert!(done.completed_at.unwrap() >= done.started_at.unwrap());
    }

    #[test]
    fn a_cancelled_task_is_not_completed_by_its_worker() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let task = store.create("app", &json!({}), None).unwrap();
        let claimed = store.claim().unwrap().unwrap();
        assert_eq!(store.cancel(&task.id, "app").unwrap().unwrap().status, TaskStatus::Cancelled);
        assert!(!store.heartbeat(&claimed).unwrap(), "the worker hears of the cancellation");
        assert!(!store.finish(&claimed, Ok(json!({}))).unwrap());
        assert_eq!(store.get(&task.id, "app").unwrap().unwrap().status, TaskStatus::Cancelled);
        assert!(store.cancel(&task.id, "other").unwrap().is_none());
    }

    #[test]
    fn tasks_survive_reopening_and_running_ones_are_requeued_or_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let store = store(&dir);
            let a = store.create("app", &json!({"n": 1}), None).unwrap();
            let b = store.create("app", &json!({"n": 2}), None).unwrap();
            store.claim().unwrap();
            (a, b)
        };
        let store = store(&dir);
        assert_eq!(store.recover(OnRestart::Requeue).unwrap(), 1);
        let again = store.claim().unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.attempts), (a.id.as_str(), 2));
        assert_eq!(store.recover(OnRestart::Fail).unwrap(), 1);
        let failed = store.get(&a.id, "app").unwrap().unwrap();
        assert_eq!(failed.status, TaskStatus::Failed);
        assert!(failed.error.unwrap().contains("stopped"));
        assert_eq!(store.get(&b.id, "app").unwrap().unwrap().status, TaskStatus::Pending);
    }

    #[test]
    fn lists_are_newest_first_and_paginate() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let ids: Vec<String> = (0..5).map(|i| store.create("app", &json!({"n": i}), None).unwrap().id).collect();
        store.create("other", &json!({}), None).unwrap();
        let page = store.list("app", None, 2).unwrap();
        assert_eq!(page.iter().map(|t| &t.id).collect::<Vec<_>>(), [&ids[4], &ids[3]]);
        let next = store.list("app", Some(&ids[3]), 10).unwrap();
        assert_eq!(next.len(), 3);
        assert_eq!(next[0].id, ids[2]);
    }

    #[test]
    fn webhook_deliveries_are_recorded_on_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let task = store.create("app", &json!({}), Some("https://example.com/hook")).unwrap();
        store.record_delivery(&task.id, &json!({"status": 500}), Some(0)).unwrap();
        store.record_delivery(&task.id, &json!({"status": 200}), None).unwrap();
        let task = store.get(&task.id, "app").unwrap().unwrap();
        assert_eq!(task.webhook_url.as_deref(), Some("https://example.com/hook"));
        assert_eq!(task.deliveries, [json!({"status": 500}), json!({"status": 200})]);
    }

    #[test]
    fn ended_tasks_expire_after_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let task = store.create("app", &json!({}), None).unwrap();
        let claimed = store.claim().unwrap().unwrap();
        assert_eq!(claimed.id, task.id);
        store.finish(&claimed, Err("boom".into())).unwrap();
        assert_eq!(store.expire(60_000).unwrap(), 0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(store.expire(0).unwrap(), 1);
        assert!(store.get(&task.id, "app").unwrap().is_none());
    }

    #[test]
    fn a_running_task_no_worker_runs_is_recovered_while_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let orphan = store.create("a", &serde_json::json!({"prompt": "x"}), None).unwrap();
        let live = store.create("a", &serde_json::json!({"prompt": "y"}), None).unwrap();
        let (first, second) = (store.claim().unwrap().unwrap(), store.claim().unwrap().unwrap());
        assert_eq!((first.id.as_str(), second.id.as_str()), (orphan.id.as_str(), live.id.as_str()));
        // Just claimed: a worker may be about to note it as running.
        assert_eq!(store.recover_orphans(std::slice::from_ref(&live.id), 60_000, OnRestart::Requeue).unwrap(), 0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(store.recover_orphans(std::slice::from_ref(&live.id), 1, OnRestart::Requeue).unwrap(), 1);
        assert_eq!(store.get_any(&orphan.id).unwrap().unwrap().status, TaskStatus::Pending);
        assert_eq!(store.get_any(&live.id).unwrap().unwrap().status, TaskStatus::Running, "a live task is left alone");
        // The old claim can no longer end it; the next claim runs it again.
        assert!(!store.finish(&first, Ok(serde_json::json!({}))).unwrap());
        assert_eq!(store.claim().unwrap().unwrap().attempts, 2);
    }

    #[test]
    fn an_ended_task_with_a_webhook_is_due_for_delivery_until_its_last_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let hooked = {
            let store = store(&dir);
            let hooked = store.create("app", &json!({}), Some("https://example.com/hook")).unwrap();
            store.create("app", &json!({}), None).unwrap();
            assert!(store.claim_delivery(60_000).unwrap().is_none(), "nothing ended yet");
            let (a, b) = (store.claim().unwrap().unwrap(), store.claim().unwrap().unwrap());
            store.finish(&b, Ok(json!({}))).unwrap();
            assert!(store.claim_delivery(60_000).unwrap().is_none(), "no webhook, no delivery");
            store.finish(&a, Err("boom".into())).unwrap();
            hooked
        };
        // Reopened, as after a restart: the delivery is still due.
        let store = store(&dir);
        let due = store.claim_delivery(60_000).unwrap().expect("due once ended");
        assert_eq!(due.id, hooked.id);
        assert!(store.claim_delivery(60_000).unwrap().is_none(), "taken: leased to its deliverer");
        store.record_delivery(&due.id, &json!({"attempt": 1, "status": 503}), Some(now_ms() - 1)).unwrap();
        let again = store.claim_delivery(60_000).unwrap().expect("a retry is due");
        assert_eq!(again.deliveries.len(), 1);
        store.record_delivery(&due.id, &json!({"attempt": 2, "status": 200}), None).unwrap();
        assert!(store.claim_delivery(0).unwrap().is_none(), "delivered: nothing more");
    }

    #[test]
    fn pending_tasks_are_counted_per_owner_and_fail_once_too_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let old = store.create("a", &json!({}), Some("https://example.com/hook")).unwrap();
        store.create("b", &json!({}), None).unwrap();
        assert_eq!(store.pending("a").unwrap(), PendingCounts { total: 2, owner: 1 });
        assert_eq!(store.pending("c").unwrap(), PendingCounts { total: 2, owner: 0 });
        assert_eq!(store.fail_pending_before(old.created_at, "too old").unwrap(), 0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(store.fail_pending_before(now_ms(), "too old").unwrap(), 2);
        let failed = store.get(&old.id, "a").unwrap().unwrap();
        assert_eq!((failed.status, failed.error.as_deref()), (TaskStatus::Failed, Some("too old")));
        assert_eq!(store.pending("a").unwrap(), PendingCounts::default());
        assert_eq!(store.claim_delivery(0).unwrap().map(|t| t.id), Some(old.id), "its webhook hears of it");
    }

    #[test]
    fn a_deleted_task_is_gone_and_its_worker_hears_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let task = store.create("a", &json!({}), None).unwrap();
        let claimed = store.claim().unwrap().unwrap();
        assert!(!store.delete(&task.id, "b").unwrap(), "only its owner deletes it");
        assert!(store.delete(&task.id, "a").unwrap());
        assert!(store.get(&task.id, "a").unwrap().is_none());
        assert!(!store.heartbeat(&claimed).unwrap());
        assert!(!store.finish(&claimed, Ok(json!({}))).unwrap());
        assert!(!store.delete(&task.id, "a").unwrap());
    }
}
