//! `GET /metrics`: Prometheus' text format. Counters and histograms are
//! recorded where things happen (requests, tokens, rate limits) into the
//! recorder the binary installed ([`crate::install_metrics_recorder`]);
//! levels (queue, batch, cache, plugins, tasks, memory) are read when scraped.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics::{counter, gauge};

use crate::{ApiError, AppState};

/// Server metrics in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // The router serves this route only with a recorder installed.
    let Some(handle) = state.metrics_handle().cloned() else {
        return ApiError::Internal("no metrics recorder is installed".into()).into_response();
    };
    let stats = state.backend().stats();
    gauge!("kiln_queue_depth").set(stats.queued() as f64);
    gauge!("kiln_running_sequences").set(stats.active() as f64);
    gauge!("kiln_kv_cache_bytes", "held_by" => "running").set(stats.kv_cache_bytes() as f64);
    gauge!("kiln_kv_cache_bytes", "held_by" => "prefix_cache").set(stats.prefix_cache_bytes() as f64);
    gauge!("kiln_kv_cache_reserved_bytes").set(stats.kv_reserved_bytes() as f64);
    gauge!("kiln_kv_cache_budget_bytes").set(stats.kv_budget_bytes() as f64);
    // A GPU's memory and KV pool; absent on the CPU.
    let device = state.backend().device();
    if let (Some(used), Some(total)) = (device.memory_used, device.memory_total) {
        gauge!("kiln_gpu_memory_bytes", "kind" => "used").set(used as f64);
        gauge!("kiln_gpu_memory_bytes", "kind" => "total").set(total as f64);
    }
    if let (Some(free), Some(used)) = (device.kv_blocks_free, device.kv_blocks_used) {
        gauge!("kiln_kv_blocks", "state" => "free").set(free as f64);
        gauge!("kiln_kv_blocks", "state" => "used").set(used as f64);
    }
    let cache = state.cache_stats();
    gauge!("kiln_cache_entries").set(cache.entries as f64);
    gauge!("kiln_cache_bytes").set(cache.bytes as f64);
    counter!("kiln_cache_hits_total").absolute(cache.hits);
    counter!("kiln_cache_misses_total").absolute(cache.misses);
    counter!("kiln_cache_evictions_total").absolute(cache.evictions);
    for entry in state.plugins().map(|p| p.plugins()).unwrap_or_default() {
        let name = entry.name.clone();
        let calls = entry.total_metrics();
        counter!("kiln_plugin_calls_total", "plugin" => name.clone()).absolute(calls.calls);
        counter!("kiln_plugin_errors_total", "plugin" => name.clone()).absolute(calls.errors);
        gauge!("kiln_plugin_busy_seconds", "plugin" => name.clone()).set(calls.busy.as_secs_f64());
        counter!("kiln_plugin_reloads_total", "plugin" => name.clone()).absolute(entry.reloads);
        counter!("kiln_plugin_failed_reloads_total", "plugin" => name.clone()).absolute(entry.failed_reloads);
        counter!("kiln_plugin_rollbacks_total", "plugin" => name.clone()).absolute(entry.rollbacks);
        // Each serving version on its own, for watching a rollout.
        let stable = entry.loaded.as_ref().map(|l| (l.info().clone(), l.metrics(), "stable"));
        let canary = entry.canary.as_ref().map(|c| (c.loaded.info().clone(), c.loaded.metrics(), "canary"));
        for (info, m, role) in stable.into_iter().chain(canary) {
            let labels = [("plugin", name.clone()), ("version", info.version.clone()), ("role", role.to_string())];
            counter!("kiln_plugin_version_requests_total", &labels).absolute(m.sessions);
            counter!("kiln_plugin_version_errors_total", &labels).absolute(m.errors);
            counter!("kiln_plugin_version_traps_total", &labels).absolute(m.traps);
            counter!("kiln_plugin_version_timeouts_total", &labels).absolute(m.timeouts);
            if let Some(p99) = m.p99() {
                gauge!("kiln_plugin_version_p99_seconds", &labels).set(p99.as_secs_f64());
            }
        }
        let share = entry.canary.as_ref().map_or(0.0, |c| f64::from(c.share) / 100.0);
        gauge!("kiln_plugin_canary_share", "plugin" => name).set(share);
    }
    if let Some(tasks) = state.tasks() {
        task_levels(tasks).await;
    }
    if let Some(bytes) = resident_memory() {
        gauge!("kiln_process_resident_memory_bytes").set(bytes as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}

/// Tasks by status, and how long the oldest pending one has waited.
async fn task_levels(tasks: &std::sync::Arc<crate::Tasks>) {
    let tasks = tasks.clone();
    let levels = tokio::task::spawn_blocking(move || {
        Ok::<_, kiln_tasks::TaskError>((tasks.store.counts()?, tasks.store.oldest_pending()?))
    })
    .await;
    let (counts, oldest) = match levels {
        Ok(Ok(levels)) => levels,
        Ok(Err(e)) => return tracing::error!(error = %e, "reading task counts"),
        Err(e) => return tracing::error!(error = %e, "reading task counts"),
    };
    for status in ["pending", "running", "completed", "failed", "cancelled"] {
        let n = counts.iter().find(|(s, _)| s.as_str() == status).map_or(0, |(_, n)| *n);
        gauge!("kiln_tasks", "status" => status).set(n as f64);
    }
    let age = oldest.map_or(0.0, |created| (kiln_tasks::now_ms() - created).max(0) as f64 / 1000.0);
    gauge!("kiln_tasks_oldest_pending_age_seconds").set(age);
}

/// The process's resident set, from `/proc` (Linux); `None` elsewhere.
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Linux's page size on the architectures kiln builds for.
    Some(pages * 4096)
}
