//! A pipeline as one request runs it ([`Resolved`]): the plugin versions
//! it started with, and the calls into them: rendering a conversation,
//! starting a sampler session, building the post-process chain.

use std::sync::Arc;

use kiln_engine::{SamplingParams, SamplingPolicy};
use kiln_plugins::{
    ChatMessage, Contract, OutputOptions, PluginError, PostProcessPlugin, PostProcessSession, SamplerPlugin,
    TemplateInput, TemplatePlugin,
};

use crate::{PluginConfig, PluginPolicy, PostChain, plugin_params, tools};

/// One stage of a resolved pipeline: a plugin version and its configuration.
#[derive(Debug)]
pub(crate) struct Stage<P> {
    pub(crate) plugin: Arc<P>,
    pub(crate) config: PluginConfig,
}

impl<P> Clone for Stage<P> {
    fn clone(&self) -> Self {
        Stage { plugin: self.plugin.clone(), config: self.config.clone() }
    }
}

/// The model's own chat template, as template plugins receive it.
#[derive(Clone, Copy, Debug)]
pub struct ModelTemplate<'a> {
    pub source: &'a str,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
}

/// A conversation as a template renders it.
#[derive(Clone, Copy, Debug)]
pub struct Conversation<'a> {
    pub messages: &'a [kiln_chat::ChatMessage],
    /// The functions offered (empty: none).
    pub tools: &'a [kiln_chat::Tool],
    pub tool_choice: &'a kiln_chat::ToolChoice,
    /// Open the assistant's turn at the end.
    pub add_generation_prompt: bool,
}

/// A rendered conversation: the prompt, the template's stop strings, and
/// the syntax it asked the model to write calls in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedPrompt {
    pub prompt: String,
    pub stop: Vec<String>,
    pub tool_syntax: Option<kiln_chat::ToolSyntax>,
}

/// What a generation's post-processors are told when they start.
#[derive(Clone, Copy, Debug)]
pub struct OutputSetup<'a> {
    /// Every stop string in force (the request's and the template's).
    pub stop: &'a [String],
    /// The functions offered (empty: none).
    pub tools: &'a [kiln_chat::Tool],
    /// The syntax the prompt asked calls in.
    pub tool_syntax: Option<kiln_chat::ToolSyntax>,
}

impl OutputSetup<'_> {
    pub(crate) fn options(&self, config: Vec<(String, String)>) -> OutputOptions {
        OutputOptions {
            stop: self.stop.to_vec(),
            tools: tools::plugin_tools(self.tools),
            tool_syntax: self.tool_syntax.map(tools::plugin_syntax),
            config,
        }
    }
}

/// A pipeline as one request runs it: the plugin versions current when it
/// started, kept to the end.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub(crate) template: Option<Stage<TemplatePlugin>>,
    pub(crate) sampler: Option<Stage<SamplerPlugin>>,
    pub(crate) post: Vec<Stage<PostProcessPlugin>>,
}

impl Resolved {
    /// Renders a conversation with the pipeline's template plugin; `None`
    /// when it has none (the host renders).
    pub fn render(
        &self,
        conversation: &Conversation<'_>,
        model: ModelTemplate<'_>,
    ) -> Option<Result<RenderedPrompt, PluginError>> {
        let stage = self.template.as_ref()?;
        // A 0.1.0 template knows nothing of tools: the conversation is
        // rewritten with kiln's fallback before it sees it, as the host's
        // renderer does for a Jinja template without tools.
        let offered = match conversation.tool_choice {
            kiln_chat::ToolChoice::None => &[][..],
            _ => conversation.tools,
        };
        let uses_tools =
            !offered.is_empty() || conversation.messages.iter().any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        let legacy = stage.plugin.info().contract == Contract::V0_1 && uses_tools;
        let rewritten;
        let source = match legacy {
            true => {
                rewritten = kiln_chat::fallback_messages(conversation.messages, offered);
                &rewritten[..]
            }
            false => conversation.messages,
        };
        let messages = source.iter().map(|m| ChatMessage {
            role: m.role.clone(),
            content: m.content.clone(),
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| kiln_plugins::ToolCall {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                })
                .collect(),
            tool_call_id: m.tool_call_id.clone(),
            name: m.name.clone(),
        });
        let input = TemplateInput {
            messages: messages.collect(),
            add_generation_prompt: conversation.add_generation_prompt,
            chat_template: Some(model.source.to_string()),
            bos_token: model.bos_token.to_string(),
            eos_token: model.eos_token.to_string(),
            config: stage.config.to_vec(),
            tools: tools::plugin_tools(conversation.tools),
            tool_choice: tools::plugin_choice(conversation.tool_choice),
        };
        let rendered = stage.plugin.render(&input);
        let fallback = (legacy && !offered.is_empty()).then_some(kiln_chat::ToolSyntax::Hermes);
        Some(rendered.map(|r| RenderedPrompt {
            prompt: r.prompt,
            stop: r.stop,
            tool_syntax: r.tool_syntax.map(tools::chat_syntax).or(fallback),
        }))
    }

    /// The pipeline's sampler for one sequence; `None` when it has none.
    pub fn sampler(
        &self,
        params: &SamplingParams,
        prompt: &[u32],
        max_tokens: usize,
    ) -> Result<Option<Box<dyn SamplingPolicy>>, PluginError> {
        let Some(stage) = &self.sampler else { return Ok(None) };
        let mut config = stage.config.to_vec();
        config.push(("max_tokens".into(), max_tokens.to_string()));
        let session = stage.plugin.start(plugin_params(params), prompt, &config)?;
        Ok(Some(Box::new(PluginPolicy::new(session, params.clone()))))
    }

    /// The post-process chain for one generation: `first` (the tool-call
    /// parser, when the request offers tools), then the pipeline's stages.
    pub fn post_chain(
        &self,
        output: &OutputSetup<'_>,
        first: Option<PostProcessSession>,
    ) -> Result<PostChain, PluginError> {
        let mut sessions: Vec<PostProcessSession> = first.into_iter().collect();
        for stage in &self.post {
            sessions.push(stage.plugin.start(&output.options(stage.config.to_vec()))?);
        }
        Ok(PostChain::new(sessions))
    }

    /// Each stage's plugin version and its configuration here, in order.
    pub fn stages(&self) -> Vec<(&kiln_plugins::PluginInfo, &[(String, String)])> {
        let template = self.template.iter().map(|s| (s.plugin.info(), s.config.as_slice()));
        let sampler = self.sampler.iter().map(|s| (s.plugin.info(), s.config.as_slice()));
        let post = self.post.iter().map(|s| (s.plugin.info(), s.config.as_slice()));
        template.chain(sampler).chain(post).collect()
    }

    /// The plugin versions this pipeline runs, in stage order.
    pub fn plugins(&self) -> Vec<&kiln_plugins::PluginInfo> {
        let template = self.template.iter().map(|s| s.plugin.info());
        let sampler = self.sampler.iter().map(|s| s.plugin.info());
        template.chain(sampler).chain(self.post.iter().map(|s| s.plugin.info())).collect()
    }
}
