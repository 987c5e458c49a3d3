//! Bad input gets a clear 4xx naming the problem; failures never leak internals.

use axum::http::StatusCode;
use kiln_engine::Backend;
use serde_json::json;

use super::{CONTEXT, Fake, TestApp, get, post, post_raw};
use crate::ServerConfig;
use serde_json::Value;

#[tokio::test]
async fn malformed_json_is_400_and_wrong_types_are_422_naming_the_field() {
    let app = TestApp::real().build();
    for path in ["/v1/generate", "/v1/chat/completions", "/v1/completions", "/v1/tokenize"] {
        let error = post_raw(&app, path, "{\"prompt\": ").await.error(StatusCode::BAD_REQUEST);
        assert_eq!(error["code"], "invalid_json", "{path}");
    }
    let error = post(&app, "/v1/generate", json!({"prompt": 42})).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["param"], "prompt");
    let error = post(&app, "/v1/generate", json!({"max_tokens": 5})).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error["message"].as_str().unwrap().contains("prompt"), "{error}");
    let body = json!({"messages": [{"role": "user", "content": 7}]});
    let error = post(&app, "/v1/chat/completions", body).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["param"], "messages[0].content");
    let error = post(&app, "/v1/generate", json!({"prompt": "x", "max_tokens": -1})).await;
    assert_eq!(error.error(StatusCode::UNPROCESSABLE_ENTITY)["param"], "max_tokens");
}

#[tokio::test]
async fn out_of_range_values_are_400_naming_the_field() {
    let app = TestApp::real().build();
    let engine = app.engine();
    let cases = [
        (json!({"temperature": -0.5}), "temperature"),
        (json!({"top_p": -0.1}), "top_p"),
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"repetition_penalty": 11}), "repetition_penalty"),
        (json!({"max_tokens": 100000}), "max_tokens"),
        (json!({"seed": 9223372036854775808u64}), "seed"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"min_p": 2.0}), "min_p"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": CONTEXT}), "max_tokens"),
        (json!({"presence_penalty": 3.0}), "presence_penalty"),
        (json!({"stop": [""]}), "stop"),
        (json!({"model": "gpt-4o"}), "model"),
    ];
    for (extra, field) in cases {
        let mut body = json!({"prompt": "hello"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let error = post(&app, "/v1/generate", body).await.error(StatusCode::BAD_REQUEST);
        assert_eq!(error["param"], field, "{error}");
        assert!(error["message"].as_str().unwrap().contains(field) || field == "stop" || field == "model", "{error}");
    }
    let chat = |extra: serde_json::Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let chat_cases = [
        (chat(json!({"n": 9})), "n"),
        (chat(json!({"top_logprobs": 2})), "top_logprobs"),
        (chat(json!({"logprobs": true, "top_logprobs": 21})), "top_logprobs"),
        (chat(json!({"logit_bias": {"not-a-token": 1}})), "logit_bias"),
        (chat(json!({"logit_bias": {"999999": 1}})), "logit_bias"),
        (chat(json!({"response_format": {"type": "json_schema"}})), "response_format.json_schema.schema"),
        (chat(json!({"response_format": {"type": "xml"}})), "response_format"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": [{"role": "wizard", "content": "hi"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), "messages[0].content[0]"),
    ];
    for (body, field) in chat_cases {
        let error = post(&app, "/v1/chat/completions", body).await.error(StatusCode::BAD_REQUEST);
        assert_eq!(error["param"], field, "{error}");
    }
    let completion_cases = [
        (json!({"prompt": "x", "suffix": "y"}), "suffix"),
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"prompt": [1, 2, 999999]}), "prompt[2]"),
    ];
    for (body, field) in completion_cases {
        let error = post(&app, "/v1/completions", body).await.error(StatusCode::BAD_REQUEST);
        assert_eq!(error["param"], field, "{error}");
    }
    assert_eq!(engine.stats().generated_tokens(), 0, "nothing invalid reached the engine");
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_400_context_length_exceeded() {
    let app = TestApp::real().build();
    let long = "word ".repeat(CONTEXT + 10);
    let error = post(&app, "/v1/generate", json!({"prompt": long, "raw": true})).await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["param"], "prompt");
    // Through the chat template, the field the client wrote is still `prompt`.
    let error = post(&app, "/v1/generate", json!({"prompt": long})).await.error(StatusCode::BAD_REQUEST);
    assert_eq!((&error["code"], &error["param"]), (&json!("context_length_exceeded"), &json!("prompt")));
    let body = json!({"messages": [{"role": "user", "content": long}]});
    let error = post(&app, "/v1/chat/completions", body).await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "messages");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = TestApp::real().config(ServerConfig { max_body_bytes: 4096, ..ServerConfig::default() }).build();
    let body = json!({"prompt": "x".repeat(5000)});
    let error = post(&app, "/v1/generate", body).await.error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error["message"].as_str().unwrap().contains("4096"), "{error}");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_json() {
    let app = TestApp::real().build();
    assert_eq!(get(&app, "/v2/everything").await.error(StatusCode::NOT_FOUND)["code"], "not_found");
    assert_eq!(get(&app, "/v1/generate").await.error(StatusCode::METHOD_NOT_ALLOWED)["code"], "method_not_allowed");
}

