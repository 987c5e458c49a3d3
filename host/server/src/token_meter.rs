//! A request's tokens charged to its caller's token limit: reserved before
//! the generation runs, settled against what it used when it ends.

use std::sync::Arc;

use kiln_access::{Key, Limits, RateLimiter};

use crate::ApiError;

/// Charges the tokens of one request to its caller's token limit.
#[derive(Clone, Debug)]
pub struct TokenMeter {
    limiter: Arc<RateLimiter>,
    id: String,
    limits: Limits,
}

fn clamp(tokens: usize) -> u32 {
    tokens.min(u32::MAX as usize) as u32
}

impl TokenMeter {
    /// The meter of the caller known to the limiter as `id`.
    pub(crate) fn new(limiter: Arc<RateLimiter>, id: String, limits: Limits) -> Self {
        TokenMeter { limiter, id, limits }
    }

    /// The meter of `key`'s token limit, if it has one (async tasks run
    /// with their owner's); `defaults` are the limits of keys without their own.
    pub(crate) fn for_key(limiter: Arc<RateLimiter>, key: &Key, defaults: Limits) -> Option<TokenMeter> {
        let (id, limits) = key_limits(key, defaults);
        limits.tokens_per_minute.map(|_| TokenMeter { limiter, id, limits })
    }

    /// Sets aside `tokens` (a request's prompt and limit) before it runs.
    pub async fn reserve(&self, tokens: usize) -> Result<Reservation, ApiError> {
        let reserved = match self.limiter.reserve_tokens(&self.id, self.limits, clamp(tokens)).await {
            Ok(reserved) => reserved.map_err(|retry_after| ApiError::RateLimited { which: "tokens", retry_after })?,
            Err(e) => {
                unreachable_limits(&e);
                0
            }
        };
        Ok(Reservation { meter: self.clone(), reserved, settled: false })
    }

    /// Counts what the request really used against what it reserved (for
    /// shared limits in the background: the answer does not wait on Redis).
    fn settle(&self, reserved: u32, used: usize) {
        if let RateLimiter::Local(local) = &*self.limiter {
            return local.settle_tokens(&self.id, self.limits, reserved, clamp(used));
        }
        let meter = self.clone();
        let settle = async move {
            if let Err(e) = meter.limiter.settle_tokens(&meter.id, meter.limits, reserved, clamp(used)).await {
                unreachable_limits(&e);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(settle)),
            Err(_) => tracing::warn!("no runtime to settle a request's tokens on"),
        }
    }
}

/// Tokens set aside for one request. Settled against what it used when it
/// ends; dropped unsettled (the request ended without generating: refused,
/// failed to start, its client gone), every token goes back.
#[derive(Debug)]
pub struct Reservation {
    meter: TokenMeter,
    reserved: u32,
    settled: bool,
}

impl Reservation {
    /// The request used `used` tokens: more than reserved is a debt, less
    /// is given back.
    pub fn settle(mut self, used: usize) {
        self.settled = true;
        self.meter.settle(self.reserved, used);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.meter.settle(self.reserved, 0);
        }
    }
}

/// The limiter's id for `key` and its limits (its own, else `defaults`).
pub(crate) fn key_limits(key: &Key, defaults: Limits) -> (String, Limits) {
    (
        format!("key:{}", key.name()),
        Limits {
            requests_per_minute: key.config.requests_per_minute.or(defaults.requests_per_minute),
            tokens_per_minute: key.config.tokens_per_minute.or(defaults.tokens_per_minute),
        },
    )
}

/// A limiter store that cannot be reached admits the request: an outage of
/// the limiter's store should not become an outage of the API.
pub(crate) fn unreachable_limits(e: &kiln_access::LimitError) {
    tracing::error!(error = %e, "rate limits unavailable; admitting");
    metrics::counter!("kiln_rate_limit_errors_total").increment(1);
}
