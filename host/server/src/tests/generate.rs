//! `/v1/generate` and `/v1/generate/stream` on the real model.

use axum::http::StatusCode;
use serde_json::json;

use super::{MODEL_ID, TestApp, post};

#[tokio::test]
async fn generate_answers_with_text_usage_and_the_model() {
    let app = TestApp::real().build();
    let answer =
        post(&app, "/v1/generate", json!({"prompt": "What is 2+2?", "max_tokens": 24, "temperature": 0})).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert!(!body["text"].as_str().unwrap().is_empty(), "{body}");
    assert_eq!(body["model"], MODEL_ID);
    let usage = &body["usage"];
    let (prompt, completion) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert!(prompt > 10 && (1..=24).contains(&completion), "{body}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
    assert_eq!(body["tokens_used"], usage["total_tokens"]);
    assert!(["stop", "length"].contains(&body["finish_reason"].as_str().unwrap()));
}

#[tokio::test]
async fn the_stream_endpoint_sends_json_text_events_then_the_finish_then_done() {
    let app = TestApp::real().build();
    let request = json!({"prompt": "Write two short lines of a poem.", "max_tokens": 40, "temperature": 0});
    let whole = post(&app, "/v1/generate", request.clone()).await.json();
    let answer = post(&app, "/v1/generate/stream", request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    assert_eq!(answer.headers["cache-control"], "no-cache");
    let events = answer.json_events();
    let (end, chunks) = events.split_last().unwrap();
    assert!(chunks.len() > 3, "one event per decoded chunk: {events:?}");
    // Each chunk is JSON, so newlines and leading spaces survive intact.
    let text: String = chunks.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(text, whole["text"].as_str().unwrap());
    assert_eq!(end["finish_reason"], whole["finish_reason"]);
    assert_eq!(end["usage"], whole["usage"]);
    assert_eq!(end["model"], MODEL_ID);
}

#[tokio::test]
async fn stream_true_on_generate_streams_too() {
    let app = TestApp::real().build();
    let answer = post(&app, "/v1/generate", json!({"prompt": "Hi", "max_tokens": 5, "stream": true})).await;
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    assert!(answer.json_events().last().unwrap()["finish_reason"].is_string());
}

#[tokio::test]
async fn ignore_eos_generates_exactly_max_tokens() {
    let app = TestApp::real().build();
    let body = json!({"prompt": "Say OK.", "max_tokens": 48, "temperature": 0, "ignore_eos": true});
    let answer = post(&app, "/v1/generate", body).await.json();
    assert_eq!(answer["usage"]["completion_tokens"], 48, "{answer}");
    assert_eq!(answer["finish_reason"], "length");
}

#[tokio::test]
async fn a_stop_string_ends_the_text_before_it_streamed_or_not() {
    let app = TestApp::real().build();
    let base = json!({"prompt": "Count from 1 to 20, separated by commas.", "max_tokens": 80, "temperature": 0});
    let free = post(&app, "/v1/generate", base.clone()).await.json();
    let free_text = free["text"].as_str().unwrap();
    let cut_at = free_text.find('5').expect("the model counts past 5");
    let mut with_stop = base.clone();
    with_stop["stop"] = json!(["5", "never-appears"]);
    let stopped = post(&app, "/v1/generate", with_stop.clone()).await.json();
    assert_eq!(stopped["text"].as_str().unwrap(), &free_text[..cut_at]);
    assert_eq!(stopped["finish_reason"], "stop");

    let events = post(&app, "/v1/generate/stream", with_stop).await.json_events();
    let streamed: String = events.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(streamed, &free_text[..cut_at]);
    assert_eq!(events.last().unwrap()["finish_reason"], "stop");
}

#[tokio::test]
async fn raw_prompts_skip_the_chat_template() {
    let app = TestApp::real().build();
    let templated = post(&app, "/v1/generate", json!({"prompt": "Paris is", "max_tokens": 1})).await.json();
    let raw = post(&app, "/v1/generate", json!({"prompt": "Paris is", "max_tokens": 1, "raw": true})).await.json();
    assert_eq!(raw["usage"]["prompt_tokens"], 2, "{raw}");
    assert!(templated["usage"]["prompt_tokens"].as_u64().unwrap() > 10, "{templated}");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_sampled_text() {
    let app = TestApp::real().build();
    let body = json!({"prompt": "Invent a name for a cat.", "max_tokens": 16, "temperature": 1.0, "seed": 7});
    let a = post(&app, "/v1/generate", body.clone()).await.json();
    let b = post(&app, "/v1/generate", body).await.json();
    assert_eq!(a["text"], b["text"]);
}
