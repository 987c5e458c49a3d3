//! Per-key rate limits (requests and tokens per minute, GCRA): every limited
//! response carries OpenAI's `x-ratelimit-*` headers; a caller over a limit
//! gets 429 with `Retry-After`. Tokens are counted when a generation ends
//! (through the [`TokenMeter`] the handler receives), so a long answer is
//! paid for by the requests after it. With limits shared in Redis, a Redis
//! that cannot be reached admits the request (logged and counted in
//! `kiln_rate_limit_errors_total`): an outage of the limiter's store should
//! not become an outage of the API.

use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_access::{Decision, LimitStatus, Limits};

use super::auth::is_public;
use crate::extract::Caller;
use crate::token_meter::{TokenMeter, key_limits, unreachable_limits};
use crate::{ApiError, AppState};

/// Keys are limited by name; anonymous callers (`--insecure-no-auth`) by address.
fn identity(request: &Request, state: &AppState) -> (String, Limits) {
    let defaults = state.config().limits;
    match request.extensions().get::<Caller>().and_then(|c| c.key.as_ref()) {
        Some(key) => key_limits(key, defaults),
        None => {
            let peer = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
            (format!("addr:{}", peer.map(|p| p.to_string()).unwrap_or_default()), defaults)
        }
    }
}

pub async fn rate_limit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if is_public(path, state.config().public_metrics) || path.starts_with("/v1/plugins") {
        return next.run(request).await;
    }
    let (id, limits) = identity(&request, &state);
    if limits == Limits::default() {
        return next.run(request).await;
    }
    let decision = match state.limiter().admit(&id, limits).await {
        Ok(decision) => decision,
        Err(e) => {
            unreachable_limits(&e);
            return next.run(request).await;
        }
    };
    let mut response = match decision.retry_after {
        Some(retry_after) => {
            let which = if decision.refused_tokens { "tokens" } else { "requests" };
            metrics::counter!("kiln_rate_limited_total", "limit" => which).increment(1);
            ApiError::RateLimited { which, retry_after }.into_response()
        }
        None => {
            let meter = TokenMeter::new(state.limiter_arc(), id, limits);
            request.extensions_mut().insert(meter);
            next.run(request).await
        }
    };
    headers(response.headers_mut(), &decision);
    response
}

/// OpenAI's headers: limit, remaining and time to a full allowance, for
/// requests and for tokens.
fn headers(headers: &mut HeaderMap, decision: &Decision) {
    for (kind, status) in [("requests", decision.requests), ("tokens", decision.tokens)] {
        let Some(LimitStatus { limit, remaining, reset }) = status else { continue };
        for (field, value) in
            [("limit", limit.to_string()), ("remaining", remaining.to_string()), ("reset", span(reset))]
        {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(format!("x-ratelimit-{field}-{kind}")), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
    }
}

/// A duration as OpenAI writes it: `20ms`, `1.5s`, `6m0s`.
pub(crate) fn span(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", (ms as f64 / 1000.0 * 10.0).round() / 10.0),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_openai_does() {
        assert_eq!(span(Duration::from_millis(20)), "20ms");
        assert_eq!(span(Duration::from_millis(1500)), "1.5s");
        assert_eq!(span(Duration::from_secs(360)), "6m0s");
    }
}
