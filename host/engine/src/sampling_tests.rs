//! Properties of the host sampler.

use super::*;

fn logits() -> Vec<f32> {
    (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect()
}

fn params(temperature: f32) -> SamplingParams {
    SamplingParams { temperature, seed: Some(7), ..SamplingParams::default() }
}

fn ranked(l: &[f32]) -> Vec<u32> {
    top_n(l, l.len()).into_iter().map(|c| c.0).collect()
}

#[test]
fn greedy_picks_the_argmax() {
    let l = logits();
    let mut s = Sampler::new(SamplingParams::greedy(), &[], false, 0);
    assert_eq!(s.sample(&mut l.clone()).token, ranked(&l)[0]);
}

#[test]
fn top_k_never_leaves_the_top_k() {
    let l = logits();
    let top: Vec<u32> = ranked(&l)[..5].to_vec();
    let mut s = Sampler::new(SamplingParams { top_k: 5, ..params(5.0) }, &[], false, 0);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let t = s.sample(&mut l.clone()).token;
        assert!(top.contains(&t), "token {t} outside the top 5");
        seen.insert(t);
    }
    assert_eq!(seen.len(), 5, "a high temperature should reach all five");
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // Probabilities 0.5, 0.3, 0.2 (logits are their logs): p = 0.6 keeps two.
    let l = vec![0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
    let mut s = Sampler::new(SamplingParams { top_p: 0.6, ..params(1.0) }, &[], false, 0);
    let draws: Vec<u32> = (0..500).map(|_| s.sample(&mut l.clone()).token).collect();
    assert!(draws.iter().all(|&t| t < 2));
    assert!(draws.contains(&0) && draws.contains(&1));
}

#[test]
fn top_p_beyond_the_sorted_window_stays_exact() {
    // Flat distribution over 1000 tokens: p = 0.5 needs 500 of them (> the 256 window).
    let l = vec![0.0f32; 1000];
    let mut s = Sampler::new(SamplingParams { top_p: 0.5, ..params(1.0) }, &[], false, 0);
    let distinct: std::collections::HashSet<u32> = (0..5000).map(|_| s.sample(&mut l.clone()).token).collect();
    assert!(distinct.len() > 256 && distinct.len() <= 500, "{}", distinct.len());
}

#[test]
fn min_p_drops_tokens_below_the_floor() {
    // Probabilities proportional to 1, 0.5, 0.05: min_p 0.1 drops the third.
    let l = vec![0.0, 0.5f32.ln(), 0.05f32.ln()];
    let mut s = Sampler::new(SamplingParams { min_p: 0.1, ..params(1.0) }, &[], false, 0);
    assert!((0..2000).all(|_| s.sample(&mut l.clone()).token != 2));
}

#[test]
fn same_seed_same_tokens_and_another_seed_differs() {
    let l = logits();
    let run = |seed| {
        let mut s = Sampler::new(SamplingParams { seed: Some(seed), ..params(2.0) }, &[], false, 0);
        (0..50).map(|_| s.sample(&mut l.clone()).token).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..params(1.0) }, &[0, 1], false, 0);
    let mut l = vec![4.0, -4.0, 4.0];
    s.apply_bias_and_penalties(&mut l);
    assert_eq!(l, vec![2.0, -8.0, 4.0]);
}

#[test]
fn frequency_and_presence_penalties_follow_generated_counts() {
    let mut s = Sampler::new(
        SamplingParams { frequency_penalty: 0.5, presence_penalty: 0.25, ..SamplingParams::greedy() },
        &[2],
        false,
        0,
    );
    s.record(1);
    s.record(1);
    let mut l = vec![1.0, 1.0, 1.0];
    s.apply_bias_and_penalties(&mut l);
    // Token 1 generated twice: 1 - (2 * 0.5 + 0.25); prompt token 2 is not penalised.
    assert_eq!(l, vec![1.0, -0.25, 1.0]);
}

