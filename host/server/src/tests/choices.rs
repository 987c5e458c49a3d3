//! Several answers to one prompt (`n`) on chat completions and completions,
//! whole and streamed: every answer indexed, the prompt counted once.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{MODEL_ID, TestApp, post};

fn chat(extra: Value) -> Value {
    let mut body =
        json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn n_greedy_chat_answers_are_indexed_and_the_prompt_is_counted_once() {
    let app = TestApp::real().build();
    let one = post(&app, "/v1/chat/completions", chat(json!({"temperature": 0}))).await.json();
    let answer = post(&app, "/v1/chat/completions", chat(json!({"temperature": 0, "n": 3}))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        // Greedy: every answer is the single answer.
        assert_eq!(c["message"], one["choices"][0]["message"], "answer {i}");
    }
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], one["usage"]["prompt_tokens"]);
    assert_eq!(usage["completion_tokens"], 3 * one["usage"]["completion_tokens"].as_u64().unwrap());
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn seeded_sampled_answers_repeat_and_differ_from_each_other() {
    let app = TestApp::real().build();
    let body = chat(json!({"temperature": 1.0, "seed": 11, "n": 4, "max_tokens": 12}));
    let texts = |b: &Value| -> Vec<String> {
        b["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].as_str().unwrap().to_string()).collect()
    };
    let first = texts(&post(&app, "/v1/chat/completions", body.clone()).await.json());
    assert_eq!(first, texts(&post(&app, "/v1/chat/completions", body).await.json()));
    assert!(first.iter().any(|t| *t != first[0]), "four sampled answers were identical: {first:?}");
}

#[tokio::test]
async fn streamed_answers_interleave_by_index_and_usage_comes_once_at_the_end() {
    let app = TestApp::real().build();
    let whole = post(&app, "/v1/chat/completions", chat(json!({"temperature": 0, "n": 2}))).await.json();
    let body = chat(json!({"temperature": 0, "n": 2, "stream": true, "stream_options": {"include_usage": true}}));
    let events = post(&app, "/v1/chat/completions", body).await.json_events();
    for index in 0..2u64 {
        let mine: Vec<&Value> =
            events.iter().filter(|e| e["choices"].get(0).is_some_and(|c| c["index"] == index)).collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant", "answer {index} opens with the role");
        let text: String = mine.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, whole["choices"][index as usize]["message"]["content"].as_str().unwrap());
        let finishes = mine.iter().filter(|e| !e["choices"][0]["finish_reason"].is_null()).count();
        assert_eq!(finishes, 1, "answer {index} finishes once");
    }
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"]);
    assert_eq!(events.iter().filter(|e| e.get("usage").is_some()).count(), 1);
}

#[tokio::test]
async fn completions_take_n_too_and_past_eight_is_refused() {
    let app = TestApp::real().build();
    let body = json!({"model": MODEL_ID, "prompt": "The sky is", "max_tokens": 4, "temperature": 0, "n": 2});
    let answer = post(&app, "/v1/completions", body.clone()).await.json();
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!((choices.len(), &choices[1]["index"]), (2, &json!(1)));
    assert_eq!(choices[0]["text"], choices[1]["text"]);
    let mut nine = body;
    nine["n"] = json!(9);
    let refused = post(&app, "/v1/completions", nine).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let error = refused.json();
    assert_eq!(error["error"]["param"], "n");
    assert!(error["error"]["message"].as_str().unwrap().contains("between 1 and 8"), "{error}");
}
