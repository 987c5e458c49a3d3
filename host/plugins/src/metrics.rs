//! Per-version call counters: what `GET /v1/plugins` and `/metrics` report
//! for each loaded version, and what a canary's automatic rollback compares
//! (failures per request, tail latency).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::PluginError;

/// Latency buckets: bucket `i` holds calls of under `2^i` microseconds
/// (the last one everything longer), so a p99 is known to within a factor of 2.
const BUCKETS: usize = 24;

/// Calls into one loaded plugin version, counted lock-free from every
/// request that uses it.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    calls: AtomicU64,
    sessions: AtomicU64,
    errors: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    busy_ns: AtomicU64,
    slowest_ns: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

/// A point-in-time copy of [`PluginMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Calls made (instantiations included), failed ones too.
    pub calls: u64,
    /// Requests served: renders, and sampler or post-process sessions started.
    pub sessions: u64,
    /// Calls that failed: trapped, timed out, ran out of memory or were refused.
    pub errors: u64,
    /// Of `errors`, traps (a panic, an unreachable, a bad memory access).
    pub traps: u64,
    /// Of `errors`, calls stopped at their deadline.
    pub timeouts: u64,
    /// Time spent inside the plugin, all calls together.
    pub busy: Duration,
    /// The longest single call.
    pub slowest: Duration,
    latency: [u64; BUCKETS],
}

impl std::ops::Add for MetricsSnapshot {
    type Output = MetricsSnapshot;

    fn add(self, other: MetricsSnapshot) -> MetricsSnapshot {
        let mut latency = self.latency;
        latency.iter_mut().zip(other.latency).for_each(|(a, b)| *a += b);
        MetricsSnapshot {
            calls: self.calls + other.calls,
            sessions: self.sessions + other.sessions,
            errors: self.errors + other.errors,
            traps: self.traps + other.traps,
            timeouts: self.timeouts + other.timeouts,
            busy: self.busy + other.busy,
            slowest: self.slowest.max(other.slowest),
            latency,
        }
    }
}

impl std::ops::Sub for MetricsSnapshot {
    type Output = MetricsSnapshot;

    /// What happened between two snapshots of one version (`slowest` is the
    /// later one's: a maximum cannot be taken apart).
    fn sub(self, earlier: MetricsSnapshot) -> MetricsSnapshot {
        let mut latency = self.latency;
        latency.iter_mut().zip(earlier.latency).for_each(|(a, b)| *a = a.saturating_sub(b));
        MetricsSnapshot {
            calls: self.calls.saturating_sub(earlier.calls),
            sessions: self.sessions.saturating_sub(earlier.sessions),
            errors: self.errors.saturating_sub(earlier.errors),
            traps: self.traps.saturating_sub(earlier.traps),
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            busy: self.busy.saturating_sub(earlier.busy),
            slowest: self.slowest,
            latency,
        }
    }
}

impl MetricsSnapshot {
    /// Failed calls per request served (0 before any).
    pub fn failure_rate(&self) -> f64 {
        if self.sessions == 0 { 0.0 } else { self.errors as f64 / self.sessions as f64 }
    }

    /// The latency 99 % of calls stay under (the upper bound of its
    /// bucket); `None` before any call.
    pub fn p99(&self) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(1 << i));
            }
        }
        Some(self.slowest)
    }
}

impl PluginMetrics {
    /// Counts one call that began at `started` and ended with `result`.
    pub(crate) fn record<T>(&self, started: Instant, result: &Result<T, PluginError>) {
        let elapsed = started.elapsed();
        let ns = elapsed.as_nanos().min(u64::MAX as u128) as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            self.errors.fetch_add(1, Ordering::Relaxed);
            match e {
                PluginError::Trap { .. } => self.traps.fetch_add(1, Ordering::Relaxed),
                PluginError::Timeout { .. } => self.timeouts.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        self.slowest_ns.fetch_max(ns, Ordering::Relaxed);
        let micros = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.latency[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// [`PluginMetrics::record`] for the call that starts serving a request.
    pub(crate) fn record_start<T>(&self, started: Instant, result: &Result<T, PluginError>) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.record(started, result);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed)),
            slowest: Duration::from_nanos(self.slowest_ns.load(Ordering::Relaxed)),
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trap() -> PluginError {
        PluginError::Trap { plugin: "p@1".into(), message: "boom".into() }
    }

    #[test]
    fn failed_calls_count_as_calls_and_errors_by_kind() {
        let m = PluginMetrics::default();
        m.record_start(Instant::now(), &Ok::<(), PluginError>(()));
        m.record(Instant::now(), &Err::<(), _>(trap()));
        m.record(Instant::now(), &Err::<(), _>(PluginError::Timeout { plugin: "p@1".into(), limit_ms: 5 }));
        let s = m.snapshot();
        assert_eq!((s.calls, s.sessions, s.errors, s.traps, s.timeouts), (3, 1, 2, 1, 1));
        assert_eq!(s.failure_rate(), 2.0);
        assert!(s.slowest <= s.busy);
    }

    #[test]
    fn the_p99_is_the_bucket_the_slowest_percent_starts_in() {
        let mut s = MetricsSnapshot::default();
        assert_eq!(s.p99(), None);
        s.latency[3] = 990; // under 8 us
        s.latency[10] = 10; // under 1024 us
        assert_eq!(s.p99(), Some(Duration::from_micros(8)));
        s.latency[10] = 11;
        assert_eq!(s.p99(), Some(Duration::from_micros(1024)));
        let later = s + s;
        assert_eq!((later - s).latency, s.latency);
    }
}
