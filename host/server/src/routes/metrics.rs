//! `GET /metrics`: Prometheus' text format. Counters and histograms are
//! recorded where things happen (requests, tokens, rate limits); levels
//! (queue, batch, cache, plugins, memory) are read when scraped.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics::{counter, gauge};

use crate::AppState;

/// The process-wide exporter; the first call installs it as the recorder.
pub fn handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Only fails if another recorder was installed first: then its
            // metrics go there, and this handle renders what it has.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("kiln_http_requests_total", "HTTP requests by route, method and status");
    describe_histogram!("kiln_http_request_duration_seconds", Unit::Seconds, "Time to the response's headers");
    describe_histogram!("kiln_time_to_first_token_seconds", Unit::Seconds, "From admission to the first text");
    describe_histogram!("kiln_inter_token_latency_seconds", Unit::Seconds, "Between consecutive pieces of text");
    describe_counter!("kiln_prompt_tokens_total", "Prompt tokens of finished generations");
    describe_counter!("kiln_generated_tokens_total", "Tokens generated, finished generations");
    describe_counter!("kiln_rate_limited_total", "Requests refused by a rate limit, by limit");
    describe_gauge!("kiln_queue_depth", "Requests waiting for a batch slot");
    describe_gauge!("kiln_running_sequences", "Sequences in the running batch");
    describe_gauge!("kiln_cache_entries", "Answers in the response cache");
    describe_gauge!("kiln_cache_bytes", Unit::Bytes, "Size of the response cache");
    describe_counter!("kiln_cache_hits_total", "Requests answered from the response cache");
    describe_counter!("kiln_cache_misses_total", "Cacheable requests generated anew");
    describe_counter!("kiln_cache_evictions_total", "Answers evicted from the response cache");
    describe_counter!("kiln_plugin_calls_total", "Calls into each plugin, all its versions");
    describe_counter!("kiln_plugin_errors_total", "Failed calls into each plugin, all its versions");
    describe_gauge!(
        "kiln_plugin_busy_seconds",
        Unit::Seconds,
        "Time spent inside each plugin since start, all versions"
    );
    describe_counter!("kiln_plugin_reloads_total", "New versions of each plugin swapped in");
    describe_counter!("kiln_plugin_failed_reloads_total", "New versions of each plugin refused");
    describe_gauge!("kiln_process_resident_memory_bytes", Unit::Bytes, "Resident memory of the process");
    describe_counter!("kiln_webhook_deliveries_total", "Webhook delivery attempts, by outcome");
    describe_gauge!("kiln_tasks", "Async tasks in the store, by status (pending is the queue length)");
    describe_gauge!(
        "kiln_tasks_oldest_pending_age_seconds",
        Unit::Seconds,
        "How long the oldest pending task has waited"
    );
}

/// Server metrics in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.backend().stats();
    gauge!("kiln_queue_depth").set(stats.queued() as f64);
    gauge!("kiln_running_sequences").set(stats.active() as f64);
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
        counter!("kiln_plugin_failed_reloads_total", "plugin" => name).absolute(entry.failed_reloads);
    }
    if let Some(tasks) = state.tasks_arc() {
        task_levels(&tasks).await;
    }
    if let Some(bytes) = resident_memory() {
        gauge!("kiln_process_resident_memory_bytes").set(bytes as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle().render()).into_response()
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
