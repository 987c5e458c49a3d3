//! Keeps the pool's other workers awake for the length of a step.
//!
//! A step runs ~100 parallel products with short serial stretches between
//! them (norms, RoPE, quantizing the next input). Left to themselves, idle
//! rayon workers back off into `sched_yield` and then a futex sleep, and the
//! next product waits for them to be woken: on a 1B model's decode step that
//! was ~5% of the samples in the scheduler alone. llama.cpp's workers spin
//! between a step's operations for the same reason. Here every other worker
//! runs a loop that takes the step's tasks as they appear
//! (`rayon::yield_now`) and spins meanwhile, until the step ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, TryLockError};

use rayon::Yield;

/// Held by the one step whose workers poll. Two polling steps at once could
/// deadlock: each stepper, waiting inside its own step, may pick up the other
/// step's polling loop and then spin until that step ends. Steps of several
/// engines in one process (as in tests) therefore take turns.
static POLLING: Mutex<()> = Mutex::new(());

/// Runs `step` on a pool worker while the pool's other workers poll for its
/// tasks instead of sleeping. Returns `step`'s result.
pub(crate) fn with_warm_workers<T: Send>(step: impl FnOnce() -> T + Send) -> T {
    // From outside the pool (an engine's thread), wait for a step that holds
    // it: a second step running beside a polling one, in the same pool, was
    // seen to deadlock (two engines in one test process; one's step taken
    // up by the other's polling worker). Inside the pool a worker must not
    // block (the polling step's broadcast needs every worker): it runs
    // without polling.
    let held = match rayon::current_thread_index() {
        None => Ok(POLLING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())),
        Some(_) => POLLING.try_lock(),
    };
    let _polling = match held {
        Ok(guard) => guard,
        // A step that panicked held it; the lock guards no data.
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return rayon::scope(|_| step()),
    };
    let done = AtomicBool::new(false);
    let done = &done;
    rayon::scope(|scope| {
        let stepper = rayon::current_thread_index();
        // Posted before the step makes any task: a worker takes its broadcast
        // before it steals, so no task of this step sits below a polling loop
        // that waits for the step to end.
        scope.spawn_broadcast(move |_, ctx| {
            // The stepping thread runs its own copy when it next looks for
            // work: polling there would wait on a flag only it can set.
            if Some(ctx.index()) == stepper {
                return;
            }
            while !done.load(Ordering::Acquire) {
                // With nothing to take, spin: a step's serial stretches are
                // microseconds.
                if rayon::yield_now() != Some(Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        // Ends the polling even if the step panics: the scope waits for the
        // polling loops before it hands the panic on.
        let _end = EndPolling(done);
        step()
    })
}

struct EndPolling<'a>(&'a AtomicBool);

impl Drop for EndPolling<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use rayon::prelude::*;

    use super::with_warm_workers;

    /// A step shaped like a forward pass: several parallel products in a
    /// row, each split into many small tasks (without the one-polling-step
    /// rule, two engines deadlock here within seconds).
    fn step(seed: u64) -> u64 {
        let product = |p: u64| (0..10_000u32).into_par_iter().with_max_len(64).map(move |i| i as u64 * (seed + p));
        (0..8).map(|p| product(p).sum::<u64>()).sum()
    }

    fn expected(seed: u64) -> u64 {
        (0..8).map(|p| (0..10_000u64).map(|i| i * (seed + p)).sum::<u64>()).sum()
    }

    /// Runs `f` on its own thread and fails (rather than hangs) if it has not
    /// finished within a generous bound: a deadlock here never finishes.
    fn finishes(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(120)).expect("steps did not finish: workers left polling");
    }

    #[test]
    fn steps_from_two_engines_at_once_both_finish_with_their_results() {
        finishes(|| {
            let engines: Vec<_> = (1..=2u64)
                .map(|seed| {
                    std::thread::spawn(move || {
                        for _ in 0..200 {
                            assert_eq!(with_warm_workers(|| step(seed)), expected(seed));
                        }
                    })
                })
                .collect();
            for engine in engines {
                engine.join().expect("engine thread");
            }
        });
    }

    #[test]
    fn a_step_that_panics_hands_on_its_panic_and_later_steps_still_run() {
        finishes(|| {
            let panicked = std::panic::catch_unwind(|| with_warm_workers(|| -> u64 { panic!("step failed") }));
            assert!(panicked.is_err());
            assert_eq!(with_warm_workers(|| step(3)), expected(3));
        });
    }
}
