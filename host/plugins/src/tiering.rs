//! Tiered compilation: a new plugin version serves from a baseline build
//! (Winch, a single-pass compiler: ~5x less work than Cranelift) as soon as
//! that is ready; once it has served for [`TIER_UP_DELAY`], its optimized
//! build (Cranelift) is made on a thread of its own and replaces the
//! baseline code in place.
//!
//! Why: on a machine whose cores the engine keeps busy, an optimizing
//! compile on the swap's path both delays the swap and takes its CPU from
//! the streams being decoded. The baseline build is short. The optimized
//! one waits, so a burst of versions (a rollout script, an editor saving
//! twice) pays only for the one that stays, and it runs serially on its own
//! thread, never among the forward pass's tasks on the global thread pool.
//!
//! Not at a lower priority: measured, the streams were slower with the
//! build at nice 19, not faster (likely a thread kept off the CPU while
//! holding a lock others wait for, such as an allocator arena's).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::runtime::Shared;
use crate::{PluginInfo, Who};

/// How new versions are compiled (`[plugins] compiler`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compiler {
    /// Serve from a baseline build at once; switch to the optimized build
    /// when a thread of its own has made it (and cached it), a second later.
    #[default]
    Tiered,
    /// Only the optimized build, made on the loading thread (and the thread
    /// pool): slower swaps, the fastest code from the first call.
    Optimized,
    /// Only the baseline build: the fastest swaps, slower code.
    Baseline,
}

impl std::str::FromStr for Compiler {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiered" => Ok(Compiler::Tiered),
            "optimized" => Ok(Compiler::Optimized),
            "baseline" => Ok(Compiler::Baseline),
            other => Err(format!("{other:?} is not a compiler: tiered, optimized or baseline")),
        }
    }
}

/// Which build a plugin version is serving from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Baseline,
    Optimized,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }
}

/// How long a version serves from its baseline build before its optimized
/// build is started.
pub const TIER_UP_DELAY: Duration = Duration::from_secs(1);

/// What a plugin serves from: its linked component, and the engine its
/// stores must be made with.
pub(crate) struct Code<P> {
    pub pre: P,
    pub engine: Engine,
    pub tier: Tier,
}

impl<P> Code<P> {
    pub fn new(pre: P, component: &Component, tier: Tier) -> Code<P> {
        Code { pre, engine: component.engine().clone(), tier }
    }
}

/// Serves a plugin's next sessions from `component`, the optimized build of
/// its bytes, linked as `pre`, once it has said it is the same plugin.
pub(crate) fn swap_in<P>(
    code: &ArcSwap<Code<P>>,
    info: &PluginInfo,
    component: &Component,
    (pre, who): (P, Who),
) -> wasmtime::Result<()> {
    info.check_same(&who)?;
    code.store(Arc::new(Code::new(pre, component, Tier::Optimized)));
    Ok(())
}

/// A plugin whose code can be replaced by another build of the same bytes.
pub(crate) trait Upgrade: Send + Sync {
    /// Links `component` (the optimized build), checks it still says who
    /// it is, and serves from it from the next session on.
    fn upgrade(&self, component: &Component) -> wasmtime::Result<()>;
    /// The plugin as logs name it.
    fn describe(&self) -> String;
}

struct Job {
    queued: Instant,
    sha256: String,
    bytes: Arc<[u8]>,
    /// Weak: a version replaced before its turn is not compiled at all.
    plugin: Weak<dyn Upgrade>,
}

/// The thread that makes optimized builds, and its queue.
pub(crate) struct TierUps {
    jobs: Option<Sender<Job>>,
    /// Jobs queued or running, for [`TierUps::wait`].
    pending: Arc<(Mutex<usize>, Condvar)>,
    /// Taken by the thread for each job: holding it holds the queue (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    turn: Arc<Mutex<()>>,
    /// Set on drop: the thread stops waiting out a job's delay.
    closing: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl TierUps {
    pub fn start(shared: Arc<Shared>) -> std::io::Result<TierUps> {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new((Mutex::new(0), Condvar::new()));
        let turn = Arc::new(Mutex::new(()));
        let closing = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let worker = Worker { shared, pending: pending.clone(), turn: turn.clone(), closing: closing.clone() };
            std::thread::Builder::new().name("kiln-plugin-tier-up".into()).spawn(move || worker.run(&rx))?
        };
        Ok(TierUps { jobs: Some(tx), pending, turn, closing, thread: Some(thread) })
    }

