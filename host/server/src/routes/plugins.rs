//! The plugin admin API: list plugins and pipelines, upload a new version,
//! reload one from its file, remove one. Compiling a component takes
//! milliseconds to seconds, so it runs on the blocking pool; requests in
//! flight keep the versions they started with.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_api::ErrorBody;
use kiln_api::plugins::{
    CanaryStatus, PipelineView, PluginCallStats, PluginList, PluginStatus, RollbackStatus, UploadQuery,
};
use kiln_pipeline::{MetricsSnapshot, PluginEntry, PluginHost, Source, Sticky};

use crate::extract::{ApiPath, ApiQuery};
use crate::{ApiError, AppState};

/// Every plugin (with its serving version, last load error and call
/// statistics) and every pipeline.
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins",
    responses(
        (status = 200, description = "Plugins and pipelines", body = PluginList),
        (status = 403, description = "Not an admin client", body = ErrorBody),
    ))]
pub async fn list_plugins(State(state): State<AppState>) -> Result<Json<PluginList>, ApiError> {
    let plugins = host(&state)?;
    Ok(Json(PluginList {
        plugins: plugins.plugins().iter().map(|e| status(e)).collect(),
        pipelines: plugins
            .pipelines()
            .map(|(name, spec)| PipelineView {
                name: name.to_string(),
                template: spec.template.clone(),
                sampler: spec.sampler.clone(),
                post: spec.post.clone(),
            })
            .collect(),
        default_pipeline: plugins.default_pipeline().to_string(),
    }))
}

/// Upload a component (the body, as is) as plugin `name`: compiled,
/// validated and swapped in, or refused with the reason and nothing changed.
/// With `?canary=N` it serves N percent of requests beside the stable
/// version instead (kept in `<plugin-dir>/canary/`), until promoted or
/// rolled back.
#[utoipa::path(put, path = "/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name: letters, digits, '-' and '_'"),
        ("canary" = Option<u8>, Query, description = "Serve the upload as a canary to this percent of requests (1 to 100)"),
        ("sticky" = Option<String>, Query, description = "`request` (default) or `key`: what picks a request's version")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "A component built for one of kiln's plugin worlds"),
    responses(
        (status = 200, description = "The plugin as it now serves", body = PluginStatus),
        (status = 403, description = "Not an admin client", body = ErrorBody),
        (status = 400, description = "An invalid plugin name, or an empty upload (`param` names it)", body = ErrorBody),
        (status = 413, description = "Larger than the upload limit", body = ErrorBody),
        (status = 409, description = "A canary of a plugin with no stable version, or of another kind", body = ErrorBody),
        (status = 422, description = "Not a usable kiln plugin, or the wrong kind for a pipeline using the name", body = ErrorBody),
    ))]
pub async fn put_plugin(
    State(state): State<AppState>,
    ApiPath(name): ApiPath,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PluginStatus>, ApiError> {
    let bytes = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit: state.config().max_plugin_bytes },
        _ => ApiError::invalid("body", rejection.body_text()),
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("body", "the body must be the component file (it is empty)"));
    }
    let sticky = match query.sticky.as_deref() {
        None | Some("request") => Sticky::Request,
        Some("key") => Sticky::Key,
        Some(other) => return Err(ApiError::invalid("sticky", format!("must be `request` or `key`, got {other:?}"))),
    };
    let entry = match query.canary {
        Some(share) if !(1..=100).contains(&share) => {
            return Err(ApiError::invalid("canary", format!("must be a percent from 1 to 100, got {share}")));
        }
        Some(share) => blocking(&state, move |p| p.install_canary(&name, &bytes, Some(share), sticky)).await?,
        None if query.sticky.is_some() => return Err(ApiError::invalid("sticky", "only applies with `canary`")),
        None => blocking(&state, move |plugins| plugins.install(&name, &bytes)).await?,
    };
    Ok(Json(status(&entry)))
}

/// Make plugin `name`'s canary its stable version, for every request.
#[utoipa::path(post, path = "/v1/plugins/{name}/promote", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "The plugin as it now serves", body = PluginStatus),
        (status = 403, description = "Not an admin client", body = ErrorBody),
        (status = 400, description = "An invalid plugin name", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody),
        (status = 409, description = "The plugin has no canary", body = ErrorBody),
    ))]
pub async fn promote_plugin(
    State(state): State<AppState>,
    ApiPath(name): ApiPath,
) -> Result<Json<PluginStatus>, ApiError> {
    let entry = blocking(&state, move |plugins| plugins.promote(&name)).await?;
    Ok(Json(status(&entry)))
}

/// Drop plugin `name`'s canary: every request goes back to the stable version.
#[utoipa::path(post, path = "/v1/plugins/{name}/rollback", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "The plugin as it now serves", body = PluginStatus),
        (status = 403, description = "Not an admin client", body = ErrorBody),
        (status = 400, description = "An invalid plugin name", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody),
        (status = 409, description = "The plugin has no canary", body = ErrorBody),
    ))]
