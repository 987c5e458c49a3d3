//! The server's settings, as the binary resolved them: limits, timeouts,
//! who may call, and what replicas share.

use std::sync::Arc;
use std::time::Duration;

use kiln_access::{KeyStore, LiveKeys};

use crate::response_cache::CacheConfig;
use kiln_access::AdminAccess;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// A comment line is sent on a stream idle this long, so proxies keep it open.
    pub sse_keep_alive: Duration,
    /// After a shutdown signal, how long open requests and streams may run
    /// before their connections are closed.
    pub drain_timeout: Duration,
    /// Who may manage plugins.
    pub admin: AdminAccess,
    /// Larger plugin uploads get 413.
    pub max_plugin_bytes: usize,
    /// API keys, or none (`--insecure-no-auth`).
    pub auth: Auth,
    /// Limits of keys that set none of their own (and of anonymous callers, by address).
    pub limits: kiln_access::Limits,
    /// `/metrics` without a key (for scrapers inside a trusted network).
    pub public_metrics: bool,
    pub cache: CacheConfig,
    /// A generation still running after this is stopped: 504 (`code:
    /// timeout`), or as the last event of a stream.
    pub request_timeout: Duration,
    /// Redis, where replicas share rate limits and cached answers.
    pub redis: Option<RedisShared>,
    /// Web origins (`https://app.example`) browsers may call from: answered
    /// with CORS, and not refused as cross-site without API keys.
    pub allowed_origins: Vec<String>,
    /// A stream whose client has read nothing for this long while events
    /// wait is cancelled (its sequence, plugin instances and reservation freed).
    pub stream_stall: Duration,
    pub connections: ConnectionLimits,
}

/// What one client connection may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; past it a new one is answered 503
    /// (`too_many_connections`) and closed.
    pub max_connections: usize,
    /// A request's head must arrive within this of its first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and nothing arriving is
    /// closed after this.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 2 << 20,
            sse_keep_alive: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(30),
            admin: AdminAccess::default(),
            max_plugin_bytes: 64 << 20,
            auth: Auth::Insecure,
            limits: kiln_access::Limits::default(),
            public_metrics: true,
            cache: CacheConfig::default(),
            request_timeout: Duration::from_secs(120),
            redis: None,
            allowed_origins: Vec::new(),
            stream_stall: Duration::from_secs(30),
            connections: ConnectionLimits::default(),
        }
    }
}

/// How callers are authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    /// The keys in force, which a reload may replace while serving.
    Keys(Arc<LiveKeys>),
    /// No keys: anyone may call (an explicit operator choice, logged at start).
    Insecure,
}

impl Auth {
    /// Requests need one of `keys` (until a reload replaces them).
    pub fn keys(keys: KeyStore) -> Auth {
        Auth::Keys(Arc::new(LiveKeys::new(keys)))
    }
}

/// A connection to the Redis that replicas share, and what they share in it.
#[derive(Clone, Debug)]
pub struct RedisShared {
    /// Multiplexed and reconnecting; cheap to clone.
    pub conn: redis::aio::ConnectionManager,
    /// Put before every key.
    pub prefix: String,
    /// Rate limits hold across replicas.
    pub limits: bool,
    /// Cached answers are served by every replica.
    pub cache: bool,
}
