//! Pipelines through the API: the default pipeline's plugins, per-request
//! pipelines, post-processing over streamed text, hostile plugins contained
//! to their own requests, and the admin endpoints.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use super::*;

fn chat(pipeline: Option<&str>, content: &str, max_tokens: u32) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    if let Some(p) = pipeline {
        body["pipeline"] = json!(p);
    }
    body
}

fn loopback() -> SocketAddr {
    "127.0.0.1:50000".parse().unwrap()
}

#[tokio::test]
async fn the_default_pipeline_answers_exactly_as_the_native_one() {
    let app = TestApp::real().build();
    let plugin = post(&app, "/v1/chat/completions", chat(None, "Name a colour.", 12)).await;
    let native = post(&app, "/v1/chat/completions", chat(Some("native"), "Name a colour.", 12)).await;
    assert_eq!(plugin.status, StatusCode::OK, "{}", String::from_utf8_lossy(&plugin.body));
    assert_eq!(plugin.json()["choices"][0]["message"], native.json()["choices"][0]["message"]);
    assert_eq!(plugin.json()["usage"], native.json()["usage"]);
}

#[tokio::test]
async fn an_unknown_pipeline_is_a_400_naming_the_field() {
    let app = TestApp::real().build();
    let error = post(&app, "/v1/chat/completions", chat(Some("nope"), "hi", 4)).await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "pipeline");
    assert_eq!(error["code"], "pipeline_not_found");
    let generate = post(&app, "/v1/generate", json!({"prompt": "hi", "pipeline": "nope"})).await;
    assert_eq!(generate.error(StatusCode::BAD_REQUEST)["param"], "pipeline");
}

#[tokio::test]
async fn each_hostile_plugin_fails_only_its_own_request_naming_the_plugin() {
    let app = TestApp::real().build();
    for mode in ["loop", "memory", "trap", "garbage", "refuse", "fail"] {
        let pipeline = format!("hostile-{mode}");
        let (bad, good) = tokio::join!(
            post(&app, "/v1/chat/completions", chat(Some(&pipeline), "Say hello.", 8)),
            post(&app, "/v1/chat/completions", chat(None, "Say hello.", 8)),
        );
        let error = bad.error(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error["code"], "plugin_error", "{mode}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("hostile-sampler@0.1.0"), "{mode}: {message}");
        assert_eq!(good.status, StatusCode::OK, "{mode}: the request beside it failed too");
        assert_eq!(good.json()["usage"]["completion_tokens"], 8);
    }
    // The same failure reaches a stream as its last event.
    let mut body = chat(Some("hostile-trap"), "Say hello.", 8);
    body["stream"] = json!(true);
    let events = post(&app, "/v1/chat/completions", body).await.json_events();
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "plugin_error", "{last}");
    assert!(last["error"]["message"].as_str().unwrap().contains("panics on purpose"), "{last}");
}

#[tokio::test]
async fn redaction_masks_secrets_split_across_streamed_chunks() {
    let app = TestApp::fake(Fake::Say(vec![
        "write to jo",
        "hn.doe@exam",
        "ple.org or use sk-",
        "abcdefghij",
        "0123456789 ok",
    ]))
    .shared_plugins()
    .build();
    let body = json!({"prompt": "x", "raw": true, "pipeline": "redacted"});
    let answer = post(&app, "/v1/generate", body.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.json()["text"], "write to [email] or use [api-key] ok");
    let streamed = post(&app, "/v1/generate/stream", body).await.json_events();
    let text: String = streamed.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(text, "write to [email] or use [api-key] ok");
    // Without the pipeline, the text is the model's.
    let plain = post(&app, "/v1/generate", json!({"prompt": "x", "raw": true})).await;
    assert!(plain.json()["text"].as_str().unwrap().contains("john.doe@example.org"));
}

#[tokio::test]
async fn stop_strings_apply_before_post_processing() {
    let app = TestApp::fake(Fake::Say(vec!["mail a@b.co", "m then ST", "OP and more"])).shared_plugins().build();
    let body = json!({"prompt": "x", "raw": true, "pipeline": "redacted", "stop": ["STOP"]});
    let answer = post(&app, "/v1/generate", body).await.json();
    assert_eq!(answer["text"], "mail [email] then ");
    assert_eq!(answer["finish_reason"], "stop");
}

