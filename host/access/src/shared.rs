//! Limits that hold across replicas: the same GCRA as [`crate::Limiter`],
//! its instants kept in Redis and every decision one Lua script, so replicas
//! admitting requests of one key at the same moment cannot both spend its
//! last allowance. Time is Redis's clock (`TIME`), not each replica's, so
//! replicas whose clocks disagree still agree on the limits. An idle key's
//! state expires once its allowance is whole again: memory stays bounded.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::{Decision, LimitStatus, Limiter, Limits};

/// Common to every script. All arithmetic is on whole microseconds, as
/// offsets from now ("ahead": how far the key's spending runs ahead of now),
/// so the large absolute times cancel before anything is divided and
/// doubles stay exact; an interval is truncated to a whole microsecond, as
/// the local limiter truncates to a nanosecond.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = 60000000
local function interval(per_minute) return math.floor(window / per_minute) end
local function ahead_of(key)
  return math.max(tonumber(redis.call('GET', key) or '0') - now, 0)
end
local function standing(ahead, per_minute)
  local left = math.max(window - ahead, 0)
  return math.min(math.floor(left / interval(per_minute)), per_minute), ahead
end
local function save(key, ahead)
  redis.call('SET', key, string.format('%.0f', now + ahead), 'PX', math.floor(ahead / 1000) + 1000)
end
"#;

/// KEYS: requests, tokens. ARGV: requests and tokens per minute (0: none).
/// Returns: refused for tokens (0/1), retry-after µs (-1: admitted), then
/// remaining and reset µs of requests and of tokens.
const ADMIT: &str = r#"
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local retry, refused_tokens = -1, 0
local r_left, r_reset, t_left, t_reset = 0, 0, 0, 0
if tpm > 0 then
  local ahead = ahead_of(KEYS[2])
  if ahead >= window then
    refused_tokens = 1
    retry = ahead - window + interval(tpm)
  end
  t_left, t_reset = standing(ahead, tpm)
end
if rpm > 0 then
  local ahead = ahead_of(KEYS[1])
  if refused_tokens == 1 then
    if ahead >= window then retry = math.max(retry, ahead - window + interval(rpm)) end
  else
    local next = ahead + interval(rpm)
    if next > window then
      retry = math.max(retry, next - window)
    else
      ahead = next
      save(KEYS[1], ahead)
    end
  end
  r_left, r_reset = standing(ahead, rpm)
end
return {refused_tokens, retry, r_left, r_reset, t_left, t_reset}
"#;

/// KEYS: tokens. ARGV: tokens per minute, tokens. Returns {1, reserved} or {0, retry µs}.
const RESERVE: &str = r#"
local tpm, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local next = ahead_of(KEYS[1]) + interval(tpm) * n
if next > window then return {0, next - window} end
save(KEYS[1], next)
return {1, n}
"#;

/// KEYS: tokens. ARGV: tokens per minute, reserved, used.
const SETTLE: &str = r#"
local tpm, reserved, used = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ahead = ahead_of(KEYS[1]) + interval(tpm) * (used - reserved)
save(KEYS[1], math.max(ahead, 0))
return 0
"#;

#[derive(Debug, thiserror::Error)]
#[error("shared rate limits (redis): {0}")]
pub struct LimitError(#[from] redis::RedisError);

/// GCRA limits kept in Redis, shared by every replica using the same prefix.
pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    admit: Script,
    reserve: Script,
    settle: Script,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisLimiter {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        RedisLimiter {
            conn,
            prefix: prefix.to_string(),
            admit: script(ADMIT),
            reserve: script(RESERVE),
            settle: script(SETTLE),
        }
    }

    fn key(&self, caller: &str, limit: &str) -> String {
        format!("{}limit:{caller}:{limit}", self.prefix)
    }
}

/// Where limits are kept: in this process, or in Redis for every replica.
#[derive(Debug)]
pub enum RateLimiter {
    Local(Limiter),
    Shared(RedisLimiter),
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

impl RateLimiter {
    /// As [`Limiter::admit`].
    pub async fn admit(&self, key: &str, limits: Limits) -> Result<Decision, LimitError> {
        let shared = match self {
            RateLimiter::Local(local) => return Ok(local.admit(key, limits)),
            RateLimiter::Shared(shared) => shared,
        };
        let (rpm, tpm) = (limits.requests_per_minute.unwrap_or(0), limits.tokens_per_minute.unwrap_or(0));
        let reply: (i64, i64, u32, i64, u32, i64) = shared
            .admit
            .key(shared.key(key, "requests"))
            .key(shared.key(key, "tokens"))
            .arg(rpm)
            .arg(tpm)
            .invoke_async(&mut shared.conn.clone())
            .await?;
        let (refused_tokens, retry, r_left, r_reset, t_left, t_reset) = reply;
        let status = |limit: Option<u32>, remaining, reset| {
            limit.map(|limit| LimitStatus { limit, remaining, reset: micros(reset) })
        };
        Ok(Decision {
            requests: status(limits.requests_per_minute, r_left, r_reset),
            tokens: status(limits.tokens_per_minute, t_left, t_reset),
            retry_after: (retry >= 0).then(|| micros(retry)),
            refused_tokens: refused_tokens == 1,
        })
    }

