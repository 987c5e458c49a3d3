use serde_json::{Value, json};

use super::*;
use kiln_sdk::Vocabulary;
use kiln_sdk::testing::{random_logits as logits, run_sampler, with_vocabulary};

/// Single bytes, JSON pieces, words, and tokens that would break JSON.
fn vocab() -> Vocabulary {
    let mut tokens: Vec<Vec<u8>> = (32u8..127).map(|b| vec![b]).collect();
    for t in [
        "{\"",
        "\":",
        "\": \"",
        "\",\"",
        "\"}",
        "name",
        "age",
        " the",
        "hello",
        "true",
        "null",
        "12",
        ".5",
        "\n",
        "},",
        "[{",
        "}]",
        "\\n",
        "\\u00e9",
        "<|im_end|>",
        "```",
        "\"\n}",
        "é",
        "\t",
        "\"name\":\"",
        "red",
        "ab",
        "abc",
        "tags",
        "\"]",
        "[\"",
        "-3",
        "e5",
        "false",
        // Tool call syntax, and tokens across its edges.
        "<tool_call>",
        "</tool_call>",
        "\n</",
        "\n{\"",
        "}\n",
        "[TOOL_CALLS]",
        "<|python_tag|>",
        "get_",
        "weather",
        "time",
        "arguments",
    ] {
        tokens.push(t.as_bytes().to_vec());
    }
    let eos = tokens.iter().position(|t| t == b"<|im_end|>").unwrap() as u32;
    Vocabulary::new(tokens, vec![eos])
}

/// The output, or `None` when the budget cannot hold the schema's shortest answer.
fn generate(schema: &Value, seed: u64, max_tokens: usize) -> Option<String> {
    generate_wrapped(schema, ("", ""), seed, max_tokens)
}

/// [`generate`] with a prefix and a suffix.
fn generate_wrapped(schema: &Value, (prefix, suffix): (&str, &str), seed: u64, max_tokens: usize) -> Option<String> {
    let v = vocab();
    let size = v.size() as usize;
    with_vocabulary(v.clone(), || {
        let config = Config::new([
            ("schema", schema.to_string()),
            ("max_tokens", max_tokens.to_string()),
            ("prefix", prefix.to_string()),
            ("suffix", suffix.to_string()),
        ]);
        let mut sampler = match JsonSchema::new(SamplingParams::default(), &[], &config) {
            Ok(sampler) => sampler,
            // Refused only when even the shortest answer does not fit.
            Err(e) if e.contains("too small") => return None,
            Err(e) => panic!("{e}"),
        };
        let ids = run_sampler(&mut sampler, logits(seed, size), max_tokens);
        assert!(ids.len() <= max_tokens, "{} tokens for a budget of {max_tokens}", ids.len());
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| v.token(id).to_vec()).collect();
        Some(String::from_utf8(bytes).unwrap())
    })
}

/// The supported subset's meaning, as a reference the outputs are held to.
fn valid(schema: &Value, value: &Value, root: &Value) -> bool {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return valid(root.pointer(&r[1..]).unwrap(), value, root);
    }
    if let Some(c) = schema.get("const") {
        return value == c;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return e.contains(value);
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        return branches.iter().any(|b| valid(b, value, root));
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        return branches.iter().filter(|b| valid(b, value, root)).count() == 1;
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec!["object"],
    };
    let count = |k: &str| schema.get(k).and_then(Value::as_u64);
    types.iter().any(|t| match (*t, value) {
        ("object", Value::Object(m)) => {
            let props = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
            let required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
            required.iter().all(|r| m.contains_key(r.as_str().unwrap()))
                && m.iter().all(|(k, v)| props.get(k).is_some_and(|s| valid(s, v, root)))
        }
        ("array", Value::Array(a)) => {
            count("minItems").is_none_or(|n| a.len() as u64 >= n)
                && count("maxItems").is_none_or(|n| a.len() as u64 <= n)
                && a.iter().all(|v| valid(&schema["items"], v, root))
        }
        ("string", Value::String(s)) => {
            let n = s.chars().count() as u64;
            count("minLength").is_none_or(|m| n >= m) && count("maxLength").is_none_or(|m| n <= m)
        }
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) | ("null", Value::Null) => true,
        _ => false,
    })
}

