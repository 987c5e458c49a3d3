//! Per-plugin call counters: what `GET /v1/plugins` (and later `/metrics`)
//! report for each loaded version.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Calls into one loaded plugin version, counted lock-free from every
/// request that uses it.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    calls: AtomicU64,
    errors: AtomicU64,
    busy_ns: AtomicU64,
    slowest_ns: AtomicU64,
}

/// A point-in-time copy of [`PluginMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Calls made (instantiations included), failed ones too.
    pub calls: u64,
    /// Calls that trapped, timed out, ran out of memory or were refused.
    pub errors: u64,
    /// Time spent inside the plugin, all calls together.
    pub busy: Duration,
    /// The longest single call.
    pub slowest: Duration,
}

impl std::ops::Add for MetricsSnapshot {
    type Output = MetricsSnapshot;

    fn add(self, other: MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            calls: self.calls + other.calls,
            errors: self.errors + other.errors,
            busy: self.busy + other.busy,
            slowest: self.slowest.max(other.slowest),
        }
    }
}

impl PluginMetrics {
    /// Counts one call that began at `started` and ended with `result`.
    pub(crate) fn record<T, E>(&self, started: Instant, result: &Result<T, E>) {
        let ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        self.slowest_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed)),
            slowest: Duration::from_nanos(self.slowest_ns.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_calls_count_as_calls_and_errors() {
        let m = PluginMetrics::default();
        m.record(Instant::now(), &Ok::<(), ()>(()));
        m.record(Instant::now(), &Err::<(), ()>(()));
        let s = m.snapshot();
        assert_eq!((s.calls, s.errors), (2, 1));
        assert!(s.slowest <= s.busy);
    }
}
