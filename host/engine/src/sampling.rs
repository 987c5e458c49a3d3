//! Choosing the next token from logits, on the host.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::policy::StepPlan;
use crate::request::SamplingParams;
use crate::{PolicyError, SamplingPolicy};

/// A sampled token with its log-probability under the model's distribution
/// (before temperature and truncation) and, if asked, the top alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Present when the request asked for log-probabilities.
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Per-sequence sampling state: parameters, RNG and the token counts the
/// penalties need.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Distinct tokens of prompt and output (repetition penalty).
    seen: Vec<u32>,
    /// Output token counts (frequency / presence penalties).
    generated: Vec<(u32, u32)>,
    logprobs: bool,
    top_logprobs: usize,
}

/// Candidates examined before falling back to a full sort for top-p.
const TOP_P_WINDOW: usize = 256;

impl Sampler {
    /// `logprobs`: compute each token's log-probability (and `top_logprobs`
    /// alternatives), a full pass over the vocabulary per token.
    pub fn new(params: SamplingParams, prompt: &[u32], logprobs: bool, top_logprobs: usize) -> Self {
        let seed = params.seed.unwrap_or_else(rand::random);
        let mut seen = prompt.to_vec();
        seen.sort_unstable();
        seen.dedup();
        Sampler { params, rng: StdRng::seed_from_u64(seed), seen, generated: Vec::new(), logprobs, top_logprobs }
    }

    /// A copy for another answer to the same prompt: the same parameters and
    /// counts, its own random stream (`seed`, else a random one).
    pub fn fork(&self, seed: Option<u64>) -> Sampler {
        Sampler {
            params: self.params.clone(),
            rng: StdRng::seed_from_u64(seed.unwrap_or_else(rand::random)),
            seen: self.seen.clone(),
            generated: self.generated.clone(),
            logprobs: self.logprobs,
            top_logprobs: self.top_logprobs,
        }
    }

    /// Picks the next token and records it for the penalties.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        match self.sample_with(logits, &StepPlan::default(), None) {
            Ok(sampled) => sampled,
            // The default plan has no allowed set and asks no policy.
            Err(_) => unreachable!("the default plan cannot fail"),
        }
    }

    /// Picks the next token as a policy's plan says: its bias and allowed set
    /// on top of the request's, its parameters instead of the request's, and
    /// with `choose_from`, the policy's choice among the top candidates.
    pub fn sample_with(
        &mut self,
        logits: &mut [f32],
        plan: &StepPlan,
        mut policy: Option<&mut dyn SamplingPolicy>,
    ) -> Result<Sampled, PolicyError> {
        let invalid = |policy: &Option<&mut dyn SamplingPolicy>, problem: String| PolicyError::InvalidPlan {
            policy: policy.as_ref().map_or_else(|| "the sampling plan".into(), |p| p.name()),
            problem,
        };
        let log_z = self.logprobs.then(|| log_normalizer(logits));
        let top_logprobs = match log_z {
            Some(z) => top_n(logits, self.top_logprobs).into_iter().map(|(t, l)| (t, l - z)).collect(),
            None => Vec::new(),
        };
        let mut originals = self.apply_bias_and_penalties(logits);
        for &(t, b) in &plan.bias {
            let l = logits
                .get_mut(t as usize)
                .ok_or_else(|| invalid(&policy, format!("bias for token {t}, outside the vocabulary")))?;
            originals.push((t, *l));
            *l += b;
        }
        if let Some(words) = &plan.allowed
            && !mask_disallowed(logits, words)
        {
            return Err(invalid(&policy, "the allowed set allows no token".into()));
        }
        let params = plan.params.as_ref().unwrap_or(&self.params);
        let token = match (plan.choose_from, policy.as_deref_mut()) {
            (n, Some(chooser)) if n > 0 => {
                let candidates: Vec<(u32, f32)> =
                    top_n(logits, n as usize).into_iter().filter(|(_, l)| l.is_finite()).collect();
                let token = chooser.choose(&candidates)?;
                if !candidates.iter().any(|(t, _)| *t == token) {
                    return Err(invalid(&policy, format!("chose token {token}, which is not among the candidates")));
                }
                token
            }
            _ if params.is_greedy() => argmax(logits),
            _ => draw(params, &mut self.rng, logits),
        };
        let raw = originals.iter().find(|(t, _)| *t == token).map_or(logits[token as usize], |o| o.1);
        self.record(token);
        Ok(Sampled { token, logprob: log_z.map(|z| raw - z), top_logprobs })
    }

    /// Records a token emitted without sampling (forced by a policy), for the penalties.
    pub fn record_forced(&mut self, token: u32) {
        self.record(token);
    }

    /// Applies logit bias and penalties in place; returns the original values of
    /// the entries it changed (first change first).
    fn apply_bias_and_penalties(&self, logits: &mut [f32]) -> Vec<(u32, f32)> {
        let mut originals = Vec::new();
        for &(t, b) in &self.params.logit_bias {
            originals.push((t, logits[t as usize]));
            logits[t as usize] += b;
        }
        let rp = self.params.repetition_penalty;
        if rp != 1.0 {
            for &t in &self.seen {
                let l = &mut logits[t as usize];
                originals.push((t, *l));
                *l = if *l > 0.0 { *l / rp } else { *l * rp };
            }
        }
        let (fp, pp) = (self.params.frequency_penalty, self.params.presence_penalty);
        if fp != 0.0 || pp != 0.0 {
            for &(t, n) in &self.generated {
                originals.push((t, logits[t as usize]));
                logits[t as usize] -= n as f32 * fp + pp;
            }
        }
        originals
    }

    fn record(&mut self, token: u32) {
        if let Err(i) = self.seen.binary_search(&token) {
            self.seen.insert(i, token);
        }
        match self.generated.iter_mut().find(|(t, _)| *t == token) {
            Some((_, n)) => *n += 1,
            None => self.generated.push((token, 1)),
        }
    }
}

