//! The Prometheus recorder every metric of the process goes to. The binary
//! installs it (a process has one global recorder; a library should not
//! take it behind its caller's back) and hands the server its handle.

/// Installs the process-wide Prometheus recorder (once: later calls return
/// the same handle) and describes kiln's metrics; the handle renders
/// `/metrics` ([`crate::AppStateBuilder::metrics`]).
pub fn install_metrics_recorder() -> metrics_exporter_prometheus::PrometheusHandle {
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
    describe_counter!("kiln_plugin_rollbacks_total", "Canaries of each plugin dropped, by hand or automatically");
    describe_gauge!("kiln_plugin_canary_share", "Share of requests each plugin's canary serves (0: none)");
    describe_counter!("kiln_plugin_version_requests_total", "Requests served by each plugin version (stable, canary)");
    describe_counter!("kiln_plugin_version_errors_total", "Failed calls into each plugin version");
    describe_counter!("kiln_plugin_version_traps_total", "Calls into each plugin version that trapped");
    describe_counter!("kiln_plugin_version_timeouts_total", "Calls into each plugin version stopped at their deadline");
    describe_gauge!("kiln_plugin_version_p99_seconds", Unit::Seconds, "p99 call latency of each plugin version");
    describe_gauge!("kiln_process_resident_memory_bytes", Unit::Bytes, "Resident memory of the process");
    describe_counter!(
        "kiln_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome (delivered, retrying, failed)"
    );
    describe_counter!("kiln_tasks_refused_total", "Async tasks refused at submission: per_key or queue_full");
    describe_counter!("kiln_stream_stalls_total", "Streams cancelled because their client stopped reading");
    describe_gauge!("kiln_connections_open", "Client connections open");
    describe_gauge!(
        "kiln_kv_cache_bytes",
        Unit::Bytes,
        "Keys and values in memory, held_by the running sequences or the prefix cache"
    );
    describe_gauge!(
        "kiln_kv_cache_reserved_bytes",
        Unit::Bytes,
        "KV memory the running sequences set aside (prompt plus max_tokens each)"
    );
    describe_gauge!("kiln_kv_cache_budget_bytes", Unit::Bytes, "The most the running sequences may set aside");
    describe_gauge!("kiln_gpu_memory_bytes", Unit::Bytes, "The GPU's memory, by kind (used, total); on a GPU only");
    describe_gauge!("kiln_kv_blocks", "Blocks of the GPU's paged KV pool, by state (free, used); on a GPU only");
    describe_counter!("kiln_key_reloads_total", "Reloads of [[keys]]: reloaded, or refused (the old keys stay)");
    describe_counter!("kiln_connections_refused_total", "Connections answered 503 past --max-connections");
    describe_counter!(
        "kiln_connections_closed_total",
        "Connections closed by the server: idle, or header_read_timeout"
    );
    describe_gauge!("kiln_tasks", "Async tasks in the store, by status (pending is the queue length)");
    describe_gauge!(
        "kiln_tasks_oldest_pending_age_seconds",
        Unit::Seconds,
        "How long the oldest pending task has waited"
    );
}
