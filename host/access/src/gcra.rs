//! Rate limits per key: GCRA (generic cell rate algorithm). Each limit keeps
//! one instant, the theoretical arrival time (TAT): how far ahead of now the
//! key's spending runs. A key may run a minute ahead (a minute's allowance
//! at once), no further; the allowance refills continuously, not at window
//! boundaries, so there is no burst at the turn of a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The period a limit is stated over, and the burst it allows.
const WINDOW: Duration = Duration::from_secs(60);

/// A key's limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

/// Where one limit stands, for the `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    pub limit: u32,
    pub remaining: u32,
    /// Until the whole allowance is back.
    pub reset: Duration,
}

/// One limit's state.
#[derive(Clone, Copy, Debug)]
pub struct Gcra {
    tat: Instant,
}

impl Gcra {
    pub fn new(now: Instant) -> Self {
        Gcra { tat: now }
    }

    fn interval(per_minute: u32) -> Duration {
        WINDOW / per_minute.max(1)
    }

    /// How far ahead of `now` the spending runs (zero when the allowance is whole).
    fn ahead(&self, now: Instant) -> Duration {
        self.tat.saturating_duration_since(now)
    }

    pub fn status(&self, now: Instant, per_minute: u32) -> LimitStatus {
        let ahead = self.ahead(now);
        let left = WINDOW.saturating_sub(ahead);
        let remaining = (left.as_nanos() / Self::interval(per_minute).as_nanos()) as u32;
        LimitStatus { limit: per_minute, remaining: remaining.min(per_minute), reset: ahead }
    }

    /// Takes `cost` units if they fit in the allowance; otherwise how long until they would.
    pub fn take(&mut self, now: Instant, per_minute: u32, cost: u32) -> Result<LimitStatus, Duration> {
        let next = self.tat.max(now) + Self::interval(per_minute) * cost;
        let ahead = next.saturating_duration_since(now);
        if ahead > WINDOW {
            return Err(ahead - WINDOW);
        }
        self.tat = next;
        Ok(self.status(now, per_minute))
    }

    /// Whether any allowance is left; otherwise how long until some is.
    pub fn check(&self, now: Instant, per_minute: u32) -> Result<LimitStatus, Duration> {
        let ahead = self.ahead(now);
        if ahead >= WINDOW {
            return Err(ahead - WINDOW + Self::interval(per_minute));
        }
        Ok(self.status(now, per_minute))
    }

    /// Spends `cost` units whether or not they fit: what is over the
    /// allowance is a debt later requests wait out.
    pub fn charge(&mut self, now: Instant, per_minute: u32, cost: u32) {
        self.tat = self.tat.max(now) + Self::interval(per_minute) * cost;
    }

    /// Gives back `units` spent earlier (never more than is spent now).
    pub fn refund(&mut self, now: Instant, per_minute: u32, units: u32) {
        let back = Self::interval(per_minute) * units;
        self.tat = self.tat.checked_sub(back).map_or(now, |t| t.max(now));
    }
}

/// What [`Limiter::admit`] decided, with both limits' standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub requests: Option<LimitStatus>,
    pub tokens: Option<LimitStatus>,
    /// `Some`: refused, and when to retry.
    pub retry_after: Option<Duration>,
    /// Refused because the token allowance is spent (else the requests one).
    pub refused_tokens: bool,
}

#[derive(Clone, Copy, Debug)]
struct KeyState {
    requests: Gcra,
    tokens: Gcra,
}

impl KeyState {
    /// A key whose allowances are whole holds nothing worth keeping.
    fn idle(&self, now: Instant) -> bool {
        self.requests.tat <= now && self.tokens.tat <= now
    }
}

/// Every key's limits, in memory bounded by `capacity` keys.
#[derive(Debug)]
pub struct Limiter {
    keys: Mutex<HashMap<String, KeyState>>,
    capacity: usize,
}

