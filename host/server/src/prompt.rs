//! Prompts as the model sees them: text, token ids, or a conversation
//! rendered by the pipeline's template plugin (or the model's own chat
//! template), then tokenized.

use kiln_chat::ChatMessage;
use kiln_pipeline::{ModelTemplate, Resolved};

use crate::state::ServedModel;
use crate::{ApiError, AppState};

/// What a request asks the model to continue.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) enum Prompt {
    /// Text as the model sees it.
    Text(String),
    /// Token ids as the model sees them (checked against the vocabulary).
    Tokens(Vec<u32>),
    /// Messages to render with the model's chat template.
    Chat { messages: Vec<ChatMessage>, add_generation_prompt: bool },
}

/// A prompt's tokens, and stop strings its template added.
#[derive(Debug)]
pub(crate) struct PromptTokens {
    pub tokens: Vec<u32>,
    pub stop: Vec<String>,
}

/// A prompt's token ids, rendered by the pipeline's template plugin or the
/// host's. Rendering and tokenizing run on the blocking pool: a prompt can be
/// megabytes, and the async workers serve every open stream.
pub(crate) async fn tokenize(
    state: &AppState,
    prompt: Prompt,
    pipeline: Option<&Resolved>,
) -> Result<PromptTokens, ApiError> {
    let state = state.clone();
    let pipeline = pipeline.cloned();
    tokio::task::spawn_blocking(move || {
        let model = state.model();
        let (text, stop) = match prompt {
            Prompt::Tokens(tokens) => {
                decode(&state, "prompt", &tokens)?;
                return Ok(PromptTokens { tokens, stop: Vec::new() });
            }
            Prompt::Text(text) => (text, Vec::new()),
            Prompt::Chat { messages, add_generation_prompt } => {
                render(model, pipeline.as_ref(), &messages, add_generation_prompt)?
            }
        };
        // Special tokens written out in the text (as chat templates write
        // them) become their ids.
        let tokens = model.tokenizer.encode(&text, true).map_err(|e| ApiError::Internal(format!("tokenizer: {e}")))?;
        Ok(PromptTokens { tokens, stop })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenizing task: {e}")))?
}

/// Token ids to text; ids the tokenizer does not know are the client's
/// mistake, reported at `param`.
pub(crate) fn decode(state: &AppState, param: &str, tokens: &[u32]) -> Result<String, ApiError> {
    let tokenizer = &state.model().tokenizer;
    let vocab = tokenizer.vocab_size().min(state.backend().limits().vocab_size);
    if let Some((i, id)) = tokens.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
        return Err(ApiError::invalid(format!("{param}[{i}]"), format!("{id} is outside the vocabulary ({vocab})")));
    }
    tokenizer.decode(tokens, false).map_err(|e| ApiError::invalid(param, e.to_string()))
}

/// A conversation as prompt text, with the template's own stop strings. A
/// template may refuse a conversation (`raise_exception`, e.g. roles out of
/// order): that is the client's to fix.
fn render(
    model: &ServedModel,
    pipeline: Option<&Resolved>,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<(String, Vec<String>), ApiError> {
    let template = ModelTemplate {
        source: model.template.source(),
        bos_token: model.template.bos_token(),
        eos_token: model.template.eos_token(),
    };
    let turns = messages.iter().map(|m| (m.role.as_str(), m.content.as_str()));
    match pipeline.and_then(|p| p.render(turns, add_generation_prompt, template)) {
        Some(Ok(rendered)) => Ok((rendered.prompt, rendered.stop)),
        Some(Err(kiln_pipeline::PluginError::Refused { message, .. })) => Err(ApiError::invalid("messages", message)),
        Some(Err(e)) => Err(ApiError::Plugin(e.to_string())),
        None => {
            let text = model
                .template
                .render(messages, add_generation_prompt)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            Ok((text, Vec::new()))
        }
    }
}
