//! The incremental parser: a small state machine over the text that has
//! arrived but is not yet decided (`Parser::buf`).

use serde_json::Value;

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";
/// What starts a call in the middle of text.
const MARKERS: [&str; 3] = [HERMES_OPEN, MISTRAL, PYTHON_TAG];

/// The tool-call syntax the prompt asked for. All three are recognised
/// whatever the hint; it only breaks ties (which of `arguments` and
/// `parameters` wins when a call carries both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `<tool_call>{...}</tool_call>` (Hermes, Qwen 2.5).
    Hermes,
    /// A bare JSON object, optionally after `<|python_tag|>` (Llama 3.1).
    LlamaJson,
    /// `[TOOL_CALLS][{...}, ...]` (Mistral).
    Mistral,
}

/// One call, as OpenAI's `tool_calls[].function` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// Compact JSON object text (`{}` when the model gave none).
    pub arguments: String,
}

/// What may go out to the client now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub text: String,
    pub calls: Vec<ToolCall>,
}

impl Parsed {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.calls.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hermes,
    Llama,
    Mistral,
}

/// Just enough of a JSON lexer to find where a value ends: brackets are
/// counted outside strings only, and `\"` does not end a string.
#[derive(Debug, Default)]
struct Json {
    depth: usize,
    in_str: bool,
    esc: bool,
}

impl Json {
    /// Feeds one byte; true when it closes the outermost bracket. Bytes, not
    /// chars: everything structural is ASCII, and UTF-8 never reuses ASCII
    /// bytes inside a multi-byte character.
    fn feed(&mut self, b: u8) -> bool {
        if self.in_str {
            if self.esc {
                self.esc = false;
            } else if b == b'\\' {
                self.esc = true;
            } else if b == b'"' {
                self.in_str = false;
            }
            return false;
        }
        match b {
            b'"' => self.in_str = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' if self.depth > 0 => {
                self.depth -= 1;
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }
}

/// A call under way. `buf[..body]` is the whitespace (or, between Llama
/// calls, separators) before it, dropped if it turns out to be a call, then
/// its marker; the JSON follows.
#[derive(Debug)]
struct Block {
    kind: Kind,
    body: usize,
    /// How far `buf` has been scanned, so each push scans only what is new.
    pos: usize,
    json: Json,
    /// Where the JSON value starts (Llama, Mistral), once seen.
    value: Option<usize>,
}

enum Scan {
    /// Undecided: wait for more text.
    More,
    /// The block's raw text is `buf[..n]`; decide whether it is a call.
    Done(usize),
    /// No JSON follows the marker: `buf[..n]` is text.
    NotCall(usize),
}

impl Block {
    fn new(kind: Kind, body: usize) -> Block {
        Block { kind, body, pos: body, json: Json::default(), value: None }
    }

    fn advance(&mut self, buf: &str) -> Scan {
        let b = buf.as_bytes();
        if self.kind == Kind::Hermes {
            // The block ends at the first closing tag outside a JSON string,
            // so an argument that mentions `</tool_call>` does not cut it.
            while self.pos < b.len() {
                if !self.json.in_str && b[self.pos] == b'<' {
                    let rest = &b[self.pos..];
                    if rest.starts_with(HERMES_CLOSE.as_bytes()) {
                        return Scan::Done(self.pos + HERMES_CLOSE.len());
                    }
                    if HERMES_CLOSE.as_bytes().starts_with(rest) {
                        // Part of the tag so far: look again once more arrives.
                        return Scan::More;
                    }
                }
                self.json.feed(b[self.pos]);
                self.pos += 1;
            }
            return Scan::More;
        }
        if self.value.is_none() {
            let rest = buf[self.pos..].trim_start();
            self.pos = buf.len() - rest.len();
            match rest.as_bytes().first() {
                None => return Scan::More,
                Some(b'{') => {}
                Some(b'[') if self.kind == Kind::Mistral => {}
                Some(_) => return Scan::NotCall(self.body),
            }
            self.value = Some(self.pos);
        }
        while self.pos < b.len() {
            let c = b[self.pos];
            self.pos += 1;
            if self.json.feed(c) {
                return Scan::Done(self.pos);
            }
        }
        Scan::More
    }
}

#[derive(Debug)]
enum Mode {
    /// Only whitespace so far: the output may still be Llama JSON.
    Start,
    /// Plain text; `buf` holds only trailing whitespace and a possible marker prefix.
    Text,
    /// Right after a call: the whitespace that follows belongs to it (and,
    /// after a Llama call, `;` separators before the next one).
    After {
        llama: bool,
    },
    Block(Block),
}

/// Splits a model's streamed output into text and tool calls. Feed each
/// decoded chunk to [`Parser::push`] in order, then call [`Parser::finish`].
#[derive(Debug)]
pub struct Parser {
    hint: Option<Syntax>,
    /// The request's function names; empty accepts any name.
    tools: Vec<String>,
    mode: Mode,
    /// Arrived but not yet let out.
    buf: String,
}

impl Parser {
    pub fn new(syntax: Option<Syntax>, tools: Vec<String>) -> Parser {
        Parser { hint: syntax, tools, mode: Mode::Start, buf: String::new() }
    }

