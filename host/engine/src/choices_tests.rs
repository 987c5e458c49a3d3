//! Several answers to one prompt (`n`): the prompt runs once, each answer
//! samples on as its own sequence with its own stream.

use crate::tests::{collect, engine, greedy, prompt};
use crate::{Backend, EngineConfig, EngineError, GenerateRequest, SamplingParams, StopReason};

fn wait_for_idle(e: &crate::Engine) {
    let start = std::time::Instant::now();
    while e.stats().active() > 0 || e.stats().kv_reserved_bytes() > 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the engine kept sequences or budget");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn greedy_answers_to_one_prompt_all_match_the_single_answer() {
    let e = engine(EngineConfig::default());
    let p = prompt("Name three colours.");
    let single = collect(e.generate(greedy(p.clone(), 12)).unwrap());
    let request = GenerateRequest { n: 3, ..greedy(p, 12) };
    let streams = e.submit_choices(request.validate(e.limits()).unwrap()).unwrap();
    assert_eq!(streams.len(), 3);
    for (i, stream) in streams.into_iter().enumerate() {
        assert_eq!(collect(stream), single, "answer {i}");
    }
    wait_for_idle(&e);
}

#[test]
fn seeded_answers_are_reproducible_and_not_all_alike() {
    let e = engine(EngineConfig::default());
    let p = prompt("Write a short poem about rain.");
    let run = || {
        let params = SamplingParams { temperature: 1.0, seed: Some(7), ..SamplingParams::default() };
        let request = GenerateRequest { prompt_tokens: p.clone(), params, max_tokens: 16, n: 4, ..Default::default() };
        let streams = e.submit_choices(request.validate(e.limits()).unwrap()).unwrap();
        streams.into_iter().map(collect).collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run(), "the same seed gives the same answers");
    assert!(first.iter().all(|(ids, reason)| !ids.is_empty() && (*reason == StopReason::Length || ids.len() < 16)));
    assert!(first.iter().any(|a| *a != first[0]), "four sampled answers were identical: {first:?}");
    wait_for_idle(&e);
}

#[test]
fn more_than_eight_answers_or_one_stream_for_several_are_refused() {
    let e = engine(EngineConfig::default());
    let p = prompt("hi");
    let err = GenerateRequest { n: 9, ..greedy(p.clone(), 4) }.validate(e.limits()).unwrap_err();
    assert!(matches!(&err, EngineError::Validation { field, message } if field == "n" && message.contains("1 and 8")));
    let several = GenerateRequest { n: 2, ..greedy(p, 4) }.validate(e.limits()).unwrap();
    let err = e.submit(several).unwrap_err();
    assert!(matches!(&err, EngineError::Validation { field, .. } if field == "n"), "{err}");
}

#[test]
fn cancelling_every_answer_frees_the_batch_and_the_budget() {
    let e = engine(EngineConfig::default());
    let request = GenerateRequest { n: 3, ..greedy(prompt("Count to one hundred."), 200) };
    let mut streams = e.submit_choices(request.validate(e.limits()).unwrap()).unwrap();
    // Let every answer start, then hang up.
    for s in &mut streams {
        s.blocking_next().expect("a first token");
    }
    drop(streams);
    wait_for_idle(&e);
}