    /// Queues the optimized build of `bytes` for `plugin`.
    pub fn queue(&self, sha256: String, bytes: Arc<[u8]>, plugin: Weak<dyn Upgrade>) {
        let Some(jobs) = &self.jobs else { return };
        *self.pending.0.lock().unwrap() += 1;
        if jobs.send(Job { queued: Instant::now(), sha256, bytes, plugin }).is_err() {
            finished(&self.pending);
        }
    }

    /// Holds the queue until the guard is dropped.
    #[cfg(test)]
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.turn.lock().unwrap()
    }

    /// Blocks until every queued optimized build is serving (or failed).
    pub fn wait(&self) {
        let (count, changed) = &*self.pending;
        let _idle = changed.wait_while(count.lock().unwrap(), |n| *n > 0).unwrap();
    }
}

impl Drop for TierUps {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the build it is making.
        self.jobs.take();
        *self.closing.0.lock().unwrap() = true;
        self.closing.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn finished(pending: &(Mutex<usize>, Condvar)) {
    let (count, changed) = pending;
    *count.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) -= 1;
    changed.notify_all();
}

/// The thread's side.
struct Worker {
    shared: Arc<Shared>,
    pending: Arc<(Mutex<usize>, Condvar)>,
    turn: Arc<Mutex<()>>,
    closing: Arc<(Mutex<bool>, Condvar)>,
}

impl Worker {
    fn run(&self, jobs: &Receiver<Job>) {
        for job in jobs {
            // Counted down however the job ends, a panic included.
            let _done = Done(&self.pending);
            let _turn = self.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.wait_while_serving(&job, job.queued + TIER_UP_DELAY) {
                // A panic in one build (a compiler bug) leaves the thread,
                // and the next versions' builds, alive.
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build(&job)));
                if built.is_err() {
                    tracing::error!(sha256 = %job.sha256, "the optimizing compiler panicked; the baseline build keeps serving");
                }
            }
        }
    }

    /// Waits until `until`; false if the job's version was replaced (or the
    /// runtime is closing) meanwhile.
    fn wait_while_serving(&self, job: &Job, until: Instant) -> bool {
        let (closing, changed) = &*self.closing;
        let mut closed = closing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while !*closed && job.plugin.strong_count() > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            closed = changed
                .wait_timeout(closed, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        !*closed && job.plugin.strong_count() > 0
    }

    fn build(&self, job: &Job) {
        let component = match self.shared.compile_optimized(&job.sha256, &job.bytes) {
            Ok(component) => component,
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(sha256 = %job.sha256, %error, "no optimized build; the baseline build keeps serving");
                return;
            }
        };
        // The smoke call takes an instance of the optimized engine's pool,
        // which may be full for a moment under load: try again for a while.
        for attempt in 0..=BUSY_RETRIES {
            let Some(plugin) = job.plugin.upgrade() else { return };
            match plugin.upgrade(&component) {
                Ok(()) => return tracing::debug!(plugin = %plugin.describe(), "optimized build serving"),
                Err(e)
                    if attempt < BUSY_RETRIES && e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() =>
                {
                    drop(plugin);
                    if !self.wait_while_serving(job, Instant::now() + BUSY_BACKOFF) {
                        return;
                    }
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    return tracing::warn!(
                        plugin = %plugin.describe(), %error, "no optimized build; the baseline build keeps serving"
                    );
                }
            }
        }
    }
}

/// Counts a job down when dropped.
struct Done<'a>(&'a (Mutex<usize>, Condvar));

impl Drop for Done<'_> {
    fn drop(&mut self) {
        finished(self.0);
    }
}

/// How often, and how far apart, an optimized build's smoke call is tried
/// again when every instance of the pool is taken.
const BUSY_RETRIES: u32 = 50;
const BUSY_BACKOFF: Duration = Duration::from_millis(200);