/// Top-k, temperature, then top-p and min-p truncation (HF / vLLM order),
/// then a draw.
fn draw(params: &SamplingParams, rng: &mut StdRng, logits: &[f32]) -> u32 {
    let inv_t = 1.0 / params.temperature;
    let k = if params.top_k == 0 { logits.len() } else { params.top_k.min(logits.len()) };
    let mut cand: Vec<(u32, f32)> = if k < logits.len() {
        top_n(logits, k)
    } else {
        logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect()
    };
    let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
    let mut total = 0.0;
    for c in cand.iter_mut() {
        c.1 = ((c.1 - max) * inv_t).exp();
        total += c.1;
    }
    if params.top_p < 1.0 {
        total = truncate_top_p(&mut cand, total, params.top_p);
    }
    if params.min_p > 0.0 {
        // The most likely token has weight exp(0) = 1 after the shift above.
        let floor = params.min_p;
        cand.retain(|c| c.1 >= floor);
        total = cand.iter().map(|c| c.1).sum();
    }
    let mut r = rng.random::<f32>() * total;
    for &(t, w) in &cand {
        if r < w {
            return t;
        }
        r -= w;
    }
    // Rounding left `r` just past the end: the last candidate is the draw.
    cand.last().map_or_else(|| argmax(logits), |c| c.0)
}

/// Keeps the smallest most-likely prefix whose weight reaches `p * total`;
/// returns the kept weight. Sorts a window first and the rest only if needed.
fn truncate_top_p(cand: &mut Vec<(u32, f32)>, total: f32, p: f32) -> f32 {
    let target = p * total;
    let by_weight = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
    let window = TOP_P_WINDOW.min(cand.len());
    if window < cand.len() {
        cand.select_nth_unstable_by(window - 1, by_weight);
    }
    cand[..window].sort_unstable_by(by_weight);
    let mut kept = 0.0;
    for i in 0..window {
        kept += cand[i].1;
        if kept >= target {
            cand.truncate(i + 1);
            return kept;
        }
    }
    cand.sort_unstable_by(by_weight);
    kept = 0.0;
    for i in 0..cand.len() {
        kept += cand[i].1;
        if kept >= target {
            cand.truncate(i + 1);
            break;
        }
    }
    kept
}

/// `log(sum(exp(l)))` of raw logits.
fn log_normalizer(logits: &[f32]) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    max + sum.ln()
}

pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The `n` largest logits, most likely first.
pub(crate) fn top_n(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let n = n.min(all.len());
    all.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
    all.truncate(n);
    all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    all
}

/// Sets the logit of every token outside the allowed bitset `words` to
/// minus infinity; false if the set allows no token of `logits`. A word at a
/// time: a constrained step's sets are mostly whole words allowed (string
/// content) or refused, which cost no bit tests.
fn mask_disallowed(logits: &mut [f32], words: &[u64]) -> bool {
    let mut any = false;
    for (i, chunk) in logits.chunks_mut(64).enumerate() {
        match words.get(i).copied().unwrap_or(0) {
            0 => chunk.fill(f32::NEG_INFINITY),
            u64::MAX => any = true,
            word => {
                for (bit, l) in chunk.iter_mut().enumerate() {
                    if word >> bit & 1 == 0 {
                        *l = f32::NEG_INFINITY;
                    } else {
                        any = true;
                    }
                }
            }
        }
    }
    any
}

#[cfg(test)]
#[path = "sampling_tests.rs"]
mod tests;