/// A random schema from the supported subset (a fixed LCG).
fn next(x: &mut u64, n: u64) -> u64 {
    *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*x >> 33) % n
}

fn random_schema(x: &mut u64, depth: u32) -> Value {
    let mut next = |n: u64| next(x, n);
    let pick = if depth >= 3 { next(6) } else { next(9) };
    match pick {
        0 => json!({"type": "string"}),
        1 => json!({"type": "string", "minLength": next(3), "maxLength": 3 + next(5)}),
        2 => json!({"type": "integer"}),
        3 => json!({"type": "number"}),
        4 => json!({"type": "boolean"}),
        5 => json!({"enum": ["red", "green", 12, null]}),
        6 => json!({"anyOf": [{"type": "string", "maxLength": 4}, {"type": "null"}]}),
        7 => {
            let (min, extra) = (next(3), next(3));
            let items = random_schema(x, depth + 1);
            json!({"type": "array", "items": items, "minItems": min, "maxItems": min + extra})
        }
        _ => {
            let names = ["name", "age", "tags", "a", "ab", "abc"];
            let (n, skip) = (1 + next(4) as usize, next(2) as usize);
            let mut props = serde_json::Map::new();
            let mut required = Vec::new();
            for name in names.iter().skip(skip).take(n) {
                props.insert(name.to_string(), random_schema(x, depth + 1));
                if self::next(x, 3) > 0 {
                    required.push(json!(name));
                }
            }
            json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
        }
    }
}

#[test]
fn every_output_validates_against_its_schema_whatever_the_logits() {
    let (mut x, mut answered) = (7u64, 0);
    for case in 0..200 {
        let schema = json!({"type": "object", "properties": {"v": random_schema(&mut x, 1), "w": random_schema(&mut x, 1)}, "required": ["v"]});
        for (seed, max_tokens) in [(case, 32), (case + 1000, 64), (case + 2000, 200)] {
            let Some(text) = generate(&schema, seed, max_tokens) else {
                assert!(max_tokens < 200, "{schema}: refused 200 tokens");
                continue;
            };
            answered += 1;
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{schema}\n{max_tokens} tokens: {e}: {text}"));
            assert!(valid(&schema, &value, &schema), "{schema}\ndoes not hold {text}");
        }
    }
    assert!(answered > 500, "only {answered} of 600 cases fit their budget");
}

#[test]
fn the_recognizer_accepts_what_validates_and_refuses_the_rest() {
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 5}, "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}}, "required": ["name"]});
    let compiled = Schema::compile(&schema.to_string()).unwrap();
    let done = |s: &str| State::new(&compiled).feed_all(&compiled, s.as_bytes()).is_some_and(|st| st.is_done());
    for ok in [r#"{"name":"bo"}"#, r#"{"name":"","age":-12,"tags":["a","b"]}"#, r#"{"name":"x\né","tags":[]}"#] {
        assert!(done(ok), "{ok} refused");
    }
    for bad in [
        r#"{}"#,
        r#"{"name":"x","name":"y"}"#,
        r#"{"name":"toolong"}"#,
        r#"{"name":"x","age":1.5}"#,
        r#"{"name":"x","tags":["c"]}"#,
        r#"{"name":"x","tags":["a","a","a"]}"#,
        r#"{"name":"x","other":1}"#,
        r#"{"name": "x"}"#,
    ] {
        assert!(!done(bad), "{bad} accepted");
    }
}

