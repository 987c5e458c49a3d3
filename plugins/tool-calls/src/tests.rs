use super::*;

const TOOLS: [&str; 2] = ["get_weather", "search"];

fn parser(syntax: Option<Syntax>) -> Parser {
    Parser::new(syntax, TOOLS.iter().map(|t| t.to_string()).collect())
}

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall { name: name.into(), arguments: arguments.into() }
}

fn parsed(text: &str, calls: Vec<ToolCall>) -> Parsed {
    Parsed { text: text.into(), calls }
}

fn absorb(all: &mut Parsed, part: Parsed) {
    all.text.push_str(&part.text);
    all.calls.extend(part.calls);
}

/// Everything that came out for `chunks`, finish included.
fn feed(p: &mut Parser, chunks: &[&str]) -> Parsed {
    let mut all = Parsed::default();
    for chunk in chunks {
        absorb(&mut all, p.push(chunk));
    }
    absorb(&mut all, p.finish());
    all
}

/// `input` gives `expected` whole, split in two at every char boundary, and
/// one char at a time, whatever the hint.
fn check(input: &str, expected: &Parsed) {
    for syntax in [None, Some(Syntax::Hermes), Some(Syntax::LlamaJson), Some(Syntax::Mistral)] {
        assert_eq!(&feed(&mut parser(syntax), &[input]), expected, "whole {input:?}");
        for (i, _) in input.char_indices().skip(1) {
            let got = feed(&mut parser(syntax), &[&input[..i], &input[i..]]);
            assert_eq!(&got, expected, "split at {i} of {input:?}");
        }
        let chars: Vec<String> = input.chars().map(String::from).collect();
        let chunks: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(&feed(&mut parser(syntax), &chunks), expected, "char by char {input:?}");
    }
}

/// `input` is not a call: it comes out unchanged.
fn check_text(input: &str) {
    check(input, &parsed(input, vec![]));
}

