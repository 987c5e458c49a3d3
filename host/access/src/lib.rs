//! kiln-access: who may call kiln and how often.
//!
//! API keys are configured as sha256 digests (the key itself is shown once,
//! when created, and never stored); a presented key is hashed and compared
//! with every configured digest in constant time. Each key has scopes and
//! may have its own limits. Limits are GCRA (generic cell rate algorithm)
//! per key, for requests and for tokens per minute: a key may burst up to a
//! minute's allowance, then is paced; its state is one instant per limit,
//! kept in this process or, for several replicas, in Redis. Without keys,
//! the admin endpoints are guarded by network instead ([`AdminAccess`]).

#![forbid(unsafe_code)]

mod admin;
mod gcra;
mod keys;
mod shared;

pub use admin::{AdminAccess, UnknownAdminAccess};
pub use gcra::{Decision, Gcra, LimitStatus, Limiter, Limits};
pub use keys::{Key, KeyConfig, KeyStore, LiveKeys, Scope, Secret, generate_key, hash_key};
pub use shared::{LimitError, RateLimiter, RedisLimiter};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("keys[{index}] ({name}): {message}")]
    BadKey { index: usize, name: String, message: String },
    #[error("cannot draw random bytes for a key: {0}")]
    Random(String),
}
