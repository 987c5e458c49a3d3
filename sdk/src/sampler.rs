//! Sampler plugins: the per-token sampling policy.
//!
//! Implement [`Sampler`] and export it with [`export_sampler!`](crate::export_sampler).
//! Before each token the host calls [`Sampler::step`]; the returned
//! [`StepPlan`] says how the host samples it (parameters, a sparse bias, an
//! allowed set, forced tokens, stop, or "let me choose among the top N").

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::{Config, PluginInfo};

/// Bindings generated from `wit/` (the `sampler-plugin` world).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/plugin.wit",
        world: "kiln:plugin/sampler-plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "export_sampler_world",
        default_bindings_module: "kiln_sdk::sampler::bindings",
    });
}

use bindings::exports::kiln::plugin::sampler as wit;
use bindings::kiln::plugin::types as wit_types;

/// The knobs of the host's sampling arithmetic: the request's, as
/// [`Sampler::new`] receives them, or a step's own in [`StepPlan::params`].
/// Neutral values disable a knob (see [`SamplingParams::default`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits before sampling; 0 samples greedily (the most
    /// likely token).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probabilities reach `top_p`
    /// (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one
    /// (0: none).
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of tokens seen in
    /// the prompt or the output (1: no penalty).
    pub repetition_penalty: f32,
    /// Subtracts `count * frequency_penalty` from each generated token's
    /// logit, `count` being how often it was generated (0: no penalty).
    pub frequency_penalty: f32,
    /// Subtracts `presence_penalty` once from each generated token's logit
    /// (0: no penalty).
    pub presence_penalty: f32,
}

impl Default for SamplingParams {
    /// Neutral: temperature 1, nothing truncated, no penalties.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        }
    }
}

/// A candidate token and its logit, as [`Sampler::choose`] sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The token id.
    pub id: u32,
    /// Its logit after the host applied penalties, the plan's bias and the
    /// allowed set (not normalised to a probability).
    pub logit: f32,
}

/// A set of token ids, as a bitset over the vocabulary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSet {
    words: Vec<u64>,
}

impl TokenSet {
    /// An empty set able to hold ids `0..size`.
    pub fn with_size(size: u32) -> Self {
        TokenSet { words: vec![0; (size as usize).div_ceil(64)] }
    }

    /// Adds `id`, growing the set if `id` is past its size.
    pub fn insert(&mut self, id: u32) {
        let word = id as usize / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (id % 64);
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u32) -> bool {
        self.words.get(id as usize / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Whether the set holds no id.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The ids in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(i, w)| (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| (i * 64 + b) as u32))
    }

    /// The bitset as the host receives it: id `i` is bit `i % 64` of word
    /// `i / 64`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Adds every id of `other` (a word at a time).
    pub fn union_with(&mut self, other: &TokenSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        self.words.iter_mut().zip(&other.words).for_each(|(w, o)| *w |= o);
    }
}

impl FromIterator<u32> for TokenSet {
    fn from_iter<I: IntoIterator<Item = u32>>(ids: I) -> Self {
        let mut set = TokenSet::default();
        ids.into_iter().for_each(|id| set.insert(id));
        set
    }
}

/// How the host is to produce the next token. `StepPlan::default()` samples
/// with the request's parameters.
///
/// The host looks at `stop` first, then `forced`; only when neither applies
/// does it sample, using `params`, `bias`, `allowed` and `choose_from`
/// together. A plan naming a token outside the vocabulary, or a bias that is
/// not a finite number, fails the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepPlan {
    /// Parameters for this step instead of the request's (`None`: the
    /// request's).
    pub params: Option<SamplingParams>,
    /// `(id, bias)` pairs: each bias is added to that token's logit, on top
    /// of the request's own `logit_bias`. Sparse: list only the tokens to
    /// change; a large negative bias (e.g. -100) all but bans a token.
    pub bias: Vec<(u32, f32)>,
    /// Only these tokens may be chosen (`None`: any). A set that allows no
    /// token of the vocabulary fails the request; but a set with no words at
    /// all (`TokenSet::default()` with nothing inserted) reaches the host as
    /// no restriction, so size an allowed set with [`TokenSet::with_size`].
    pub allowed: Option<TokenSet>,
    /// Emit these tokens, in order, without sampling; the host then calls
    /// [`Sampler::step`] again with `last` the last of them.
    pub forced: Vec<u32>,
    /// End the generation now, with finish reason `stop`.
    pub stop: bool,
    /// Greater than 0: [`Sampler::choose`] picks among this many top candidates.
    pub choose_from: u32,
}

