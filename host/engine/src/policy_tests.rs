//! Sampling policies on the real model: each kind of plan carried out.

use std::sync::{Arc, Mutex};

use super::tests::{collect, engine, greedy, prompt};
use crate::{
    EngineConfig, GenerateRequest, GenerationError, PolicyError, SamplingPolicy, StepPlan, StopReason, TokenEvent,
};

/// A policy that runs a script of plans and records what it saw.
#[derive(Debug, Default)]
struct Scripted {
    plans: Vec<StepPlan>,
    seen: Arc<Mutex<Seen>>,
    pick_last: bool,
    fail: bool,
}

#[derive(Debug, Default)]
struct Seen {
    lasts: Vec<Option<u32>>,
    candidates: Vec<Vec<(u32, f32)>>,
    chosen: Vec<u32>,
}

impl SamplingPolicy for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }

    fn step(&mut self, last: Option<u32>) -> Result<StepPlan, PolicyError> {
        if self.fail {
            return Err(PolicyError::Failed("the scripted policy fails".into()));
        }
        self.seen.lock().unwrap().lasts.push(last);
        Ok(if self.plans.is_empty() { StepPlan::default() } else { self.plans.remove(0) })
    }

    fn choose(&mut self, candidates: &[(u32, f32)]) -> Result<u32, PolicyError> {
        let pick = if self.pick_last { candidates.last() } else { candidates.first() };
        let id = pick.map(|c| c.0).ok_or_else(|| PolicyError::Failed("no candidates".into()))?;
        let mut seen = self.seen.lock().unwrap();
        seen.candidates.push(candidates.to_vec());
        seen.chosen.push(id);
        Ok(id)
    }
}

fn with_policy(tokens: Vec<u32>, max_tokens: usize, policy: Scripted) -> GenerateRequest {
    GenerateRequest { policy: Some(Box::new(policy)), ..greedy(tokens, max_tokens) }
}

#[test]
fn default_plans_give_the_same_tokens_as_no_policy() {
    let e = engine(EngineConfig::default());
    let p = prompt("Name three colours.");
    let plain = collect(e.generate(greedy(p.clone(), 16)).unwrap());
    let planned = collect(e.generate(with_policy(p, 16, Scripted::default())).unwrap());
    assert_eq!(plain, planned);
}

#[test]
fn forced_tokens_are_emitted_then_stop_ends_the_sequence() {
    let e = engine(EngineConfig::default());
    let forced = prompt("forced words")[..3].to_vec();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let plans = vec![
        StepPlan { forced: forced.clone(), ..StepPlan::default() },
        StepPlan::default(),
        StepPlan { stop: true, ..StepPlan::default() },
    ];
    let policy = Scripted { plans, seen: seen.clone(), ..Scripted::default() };
    let (ids, reason) = collect(e.generate(with_policy(prompt("Say something."), 20, policy)).unwrap());
    assert_eq!(ids[..3], forced[..]);
    assert_eq!(ids.len(), 4, "the forced tokens, one sampled token, then stop");
    assert_eq!(reason, StopReason::Stop);
    // The policy saw the last forced token before the sampled one.
    assert_eq!(seen.lock().unwrap().lasts, [None, Some(forced[2]), Some(ids[3])]);
}

#[test]
fn an_allowed_set_confines_every_token() {
    let e = engine(EngineConfig::default());
    let allowed: Vec<u32> = prompt("0 1 2 3 4 5 6 7 8 9").into_iter().collect();
    let mut words = vec![0u64; 49152 / 64 + 1];
    for &t in &allowed {
        words[t as usize / 64] |= 1 << (t % 64);
    }
    let plans = vec![StepPlan { allowed: Some(words), ..StepPlan::default() }; 12];
    let policy = Scripted { plans, ..Scripted::default() };
    let (ids, _) = collect(e.generate(with_policy(prompt("Write a poem."), 12, policy)).unwrap());
    assert_eq!(ids.len(), 12);
    assert!(ids.iter().all(|t| allowed.contains(t)), "{ids:?} outside {allowed:?}");
}

#[test]
fn choose_from_hands_the_top_candidates_to_the_policy() {
    let e = engine(EngineConfig::default());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let plans = vec![StepPlan { choose_from: 4, ..StepPlan::default() }; 6];
    let policy = Scripted { plans, seen: seen.clone(), pick_last: true, ..Scripted::default() };
    let (ids, _) = collect(e.generate(with_policy(prompt("Hello!"), 6, policy)).unwrap());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.chosen[..ids.len()], ids[..]);
    for candidates in &seen.candidates {
        assert_eq!(candidates.len(), 4);
        assert!(candidates.windows(2).all(|w| w[0].1 >= w[1].1), "most likely first: {candidates:?}");
    }
}

#[test]
fn a_failing_policy_fails_only_its_request() {
    let e = engine(EngineConfig::default());
    let policy = Scripted { fail: true, ..Scripted::default() };
    let mut failing = e.generate(with_policy(prompt("Hi"), 8, policy)).unwrap();
    let fine = e.generate(greedy(prompt("Hi"), 8)).unwrap();
    let event = loop {
        match failing.blocking_next() {
            Some(TokenEvent::Token { .. }) => continue,
            other => break other,
        }
    };
    let expected = GenerationError::Policy(PolicyError::Failed("the scripted policy fails".into()));
    assert_eq!(event, Some(TokenEvent::Failed(expected)));
    assert_eq!(collect(fine).0.len(), 8);
}

#[test]
fn a_plan_outside_the_vocabulary_fails_naming_the_policy() {
    let e = engine(EngineConfig::default());
    let policy =
        Scripted { plans: vec![StepPlan { forced: vec![u32::MAX], ..StepPlan::default() }], ..Scripted::default() };
    let mut stream = e.generate(with_policy(prompt("Hi"), 8, policy)).unwrap();
    match stream.blocking_next() {
        Some(TokenEvent::Failed(GenerationError::Policy(PolicyError::InvalidPlan { policy, problem }))) => {
            assert_eq!(policy, "scripted");
            assert!(problem.contains("outside the vocabulary"), "{problem}");
        }
        other => panic!("expected the policy's invalid plan, got {other:?}"),
    }
}
