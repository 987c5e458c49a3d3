//! The Redis store against a real `redis-server`: two stores on one Redis
//! stand for two replicas.

use std::time::Duration;

use serde_json::json;

use crate::redis_server::RedisServer;
use crate::{OnRestart, PendingCounts, RedisStore, RedisTaskConfig, TaskStatus, TaskStore, now_ms};

fn replica(server: &RedisServer, lease: Duration, on_abandoned: OnRestart) -> RedisStore {
    let config = RedisTaskConfig { prefix: "test:".into(), lease, on_abandoned };
    RedisStore::open(server.pool(), config).unwrap()
}

fn count(store: &RedisStore, status: TaskStatus) -> u64 {
    store.counts().unwrap().into_iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| n)
}

#[test]
fn a_task_stored_through_one_replica_is_run_by_another_and_read_by_both() {
    let server = RedisServer::start();
    let (a, b) = (
        replica(&server, Duration::from_secs(30), OnRestart::Requeue),
        replica(&server, Duration::from_secs(30), OnRestart::Requeue),
    );
    let created = a.create("app", &json!({"prompt": "hi"}), Some("https://example.com/h")).unwrap();
    assert_eq!(created.status, TaskStatus::Pending);
    assert!(b.get(&created.id, "other").unwrap().is_none(), "another key does not see it");
    assert_eq!(b.oldest_pending().unwrap(), Some(created.created_at));
    assert_eq!(count(&b, TaskStatus::Pending), 1);

    let claimed = b.claim().unwrap().unwrap();
    assert_eq!((claimed.id.as_str(), claimed.status, claimed.attempts), (created.id.as_str(), TaskStatus::Running, 1));
    assert!(a.claim().unwrap().is_none(), "a task is claimed once");
    assert!(b.heartbeat(&claimed).unwrap());
    assert_eq!(a.get(&created.id, "app").unwrap().unwrap().status, TaskStatus::Running);

    assert!(b.finish(&claimed, Ok(json!({"text": "hello"}))).unwrap());
    let done = a.get(&created.id, "app").unwrap().unwrap();
    assert_eq!((done.status, done.result), (TaskStatus::Completed, Some(json!({"text": "hello"}))));
    assert_eq!(done.webhook_url.as_deref(), Some("https://example.com/h"));
    assert_eq!((count(&a, TaskStatus::Running), count(&a, TaskStatus::Completed)), (0, 1));
    assert_eq!(a.oldest_pending().unwrap(), None);
}

#[test]
fn a_task_whose_replica_stops_renewing_its_claim_is_taken_over_after_the_lease() {
    let server = RedisServer::start();
    let lease = Duration::from_secs(1);
    let (dead, alive) = (replica(&server, lease, OnRestart::Requeue), replica(&server, lease, OnRestart::Requeue));
    let created = dead.create("app", &json!({}), None).unwrap();
    let first = dead.claim().unwrap().unwrap();
    assert!(alive.claim().unwrap().is_none(), "within the lease the claim holds");
    std::thread::sleep(lease + Duration::from_millis(100));
    let second = alive.claim().unwrap().expect("the abandoned task is taken over");
    assert_eq!((second.id.as_str(), second.attempts), (created.id.as_str(), 2));
    assert!(!dead.heartbeat(&first).unwrap(), "the old claim is no longer the task's");
    assert!(!dead.finish(&first, Ok(json!({"late": true}))).unwrap(), "nor may it end the task");
    assert!(alive.finish(&second, Ok(json!({"text": "again"}))).unwrap());
    assert_eq!(alive.get(&created.id, "app").unwrap().unwrap().result, Some(json!({"text": "again"})));
}