    /// Takes the next chunk; returns what is decided so far.
    pub fn push(&mut self, chunk: &str) -> Parsed {
        self.buf.push_str(chunk);
        self.run(false)
    }

    /// End of output: lets out everything still held back. The parser then
    /// starts over, as for a new output.
    pub fn finish(&mut self) -> Parsed {
        let out = self.run(true);
        debug_assert!(self.buf.is_empty());
        self.buf.clear();
        self.mode = Mode::Start;
        out
    }

    fn run(&mut self, end: bool) -> Parsed {
        let mut out = Parsed::default();
        while self.step(end, &mut out) {}
        out
    }

    /// One move of the state machine; false when it must wait for more text
    /// (or, at the end, when everything is out).
    fn step(&mut self, end: bool, out: &mut Parsed) -> bool {
        // Taken out so the arms can move the block and borrow `self`; an arm
        // that sets no mode leaves `Text`.
        match std::mem::replace(&mut self.mode, Mode::Text) {
            Mode::Start => {
                let rest = self.buf.trim_start();
                let lead = self.buf.len() - rest.len();
                if rest.starts_with('{') {
                    self.mode = Mode::Block(Block::new(Kind::Llama, lead));
                } else if rest.starts_with('[') && self.hint == Some(Syntax::Mistral) {
                    // `[TOOL_CALLS]` is a control token in Mistral's vocabularies:
                    // decoded text skips it, and the calls' list comes bare.
                    self.mode = Mode::Block(Block::new(Kind::Mistral, lead));
                } else if rest.starts_with(PYTHON_TAG) {
                    self.mode = Mode::Block(Block::new(Kind::Llama, lead + PYTHON_TAG.len()));
                } else if !end && PYTHON_TAG.starts_with(rest) {
                    // Nothing but whitespace, or the tag's first characters, yet.
                    self.mode = Mode::Start;
                    return false;
                }
                true
            }
            Mode::Text => {
                let found = MARKERS.iter().filter_map(|m| self.buf.find(m).map(|at| (at, *m))).min();
                if let Some((at, marker)) = found {
                    let text = self.buf[..at].trim_end().len();
                    self.emit(text, out);
                    let kind = match marker {
                        HERMES_OPEN => Kind::Hermes,
                        MISTRAL => Kind::Mistral,
                        _ => Kind::Llama,
                    };
                    let lead = at - text;
                    self.mode = Mode::Block(Block::new(kind, lead + marker.len()));
                    return true;
                }
                let keep = if end { self.buf.len() } else { held_from(&self.buf) };
                self.emit(keep, out);
                false
            }
            Mode::After { llama } => {
                let rest = if llama {
                    self.buf.trim_start_matches(|c: char| c.is_whitespace() || c == ';')
                } else {
                    self.buf.trim_start()
                };
                let sep = self.buf.len() - rest.len();
                if llama && rest.starts_with('{') {
                    self.mode = Mode::Block(Block::new(Kind::Llama, sep));
                } else if llama && rest.starts_with(PYTHON_TAG) {
                    self.mode = Mode::Block(Block::new(Kind::Llama, sep + PYTHON_TAG.len()));
                } else if rest.is_empty() && end {
                    // Trailing whitespace (and separators) belong to the calls.
                    self.buf.clear();
                } else if rest.is_empty() || (llama && !end && PYTHON_TAG.starts_with(rest)) {
                    self.mode = Mode::After { llama };
                    return false;
                } else {
                    // Text follows: only the whitespace is the call's.
                    let ws = self.buf.len() - self.buf.trim_start().len();
                    self.buf.drain(..ws);
                }
                true
            }
            Mode::Block(mut block) => match block.advance(&self.buf) {
                Scan::More if !end => {
                    self.mode = Mode::Block(block);
                    false
                }
                Scan::More => {
                    // Cut short: only an unclosed `<tool_call>` holding a whole call
                    // still counts (models often stop before the closing tag).
                    // A partial closing tag at the very end (cut inside it) is
                    // not part of the JSON.
                    let calls = match block.kind {
                        Kind::Hermes => {
                            let body = &self.buf[block.body..];
                            self.hermes(&body[..held_marker(body, &[HERMES_CLOSE])])
                        }
                        Kind::Llama | Kind::Mistral => None,
                    };
                    let all = self.buf.len();
                    self.decide(calls, all, block.kind, out)
                }
                Scan::Done(stop) => {
                    let calls = match block.kind {
                        Kind::Hermes => self.hermes(&self.buf[block.body..stop - HERMES_CLOSE.len()]),
                        Kind::Llama | Kind::Mistral => {
                            let value = &self.buf[block.value.unwrap_or(block.body)..stop];
                            serde_json::from_str(value).ok().and_then(|v| self.calls(&v, block.kind))
                        }
                    };
                    self.decide(calls, stop, block.kind, out)
                }
                Scan::NotCall(stop) => {
                    self.emit(stop, out);
                    true
                }
            },
        }
    }