impl StepPlan {
    /// Sample with the request's parameters.
    pub fn sample() -> Self {
        StepPlan::default()
    }

    /// End the generation now.
    pub fn stop() -> Self {
        StepPlan { stop: true, ..StepPlan::default() }
    }

    /// Emit `tokens` without sampling.
    pub fn force(tokens: impl Into<Vec<u32>>) -> Self {
        StepPlan { forced: tokens.into(), ..StepPlan::default() }
    }

    /// Sample among `allowed` only.
    pub fn only(allowed: TokenSet) -> Self {
        StepPlan { allowed: Some(allowed), ..StepPlan::default() }
    }
}

/// A sampling policy: one value per sequence.
pub trait Sampler: Sized + 'static {
    /// A new sequence with the request's parameters and prompt. An error
    /// (e.g. a bad config value) fails the request with this message.
    fn new(params: SamplingParams, prompt: &[u32], config: &Config) -> Result<Self, String>;

    /// The plan for the next token; `last` is the token emitted before it.
    /// An error fails the request with this message (say what is wrong in
    /// the client's terms: it reaches the client).
    fn step(&mut self, last: Option<u32>) -> Result<StepPlan, String>;

    /// Picks among the top candidates (most likely first) when the plan set
    /// `choose_from`. By default, the most likely.
    fn choose(&mut self, candidates: &[Candidate]) -> u32 {
        candidates.first().map_or(0, |c| c.id)
    }
}

/// Glue between a [`Sampler`] and the generated bindings; used by
/// [`export_sampler!`](crate::export_sampler).
#[doc(hidden)]
#[derive(Debug)]
pub struct Component<T>(PhantomData<T>);

#[doc(hidden)]
#[derive(Debug)]
pub struct Sequence<T>(RefCell<T>);

#[doc(hidden)]
pub trait Described {
    fn info() -> PluginInfo;
}

impl<T: Sampler + Described> wit::Guest for Component<T> {
    fn info() -> wit_types::PluginInfo {
        let info = T::info();
        wit_types::PluginInfo { name: info.name, version: info.version, description: info.description }
    }
    type Sequence = Sequence<T>;
}

impl<T: Sampler> wit::GuestSequence for Sequence<T> {
    fn create(
        params: wit_types::SamplingParams,
        prompt: Vec<u32>,
        config: Vec<(String, String)>,
    ) -> Result<wit::Sequence, String> {
        let sampler = T::new(params.into(), &prompt, &Config(config))?;
        Ok(wit::Sequence::new(Sequence(RefCell::new(sampler))))
    }

    fn step(&self, last: Option<u32>) -> Result<wit::StepPlan, String> {
        self.0.borrow_mut().step(last).map(Into::into)
    }

    fn choose(&self, candidates: Vec<wit::Candidate>) -> u32 {
        let candidates: Vec<Candidate> = candidates.iter().map(|c| Candidate { id: c.id, logit: c.logit }).collect();
        self.0.borrow_mut().choose(&candidates)
    }
}

impl From<wit_types::SamplingParams> for SamplingParams {
    fn from(p: wit_types::SamplingParams) -> Self {
        SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
        }
    }
}

impl From<SamplingParams> for wit_types::SamplingParams {
    fn from(p: SamplingParams) -> Self {
        wit_types::SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
        }
    }
}

impl From<StepPlan> for wit::StepPlan {
    fn from(p: StepPlan) -> Self {
        wit::StepPlan {
            params: p.params.map(Into::into),
            bias: p.bias,
            allowed: p.allowed.map(|s| s.words).unwrap_or_default(),
            forced: p.forced,
            stop: p.stop,
            choose_from: p.choose_from,
        }
    }
}

/// Exports a [`Sampler`] as the plugin's sampler; its name, version and
/// description come from the plugin's `Cargo.toml`.
#[macro_export]
macro_rules! export_sampler {
    ($ty:ty) => {
        impl $crate::sampler::Described for $ty {
            fn info() -> $crate::PluginInfo {
                $crate::PluginInfo::from_cargo(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                )
            }
        }
        #[cfg(target_arch = "wasm32")]
        type __KilnSamplerComponent = $crate::sampler::Component<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::sampler::bindings::export_sampler_world!(__KilnSamplerComponent with_types_in $crate::sampler::bindings);
    };
}
