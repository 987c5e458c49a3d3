//! A post-processor that prefixes every chunk, and the end, with `<TAG>`.
//!
//! The tag lives in the component's data as `KILN-TAG:` followed by seven
//! bytes; the hot-reload test patches those bytes to make many versions of
//! one build, each telling which version produced every piece of an answer.

#![forbid(unsafe_code)]

use kiln_sdk::post_process::{ChunkAction, Emitted, FinishReason, Options, PostProcess};

/// What the test looks for and rewrites; `black_box` keeps the bytes in the
/// data section instead of folded into code.
static TAG: [u8; 16] = *b"KILN-TAG:v000000";

fn tag() -> String {
    let bytes = std::hint::black_box(&TAG);
    String::from_utf8_lossy(&bytes[9..]).into_owned()
}

#[derive(Debug)]
pub struct Tagger;

impl PostProcess for Tagger {
    fn new(_: &Options) -> Result<Self, String> {
        Ok(Tagger)
    }

    fn on_chunk(&mut self, text: &str) -> ChunkAction {
        ChunkAction::emit(format!("<{}>{text}", tag()))
    }

    fn finish(&mut self, _: FinishReason) -> Emitted {
        format!("<{}>", tag()).into()
    }
}

kiln_sdk::export_post_process!(Tagger);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_sdk::testing::{Ended, run_post_process};

    #[test]
    fn every_chunk_and_the_end_carry_the_tag() {
        let out = run_post_process(&mut Tagger, &["a", "b"], FinishReason::Stop);
        assert_eq!(out, ("<v000000>a<v000000>b<v000000>".into(), Ended::Finished(FinishReason::Stop)));
    }
}
