//! A pipeline's post-process plugins chained over one generation's text.

use kiln_chat::ToolCall;
use kiln_plugins::{ChunkAction, Emitted, FinishReason, PluginError, PostProcessSession};

/// One generation's post-process sessions, applied in pipeline order: what
/// a stage emits is the next stage's input.
#[derive(Debug, Default)]
pub struct PostChain {
    stages: Vec<PostProcessSession>,
}

/// What the chain lets out for one chunk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PostOutput {
    pub text: String,
    /// Tool calls a stage found (they skip the stages after it).
    pub tool_calls: Vec<ToolCall>,
    /// A stage ended the output: the generation must stop here.
    pub stopped: bool,
}

impl PostOutput {
    /// Appends what a later call let out.
    pub fn extend(&mut self, more: PostOutput) {
        self.text.push_str(&more.text);
        self.tool_calls.extend(more.tool_calls);
        self.stopped |= more.stopped;
    }
}

impl PostChain {
    /// A chain of these sessions, in order.
    pub fn new(stages: Vec<PostProcessSession>) -> Self {
        PostChain { stages }
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Runs a decoded chunk through every stage.
    pub fn push(&mut self, text: &str) -> Result<PostOutput, PluginError> {
        // Nothing to say (the stop strings are holding text back): no calls.
        if text.is_empty() {
            return Ok(PostOutput::default());
        }
        self.run_from(0, text.to_string())
    }

    /// The end of the generation: each stage's held-back text, passed on
    /// through the stages after it.
    pub fn finish(&mut self, reason: FinishReason) -> Result<PostOutput, PluginError> {
        self.finish_from(0, reason)
    }

    fn run_from(&mut self, first: usize, mut text: String) -> Result<PostOutput, PluginError> {
        let mut calls = Vec::new();
        for i in first..self.stages.len() {
            match self.stages[i].on_chunk(&text)? {
                ChunkAction::Emit(Emitted { text: out, tool_calls }) => {
                    text = out;
                    calls.extend(tool_calls.into_iter().map(call));
                }
                ChunkAction::Stop(Emitted { text: out, tool_calls }) => {
                    calls.extend(tool_calls.into_iter().map(call));
                    // Stage i ended the output: the stages after it still see
                    // its last text, then the end.
                    let mut done = self.run_from(i + 1, out)?;
                    if !done.stopped {
                        let rest = self.finish_from(i + 1, FinishReason::Stop)?;
                        done.extend(rest);
                    }
                    calls.append(&mut done.tool_calls);
                    return Ok(PostOutput { text: done.text, tool_calls: calls, stopped: true });
                }
                ChunkAction::Abort(message) => {
                    return Err(PluginError::Refused {
                        plugin: self.stages[i].plugin().to_string(),
                        message: format!("aborted the output: {message}"),
                    });
                }
            }
        }
        Ok(PostOutput { text, tool_calls: calls, stopped: false })
    }

    fn finish_from(&mut self, first: usize, reason: FinishReason) -> Result<PostOutput, PluginError> {
        let mut all = PostOutput::default();
        for i in first..self.stages.len() {
            let Emitted { text, tool_calls } = self.stages[i].finish(reason)?;
            all.tool_calls.extend(tool_calls.into_iter().map(call));
            let out = if text.is_empty() { PostOutput::default() } else { self.run_from(i + 1, text)? };
            all.extend(out);
            if all.stopped {
                return Ok(all);
            }
        }
        Ok(all)
    }
}

fn call(c: kiln_plugins::ToolCall) -> ToolCall {
    ToolCall { id: c.id, name: c.name, arguments: c.arguments }
}
