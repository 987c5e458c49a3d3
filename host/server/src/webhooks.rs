//! Webhooks: when a task with a `webhook_url` ends, its JSON is POSTed
//! there, signed (`X-Kiln-Signature: sha256=<hex HMAC-SHA256 of the body>`),
//! retried with exponential backoff up to a cap, and every attempt is
//! recorded on the task. This module is the policy and one attempt;
//! `tasks::delivery` schedules them. Targets on loopback, link-local or private
//! networks are refused unless the operator allows them (so a client cannot
//! make the server call its own internal services).

use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The HMAC key of keys that set none of their own (`[[keys]]
    /// webhook_secret`); without either, deliveries are unsigned.
    pub secret: Option<kiln_access::Secret>,
    /// Deliver to loopback, link-local and private addresses too.
    pub allow_private: bool,
    /// Attempts per task, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled each time, at most a minute.
    pub first_retry: Duration,
    /// Deliveries in flight at most: the threads that make them, apart
    /// from the runtime's blocking pool, so a target that never answers
    /// slows nothing but other deliveries.
    pub workers: usize,
    /// One attempt's limit, connecting and reading the answer included.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            allow_private: false,
            max_attempts: 5,
            first_retry: Duration::from_secs(1),
            workers: 4,
            timeout: Duration::from_secs(10),
        }
    }
}

impl WebhookConfig {
    /// The wait after attempt `attempt` (1-based) failed.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self.first_retry.saturating_mul(1 << attempt.saturating_sub(1).min(16));
        doubled.min(Duration::from_secs(60))
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why `url` may not be called, if it may not.
pub fn refused(url: &str, allow_private: bool) -> Option<String> {
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return Some("webhook_url must be an http:// or https:// URL".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return Some("webhook_url has no host".into());
    }
    if allow_private {
        return None;
    }
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let with_port =
        if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:{default_port}")
        };
    let addresses: Vec<IpAddr> = match with_port.to_socket_addrs() {
        Ok(addresses) => addresses.map(|a| a.ip()).collect(),
        Err(e) => return Some(format!("webhook_url's host does not resolve: {e}")),
    };
    addresses.iter().find(|ip| is_internal(ip)).map(|ip| {
        format!("webhook_url resolves to {ip}, an internal address; the server's configuration does not allow those")
    })
}

fn is_internal(ip: &IpAddr) -> bool {
    let v4 = |v4: std::net::Ipv4Addr| {
        let [a, b, c, _] = v4.octets();
        v4.is_loopback()
            || v4.is_private()
            || v4.is_link_local()
            || v4.is_unspecified()
            || v4.is_broadcast()
            || v4.is_multicast()
            // Carrier-grade NAT 100.64.0.0/10, IETF protocol assignments
            // 192.0.0.0/24, benchmarking 198.18.0.0/15, reserved 240.0.0.0/4.
            || (a == 100 && (b & 0xc0) == 64)
            || (a, b, c) == (192, 0, 0)
            || (a == 198 && (b & 0xfe) == 18)
            || a >= 240
    };
    match ip.to_canonical() {
        IpAddr::V4(address) => v4(address),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // An IPv4 address inside IPv6: NAT64 (64:ff9b::/96) or IPv4-compatible (::a.b.c.d).
            let embedded = std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed by some)
                || s[0] == 0x2002 // 6to4: reaches whatever IPv4 address it wraps
                || ((s[0], s[1]) == (0x64, 0xff9b) && s[2..6] == [0; 4] && v4(embedded))
                || (s[..6] == [0; 6] && v4(embedded))
        }
    }
}

/// Resolves as the system does, then refuses a host with any internal
/// address (unless allowed): the addresses checked are the ones connected
/// to, so a name that resolves to a public address when the task is
/// submitted and to an internal one at delivery (DNS rebinding) is refused.
#[derive(Debug)]
struct CheckedResolver {
    allow_private: bool,
}

impl Resolver for CheckedResolver {
    fn resolve(&self, uri: &Uri, config: &Config, timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = DefaultResolver::default().resolve(uri, config, timeout)?;
        match resolved.iter().find(|a| !self.allow_private && is_internal(&a.ip())) {
            Some(internal) => Err(ureq::Error::BadUri(format!(
                "webhook_url resolves to {}, an internal address; the server's configuration does not allow those",
                internal.ip()
            ))),
            None => Ok(resolved),
        }
    }
}

