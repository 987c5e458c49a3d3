//! Components built against `kiln:plugin@0.1.0` (`wit/deps/kiln-plugin-0.1.0`)
//! keep loading and serving: each is linked with that version's bindings,
//! and the values crossing it are converted here. What 0.1.0 cannot say is
//! dropped on the way in (tools, a message's tool calls) and filled with
//! its neutral value on the way out (no tool calls, no tool syntax).

use crate::post_process::bindings::exports::kiln::plugin::post_process as now_post;
use crate::sampler::bindings::exports::kiln::plugin::sampler as now_sampler;
use crate::template::bindings::exports::kiln::plugin::template as now_template;
use crate::template::bindings::kiln::plugin::types as current;

/// The contract version a component was built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Contract {
    /// `kiln:plugin@0.2.0`, what the SDK builds today.
    Current,
    /// `kiln:plugin@0.1.0`, adapted.
    V0_1,
}

impl Contract {
    /// The version, as `GET /v1/plugins` shows it.
    pub fn version(self) -> &'static str {
        match self {
            Contract::Current => "0.2.0",
            Contract::V0_1 => "0.1.0",
        }
    }

    /// The contract a component's export name (`kiln:plugin/sampler@0.1.0`) belongs to.
    pub(crate) fn of_export(name: &str) -> Option<Contract> {
        match name.rsplit_once('@')?.1 {
            "0.2.0" => Some(Contract::Current),
            "0.1.0" => Some(Contract::V0_1),
            _ => None,
        }
    }
}

pub(crate) mod template {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/kiln-plugin-0.1.0/plugin.wit",
        world: "kiln:plugin/template-plugin",
    });
}

pub(crate) mod sampler {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/kiln-plugin-0.1.0/plugin.wit",
        world: "kiln:plugin/sampler-plugin",
        with: { "kiln:plugin/types@0.1.0": super::template::kiln::plugin::types },
    });
}

pub(crate) mod post_process {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/kiln-plugin-0.1.0/plugin.wit",
        world: "kiln:plugin/post-process-plugin",
        with: { "kiln:plugin/types@0.1.0": super::template::kiln::plugin::types },
    });
}

use self::post_process::exports::kiln::plugin::post_process as old_post;
use self::sampler::exports::kiln::plugin::sampler as old_sampler;
use self::template::exports::kiln::plugin::template as old_template;
use self::template::kiln::plugin::types as old;

impl old::Host for crate::state::HostState {}

impl sampler::kiln::plugin::vocabulary::Host for crate::state::HostState {
    fn size(&mut self) -> u32 {
        self.vocabulary.len() as u32
    }

    fn tokens(&mut self) -> sampler::kiln::plugin::vocabulary::TokenTable {
        let (bytes, ends) = self.vocabulary.table();
        sampler::kiln::plugin::vocabulary::TokenTable { bytes: bytes.to_vec(), ends: ends.to_vec() }
    }

    fn stop_ids(&mut self) -> Vec<u32> {
        self.vocabulary.stop_ids().to_vec()
    }
}

/// A conversation as a 0.1.0 template takes it: roles and texts.
pub(crate) fn template_input(input: &now_template::TemplateInput) -> old_template::TemplateInput {
    old_template::TemplateInput {
        messages: input
            .messages
            .iter()
            .map(|m| old::ChatMessage { role: m.role.clone(), content: m.content.clone() })
            .collect(),
        add_generation_prompt: input.add_generation_prompt,
        chat_template: input.chat_template.clone(),
        bos_token: input.bos_token.clone(),
        eos_token: input.eos_token.clone(),
        config: input.config.clone(),
    }
}

pub(crate) fn rendered(r: old_template::Rendered) -> now_template::Rendered {
    now_template::Rendered { prompt: r.prompt, stop: r.stop, tool_syntax: None }
}

pub(crate) fn sampling_params(p: current::SamplingParams) -> old::SamplingParams {
    old::SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
    }
}

pub(crate) fn step_plan(p: old_sampler::StepPlan) -> now_sampler::StepPlan {
    let params = p.params.map(|p| current::SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
    });
    now_sampler::StepPlan {
        params,
        bias: p.bias,
        allowed: p.allowed,
        forced: p.forced,
        stop: p.stop,
        choose_from: p.choose_from,
    }
}

pub(crate) fn candidates(c: &[now_sampler::Candidate]) -> Vec<old_sampler::Candidate> {
    c.iter().map(|c| old_sampler::Candidate { id: c.id, logit: c.logit }).collect()
}

pub(crate) fn finish_reason(r: current::FinishReason) -> old::FinishReason {
    match r {
        current::FinishReason::Stop => old::FinishReason::Stop,
        current::FinishReason::Length => old::FinishReason::Length,
    }
}

pub(crate) fn chunk_action(a: old_post::ChunkAction) -> now_post::ChunkAction {
    use now_post::{ChunkAction, Emitted};
    use old_post::ChunkAction as Old;
    let text = |text| Emitted { text, tool_calls: Vec::new() };
    match a {
        Old::Emit(t) => ChunkAction::Emit(text(t)),
        Old::Stop(t) => ChunkAction::Stop(text(t)),
        Old::Abort(m) => ChunkAction::Abort(m),
    }
}
