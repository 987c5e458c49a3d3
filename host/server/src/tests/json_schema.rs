//! `response_format: json_schema` on the real model: the answer validates,
//! and what the schema compiler cannot take is a 400 naming it.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{MODEL_ID, TestApp, post};

fn chat(schema: Value, max_tokens: u32) -> Value {
    json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Describe a person as JSON."}],
           "max_tokens": max_tokens, "temperature": 0.8, "seed": 3,
           "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": schema}}})
}

fn person() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["name", "age", "tags"],
           "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                          "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                          "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]}}})
}

#[tokio::test]
async fn a_json_schema_answer_parses_and_holds_its_schema_even_when_cut_short() {
    let app = TestApp::real().build();
    for max_tokens in [32, 200] {
        let answer = post(&app, "/v1/chat/completions", chat(person(), max_tokens)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let body = answer.json();
        let text = body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{max_tokens}: {e}: {text}"));
        let obj = value.as_object().unwrap();
        assert!(obj.keys().all(|k| ["name", "age", "tags", "nick"].contains(&k.as_str())), "{text}");
        assert!(value["name"].as_str().is_some_and(|n| n.chars().count() <= 20), "{text}");
        assert!(value["age"].is_i64() || value["age"].is_u64(), "{text}");
        let tags = value["tags"].as_array().unwrap();
        assert!(tags.len() <= 3 && tags.iter().all(|t| ["a", "b", "c"].contains(&t.as_str().unwrap())), "{text}");
        assert!(value.get("nick").is_none_or(|n| n.is_null() || n.is_string()), "{text}");
        assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= max_tokens as u64);
    }
}

#[tokio::test]
async fn what_the_schema_compiler_cannot_take_is_refused_naming_it() {
    let app = TestApp::real().build();
    let mut schema = person();
    schema["properties"]["name"]["pattern"] = json!("^[A-Z]");
    let refused = post(&app, "/v1/chat/completions", chat(schema, 64)).await;
    let error = refused.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "response_format.json_schema.schema");
    assert!(error["message"].as_str().unwrap().contains("`pattern` at #/properties/name"), "{error}");
    // Too few tokens for even the shortest valid answer.
    let refused = post(&app, "/v1/chat/completions", chat(person(), 3)).await;
    assert!(refused.error(StatusCode::BAD_REQUEST)["message"].as_str().unwrap().contains("too small"));
    // No schema at all.
    let mut body = chat(person(), 64);
    body["response_format"] = json!({"type": "json_schema"});
    let refused = post(&app, "/v1/chat/completions", body).await;
    assert_eq!(refused.error(StatusCode::BAD_REQUEST)["param"], "response_format.json_schema.schema");
}
