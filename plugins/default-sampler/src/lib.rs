//! default-sampler: the request's parameters, every step. The pipeline's
//! sampler when nothing else is configured; the yardstick for the cost of
//! the plugin boundary.

#![forbid(unsafe_code)]

use kiln_sdk::Config;
use kiln_sdk::sampler::{Sampler, SamplingParams, StepPlan};

#[derive(Debug)]
pub struct DefaultSampler;

impl Sampler for DefaultSampler {
    fn new(_: SamplingParams, _: &[u32], _: &Config) -> Result<Self, String> {
        Ok(DefaultSampler)
    }

    fn step(&mut self, _last: Option<u32>) -> Result<StepPlan, String> {
        Ok(StepPlan::sample())
    }
}

kiln_sdk::export_sampler!(DefaultSampler);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_sdk::testing::run_sampler;

    #[test]
    fn samples_what_the_model_prefers() {
        let mut s = DefaultSampler::new(SamplingParams::default(), &[1, 2], &Config::default()).unwrap();
        let out = run_sampler(&mut s, |generated| vec![0.0, generated.len() as f32, 1.5], 3);
        assert_eq!(out, [2, 2, 1]);
    }
}
