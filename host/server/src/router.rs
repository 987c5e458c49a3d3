//! Every route of the API, with the body limits, the JSON fallbacks and the
//! middleware.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::routing::{get, post, put};

use crate::extract::BodyLimit;
use crate::{AppState, middleware, openapi, routes};

/// The API on `state`.
pub fn router(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    let model = state.backend().limits();
    let served = crate::contract::Served {
        model: state.model().id.clone(),
        max_context: model.max_context,
        vocab_size: state.model().tokenizer.vocab_size(),
        pipelines: match state.plugins() {
            Some(plugins) => plugins.pipelines().map(|(name, _)| name.to_string()).collect(),
            None => vec![kiln_pipeline::NATIVE_PIPELINE.to_string()],
        },
    };
    let admin = Router::new()
        .route("/v1/plugins", get(routes::plugins::list_plugins))
        .route("/v1/plugins/{name}", put(routes::plugins::put_plugin).delete(routes::plugins::delete_plugin))
        .route("/v1/plugins/{name}/reload", post(routes::plugins::reload_plugin))
        .route("/v1/plugins/{name}/promote", post(routes::plugins::promote_plugin))
        .route("/v1/plugins/{name}/rollback", post(routes::plugins::rollback_plugin))
        // Runs after the outer limit's layer, so uploads get their own.
        .layer(DefaultBodyLimit::max(state.config().max_plugin_bytes))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::admin::require_admin));
    let mut routes = Router::new()
        .route("/health", get(routes::health::health))
        .route("/ready", get(routes::health::ready))
        .route("/v1/generate", post(routes::generate::generate))
        .route("/v1/generate/stream", post(routes::generate::generate_stream))
        .route("/v1/generate/async", post(routes::tasks::generate_async))
        .route("/v1/chat/completions/async", post(routes::tasks::chat_completions_async))
        .route("/v1/tasks", get(routes::tasks::list_tasks))
        .route("/v1/tasks/{id}", get(routes::tasks::get_task).delete(routes::tasks::delete_task))
        .route("/v1/tasks/{id}/cancel", post(routes::tasks::cancel_task))
        .route("/v1/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route("/v1/models", get(routes::models::list_models))
        .route("/v1/models/{*id}", get(routes::models::retrieve_model))
        .route("/v1/fingerprints/{fingerprint}", get(routes::models::fingerprint))
        .route("/v1/tokenize", post(routes::tokenize::tokenize))
        .route("/v1/detokenize", post(routes::tokenize::detokenize));
    // Without a recorder there is nothing to render: the route is absent (404).
    if state.metrics_handle().is_some() {
        routes = routes.route("/metrics", get(routes::metrics::metrics));
    }
    let routes = routes
        .merge(admin)
        .merge(openapi::docs_router(&served))
        .fallback(routes::fallback::not_found)
        .method_not_allowed_fallback(routes::fallback::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(BodyLimit(limit)))
        .with_state(state.clone());
    middleware::apply(routes, &state)
}