    /// As [`Limiter::reserve_tokens`].
    pub async fn reserve_tokens(
        &self,
        key: &str,
        limits: Limits,
        tokens: u32,
    ) -> Result<Result<u32, Duration>, LimitError> {
        let shared = match self {
            RateLimiter::Local(local) => return Ok(local.reserve_tokens(key, limits, tokens)),
            RateLimiter::Shared(shared) => shared,
        };
        let Some(per_minute) = limits.tokens_per_minute else { return Ok(Ok(0)) };
        let reserved = tokens.min(per_minute);
        let (fits, value): (i64, i64) = shared
            .reserve
            .key(shared.key(key, "tokens"))
            .arg(per_minute)
            .arg(reserved)
            .invoke_async(&mut shared.conn.clone())
            .await?;
        Ok(if fits == 1 { Ok(value as u32) } else { Err(micros(value)) })
    }

    /// As [`Limiter::settle_tokens`].
    pub async fn settle_tokens(&self, key: &str, limits: Limits, reserved: u32, used: u32) -> Result<(), LimitError> {
        let shared = match self {
            RateLimiter::Local(local) => {
                local.settle_tokens(key, limits, reserved, used);
                return Ok(());
            }
            RateLimiter::Shared(shared) => shared,
        };
        let Some(per_minute) = limits.tokens_per_minute else { return Ok(()) };
        if reserved == used {
            return Ok(());
        }
        let _: i64 = shared
            .settle
            .key(shared.key(key, "tokens"))
            .arg(per_minute)
            .arg(reserved)
            .arg(used)
            .invoke_async(&mut shared.conn.clone())
            .await?;
        Ok(())
    }

    /// Callers with state in this process (shared limits keep theirs in Redis).
    pub fn tracked(&self) -> usize {
        match self {
            RateLimiter::Local(local) => local.tracked(),
            RateLimiter::Shared(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use kiln_tasks::redis_server::RedisServer;

    use super::*;

    async fn replica(server: &RedisServer) -> RateLimiter {
        let conn = ConnectionManager::new(server.client()).await.unwrap();
        RateLimiter::Shared(RedisLimiter::new(conn, "test:"))
    }

    #[tokio::test]
    async fn one_keys_allowance_is_shared_by_every_replica() {
        let server = RedisServer::start();
        let replicas = [replica(&server).await, replica(&server).await, replica(&server).await];
        let limits = Limits { requests_per_minute: Some(5), tokens_per_minute: None };
        let mut admitted = 0;
        for i in 0..12 {
            let decision = replicas[i % 3].admit("key:app", limits).await.unwrap();
            match decision.retry_after {
                None => {
                    admitted += 1;
                    assert_eq!(decision.requests.unwrap().remaining, 5 - admitted);
                }
                Some(wait) => assert!(wait <= Duration::from_secs(12), "{decision:?}"),
            }
        }
        assert_eq!(admitted, 5);
        let other = replicas[0].admit("key:other", limits).await.unwrap();
        assert!(other.retry_after.is_none(), "another key has its own allowance");
    }

    #[tokio::test]
    async fn limits_that_do_not_divide_a_minute_count_down_exactly() {
        let server = RedisServer::start();
        let shared = replica(&server).await;
        for per_minute in [7, 9, 11] {
            let key = format!("key:{per_minute}");
            let limits = Limits { requests_per_minute: Some(per_minute), tokens_per_minute: None };
            for expected in (0..per_minute).rev() {
                let decision = shared.admit(&key, limits).await.unwrap();
                assert_eq!(decision.retry_after, None, "{per_minute}/min: {decision:?}");
                assert_eq!(decision.requests.unwrap().remaining, expected, "{per_minute}/min");
            }
            assert!(shared.admit(&key, limits).await.unwrap().retry_after.is_some(), "{per_minute}/min");
        }
    }

    #[tokio::test]
    async fn token_reservations_and_debts_are_shared_by_every_replica() {
        let server = RedisServer::start();
        let (a, b) = (replica(&server).await, replica(&server).await);
        let limits = Limits { requests_per_minute: Some(100), tokens_per_minute: Some(100) };
        assert_eq!(a.reserve_tokens("k", limits, 60).await.unwrap(), Ok(60));
        assert!(b.reserve_tokens("k", limits, 60).await.unwrap().is_err(), "60 more do not fit beside a's 60");
        a.settle_tokens("k", limits, 60, 10).await.unwrap();
        assert_eq!(b.reserve_tokens("k", limits, 60).await.unwrap(), Ok(60));
        // A debt past the allowance refuses the next request without spending one.
        b.settle_tokens("k", limits, 60, 300).await.unwrap();
        let refused = a.admit("k", limits).await.unwrap();
        assert!(refused.refused_tokens && refused.retry_after.unwrap() > Duration::from_secs(60), "{refused:?}");
        assert_eq!(refused.tokens.unwrap().remaining, 0);
        assert_eq!(refused.requests.unwrap().remaining, 100, "the refused request spent nothing");
    }
}
