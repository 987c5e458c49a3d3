//! What the engine has taken on and how fast it gets through it: the
//! estimate behind refusing, at once, a request that could not finish
//! before its deadline (rather than working on it and failing it late),
//! and behind putting new prompts after sequences about to miss theirs.
//!
//! Work is counted in tokens of two kinds, because they cost very
//! differently: a request's prompt (prefill runs hundreds of tokens a step)
//! and the output it is expected to generate (one token per sequence a
//! step; its `max_tokens`, or for a request that may stop early twice the
//! recent mean output when that is smaller: chat clients often leave
//! `max_tokens` at the whole context and stop far short of it). Each kind
//! has a measured cost per token; a request finishes no sooner than the
//! backlog ahead of it plus its own work at those costs, nor sooner than
//! its output at one token per decode step.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub(crate) struct Load {
    /// Prompt tokens accepted (queued or running) and not yet run.
    backlog_prompt: AtomicUsize,
    /// Output tokens accepted and not yet generated.
    backlog_output: AtomicUsize,
    /// Seconds a prompt token costs, smoothed over steps that ran prompt
    /// chunks (f64 bits; 0: not measured yet). The decodes riding along in
    /// such a step are counted free: it errs towards a longer estimate.
    prompt_token_secs: AtomicU64,
    /// Seconds a generated token costs, smoothed over steps of decodes
    /// alone: the step's time over the batch it served.
    output_token_secs: AtomicU64,
    /// Seconds a step of decodes alone takes, smoothed.
    decode_step_secs: AtomicU64,
    /// Output tokens of sequences that finished, smoothed (0: none yet).
    mean_output: AtomicU64,
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

/// `new` folded into the smoothed value in `a` (taken as is when there is none).
fn smooth(a: &AtomicU64, new: f64, weight: f64) {
    let old = load_f64(a);
    let value = if old > 0.0 { old + weight * (new - old) } else { new };
    a.store(value.to_bits(), Ordering::Relaxed);
}

/// What one request is expected to cost, or what of it is left, in tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Work {
    /// Prompt tokens to run (prefill).
    pub prompt: usize,
    /// Tokens to generate: one decode step each.
    pub output: usize,
}

impl Load {
    /// What a request of `prompt` tokens and at most `max_tokens` of output
    /// is expected to cost; `may_stop_early`: it has stop tokens.
    pub fn expected(&self, prompt: usize, max_tokens: usize, may_stop_early: bool) -> Work {
        let mean = load_f64(&self.mean_output);
        let output =
            if may_stop_early && mean > 0.0 { max_tokens.min((2.0 * mean).ceil() as usize) } else { max_tokens };
        Work { prompt, output: output.max(1) }
    }

    /// How long until `work` would be done, after the backlog; `None`
    /// before anything was measured.
    pub fn eta(&self, work: Work) -> Option<Duration> {
        let backlog = Work {
            prompt: self.backlog_prompt.load(Ordering::Relaxed) + work.prompt,
            output: self.backlog_output.load(Ordering::Relaxed) + work.output,
        };
        self.estimate(backlog, work.output)
    }

    /// How long `work` takes with the engine to itself.
    pub fn eta_alone(&self, work: Work) -> Option<Duration> {
        self.estimate(work, work.output)
    }

    /// The time `work` takes at the measured costs, and no less than `steps`
    /// decode steps.
    fn estimate(&self, work: Work, steps: usize) -> Option<Duration> {
        let (prompt, output) = (load_f64(&self.prompt_token_secs), load_f64(&self.output_token_secs));
        let by_cost = (prompt > 0.0 && output > 0.0)
            .then(|| Duration::from_secs_f64(work.prompt as f64 * prompt + work.output as f64 * output));
        let by_steps = self.decode_step().map(|step| step.mul_f64(steps as f64));
        by_cost.max(by_steps)
    }

    /// A decode-only step's duration; `None` before one was measured.
    pub fn decode_step(&self) -> Option<Duration> {
        let secs = load_f64(&self.decode_step_secs);
        (secs > 0.0).then(|| Duration::from_secs_f64(secs))
    }