pub async fn rollback_plugin(
    State(state): State<AppState>,
    ApiPath(name): ApiPath,
) -> Result<Json<PluginStatus>, ApiError> {
    let entry = blocking(&state, move |plugins| plugins.rollback(&name)).await?;
    Ok(Json(status(&entry)))
}

/// Load plugin `name` again from its file in the plugin directory.
#[utoipa::path(post, path = "/v1/plugins/{name}/reload", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "The plugin as it now serves", body = PluginStatus),
        (status = 403, description = "Not an admin client", body = ErrorBody),
        (status = 400, description = "An invalid plugin name, or an empty upload (`param` names it)", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody),
        (status = 422, description = "The file does not load; the previous version keeps serving", body = ErrorBody),
    ))]
pub async fn reload_plugin(
    State(state): State<AppState>,
    ApiPath(name): ApiPath,
) -> Result<Json<PluginStatus>, ApiError> {
    let entry = blocking(&state, move |plugins| plugins.reload(&name)).await?;
    Ok(Json(status(&entry)))
}

/// Remove plugin `name` (and its file). A built-in name goes back to the
/// built-in version; a plugin a pipeline needs cannot be removed.
#[utoipa::path(delete, path = "/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "Removed; the built-in version of the name serves again", body = PluginStatus),
        (status = 204, description = "Removed"),
        (status = 403, description = "Not an admin client", body = ErrorBody),
        (status = 400, description = "An invalid plugin name, or an empty upload (`param` names it)", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody),
        (status = 409, description = "Built in, or used by a pipeline", body = ErrorBody),
    ))]
pub async fn delete_plugin(State(state): State<AppState>, ApiPath(name): ApiPath) -> Result<Response, ApiError> {
    match blocking(&state, move |plugins| plugins.remove(&name)).await? {
        Some(built_in) => Ok(Json(status(&built_in)).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

fn host(state: &AppState) -> Result<&PluginHost, ApiError> {
    state.plugins().ok_or_else(|| ApiError::Conflict("this server runs without plugins".into()))
}

async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&PluginHost) -> Result<T, kiln_pipeline::PipelineError> + Send + 'static,
) -> Result<T, ApiError> {
    host(state)?;
    let state = state.clone();
    let result = tokio::task::spawn_blocking(move || state.plugins().map(f))
        .await
        .map_err(|e| ApiError::Internal(format!("plugin admin task: {e}")))?;
    match result {
        Some(r) => Ok(r?),
        None => Err(ApiError::Conflict("this server runs without plugins".into())),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn stats(metrics: MetricsSnapshot) -> PluginCallStats {
    let micros = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    PluginCallStats {
        calls: metrics.calls,
        requests: metrics.sessions,
        errors: metrics.errors,
        traps: metrics.traps,
        timeouts: metrics.timeouts,
        mean_latency_us: if metrics.calls == 0 { 0.0 } else { micros(metrics.busy) / metrics.calls as f64 },
        max_latency_us: micros(metrics.slowest),
        p99_latency_us: metrics.p99().map(micros),
    }
}

fn status(entry: &PluginEntry) -> PluginStatus {
    let info = entry.info();
    let metrics = entry.loaded.as_ref().map(|l| l.metrics()).unwrap_or_default();
    let canary = entry.canary.as_ref().map(|c| CanaryStatus {
        version: c.loaded.info().version.clone(),
        sha256: c.loaded.info().sha256.clone(),
        share: c.share,
        sticky: match c.sticky {
            Sticky::Request => "request",
            Sticky::Key => "key",
        }
        .into(),
        since: unix(c.since),
        metrics: stats(c.loaded.metrics()),
    });
    let last_rollback = entry.last_rollback.as_ref().map(|r| RollbackStatus {
        at: unix(r.at),
        version: r.version.clone(),
        sha256: r.sha256.clone(),
        automatic: r.automatic,
        reason: r.reason.clone(),
    });
    let (source, path) = match &entry.source {
        Source::BuiltIn => ("built-in", None),
        Source::File(path) => ("file", Some(path.display().to_string())),
        Source::Upload => ("upload", None),
    };
    PluginStatus {
        name: entry.name.clone(),
        kind: info.map(|i| i.kind.to_string()),
        version: info.map(|i| i.version.clone()),
        description: info.map(|i| i.description.clone()),
        sha256: info.map(|i| i.sha256.clone()),
        contract: info.map(|i| i.contract.version().to_string()),
        compiled: entry.loaded.as_ref().map(|l| l.tier().as_str().to_string()),
        source: source.into(),
        path,
        loaded_at: unix(entry.loaded_at),
        status: if entry.last_error.is_none() && info.is_some() { "ok" } else { "error" }.into(),
        last_error: entry.last_error.as_ref().map(|e| e.message.clone()),
        last_error_at: entry.last_error.as_ref().map(|e| unix(e.at)),
        reloads: entry.reloads,
        failed_reloads: entry.failed_reloads,
        metrics: stats(metrics),
        canary,
        last_rollback,
        rollbacks: entry.rollbacks,
    }
}