impl Limiter {
    pub fn new(capacity: usize) -> Self {
        Limiter { keys: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// Admits one request of `key` if both its request and token allowances
    /// have room; an admitted request spends one request.
    pub fn admit(&self, key: &str, limits: Limits) -> Decision {
        let now = Instant::now();
        let mut keys = self.lock();
        let state = self.entry(&mut keys, key, now);
        let tokens = limits.tokens_per_minute.map(|t| state.tokens.check(now, t));
        let requests = limits.requests_per_minute.map(|r| match &tokens {
            // Refused for tokens: spend no request.
            Some(Err(_)) => state.requests.check(now, r),
            _ => state.requests.take(now, r, 1),
        });
        let retry_after = [requests, tokens].into_iter().flatten().filter_map(Result::err).max();
        let status = |r: Option<Result<LimitStatus, Duration>>, per_minute: Option<u32>, gcra: &Gcra| {
            r.zip(per_minute).map(|(r, p)| r.unwrap_or_else(|_| gcra.status(now, p)))
        };
        Decision {
            requests: status(requests, limits.requests_per_minute, &state.requests),
            tokens: status(tokens, limits.tokens_per_minute, &state.tokens),
            retry_after,
            refused_tokens: matches!(tokens, Some(Err(_))),
        }
    }

    /// Sets aside what a request of `key` may spend (its prompt and its
    /// token limit) before it runs, so concurrent requests cannot all start
    /// on the same allowance; how long to wait if it does not fit. A request
    /// larger than a whole minute's allowance reserves the whole allowance.
    /// Returns the units reserved.
    pub fn reserve_tokens(&self, key: &str, limits: Limits, tokens: u32) -> Result<u32, Duration> {
        let Some(per_minute) = limits.tokens_per_minute else { return Ok(0) };
        let reserved = tokens.min(per_minute);
        let now = Instant::now();
        let mut keys = self.lock();
        self.entry(&mut keys, key, now).tokens.take(now, per_minute, reserved).map(|_| reserved)
    }

    /// Settles a reservation once the request has run: `used` tokens were
    /// spent of the `reserved` ones (more is a debt, less is given back).
    pub fn settle_tokens(&self, key: &str, limits: Limits, reserved: u32, used: u32) {
        let Some(per_minute) = limits.tokens_per_minute else { return };
        let now = Instant::now();
        let mut keys = self.lock();
        let tokens = &mut self.entry(&mut keys, key, now).tokens;
        match used.cmp(&reserved) {
            std::cmp::Ordering::Greater => tokens.charge(now, per_minute, used - reserved),
            std::cmp::Ordering::Less => tokens.refund(now, per_minute, reserved - used),
            std::cmp::Ordering::Equal => {}
        }
    }

    /// Keys with state now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyState>> {
        // The map holds plain instants: a panic elsewhere cannot leave it inconsistent.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'m>(&self, keys: &'m mut HashMap<String, KeyState>, key: &str, now: Instant) -> &'m mut KeyState {
        if !keys.contains_key(key) && keys.len() >= self.capacity {
            // Idle keys first (forgetting them changes nothing); then, if most
            // keys are busy, the tenth furthest from their limits, in one pass
            // so a full table is not scanned again at the next new key.
            keys.retain(|_, s| !s.idle(now));
            if keys.len() >= self.capacity * 9 / 10 {
                let mut ahead: Vec<Instant> = keys.values().map(|s| s.requests.tat.max(s.tokens.tat)).collect();
                let tenth = ahead.len() / 10;
                let (_, &mut threshold, _) = ahead.select_nth_unstable(tenth);
                keys.retain(|_, s| s.requests.tat.max(s.tokens.tat) > threshold);
            }
        }
        keys.entry(key.to_string()).or_insert(KeyState { requests: Gcra::new(now), tokens: Gcra::new(now) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minutes_allowance_passes_at_once_then_requests_are_paced() {
        let now = Instant::now();
        let mut g = Gcra::new(now);
        for i in 0..60 {
            let s = g.take(now, 60, 1).unwrap_or_else(|_| panic!("request {i} is within the burst"));
            assert_eq!(s.remaining, 59 - i);
        }
        let wait = g.take(now, 60, 1).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(990), "{wait:?}");
        // One interval later, exactly one more fits.
        let later = now + Duration::from_secs(1);
        assert!(g.take(later, 60, 1).is_ok());
        assert!(g.take(later, 60, 1).is_err());
    }

    #[test]
    fn tokens_charged_after_the_fact_are_a_debt_waited_out() {
        let now = Instant::now();
        let mut g = Gcra::new(now);
        assert_eq!(g.check(now, 600).unwrap().remaining, 600);
        g.charge(now, 600, 900); // 1.5 minutes' worth
        let wait = g.check(now, 600).unwrap_err();
        assert!(wait >= Duration::from_secs(30), "{wait:?}");
        assert!(g.check(now + Duration::from_secs(31), 600).is_ok());
    }

    #[test]
    fn a_refused_key_does_not_slow_another() {
        let limiter = Limiter::new(16);
        let limits = Limits { requests_per_minute: Some(2), tokens_per_minute: None };
        assert!(limiter.admit("a", limits).retry_after.is_none());
        assert!(limiter.admit("a", limits).retry_after.is_none());
        let refused = limiter.admit("a", limits);
        assert!(refused.retry_after.is_some());
        assert_eq!(refused.requests.unwrap().remaining, 0);
        assert!(limiter.admit("b", limits).retry_after.is_none());
    }

    #[test]
    fn reservations_stop_concurrent_requests_sharing_one_allowance() {
        let limiter = Limiter::new(16);
        let limits = Limits { requests_per_minute: None, tokens_per_minute: Some(100) };
        assert_eq!(limiter.reserve_tokens("a", limits, 60), Ok(60));
        assert!(limiter.reserve_tokens("a", limits, 60).is_err(), "60 more do not fit beside the first 60");
        // The first used only 10: 50 come back.
        limiter.settle_tokens("a", limits, 60, 10);
        assert_eq!(limiter.reserve_tokens("a", limits, 60), Ok(60));
        // Larger than a minute's allowance: reserves the whole of it, once.
        let big = Limiter::new(16);
        assert_eq!(big.reserve_tokens("b", limits, 500), Ok(100));
        assert!(big.reserve_tokens("b", limits, 1).is_err());
    }

    #[test]
    fn a_key_over_its_tokens_is_refused_without_spending_a_request() {
        let limiter = Limiter::new(16);
        let limits = Limits { requests_per_minute: Some(10), tokens_per_minute: Some(100) };
        assert!(limiter.admit("a", limits).retry_after.is_none());
        limiter.settle_tokens("a", limits, 0, 250);
        let refused = limiter.admit("a", limits);
        assert!(refused.retry_after.unwrap() > Duration::from_secs(60));
        assert_eq!(refused.tokens.unwrap().remaining, 0);
        assert_eq!(refused.requests.unwrap().remaining, 9, "the refused request spent nothing");
    }

    #[test]
    fn memory_stays_bounded_however_many_keys_appear() {
        let limiter = Limiter::new(100);
        let limits = Limits { requests_per_minute: Some(1000), tokens_per_minute: None };
        for i in 0..10_000 {
            limiter.admit(&format!("client-{i}"), limits);
        }
        assert!(limiter.tracked() <= 100, "{} keys tracked", limiter.tracked());
    }
}
