//! tool-calls: turns the model's streamed output into text for the client
//! plus OpenAI tool calls, incrementally. Three syntaxes are recognised,
//! whichever one the prompt asked for:
//!
//! - Hermes / Qwen 2.5: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
//!   blocks anywhere in the output;
//! - Llama 3.1 JSON: the whole output (optionally after `<|python_tag|>`) is
//!   `{"name": ..., "parameters": {...}}`, several separated by `;` or newlines;
//! - Mistral: `[TOOL_CALLS]` followed by a JSON array of calls.
//!
//! Text streams through as it arrives; only what could still turn out to be
//! a call (a marker's first characters, an open block, an output that starts
//! as JSON) is held back until it is decided. Anything that is not a valid
//! call of one of the request's tools goes out as text, unchanged, so no
//! text is ever lost.
//!
//! The host puts this plugin first in a request's post-processing when the
//! request offers tools (and `tool_choice` is not `none`); the calls it
//! finds pass the later stages untouched and reach the client as OpenAI's
//! `tool_calls`.

#![forbid(unsafe_code)]

mod parse;

use kiln_sdk::post_process::{ChunkAction, Emitted, FinishReason, Options, PostProcess};

pub use parse::{Parsed, Parser, Syntax, ToolCall};

/// One generation's parser, as a post-process plugin.
#[derive(Debug)]
pub struct ToolCalls {
    parser: Parser,
}

impl PostProcess for ToolCalls {
    fn new(options: &Options) -> Result<Self, String> {
        let syntax = options.tool_syntax.map(|s| match s {
            kiln_sdk::ToolSyntax::Hermes => Syntax::Hermes,
            kiln_sdk::ToolSyntax::LlamaJson => Syntax::LlamaJson,
            kiln_sdk::ToolSyntax::Mistral => Syntax::Mistral,
        });
        let tools = options.tools.iter().map(|t| t.name.clone()).collect();
        Ok(ToolCalls { parser: Parser::new(syntax, tools) })
    }

    fn on_chunk(&mut self, text: &str) -> ChunkAction {
        ChunkAction::Emit(emitted(self.parser.push(text)))
    }

    fn finish(&mut self, _: FinishReason) -> Emitted {
        emitted(self.parser.finish())
    }
}

/// The parser's output in the contract's terms; the host gives each call its id.
fn emitted(parsed: Parsed) -> Emitted {
    let tool_calls = parsed
        .calls
        .into_iter()
        .map(|c| kiln_sdk::ToolCall { id: String::new(), name: c.name, arguments: c.arguments })
        .collect();
    Emitted { text: parsed.text, tool_calls }
}

kiln_sdk::export_post_process!(ToolCalls);

#[cfg(test)]
mod tests;
