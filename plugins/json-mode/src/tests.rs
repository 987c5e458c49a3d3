use super::*;
use kiln_sdk::Vocabulary;
use kiln_sdk::testing::{random_logits as logits, run_sampler, with_vocabulary};

/// A vocabulary with JSON pieces, words, and tokens that would break JSON.
fn vocab() -> Vocabulary {
    let mut tokens: Vec<Vec<u8>> = (32u8..127).map(|b| vec![b]).collect();
    for t in [
        "{\"",
        "\":",
        "\": \"",
        "\", \"",
        "\"}",
        "name",
        " the",
        "hello",
        "true",
        "null",
        "12",
        ".5",
        "\n",
        "\n  ",
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
    ] {
        tokens.push(t.as_bytes().to_vec());
    }
    let eos = tokens.iter().position(|t| t == b"<|im_end|>").unwrap() as u32;
    Vocabulary::new(tokens, vec![eos])
}

fn generate(seed: u64, max_tokens: usize) -> String {
    let v = vocab();
    let size = v.size() as usize;
    with_vocabulary(v.clone(), || {
        let config = Config::new([("max_tokens", max_tokens.to_string())]);
        let mut sampler = JsonMode::new(SamplingParams::default(), &[], &config).unwrap();
        let ids = run_sampler(&mut sampler, logits(seed, size), max_tokens);
        assert!(ids.len() <= max_tokens);
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| v.token(id).to_vec()).collect();
        String::from_utf8(bytes).unwrap()
    })
}

#[test]
fn every_output_is_one_json_object_whatever_the_logits() {
    for seed in 0..200 {
        for max_tokens in [8, 24, 64] {
            let text = generate(seed, max_tokens);
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}, {max_tokens} tokens: {e}: {text}"));
            assert!(value.is_object(), "{text}");
        }
    }
}

#[test]
fn the_grammar_accepts_json_and_refuses_the_rest() {
    let ok = |s: &str| State::default().feed_all(s.as_bytes()).is_some_and(|st| st.mode == Mode::Done);
    assert!(ok(r#"{"a": [1, -2.5e3, true, null, {"b": "x\n\u00e9"}], "c": {}}"#));
    assert!(ok("{}"));
    for bad in ["[1]", "{\"a\" 1}", "{\"a\": 01}", "{\"a\": tru}", "{,}", "{\"a\":1,}", "{\"a\": \"\n\"}", "{} x"] {
        assert!(!ok(bad), "{bad:?} accepted");
    }
}

#[test]
fn closing_completes_any_prefix() {
    let full = r#"{"key": [1.5, "str\u00e", {"n": -1e}, tru"#;
    for end in 1..=full.len() {
        let Some(state) = State::default().feed_all(&full.as_bytes()[..end]) else { continue };
        let closed = format!("{}{}", &full[..end], state.closing());
        assert_eq!(state.closing_len(), state.closing().len(), "{closed}");
        serde_json::from_str::<serde_json::Value>(&closed).unwrap_or_else(|e| panic!("{closed}: {e}"));
    }
}

#[test]
fn sets_kept_from_earlier_steps_equal_the_sets_computed_afresh() {
    let v = vocab();
    let size = v.size() as usize;
    with_vocabulary(v.clone(), || {
        let (mut steps, mut kept) = (0, 0);
        for seed in 0..40 {
            let config = Config::new([("max_tokens", "400".to_string())]);
            let mut sampler = JsonMode::new(SamplingParams::default(), &[], &config).unwrap();
            let ids = run_sampler(&mut sampler, logits(seed, size), 400);
            // Replay the answer, asking at every state for every budget left.
            let mut replay =
                JsonMode::new(SamplingParams::default(), &[], &Config::new(Vec::<(String, String)>::new())).unwrap();
            for &id in &ids {
                for room in [None, Some(0), Some(3), Some(9), Some(17), Some(30), Some(60), Some(400)] {
                    assert_eq!(replay.allowed_cached(room), replay.allowed(room), "seed {seed}, room {room:?}");
                }
                steps += 1;
                replay.state = replay.state.feed_all(v.token(id)).unwrap();
            }
            kept += replay.sets.len();
        }
        // Answers revisit states: far fewer sets kept than steps taken.
        assert!(kept * 2 < steps, "{kept} sets kept over {steps} steps");
    });
}
