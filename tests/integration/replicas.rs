//! Three `kiln serve` replicas on loopback sharing one real `redis-server`
//! (started here on a free port): tasks submitted to one are run by any and
//! read the same from all; a task cancelled through one replica stops on the
//! one running it; a replica killed mid-task has its task finished by
//! another; one key's rate limit holds across the three; an answer cached by
//! one is served by the others.

use std::time::{Duration, Instant};

use kiln_tasks::redis_server::RedisServer;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::serve::Server;

const APP_KEY: &str = "kiln-test-app-key-0123456789abcdef";
const LIMITED_KEY: &str = "kiln-test-limited-key-0123456789ab";

fn config(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let digest = |key: &str| hex::encode(Sha256::digest(key.as_bytes()));
    let text = format!(
        "[[keys]]\nname = \"app\"\nsha256 = \"{}\"\n\n\
         [[keys]]\nname = \"limited\"\nsha256 = \"{}\"\nrequests_per_minute = 6\n\n\
         [tasks]\nworkers = 1\n\n[redis]\nlease_secs = 3\n",
        digest(APP_KEY),
        digest(LIMITED_KEY)
    );
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn replicas(redis: &RedisServer, config: &std::path::Path) -> Vec<Server> {
    let url = redis.url();
    let args = ["--config", config.to_str().unwrap(), "--redis-url", url.as_str()];
    (0..3).map(|_| Server::start_with(&args, "warn,kiln_server::tasks=info", &[])).collect()
}

fn call(server: &Server, method: &str, path: &str, key: &str, body: &str) -> (String, Value) {
    let bearer = format!("Bearer {key}");
    let (status, body) = server.request_with(method, path, &[("Authorization", &bearer)], body);
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn submit(server: &Server, body: &str) -> String {
    let (status, answer) = call(server, "POST", "/v1/generate/async", APP_KEY, body);
    assert_eq!(status, "HTTP/1.1 202 Accepted", "{answer}");
    answer["task_id"].as_str().unwrap().to_string()
}

fn task(server: &Server, id: &str) -> Value {
    let (status, answer) = call(server, "GET", &format!("/v1/tasks/{id}"), APP_KEY, "");
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    answer
}

fn wait_until(server: &Server, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let t = task(server, id);
        if done(&t) {
            return t;
        }
        assert!(started.elapsed() < limit, "task {id} not there within {limit:?}: {t}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The pid part of a task's `worker` (`<pid>-<random>`).
fn worker_pid(t: &Value) -> u32 {
    let worker = t["worker"].as_str().unwrap_or_else(|| panic!("no worker: {t}"));
    worker.split('-').next().unwrap().parse().unwrap()
}

#[test]
fn replicas_sharing_redis_run_each_others_tasks_and_finish_those_of_a_killed_one() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = replicas(&redis, &config(&dir));

    // Nine tasks, all through the first replica; one worker each, so the
    // others must take some of them.
    let body = r#"{"prompt": "Count to ten.", "max_tokens": 24, "ignore_eos": true, "temperature": 0.7}"#;
    let ids: Vec<String> = (0..9).map(|_| submit(&servers[0], body)).collect();
    let mut ran_by = std::collections::HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let reader = &servers[i % 3];
        let done =
            wait_until(reader, id, Duration::from_secs(120), |t| t["status"] != "pending" && t["status"] != "running");
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["result"]["usage"]["completion_tokens"], 24, "{done}");
        for other in &servers {
            assert_eq!(task(other, id), done, "every replica reports the task alike");
        }
        ran_by.insert(worker_pid(&done));
    }
    assert!(ran_by.len() >= 2, "tasks submitted to one replica ran on {} replica(s)", ran_by.len());
    let (status, page) = call(&servers[2], "GET", "/v1/tasks?limit=100", APP_KEY, "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(page["data"].as_array().unwrap().len(), 9, "the list is shared too: {page}");
    let (status, _) = call(&servers[1], "GET", &format!("/v1/tasks/{}", ids[0]), LIMITED_KEY, "");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "another key does not see the task on any replica");

    // Cancelled through a replica that is not running it: the one that is
    // stops generating (it hears of it when it renews its claim).
    let long = r#"{"prompt": "Tell me a long story.", "max_tokens": 2000, "ignore_eos": true, "temperature": 0.7}"#;
    let id = submit(&servers[0], long);
    let running = wait_until(&servers[0], &id, Duration::from_secs(60), |t| t["status"] == "running");
    let worker =
        servers.iter().position(|s| s.pid() == worker_pid(&running)).expect("the worker is one of the replicas");
    let (status, cancelled) = call(&servers[(worker + 1) % 3], "POST", &format!("/v1/tasks/{id}/cancel"), APP_KEY, "");
    assert_eq!((status.as_str(), &cancelled["status"]), ("HTTP/1.1 200 OK", &Value::from("cancelled")));
    let started = Instant::now();
    while !servers[worker].log().lines().any(|l| l.contains("no longer this worker's") && l.contains(&id)) {
        assert!(started.elapsed() < Duration::from_secs(10), "the worker kept generating a cancelled task");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(task(&servers[worker], &id)["status"], "cancelled");

    // A long task: kill whichever replica runs it, mid-generation.
    let long = r#"{"prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": true, "temperature": 0.7}"#;
    let id = submit(&servers[1], long);
    let running = wait_until(&servers[1], &id, Duration::from_secs(60), |t| t["status"] == "running");
    let victim =
        servers.iter().position(|s| s.pid() == worker_pid(&running)).expect("the worker is one of the replicas");
    servers[victim].kill();
    let killed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let survivor = &servers[(victim + 1) % 3];
    let done =
        wait_until(survivor, &id, Duration::from_secs(120), |t| t["status"] == "completed" || t["status"] == "failed");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["usage"]["completion_tokens"], 400, "{done}");
    assert!(done["attempts"].as_u64() >= Some(2), "the task ran again: {done}");
    assert_ne!(worker_pid(&done), servers[victim].pid(), "another replica finished it: {done}");
    // The lease (3 s here) less the time since the last renewal, plus the
    // time until an idle replica looks for work (≤ 1 s).
    let taken_over = done["started_at"].as_f64().unwrap() - killed_at;
    eprintln!("a killed replica's task was taken over {:.0} ms after the kill", taken_over * 1000.0);
    let ended = |s: &Server| s.log().lines().any(|l| l.contains("task ended") && l.contains(&id));
    // The end is recorded, then logged: the log line may trail the answer a moment.
    let started = Instant::now();
    while !servers.iter().enumerate().any(|(i, s)| i != victim && ended(s)) {
        assert!(started.elapsed() < Duration::from_secs(10), "a survivor logged the task's end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_keys_rate_limit_and_the_response_cache_hold_across_replicas() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let servers = replicas(&redis, &config(&dir));

    // `limited` may make 6 requests a minute, wherever they land.
    let mut statuses = Vec::new();
    for i in 0..15 {
        let (status, answer) = call(&servers[i % 3], "POST", "/v1/tokenize", LIMITED_KEY, r#"{"prompt": "hi"}"#);
        if status != "HTTP/1.1 200 OK" {
            assert_eq!(status, "HTTP/1.1 429 Too Many Requests", "{answer}");
            assert_eq!(answer["error"]["code"], "rate_limit_exceeded", "{answer}");
        }
        statuses.push(status);
    }
    let admitted = statuses.iter().filter(|s| s.ends_with("200 OK")).count();
    assert_eq!(admitted, 6, "{statuses:?}");
    let (status, _) = call(&servers[1], "POST", "/v1/tokenize", APP_KEY, r#"{"prompt": "hi"}"#);
    assert_eq!(status, "HTTP/1.1 200 OK", "another key is not limited by it");

    // A greedy answer generated by one replica is a hit on the others.
    let body = r#"{"prompt": "Name a colour.", "max_tokens": 12, "temperature": 0}"#;
    let bearer = format!("Bearer {APP_KEY}");
    let headers = [("Authorization", bearer.as_str())];
    let answer = |server: &Server| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut server.send_with("POST", "/v1/generate", &headers, body), &mut text)
            .unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let cache = head.lines().find_map(|l| l.strip_prefix("x-kiln-cache: ")).unwrap_or_default().to_string();
        let body: Value = serde_json::from_str(body).unwrap();
        (cache, body["text"].clone())
    };
    let (first, text) = answer(&servers[0]);
    assert_eq!(first, "miss");
    // The answer is written to Redis in the background: wait until it is there.
    let mut redis_conn = redis.client().get_connection().unwrap();
    let started = Instant::now();
    while redis::cmd("KEYS").arg("kiln:cache:*").query::<Vec<String>>(&mut redis_conn).unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "the answer never reached the shared cache");
        std::thread::sleep(Duration::from_millis(10));
    }
    for server in &servers[1..] {
        assert_eq!(answer(server), ("hit".to_string(), text.clone()));
    }
}
