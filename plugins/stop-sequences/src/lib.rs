//! stop-sequences: ends the output right before the first stop sequence.
//! Text that may be the start of a stop sequence is held back until the
//! next chunk settles it, so a match split across chunks never leaks.

#![forbid(unsafe_code)]

use kiln_sdk::post_process::{ChunkAction, Emitted, FinishReason, Options, PostProcess};
use kiln_stop::StopMatcher;

#[derive(Debug)]
pub struct StopSequences {
    matcher: StopMatcher,
}

impl PostProcess for StopSequences {
    fn new(options: &Options) -> Result<Self, String> {
        if options.stop.iter().any(String::is_empty) {
            return Err("an empty stop sequence would stop everything".into());
        }
        Ok(StopSequences { matcher: StopMatcher::new(options.stop.clone()) })
    }

    fn on_chunk(&mut self, text: &str) -> ChunkAction {
        let released = self.matcher.push(text);
        if released.stopped { ChunkAction::stop(released.text) } else { ChunkAction::emit(released.text) }
    }

    fn finish(&mut self, _: FinishReason) -> Emitted {
        self.matcher.finish().into()
    }
}

kiln_sdk::export_post_process!(StopSequences);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_sdk::testing::{Ended, run_post_process};

    fn run(stops: &[&str], chunks: &[&str]) -> (String, Ended) {
        let stop = stops.iter().map(|s| s.to_string()).collect();
        let mut p = StopSequences::new(&Options { stop, ..Options::default() }).unwrap();
        run_post_process(&mut p, chunks, FinishReason::Length)
    }

    #[test]
    fn a_stop_sequence_straddling_chunks_never_leaks() {
        assert_eq!(run(&["STOP"], &["hello ST", "O", "P and more"]), ("hello ".into(), Ended::Stopped));
    }

    #[test]
    fn a_partial_match_that_does_not_complete_is_released() {
        assert_eq!(run(&["STOP"], &["a ST", "ART"]), ("a START".into(), Ended::Finished(FinishReason::Length)));
        assert_eq!(run(&["STOP"], &["a ST"]), ("a ST".into(), Ended::Finished(FinishReason::Length)));
    }

    #[test]
    fn the_earliest_of_several_sequences_wins() {
        assert_eq!(run(&["\n\n", "User:"], &["one\nUser: two\n\n"]), ("one\n".into(), Ended::Stopped));
    }

    #[test]
    fn multibyte_text_is_held_on_character_boundaries() {
        assert_eq!(run(&["日本"], &["今日は日", "本語"]), ("今日は".into(), Ended::Stopped));
    }

    #[test]
    fn an_empty_stop_sequence_is_refused() {
        assert!(StopSequences::new(&Options { stop: vec![String::new()], ..Options::default() }).is_err());
    }
}
