//! The shared store for several replicas, on Redis. A task is a hash
//! (`<prefix>task:<id>`, its webhook attempts a list beside it); the work
//! queue is a Stream with one consumer group, so each entry goes to one
//! replica and stays in that replica's pending list until acknowledged.
//! A worker keeps its claim alive by re-claiming its entry (which resets the
//! entry's idle time); an entry idle longer than the lease belonged to a
//! replica that died, and the next claim anywhere takes it over. Every
//! change of state is one Lua script, so a crash between two commands
//! cannot leave a task half-moved, and the counts per status stay exact.

use std::collections::HashMap;
use std::time::Duration;

use redis::{Commands, Connection, Script};

use crate::{OnRestart, PendingCounts, Task, TaskError, TaskStatus, TaskStore, now_ms};

mod connector;
mod scripts;

pub use connector::RedisConnector;
use scripts::{
    CANCEL, CLAIM, CLAIM_DELIVERY, CREATE, DELETE, EXPIRE, EXPIRE_BATCH, FAIL_PENDING, FINISH, HEARTBEAT, PRELUDE,
    RECORD_DELIVERY,
};

/// Settings of the Redis store.
#[derive(Clone, Debug)]
pub struct RedisTaskConfig {
    /// Put before every key, so several deployments can share one Redis.
    pub prefix: String,
    /// A running task whose worker has not renewed its claim for this long
    /// is taken over by another worker (workers renew at a third of it).
    pub lease: Duration,
    /// What a worker taking over an abandoned task does with it.
    pub on_abandoned: OnRestart,
}

impl Default for RedisTaskConfig {
    fn default() -> Self {
        RedisTaskConfig { prefix: "kiln:".into(), lease: Duration::from_secs(30), on_abandoned: OnRestart::Requeue }
    }
}

const GROUP: &str = "workers";

struct Scripts {
    create: Script,
    claim: Script,
    heartbeat: Script,
    finish: Script,
    cancel: Script,
    expire: Script,
    fail_pending: Script,
    delete: Script,
    claim_delivery: Script,
    record_delivery: Script,
}

pub struct RedisStore {
    pool: r2d2::Pool<RedisConnector>,
    config: RedisTaskConfig,
    /// This process's name in the consumer group.
    consumer: String,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("config", &self.config).field("consumer", &self.consumer).finish()
    }
}

impl RedisStore {
    /// Connects through `pool` and makes the work queue's consumer group if
    /// this is the first replica to start.
    pub fn open(pool: r2d2::Pool<RedisConnector>, config: RedisTaskConfig) -> Result<RedisStore, TaskError> {
        let consumer = crate::worker_name();
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        let store = RedisStore {
            pool,
            config,
            consumer,
            scripts: Scripts {
                create: with_prelude(CREATE),
                claim: with_prelude(CLAIM),
                heartbeat: with_prelude(HEARTBEAT),
                finish: with_prelude(FINISH),
                cancel: with_prelude(CANCEL),
                expire: with_prelude(EXPIRE),
                fail_pending: with_prelude(FAIL_PENDING),
                delete: with_prelude(DELETE),
                claim_delivery: with_prelude(CLAIM_DELIVERY),
                record_delivery: with_prelude(RECORD_DELIVERY),
            },
        };
        store.create_group(&mut *store.conn()?)?;
        Ok(store)
    }

