//! What a client asks of sampling, in the fields every generating request
//! shares.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One stop string or several: generation ends before the first occurrence,
/// which is not included in the output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

impl StopSequences {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSequences::One(s) => vec![s],
            StopSequences::Many(v) => v,
        }
    }
}

/// The sampling knobs of the guide's request and OpenAI's, as the client
/// wrote them (absent: the endpoint's default). The server checks them once,
/// into the engine's parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingKnobs {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// The [`SamplingKnobs`] of a request whose knob fields have the shared
/// names, with its temperature as given (`Option<f32>`): one field list for
/// every request type.
macro_rules! knobs_of {
    ($req:expr, $temperature:expr) => {
        $crate::SamplingKnobs {
            temperature: $temperature,
            top_p: $req.top_p,
            top_k: $req.top_k,
            min_p: $req.min_p,
            repetition_penalty: $req.repetition_penalty,
            frequency_penalty: $req.frequency_penalty,
            presence_penalty: $req.presence_penalty,
            seed: $req.seed,
        }
    };
}
pub(crate) use knobs_of;