    #[cfg(test)]
    pub fn backlog(&self) -> Work {
        Work {
            prompt: self.backlog_prompt.load(Ordering::Relaxed),
            output: self.backlog_output.load(Ordering::Relaxed),
        }
    }

    pub fn accept(&self, work: Work) {
        self.backlog_prompt.fetch_add(work.prompt, Ordering::Relaxed);
        self.backlog_output.fetch_add(work.output, Ordering::Relaxed);
    }

    /// `work` ran, or will not run after all.
    pub fn settle(&self, work: Work) {
        for (backlog, n) in [(&self.backlog_prompt, work.prompt), (&self.backlog_output, work.output)] {
            let _ = backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n)));
        }
    }

    /// One step ran `ran.prompt` prompt tokens and `ran.output` decodes in `elapsed`.
    pub fn record_step(&self, ran: Work, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if ran.prompt > 0 {
            smooth(&self.prompt_token_secs, secs / ran.prompt as f64, 0.2);
        } else if ran.output > 0 {
            smooth(&self.decode_step_secs, secs, 0.2);
            smooth(&self.output_token_secs, secs / ran.output as f64, 0.2);
        }
    }

    /// A sequence ended on its own (not cancelled) after `generated` tokens.
    pub fn record_output(&self, generated: usize) {
        smooth(&self.mean_output, generated as f64, 0.1);
    }
}

/// Whether a sequence decoding `remaining` more tokens by `deadline` needs
/// every step to itself and the other decodes: it would make it at the
/// speed of decode-only steps, but not with much slack (a prompt chunk
/// makes a step several times longer).
pub(crate) fn at_risk(remaining: usize, deadline: Instant, now: Instant, decode_step: Duration) -> bool {
    let left = deadline.saturating_duration_since(now);
    let need = decode_step.mul_f64(remaining as f64);
    need <= left && need.mul_f64(1.5) > left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_is_the_backlog_at_the_measured_cost_of_each_kind_of_token() {
        let load = Load::default();
        assert_eq!(load.eta(Work { prompt: 100, output: 10 }), None, "no estimate before a measurement");
        // Prompt tokens: 1 ms each (a step's decodes ride along free).
        load.record_step(Work { prompt: 500, output: 3 }, Duration::from_millis(500));
        assert_eq!(load.eta(Work { prompt: 100, output: 10 }), None, "decode cost not measured yet");
        // Decodes alone: 4 sequences in a 20 ms step, 5 ms a token.
        load.record_step(Work { prompt: 0, output: 4 }, Duration::from_millis(20));
        load.accept(Work { prompt: 3000, output: 200 });
        let eta = load.eta(Work { prompt: 1000, output: 100 }).unwrap();
        assert!((eta.as_secs_f64() - (4.0 + 1.5)).abs() < 1e-9, "{eta:?}");
        // A long output is bounded by decode steps, whatever the batch shares.
        let eta = load.eta_alone(Work { prompt: 10, output: 1000 }).unwrap();
        assert!((eta.as_secs_f64() - 20.0).abs() < 1e-9, "{eta:?}");
        load.settle(Work { prompt: 5000, output: 150 });
        assert_eq!(load.backlog(), Work { prompt: 0, output: 50 }, "settling more than is left stops at zero");
    }

    #[test]
    fn expected_output_is_capped_by_twice_the_recent_mean_unless_nothing_can_stop_it() {
        let load = Load::default();
        assert_eq!(load.expected(10, 8000, true), Work { prompt: 10, output: 8000 });
        load.record_output(50);
        assert_eq!(load.expected(10, 8000, true), Work { prompt: 10, output: 100 });
        assert_eq!(load.expected(10, 20, true).output, 20);
        assert_eq!(load.expected(10, 8000, false).output, 8000, "no stop token: it runs to max_tokens");
    }

    #[test]
    fn a_sequence_is_at_risk_only_when_it_can_still_make_it_but_barely() {
        let now = Instant::now();
        let step = Duration::from_millis(100);
        assert!(!at_risk(10, now + Duration::from_secs(10), now, step), "plenty of slack");
        assert!(at_risk(10, now + Duration::from_millis(1200), now, step), "little slack");
        assert!(!at_risk(10, now + Duration::from_millis(500), now, step), "lost anyway");
    }
}
