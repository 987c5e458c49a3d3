//! Probes for load balancers and Kubernetes: `/health` answers while the
//! process lives; `/ready` only while it should get traffic (warmed up, not
//! draining).

use axum::Json;
use axum::extract::State;
use kiln_api::ErrorBody;
use kiln_api::health::{Health, Ready};

use crate::{ApiError, AppState};

/// Liveness, with the model, the engine's load and the loaded plugins.
#[utoipa::path(get, path = "/health", tag = "probes",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let stats = state.backend().stats();
    let device = state.backend().device();
    let cache = state.cache_stats();
    let plugins = state
        .plugins()
        .map(|p| p.plugins().iter().filter_map(|e| e.info().map(ToString::to_string)).collect())
        .unwrap_or_default();
    Json(Health {
        status: if state.is_draining() { "draining" } else { "ok" }.into(),
        model: state.model().id.clone(),
        model_loaded: true,
        gpu_available: device.device.starts_with("cuda"),
        gpu_name: device.name,
        gpu_memory_used_bytes: device.memory_used,
        gpu_memory_total_bytes: device.memory_total,
        device: device.device,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: state.uptime().as_secs(),
        running: stats.active(),
        queued: stats.queued(),
        kv_cache_bytes: stats.kv_cache_bytes(),
        kv_cache_reserved_bytes: stats.kv_reserved_bytes(),
        kv_cache_budget_bytes: stats.kv_budget_bytes(),
        prefix_cache_bytes: stats.prefix_cache_bytes(),
        plugins,
        cache_size: cache.entries,
        cache_bytes: cache.bytes,
    })
}

/// Readiness: 200 once the model has run a warm-up pass and the plugins
/// are loaded; 503 before, and again while draining.
#[utoipa::path(get, path = "/ready", tag = "probes",
    responses(
        (status = 200, description = "Ready for traffic", body = Ready),
        (status = 503, description = "Warming up or draining", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if state.is_draining() {
        return Err(ApiError::NotReady("draining: the server is shutting down".into()));
    }
    if !state.is_ready() {
        return Err(ApiError::NotReady("warming up: the model has not run its first pass yet".into()));
    }
    Ok(Json(Ready { ready: true }))
}
