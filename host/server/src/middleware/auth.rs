//! API keys: `Authorization: Bearer KEY` (OpenAI's clients) or `X-API-Key:
//! KEY` (the guide's). Probes, metrics and the API docs are public; plugin
//! administration needs the `admin` scope; `/metrics` when it is not
//! public, `metrics` (or `admin`); everything else `generate`.
//! Without configured keys the server runs only when started with
//! `--insecure-no-auth`, and then every caller is anonymous.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use kiln_access::Scope;

use crate::config::Auth;
use crate::extract::Caller;
use crate::{ApiError, AppState};

/// Paths anyone may call, whatever the authentication.
pub fn is_public(path: &str, public_metrics: bool) -> bool {
    matches!(path, "/health" | "/ready" | "/openapi.json")
        || path == "/docs"
        || path.starts_with("/docs/")
        || (public_metrics && path == "/metrics")
}

fn scope_of(path: &str) -> Scope {
    if path == "/v1/plugins" || path.starts_with("/v1/plugins/") {
        Scope::Admin
    } else if path == "/metrics" {
        Scope::Metrics
    } else {
        Scope::Generate
    }
}

/// The key a request presents, from either header.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim)
}

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = request.uri().path();
    let config = state.config();
    if is_public(path, config.public_metrics) {
        return Ok(next.run(request).await);
    }
    let caller = match &config.auth {
        Auth::Insecure => Caller { key: None },
        Auth::Keys(keys) => {
            let Some(presented) = presented(request.headers()) else {
                return Err(ApiError::Unauthorized(
                    "no API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`".into(),
                ));
            };
            let keys = keys.current();
            let Some(key) = keys.verify(presented) else {
                return Err(ApiError::Unauthorized("the API key is not valid".into()));
            };
            let needed = scope_of(path);
            if !key.allows(needed) {
                return Err(ApiError::Forbidden(format!(
                    "the key {:?} lacks the `{needed}` scope this endpoint needs",
                    key.name()
                )));
            }
            Caller { key: Some(key.clone()) }
        }
    };
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}
