//! The plugin admin API: `GET /v1/plugins` and the answers of
//! `PUT`/`POST .../reload`/`DELETE /v1/plugins/{name}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every plugin and pipeline of the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginStatus>,
    pub pipelines: Vec<PipelineView>,
    /// The pipeline of requests that name none.
    pub default_pipeline: String,
}

/// One plugin name: the version serving it, where it came from, how its
/// last load went, and its calls since that version was loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginStatus {
    pub name: String,
    /// `template`, `sampler` or `post-process` (absent: no version ever loaded).
    pub kind: Option<String>,
    /// The version the plugin reports (its crate version).
    pub version: Option<String>,
    pub description: Option<String>,
    /// Hex sha256 of the serving component file.
    pub sha256: Option<String>,
    /// The plugin contract (`wit/`) version the component was built
    /// against: `0.2.0`, or `0.1.0` (served through the host's adapter).
    pub contract: Option<String>,
    /// Which build of the serving version runs: `baseline` (a fast compile,
    /// slower code, serving until the optimized build is made, a second
    /// after the version landed) or `optimized`.
    pub compiled: Option<String>,
    /// `built-in`, `file` or `upload`.
    pub source: String,
    /// The plugin's file, for `source: file`.
    pub path: Option<String>,
    /// Unix time the serving version was loaded.
    pub loaded_at: u64,
    /// `ok`, or `error` when the latest new version failed to load (the
    /// previous one keeps serving) or none ever loaded.
    pub status: String,
    pub last_error: Option<String>,
    /// Unix time of `last_error`.
    pub last_error_at: Option<u64>,
    /// Versions swapped in since the first.
    pub reloads: u64,
    /// New versions refused since start (each refused file once).
    pub failed_reloads: u64,
    /// Calls into the serving (stable) version.
    pub metrics: PluginCallStats,
    /// A new version serving part of the requests, while one rolls out.
    pub canary: Option<CanaryStatus>,
    /// The last canary dropped, by hand or automatically.
    pub last_rollback: Option<RollbackStatus>,
    /// Canaries dropped since start.
    pub rollbacks: u64,
}

/// A canary: the version, its share of requests and its calls so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CanaryStatus {
    pub version: String,
    pub sha256: String,
    /// Percent of requests it serves, 1 to 100.
    pub share: u8,
    /// `request` (each request by its id) or `key` (by API key).
    pub sticky: String,
    /// Unix time it started serving.
    pub since: u64,
    pub metrics: PluginCallStats,
}

/// A canary that was dropped, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RollbackStatus {
    /// Unix time.
    pub at: u64,
    /// `name@version` of the canary dropped.
    pub version: String,
    pub sha256: String,
    /// Dropped by the rollout's thresholds rather than by an operator.
    pub automatic: bool,
    pub reason: String,
}

/// `PUT /v1/plugins/{name}`'s query: an upload served as a canary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UploadQuery {
    /// Serve the upload as a canary to this percent of requests (1 to 100);
    /// absent: it replaces the stable version.
    pub canary: Option<u8>,
    /// `request` (default: each request by its id) or `key` (each API key
    /// sees one version).
    pub sticky: Option<String>,
}

/// Calls into one version (instantiations included).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginCallStats {
    pub calls: u64,
    /// Requests served (renders, sessions started).
    pub requests: u64,
    /// Traps, timeouts, memory-limit hits and refusals.
    pub errors: u64,
    /// Of `errors`: traps.
    pub traps: u64,
    /// Of `errors`: calls stopped at their deadline.
    pub timeouts: u64,
    pub mean_latency_us: f64,
    pub max_latency_us: f64,
    /// 99 % of calls took less (to within a factor of 2).
    pub p99_latency_us: Option<f64>,
}

/// A named pipeline: plugin names per stage (absent: the host's own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PipelineView {
    pub name: String,
    pub template: Option<String>,
    pub sampler: Option<String>,
    pub post: Vec<String>,
}