#[tokio::test]
async fn an_overloaded_engine_is_503_with_retry_after() {
    let app = TestApp::fake(Fake::Overloaded).build();
    let answer = post(&app, "/v1/generate", json!({"prompt": "hi"})).await;
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(answer.error(StatusCode::SERVICE_UNAVAILABLE)["type"], "overloaded_error");
}

#[tokio::test]
async fn an_engine_failure_is_500_without_internal_details() {
    let app = TestApp::fake(Fake::FailAfter(vec!["Hello", " world"])).build();
    let answer = post(&app, "/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}]})).await;
    let error = answer.error(StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error["type"], "server_error");
    assert!(!error["message"].as_str().unwrap().contains("deadbeef"), "{error}");
}

#[tokio::test]
async fn a_failure_midway_through_a_stream_ends_it_with_an_error_event_then_done() {
    let app = TestApp::fake(Fake::FailAfter(vec!["Hello", " world"])).build();
    let answer = post(&app, "/v1/generate/stream", json!({"prompt": "hi"})).await;
    assert_eq!(answer.status, StatusCode::OK);
    let events = answer.json_events();
    assert_eq!(events[0]["text"], "Hello");
    assert_eq!(events[1]["text"], " world");
    let error = &events[2]["error"];
    assert_eq!(error["type"], "server_error");
    assert!(!error["message"].as_str().unwrap().contains("deadbeef"));
    assert_eq!(events.len(), 3);
}

#[tokio::test]
async fn a_wrong_type_in_a_shared_sampling_field_names_the_field() {
    let app = TestApp::real().build();
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"});
    let error = post(&app, "/v1/chat/completions", chat).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["param"], "temperature");
    let completion = json!({"prompt": "hi", "n": -1});
    let error = post(&app, "/v1/completions", completion).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["param"], "n");
}

#[tokio::test]
async fn errors_name_the_field_the_client_wrote() {
    let app = TestApp::real().build();
    let chat = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (chat(json!({"max_completion_tokens": 0})), "max_completion_tokens"),
        (chat(json!({"max_tokens": 0})), "max_tokens"),
        (chat(json!({"tools": [{"type": "function", "function": {"name": "no spaces"}}]})), "tools[0].function.name"),
    ];
    for (body, field) in cases {
        let error = post(&app, "/v1/chat/completions", body).await.error(StatusCode::BAD_REQUEST);
        assert_eq!(error["param"], field, "{error}");
    }
    let error = post(&app, "/v1/completions", json!({"prompt": "hi", "logprobs": 6})).await;
    assert_eq!(error.error(StatusCode::BAD_REQUEST)["param"], "logprobs");
    // An empty tool list is what some clients always send: not refused.
    let answer = post(&app, "/v1/chat/completions", chat(json!({"tools": [], "max_tokens": 1}))).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn an_unset_max_tokens_fits_what_the_context_leaves() {
    let app = TestApp::real().build();
    // About 1000 of the 1024 positions: the default 512 would not fit.
    let prompt = "word ".repeat(1000);
    let body = json!({"prompt": prompt, "raw": true, "ignore_eos": true, "temperature": 0});
    let answer = post(&app, "/v1/generate", body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    let usage = &answer.json()["usage"];
    assert_eq!(usage["total_tokens"], CONTEXT, "{usage}");
}

#[tokio::test]
async fn ids_past_the_tokenizers_list_are_400_not_500() {
    let app = TestApp::fake(Fake::Overloaded).build();
    let (_, tokenizer) = super::loaded();
    let id = tokenizer.vocab_size() + super::PADDED_IDS / 2;
    let error = post(&app, "/v1/detokenize", json!({"tokens": [1, id]})).await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "tokens[1]");
    let body = json!({"prompt": [1, id], "echo": true});
    let error = post(&app, "/v1/completions", body).await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "prompt[1]");
}