#[tokio::test]
async fn a_plugin_built_against_contract_0_1_0_serves_its_pipeline() {
    let app = TestApp::real().build();
    let shouted = post(&app, "/v1/chat/completions", chat(Some("legacy"), "Name a colour.", 12)).await;
    let plain = post(&app, "/v1/chat/completions", chat(None, "Name a colour.", 12)).await;
    assert_eq!(shouted.status, StatusCode::OK, "{}", String::from_utf8_lossy(&shouted.body));
    let text = |a: &Answer| a.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(text(&shouted), format!("{}!", text(&plain).to_uppercase()));
    let mut body = chat(Some("legacy"), "Name a colour.", 12);
    body["stream"] = json!(true);
    let events = post(&app, "/v1/chat/completions", body).await.json_events();
    let streamed: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text(&shouted));
}

async fn admin(app: &Router, method: &str, path: &str, body: impl Into<Body>) -> Answer {
    send(app, Request::builder().method(method).uri(path).body(body.into()).unwrap()).await
}

#[tokio::test]
async fn the_plugin_list_shows_versions_pipelines_and_calls() {
    let (plugins, _dir) = plugin_host();
    let app = TestApp::real().plugins(plugins).peer(loopback()).build();
    assert_eq!(post(&app, "/v1/chat/completions", chat(None, "Hi", 3)).await.status, StatusCode::OK);
    let list = get(&app, "/v1/plugins").await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    assert_eq!(list["default_pipeline"], "default");
    let plugin = |name: &str| list["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap();
    let sampler = plugin("default-sampler");
    assert_eq!((sampler["kind"].as_str(), sampler["status"].as_str()), (Some("sampler"), Some("ok")));
    assert_eq!(sampler["source"], "built-in");
    assert_eq!(sampler["sha256"].as_str().unwrap().len(), 64);
    // A session's start, then one step per token.
    assert!(sampler["metrics"]["calls"].as_u64().unwrap() >= 4, "{sampler}");
    assert_eq!(plugin("chat-template")["metrics"]["calls"], 1);
    assert_eq!(plugin("hostile")["source"], "file");
    assert_eq!(plugin("hostile")["contract"], "0.2.0");
    assert_eq!(plugin("shout")["contract"], "0.1.0");
    let pipelines = list["pipelines"].as_array().unwrap();
    assert!(pipelines.iter().any(|p| p["name"] == "native" && p["sampler"].is_null()));
}

#[tokio::test]
async fn admin_endpoints_refuse_clients_that_are_not_local() {
    let (plugins, _dir) = plugin_host();
    let app = TestApp::real().plugins(plugins).peer("192.0.2.7:40000".parse().unwrap()).build();
    assert_eq!(get(&app, "/v1/plugins").await.error(StatusCode::FORBIDDEN)["code"], "forbidden");
    let put = admin(&app, "PUT", "/v1/plugins/x", kiln_pipeline::first_party::REDACT.to_vec()).await;
    put.error(StatusCode::FORBIDDEN);
    // Inference is not an admin endpoint.
    assert_eq!(post(&app, "/v1/generate", json!({"prompt": "Hi", "max_tokens": 1})).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_request_forwarded_by_a_local_proxy_is_not_an_admin_request() {
    let (plugins, _dir) = plugin_host();
    let app = TestApp::real().plugins(plugins).peer(loopback()).build();
    let request = Request::get("/v1/plugins").header("x-forwarded-for", "203.0.113.9").body(Body::empty()).unwrap();
    send(&app, request).await.error(StatusCode::FORBIDDEN);
    let v6 = TestApp::real().plugins(plugin_host().0).peer("[::ffff:127.0.0.1]:1".parse().unwrap()).build();
    assert_eq!(get(&v6, "/v1/plugins").await.status, StatusCode::OK);
}

#[tokio::test]
async fn uploads_are_validated_before_they_replace_anything() {
    let (plugins, dir) = plugin_host();
    let app = TestApp::real().plugins(plugins.clone()).peer(loopback()).build();
    let before = plugins.plugin("default-sampler").unwrap().info().unwrap().sha256.clone();

    let garbage = admin(&app, "PUT", "/v1/plugins/default-sampler", &b"\0asm not really"[..]).await;
    assert_eq!(garbage.error(StatusCode::UNPROCESSABLE_ENTITY)["code"], "invalid_plugin");
    // A template in the place of the default pipeline's sampler.
    let template = kiln_pipeline::first_party::CHAT_TEMPLATE.to_vec();
    let wrong =
        admin(&app, "PUT", "/v1/plugins/default-sampler", template).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(wrong["message"].as_str().unwrap().contains("pipeline \"default\""), "{wrong}");
    assert_eq!(plugins.plugin("default-sampler").unwrap().info().unwrap().sha256, before);
    assert!(!dir.path().join("default-sampler.wasm").exists(), "a refused upload never lands in the plugin directory");
    let bad_name = admin(&app, "PUT", "/v1/plugins/..%2Fescape", kiln_pipeline::first_party::REDACT.to_vec()).await;
    assert_eq!(bad_name.error(StatusCode::BAD_REQUEST)["param"], "name");

    // A valid upload serves, is kept as a file, and can be removed.
    let put = admin(&app, "PUT", "/v1/plugins/my-redact", kiln_pipeline::first_party::REDACT.to_vec()).await;
    assert_eq!(put.status, StatusCode::OK, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.json()["kind"], "post-process");
    assert!(dir.path().join("my-redact.wasm").exists());
    assert_eq!(admin(&app, "POST", "/v1/plugins/my-redact/reload", Body::empty()).await.status, StatusCode::OK);
    assert_eq!(admin(&app, "DELETE", "/v1/plugins/my-redact", Body::empty()).await.status, StatusCode::NO_CONTENT);
    assert!(!dir.path().join("my-redact.wasm").exists());
    admin(&app, "DELETE", "/v1/plugins/my-redact", Body::empty()).await.error(StatusCode::NOT_FOUND);
    admin(&app, "DELETE", "/v1/plugins/redact", Body::empty()).await.error(StatusCode::CONFLICT);
    // The hostile guest is used by pipelines and has no built-in to fall back to.
    admin(&app, "DELETE", "/v1/plugins/hostile", Body::empty()).await.error(StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_key_runs_only_its_pipelines_and_its_first_by_default() {
    use kiln_access::{KeyStore, Limits, Scope};
    let mut safe = super::access::key("safe", "kiln-safe-key", Scope::Generate, None);
    safe.pipelines = vec!["redacted".into(), "default".into()];
    let config = crate::ServerConfig {
        auth: crate::Auth::keys(KeyStore::new(vec![safe]).unwrap()),
        ..super::access::keyed_config(Limits::default())
    };
    let app =
        TestApp::fake(Fake::Say(vec!["mail a@b.co"])).config(config).shared_plugins().tasks(TaskConfig::default());
    let app = app.build();
    let call = |body: serde_json::Value| {
        let request = Request::post("/v1/generate").header("x-api-key", "kiln-safe-key");
        request.body(Body::from(body.to_string())).unwrap()
    };
    // No pipeline named: the key's first, which redacts.
    let answer = send(&app, call(json!({"prompt": "x", "raw": true}))).await;
    assert_eq!(answer.json()["text"], "mail [email]");
    assert_eq!(
        send(&app, call(json!({"prompt": "x", "raw": true, "pipeline": "default"}))).await.status,
        StatusCode::OK
    );
    // Any other is refused, naming the allowed ones; asynchronously too.
    let skip = send(&app, call(json!({"prompt": "x", "raw": true, "pipeline": "native"}))).await;
    let message = skip.error(StatusCode::FORBIDDEN)["message"].as_str().unwrap().to_string();
    assert!(message.contains("\"native\"") && message.contains("\"redacted\", \"default\""), "{message}");
    let task = Request::post("/v1/generate/async").header("x-api-key", "kiln-safe-key");
    let body = json!({"prompt": "x", "pipeline": "native"});
    send(&app, task.body(Body::from(body.to_string())).unwrap()).await.error(StatusCode::FORBIDDEN);
    let tokenize = Request::post("/v1/tokenize").header("x-api-key", "kiln-safe-key");
    let body = json!({"messages": [{"role": "user", "content": "x"}], "pipeline": "native"});
    send(&app, tokenize.body(Body::from(body.to_string())).unwrap()).await.error(StatusCode::FORBIDDEN);
}
