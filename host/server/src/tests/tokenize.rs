//! `/v1/tokenize` and `/v1/detokenize`.

use axum::http::StatusCode;
use serde_json::json;

use super::{CONTEXT, TestApp, post};

#[tokio::test]
async fn tokenize_and_detokenize_round_trip() {
    let app = TestApp::real().build();
    let text = "Hello, world! 12 + 30 = 42.\n日本語";
    let tokens = post(&app, "/v1/tokenize", json!({"prompt": text})).await.json();
    assert_eq!(tokens["count"].as_u64().unwrap() as usize, tokens["tokens"].as_array().unwrap().len());
    assert_eq!(tokens["max_model_len"], CONTEXT);
    let back = post(&app, "/v1/detokenize", json!({"tokens": tokens["tokens"]})).await.json();
    assert_eq!(back["prompt"], text);
}

#[tokio::test]
async fn tokenizing_messages_counts_what_a_chat_completion_would_prefill() {
    let app = TestApp::real().build();
    let messages = json!([{"role": "user", "content": "Name a colour."}]);
    let count = post(&app, "/v1/tokenize", json!({"messages": messages})).await.json()["count"].clone();
    let body = json!({"messages": messages, "max_tokens": 1});
    let chat = post(&app, "/v1/chat/completions", body).await.json();
    assert_eq!(chat["usage"]["prompt_tokens"], count);
}

#[tokio::test]
async fn tokenize_wants_exactly_one_input_and_detokenize_known_ids() {
    let app = TestApp::real().build();
    let both = json!({"prompt": "a", "messages": [{"role": "user", "content": "b"}]});
    assert_eq!(post(&app, "/v1/tokenize", both).await.error(StatusCode::BAD_REQUEST)["param"], "prompt");
    assert_eq!(post(&app, "/v1/tokenize", json!({})).await.error(StatusCode::BAD_REQUEST)["param"], "prompt");
    let error = post(&app, "/v1/detokenize", json!({"tokens": [1, 4000000]})).await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "tokens[1]");
}