    /// Makes the work queue's consumer group unless it exists.
    fn create_group(&self, conn: &mut Connection) -> Result<(), TaskError> {
        let made: redis::RedisResult<()> =
            redis::cmd("XGROUP").arg("CREATE").arg(self.key("queue")).arg(GROUP).arg("0").arg("MKSTREAM").query(conn);
        match made {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<RedisConnector>, TaskError> {
        Ok(self.pool.get()?)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.prefix)
    }

    fn task_key(&self, id: &str) -> String {
        self.key(&format!("task:{id}"))
    }

    /// Reads whole tasks (skipping any deleted meanwhile), in one round trip.
    fn read(&self, conn: &mut Connection, ids: &[String]) -> Result<Vec<Task>, TaskError> {
        let mut pipe = redis::pipe();
        for id in ids {
            let key = self.task_key(id);
            pipe.hgetall(&key).lrange(format!("{key}:deliveries"), 0, -1);
        }
        let replies: Vec<(HashMap<String, String>, Vec<String>)> = pipe.query(conn)?;
        let mut tasks = Vec::with_capacity(ids.len());
        for (id, (fields, deliveries)) in ids.iter().zip(replies) {
            if !fields.is_empty() {
                tasks.push(task(id, fields, &deliveries)?);
            }
        }
        Ok(tasks)
    }

    fn read_one(&self, conn: &mut Connection, id: &str) -> Result<Option<Task>, TaskError> {
        Ok(self.read(conn, &[id.to_string()])?.pop())
    }
}

fn task(id: &str, mut fields: HashMap<String, String>, deliveries: &[String]) -> Result<Task, TaskError> {
    let corrupt = |what: &str| TaskError::Corrupt(format!("task {id}: {what}"));
    let mut take = |name: &str| fields.remove(name);
    let number = |value: Option<String>, name: &str| -> Result<Option<i64>, TaskError> {
        value.map(|v| v.parse().map_err(|_| corrupt(name))).transpose()
    };
    let json = |value: Option<String>, name: &str| -> Result<Option<serde_json::Value>, TaskError> {
        value.map(|v| serde_json::from_str(&v).map_err(|_| corrupt(name))).transpose()
    };
    let status = take("status").and_then(|s| TaskStatus::parse(&s)).ok_or_else(|| corrupt("status"))?;
    Ok(Task {
        id: id.to_string(),
        owner: take("owner").ok_or_else(|| corrupt("owner"))?,
        status,
        request: json(take("request"), "request")?.unwrap_or_default(),
        created_at: number(take("created_at"), "created_at")?.unwrap_or_default(),
        started_at: number(take("started_at"), "started_at")?,
        completed_at: number(take("completed_at"), "completed_at")?,
        result: json(take("result"), "result")?,
        error: take("error"),
        attempts: number(take("attempts"), "attempts")?.unwrap_or_default() as u32,
        worker: take("worker"),
        webhook_url: take("webhook_url"),
        deliveries: deliveries
            .iter()
            .map(|d| serde_json::from_str(d).map_err(|_| corrupt("deliveries")))
            .collect::<Result<_, _>>()?,
    })
}

impl TaskStore for RedisStore {
    fn create(&self, owner: &str, request: &serde_json::Value, webhook_url: Option<&str>) -> Result<Task, TaskError> {
        let task = Task::pending(owner, request, webhook_url);
        let _: i64 = self
            .scripts
            .create
            .key(self.task_key(&task.id))
            .key(self.key(&format!("owner:{owner}")))
            .key(self.key("seq"))
            .key(self.key("queue"))
            .key(self.key("pending"))
            .key(self.key("counts"))
            .key(self.key("pending_by_owner"))
            .arg(&task.id)
            .arg(owner)
            .arg(request.to_string())
            .arg(task.created_at)
            .arg(webhook_url.unwrap_or_default())
            .invoke(&mut *self.conn()?)?;
        Ok(task)
    }

    fn get(&self, id: &str, owner: &str) -> Result<Option<Task>, TaskError> {
        Ok(self.get_any(id)?.filter(|t| t.owner == owner))
    }

    fn get_any(&self, id: &str) -> Result<Option<Task>, TaskError> {
        self.read_one(&mut *self.conn()?, id)
    }

