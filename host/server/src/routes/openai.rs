//! What chat completions and completions share: OpenAI's sampling fields in
//! the engine's terms.

use kiln_api::openai::SamplingFields;
use kiln_engine::SamplingParams;

use super::Knobs;
use crate::ApiError;

/// OpenAI's default temperature.
const DEFAULT_TEMPERATURE: f32 = 1.0;

pub(crate) struct Sampling {
    pub params: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub pipeline: Option<String>,
}

pub(crate) fn sampling(fields: SamplingFields) -> Result<Sampling, ApiError> {
    if let Some(n) = fields.n.filter(|n| *n != 1) {
        return Err(ApiError::invalid("n", format!("only n=1 is supported, got {n}")));
    }
    let mut logit_bias = Vec::new();
    for (key, bias) in fields.logit_bias.unwrap_or_default() {
        let id = key.parse::<u32>().map_err(|_| {
            ApiError::invalid("logit_bias", format!("keys must be token ids (integers as strings), got {key:?}"))
        })?;
        logit_bias.push((id, bias));
    }
    logit_bias.sort_unstable_by_key(|(id, _)| *id);
    let knobs = Knobs {
        temperature: fields.temperature.unwrap_or(DEFAULT_TEMPERATURE),
        top_p: fields.top_p,
        top_k: fields.top_k,
        min_p: fields.min_p,
        repetition_penalty: fields.repetition_penalty,
        frequency_penalty: fields.frequency_penalty,
        presence_penalty: fields.presence_penalty,
        seed: fields.seed,
    };
    Ok(Sampling {
        params: knobs.into_params(logit_bias),
        stop: fields.stop.map(|s| s.into_vec()).unwrap_or_default(),
        ignore_eos: fields.ignore_eos.unwrap_or(false),
        pipeline: fields.pipeline,
    })
}
