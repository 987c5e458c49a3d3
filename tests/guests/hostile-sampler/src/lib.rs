//! A sampler that misbehaves on purpose, chosen by its `mode` config value:
//! `loop` (never returns), `memory` (allocates without end), `trap`
//! (panics), `garbage` (forces a token outside the vocabulary), `refuse`
//! (refuses to start), `fail` (fails its first step with a message),
//! `flaky` (fails the first step of 3 prompts in 10, by the prompt's first
//! token). Any other mode behaves: it samples normally.
//! The runtime must contain each to the request that uses it.

#![forbid(unsafe_code)]

use kiln_sdk::Config;
use kiln_sdk::sampler::{Sampler, SamplingParams, StepPlan};

#[derive(Debug)]
pub struct Hostile {
    mode: String,
    hoard: Vec<Vec<u8>>,
    first_token: u32,
}

impl Sampler for Hostile {
    fn new(_: SamplingParams, prompt: &[u32], config: &Config) -> Result<Self, String> {
        let mode = config.get("mode").unwrap_or("behave").to_string();
        if mode == "refuse" {
            return Err("this sampler refuses to start".into());
        }
        Ok(Hostile { mode, hoard: Vec::new(), first_token: prompt.first().copied().unwrap_or(0) })
    }

    fn step(&mut self, _last: Option<u32>) -> Result<StepPlan, String> {
        Ok(match self.mode.as_str() {
            "loop" => loop {
                std::hint::black_box(&mut self.hoard);
            },
            "memory" => loop {
                self.hoard.push(vec![1u8; 1 << 20]);
            },
            "trap" => panic!("the hostile sampler panics on purpose"),
            "garbage" => StepPlan::force(vec![u32::MAX]),
            "fail" => return Err("the hostile sampler fails on purpose".into()),
            "flaky" if self.first_token % 10 < 3 => return Err("the hostile sampler fails 3 times in 10".into()),
            _ => StepPlan::sample(),
        })
    }
}

kiln_sdk::export_sampler!(Hostile);