#[test]
fn renewed_claims_hold_and_an_abandoned_one_behind_many_of_them_is_taken_over() {
    let server = RedisServer::start();
    let lease = Duration::from_secs(2);
    let [live, dead, idle] = [(); 3].map(|_| replica(&server, lease, OnRestart::Requeue));
    for i in 0..13 {
        live.create("app", &json!({"n": i}), None).unwrap();
    }
    // The first twelve are claimed and kept alive; the last is abandoned,
    // behind them in the queue's pending list (more than one look at it holds).
    let renewed: Vec<_> = (0..12).map(|_| live.claim().unwrap().unwrap()).collect();
    let abandoned = dead.claim().unwrap().unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < lease + Duration::from_millis(400) {
        std::thread::sleep(Duration::from_millis(300));
        assert!(renewed.iter().all(|task| live.heartbeat(task).unwrap()));
    }
    let taken = idle.claim().unwrap().expect("the abandoned task is found behind the live ones");
    assert_eq!((taken.id.as_str(), taken.attempts), (abandoned.id.as_str(), 2));
    assert!(idle.claim().unwrap().is_none(), "no renewed claim was taken over");
}

#[test]
fn abandoned_tasks_are_failed_with_a_reason_when_so_configured() {
    let server = RedisServer::start();
    let lease = Duration::from_secs(1);
    let (dead, alive) = (replica(&server, lease, OnRestart::Fail), replica(&server, lease, OnRestart::Fail));
    let created = dead.create("app", &json!({}), None).unwrap();
    dead.claim().unwrap().unwrap();
    std::thread::sleep(lease + Duration::from_millis(100));
    assert!(alive.claim().unwrap().is_none());
    let failed = alive.get(&created.id, "app").unwrap().unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert!(failed.error.unwrap().contains("stopped"));
}

#[test]
fn cancelled_tasks_never_run_or_stop_their_worker() {
    let server = RedisServer::start();
    let store = replica(&server, Duration::from_secs(30), OnRestart::Requeue);
    let queued = store.create("app", &json!({"n": 1}), None).unwrap();
    let running = store.create("app", &json!({"n": 2}), None).unwrap();
    assert!(store.cancel(&queued.id, "other").unwrap().is_none(), "only the owner cancels");
    assert_eq!(store.cancel(&queued.id, "app").unwrap().unwrap().status, TaskStatus::Cancelled);
    let claimed = store.claim().unwrap().unwrap();
    assert_eq!(claimed.id, running.id, "the cancelled task was skipped");
    assert_eq!(store.cancel(&running.id, "app").unwrap().unwrap().status, TaskStatus::Cancelled);
    assert!(!store.heartbeat(&claimed).unwrap(), "the worker hears of the cancellation");
    assert!(!store.finish(&claimed, Ok(json!({}))).unwrap());
    assert!(store.claim().unwrap().is_none());
    assert_eq!((count(&store, TaskStatus::Cancelled), count(&store, TaskStatus::Pending)), (2, 0));
}

#[test]
fn lists_paginate_deliveries_are_kept_and_ended_tasks_expire() {
    let server = RedisServer::start();
    let store = replica(&server, Duration::from_secs(30), OnRestart::Requeue);
    let ids: Vec<String> = (0..5).map(|i| store.create("app", &json!({"n": i}), None).unwrap().id).collect();
    store.create("other", &json!({}), None).unwrap();
    let page = store.list("app", None, 2).unwrap();
    assert_eq!(page.iter().map(|t| &t.id).collect::<Vec<_>>(), [&ids[4], &ids[3]]);
    let next = store.list("app", Some(&ids[3]), 10).unwrap();
    assert_eq!(next.iter().map(|t| &t.id).collect::<Vec<_>>(), [&ids[2], &ids[1], &ids[0]]);
    assert!(store.list("other", Some(&ids[3]), 10).unwrap().is_empty(), "another key's cursor finds nothing");

    store.record_delivery(&ids[0], &json!({"status": 500}), Some(i64::MAX)).unwrap();
    store.record_delivery(&ids[0], &json!({"status": 200}), None).unwrap();
    assert_eq!(
        store.get(&ids[0], "app").unwrap().unwrap().deliveries,
        [json!({"status": 500}), json!({"status": 200})]
    );

    let claimed = store.claim().unwrap().unwrap();
    store.finish(&claimed, Err("boom".into())).unwrap();
    assert_eq!(store.expire(60_000).unwrap(), 0);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(store.expire(0).unwrap(), 1);
    assert!(store.get(&claimed.id, "app").unwrap().is_none());
    assert_eq!(store.list("app", None, 10).unwrap().len(), 4);
    assert_eq!(count(&store, TaskStatus::Failed), 0);
}