    /// Lets out `buf[..stop]`, a whole block: as its calls when it holds
    /// valid ones, else as the raw text it was.
    fn decide(&mut self, calls: Option<Vec<ToolCall>>, stop: usize, kind: Kind, out: &mut Parsed) -> bool {
        match calls {
            Some(calls) => {
                out.calls.extend(calls);
                self.buf.drain(..stop);
                self.mode = Mode::After { llama: kind == Kind::Llama };
            }
            None => self.emit(stop, out),
        }
        true
    }

    fn emit(&mut self, stop: usize, out: &mut Parsed) {
        out.text.extend(self.buf.drain(..stop));
    }

    /// The call inside `<tool_call>`.
    fn hermes(&self, content: &str) -> Option<Vec<ToolCall>> {
        let value = serde_json::from_str(content).ok()?;
        self.call(&value).map(|c| vec![c])
    }

    fn calls(&self, value: &Value, kind: Kind) -> Option<Vec<ToolCall>> {
        match value {
            // Every item must be a call, or the whole array stays text: its
            // items' raw text cannot be let out on its own.
            Value::Array(items) if kind == Kind::Mistral && !items.is_empty() => {
                items.iter().map(|item| self.call(item)).collect()
            }
            _ => self.call(value).map(|c| vec![c]),
        }
    }

    fn call(&self, value: &Value) -> Option<ToolCall> {
        let call = value.as_object()?;
        let name = call.get("name")?.as_str()?;
        if !self.tools.is_empty() && !self.tools.iter().any(|t| t == name) {
            return None;
        }
        // Llama 3.1 says "parameters", the others "arguments"; models mix them up.
        let keys = match self.hint {
            Some(Syntax::LlamaJson) => ["parameters", "arguments"],
            _ => ["arguments", "parameters"],
        };
        let arguments = match keys.iter().find_map(|k| call.get(*k)) {
            None => "{}".to_owned(),
            Some(args @ Value::Object(_)) => args.to_string(),
            // Some models send the arguments as a string holding the JSON.
            Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                Ok(args @ Value::Object(_)) => args.to_string(),
                _ => return None,
            },
            Some(_) => return None,
        };
        Some(ToolCall { name: name.to_owned(), arguments })
    }
}

/// Where the held-back tail of plain text starts: a marker's first
/// characters at the very end, and the whitespace before them (dropped if
/// a call follows).
fn held_from(text: &str) -> usize {
    let cut = held_marker(text, &MARKERS);
    text[..cut].trim_end().len()
}

/// Where the longest suffix of `text` that is a proper prefix of one of
/// `markers` starts (`text.len()` if none). Markers are ASCII, so that is a
/// char boundary.
fn held_marker(text: &str, markers: &[&str]) -> usize {
    let b = text.as_bytes();
    let mut cut = b.len();
    for m in markers {
        let m = m.as_bytes();
        if let Some(n) = (1..m.len().min(b.len() + 1)).rev().find(|&n| b.ends_with(&m[..n])) {
            cut = cut.min(b.len() - n);
        }
    }
    cut
}
