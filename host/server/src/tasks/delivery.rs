//! Webhook delivery, apart from everything else: a few dedicated threads
//! (`[tasks] webhook_workers`) take due deliveries from the task store, make
//! one attempt each and record when the next is due. Nothing sleeps between
//! retries and nothing waits in memory: the store is the queue (a task that
//! ends with a `webhook_url` is due at once, in the same write), so a
//! restart resumes what was pending, at least once. A target that accepts
//! connections and never answers holds one of these threads for one
//! attempt's timeout, never the runtime's blocking pool that tokenizing,
//! the task store and DNS checks use.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kiln_tasks::{Task, now_ms};

use super::Tasks;
use super::view::view;
use crate::state::WeakAppState;
use crate::time::unix_now;
use crate::webhooks;

/// How long an idle deliverer waits before looking at the store again (for
/// deliveries another replica made due, or retries coming due).
const IDLE: Duration = Duration::from_secs(1);

/// Wakes idle deliverers when a delivery becomes due.
#[derive(Debug, Default)]
pub(crate) struct Doorbell {
    rung: Mutex<bool>,
    bell: Condvar,
}

impl Doorbell {
    pub(crate) fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.bell.notify_all();
    }

    /// Returns when rung, or after `timeout`.
    fn wait(&self, timeout: Duration) {
        let rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        let (mut rung, _) =
            self.bell.wait_timeout_while(rung, timeout, |rung| !*rung).unwrap_or_else(|e| e.into_inner());
        *rung = false;
    }
}

/// Starts the delivery threads. They hold the server's state weakly and end
/// once it is dropped.
pub(crate) fn spawn_deliverers(state: WeakAppState, tasks: &Arc<Tasks>) {
    for n in 0..tasks.config.webhooks.workers.max(1) {
        let state = state.clone();
        let spawned = std::thread::Builder::new().name(format!("kiln-webhook-{n}")).spawn(move || deliver(state));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting a webhook delivery thread");
        }
    }
}

fn deliver(state: WeakAppState) {
    let mut agent = None;
    loop {
        let Some(strong) = state.upgrade() else { return };
        let Some(tasks) = strong.tasks().cloned() else { return };
        let config = &tasks.config.webhooks;
        let agent = agent.get_or_insert_with(|| webhooks::agent(config));
        // Long enough for one attempt and its record: a deliverer that dies
        // mid-attempt leaves the delivery to be taken again after it.
        let lease = (config.timeout * 3).max(Duration::from_secs(60));
        match tasks.store.claim_delivery(lease.as_millis() as i64) {
            Ok(Some(task)) => {
                let secret = super::worker::caller(&strong, &task.owner)
                    .and_then(|c| c.key)
                    .and_then(|k| k.config.webhook_secret.clone())
                    .or_else(|| config.secret.clone());
                drop(strong);
                attempt(&tasks, agent, secret.as_ref().map(|s| s.0.as_str()), task);
            }
            Ok(None) => {
                drop(strong);
                tasks.doorbell.wait(IDLE);
            }
            Err(e) => {
                drop(strong);
                tracing::error!(error = %e, "taking a due webhook delivery");
                std::thread::sleep(IDLE);
            }
        }
    }
}

/// One attempt at `task`'s webhook, recorded with when the next is due.
fn attempt(tasks: &Tasks, agent: &ureq::Agent, secret: Option<&str>, task: Task) {
    let config = &tasks.config.webhooks;
    let (id, number) = (task.id.clone(), task.deliveries.len() as u32 + 1);
    let Some(url) = task.webhook_url.clone() else {
        // Not one to deliver (a store left it due): take it off the schedule.
        return record(tasks, &id, &serde_json::json!({"attempt": number, "error": "no webhook_url"}), None);
    };
    let body = serde_json::to_vec(&view(task)).unwrap_or_default();
    let outcome = webhooks::attempt(agent, config.allow_private, secret, &url, &body);
    let next_due = (outcome.retryable() && number < config.max_attempts)
        .then(|| now_ms() + config.backoff(number).as_millis() as i64);
    let label = if outcome.delivered() {
        "delivered"
    } else if next_due.is_some() {
        "retrying"
    } else {
        "failed"
    };
    metrics::counter!("kiln_webhook_deliveries_total", "outcome" => label).increment(1);
    if !outcome.delivered() {
        tracing::warn!(task = id, attempt = number, ?outcome, retry = next_due.is_some(), "webhook not delivered");
    }
    record(tasks, &id, &outcome.record(number, unix_now()), next_due);
}

fn record(tasks: &Tasks, id: &str, attempt: &serde_json::Value, next_due: Option<i64>) {
    if let Err(e) = tasks.store.record_delivery(id, attempt, next_due) {
        // The lease runs out and the delivery is made again: at least once.
        tracing::error!(task = id, error = %e, "recording a webhook delivery");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rung_doorbell_wakes_a_waiting_deliverer_at_once() {
        let bell = Arc::new(Doorbell::default());
        let ringer = bell.clone();
        let started = std::time::Instant::now();
        std::thread::spawn(move || ringer.ring());
        bell.wait(Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(30), "woken by the bell, not the timeout");
    }
}
