//! What the validation enforces, declared in the served OpenAPI document,
//! so a generated client refuses what the server refuses. Most bounds sit
//! on the wire types' fields (`#[schema(...)]`); what depends on the served
//! model (its id, context window and vocabulary), or what the derive
//! cannot say (one-of shapes, path and query parameters), is added here,
//! from the same constants the validation uses. What no schema can say (a
//! prompt plus `max_tokens` over the context, a pipeline or webhook the
//! server does not have or allow) stays a 400 naming the field.

use serde_json::{Value, json};

use crate::request::{COMPLETION_MAX_LOGPROBS, MAX_STOP_CHARS, ROLES};
use crate::routes::tasks::MAX_PAGE;

/// What the document is specialised for.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    pub model: String,
    pub max_context: usize,
    pub vocab_size: usize,
    /// The pipelines a request may name.
    pub pipelines: Vec<String>,
}

/// Adds the served model's limits and the bounds the derive cannot state.
pub(crate) fn declare(doc: &mut Value, served: &Served) {
    let model = json!({"type": ["string", "null"], "enum": [served.model, null],
        "description": "The served model's id (see `GET /v1/models`); may be omitted."});
    for schema in
        ["GenerationRequest", "ChatCompletionRequest", "CompletionRequest", "TokenizeRequest", "DetokenizeRequest"]
    {
        set(doc, schema, "model", model.clone());
        for limit in ["max_tokens", "max_completion_tokens"] {
            bound(doc, schema, limit, &[("minimum", json!(1)), ("maximum", json!(served.max_context))]);
        }
        let mut pipelines: Vec<Value> = served.pipelines.iter().map(|p| json!(p)).collect();
        pipelines.push(Value::Null);
        bound(doc, schema, "pipeline", &[("enum", Value::Array(pipelines))]);
        bound(doc, schema, "n", &[("minimum", json!(1)), ("maximum", json!(kiln_engine::MAX_CHOICES))]);
        bound(doc, schema, "best_of", &[("minimum", json!(1)), ("maximum", json!(1))]);
        bound(
            doc,
            schema,
            "logit_bias",
            &[
                ("propertyNames", json!({"pattern": "^[0-9]{1,10}$"})),
                ("additionalProperties", json!({"type": "number", "minimum": -100, "maximum": 100})),
            ],
        );
        bound(doc, schema, "webhook_url", &[("pattern", json!("^https?://[^/?#@]+"))]);
        bound(doc, schema, "messages", &[("minItems", json!(1))]);
    }
    bound(doc, "ChatCompletionRequest", "top_logprobs", &[("maximum", json!(kiln_engine::MAX_TOP_LOGPROBS))]);
    bound(doc, "CompletionRequest", "logprobs", &[("maximum", json!(COMPLETION_MAX_LOGPROBS))]);
    bound(doc, "GenerationRequest", "prompt", &[("minLength", json!(1))]);
    // One prompt, not empty: text, token ids, or a list holding exactly one of those.
    let text = json!({"type": "string", "minLength": 1});
    let ids = json!({"type": "array", "minItems": 1,
        "items": {"type": "integer", "minimum": 0, "maximum": served.vocab_size.saturating_sub(1)}});
    if let Some(schema) = doc.pointer_mut("/components/schemas/PromptInput") {
        schema["oneOf"] = json!([text, ids, {"type": "array", "items": text, "minItems": 1, "maxItems": 1},
            {"type": "array", "items": ids, "minItems": 1, "maxItems": 1}]);
    }
    set(
        doc,
        "CompletionRequest",
        "suffix",
        json!({"type": "null", "description": "Not supported (no fill-in-the-middle)."}),
    );
    // A stream's events: pieces of the answer, the end (for the guide's
    // stream), or an error that ends it early.
    let error = json!({"$ref": "#/components/schemas/ErrorBody"});
    for (path, event) in [
        ("/v1/generate", "GenerationChunk"),
        ("/v1/generate/stream", "GenerationChunk"),
        ("/v1/chat/completions", "ChatCompletionChunk"),
        ("/v1/completions", "Completion"),
    ] {
        let mut events = vec![json!({"$ref": format!("#/components/schemas/{event}")}), error.clone()];
        if event == "GenerationChunk" {
            events.push(json!({"$ref": "#/components/schemas/GenerationStreamEnd"}));
        }
        // Each event as OpenAPI 3.2 reads a stream's schema: its `data` is
        // JSON of one of these, or the closing `[DONE]`.
        let json_data = json!({"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"anyOf": events}});
        let event = json!({"type": "object", "required": ["data"],
            "properties": {"data": {"anyOf": [{"const": "[DONE]"}, json_data]}}});
        let pointer = format!("/paths/{}/post/responses/200/content/text~1event-stream/schema", escape(path));
        if let Some(schema) = doc.pointer_mut(&pointer) {
            *schema = event;
        }
    }
    let token = json!({"type": "integer", "minimum": 0, "maximum": served.vocab_size.saturating_sub(1)});
    bound(doc, "DetokenizeRequest", "tokens", &[("items", token)]);
    bound(doc, "ChatMessage", "role", &[("enum", json!(ROLES))]);
    bound(doc, "ContentPart", "type", &[("enum", json!(["text"]))]);
    bound(doc, "ChatCompletionRequest", "tools", &[("maxItems", json!(crate::tools::MAX_TOOLS))]);
    bound(doc, "ToolSpec", "type", &[("enum", json!(["function"]))]);
    bound(doc, "FunctionSpec", "name", &[("pattern", json!(crate::tools::NAME_PATTERN))]);
    bound(doc, "ToolCall", "type", &[("enum", json!(["function"]))]);
    let stop = json!({"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS});
    if let Some(schema) = doc.pointer_mut("/components/schemas/StopSequences") {
        schema["oneOf"] = json!([stop, {"type": "array", "items": stop, "maxItems": kiln_stop::MAX_STOP_STRINGS}]);
    }
    // A component is bytes, whatever the client calls them.
    let component = json!({"type": "string", "format": "binary"});
    if let Some(content) = doc.pointer_mut("/paths/~1v1~1plugins~1{name}/put/requestBody/content") {
        *content =
            json!({"application/wasm": {"schema": component}, "application/octet-stream": {"schema": component}});
    }
    unsigned_bounds(doc);
    parameter(doc, "/v1/tasks", "get", "limit", json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE}));
    let name = json!({"type": "string", "pattern": kiln_pipeline::NAME_PATTERN});
    for (path, method) in
        [("/v1/plugins/{name}", "put"), ("/v1/plugins/{name}", "delete"), ("/v1/plugins/{name}/reload", "post")]
    {
        parameter(doc, path, method, "name", name.clone());
    }
}

/// Unsigned integers as the server reads them: utoipa writes `u32` as
/// `format: int32` (whose range ends at 2^31 - 1) and `u64` as `int64`; the
/// bounds are stated instead (a `u64` field, the seed, takes 0 to 2^63 - 1).
fn unsigned_bounds(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            let unsigned = object.get("minimum").and_then(Value::as_f64) == Some(0.0);
            let limit = match object.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => Some(json!(u32::MAX)),
                Some("int64") if unsigned => Some(json!(i64::MAX)),
                _ => None,
            };
            if let Some(limit) = limit {
                object.remove("format");
                object.entry("maximum").or_insert(limit);
            }
            object.values_mut().for_each(unsigned_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}

/// Replaces a property's schema.
fn set(doc: &mut Value, schema: &str, field: &str, value: Value) {
    if let Some(slot) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/{field}")) {
        *slot = value;
    }
}

/// Adds keywords to a property's schema, where the schema has the property.
fn bound(doc: &mut Value, schema: &str, field: &str, keywords: &[(&str, Value)]) {
    let Some(Value::Object(property)) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
    else {
        return;
    };
    for (keyword, value) in keywords {
        property.insert(keyword.to_string(), value.clone());
    }
}

/// Replaces a path or query parameter's schema.
fn parameter(doc: &mut Value, path: &str, method: &str, name: &str, schema: Value) {
    let pointer = format!("/paths/{}/{method}/parameters", escape(path));
    let Some(Value::Array(parameters)) = doc.pointer_mut(&pointer) else { return };
    for parameter in parameters.iter_mut().filter(|p| p["name"] == name) {
        parameter["schema"] = schema.clone();
    }
}

/// `path` as one JSON pointer token.
fn escape(path: &str) -> String {
    path.replace('~', "~0").replace('/', "~1")
}