#[test]
fn logit_bias_can_force_a_token_and_logprob_stays_the_models() {
    let l = vec![3.0f32, 0.0, 0.0];
    let mut s = Sampler::new(SamplingParams { logit_bias: vec![(2, 100.0)], ..SamplingParams::greedy() }, &[], true, 2);
    let out = s.sample(&mut l.clone());
    assert_eq!(out.token, 2);
    let log_z = (3f32.exp() + 2.0).ln();
    let logprob = out.logprob.expect("asked for");
    assert!((logprob - (0.0 - log_z)).abs() < 1e-5, "{logprob}");
    assert_eq!(out.top_logprobs[0].0, 0);
    assert!((out.top_logprobs[0].1 - (3.0 - log_z)).abs() < 1e-5);
}

#[test]
fn out_of_range_parameters_name_their_field() {
    let cases = [
        (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
        (SamplingParams { temperature: 2.5, ..Default::default() }, "temperature"),
        (SamplingParams { top_p: -0.1, ..Default::default() }, "top_p"),
        (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
        (SamplingParams { min_p: 2.0, ..Default::default() }, "min_p"),
        (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
        (SamplingParams { repetition_penalty: 11.0, ..Default::default() }, "repetition_penalty"),
        (SamplingParams { presence_penalty: 3.0, ..Default::default() }, "presence_penalty"),
        (SamplingParams { logit_bias: vec![(5000, 1.0)], ..Default::default() }, "logit_bias"),
    ];
    // A top_p of 0 keeps only the most likely token (tiny values round to it as f32).
    assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate(1000).is_ok());
    for (p, field) in cases {
        match p.validate(1000) {
            Err(crate::EngineError::Validation { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn logprobs_are_only_computed_when_asked_for() {
    let mut s = Sampler::new(SamplingParams::greedy(), &[], false, 0);
    assert_eq!(s.sample(&mut logits()).logprob, None);
}

#[test]
fn a_vanishing_temperature_is_greedy_not_nan() {
    let l = logits();
    let best = ranked(&l)[0];
    for t in [1e-30f32, 1e-39, 1e-6] {
        let mut s = Sampler::new(SamplingParams { temperature: t, min_p: 0.05, ..params(1.0) }, &[], false, 0);
        assert_eq!(s.sample(&mut l.clone()).token, best, "temperature {t}");
    }
}

#[test]
fn top_p_applies_before_min_p() {
    // Probabilities 0.5, 0.3, 0.2. top_p 0.6 on the full distribution keeps
    // {0, 1}; min_p 0.5 (floor 0.25) keeps them too. Were min_p first, top_p
    // would measure 0.6 of the 0.8 left and keep only token 0.
    let l = vec![0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
    let mut s = Sampler::new(SamplingParams { top_p: 0.6, min_p: 0.5, ..params(1.0) }, &[], false, 0);
    let draws: std::collections::HashSet<u32> = (0..400).map(|_| s.sample(&mut l.clone()).token).collect();
    assert_eq!(draws, [0, 1].into_iter().collect());
}

#[test]
fn masking_a_word_at_a_time_keeps_exactly_the_allowed_tokens() {
    // Whole words allowed and refused, mixed words, and a last word longer
    // than the vocabulary (150 tokens: 2 words and 22 bits).
    let words = [u64::MAX, 0, 0x8000_0000_0000_0001 | (0b1011 << 20)];
    let mut l: Vec<f32> = (0..150).map(|i| i as f32).collect();
    assert!(mask_disallowed(&mut l, &words));
    for (id, logit) in l.iter().enumerate() {
        let allowed = words[id / 64] >> (id % 64) & 1 == 1;
        assert_eq!(logit.is_finite(), allowed, "token {id}");
    }
    // Bits past the vocabulary allow nothing; a missing word refuses its tokens.
    let mut l = vec![0.0; 150];
    assert!(!mask_disallowed(&mut l, &[0, 0, 1 << 30]));
    assert!(l.iter().all(|x| *x == f32::NEG_INFINITY));
    let mut l = vec![0.0; 150];
    assert!(mask_disallowed(&mut l, &[1]));
    assert_eq!(l.iter().filter(|x| x.is_finite()).count(), 1);
}