#[test]
fn hermes_call_whole_and_split_everywhere() {
    let input =
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
    check(input, &parsed("", vec![call("get_weather", r#"{"city":"Paris","unit":"c"}"#)]));
}

#[test]
fn hermes_text_before_and_after_streams_as_text() {
    let input =
        "Let me look. é\n<tool_call>{\"name\": \"search\", \"arguments\": {\"q\": \"kiln\"}}</tool_call>\n\nDone 🙂";
    check(input, &parsed("Let me look. éDone 🙂", vec![call("search", r#"{"q":"kiln"}"#)]));
    // The text before the block goes out before the block is complete.
    let mut p = parser(None);
    assert_eq!(p.push("Let me look.\n<tool_call>{\"na").text, "Let me look.");
}

#[test]
fn hermes_parallel_calls_leave_no_stray_whitespace() {
    let input = "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"a\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>\n";
    check(input, &parsed("", vec![call("search", r#"{"q":"a"}"#), call("get_weather", "{}")]));
}

#[test]
fn hermes_closing_tag_inside_a_string_does_not_end_the_call() {
    let input = r#"<tool_call>{"name": "search", "arguments": {"q": "say \"</tool_call>\" {"}}</tool_call>"#;
    check(input, &parsed("", vec![call("search", r#"{"q":"say \"</tool_call>\" {"}"#)]));
}

#[test]
fn invalid_json_comes_out_as_text() {
    check_text("a <tool_call>{\"name\": \"search\", \"arguments\": {]}</tool_call> b");
    check_text("<tool_call>not json</tool_call>");
    check_text("<tool_call>{\"name\": \"search\"} and more</tool_call>");
    check_text("[TOOL_CALLS] [{\"name\": \"search\",}]");
    // Only the bad block is text; the good one beside it is still a call.
    let input = "<tool_call>{bad}</tool_call>\n<tool_call>{\"name\": \"search\"}</tool_call>";
    check(input, &parsed("<tool_call>{bad}</tool_call>", vec![call("search", "{}")]));
}

#[test]
fn not_a_call_shape_comes_out_as_text() {
    check_text("<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>");
    check_text("<tool_call>[{\"name\": \"search\"}]</tool_call>");
    check_text("<tool_call>{\"name\": \"search\", \"arguments\": [1]}</tool_call>");
    check_text("<tool_call>{\"name\": \"search\", \"arguments\": null}</tool_call>");
    check_text("[TOOL_CALLS] []");
}

#[test]
fn unknown_tool_name_comes_out_as_text() {
    check_text("<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>");
    check_text("{\"name\": \"rm_rf\", \"parameters\": {}}");
    check_text("[TOOL_CALLS] [{\"name\": \"search\", \"arguments\": {}}, {\"name\": \"rm_rf\", \"arguments\": {}}]");
}

#[test]
fn any_name_is_a_call_when_the_request_lists_none() {
    let mut p = Parser::new(None, vec![]);
    let out = feed(&mut p, &["<tool_call>{\"name\": \"rm_rf\"}</tool_call>"]);
    assert_eq!(out, parsed("", vec![call("rm_rf", "{}")]));
}

#[test]
fn unclosed_hermes_at_finish_is_a_call_when_complete() {
    check(
        "ok <tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": 1}}\n",
        &parsed("ok", vec![call("search", r#"{"q":1}"#)]),
    );
    // Cut inside the closing tag.
    check("<tool_call>{\"name\": \"search\"}\n</tool_c", &parsed("", vec![call("search", "{}")]));
}

#[test]
fn unclosed_and_incomplete_at_finish_is_text() {
    check_text("ok <tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": ");
    check_text("ok <tool_call>\n{\"name\": \"search\"} trailing");
    check_text("[TOOL_CALLS] [{\"name\": \"search\", \"arguments\": {}}");
    check_text("  {\"name\": \"search\", \"parameters\": {\"q\": \"unfinished");
}

#[test]
fn arguments_as_a_json_string_are_accepted() {
    let input = r#"<tool_call>{"name": "search", "arguments": "{\"q\": \"x\", \"n\": 2}"}</tool_call>"#;
    check(input, &parsed("", vec![call("search", r#"{"n":2,"q":"x"}"#)]));
    check_text(r#"<tool_call>{"name": "search", "arguments": "[1, 2]"}</tool_call>"#);
    check_text(r#"<tool_call>{"name": "search", "arguments": "q=x"}</tool_call>"#);
}

#[test]
fn missing_arguments_are_an_empty_object() {
    check("{\"name\": \"get_weather\"}", &parsed("", vec![call("get_weather", "{}")]));
}

#[test]
fn llama_json_call_whole_and_split_everywhere() {
    let input = "\n {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\", \"days\": [1, 2]}}";
    check(input, &parsed("", vec![call("get_weather", r#"{"city":"Oslo","days":[1,2]}"#)]));
    let input = "<|python_tag|>{\"name\": \"search\", \"arguments\": {\"q\": \"}{\"}}";
    check(input, &parsed("", vec![call("search", r#"{"q":"}{"}"#)]));
}

#[test]
fn llama_json_is_held_back_until_complete() {
    let mut p = parser(Some(Syntax::LlamaJson));
    assert!(p.push("{\"name\": \"search\", ").is_empty());
    assert!(p.push("\"parameters\": {\"q\": \"}\"").is_empty());
    assert_eq!(p.push("}}").calls, vec![call("search", r#"{"q":"}"}"#)]);
    assert!(p.finish().is_empty());
}

#[test]
fn llama_parallel_calls_separated_by_semicolons_or_newlines() {
    let input = "{\"name\": \"search\", \"parameters\": {\"q\": \"a\"}}; {\"name\": \"search\", \"parameters\": {\"q\": \"b\"}}\n{\"name\": \"get_weather\", \"parameters\": {}}";
    let calls = vec![call("search", r#"{"q":"a"}"#), call("search", r#"{"q":"b"}"#), call("get_weather", "{}")];
    check(input, &parsed("", calls));
}

#[test]
fn llama_plain_json_answer_is_text() {
    // Let out as soon as it is complete and turns out not to be a call.
    let mut p = parser(None);
    assert!(p.push("{\"answer\": ").is_empty());
    assert_eq!(p.push("42} because").text, "{\"answer\": 42} because");
    check_text("{\"answer\": 42}");
    // Never complete: out at finish.
    check_text("{\"answer\": [42");
}

#[test]
fn python_tag_mid_text_starts_a_call() {
    let input = "Calling it.\n<|python_tag|>{\"name\": \"search\", \"parameters\": {}}";
    check(input, &parsed("Calling it.", vec![call("search", "{}")]));
    check_text("<|python_tag|>print(1)");
}

#[test]
fn mistral_calls_whole_and_split_everywhere() {
    let input = "Sure.\n[TOOL_CALLS] [{\"name\": \"search\", \"arguments\": {\"q\": \"]\"}, \"id\": \"a1b2c3d4e\"}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]";
    check(input, &parsed("Sure.", vec![call("search", r#"{"q":"]"}"#), call("get_weather", r#"{"city":"Rome"}"#)]));
}

#[test]
fn mistral_marker_without_json_is_text() {
    check_text("[TOOL_CALLS] sorry");
    check_text("a [TOOL_CALLS]");
}

#[test]
fn marker_prefix_is_held_then_released_as_text() {
    let mut p = parser(None);
    assert_eq!(p.push("a <tool").text, "a");
    assert_eq!(p.push("s> b").text, " <tools> b");
    let mut p = parser(None);
    assert_eq!(p.push("see [TOOL_").text, "see");
    assert_eq!(p.push("CALLER]").text, " [TOOL_CALLER]");
    let mut p = parser(None);
    assert_eq!(p.push("x<|py").text, "x");
    assert_eq!(p.finish().text, "<|py");
}

#[test]
fn plain_text_streams_through_immediately() {
    let mut p = parser(None);
    // Nothing is held but trailing whitespace and a possible marker prefix.
    for (chunk, out) in
        [("Hello", "Hello"), (" world", " world"), ("!\n", "!"), ("Bye <", "\nBye"), ("3 [x]", " <3 [x]")]
    {
        assert_eq!(p.push(chunk), parsed(out, vec![]), "{chunk:?}");
    }
    assert!(p.finish().is_empty());
    check_text("  Plain text, {braces} \"quotes\" [brackets] <angles> é🙂\n");
}

#[test]
fn the_hint_breaks_the_tie_between_arguments_and_parameters() {
    let input = "{\"name\": \"search\", \"arguments\": {\"a\": 1}, \"parameters\": {\"p\": 1}}";
    let out = |syntax| feed(&mut parser(syntax), &[input]).calls;
    assert_eq!(out(Some(Syntax::LlamaJson)), vec![call("search", r#"{"p":1}"#)]);
    assert_eq!(out(Some(Syntax::Hermes)), vec![call("search", r#"{"a":1}"#)]);
    assert_eq!(out(None), vec![call("search", r#"{"a":1}"#)]);
}

#[test]
fn the_parser_starts_over_after_finish() {
    let mut p = parser(None);
    assert_eq!(feed(&mut p, &["<tool_call>{\"name\": \"search\"}</tool_call>"]).calls.len(), 1);
    assert_eq!(feed(&mut p, &["{\"name\": \"search\"}"]).calls.len(), 1);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// `input` cut into random chunks of 1 to 8 chars (sometimes 0, pushed as "").
    fn chunks<'a>(&mut self, input: &'a str) -> Vec<&'a str> {
        let mut chunks = vec![];
        let mut rest = input;
        while !rest.is_empty() {
            let n = self.below(9);
            let cut = rest.char_indices().nth(n).map_or(rest.len(), |(i, _)| i);
            chunks.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        chunks
    }
}

/// Text that cannot spell a marker: no `>`, `L`, `S` or `|>` to finish one.
#[rustfmt::skip] // one piece a line would say less
const TEXT: &[&str] = &[
    "x", "yz", " ", "\n", "  ", "{", "}", "\"", "\\", "<", "[", "]", "é", "🙂", ";", ":", ",", "<tool_c", "[TOOL_CAL",
    "<|python_ta", "</tool_call", "<tool_call",
];

/// Blocks and what they are: calls, or (`None`) text.
fn block(rng: &mut Rng, last: bool) -> (String, Option<Vec<ToolCall>>) {
    let args = [
        ("{}", "{}"),
        ("{\"city\": \"Paris\"}", r#"{"city":"Paris"}"#),
        (r#"{"q": "a \"quoted\" </tool_call> [TOOL_CALLS] {"}"#, r#"{"q":"a \"quoted\" </tool_call> [TOOL_CALLS] {"}"#),
        ("{\"n\": [1, {\"x\": null}]}", r#"{"n":[1,{"x":null}]}"#),
        (r#""{\"k\": true}""#, r#"{"k":true}"#),
    ];
    let (a, compact) = args[rng.below(args.len())];
    let name = rng.pick(&TOOLS);
    let json = format!("{{\"name\": \"{name}\", \"arguments\": {a}}}");
    let one = Some(vec![call(name, compact)]);
    match rng.below(if last { 9 } else { 6 }) {
        0 => (format!("<tool_call>\n{json}\n</tool_call>"), one),
        1 => (format!("<tool_call>{json}</tool_call>"), one),
        2 => (format!("[TOOL_CALLS] [{json}, {{\"id\": \"x1\", \"name\": \"search\"}}]"), {
            Some(vec![call(name, compact), call("search", "{}")])
        }),
        3 => (format!("<tool_call>{{\"name\": \"nope\", \"arguments\": {a}}}</tool_call>"), None),
        4 => ("<tool_call>{\"name\": \"search\", \"arguments\": 7}</tool_call>".into(), None),
        5 => (format!("[TOOL_CALLS] [{json}, {{\"name\": 1}}]"), None),
        // Cut short: only possible at the end of the output.
        6 => (format!("<tool_call>\n{json}\n</tool"), one),
        7 => (format!("<tool_call>\n{}", &json[..json.len() - 1]), None),
        _ => (format!("[TOOL_CALLS] [{json}"), None),
    }
}

#[test]
fn random_documents_in_random_chunks_give_the_same_text_and_calls() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..400 {
        // Segments: text, or a block and whether it is a call.
        let mut segments: Vec<(String, Option<Option<Vec<ToolCall>>>)> = vec![];
        let n = rng.below(6);
        // Text after a cut-short block would be read as the rest of it.
        let trailing = rng.below(2) == 0;
        for i in 0..n {
            if rng.below(2) == 0 {
                let text: String = (0..rng.below(12)).map(|_| rng.pick(TEXT)).collect();
                segments.push((text, None));
            }
            let (raw, calls) = block(&mut rng, i + 1 == n && !trailing);
            segments.push((raw, Some(calls)));
        }
        if trailing {
            segments.push(((0..rng.below(12)).map(|_| rng.pick(TEXT)).collect(), None));
        }
        // Text at the very start that opens a brace would be read as Llama JSON.
        if let Some((text, None)) = segments.first_mut()
            && text.trim_start().starts_with('{')
        {
            text.insert(0, 'x');
        }
        let input: String = segments.iter().map(|(s, _)| s.as_str()).collect();
        let is_call = |i: usize| matches!(segments.get(i), Some((_, Some(Some(_)))));
        let mut expected = Parsed::default();
        for (i, (raw, kind)) in segments.iter().enumerate() {
            match kind {
                None => {
                    let mut text = raw.as_str();
                    if i > 0 && is_call(i - 1) {
                        text = text.trim_start();
                    }
                    if is_call(i + 1) {
                        text = text.trim_end();
                    }
                    expected.text.push_str(text);
                }
                Some(None) => expected.text.push_str(raw),
                Some(Some(calls)) => expected.calls.extend(calls.iter().cloned()),
            }
        }
        for _ in 0..8 {
            let chunks = rng.chunks(&input);
            assert_eq!(feed(&mut parser(None), &chunks), expected, "{chunks:?}");
        }
    }
}

/// Markers whole and in pieces, JSON fragments, unbalanced quotes and braces.
#[rustfmt::skip] // one piece a line would say less
const GARBAGE: &[&str] = &[
    "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<tool", "_call>", "[TOOL", "_CALLS]",
    "<|python", "_tag|>", "</", "{", "}", "[", "]", "\"", "\\", "\\\"", ";", " ", "\n", "x", "é", "🙂", "\"name\"",
    ":", "\"search\"", "\"arguments\"", "\"parameters\"", ",", "null", "\"{}\"", "{\"name\": \"search\"}",
    "{\"name\": \"search\", ", "\"arguments\": {}}",
];

#[test]
fn garbage_never_panics_loses_or_duplicates_text() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let input: String = (0..rng.below(40)).map(|_| rng.pick(GARBAGE)).collect();
        // No name matches this tool: nothing is a call, so all of it comes out as it went in.
        let strict = || Parser::new(None, vec!["get_weather".into()]);
        let whole = feed(&mut strict(), &[&input]);
        assert_eq!(whole, parsed(&input, vec![]));
        // Any name goes: calls may form, but not depending on where chunks split.
        let any = || Parser::new(None, vec![]);
        let whole = feed(&mut any(), &[&input]);
        for _ in 0..4 {
            let chunks = rng.chunks(&input);
            assert_eq!(feed(&mut strict(), &chunks), parsed(&input, vec![]), "{chunks:?}");
            assert_eq!(feed(&mut any(), &chunks), whole, "{chunks:?}");
        }
    }
}

#[test]
fn with_the_mistral_hint_a_bare_list_of_calls_is_calls() {
    // `[TOOL_CALLS]` is a control token: the decoded text has only the list.
    let input = r#"[{"name": "search", "arguments": {"q": "rust"}}]"#;
    let got = feed(&mut parser(Some(Syntax::Mistral)), &[&input[..9], &input[9..]]);
    assert_eq!(got, parsed("", vec![call("search", r#"{"q":"rust"}"#)]));
    // Without the hint a list is an answer like any other.
    assert_eq!(feed(&mut parser(Some(Syntax::Hermes)), &[input]), parsed(input, vec![]));
}
