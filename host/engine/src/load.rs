//! What the engine has taken on and how fast it gets through it: the
//! estimate behind refusing, at once, a request that could not finish
//! before its deadline (rather than working on it and failing it late),
//! and behind putting new prompts after sequences about to miss theirs.
//!
//! Work is counted in tokens run through the model: a request's prompt plus
//! the output it is expected to generate (its `max_tokens`; for a request
//! that may stop early, twice the recent mean output when that is smaller:
//! chat clients often leave `max_tokens` at the whole context and stop far
//! short of it). A request finishes no sooner than the backlog ahead of it
//! plus its own tokens at the measured throughput, nor sooner than its
//! output at one token per decode step.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Busy time a throughput sample spans: long enough to mix prefill and
/// decode steps, short enough to follow a change of load.
const SAMPLE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct Load {
    /// Tokens accepted (queued or running) and not yet run.
    backlog: AtomicUsize,
    /// Tokens per second while busy, smoothed (f64 bits; 0: not measured yet).
    tokens_per_sec: AtomicU64,
    /// Seconds a step of decodes alone takes, smoothed (f64 bits; 0: not measured yet).
    decode_step_secs: AtomicU64,
    /// Output tokens of sequences that finished, smoothed (f64 bits; 0: none yet).
    mean_output: AtomicU64,
    /// The throughput sample being gathered: tokens and busy time.
    sample: Mutex<(usize, Duration)>,
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

/// What one request is expected to cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Work {
    /// Prompt plus expected output, in tokens.
    pub tokens: usize,
    /// Expected output: decode steps, one token each.
    pub output: usize,
}

impl Load {
    /// What a request of `prompt` tokens and at most `max_tokens` of output
    /// is expected to cost; `may_stop_early`: it has stop tokens.
    pub fn expected(&self, prompt: usize, max_tokens: usize, may_stop_early: bool) -> Work {
        let mean = load_f64(&self.mean_output);
        let output =
            if may_stop_early && mean > 0.0 { max_tokens.min((2.0 * mean).ceil() as usize) } else { max_tokens };
        let output = output.max(1);
        Work { tokens: prompt + output, output }
    }

    /// How long until `work` would be done, after the backlog; `None`
    /// before anything was measured.
    pub fn eta(&self, work: Work) -> Option<Duration> {
        self.estimate(self.backlog() + work.tokens, work.output)
    }

    /// How long `work` takes with the engine to itself.
    pub fn eta_alone(&self, work: Work) -> Option<Duration> {
        self.estimate(work.tokens, work.output)
    }

    fn estimate(&self, tokens: usize, steps: usize) -> Option<Duration> {
        let rate = load_f64(&self.tokens_per_sec);
        let by_rate = (rate > 0.0).then(|| Duration::from_secs_f64(tokens as f64 / rate));
        let by_steps = self.decode_step().map(|step| step.mul_f64(steps as f64));
        by_rate.max(by_steps)
    }

    /// A decode-only step's duration; `None` before one was measured.
    pub fn decode_step(&self) -> Option<Duration> {
        let secs = load_f64(&self.decode_step_secs);
        (secs > 0.0).then(|| Duration::from_secs_f64(secs))
    }

    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    pub fn accept(&self, work: usize) {
        self.backlog.fetch_add(work, Ordering::Relaxed);
    }

    /// `work` tokens ran, or will not run after all.
    pub fn settle(&self, work: usize) {
        let _ = self.backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(work)));
    }

    /// One step ran `tokens` tokens in `elapsed`; `decode_only`: no prompt among them.
    pub fn record_step(&self, tokens: usize, elapsed: Duration, decode_only: bool) {
        if decode_only {
            smooth(&self.decode_step_secs, elapsed.as_secs_f64(), 0.2);
        }
        let mut sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        sample.0 += tokens;
        sample.1 += elapsed;
        if sample.1 >= SAMPLE {
            smooth(&self.tokens_per_sec, sample.0 as f64 / sample.1.as_secs_f64(), 0.5);
            *sample = (0, Duration::ZERO);
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
    fn the_backlog_over_the_measured_rate_is_the_eta() {
        let load = Load::default();
        assert_eq!(load.eta(Work { tokens: 100, output: 10 }), None, "no estimate before a measurement");
        load.record_step(500, Duration::from_millis(600), false);
        load.record_step(500, Duration::from_millis(400), false);
        load.accept(3000);
        let eta = load.eta(Work { tokens: 1000, output: 10 }).unwrap();
        assert!((eta.as_secs_f64() - 4.0).abs() < 1e-9, "{eta:?}");
        // A long output is bounded by decode steps, whatever the throughput.
        load.record_step(16, Duration::from_millis(20), true);
        let eta = load.eta_alone(Work { tokens: 1000, output: 1000 }).unwrap();
        assert!((eta.as_secs_f64() - 20.0).abs() < 1e-9, "{eta:?}");
        load.settle(5000);
        assert_eq!(load.backlog(), 0, "settling more than is left stops at zero");
    }

    #[test]
    fn expected_output_is_capped_by_twice_the_recent_mean_unless_nothing_can_stop_it() {
        let load = Load::default();
        assert_eq!(load.expected(10, 8000, true), Work { tokens: 8010, output: 8000 });
        load.record_output(50);
        assert_eq!(load.expected(10, 8000, true), Work { tokens: 110, output: 100 });
        assert_eq!(load.expected(10, 20, true).tokens, 30);
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