/// The client webhooks are sent with: statuses are answers, not errors;
/// internal addresses refused at connection time.
pub(crate) fn agent(config: &WebhookConfig) -> ureq::Agent {
    let agent_config = ureq::Agent::config_builder()
        // Through a proxy the resolver would see only the proxy's address,
        // and the proxy could reach internal hosts: webhooks go direct.
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(config.timeout))
        .build();
    ureq::Agent::with_parts(
        agent_config,
        DefaultConnector::default(),
        CheckedResolver { allow_private: config.allow_private },
    )
}

/// How one attempt went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The target answered with this status (2xx: delivered).
    Answered(u16),
    /// No answer (connection refused, timeout, TLS...): worth retrying.
    Failed(String),
    /// The configuration forbids the target: no retry will change that.
    Refused(String),
}

impl Attempt {
    pub(crate) fn delivered(&self) -> bool {
        matches!(self, Attempt::Answered(200..=299))
    }

    /// Whether another attempt might go differently.
    pub(crate) fn retryable(&self) -> bool {
        !self.delivered() && !matches!(self, Attempt::Refused(_))
    }

    /// As recorded on the task.
    pub(crate) fn record(&self, attempt: u32, at: u64) -> serde_json::Value {
        match self {
            Attempt::Answered(status) => serde_json::json!({"attempt": attempt, "at": at, "status": status}),
            Attempt::Failed(error) | Attempt::Refused(error) => {
                serde_json::json!({"attempt": attempt, "at": at, "error": error})
            }
        }
    }
}

/// POSTs `body` to `url` once, signed with `secret` if any. Blocking: the
/// delivery threads call it.
pub(crate) fn attempt(
    agent: &ureq::Agent,
    allow_private: bool,
    secret: Option<&str>,
    url: &str,
    body: &[u8],
) -> Attempt {
    if let Some(reason) = refused(url, allow_private) {
        return Attempt::Refused(reason);
    }
    let mut request = agent.post(url).header("content-type", "application/json");
    if let Some(secret) = secret {
        request = request.header("x-kiln-signature", signature(secret, body));
    }
    match request.send(body) {
        Ok(response) => Attempt::Answered(response.status().as_u16()),
        // The resolver's refusal of an internal address (DNS rebinding).
        Err(ureq::Error::BadUri(reason)) if reason.starts_with("webhook_url") => Attempt::Refused(reason),
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_targets_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.1.2.3/",
            "http://[::1]:80/",
            "http://169.254.169.254/latest",
            "http://localhost/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[::ffff:10.0.0.1]/",
            "http://198.18.0.1/",
            "http://224.0.0.1/",
            "http://[fec0::1]/",
        ] {
            assert!(refused(url, false).is_some(), "{url}");
            assert!(refused(url, true).is_none(), "{url}");
        }
        assert!(refused("ftp://example.com/", true).is_some());
        assert!(refused("http://93.184.215.14/hook", false).is_none());
        assert!(refused("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook", false).is_none());
    }

    #[test]
    fn the_client_refuses_internal_addresses_when_it_connects() {
        // Past the submission check (as after DNS rebinding): the address
        // connected to is checked again.
        let config = |allow_private| WebhookConfig { allow_private, ..WebhookConfig::default() };
        let refused = agent(&config(false)).post("http://127.0.0.1:9/hook").send(&b"{}"[..]).unwrap_err().to_string();
        assert!(refused.contains("internal address"), "{refused}");
        let allowed = agent(&config(true)).post("http://127.0.0.1:9/hook").send(&b"{}"[..]).unwrap_err().to_string();
        assert!(!allowed.contains("internal address"), "{allowed}");
        // Past the submission check, the refusal is final: no retry.
        let attempt = attempt(&agent(&config(false)), true, None, "http://127.0.0.1:9/hook", b"{}");
        assert!(matches!(&attempt, Attempt::Refused(r) if r.contains("internal address")), "{attempt:?}");
        assert!(!attempt.retryable());
    }

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_a_minute() {
        let config = WebhookConfig::default();
        let waits: Vec<u64> = (1..=8).map(|n| config.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(config.backoff(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        let mac = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(mac, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
