//! Middleware, one file per concern, assembled in [`apply`].

pub mod admin;
pub mod auth;
pub mod browser;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};

use crate::AppState;

/// Wraps every route: request id (outermost, so every answer carries one),
/// metrics (every answer counted, refusals too), CORS for listed origins,
/// the browser guard, authentication, rate limits.
pub fn apply(router: Router, state: &AppState) -> Router {
    let router = router
        .layer(from_fn_with_state(state.clone(), rate_limit::rate_limit))
        .layer(from_fn_with_state(state.clone(), auth::authenticate))
        .layer(from_fn_with_state(state.clone(), browser::guard));
    let router = match browser::cors(&state.config().allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(from_fn(metrics::record)).layer(from_fn(request_id::request_id))
}
