//! A pipeline's post-process plugins chained over one generation's text.

use kiln_plugins::{ChunkAction, FinishReason, PluginError, PostProcessSession};

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
    /// A stage ended the output: the generation must stop here.
    pub stopped: bool,
}

impl PostChain {
    pub(crate) fn new(stages: Vec<PostProcessSession>) -> Self {
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
        for i in first..self.stages.len() {
            match self.stages[i].on_chunk(&text)? {
                ChunkAction::Emit(out) => text = out,
                ChunkAction::Stop(out) => {
                    // Stage i ended the output: the stages after it still see
                    // its last text, then the end.
                    let mut done = self.run_from(i + 1, out)?;
                    if !done.stopped {
                        done.text.push_str(&self.finish_from(i + 1, FinishReason::Stop)?.text);
                    }
                    return Ok(PostOutput { text: done.text, stopped: true });
                }
                ChunkAction::Abort(message) => {
                    return Err(PluginError::Refused {
                        plugin: self.stages[i].plugin().to_string(),
                        message: format!("aborted the output: {message}"),
                    });
                }
            }
        }
        Ok(PostOutput { text, stopped: false })
    }

    fn finish_from(&mut self, first: usize, reason: FinishReason) -> Result<PostOutput, PluginError> {
        let mut text = String::new();
        for i in first..self.stages.len() {
            let rest = self.stages[i].finish(reason)?;
            let out = self.run_from(i + 1, rest)?;
            text.push_str(&out.text);
            if out.stopped {
                return Ok(PostOutput { text, stopped: true });
            }
        }
        Ok(PostOutput { text, stopped: false })
    }
}