    fn list(&self, owner: &str, after: Option<&str>, limit: usize) -> Result<Vec<Task>, TaskError> {
        let mut conn = self.conn()?;
        let below = match after {
            Some(id) => {
                let (who, seq): (Option<String>, Option<i64>) =
                    redis::cmd("HMGET").arg(self.task_key(id)).arg("owner").arg("seq").query(&mut *conn)?;
                match (who, seq) {
                    (Some(who), Some(seq)) if who == owner => format!("({seq}"),
                    _ => return Ok(Vec::new()),
                }
            }
            None => "+inf".to_string(),
        };
        let ids: Vec<String> =
            conn.zrevrangebyscore_limit(self.key(&format!("owner:{owner}")), below, "-inf", 0, limit as isize)?;
        self.read(&mut conn, &ids)
    }

    fn claim(&self) -> Result<Option<Task>, TaskError> {
        let mut conn = self.conn()?;
        let on_abandoned = match self.config.on_abandoned {
            OnRestart::Requeue => "requeue",
            OnRestart::Fail => "fail",
        };
        let mut claim = self.scripts.claim.prepare_invoke();
        claim
            .key(self.key("queue"))
            .key(self.key("counts"))
            .key(self.key("pending"))
            .key(self.key("ended"))
            .arg(&self.consumer)
            .arg(self.config.lease.as_millis() as u64)
            .arg(on_abandoned)
            .arg(now_ms())
            .arg(&self.config.prefix);
        let id: Option<String> = match claim.invoke(&mut *conn) {
            // The group is gone (a Redis restarted without persistence, or
            // flushed): make it again, or no task would ever run.
            Err(e) if e.code() == Some("NOGROUP") => {
                self.create_group(&mut conn)?;
                claim.invoke(&mut *conn)?
            }
            other => other?,
        };
        match id {
            Some(id) => self.read_one(&mut conn, &id),
            None => Ok(None),
        }
    }

    fn heartbeat(&self, task: &Task) -> Result<bool, TaskError> {
        let mine: i64 = self
            .scripts
            .heartbeat
            .key(self.task_key(&task.id))
            .key(self.key("queue"))
            .arg(&self.consumer)
            .arg(task.attempts)
            .invoke(&mut *self.conn()?)?;
        Ok(mine == 1)
    }

    fn finish(&self, task: &Task, result: Result<serde_json::Value, String>) -> Result<bool, TaskError> {
        let (status, result, error) = match result {
            Ok(value) => (TaskStatus::Completed, value.to_string(), String::new()),
            Err(message) => (TaskStatus::Failed, String::new(), message),
        };
        let ended: i64 = self
            .scripts
            .finish
            .key(self.task_key(&task.id))
            .key(self.key("queue"))
            .key(self.key("counts"))
            .key(self.key("ended"))
            .key(self.key("webhooks"))
            .arg(task.attempts)
            .arg(status.as_str())
            .arg(now_ms())
            .arg(result)
            .arg(error)
            .arg(&task.id)
            .invoke(&mut *self.conn()?)?;
        Ok(ended == 1)
    }

    fn cancel(&self, id: &str, owner: &str) -> Result<Option<Task>, TaskError> {
        let mut conn = self.conn()?;
        let found: i64 = self
            .scripts
            .cancel
            .key(self.task_key(id))
            .key(self.key("queue"))
            .key(self.key("counts"))
            .key(self.key("pending"))
            .key(self.key("ended"))
            .key(self.key("pending_by_owner"))
            .arg(owner)
            .arg(now_ms())
            .arg(id)
            .invoke(&mut *conn)?;
        if found == 0 {
            return Ok(None);
        }
        self.read_one(&mut conn, id)
    }

    /// Nothing to do at start: what a dead replica left running is taken
    /// over by the next claim once its lease has run out, here or elsewhere.
    fn recover(&self, _on_restart: OnRestart) -> Result<usize, TaskError> {
        Ok(0)
    }

