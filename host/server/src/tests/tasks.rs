//! Async tasks through the API: stored, run by the workers, visible to
//! their owner only, cancellable and deletable, bounded in number and age;
//! their webhooks delivered apart from everything else.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kiln_access::Limits;
use kiln_tasks::TaskStore as _;
use serde_json::{Value, json};

use super::access::{APP_KEY, OPS_KEY, keyed_config};
use super::*;

fn call(method: &str, path: &str, key: &str, body: Option<Value>) -> Request<Body> {
    let request = Request::builder().method(method).uri(path).header("x-api-key", key);
    match body {
        Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap()
}

async fn submit(app: &Router, key: &str) -> String {
    let accepted =
        send(app, call("POST", "/v1/generate/async", key, Some(json!({"prompt": "Hi", "max_tokens": 2})))).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&accepted.body));
    let body = accepted.json();
    assert_eq!(body["status"], "pending");
    body["task_id"].as_str().unwrap().to_string()
}

async fn wait_until(app: &Router, id: &str, key: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let task = send(app, call("GET", &format!("/v1/tasks/{id}"), key, None)).await.json();
        if task["status"] == status {
            return task;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "task never reached {status}: {task}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_submitted_task_completes_and_only_its_owner_sees_it() {
    let app = TestApp::fake(Fake::Say(vec!["Hello", " there"]))
        .config(keyed_config(Limits::default()))
        .tasks(TaskConfig::default())
        .build();
    let id = submit(&app, APP_KEY).await;
    let done = wait_until(&app, &id, APP_KEY, "completed").await;
    assert_eq!(done["result"]["text"], "Hello there");
    assert!(done["result"]["system_fingerprint"].as_str().is_some_and(|fp| fp.starts_with("fp_")), "{done}");
    assert_eq!(done["usage"]["completion_tokens"], 2);
    assert_eq!(done["attempts"], 1);
    assert!(done["completed_at"].as_f64() >= done["created_at"].as_f64());
    // Another key: as if it did not exist.
    let other = send(&app, call("GET", &format!("/v1/tasks/{id}"), OPS_KEY, None)).await;
    assert_eq!(other.error(StatusCode::NOT_FOUND)["code"], "task_not_found");
    send(&app, call("DELETE", &format!("/v1/tasks/{id}"), OPS_KEY, None)).await.error(StatusCode::NOT_FOUND);
    send(&app, call("POST", &format!("/v1/tasks/{id}/cancel"), OPS_KEY, None)).await.error(StatusCode::NOT_FOUND);
    // Scrapes show the store's levels (values are process-wide, shared by tests).
    let metrics = String::from_utf8(get(&app, "/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains(r#"kiln_tasks{status="completed"}"#), "{metrics}");
    assert!(metrics.contains("kiln_tasks_oldest_pending_age_seconds"), "{metrics}");
}

#[tokio::test]
async fn a_running_task_is_cancelled_and_stays_cancelled() {
    let app = TestApp::fake(Fake::Slow(Duration::from_secs(30)))
        .config(keyed_config(Limits::default()))
        .tasks(TaskConfig::default())
        .build();
    let id = submit(&app, APP_KEY).await;
    wait_until(&app, &id, APP_KEY, "running").await;
    let cancelled = send(&app, call("POST", &format!("/v1/tasks/{id}/cancel"), APP_KEY, None)).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.json()["status"], "cancelled");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let task = wait_until(&app, &id, APP_KEY, "cancelled").await;
    assert!(task["result"].is_null());
}

#[tokio::test]
async fn a_deleted_task_stops_and_is_gone() {
    let app = TestApp::fake(Fake::Slow(Duration::from_secs(30)))
        .config(keyed_config(Limits::default()))
        .tasks(TaskConfig::default())
        .build();
    let id = submit(&app, APP_KEY).await;
    wait_until(&app, &id, APP_KEY, "running").await;
    let deleted = send(&app, call("DELETE", &format!("/v1/tasks/{id}"), APP_KEY, None)).await.json();
    assert_eq!(deleted, json!({"task_id": id, "deleted": true}));
    let path = format!("/v1/tasks/{id}");
    send(&app, call("GET", &path, APP_KEY, None)).await.error(StatusCode::NOT_FOUND);
    send(&app, call("DELETE", &path, APP_KEY, None)).await.error(StatusCode::NOT_FOUND);
    // Its worker hears of the stop and lets go of it, well before the fake's 30 s generation ends.
    let started = Instant::now();
    while !app.state.tasks().unwrap().lock().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "a worker still runs the deleted task");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn past_its_share_of_the_queue_a_key_gets_429_and_past_the_queue_503() {
    let config = TaskConfig { workers: 1, max_pending: 3, max_pending_per_key: 2, ..TaskConfig::default() };
    let app = TestApp::fake(Fake::Slow(Duration::from_secs(30)))
        .config(keyed_config(Limits::default()))
        .tasks(config)
        .build();
    let running = submit(&app, APP_KEY).await;
    wait_until(&app, &running, APP_KEY, "running").await;
    submit(&app, APP_KEY).await;
    submit(&app, APP_KEY).await;
    let body = || Some(json!({"prompt": "Hi", "max_tokens": 2}));
    let refused = send(&app, call("POST", "/v1/generate/async", APP_KEY, body())).await;
    assert_eq!(refused.headers["retry-after"], "5");
    assert_eq!(refused.error(StatusCode::TOO_MANY_REQUESTS)["code"], "too_many_pending_tasks");
    submit(&app, OPS_KEY).await;
    let full = send(&app, call("POST", "/v1/generate/async", OPS_KEY, body())).await;
    assert!(full.headers.contains_key("retry-after"));
    assert_eq!(full.error(StatusCode::SERVICE_UNAVAILABLE)["code"], "task_queue_full");
    // Nothing refused was stored.
    let listed = send(&app, call("GET", "/v1/tasks", APP_KEY, None)).await.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_task_pending_past_its_time_to_live_fails_saying_why() {
    let config = TaskConfig {
        workers: 1,
        pending_ttl: Duration::from_millis(300),
        sweep_every: Duration::from_millis(50),
        ..TaskConfig::default()
    };
    let app = TestApp::fake(Fake::Slow(Duration::from_secs(30)))
        .config(keyed_config(Limits::default()))
        .tasks(config)
        .build();
    let running = submit(&app, APP_KEY).await;
    wait_until(&app, &running, APP_KEY, "running").await;
    let waiting = submit(&app, APP_KEY).await;
    let failed = wait_until(&app, &waiting, APP_KEY, "failed").await;
    assert!(failed["error"].as_str().unwrap().contains("pending_ttl_secs"), "{failed}");
    assert!(failed["started_at"].is_null(), "it never ran");
}

#[tokio::test]
async fn the_callers_tasks_are_listed_newest_first_a_page_at_a_time() {
    let app = TestApp::fake(Fake::Say(vec!["x"]))
        .config(keyed_config(Limits::default()))
        .tasks(TaskConfig::default())
        .build();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&app, APP_KEY).await);
    }
    submit(&app, OPS_KEY).await;
    let page = send(&app, call("GET", "/v1/tasks?limit=2", APP_KEY, None)).await.json();
    let listed: Vec<&str> = page["data"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(page["has_more"], true);
    let rest = send(&app, call("GET", &format!("/v1/tasks?limit=2&after={}", ids[1]), APP_KEY, None)).await.json();
    assert_eq!(rest["data"][0]["task_id"], ids[0].as_str());
    assert_eq!(rest["has_more"], false);
    send(&app, call("GET", "/v1/tasks?limit=0", APP_KEY, None)).await.error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_async_requests_are_refused_before_they_are_stored() {
    let app = TestApp::fake(Fake::Say(vec!["x"]))
        .config(keyed_config(Limits::default()))
        .tasks(TaskConfig::default())
        .build();
    let empty = send(&app, call("POST", "/v1/generate/async", APP_KEY, Some(json!({"prompt": ""})))).await;
    assert_eq!(empty.error(StatusCode::BAD_REQUEST)["param"], "prompt");
    let streamed = json!({"prompt": "x", "stream": true});
    send(&app, call("POST", "/v1/generate/async", APP_KEY, Some(streamed))).await.error(StatusCode::BAD_REQUEST);
    let list = send(&app, call("GET", "/v1/tasks", APP_KEY, None)).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

type Deliveries = std::sync::Arc<std::sync::Mutex<Vec<(bool, Value)>>>;

/// A webhook receiver on loopback that fails the first delivery and notes
/// of each whether its signature is `secret`'s; its URL.
async fn receiver(secret: &'static str) -> (String, Deliveries) {
    let seen = Deliveries::default();
    let app = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let signed = headers["x-kiln-signature"] == crate::webhooks::signature(secret, &body).as_str();
                    let mut seen = seen.lock().unwrap();
                    seen.push((signed, serde_json::from_slice(&body).unwrap()));
                    if seen.len() == 1 { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn hooks() -> crate::TaskConfig {
    let webhooks = crate::WebhookConfig {
        secret: Some(kiln_access::Secret("s3cret".into())),
        allow_private: true,
        max_attempts: 3,
        first_retry: Duration::from_millis(20),
        ..crate::WebhookConfig::default()
    };
    crate::TaskConfig { webhooks, ..crate::TaskConfig::default() }
}

/// Waits for `n` recorded deliveries on the task.
async fn delivered(app: &Router, id: &str, key: &str, n: usize) -> Value {
    let started = Instant::now();
    loop {
        let task = send(app, call("GET", &format!("/v1/tasks/{id}"), key, None)).await.json();
        if task["webhook_deliveries"].as_array().unwrap().len() == n {
            return task;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_webhook_is_signed_retried_after_a_failure_and_its_attempts_recorded() {
    let (url, seen) = receiver("s3cret").await;
    let app = TestApp::fake(Fake::Say(vec!["done"])).config(keyed_config(Limits::default())).tasks(hooks()).build();
    let body = json!({"prompt": "Hi", "max_tokens": 2, "webhook_url": url});
    let accepted = send(&app, call("POST", "/v1/generate/async", APP_KEY, Some(body))).await.json();
    let id = accepted["task_id"].as_str().unwrap().to_string();
    wait_until(&app, &id, APP_KEY, "completed").await;
    let task = delivered(&app, &id, APP_KEY, 2).await;
    assert_eq!(task["webhook_deliveries"][0]["status"], 500);
    assert_eq!(task["webhook_deliveries"][1]["status"], 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(signed, _)| *signed), "every delivery carries a valid signature");
    assert_eq!(seen[1].1["status"], "completed");
    assert_eq!(seen[1].1["result"]["text"], "done");
}

#[tokio::test]
async fn a_keys_own_webhook_secret_signs_its_tasks_webhooks() {
    let (url, seen) = receiver("the-keys-own").await;
    let mut own = super::access::key("app", APP_KEY, kiln_access::Scope::Generate, None);
    own.webhook_secret = Some(kiln_access::Secret("the-keys-own".into()));
    let keys = kiln_access::KeyStore::new(vec![own]).unwrap();
    let config = ServerConfig { auth: crate::Auth::keys(keys), ..ServerConfig::default() };
    let app = TestApp::fake(Fake::Say(vec!["done"])).config(config).tasks(hooks()).build();
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "webhook_url": url});
    let accepted = send(&app, call("POST", "/v1/chat/completions/async", APP_KEY, Some(body))).await.json();
    let id = accepted["task_id"].as_str().unwrap().to_string();
    delivered(&app, &id, APP_KEY, 2).await;
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|(signed, _)| *signed), "signed with the key's secret, not the global one");
}

#[tokio::test]
async fn an_async_chat_completion_ends_with_a_chat_completion() {
    let app = TestApp::fake(Fake::Say(vec!["Hello", " there"]))
        .config(keyed_config(Limits::default()))
        .tasks(TaskConfig::default())
        .build();
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let accepted = send(&app, call("POST", "/v1/chat/completions/async", APP_KEY, Some(body))).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let id = accepted.json()["task_id"].as_str().unwrap().to_string();
    let done = wait_until(&app, &id, APP_KEY, "completed").await;
    assert_eq!(done["result"]["object"], "chat.completion");
    assert_eq!(done["result"]["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(done["usage"]["completion_tokens"], 2);
    // What can be checked before storing is: roles, streaming, webhooks on the sync endpoint.
    for (path, body, param) in [
        ("/v1/chat/completions/async", json!({"messages": [{"role": "robot", "content": "x"}]}), "messages[0].role"),
        ("/v1/chat/completions/async", json!({"messages": [], "max_tokens": 2}), "messages"),
        (
            "/v1/chat/completions/async",
            json!({"messages": [{"role": "user", "content": "x"}], "stream": true}),
            "stream",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "webhook_url": "https://example.com/h"}),
            "webhook_url",
        ),
    ] {
        let refused = send(&app, call("POST", path, APP_KEY, Some(body))).await;
        assert_eq!(refused.error(StatusCode::BAD_REQUEST)["param"], param, "{path}");
    }
}

#[tokio::test]
async fn async_tasks_spend_their_owners_token_allowance() {
    let limits = Limits { requests_per_minute: None, tokens_per_minute: Some(60) };
    let app = TestApp::fake(Fake::Say(vec!["Hello", " there"]))
        .config(keyed_config(limits))
        .tasks(TaskConfig::default())
        .build();
    let remaining = |a: &Answer| a.headers["x-ratelimit-remaining-tokens"].to_str().unwrap().parse::<i64>().unwrap();
    let before = remaining(&send(&app, call("GET", "/v1/tasks", APP_KEY, None)).await);
    let id = submit(&app, APP_KEY).await;
    let done = wait_until(&app, &id, APP_KEY, "completed").await;
    let spent = done["usage"]["total_tokens"].as_i64().unwrap();
    let after = remaining(&send(&app, call("GET", "/v1/tasks", APP_KEY, None)).await);
    // The allowance refills a token a second meanwhile.
    assert!(spent >= 3, "{done}");
    assert!(before - after >= spent - 1, "before {before}, after {after}, the task used {spent}");
}

#[tokio::test]
async fn a_webhook_to_an_internal_address_is_refused_by_default() {
    let app = TestApp::fake(Fake::Say(vec!["x"]))
        .config(keyed_config(Limits::default()))
        .tasks(TaskConfig::default())
        .build();
    let body = json!({"prompt": "Hi", "webhook_url": "http://169.254.169.254/latest/meta-data"});
    let refused = send(&app, call("POST", "/v1/generate/async", APP_KEY, Some(body))).await;
    assert_eq!(refused.error(StatusCode::BAD_REQUEST)["param"], "webhook_url");
    let sync = json!({"prompt": "Hi", "webhook_url": "https://example.com/hook"});
    send(&app, call("POST", "/v1/generate", APP_KEY, Some(sync))).await.error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_async_request_refused_synchronously_is_refused_at_submission() {
    let app = TestApp::fake(Fake::Say(vec!["x"]))
        .config(keyed_config(Limits::default()))
        .tasks(TaskConfig::default())
        .build();
    let refused = [
        ("/v1/generate/async", json!({"prompt": "Hi", "temperature": -1}), "temperature"),
        ("/v1/generate/async", json!({"prompt": "Hi", "top_p": 1.5}), "top_p"),
        ("/v1/generate/async", json!({"prompt": "Hi", "max_tokens": 0}), "max_tokens"),
        ("/v1/generate/async", json!({"prompt": "Hi", "stop": vec!["a"; 17]}), "stop"),
        ("/v1/generate/async", json!({"prompt": "Hi", "pipeline": "nowhere"}), "pipeline"),
        ("/v1/generate/async", json!({"prompt": "Hi", "stream": true}), "stream"),
        (
            "/v1/chat/completions/async",
            json!({"messages": [{"role": "user", "content": "Hi"}], "presence_penalty": 3}),
            "presence_penalty",
        ),
        (
            "/v1/chat/completions/async",
            json!({"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"x": 1}}),
            "logit_bias",
        ),
        ("/v1/chat/completions/async", json!({"messages": [{"role": "user", "content": "Hi"}], "n": 9}), "n"),
        ("/v1/chat/completions/async", json!({"messages": [{"role": "wizard", "content": "Hi"}]}), "messages[0].role"),
    ];
    for (path, body, param) in refused {
        let answer = send(&app, call("POST", path, APP_KEY, Some(body.clone()))).await;
        assert_eq!(answer.error(StatusCode::BAD_REQUEST)["param"], param, "{body}");
        // The same request is refused the same way synchronously.
        let sync_path = path.trim_end_matches("/async");
        let mut sync_body = body.clone();
        if param == "stream" {
            continue;
        }
        sync_body["stream"] = json!(false);
        let sync = send(&app, call("POST", sync_path, APP_KEY, Some(sync_body))).await;
        assert_eq!(sync.error(StatusCode::BAD_REQUEST)["param"], param, "{body}");
    }
    // This server runs without plugins: JSON mode is refused before it is stored.
    let json_mode =
        json!({"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"}});
    let answer = send(&app, call("POST", "/v1/chat/completions/async", APP_KEY, Some(json_mode))).await;
    assert_eq!(answer.error(StatusCode::BAD_REQUEST)["param"], "response_format");
    // Nothing was stored.
    let listed = send(&app, call("GET", "/v1/tasks", APP_KEY, None)).await.json();
    assert_eq!(listed["data"], json!([]), "{listed}");
}

/// A webhook target that accepts connections and never answers; how many it holds.
async fn black_hole() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = held.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (url, held)
}

#[test]
fn webhooks_that_never_answer_leave_the_blocking_pool_to_everything_else() {
    // Two blocking threads: every delivery held one before, so tokenizing
    // and the task store waited for webhooks to time out.
    let runtime = tokio::runtime::Builder::new_multi_thread().max_blocking_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (url, held) = black_hole().await;
        let mut config = hooks();
        config.webhooks.timeout = Duration::from_secs(60);
        let app = TestApp::fake(Fake::Say(vec!["done"])).config(keyed_config(Limits::default())).tasks(config).build();
        let mut ids = Vec::new();
        for _ in 0..8 {
            let body = json!({"prompt": "Hi", "max_tokens": 2, "webhook_url": url});
            let accepted = send(&app, call("POST", "/v1/generate/async", APP_KEY, Some(body))).await.json();
            ids.push(accepted["task_id"].as_str().unwrap().to_string());
        }
        for id in &ids {
            wait_until(&app, id, APP_KEY, "completed").await;
        }
        let workers = crate::WebhookConfig::default().workers;
        let started = Instant::now();
        while held.load(std::sync::atomic::Ordering::SeqCst) < workers {
            assert!(started.elapsed() < Duration::from_secs(20), "the deliveries never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every delivery thread hangs now; the API does not.
        let tokenize = call("POST", "/v1/tokenize", APP_KEY, Some(json!({"prompt": "still fast"})));
        let answered = tokio::time::timeout(Duration::from_secs(10), send(&app, tokenize)).await;
        assert_eq!(answered.expect("tokenizing waits for no webhook").status, StatusCode::OK);
        let read = tokio::time::timeout(Duration::from_secs(10), wait_until(&app, &ids[0], APP_KEY, "completed"));
        assert!(read.await.is_ok(), "reading a task waits for no webhook");
        assert_eq!(held.load(std::sync::atomic::Ordering::SeqCst), workers, "deliveries in flight are bounded");
    });
}

#[tokio::test]
async fn a_webhook_due_when_the_server_stopped_is_delivered_by_the_next() {
    let (url, seen) = receiver("s3cret").await;
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = kiln_tasks::SqliteStore::open(&dir.path().join("tasks.db")).unwrap();
        let task = store.create("app", &json!({"prompt": "Hi"}), Some(&url)).unwrap();
        let claimed = store.claim().unwrap().unwrap();
        assert!(store.finish(&claimed, Ok(json!({"text": "before the restart"}))).unwrap());
        task.id
    };
    let app =
        TestApp::fake(Fake::Say(vec!["x"])).config(keyed_config(Limits::default())).tasks_in(dir, hooks()).build();
    let task = delivered(&app, &id, APP_KEY, 2).await;
    assert_eq!(task["webhook_deliveries"][1]["status"], 200);
    assert_eq!(seen.lock().unwrap()[1].1["result"]["text"], "before the restart");
}
