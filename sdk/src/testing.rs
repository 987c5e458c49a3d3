//! Helpers to test a plugin's logic natively, in ordinary `cargo test`: the
//! same trait implementations the component exports, driven the way the
//! host drives them.

use std::sync::Arc;

use crate::post_process::{ChunkAction, FinishReason, PostProcess};
use crate::sampler::{Candidate, Sampler};
use crate::vocabulary::{INSTALLED, Vocabulary};

/// Runs `f` with `vocabulary` as what [`vocabulary()`](crate::vocabulary())
/// returns (on this thread).
pub fn with_vocabulary<R>(vocabulary: Vocabulary, f: impl FnOnce() -> R) -> R {
    let previous = INSTALLED.with(|v| v.replace(Some(Arc::new(vocabulary))));
    let result = f();
    INSTALLED.with(|v| *v.borrow_mut() = previous);
    result
}

/// How a post-processor's stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The chunks ran out; `finish` was called with this reason.
    Finished(FinishReason),
    /// The plugin stopped the generation.
    Stopped,
    /// The plugin aborted with this message.
    Aborted(String),
}

/// Feeds `chunks` to a post-processor as the host does; returns the text the
/// client would see and how the stream ended.
pub fn run_post_process<P: PostProcess>(filter: &mut P, chunks: &[&str], reason: FinishReason) -> (String, Ended) {
    let mut out = String::new();
    for chunk in chunks {
        match filter.on_chunk(chunk) {
            ChunkAction::Emit(emitted) => out.push_str(&emitted.text),
            ChunkAction::Stop(emitted) => {
                out.push_str(&emitted.text);
                return (out, Ended::Stopped);
            }
            ChunkAction::Abort(message) => return (out, Ended::Aborted(message)),
        }
    }
    out.push_str(&filter.finish(reason).text);
    (out, Ended::Finished(reason))
}

/// Generates up to `max_tokens` greedily as the host would with `sampler`'s
/// plans: `logits(generated)` plays the model. Forced tokens are emitted,
/// the allowed set and bias are applied, `choose_from` asks the sampler,
/// `stop` ends. Returns the generated ids; a step's error panics with its
/// message.
pub fn run_sampler<S: Sampler>(
    sampler: &mut S,
    mut logits: impl FnMut(&[u32]) -> Vec<f32>,
    max_tokens: usize,
) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    while out.len() < max_tokens {
        let plan = sampler.step(out.last().copied()).unwrap_or_else(|e| panic!("the sampler failed: {e}"));
        if plan.stop {
            break;
        }
        if !plan.forced.is_empty() {
            out.extend(plan.forced.iter().take(max_tokens - out.len()));
            continue;
        }
        let mut scores = logits(&out);
        for (id, bias) in &plan.bias {
            if let Some(s) = scores.get_mut(*id as usize) {
                *s += bias;
            }
        }
        let mut candidates: Vec<Candidate> = scores
            .iter()
            .enumerate()
            .filter(|(id, _)| plan.allowed.as_ref().is_none_or(|set| set.contains(*id as u32)))
            .map(|(id, &logit)| Candidate { id: id as u32, logit })
            .collect();
        assert!(!candidates.is_empty(), "the plan's allowed set allows no token");
        candidates.sort_by(|a, b| b.logit.total_cmp(&a.logit));
        let token = if plan.choose_from > 0 {
            candidates.truncate(plan.choose_from as usize);
            let chosen = sampler.choose(&candidates);
            assert!(candidates.iter().any(|c| c.id == chosen), "choose returned {chosen}, not a candidate");
            chosen
        } else {
            candidates[0].id
        };
        out.push(token);
    }
    out
}

/// Pseudo-random logits over `size` tokens for [`run_sampler`] (a fixed
/// LCG): the same for a seed and step every run, different between steps
/// and seeds, so a constraint is exercised against many choices.
pub fn random_logits(seed: u64, size: usize) -> impl FnMut(&[u32]) -> Vec<f32> {
    move |generated: &[u32]| {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add((generated.len() as u64).wrapping_mul(1442695040888963407));
        (0..size)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 40) as f32 / (1u64 << 24) as f32 * 10.0
            })
            .collect()
    }
}
