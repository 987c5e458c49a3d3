//! The OpenAI-compatible endpoints on the real model, in OpenAI's shapes.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{MODEL_ID, TestApp, get, post};

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 12, "temperature": 0});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn chat_completion_has_openais_shape() {
    let app = TestApp::real().build();
    let answer = post(&app, "/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], MODEL_ID);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert!(choice["logprobs"].is_null());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn streamed_chat_sends_role_then_content_then_finish_then_usage_then_done() {
    let app = TestApp::real().build();
    let whole = post(&app, "/v1/chat/completions", chat(json!({}))).await.json();
    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let events = post(&app, "/v1/chat/completions", body).await.json_events();
    assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk" && e["id"] == events[0]["id"]));
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
    let finish = &events[events.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], whole["choices"][0]["finish_reason"]);
    let text: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, whole["choices"][0]["message"]["content"].as_str().unwrap());
    // Only the last chunk carries usage.
    assert!(events[..events.len() - 1].iter().all(|e| e.get("usage").is_none()));
}

#[tokio::test]
async fn chat_logprobs_list_each_token_with_its_alternatives() {
    let app = TestApp::real().build();
    let body = post(&app, "/v1/chat/completions", chat(json!({"logprobs": true, "top_logprobs": 3}))).await.json();
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    // Every generated token is listed, except an end-of-sequence token (no text).
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    let eos = u64::from(body["choices"][0]["finish_reason"] == "stop");
    assert_eq!(content.len() as u64, completion - eos);
    let text: String = content.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(text, body["choices"][0]["message"]["content"].as_str().unwrap());
    for token in content {
        let lp = token["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = token["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-4, "{token}");
        assert!(token["bytes"].is_array());
    }
}

#[tokio::test]
async fn logit_bias_can_force_a_token() {
    let app = TestApp::real().build();
    let tokens = post(&app, "/v1/tokenize", json!({"prompt": " banana"})).await.json()["tokens"].clone();
    let id = tokens[0].as_u64().unwrap();
    let body = chat(json!({"logit_bias": {id.to_string(): 100}, "max_tokens": 3}));
    let answer = post(&app, "/v1/chat/completions", body).await.json();
    assert!(answer["choices"][0]["message"]["content"].as_str().unwrap().starts_with(" banana"), "{answer}");
}

#[tokio::test]
async fn completions_continue_raw_text_with_echo_and_logprobs() {
    let app = TestApp::real().build();
    let body = json!({"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "echo": true, "logprobs": 2});
    let answer = post(&app, "/v1/completions", body).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    let choice = &body["choices"][0];
    let text = choice["text"].as_str().unwrap();
    assert!(text.starts_with("The capital of France is "), "{text}");
    let logprobs = &choice["logprobs"];
    let offsets = logprobs["text_offset"].as_array().unwrap();
    assert_eq!(offsets[0], "The capital of France is".len());
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(body["usage"]["prompt_tokens"], 5);
}

#[tokio::test]
async fn completions_take_token_ids_and_stream_text_completion_chunks() {
    let app = TestApp::real().build();
    let ids = post(&app, "/v1/tokenize", json!({"prompt": "One, two, three,"})).await.json()["tokens"].clone();
    let whole = post(&app, "/v1/completions", json!({"prompt": ids, "max_tokens": 8, "temperature": 0})).await.json();
    let stream = json!({"prompt": ids, "max_tokens": 8, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let events = post(&app, "/v1/completions", stream).await.json_events();
    assert!(events.iter().all(|e| e["object"] == "text_completion"));
    let text: String = events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(events.last().unwrap()["usage"], whole["usage"]);
    assert_eq!(events[events.len() - 2]["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
}

#[tokio::test]
async fn models_lists_the_served_model_and_retrieves_it_by_id() {
    let app = TestApp::real().build();
    let list = get(&app, "/v1/models").await.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL_ID);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["max_model_len"], super::CONTEXT);
    assert_eq!(get(&app, &format!("/v1/models/{MODEL_ID}")).await.json(), list["data"][0]);
    let missing = get(&app, "/v1/models/gpt-4o").await.error(StatusCode::NOT_FOUND);
    assert_eq!(missing["code"], "model_not_found");
}

#[tokio::test]
async fn logprobs_cover_every_token_also_when_a_stop_string_cuts_the_text() {
    let app = TestApp::real().build();
    let base = json!({"messages": [{"role": "user", "content": "Count from 1 to 20."}], "max_tokens": 40,
        "temperature": 0, "logprobs": true});
    let free = post(&app, "/v1/chat/completions", base.clone()).await.json();
    let text = free["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let mut cut = base.clone();
    cut["stop"] = json!("5");
    for stream in [false, true] {
        cut["stream"] = json!(stream);
        let answer = post(&app, "/v1/chat/completions", cut.clone()).await;
        let (content, logprobs, usage) = if stream {
            let events = answer.json_events();
            let content: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
            let logprobs: Vec<Value> = events
                .iter()
                .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
                .flatten()
                .cloned()
                .collect();
            (content, logprobs, None)
        } else {
            let body = answer.json();
            let content = body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
            let logprobs = body["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
            (content, logprobs, Some(body["usage"]["completion_tokens"].clone()))
        };
        assert_eq!(content, text[..text.find('5').unwrap()], "stream: {stream}");
        let tokens: String = logprobs.iter().map(|t| t["token"].as_str().unwrap()).collect();
        assert!(tokens.starts_with(&content) && tokens.contains('5'), "{tokens:?} stream: {stream}");
        if let Some(usage) = usage {
            assert_eq!(usage, logprobs.len(), "one entry per generated token");
        }
    }
}

#[tokio::test]
async fn response_format_json_object_answers_with_one_json_object() {
    let app = TestApp::real().build();
    for (content, max_tokens, stream) in [
        ("Tell me about owls.", 60, false),
        ("Say hello in plain words.", 20, true),
        ("List three colours.", 12, false),
    ] {
        let body = json!({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream, "response_format": {"type": "json_object"}});
        let answer = post(&app, "/v1/chat/completions", body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
        let text: String = if stream {
            answer
                .json_events()
                .iter()
                .filter_map(|e| e["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                .collect()
        } else {
            answer.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        };
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{content:?}: {text:?} is not JSON: {e}"));
        assert!(value.is_object(), "{text}");
    }
}

#[tokio::test]
async fn json_object_without_plugins_is_refused_naming_response_format() {
    let app = TestApp::fake(super::Fake::Overloaded).build();
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}});
    let error = post(&app, "/v1/chat/completions", body).await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "response_format");
}