#[test]
fn an_ended_task_with_a_webhook_is_due_on_any_replica_until_its_last_attempt() {
    let server = RedisServer::start();
    let (a, b) = (
        replica(&server, Duration::from_secs(30), OnRestart::Requeue),
        replica(&server, Duration::from_secs(30), OnRestart::Requeue),
    );
    let hooked = a.create("app", &json!({}), Some("https://example.com/hook")).unwrap();
    a.create("app", &json!({}), None).unwrap();
    assert!(b.claim_delivery(60_000).unwrap().is_none(), "nothing ended yet");
    let (first, second) = (a.claim().unwrap().unwrap(), a.claim().unwrap().unwrap());
    a.finish(&second, Ok(json!({}))).unwrap();
    assert!(b.claim_delivery(60_000).unwrap().is_none(), "no webhook, no delivery");
    a.finish(&first, Ok(json!({}))).unwrap();
    let due = b.claim_delivery(60_000).unwrap().expect("due once ended");
    assert_eq!(due.id, hooked.id);
    assert!(a.claim_delivery(60_000).unwrap().is_none(), "leased to the replica delivering it");
    b.record_delivery(&due.id, &json!({"attempt": 1, "status": 503}), Some(now_ms() - 1)).unwrap();
    assert_eq!(a.claim_delivery(60_000).unwrap().unwrap().deliveries.len(), 1, "a retry is due");
    a.record_delivery(&due.id, &json!({"attempt": 2, "status": 200}), None).unwrap();
    assert!(b.claim_delivery(0).unwrap().is_none(), "delivered: nothing more");
}

#[test]
fn pending_tasks_are_counted_per_owner_fail_once_too_old_and_delete_cleanly() {
    let server = RedisServer::start();
    let store = replica(&server, Duration::from_secs(30), OnRestart::Requeue);
    let old = store.create("a", &json!({}), Some("https://example.com/hook")).unwrap();
    let other = store.create("b", &json!({}), None).unwrap();
    assert_eq!(store.pending("a").unwrap(), PendingCounts { total: 2, owner: 1 });
    std::thread::sleep(Duration::from_millis(5));
    let young = store.create("a", &json!({}), None).unwrap();
    assert_eq!(store.fail_pending_before(young.created_at, "too old").unwrap(), 2);
    let failed = store.get(&old.id, "a").unwrap().unwrap();
    assert_eq!((failed.status, failed.error.as_deref()), (TaskStatus::Failed, Some("too old")));
    assert_eq!(store.pending("a").unwrap(), PendingCounts { total: 1, owner: 1 });
    assert_eq!(store.claim_delivery(0).unwrap().map(|t| t.id), Some(old.id.clone()), "its webhook hears of it");
    assert_eq!(store.claim().unwrap().unwrap().id, young.id, "failed tasks left the queue");

    assert!(!store.delete(&other.id, "a").unwrap(), "only its owner deletes it");
    for id in [&other.id, &old.id] {
        let owner = if *id == other.id { "b" } else { "a" };
        assert!(store.delete(id, owner).unwrap());
        assert!(store.get_any(id).unwrap().is_none());
    }
    let running = store.get_any(&young.id).unwrap().unwrap();
    assert!(store.delete(&young.id, "a").unwrap());
    assert!(!store.heartbeat(&running).unwrap(), "its worker hears of it");
    assert!(!store.finish(&running, Ok(json!({}))).unwrap());
    assert!(store.counts().unwrap().iter().all(|(_, n)| *n == 0), "{:?}", store.counts());
    assert_eq!(store.pending("a").unwrap(), PendingCounts::default());
}
