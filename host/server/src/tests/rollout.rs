//! Plugin rollouts through the API: a canary uploaded, promoted and rolled
//! back with the admin endpoints; every answer's fingerprint, and what it
//! stands for.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use super::*;

fn loopback() -> SocketAddr {
    "127.0.0.1:50000".parse().unwrap()
}

async fn admin(app: &Router, method: &str, path: &str, body: impl Into<Body>) -> Answer {
    send(app, Request::builder().method(method).uri(path).body(body.into()).unwrap()).await
}

fn tagger() -> Vec<u8> {
    std::fs::read(kiln_pipeline::built_plugins_dir().join("tagger.wasm")).unwrap()
}

async fn text_of(app: &Router, pipeline: &str) -> String {
    let body = json!({"prompt": "x", "raw": true, "pipeline": pipeline});
    let answer = post(app, "/v1/generate", body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    answer.json()["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_canary_is_uploaded_rolled_back_and_promoted_through_the_admin_api() {
    let (plugins, _dir) = plugin_host();
    let app = TestApp::fake(Fake::Say(vec!["mail a@b.co", "m now"])).plugins(plugins).peer(loopback()).build();
    assert_eq!(text_of(&app, "redacted").await, "mail [email] now");

    // All requests on the canary: the tagger marks the text instead.
    let up = admin(&app, "PUT", "/v1/plugins/redact?canary=100", tagger()).await;
    assert_eq!(up.status, StatusCode::OK, "{}", String::from_utf8_lossy(&up.body));
    let status = up.json();
    assert_eq!((status["canary"]["share"].as_u64(), status["version"].as_str()), (Some(100), Some("0.1.0")));
    assert_eq!(status["canary"]["sticky"], "request");
    assert!(text_of(&app, "redacted").await.starts_with("<v000000>"));
    let listed = get(&app, "/v1/plugins").await.json();
    let redact = listed["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "redact").unwrap().clone();
    assert!(redact["canary"]["metrics"]["requests"].as_u64().unwrap() >= 1, "{redact}");

    let back = admin(&app, "POST", "/v1/plugins/redact/rollback", Body::empty()).await.json();
    assert!(back["canary"].is_null(), "{back}");
    assert_eq!((back["rollbacks"].as_u64(), back["last_rollback"]["automatic"].as_bool()), (Some(1), Some(false)));
    assert_eq!(text_of(&app, "redacted").await, "mail [email] now");
    let none = admin(&app, "POST", "/v1/plugins/redact/rollback", Body::empty()).await;
    none.error(StatusCode::CONFLICT);

    admin(&app, "PUT", "/v1/plugins/redact?canary=100&sticky=key", tagger()).await;
    let promoted = admin(&app, "POST", "/v1/plugins/redact/promote", Body::empty()).await.json();
    assert!(
        promoted["canary"].is_null()
            && promoted["sha256"] == json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(tagger())))
    );
    assert!(text_of(&app, "redacted").await.starts_with("<v000000>"));
}

#[tokio::test]
async fn bad_canary_uploads_are_refused_naming_the_field() {
    let (plugins, _dir) = plugin_host();
    let app = TestApp::fake(Fake::Say(vec!["hi"])).plugins(plugins).peer(loopback()).build();
    let param = |a: Answer| a.error(StatusCode::BAD_REQUEST)["param"].clone();
    assert_eq!(param(admin(&app, "PUT", "/v1/plugins/redact?canary=0", tagger()).await), "canary");
    assert_eq!(param(admin(&app, "PUT", "/v1/plugins/redact?canary=10&sticky=ip", tagger()).await), "sticky");
    assert_eq!(param(admin(&app, "PUT", "/v1/plugins/redact?sticky=key", tagger()).await), "sticky");
    // A canary runs beside a stable version of the same kind.
    let sampler = std::fs::read(kiln_pipeline::built_plugins_dir().join("default_sampler.wasm")).unwrap();
    admin(&app, "PUT", "/v1/plugins/redact?canary=10", sampler).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    admin(&app, "POST", "/v1/plugins/redact/promote", Body::empty()).await.error(StatusCode::CONFLICT);
}

async fn fingerprint(app: &Router, pipeline: &str) -> String {
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "pipeline": pipeline});
    let answer = post(app, "/v1/chat/completions", body).await.json();
    answer["system_fingerprint"].as_str().unwrap_or_else(|| panic!("{answer}")).to_string()
}

#[tokio::test]
async fn every_answer_names_what_produced_it_and_the_name_can_be_looked_up() {
    let app = TestApp::fake(Fake::Say(vec!["hello"])).shared_plugins().build();
    let fp = fingerprint(&app, "redacted").await;
    assert!(fp.starts_with("fp_") && fp.len() == 19, "{fp}");
    let view = get(&app, &format!("/v1/fingerprints/{fp}")).await.json();
    assert_eq!(view["model"]["id"], MODEL_ID);
    let names: Vec<&str> = view["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["chat-template", "default-sampler", "redact"]);
    assert_eq!(view["plugins"][0]["sha256"].as_str().unwrap().len(), 64);

    // The same in a stream, in the guide's header, and on another server
    // built alike (a restart).
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "pipeline": "redacted", "stream": true});
    let events = post(&app, "/v1/chat/completions", body).await.json_events();
    assert!(events.iter().all(|e| e["system_fingerprint"] == json!(fp)), "{events:?}");
    let generate = post(&app, "/v1/generate", json!({"prompt": "hi", "pipeline": "redacted"})).await;
    assert_eq!(generate.headers["x-kiln-fingerprint"], fp.as_str());
    let restarted = TestApp::fake(Fake::Say(vec!["hello"])).shared_plugins().build();
    assert_eq!(fingerprint(&restarted, "redacted").await, fp);

    // Other plugins, or the same plugins configured otherwise: another fingerprint.
    assert_ne!(fingerprint(&app, "default").await, fp);
    assert_ne!(fingerprint(&app, "redacted-configured").await, fp);
    get(&app, "/v1/fingerprints/fp_0000000000000000").await.error(StatusCode::NOT_FOUND);
}
