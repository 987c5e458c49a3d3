//! Requests a browser makes on a web page's behalf. Without API keys
//! (`--insecure-no-auth`, the README's first command) anything that can
//! reach the port may generate, and a web page can make a browser reach it:
//! by DNS rebinding (the page's own name made to resolve to this machine,
//! seen here as a foreign `Host`) or by a cross-site request (`Origin`,
//! `Sec-Fetch-Site`). In that mode such requests are refused unless their
//! origin is listed in `[server] allowed_origins`, which also answers CORS
//! for browser clients (in any mode, through tower-http's `CorsLayer`).
//! Clients that are not browsers send no `Origin` and a loopback or IP
//! `Host`, and are not affected.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Auth;
use crate::{ApiError, AppState};

/// Refuses, without API keys, what looks like a web page's doing.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let config = state.config();
    if matches!(config.auth, Auth::Insecure) {
        let origin = request.headers().get(ORIGIN).and_then(|o| o.to_str().ok());
        let listed = origin.is_some_and(|o| config.allowed_origins.iter().any(|a| a == o));
        if let Some(refusal) = refusal(request.headers(), origin).filter(|_| !listed) {
            return ApiError::Forbidden(refusal).into_response();
        }
    }
    next.run(request).await
}

/// CORS for the listed origins (preflights answered before authentication,
/// which they carry no key for); `None` when none are listed.
pub fn cors(allowed: &[String]) -> Option<CorsLayer> {
    if allowed.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = allowed.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::CACHE_CONTROL,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-kiln-cache"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Why a request without keys looks like a web page's doing, if it does.
fn refusal(headers: &HeaderMap, origin: Option<&str>) -> Option<String> {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    if let Some(host) = host.filter(|h| !local_host(h)) {
        return Some(format!(
            "Host {host:?} is not this server's address: without API keys, only loopback names, names \
             without a dot and IP addresses are answered (a guard against DNS rebinding)"
        ));
    }
    // A page served by this server (`/docs`) calls it from its own origin.
    let same_origin = match (origin, host) {
        (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, rest)| rest == host),
        _ => false,
    };
    let cross_site = headers.get("sec-fetch-site").is_some_and(|s| s == "cross-site" || s == "same-site");
    match origin {
        Some(origin) if !same_origin => Some(format!(
            "a cross-site request from {origin:?}: without API keys, browsers may call this server only \
             from origins listed in [server] allowed_origins"
        )),
        None if cross_site => {
            Some("a cross-site browser request: without API keys, only listed origins may call".into())
        }
        _ => None,
    }
}

/// A loopback name, a name without a dot (a machine's or a container's, as
/// `kiln` in a compose file) or an IP address, with or without a port: what
/// no public domain a web page is served from can be.
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            host.rsplit_once(':').map_or(host, |(name, port)| if port.parse::<u16>().is_ok() { name } else { host })
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let dotless = !name.is_empty() && !name.contains('.');
    dotless || name.ends_with(".localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_ip_addresses_are_local_hosts_and_domains_are_not() {
        for host in [
            "localhost",
            "localhost:8000",
            "LOCALHOST.",
            "app.localhost:1",
            "kiln:8000",
            "127.0.0.1:8000",
            "10.0.0.5",
            "[::1]:8000",
            "[::1]",
        ] {
            assert!(local_host(host), "{host}");
        }
        for host in
            ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example", "[evil]:80"]
        {
            assert!(!local_host(host), "{host}");
        }
    }
}
