//! The SDK's own pieces, natively.

use crate::Config;
use crate::post_process::{ChunkAction, Emitted, FinishReason, Options, PostProcess};
use crate::sampler::{Candidate, Sampler, SamplingParams, StepPlan, TokenSet};
use crate::testing::{Ended, run_post_process, run_sampler, with_vocabulary};
use crate::{Vocabulary, vocabulary};

#[test]
fn token_sets_are_bitsets_over_ids() {
    let set: TokenSet = [3, 64, 130].into_iter().collect();
    assert!(set.contains(3) && set.contains(64) && set.contains(130));
    assert!(!set.contains(4) && !set.contains(65) && !set.contains(100_000));
    assert_eq!(set.words().len(), 3);
    assert_eq!(set.iter().collect::<Vec<_>>(), [3, 64, 130]);
    assert!(TokenSet::with_size(100).is_empty());
    assert_eq!(TokenSet::with_size(129).words().len(), 3);
}

#[test]
fn config_values_parse_or_name_their_key() {
    let config = Config::new([("n", "3"), ("word", "x")]);
    assert_eq!(config.get("word"), Some("x"));
    assert_eq!(config.parse_or("n", 1u32), Ok(3));
    assert_eq!(config.parse_or("missing", 7u32), Ok(7));
    assert!(config.parse_or::<u32>("word", 0).unwrap_err().contains("`word`"));
}

#[test]
fn the_vocabulary_is_the_installed_one_in_native_tests() {
    let vocab = Vocabulary::new(vec![b"a".to_vec(), b"b".to_vec()], vec![1]);
    with_vocabulary(vocab.clone(), || {
        assert_eq!(*vocabulary(), vocab);
        assert_eq!(vocabulary().token(0), b"a");
        assert!(vocabulary().is_stop(1));
    });
}

/// Forces "1", then only even ids, then lets the sampler choose the last candidate.
struct Scripted {
    step: usize,
}

impl Sampler for Scripted {
    fn new(_: SamplingParams, _: &[u32], _: &Config) -> Result<Self, String> {
        Ok(Scripted { step: 0 })
    }

    fn step(&mut self, _: Option<u32>) -> Result<StepPlan, String> {
        self.step += 1;
        Ok(match self.step {
            1 => StepPlan::force(vec![1]),
            2 => StepPlan::only((0..10).filter(|i| i % 2 == 0).collect()),
            3 => StepPlan { choose_from: 3, ..StepPlan::sample() },
            _ => StepPlan::stop(),
        })
    }

    fn choose(&mut self, candidates: &[Candidate]) -> u32 {
        candidates.last().unwrap().id
    }
}

#[test]
fn the_sampler_harness_carries_out_every_kind_of_plan() {
    let mut s = Scripted::new(SamplingParams::default(), &[], &Config::default()).unwrap();
    // Logits rise with the id: 9 is the model's favourite.
    let out = run_sampler(&mut s, |_| (0..10).map(|i| i as f32).collect(), 10);
    assert_eq!(out, [1, 8, 7]);
}

struct Upper;

impl PostProcess for Upper {
    fn new(_: &Options) -> Result<Self, String> {
        Ok(Upper)
    }

    fn on_chunk(&mut self, text: &str) -> ChunkAction {
        if text.contains('!') {
            ChunkAction::stop(text.replace('!', "").to_uppercase())
        } else {
            ChunkAction::emit(text.to_uppercase())
        }
    }

    fn finish(&mut self, _: FinishReason) -> Emitted {
        ".".into()
    }
}

#[test]
fn the_post_process_harness_reports_how_the_stream_ended() {
    let mut p = Upper::new(&Options::default()).unwrap();
    assert_eq!(
        run_post_process(&mut p, &["ab", "c"], FinishReason::Length),
        ("ABC.".into(), Ended::Finished(FinishReason::Length))
    );
    assert_eq!(run_post_process(&mut p, &["ab", "c!", "d"], FinishReason::Stop), ("ABC".into(), Ended::Stopped));
}