    fn expire(&self, retention_ms: i64) -> Result<usize, TaskError> {
        let mut conn = self.conn()?;
        let cutoff = now_ms() - retention_ms;
        let mut expired = 0;
        // A thousand at a time, so no one script call holds Redis for long.
        loop {
            let batch: usize = self
                .scripts
                .expire
                .key(self.key("ended"))
                .key(self.key("counts"))
                .arg(cutoff)
                .arg(&self.config.prefix)
                .invoke(&mut *conn)?;
            expired += batch;
            if batch < EXPIRE_BATCH {
                return Ok(expired);
            }
        }
    }

    fn oldest_pending(&self) -> Result<Option<i64>, TaskError> {
        let oldest: Vec<(String, f64)> = self.conn()?.zrange_withscores(self.key("pending"), 0, 0)?;
        Ok(oldest.first().map(|(_, created)| *created as i64))
    }

    fn counts(&self) -> Result<Vec<(TaskStatus, u64)>, TaskError> {
        let counts: HashMap<String, i64> = self.conn()?.hgetall(self.key("counts"))?;
        let mut found = Vec::new();
        for (status, n) in counts {
            let status = TaskStatus::parse(&status).ok_or_else(|| TaskError::Corrupt(format!("status {status:?}")))?;
            found.push((status, n.max(0) as u64));
        }
        Ok(found)
    }

    fn record_delivery(&self, id: &str, attempt: &serde_json::Value, next_due: Option<i64>) -> Result<(), TaskError> {
        let task = self.task_key(id);
        let _: i64 = self
            .scripts
            .record_delivery
            .key(&task)
            .key(format!("{task}:deliveries"))
            .key(self.key("webhooks"))
            .arg(attempt.to_string())
            .arg(next_due.map(|d| d.to_string()).unwrap_or_default())
            .arg(id)
            .invoke(&mut *self.conn()?)?;
        Ok(())
    }

    fn claim_delivery(&self, lease_ms: i64) -> Result<Option<Task>, TaskError> {
        let mut conn = self.conn()?;
        let id: Option<String> = self
            .scripts
            .claim_delivery
            .key(self.key("webhooks"))
            .arg(now_ms())
            .arg(lease_ms)
            .arg(&self.config.prefix)
            .invoke(&mut *conn)?;
        match id {
            Some(id) => self.read_one(&mut conn, &id),
            None => Ok(None),
        }
    }

    fn pending(&self, owner: &str) -> Result<PendingCounts, TaskError> {
        let mut conn = self.conn()?;
        let total: Option<i64> = conn.hget(self.key("counts"), "pending")?;
        let mine: Option<i64> = conn.hget(self.key("pending_by_owner"), owner)?;
        let count = |n: Option<i64>| n.unwrap_or_default().max(0) as u64;
        Ok(PendingCounts { total: count(total), owner: count(mine) })
    }

    fn fail_pending_before(&self, cutoff_ms: i64, reason: &str) -> Result<usize, TaskError> {
        let mut conn = self.conn()?;
        let mut failed = 0;
        loop {
            let batch: usize = self
                .scripts
                .fail_pending
                .key(self.key("pending"))
                .key(self.key("counts"))
                .key(self.key("ended"))
                .key(self.key("queue"))
                .key(self.key("webhooks"))
                .key(self.key("pending_by_owner"))
                .arg(cutoff_ms)
                .arg(now_ms())
                .arg(reason)
                .arg(&self.config.prefix)
                .invoke(&mut *conn)?;
            failed += batch;
            if batch < EXPIRE_BATCH {
                return Ok(failed);
            }
        }
    }

    fn delete(&self, id: &str, owner: &str) -> Result<bool, TaskError> {
        let deleted: i64 = self
            .scripts
            .delete
            .key(self.task_key(id))
            .key(self.key("queue"))
            .key(self.key("counts"))
            .key(self.key("pending"))
            .key(self.key("ended"))
            .key(self.key("webhooks"))
            .key(self.key("pending_by_owner"))
            .key(self.key(&format!("owner:{owner}")))
            .arg(owner)
            .arg(id)
            .invoke(&mut *self.conn()?)?;
        Ok(deleted == 1)
    }
}