#[tokio::test]
async fn a_quiet_stream_sends_keep_alive_comments() {
    let config = ServerConfig { sse_keep_alive: std::time::Duration::from_millis(50), ..ServerConfig::default() };
    let app = TestApp::fake(Fake::Slow(std::time::Duration::from_millis(400))).config(config).build();
    let answer = post(&app, "/v1/generate/stream", json!({"prompt": "hi"})).await;
    let body = String::from_utf8(answer.body.to_vec()).unwrap();
    let comments = body.split("\n\n").filter(|event| event.starts_with(':')).count();
    assert!(comments >= 2, "{body}");
    assert_eq!(answer.json_events()[0]["text"], "late");
}

#[tokio::test]
async fn a_generation_past_the_request_timeout_is_stopped_with_a_504() {
    let config = crate::ServerConfig { request_timeout: std::time::Duration::from_millis(50), ..Default::default() };
    let app = TestApp::fake(Fake::Slow(std::time::Duration::from_secs(5))).config(config).build();
    let answer = post(&app, "/v1/generate", serde_json::json!({"prompt": "hi", "max_tokens": 4})).await;
    let error = answer.error(axum::http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error["code"], "timeout");
    let streamed = post(&app, "/v1/generate/stream", serde_json::json!({"prompt": "hi", "max_tokens": 4})).await;
    let events = streamed.json_events();
    assert_eq!(events.last().unwrap()["error"]["code"], "timeout", "{events:?}");
}

#[tokio::test]
async fn query_and_path_rejections_are_the_json_envelope_naming_the_parameter() {
    let app = TestApp::fake(Fake::Say(vec!["x"])).tasks(super::TaskConfig::default()).build();
    let error = get(&app, "/v1/tasks?limit=abc").await.error(StatusCode::BAD_REQUEST);
    assert_eq!((&error["param"], &error["code"]), (&json!("limit"), &json!("invalid_query")));
    assert!(error["message"].as_str().unwrap().contains("limit"), "{error}");
    // A path segment that is not UTF-8 once decoded.
    let error = get(&app, "/v1/tasks/%FF").await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "id");
    let error = get(&app, "/v1/models/%FF").await.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "id");
    // Unknown routes and methods too.
    assert_eq!(get(&app, "/v1/nowhere").await.error(StatusCode::NOT_FOUND)["code"], "not_found");
    let wrong = post(&app, "/v1/models", json!({})).await;
    assert_eq!(wrong.error(StatusCode::METHOD_NOT_ALLOWED)["code"], "method_not_allowed");
}

#[tokio::test]
async fn integers_written_as_integral_numbers_are_integers() {
    let app = TestApp::fake(Fake::Say(vec!["x"])).build();
    let answer =
        post(&app, "/v1/generate", json!({"prompt": "hi", "max_tokens": 4.0, "seed": 7.0, "top_k": 40.0})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    let fraction = post(&app, "/v1/generate", json!({"prompt": "hi", "max_tokens": 4.5})).await;
    assert_eq!(fraction.error(StatusCode::UNPROCESSABLE_ENTITY)["param"], "max_tokens");
}
