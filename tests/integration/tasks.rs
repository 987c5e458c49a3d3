//! Async tasks survive a crash: `kill -9` with tasks running and pending,
//! a restart on the same store, and every task ends completed or failed
//! with a reason.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::serve::Server;

fn task(server: &Server, id: &str) -> Value {
    let (status, body) = server.request("GET", &format!("/v1/tasks/{id}"), "");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn tasks_survive_kill_9_and_a_restart_on_the_same_store() {
    let data = tempfile::tempdir().unwrap();
    let env = [("KILN_DATA_DIR", data.path())];
    let mut first = Server::start_with(&["--insecure-no-auth"], "warn", &env);
    let body = r#"{"prompt": "Tell me a long story.", "max_tokens": 96, "ignore_eos": true, "temperature": 0.8}"#;
    let ids: Vec<String> = (0..6)
        .map(|_| {
            let (status, answer) = first.request("POST", "/v1/generate/async", body);
            assert_eq!(status, "HTTP/1.1 202 Accepted", "{answer}");
            let answer: Value = serde_json::from_str(&answer).unwrap();
            answer["task_id"].as_str().unwrap().to_string()
        })
        .collect();
    let started = Instant::now();
    while !ids.iter().any(|id| task(&first, id)["status"] == "running") {
        assert!(started.elapsed() < Duration::from_secs(60), "no task started");
        std::thread::sleep(Duration::from_millis(10));
    }
    first.kill();

    let second = Server::start_with(&["--insecure-no-auth"], "warn", &env);
    let started = Instant::now();
    let ended: Vec<Value> = ids
        .iter()
        .map(|id| {
            loop {
                let t = task(&second, id);
                if ["completed", "failed"].contains(&t["status"].as_str().unwrap()) {
                    break t;
                }
                assert!(started.elapsed() < Duration::from_secs(120), "task {id} never ended: {t}");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .collect();
    for t in &ended {
        match t["status"].as_str() {
            Some("completed") => assert_eq!(t["result"]["usage"]["completion_tokens"], 96, "{t}"),
            _ => assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "failed without a reason: {t}"),
        }
    }
    assert!(
        ended.iter().any(|t| t["attempts"].as_u64() >= Some(2)),
        "the task running at the crash was run again: {ended:?}"
    );
}