#[test]
fn unsupported_keywords_are_refused_by_name_and_place() {
    for (schema, want) in [
        (
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}),
            "`pattern` at #/properties/a",
        ),
        (
            json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}),
            "`minimum` at #/properties/n",
        ),
        (json!({"type": "string"}), "must be an object or an array"),
        (
            json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "number"}]}}}),
            "start differently",
        ),
        (
            json!({"$defs": {"n": {"type": "object", "properties": {"x": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}),
            "recursive",
        ),
    ] {
        let err = Schema::compile(&schema.to_string()).unwrap_err();
        assert!(err.contains(want), "{schema}: {err}");
    }
}

#[test]
fn pydantic_style_schemas_with_definitions_compile_and_hold() {
    let schema = json!({
        "$defs": {"Pet": {"properties": {"kind": {"enum": ["cat", "dog"], "title": "Kind", "type": "string"}},
                          "required": ["kind"], "title": "Pet", "type": "object", "additionalProperties": false}},
        "properties": {"name": {"title": "Name", "type": "string"}, "pets": {"items": {"$ref": "#/$defs/Pet"}, "title": "Pets", "type": "array"},
                       "nick": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null}},
        "required": ["name", "pets", "nick"], "title": "Owner", "type": "object", "additionalProperties": false
    });
    for seed in 0..20 {
        let text = generate(&schema, seed, 48).expect("48 tokens hold the shortest answer");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(valid(&schema, &value, &schema), "{text}");
    }
}

#[test]
fn closing_completes_any_prefix_into_a_valid_document() {
    let schema = json!({"type": "object", "properties": {
        "v": {"type": "object", "properties": {"a": {"type": "boolean"}, "age": {"type": "integer"},
              "tags": {"type": "array", "items": {"type": "string", "minLength": 2}, "minItems": 2, "maxItems": 3}},
              "required": ["age", "tags", "a"]},
        "w": {"enum": ["red", 12, null]}, "x": {"type": "number"}}, "required": ["v", "w"]});
    let compiled = Schema::compile(&schema.to_string()).unwrap();
    let full = r#"{"v":{"a":true,"age":-10,"tags":["ab","c\u00e9d"]},"x":-1.5e3,"w":12}"#;
    for end in 0..=full.len() {
        let prefix = &full.as_bytes()[..end];
        let state = State::new(&compiled).feed_all(&compiled, prefix).unwrap_or_else(|| panic!("prefix {end} refused"));
        let closing = state.closing(&compiled);
        let closed = [prefix, &closing].concat();
        let text = String::from_utf8(closed.clone()).unwrap();
        let done = State::new(&compiled).feed_all(&compiled, &closed).is_some_and(|s| s.is_done());
        assert!(done, "closing {:?} of {:?} does not complete it", String::from_utf8_lossy(&closing), &full[..end]);
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(valid(&schema, &value, &schema), "{text}");
    }
}

#[test]
fn strings_hold_whole_utf8_characters_only() {
    let compiled =
        Schema::compile(r#"{"type": "object", "properties": {"s": {"type": "string", "maxLength": 2}}}"#).unwrap();
    let done = |s: &[u8]| State::new(&compiled).feed_all(&compiled, s).is_some_and(|st| st.is_done());
    assert!(done("{\"s\":\"éa\"}".as_bytes()));
    for bad in [&b"{\"s\":\"\x80\"}"[..], b"{\"s\":\"\xc3\"}", b"{\"s\":\"\xe0\x80\x80\"}", b"{\"s\":\"\xed\xa0\x80\"}"]
    {
        assert!(!done(bad), "{:?} accepted", String::from_utf8_lossy(bad));
    }
    // Closing finishes a character under way.
    let state = State::new(&compiled).feed_all(&compiled, b"{\"s\":\"\xe2\x82").unwrap();
    let closed = [&b"{\"s\":\"\xe2\x82"[..], &state.closing(&compiled)].concat();
    assert!(std::str::from_utf8(&closed).is_ok() && done(&closed), "{closed:?}");
}

mod tools;
