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
/// step's polling loop and then spin until that step ends. A step that finds
/// it taken (two engines in one process, as in tests) runs without polling;
/// a worker of its own that polls for the other step only waits for a step
/// that needs nothing from it.
static POLLING: Mutex<()> = Mutex::new(());

/// Runs `step` on a pool worker while the pool's other workers poll for its
/// tasks instead of sleeping. Returns `step`'s result.
pub(crate) fn with_warm_workers<T: Send>(step: impl FnOnce() -> T + Send) -> T {
    let _polling = match POLLING.try_lock() {
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
