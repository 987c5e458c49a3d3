//! Tool calls: a prefix and a suffix around the value, tagged unions of
//! functions, functions without parameters, Mistral's array of calls.

use serde_json::{Value, json};

use super::*;

/// One of three functions, told apart by `name` (as the server builds it).
fn functions(key: &str) -> Value {
    let call = |name: &str, arguments: Value| {
        json!({"type": "object", "properties": {"name": {"const": name}, "arguments": arguments},
               "required": ["name", "arguments"], "additionalProperties": false})
    };
    json!({key: [
        call("get_weather", json!({"type": "object", "properties": {"city": {"type": "string"},
             "unit": {"enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": false})),
        call("get_time", json!({"type": "object", "properties": {}, "additionalProperties": false})),
        call("get_timezone", json!({"type": "object", "properties": {"offset": {"type": "integer"},
             "names": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}},
             "required": ["offset"]})),
    ]})
}

const SYNTAXES: [(&str, &str); 5] =
    [("<tool_call>\n", "\n</tool_call>"), ("[TOOL_CALLS]", ""), ("", "\n"), ("<|python_tag|>", ""), ("é: ", " é")];

/// The smallest budget the plugin takes for `schema` and `syntax`, after
/// checking that one less is refused as too small.
fn min_budget(schema: &Value, (prefix, suffix): (&str, &str)) -> usize {
    with_vocabulary(vocab(), || {
        let new = |max_tokens: usize| {
            let config = Config::new([
                ("schema", schema.to_string()),
                ("max_tokens", max_tokens.to_string()),
                ("prefix", prefix.to_string()),
                ("suffix", suffix.to_string()),
            ]);
            JsonSchema::new(SamplingParams::default(), &[], &config)
        };
        let min = (1..200).find(|&n| new(n).is_ok()).expect("some budget under 200 is enough");
        let err = new(min - 1).unwrap_err();
        assert!(err.contains("too small"), "{err}");
        assert_eq!(err.contains("prefix"), !prefix.is_empty(), "{err}");
        assert_eq!(err.contains("suffix"), !suffix.is_empty(), "{err}");
        min
    })
}

/// The value between `syntax`'s prefix and suffix, checked to be all there is.
fn unwrap_value(text: &str, (prefix, suffix): (&str, &str), schema: &Value) -> Value {
    let inner = (text.strip_prefix(prefix).and_then(|t| t.strip_suffix(suffix)))
        .unwrap_or_else(|| panic!("{text:?} is not {prefix:?} + value + {suffix:?}"));
    let value: Value = serde_json::from_str(inner).unwrap_or_else(|e| panic!("{schema}\n{e}: {text:?}"));
    assert!(valid(schema, &value, schema), "{schema}\ndoes not hold {text:?}");
    value
}

#[test]
fn every_output_is_the_prefix_a_valid_value_and_the_suffix_even_at_the_smallest_budget() {
    let mut x = 11u64;
    for case in 0..150u64 {
        let syntax = SYNTAXES[case as usize % SYNTAXES.len()];
        let schema = match case % 4 {
            0 => functions("anyOf"),
            1 => json!({"type": "array", "items": functions("oneOf"), "minItems": 1, "maxItems": 1}),
            _ => json!({"type": "object", "properties": {"v": random_schema(&mut x, 1)}, "required": ["v"]}),
        };
        let min = min_budget(&schema, syntax);
        for (i, max_tokens) in [min, min, min + 1, min + 2, min + 5, min + 12, 64, 200].into_iter().enumerate() {
            let seed = case * 100 + i as u64;
            let text = generate_wrapped(&schema, syntax, seed, max_tokens).expect("at least the smallest budget");
            unwrap_value(&text, syntax, &schema);
        }
    }
}

#[test]
fn tokens_may_run_across_the_prefix_and_the_suffix_but_special_ones_stay_within() {
    let v = vocab();
    let id = |t: &str| v.tokens().position(|b| b == t.as_bytes()).unwrap() as u32;
    let schema = json!({"type": "object", "properties": {}});
    with_vocabulary(v.clone(), || {
        let start = |prefix: &str, suffix: &str| {
            let config =
                Config::new([("schema", schema.to_string()), ("prefix", prefix.into()), ("suffix", suffix.into())]);
            JsonSchema::new(SamplingParams::default(), &[], &config).unwrap()
        };
        let mut hermes = start("<tool_call>\n", "\n</tool_call>");
        let allowed = hermes.allowed(None);
        assert!(allowed.contains(id("<tool_call>")) && allowed.contains(id("<")));
        assert!(!allowed.contains(id("</tool_call>")) && !allowed.contains(id("{\"")));
        hermes.step(Some(id("<tool_call>"))).unwrap();
        // `\n{"` runs from the prefix into the value: no key fits `{}` here.
        assert!(!hermes.allowed(None).contains(id("\n{\"")) && hermes.allowed(None).contains(id("\n")));
        hermes.step(Some(id("\n"))).unwrap();
        hermes.step(Some(id("{"))).unwrap();
        // `}\n` runs from the value into the suffix.
        assert!(hermes.allowed(None).contains(id("}\n")));
        assert!(hermes.step(Some(id("}\n"))).unwrap().allowed.is_some_and(|a| a.contains(id("</tool_call>"))));
        assert!(hermes.step(Some(id("</tool_call>"))).unwrap().stop);

        let python = start("<|python_tag|>", "");
        assert!(python.allowed(None).contains(id("<|python_tag|>")));
        assert!(!start("", "").allowed(None).contains(id("<|python_tag|>")));
    });
    let keyed = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
    with_vocabulary(v.clone(), || {
        let config = Config::new([("schema", keyed.to_string()), ("prefix", "<tool_call>\n".into())]);
        let mut hermes = JsonSchema::new(SamplingParams::default(), &[], &config).unwrap();
        hermes.step(Some(id("<tool_call>"))).unwrap();
        assert!(hermes.allowed(None).contains(id("\n{\"")));
    });
}

#[test]
fn a_tagged_union_holds_the_arguments_of_the_function_its_name_picks() {
    let mut names = std::collections::HashSet::new();
    for key in ["anyOf", "oneOf"] {
        let schema = functions(key);
        let branches = schema[key].as_array().unwrap();
        for seed in 0..150 {
            let max_tokens = [12, 20, 40, 100][seed as usize % 4];
            let text = generate(&schema, seed, max_tokens).expect("the shortest call fits");
            let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let name = value["name"].as_str().unwrap_or_else(|| panic!("no name: {text}"));
            assert!(text.starts_with(&format!("{{\"name\":\"{name}\"")), "the name comes first: {text}");
            names.insert(name.to_string());
            for branch in branches {
                let picked = branch["properties"]["name"]["const"] == name;
                assert_eq!(valid(branch, &value, branch), picked, "{text} against {branch}");
            }
        }
    }
    assert_eq!(names.len(), 3, "every function is called for some logits: {names:?}");
}

#[test]
fn the_recognizer_takes_the_name_first_and_then_only_that_functions_arguments() {
    let compiled = Schema::compile(&functions("anyOf").to_string()).unwrap();
    let done = |s: &str| State::new(&compiled).feed_all(&compiled, s.as_bytes()).is_some_and(|st| st.is_done());
    for ok in [
        r#"{"name":"get_time","arguments":{}}"#,
        r#"{"name":"get_weather","arguments":{"unit":"f","city":"Oslo"}}"#,
        r#"{"name":"get_timezone","arguments":{"offset":-2,"names":["CET"]}}"#,
    ] {
        assert!(done(ok), "{ok} refused");
    }
    for bad in [
        r#"{"arguments":{},"name":"get_time"}"#,
        r#"{"name":"get_time","arguments":{"city":"Oslo"}}"#,
        r#"{"name":"get_weather","arguments":{}}"#,
        r#"{"name":"get_weathe","arguments":{}}"#,
        r#"{"name":"get_time"}"#,
        r#"{"name":"get_time","arguments":{},"name":"get_time"}"#,
    ] {
        assert!(!done(bad), "{bad} accepted");
    }
    // Closing completes a wrapped call from any point: in the prefix, the
    // name half written, in the arguments, in the suffix.
    let wrapped = compiled.clone().wrapped("<tool_call>\n", "\n</tool_call>");
    let full = "<tool_call>\n{\"name\":\"get_timezone\",\"arguments\":{\"names\":[\"a\"],\"offset\":3}}\n</tool_call>";
    for end in 0..=full.len() {
        let state = State::new(&wrapped).feed_all(&wrapped, &full.as_bytes()[..end]).unwrap();
        let closed = [&full.as_bytes()[..end], &state.closing(&wrapped)].concat();
        let text = String::from_utf8(closed).unwrap();
        assert!(State::new(&wrapped).feed_all(&wrapped, text.as_bytes()).is_some_and(|s| s.is_done()), "{text:?}");
        let schema = functions("anyOf");
        unwrap_value(&text, ("<tool_call>\n", "\n</tool_call>"), &schema);
    }
}

#[test]
fn tags_may_be_numbers_that_start_alike_and_unions_may_hold_null() {
    let kind = |k: u32, prop: &str| json!({"type": "object", "properties": {"k": {"enum": [k]}, prop: {"type": "boolean"}}, "required": ["k", prop]});
    let schema = json!({"type": "object", "properties": {
        "v": {"anyOf": [kind(1, "a"), kind(12, "b"), {"type": "null"}]}}, "required": ["v"]});
    let compiled = Schema::compile(&schema.to_string()).unwrap();
    let done = |s: &str| State::new(&compiled).feed_all(&compiled, s.as_bytes()).is_some_and(|st| st.is_done());
    assert!(done(r#"{"v":{"k":1,"a":true}}"#) && done(r#"{"v":{"k":12,"b":false}}"#) && done(r#"{"v":null}"#));
    assert!(!done(r#"{"v":{"k":1,"b":true}}"#) && !done(r#"{"v":{"k":12,"a":true}}"#));
    for seed in 0..60 {
        let text = generate(&schema, seed, [8, 16, 40][seed as usize % 3]).expect("fits");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(valid(&schema, &value, &schema), "{text}");
    }
}

#[test]
fn a_function_without_parameters_is_called_with_an_empty_object() {
    for arguments in [json!({"type": "object", "properties": {}}), json!({"type": "object"})] {
        for seed in 0..10 {
            let text = generate_wrapped(&arguments, ("<tool_call>\n", "\n</tool_call>"), seed, 64).unwrap();
            assert_eq!(text, "<tool_call>\n{}\n</tool_call>");
        }
        let call = json!({"type": "object", "properties": {"name": {"const": "ping"}, "arguments": arguments},
                          "required": ["name", "arguments"]});
        for seed in 0..10 {
            let text = generate(&call, seed, 64).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value, json!({"name": "ping", "arguments": {}}), "{text}");
        }
    }
}

#[test]
fn mistral_calls_are_one_tagged_object_in_an_array() {
    let schema = json!({"type": "array", "items": functions("anyOf"), "minItems": 1, "maxItems": 1});
    for seed in 0..40 {
        let text = generate_wrapped(&schema, ("[TOOL_CALLS]", ""), seed, [14, 30, 80][seed as usize % 3]).unwrap();
        let value = unwrap_value(&text, ("[TOOL_CALLS]", ""), &schema);
        assert_eq!(value.as_array().map(Vec::len), Some(1), "{text}");
    }
}

#[test]
fn a_budget_too_small_for_the_prefix_the_value_and_the_suffix_is_refused() {
    let schema = functions("anyOf");
    let err = with_vocabulary(vocab(), || {
        let config = Config::new([
            ("schema", schema.to_string()),
            ("max_tokens", "9".into()),
            ("prefix", "<tool_call>\n".into()),
            ("suffix", "\n</tool_call>".into()),
        ]);
        JsonSchema::new(SamplingParams::default(), &[], &config).unwrap_err()
    });
    assert!(
        err.contains("max_tokens 9 is too small for the prefix, the schema's shortest value and the suffix"),
        "{err}"
    );
    // The prefix and the suffix take two tokens each, fewer where `\n{"` and `}\n` join them to the value.
    let min = min_budget(&schema, ("<tool_call>\n", "\n</tool_call>"));
    let bare = min_budget(&schema, ("", ""));
    assert!(bare < min && min <= bare + 4, "{min} vs {bare}");
    // Text the vocabulary has no tokens for could never be closed.
    let err = with_vocabulary(vocab(), || {
        let config = Config::new([("schema", schema.to_string()), ("prefix", "→".into())]);
        JsonSchema::new(SamplingParams::default(), &[], &config).unwrap_err()
    });
    assert!(err.contains("cannot spell the prefix"), "{err}");
}

#[test]
fn unions_of_objects_without_a_tag_are_refused() {
    let obj = |props: Value| json!({"type": "object", "properties": props, "required": ["name"]});
    for (schema, want) in [
        (
            json!({"anyOf": [obj(json!({"name": {"type": "string"}})), obj(json!({"name": {"type": "integer"}}))]}),
            "told apart",
        ),
        (json!({"oneOf": [obj(json!({"name": {"const": "a"}})), obj(json!({"name": {"const": "a"}}))]}), "told apart"),
        (
            json!({"anyOf": [obj(json!({"name": {"const": "a"}})), obj(json!({"name": {"const": "b"}, "x": {"not": {}}}))]}),
            "`not` at #/anyOf/1/properties/x",
        ),
    ] {
        let err = Schema::compile(&schema.to_string()).unwrap_err();
        assert!(err.contains(want), "{schema}: {err}");
    }
}
